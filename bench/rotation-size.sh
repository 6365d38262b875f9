#!/usr/bin/env bash
# rotate-secret at realistic data sizes, with the real clients writing: the guide's
# ioredis producer in evi-be and the redis-py worker in evi-worker (examples/clients).
# For each size it fills evi-state with `cache:db:*` keys of 1,000 random bytes (TTL one
# day, as the guide's cache entries), then measures, side by side in one run:
#   - `rotate-secret`'s time;
#   - evi-state's unavailability: an authenticated PING (as evi-admin) every 20 ms from
#     inside evi-state's network namespace; the longest time between two PONGs;
#   - the clients' longest gap between successful commands, from their own stats lines
#     (max_gap_ms of each container's last line; replaced containers included), the
#     producer's and the worker's apart, and their auth errors;
#   - whether evi-state is the same container afterwards (id, start time, restarts);
#   - for comparison, one plain `podman restart evi-state` per size, with the same probe.
#
#   bench/rotation-size.sh [--sizes "0 250 750"] [--runs N]     (MB of used memory; N=3)
#
# Needs the test Podman service and images (`scripts/test-env.sh start`, exported) and
# builds the release binary. Holds the lane's lock (EVI_TEST_LOCK, else /tmp/evi-host.lock),
# as the end-to-end tests of that lane do. For the CNI lane or the nested Podman 5,
# export what scripts/test-env.sh (evi_test_lane cni) or scripts/podman5-env.sh sets.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sizes="0 250 750"
runs=3
while (($#)); do
    case "$1" in
        --sizes) sizes="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/rotation-size.sh: unknown argument: $1" >&2; exit 64 ;;
    esac
done
: "${EVI_TEST_PODMAN_URL:?run scripts/test-env.sh start and export what it prints}"
image=${EVI_TEST_VALKEY_IMAGE:-localhost/evi-valkey-test:8}
clients=${EVI_TEST_CLIENT_IMAGE:-localhost/evi-client-test:1}
subnet=${EVI_TEST_SUBNET:-10.90.213.0/24}
podman=${EVI_TEST_PODMAN_CLI:-podman}

cargo build --release --quiet
bin=$PWD/target/release/evi-install

exec 9>"${EVI_TEST_LOCK:-/tmp/evi-host.lock}"
flock 9
# Under /tmp: the nested Podman 5 sees /tmp at the same path (scripts/podman5-env.sh).
work=$(mktemp -d /tmp/evi-bench-rotation.XXXXXX)
reset() {
    $podman rm -f -t 0 evi-bench-probe evi-be evi-worker evi-be-next evi-worker-next evi-rotate evi-state >/dev/null 2>&1 || true
    $podman rm -f -t 0 evi-state-addr >/dev/null 2>&1 || true
    $podman network rm -f evi-net >/dev/null 2>&1 || true
    $podman volume rm -f evi-state-data >/dev/null 2>&1 || true
    for s in $($podman secret ls --format '{{.Name}}' | grep '^evi-' || true); do $podman secret rm "$s" >/dev/null; done
}
cleanup() { reset; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/evi.yaml" <<YAML
state_dir: $work/state
network_subnet: $subnet
services:
  evi-state: { image: $image }
  evi-be: { image: $clients, command: [node, /opt/evi-clients/producer.js] }
  evi-worker: { image: $clients, command: [python3, /opt/evi-clients/worker.py] }
valkey: { maxmemory: 1gb }
YAML
evi() { (cd "$work" && "$bin" --podman-url "$EVI_TEST_PODMAN_URL" "$@"); }
now() { date +%s%3N; }
admin='REDISCLI_AUTH="$(cat /run/secrets/evi-admin-password)"; export REDISCLI_AUTH'
state() { $podman exec evi-state sh -c "$admin; valkey-cli --no-auth-warning --user evi-admin $*"; }
identity() { $podman inspect evi-state --format '{{.Id}} {{.State.StartedAt}} {{.RestartCount}}'; }

# The probe: an authenticated PING every 20 ms in evi-state-addr's namespace (a
# container of evi-state's image there, like the rotation's helper), one line each.
probe_start() {
    $podman run -d --rm --name evi-bench-probe --network container:evi-state-addr \
        --secret evi-admin-password,target=evi-admin-password,mode=0400 --entrypoint '' "$image" sh -c "$admin
        while [ ! -e /tmp/stop ]; do
          if [ \"\$(valkey-cli --no-auth-warning --user evi-admin -h 127.0.0.1 -t 1 ping 2>/dev/null)\" = PONG ]; then echo \"ok \$(date +%s%3N)\"; else echo \"fail \$(date +%s%3N)\"; fi
          sleep 0.02
        done > /tmp/pings; sleep 30" >/dev/null
    sleep 1
}
# Prints: longest gap between PONGs (ms), failed pings.
probe_stop() {
    $podman exec evi-bench-probe touch /tmp/stop; sleep 0.3
    $podman exec evi-bench-probe awk '$1 == "ok" { if (last && $2 - last > max) max = $2 - last; last = $2 } $1 == "fail" { f++ } END { printf "%d %d\n", max, f }' /tmp/pings
    $podman rm -f -t 0 evi-bench-probe >/dev/null
}
# Prints: the producer's longest gap (ms), the worker's, and the auth errors, over every
# evi-be*/evi-worker* container seen (old and new). The producer (ioredis) runs a command
# every 50 ms, so its gap is what an application sees; the worker blocks in XREADGROUP
# (BLOCK 1000) while another consumer of the group gets the entries, so its gap also
# holds time it waited for work.
client_figures() {
    local f client gap auth pgap=0 wgap=0 auths=0
    for f in "$work"/logs.*; do
        client=$(grep -o '"client":"[^"]*"' "$f" | head -n 1 | cut -d'"' -f4)
        gap=$(grep -o '"max_gap_ms":[0-9]*' "$f" | tail -n 1 | cut -d: -f2)
        auth=$(grep -o '"auth":[0-9]*' "$f" | tail -n 1 | cut -d: -f2)
        gap=${gap:-0}; auth=${auth:-0}
        case "$client" in
            producer) ((gap > pgap)) && pgap=$gap ;;
            *) ((gap > wgap)) && wgap=$gap ;;
        esac
        auths=$((auths + auth))
    done
    printf '%d %d %d\n' "$pgap" "$wgap" "$auths"
}
# Prints the tasks lost: per producer process, the `seq` of its confirmed XADDs runs
# 1..N (a failed XADD is retried with the same seq), so a hole, a duplicate or a last
# confirmed one (its stats line's "produced") missing from the stream is a lost task.
lost_tasks() {
    $podman exec evi-state sh -c "$admin; valkey-cli --no-auth-warning --user evi-admin XRANGE stream:tasks:email - +" |
        awk 'prev == "producer" { p = $0 } prev == "seq" { n[p]++; if ($0 + 0 > max[p]) max[p] = $0 + 0 } { prev = $0 }
             END { for (k in n) printf "%s %d %d\n", k, n[k], max[k] }' > "$work/seqs"
    local f id produced
    : > "$work/produced"
    for f in "$work"/logs.*; do
        grep -q '"client":"producer"' "$f" || continue
        id=$(grep '"event":"start"' "$f" | head -n 1 | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
        produced=$(grep -o '"produced":[0-9]*' "$f" | tail -n 1 | cut -d: -f2)
        [ -n "$id" ] && echo "$id ${produced:-0}" >> "$work/produced"
    done
    awk 'NR == FNR { n[$1] = $2; max[$1] = $3; next } { if ($2 > p[$1]) p[$1] = $2 }
         END { lost = 0
               for (k in max) if (n[k] != max[k]) lost += max[k] - n[k] < 0 ? n[k] - max[k] : max[k] - n[k]
               for (k in p) if (p[k] > max[k]) lost += p[k] - max[k]
               print lost }' "$work/seqs" "$work/produced"
}

follow_clients() {
    rm -f "$work"/logs.*
    for c in evi-be evi-worker; do
        id=$($podman inspect "$c" --format '{{.Id}}')
        $podman logs -f "$id" > "$work/logs.$id" 2>/dev/null &
    done
}
follow_new_clients() {
    for c in evi-be evi-worker; do
        id=$($podman inspect "$c" --format '{{.Id}}')
        $podman logs "$id" > "$work/logs.$id" 2>/dev/null
    done
}

fill() {
    local mb=$1
    [ "$mb" -gt 0 ] || return 0
    $podman exec evi-state sh -c "$admin; awk -v mb=$mb 'BEGIN {
        srand(11); n = int(mb * 1024 * 1024 / 1100)
        for (i = 0; i < n; i++) {
          v = \"\"; for (j = 0; j < 125; j++) v = v sprintf(\"%08x\", int(rand() * 4294967295))
          printf \"SET cache:db:fill:%d %s EX 86400\\n\", i, v
        }
    }' | valkey-cli --no-auth-warning --user evi-admin --pipe >/dev/null"
}

echo "| data (used memory) | run | rotate-secret | evi-state unavailable: longest probe gap (failed probes) | producer's longest gap (ioredis) | worker's longest gap (redis-py, blocking reads) | auth errors | same evi-state | tasks lost |"
echo "|---|---|---|---|---|---|---|---|---|"
restarts=()
for mb in $sizes; do
    # One data set per size; every rotation runs on it (a rotation changes no data).
    reset
    evi up >/dev/null
    fill "$mb"
    used=$(state INFO memory | tr -d '\r' | sed -n 's/^used_memory_human://p')
    sleep 3
    for run in $(seq 1 "$runs"); do
        follow_clients
        probe_start
        before=$(identity)
        t=$(now); evi rotate-secret >/dev/null; t_rot=$(( $(now) - t ))
        sleep 2
        read -r pgap pfail < <(probe_stop)
        follow_new_clients
        kill $(jobs -p) 2>/dev/null || true
        read -r pgap_c wgap_c cauth < <(client_figures)
        same=no; [ "$(identity)" = "$before" ] && same=yes
        lost=$(lost_tasks)
        printf '| %s | %d | %d ms | %d ms (%d) | %d ms | %d ms | %d | %s | %s |\n' \
            "$used" "$run" "$t_rot" "$pgap" "$pfail" "$pgap_c" "$wgap_c" "$cauth" "$same" "$lost"
    done
    # For comparison: one plain restart of evi-state at this size, with the same probe.
    probe_start
    t=$(now)
    $podman restart -t 30 evi-state >/dev/null
    until [ "$(state PING 2>/dev/null)" = PONG ]; do sleep 0.05; done
    t_restart=$(( $(now) - t ))
    sleep 1
    read -r rgap rfail < <(probe_stop)
    restarts+=("| $used | ${t_restart} ms | ${rgap} ms ($rfail) |")
done
echo
echo "| data (used memory) | plain \`podman restart evi-state\` to an authenticated PONG | longest probe gap (failed probes) |"
echo "|---|---|---|"
printf '%s\n' "${restarts[@]}"
