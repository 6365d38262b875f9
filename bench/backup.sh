#!/usr/bin/env bash
# backup, backup --verify and restore at realistic data sizes, each beside its floor
# in the same run, with the guide's ioredis producer in evi-be sending a command
# every 10 ms. For each size it fills evi-state with the guide's key shapes (four
# task streams with a consumer group and pending entries, cache hashes with a TTL,
# random values), then per run:
#   - backup floor: what an administrator does by hand for a consistent copy:
#     BGSAVE, wait for rdb_bgsave_in_progress:0 with rdb_last_bgsave_status:ok,
#     cp dump.rdb out of the volume, sync;
#   - `backup`, and the producer's longest gap between two successful commands
#     during it (its stats line's max_gap_ms; evi-be is restarted just before);
#   - verify floor: unpack the archive (zstd -dc | tar -x), load it in a throwaway
#     server until it answers PING;
#   - `backup --verify`;
#   - restore floor: podman stop evi-state, the archive's AOF directory in place of
#     the volume's, podman start, until an authenticated PING answers PONG; and the
#     producer's longest gap during it;
#   - `restore`, the producer's longest gap during it, and evi-state's own load time
#     (its log's "DB loaded from append only file").
#
# Each measurement starts with no dirty pages (`sync` before it, untimed): what the
# one before it wrote must not slow it down.
#
#   bench/backup.sh [--sizes "500 1024"] [--runs N]     (MB of used_memory_dataset; N=3)
#
# The table goes to stdout; each command's own phase lines go to stderr.
#
# Needs the test Podman service and images (`scripts/test-env.sh start`, exported),
# rootful (it reads the volume on the host), and builds the release binary. Holds
# /tmp/evi-host.lock (the end-to-end tests' lock) and removes what it made.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sizes="500 1024"
runs=3
while (($#)); do
    case "$1" in
        --sizes) sizes="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/backup.sh: unknown argument: $1" >&2; exit 64 ;;
    esac
done
: "${EVI_TEST_PODMAN_URL:?run scripts/test-env.sh start and export what it prints}"
image=${EVI_TEST_VALKEY_IMAGE:-localhost/evi-valkey-test:8}
clients=${EVI_TEST_CLIENT_IMAGE:-localhost/evi-client-test:1}
subnet=${EVI_TEST_SUBNET:-10.90.213.0/24}
podman=${EVI_TEST_PODMAN_CLI:-podman}
command -v zstd >/dev/null || { echo "bench/backup.sh: zstd is missing (apt-get install zstd)" >&2; exit 1; }

cargo build --release --quiet
bin=$PWD/target/release/evi-install

exec 9>/tmp/evi-host.lock
flock 9
# Podman, and the conmon it forks for `podman start`, must not inherit the lock.
pm() { $podman "$@" 9>&-; }
work=$(mktemp -d /var/tmp/evi-bench-backup.XXXXXX)
reset() {
    # One at a time: Podman 4.3's `rm -f A B` removes nothing when A does not exist.
    local c
    for c in evi-bench-load evi-be evi-restore evi-restore-check evi-state evi-state-addr; do
        pm rm -f -t 0 "$c" >/dev/null 2>&1 || true
    done
    pm network rm -f evi-net >/dev/null 2>&1 || true
    pm volume rm -f evi-state-data >/dev/null 2>&1 || true
    for s in $(pm secret ls --format '{{.Name}}' | grep '^evi-' || true); do pm secret rm "$s" >/dev/null; done
}
cleanup() { reset; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/evi.yaml" <<YAML
state_dir: $work/state
network_subnet: $subnet
services:
  evi-state: { image: $image }
  evi-be:
    image: $clients
    command: [node, /opt/evi-clients/producer.js]
    env: { EVI_INTERVAL_MS: "10" }
valkey: { maxmemory: 2gb }
YAML
evi() { (cd "$work" && "$bin" --podman-url "$EVI_TEST_PODMAN_URL" "$@" 9>&-); }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
ratio() { awk -v f="$1" -v s="$2" 'BEGIN { printf "%.2f", s / f }'; }
admin='REDISCLI_AUTH="$(cat /run/secrets/evi-admin-password)"; export REDISCLI_AUTH'
state() { pm exec evi-state sh -c "$admin; valkey-cli --no-auth-warning --user evi-admin $*"; }
field() { state INFO "$1" | tr -d '\r' | sed -n "s/^$2://p"; }

# The producer's longest gap (ms) since its start: evi-be is restarted before each
# measured command, and its stats line comes once a second.
producer_restart() { pm restart -t 2 evi-be >/dev/null; sleep 2; }
producer_gap() {
    sleep 1.5
    pm logs evi-be 2>/dev/null | grep -o '"max_gap_ms":[0-9]*' | tail -n 1 | cut -d: -f2
}
# evi-state's load time at its last start, from its log.
load_time() {
    pm logs evi-state 2>&1 | sed -n 's/.*DB loaded from append only file: \([0-9.]*\) seconds.*/\1/p' | tail -n 1
}
wait_pong() {
    until [ "$(state PING 2>/dev/null)" = PONG ]; do sleep 0.05; done
}

fill() {
    local mb=$1
    # Half stream entries (4 queues, 250-byte payloads), half cache hashes (10 fields
    # of 48 bytes, TTL one day), inserted with valkey-cli --pipe; 1,000 entries of
    # each queue are delivered to a consumer and stay pending.
    pm exec evi-state sh -c "$admin; awk -v mb=$mb 'BEGIN {
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
    while [ "$(field persistence aof_rewrite_in_progress)" = 1 ]; do sleep 0.5; done
}

backup_floor() {
    local before t
    before=$(field persistence rdb_saves)
    t=$(now)
    state BGSAVE >/dev/null
    until [ "$(field persistence rdb_saves)" -gt "$before" ] && [ "$(field persistence rdb_bgsave_in_progress)" = 0 ]; do sleep 0.05; done
    [ "$(field persistence rdb_last_bgsave_status)" = ok ] || { echo "BGSAVE failed" >&2; exit 1; }
    cp "$mount/dump.rdb" "$work/floor.rdb"
    sync
    secs "$t" "$(now)"
    rm -f "$work/floor.rdb"
}

verify_floor() {
    local t
    rm -rf "$work/unpacked"; mkdir "$work/unpacked"
    t=$(now)
    zstd -dcq "$work/b.tar.zst" | tar -x -C "$work/unpacked"
    pm run -d --name evi-bench-load --network none -v "$work/unpacked/data:/d" --entrypoint '' "$image" \
        valkey-server --dir /d --appendonly yes --save '' --port 0 --unixsocket /tmp/s >/dev/null
    until [ "$(pm exec evi-bench-load valkey-cli -s /tmp/s PING 2>/dev/null)" = PONG ]; do sleep 0.05; done
    secs "$t" "$(now)"
    pm rm -f -t 0 evi-bench-load >/dev/null
}

restore_floor() {
    local t owner
    owner=$(stat -c %u:%g "$mount/appendonlydir")
    t=$(now)
    pm stop -t 30 evi-state >/dev/null
    rm -rf "$mount/appendonlydir" "$mount/dump.rdb"
    cp -a "$work/unpacked/data/appendonlydir" "$mount/appendonlydir"
    chown -R "$owner" "$mount/appendonlydir"
    sync
    pm start evi-state >/dev/null
    wait_pong
    secs "$t" "$(now)"
}

echo "evi-install backup benchmark: $(date -u +%F), $(nproc) cores, $($podman --version), evi-install at $(git rev-parse --short HEAD)."
echo
echo "| data | run | backup floor | backup | × | producer gap during backup | verify floor | verify | × | restore floor | restore | × | producer gap: floor / restore | evi-state load |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for mb in $sizes; do
    reset
    evi up >/dev/null
    echo "filling evi-state with about $mb MB..." >&2
    fill "$mb"
    mount=$(pm volume inspect evi-state-data --format '{{.Mountpoint}}')
    data="$(($(field memory used_memory_dataset) / 1000000)) MB, $(state DBSIZE) keys"
    for run in $(seq "$runs"); do
        sync
        t_bfloor=$(backup_floor)
        producer_restart
        t=$(now); evi backup --out "$work/b.tar.zst" >&2; t_backup=$(secs "$t" "$(now)")
        gap_backup=$(producer_gap)
        sync
        t_vfloor=$(verify_floor)
        sync
        t=$(now); evi backup --verify "$work/b.tar.zst" >&2; t_verify=$(secs "$t" "$(now)")
        sync
        producer_restart
        t_rfloor=$(restore_floor)
        gap_rfloor=$(producer_gap)
        sync
        producer_restart
        t=$(now); evi restore "$work/b.tar.zst" --yes >&2; t_restore=$(secs "$t" "$(now)")
        gap_restore=$(producer_gap)
        load=$(load_time)
        echo "| $data | $run | ${t_bfloor} s | ${t_backup} s | $(ratio "$t_bfloor" "$t_backup") | ${gap_backup} ms | ${t_vfloor} s | ${t_verify} s | $(ratio "$t_vfloor" "$t_verify") | ${t_rfloor} s | ${t_restore} s | $(ratio "$t_rfloor" "$t_restore") | ${gap_rfloor} / ${gap_restore} ms | ${load} s |"
        rm -rf "$work/unpacked" "$work/b.tar.zst"
    done
done
