#!/usr/bin/env bash
# Backup and restore throughput of evi-install for a data set of about 500 MB
# (task streams with a consumer group and pending entries, and cache hashes with
# TTLs), against the physical floor: a plain copy (`cp -a`, then `sync`) of the
# volume's directory on the same disk. Also the gap a client sees during `restore`.
#
#   bench/backup.sh [--size MB]      (MB defaults to 500)
#
# Needs the test Podman service and image (`scripts/test-env.sh start`, exported) and
# builds the release binary. Holds /tmp/evi-host.lock (the end-to-end tests' lock) while
# it runs, and removes what it made. Prints the figures and a Markdown table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

size_mb=500
while (($#)); do
    case "$1" in
        --size) size_mb="$2"; shift 2 ;;
        -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/backup.sh: unknown argument: $1" >&2; exit 64 ;;
    esac
done
: "${EVI_TEST_PODMAN_URL:?run scripts/test-env.sh start and export what it prints}"
image=${EVI_TEST_VALKEY_IMAGE:-localhost/evi-valkey-test:8}
subnet=${EVI_TEST_SUBNET:-10.90.213.0/24}
podman=${EVI_TEST_PODMAN_CLI:-podman}

cargo build --release --quiet
bin=$PWD/target/release/evi-install

exec 9>/tmp/evi-host.lock
flock 9
work=$(mktemp -d /var/tmp/evi-bench-backup.XXXXXX)
reset() {
    $podman rm -f -t 0 evi-be evi-worker evi-state evi-restore evi-restore-check >/dev/null 2>&1 || true
    # After evi-state, which runs in its network namespace.
    $podman rm -f -t 0 evi-state-addr >/dev/null 2>&1 || true
    $podman network rm -f evi-net >/dev/null 2>&1 || true
    $podman volume rm -f evi-state-data >/dev/null 2>&1 || true
    for s in $($podman secret ls --format '{{.Name}}' | grep '^evi-' || true); do $podman secret rm "$s" >/dev/null; done
}
cleanup() { reset; rm -rf "$work"; }
trap cleanup EXIT
reset

idle="[sh, -c, \"trap 'exit 0' TERM; sleep infinity & wait\"]"
cat > "$work/evi.yaml" <<YAML
state_dir: $work/state
network_subnet: $subnet
services:
  evi-state: { image: $image }
  evi-be: { image: $image, command: $idle }
valkey: { maxmemory: 2gb }
YAML
evi() { (cd "$work" && "$bin" --podman-url "$EVI_TEST_PODMAN_URL" "$@"); }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# As evi-install's own user (src/acl.rs): the clients' user may not run INFO persistence or BGREWRITEAOF.
auth='REDISCLI_AUTH="$(cat /run/secrets/evi-admin-password)"; export REDISCLI_AUTH'
state() { $podman exec evi-state sh -c "$auth; valkey-cli --no-auth-warning --user evi-admin $*"; }
evi up >/dev/null

# The data set: half stream entries (4 queues, 250-byte payloads), half cache
# hashes (10 fields of 48 bytes, TTL one day), inserted with valkey-cli --pipe.
echo "filling evi-state with about $size_mb MB..." >&2
t=$(now)
$podman exec evi-state sh -c "$auth; awk -v mb=$size_mb 'BEGIN {
    srand(7); entries = int(mb * 1024 * 1024 / 2 / 330); hashes = int(mb * 1024 * 1024 / 2 / 700)
    for (q = 0; q < 4; q++) printf \"XGROUP CREATE stream:tasks:q%d workers 0 MKSTREAM\\n\", q
    for (i = 0; i < entries; i++) {
        p = \"\"; for (j = 0; j < 31; j++) p = p sprintf(\"%08x\", int(rand() * 4294967295))
        printf \"XADD stream:tasks:q%d * type job n %d payload %s\\n\", i % 4, i, p
    }
    for (i = 0; i < hashes; i++) {
        printf \"HSET cache:db:item:%d\", i
        for (f = 0; f < 10; f++) { v = \"\"; for (j = 0; j < 6; j++) v = v sprintf(\"%08x\", int(rand() * 4294967295)); printf \" f%d %s\", f, v }
        printf \"\\n\"; printf \"EXPIRE cache:db:item:%d 86400\\n\", i
    }
    for (q = 0; q < 4; q++) printf \"XREADGROUP GROUP workers w1 COUNT 1000 STREAMS stream:tasks:q%d >\\n\", q
}' | valkey-cli --no-auth-warning --user evi-admin --pipe >/dev/null"
state BGREWRITEAOF >/dev/null
while state INFO persistence | tr -d '\r' | grep -q '^aof_rewrite_in_progress:1'; do sleep 0.5; done
echo "filled in $(secs "$t" "$(now)") s" >&2
dataset=$(state INFO memory | tr -d '\r' | sed -n 's/^used_memory_dataset://p')
mount=$($podman volume inspect evi-state-data --format '{{.Mountpoint}}')
ondisk=$(du -sb "$mount" | cut -f 1)
keys=$(state DBSIZE)

# The floor: a plain copy of the volume's directory, synced.
sync
t=$(now); cp -a "$mount" "$work/floor"; sync; t_floor=$(secs "$t" "$(now)")
rm -rf "$work/floor"

t=$(now); evi backup --out "$work/b.tar.zst" >/dev/null; t_backup=$(secs "$t" "$(now)")
archive=$(stat -c %s "$work/b.tar.zst")
t=$(now); evi backup --verify "$work/b.tar.zst" >/dev/null; t_verify=$(secs "$t" "$(now)")

# A client pings evi-state every 20 ms from evi-be during the restore.
$podman exec -d evi-be sh -c 'pw=${VALKEY_URL#redis://:}; export REDISCLI_AUTH=${pw%@*}
  while [ ! -e /tmp/stop ]; do
    if [ "$(valkey-cli --no-auth-warning -h evi-state -t 1 ping 2>/dev/null)" = PONG ]; then echo "ok $(date +%s%3N)"; else echo "fail $(date +%s%3N)"; fi
    sleep 0.02
  done > /tmp/pings'
sleep 1
t=$(now); evi restore "$work/b.tar.zst" --yes > "$work/restore.out"; t_restore=$(secs "$t" "$(now)")
sleep 1
$podman exec evi-be touch /tmp/stop; sleep 0.5
gap=$($podman exec evi-be awk '$1 == "ok" { if (last && $2 - last > max) max = $2 - last; last = $2 } END { printf "%.2f", max / 1000 }' /tmp/pings)
fails=$($podman exec evi-be grep -c '^fail' /tmp/pings || true)
down=$(sed -n 's/.*evi-state was down for \([0-9.]*\)s.*/\1/p' "$work/restore.out")

mbs() { awk -v b="$ondisk" -v s="$1" 'BEGIN { printf "%.0f MB/s", b / 1e6 / s }'; }
ratio() { awk -v f="$t_floor" -v s="$1" 'BEGIN { printf "%.2f×", f / s }'; }
echo
echo "evi-install backup benchmark: $(date -u +%F), $(nproc) cores, $($podman --version), evi-install at $(git rev-parse --short HEAD)."
echo "Data set: $keys keys, used_memory_dataset $((dataset / 1000000)) MB, $((ondisk / 1000000)) MB on disk in the volume; archive $((archive / 1000000)) MB."
echo
echo "| measurement | time | throughput (volume bytes / time) | of the copy floor |"
echo "|---|---|---|---|"
echo "| \`cp -a\` of the volume directory + \`sync\` (floor) | ${t_floor} s | $(mbs "$t_floor") | 1.00× |"
echo "| \`backup\` (BGSAVE, throwaway load + AOF rewrite, archive) | ${t_backup} s | $(mbs "$t_backup") | $(ratio "$t_backup") |"
echo "| \`backup --verify\` | ${t_verify} s | $(mbs "$t_verify") | $(ratio "$t_verify") |"
echo "| \`restore\` (checksums, stage, swap, check load, start, verify) | ${t_restore} s | $(mbs "$t_restore") | $(ratio "$t_restore") |"
echo "| evi-state down during \`restore\` (stop to PONG) | ${down} s | | |"
echo "| longest gap between a client's PONGs during \`restore\` | ${gap} s ($fails failed pings) | | |"
