#!/usr/bin/env bash
# Checks the example client programs (examples/clients) against a real Valkey 8, with the
# podman CLI only, on resources of their own: network clienttest-net, containers and
# secrets named clienttest-*. Nothing named evi-* and not evi-net, so it can run while
# end-to-end tests use those names on the same host.
#
#   scripts/clients-check.sh [SECONDS]     (steady phase length, default 20)
#
# Phases, each with its figures printed as "check:" lines and failing loudly:
#   1. steady: producer + worker.js + worker.py for SECONDS; stop the producer, let the
#      workers drain; then produced == acked (js + py) == XLEN, XPENDING 0, no errors.
#   2. restart: a second producer; `podman restart` of the server; conn errors appear in
#      all three clients, and each one recovers (successful commands after the restart).
#   3. auth: CONFIG SET requirepass to another password and CLIENT KILL the connections;
#      auth errors appear in all three; the password is set back and all recover.
#   4. SIGTERM: every client prints a final stats line and exits 0 within ~1 s.
# No password or VALKEY_URL is printed; the logs are checked for the password at the end.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh

STEADY_S="${1:-20}"
[[ "$STEADY_S" =~ ^[0-9]+$ ]] || evi_die "usage: $0 [SECONDS]"
NET=clienttest-net
# A fixed subnet away from evi-install's (10.90.213.0/24, the CNI lane's 10.90.223.0/24),
# so this check never takes a subnet an end-to-end run is about to create. Like
# evi-install, the server gets a fixed address and the clients an /etc/hosts entry for it,
# so they find it without DNS (aardvark-dns 1.4 can be silent for 30-50 s after a restart).
SUBNET=10.90.251.0/24
SERVER_IP=10.90.251.2
# And a fixed MAC: a restarted (or re-created) container on the same fixed IP otherwise
# comes back with a new MAC while every client's ARP cache still holds the old one, and
# all connects time out until that entry expires. Measured here: 28-42 s without a fixed
# MAC, under 4 s with it.
SERVER_MAC=02:42:0a:5a:fb:02
SERVER=clienttest-valkey
PREFIX=clienttest
STREAM=stream:tasks:email
TMP=""

log() { printf '[clients-check] %s\n' "$*" >&2; }
check() { printf 'check: %s\n' "$*"; }
fail() {
    printf '[clients-check] FAILED: %s\n' "$*" >&2
    exit 1
}

cleanup() {
    local c
    for c in $(podman ps -a --format '{{.Names}}' | grep -E "^${PREFIX}-" || true); do
        podman rm -f -t 1 "$c" >/dev/null 2>&1 || true
    done
    podman network rm -f "$NET" >/dev/null 2>&1 || true
    podman secret rm "$PREFIX-pw" >/dev/null 2>&1 || true
    podman secret rm "$PREFIX-url" >/dev/null 2>&1 || true
    if [[ -n "$TMP" ]]; then rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

evi_require_root
evi_install_packages
evi_write_containers_conf
evi_build_valkey_image
evi_build_client_image
cleanup # leftovers of an interrupted earlier run

# The password lives only in a private temp file and in Podman secrets.
TMP="$(mktemp -d)"
chmod 700 "$TMP"
head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$TMP/pw"
head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$TMP/pw2"
printf 'redis://:%s@%s:6379' "$(<"$TMP/pw")" "$SERVER" >"$TMP/url"
podman network create --subnet "$SUBNET" --ip-range 10.90.251.128/25 "$NET" >/dev/null
podman secret create "$PREFIX-pw" "$TMP/pw" >/dev/null
podman secret create "$PREFIX-url" "$TMP/url" >/dev/null

# Valkey with the password from the mounted secret and AOF on, so a restart keeps the
# stream, the group and the pending entries (as evi-state does).
podman run -d --name "$SERVER" --network "$NET" --ip "$SERVER_IP" --mac-address "$SERVER_MAC" --secret "$PREFIX-pw" "$EVI_TEST_VALKEY_IMAGE" \
    sh -c 'umask 077; printf "requirepass %s\nappendonly yes\nappendfsync everysec\ndir /data\nport 6379\nbind * -::*\n" "$(cat /run/secrets/clienttest-pw)" >/tmp/valkey.conf; exec valkey-server /tmp/valkey.conf' \
    >/dev/null

# valkey-cli inside the server, authenticated from the secret file (never on a command line).
vcli() {
    podman exec "$SERVER" sh -c 'REDISCLI_AUTH="$(cat /run/secrets/clienttest-pw)" valkey-cli --no-auth-warning -e "$@"' vcli "$@"
}
wait_server() {
    local i
    for ((i = 0; i < 100; i++)); do
        [[ "$(vcli ping 2>/dev/null)" == PONG ]] && return 0
        sleep 0.1
    done
    fail "$SERVER did not answer PING within 10 s"
}
wait_server

start_client() { # NAME COMMAND...
    local name="$1"
    shift
    podman run -d --name "$PREFIX-$name" --network "$NET" --add-host "$SERVER:$SERVER_IP" \
        --secret "$PREFIX-url,type=env,target=VALKEY_URL" "$EVI_TEST_CLIENT_IMAGE" "$@" >/dev/null
}
# The last stats line of a client ("" if none yet).
stats_of() { podman logs "$PREFIX-$1" 2>/dev/null | grep '"event":"stats"' | tail -n 1 || true; }
# A number from a flat JSON stats line; the error classes are unique keys too.
num() { grep -o "\"$1\":[0-9]*" <<<"$2" | head -n 1 | cut -d: -f2; }
errs() { printf 'auth=%s conn=%s other=%s' "$(num auth "$1")" "$(num conn "$1")" "$(num other "$1")"; }

# Stop a client with SIGTERM; print its stop time, check exit 0 and a final stats line.
stop_client() {
    local name="$1" t0 ms rc final
    t0=$(date +%s%N)
    podman stop -t 10 "$PREFIX-$name" >/dev/null
    ms=$((($(date +%s%N) - t0) / 1000000))
    rc="$(podman inspect --format '{{.State.ExitCode}}' "$PREFIX-$name")"
    final="$(podman logs "$PREFIX-$name" 2>/dev/null | grep '"final":true' | tail -n 1 || true)"
    check "$name: SIGTERM -> exit $rc in ${ms} ms (podman stop included), final line: ${final:+yes}"
    [[ "$rc" == 0 ]] || fail "$name exited $rc after SIGTERM"
    [[ -n "$final" ]] || fail "$name printed no final stats line"
    ((ms < 3000)) || fail "$name took ${ms} ms to stop"
}

# ---- 1. steady ---------------------------------------------------------------------------
log "phase 1: producer + worker.js + worker.py for ${STEADY_S}s"
start_client workerjs node /opt/evi-clients/worker.js
start_client workerpy python3 /opt/evi-clients/worker.py
start_client producer node /opt/evi-clients/producer.js
sleep "$STEADY_S"
stop_client producer
p="$(podman logs "$PREFIX-producer" | grep '"final":true' | tail -n 1)"
produced="$(num produced "$p")"
# Drain: the workers have taken and acknowledged everything once the group's lag and the
# pending count are both 0.
drained=""
for ((i = 0; i < 100; i++)); do
    pending="$(vcli xpending "$STREAM" workers | head -n 1)"
    lag="$(vcli xinfo groups "$STREAM" | awk 'prev == "lag" { print; exit } { prev = $0 }')"
    if [[ "$pending" == 0 && "$lag" == 0 ]]; then
        drained=yes
        break
    fi
    sleep 0.1
done
[[ -n "$drained" ]] || fail "workers did not drain within 10 s (pending $pending, lag $lag)"
sleep 1.1 # one more stats line from each worker after the last XACK
js="$(stats_of workerjs)"
py="$(stats_of workerpy)"
xlen="$(vcli xlen "$STREAM")"
acked=$(($(num acked "$js") + $(num acked "$py")))
check "steady: produced=$produced acked=$acked (worker-js $(num acked "$js"), worker-py $(num acked "$py")) XLEN=$xlen XPENDING=$pending lag=$lag"
check "steady: producer ok=$(num ok "$p") $(errs "$p") max_gap_ms=$(num max_gap_ms "$p")"
check "steady: worker-js ok=$(num ok "$js") $(errs "$js") max_gap_ms=$(num max_gap_ms "$js")"
check "steady: worker-py ok=$(num ok "$py") $(errs "$py") max_gap_ms=$(num max_gap_ms "$py")"
((produced > 0)) || fail "nothing produced"
((produced == acked)) || fail "produced $produced != acked $acked"
((xlen == produced)) || fail "XLEN $xlen != produced $produced"
for line in "$p" "$js" "$py"; do
    [[ "$(errs "$line")" == "auth=0 conn=0 other=0" ]] || fail "errors in steady phase: $line"
done
ttl="$(vcli ttl cache:db:user:1)"
check "steady: TTL cache:db:user:1 = $ttl s, keys: $(vcli --scan --pattern 'op:*' | wc -l) op:*, $(vcli --scan --pattern 'cache:db:*' | wc -l) cache:db:*"

# ---- 2. server restart -------------------------------------------------------------------
log "phase 2: restart of the server under load"
start_client producer2 node /opt/evi-clients/producer.js
sleep 3
declare -A conn_before=()
for c in producer2 workerjs workerpy; do conn_before[$c]="$(num conn "$(stats_of "$c")")"; done
t0=$(date +%s%N)
podman restart -t 10 "$SERVER" >/dev/null
wait_server
check "restart: podman restart + PONG took $((($(date +%s%N) - t0) / 1000000)) ms"
# Recovered: a conn error was counted, and the latest stats line shows a success within
# the last 1.5 s. The deadline is generous (the server is found through /etc/hosts, so
# no DNS delay is expected; a slow restart under load still must not fail the check).
declare -A recovered=()
deadline=$((SECONDS + 90))
while ((${#recovered[@]} < 3 && SECONDS < deadline)); do
    sleep 0.5
    for c in producer2 workerjs workerpy; do
        [[ -n "${recovered[$c]:-}" ]] && continue
        s="$(stats_of "$c")"
        if (($(num conn "$s") > ${conn_before[$c]} && $(num gap_now_ms "$s") < 1500)); then
            recovered[$c]=$((($(date +%s%N) - t0) / 1000000))
        fi
    done
done
for c in producer2 workerjs workerpy; do
    s="$(stats_of "$c")"
    dns="$(podman logs "$PREFIX-$c" | grep '"event":"error"' | grep -c 'EAI_AGAIN\|ENOTFOUND\|Error -3\|Error -2\|name resolution' || true)"
    check "restart: $c recovered after ${recovered[$c]:-NOT} ms (from the restart; stats lines are 1 s apart): ok=$(num ok "$s") $(errs "$s") max_gap_ms=$(num max_gap_ms "$s") name-resolution error lines=$dns"
    [[ -n "${recovered[$c]:-}" ]] || fail "$c did not recover within 90 s of the server restart: $s"
    (($(num auth "$s") == 0 && $(num other "$s") == 0)) || fail "$c saw non-conn errors across a server restart: $s"
done

# ---- 3. wrong password -------------------------------------------------------------------
log "phase 3: the server's password changes under the clients"
before=()
for c in producer2 workerjs workerpy; do before+=("$(num auth "$(stats_of "$c")")"); done
# The new password goes in over stdin, never on a command line.
podman exec -i "$SERVER" sh -c 'IFS= read -r p; REDISCLI_AUTH="$(cat /run/secrets/clienttest-pw)" valkey-cli --no-auth-warning -e config set requirepass "$p" >/dev/null' <"$TMP/pw2"
# Changing requirepass keeps authenticated connections; drop them so the clients must AUTH.
podman exec -i "$SERVER" sh -c 'IFS= read -r p; REDISCLI_AUTH="$p" valkey-cli --no-auth-warning -e client kill type normal >/dev/null' <"$TMP/pw2"
sleep 4
i=0
for c in producer2 workerjs workerpy; do
    s="$(stats_of "$c")"
    n=$(($(num auth "$s") - ${before[$i]}))
    check "auth: $c $(errs "$s") (+$n auth in ~4 s) last_error=$(grep -o '"last_error":"[^"]*"' <<<"$s" | cut -d: -f2- | cut -c1-120)"
    ((n > 0)) || fail "$c saw no auth error with a wrong password"
    # The producer tries at most ~3 commands per 50 ms tick; workers wait 100 ms after an
    # error. Far more means a loop spins on errors.
    ((n < 400)) || fail "$c counted $n auth errors in ~4 s: it spins on errors"
    i=$((i + 1))
done
podman exec -i "$SERVER" sh -c 'IFS= read -r p; REDISCLI_AUTH="$p" valkey-cli --no-auth-warning -e config set requirepass "$(cat /run/secrets/clienttest-pw)" >/dev/null' <"$TMP/pw2"
sleep 3
for c in producer2 workerjs workerpy; do
    s="$(stats_of "$c")"
    check "auth: $c recovered: ok=$(num ok "$s") gap_now_ms=$(num gap_now_ms "$s")"
    (($(num gap_now_ms "$s") < 2000)) || fail "$c has not recovered after the password was restored"
done

# ---- 4. SIGTERM and totals ---------------------------------------------------------------
log "phase 4: SIGTERM"
stop_client producer2
for ((i = 0; i < 100; i++)); do
    pending="$(vcli xpending "$STREAM" workers | head -n 1)"
    [[ "$pending" == 0 ]] && break
    sleep 0.1
done
sleep 1.1
stop_client workerjs
stop_client workerpy
p2="$(podman logs "$PREFIX-producer2" | grep '"final":true' | tail -n 1)"
js="$(podman logs "$PREFIX-workerjs" | grep '"final":true' | tail -n 1)"
py="$(podman logs "$PREFIX-workerpy" | grep '"final":true' | tail -n 1)"
produced_all=$((produced + $(num produced "$p2")))
acked_all=$(($(num acked "$js") + $(num acked "$py")))
check "totals: produced=$produced_all acked=$acked_all XLEN=$(vcli xlen "$STREAM") XPENDING=$pending (a command whose reply is lost in an outage can differ by a few)"

# ---- the secret stays secret -------------------------------------------------------------
leaks=0
for c in producer producer2 workerjs workerpy; do
    if podman logs "$PREFIX-$c" 2>&1 | grep -qF -e "$(<"$TMP/pw")" -e "$(<"$TMP/pw2")"; then
        leaks=$((leaks + 1))
        log "$c's output contains a password"
    fi
done
check "no password in any client output: $([[ $leaks == 0 ]] && echo yes || echo NO)"
((leaks == 0)) || fail "password found in client output"
check "error lines: $(for c in producer producer2 workerjs workerpy; do printf '%s=%s ' "$c" "$(podman logs "$PREFIX-$c" | grep -c '"event":"error"' || true)"; done)"
log "all client checks passed"
