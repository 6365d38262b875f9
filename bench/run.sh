#!/usr/bin/env bash
# The benchmark: evi-install against the bare podman CLI and podman-compose.
#
#   bench/run.sh [--runs N]      (N defaults to 5; scripts/test.sh runs --runs 1 as a smoke test)
#
# Sets up what it needs: the test Podman service and image (scripts/test-env.sh, reused
# when a caller such as scripts/test.sh already started them), the release binary,
# GNU time, and podman-compose in a virtualenv (bench/.venv, kept between runs). Then,
# holding /tmp/evi-host.lock (the lock the end-to-end tests take, since both use the fixed
# evi-* names), bench/bench.py measures and prints one Markdown table. See bench/README.md.
#
# Exits non-zero when a set-up step or a measured command fails; never because a target
# is missed. Removes every resource it made, whatever happens.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PODMAN_COMPOSE_VERSION=1.6.0
VENV=bench/.venv
HOST_LOCK=/tmp/evi-host.lock

usage() {
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
}

runs=5
while (($#)); do
    case "$1" in
        --runs)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || {
                echo "bench/run.sh: --runs needs a positive integer" >&2
                exit 64
            }
            runs="$2"
            shift 2
            ;;
        --runs=*)
            runs="${1#--runs=}"
            [[ "$runs" =~ ^[1-9][0-9]*$ ]] || {
                echo "bench/run.sh: --runs needs a positive integer" >&2
                exit 64
            }
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "bench/run.sh: unknown argument: $1" >&2
            usage >&2
            exit 64
            ;;
    esac
done

bench_log() { printf '[bench] %s\n' "$*" >&2; }

# Exactly as scripts/test.sh: the trap is in place before anything is started, and only
# stops a service that this script started (a caller's running service is reused).
# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh
trap evi_test_env_stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
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

# The measuring part only, under the shared host lock (never the build above).
if ! flock --nonblock "$HOST_LOCK" true; then
    bench_log "waiting for $HOST_LOCK (another run is using the evi-* resources)"
fi
# -o: the lock's descriptor is closed for the child, so a daemon that Podman
# starts from inside the run (aardvark-dns) cannot keep holding the lock.
flock -o "$HOST_LOCK" "$VENV/bin/python" bench/bench.py \
    --runs "$runs" \
    --bin "$bin" \
    --podman-compose "$(pwd)/$VENV/bin/podman-compose" \
    --compose-file "$(pwd)/bench/compose.yaml" \
    --podman-url "$EVI_TEST_PODMAN_URL" \
    --image "$EVI_TEST_VALKEY_IMAGE"
