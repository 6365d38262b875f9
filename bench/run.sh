#!/usr/bin/env bash
# The benchmark: evi-install against the bare podman CLI and podman-compose, and the
# real clients through rotate-secret on both network setups.
#
#   bench/run.sh [--runs N] [--clients-runs M]
#
#   --runs N          rounds of the stack rows (default 5; scripts/test.sh runs --runs 1 as
#                     a smoke test)
#   --clients-runs M  runs of the real clients through rotate-secret on each network setup
#                     (default 10, or 1 with --runs 1; 0 leaves them and the CNI lane out)
#
# Sets up what it needs: the test Podman service and images (scripts/test-env.sh, reused
# when a caller such as scripts/test.sh already started them), the release binary,
# GNU time, and podman-compose in a virtualenv (bench/.venv, kept between runs). Then:
#   1. netavark lane (the default Podman), holding /tmp/evi-host.lock (the lock the
#      end-to-end tests take, since both use the fixed evi-* names): the stack rows, then
#      M client runs;
#   2. CNI lane (evi_test_lane cni: a second Podman with its own storage and subnet),
#      holding /tmp/evi-host-cni.lock: M client runs;
# and prints both Markdown tables at the end. See bench/README.md.
#
# Exits non-zero when a set-up step or a measured command fails; never because a target
# is missed. Removes every resource it made, and stops every service it started.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PODMAN_COMPOSE_VERSION=1.6.0
VENV=bench/.venv
HOST_LOCK=/tmp/evi-host.lock
# evi-net's subnet on the netavark lane: not evi-install's default (10.90.213.0/24, which
# the end-to-end tests use) but one of the benchmark's own. Every Podman on a host shares
# netavark's address-lease database, keyed by network name, and a container killed by
# another run can leave a lease of evi-state's fixed address there (seen here: "requested
# ip address 10.90.213.2 is already allocated" to a container no storage has). The
# subnet changes nothing that is measured.
NETAVARK_SUBNET=10.90.203.0/24

usage() {
    sed -n '5,11p' "$0" | sed 's/^# \{0,1\}//'
}

die_usage() {
    echo "bench/run.sh: $*" >&2
    usage >&2
    exit 64
}

runs=5
runs_given=0
clients_runs=""
while (($#)); do
    case "$1" in
        --runs | --clients-runs)
            [[ $# -ge 2 ]] || die_usage "$1 needs a value"
            opt="$1" value="$2"
            shift 2
            ;;
        --runs=* | --clients-runs=*)
            opt="${1%%=*}" value="${1#*=}"
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            die_usage "unknown argument: $1"
            ;;
    esac
    case "$opt" in
        --runs)
            [[ "$value" =~ ^[1-9][0-9]*$ ]] || die_usage "--runs needs a positive integer"
            runs="$value"
            runs_given=1
            ;;
        --clients-runs)
            [[ "$value" =~ ^[0-9]+$ ]] || die_usage "--clients-runs needs a number (0 or more)"
            clients_runs="$((10#$value))"
            ;;
    esac
done
if [[ -z "$clients_runs" ]]; then
    # The smoke run (--runs 1) does one client run on each setup; a full run does ten.
    if ((runs_given && runs == 1)); then clients_runs=1; else clients_runs=10; fi
fi

bench_log() { printf '[bench] %s\n' "$*" >&2; }

# Runs "$@" holding the lock file $1 (the lane's host lock), saying so if it has to wait,
# after evi_test_env_clean (under the lock too): it removes what an earlier run left in
# this lane, including a bridge a killed run left on the lane's subnet, over which `up`
# would refuse the subnet. -o: the lock's descriptor is closed for the child, so a daemon
# that Podman starts from inside the run (aardvark-dns) cannot keep holding the lock.
locked() {
    local lock="$1"
    shift
    if ! flock --nonblock "$lock" true; then
        bench_log "waiting for $lock (another run is using this lane's evi-* resources)"
    fi
    # shellcheck disable=SC2016  # expanded by the inner bash
    flock -o "$lock" bash -c \
        'set -euo pipefail; source scripts/test-env.sh; evi_test_env_clean; exec "$@"' \
        bench-lane "$@"
}

# Exactly as scripts/test.sh: the trap is in place before anything is started, and only
# stops a service that this script started (a caller's running service is reused). Each
# lane's service is stopped before the next lane starts, so the trap only ever has the
# current lane's to stop.
# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh
out="$(mktemp -d /tmp/evi-bench-out.XXXXXX)"
cleanup() {
    local rc=$?
    evi_test_env_stop
    # A later lane failed: the stack rows measured before it are still worth seeing.
    if ((rc != 0)) && [[ -s "$out/stack.md" ]]; then
        bench_log "the stack rows measured before the failure:"
        cat "$out/stack.md" >&2
    fi
    rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
evi_test_lane netavark
evi_test_env_up

# GNU time for the peak RSS (Debian's `time` package; the shell keyword has no -v).
if [[ ! -x /usr/bin/time ]]; then
    bench_log "installing Debian's time package (GNU time)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends time
fi

bench_log "cargo build --release"
cargo build --release
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$(pwd)/$target_dir"
bin="$target_dir/release/evi-install"
[[ -x "$bin" ]] || evi_die "no release binary at $bin"

# podman-compose from PyPI, in a virtualenv that is reused while it has the right version.
if ! "$VENV/bin/podman-compose" --version 2>/dev/null | grep -q "podman-compose version $PODMAN_COMPOSE_VERSION\$"; then
    bench_log "installing podman-compose $PODMAN_COMPOSE_VERSION into $VENV"
    if ! python3 -m venv --help >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=300 update
        apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends python3-venv
    fi
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "podman-compose==$PODMAN_COMPOSE_VERSION"
    "$VENV/bin/podman-compose" --version >/dev/null
fi
python="$(pwd)/$VENV/bin/python"

# Lane 1, netavark + aardvark-dns (the default Podman): the stack rows (the CLI floor and
# compose rely on Podman's DNS, so they run only here), then the real clients. The
# measuring part only, under the lane's lock (never the build above).
# A failed lane does not stop the other one; the exit status says it failed.
status=0
bench_log "netavark lane: stack rows ($runs runs) and real clients ($clients_runs runs)"
locked "$HOST_LOCK" "$python" bench/bench.py \
    --runs "$runs" \
    --clients-runs "$clients_runs" \
    --lane "netavark + aardvark-dns" \
    --subnet "$NETAVARK_SUBNET" \
    --clients-out "$out/netavark.json" \
    --bin "$bin" \
    --podman-compose "$(pwd)/$VENV/bin/podman-compose" \
    --compose-file "$(pwd)/bench/compose.yaml" \
    --podman-url "$EVI_TEST_PODMAN_URL" \
    --image "$EVI_TEST_VALKEY_IMAGE" \
    --client-image "$EVI_TEST_CLIENT_IMAGE" \
    >"$out/stack.md" || status=$?
evi_test_env_stop

# Lane 2, CNI without DNS: a Podman of its own (storage, subnet, lock), the real clients.
reports=("$out/netavark.json")
if ((clients_runs > 0)); then
    evi_test_lane cni
    evi_test_env_up
    bench_log "CNI lane: real clients ($clients_runs runs)"
    locked "$EVI_TEST_LOCK" "$python" bench/bench.py \
        --runs 0 \
        --clients-runs "$clients_runs" \
        --lane "CNI, no DNS" \
        --subnet "$EVI_TEST_SUBNET" \
        --clients-out "$out/cni.json" \
        --bin "$bin" \
        --podman-url "$EVI_TEST_PODMAN_URL" \
        --image "$EVI_TEST_VALKEY_IMAGE" \
        --client-image "$EVI_TEST_CLIENT_IMAGE" || status=$?
    evi_test_env_stop
    reports+=("$out/cni.json")
fi

# Both tables, as one report (what was measured, if a lane failed).
cat "$out/stack.md"
: >"$out/stack.md" # printed: the EXIT trap need not show it again
if ((clients_runs > 0)); then
    echo
    "$python" bench/bench.py --report "${reports[@]}"
fi
if ((status != 0)); then
    bench_log "a lane failed (exit $status); see the errors above"
    exit "$status"
fi
