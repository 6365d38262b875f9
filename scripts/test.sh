#!/usr/bin/env bash
# THE test command for evi-install (the README's "scripts/test.sh", and what CI runs via
# .ci/run): lint, unit and end-to-end tests against a real Podman, then a benchmark smoke
# run. Extra arguments go to `cargo test`, e.g. `scripts/test.sh -- --nocapture`.
#
# It sets up its own Podman REST service and Valkey image (scripts/test-env.sh) and stops
# the service again on exit, whatever happens, so nothing is left running after CI.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh

# The trap is in place before anything is started. INT/TERM are turned into a normal exit
# so that the EXIT trap runs (bash skips it when killed by an untrapped signal).
trap evi_test_env_stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '\n===== %s =====\n' "$*"; }

# Fail with the fix spelled out rather than with cargo's "no such command".
evi_require_cargo
cargo fmt --version >/dev/null 2>&1 || evi_die "rustfmt missing: run 'rustup component add rustfmt'"
cargo clippy --version >/dev/null 2>&1 || evi_die "clippy missing: run 'rustup component add clippy'"

step "cargo fmt --check"
cargo fmt --check

# The fault-injection hooks (EVI_INSTALL_TEST_*) exist only with the test-hooks feature;
# the end-to-end tests need them, release builds never have them.
step "cargo clippy --all-targets --features test-hooks -- -D warnings"
cargo clippy --all-targets --features test-hooks -- -D warnings

# Lane 1: Podman 4.3 with netavark + aardvark-dns (a plain `apt-get install podman`).
# Every test: unit, CLI snapshots and the real-Podman end-to-end tests.
step "lane 1/2: Podman 4.3, netavark + aardvark-dns: test environment"
evi_test_lane netavark
evi_test_env_up
step "lane 1/2: Podman 4.3, netavark + aardvark-dns: cargo test --features test-hooks${*:+ $*}"
cargo test --features test-hooks "$@"
evi_test_env_clean
evi_test_env_stop

# Lane 2: Podman 4.3 with CNI and no DNS plugin (`apt-get install --no-install-recommends
# podman`): names do not resolve at all on such a host, so this lane proves that clients
# find evi-state without DNS. The end-to-end modules run again; unit and CLI tests do not
# depend on the host.
step "lane 2/2: Podman 4.3, CNI without DNS: test environment"
evi_test_lane cni
evi_test_env_up
step "lane 2/2: Podman 4.3, CNI without DNS: cargo test --features test-hooks --test integration e2e:: rotation:: catalogue:: clients::"
cargo test --features test-hooks --test integration -- e2e:: rotation:: catalogue:: clients::
evi_test_env_clean
evi_test_env_stop

# The benchmark smoke run uses the netavark lane's service again.
evi_test_lane netavark
evi_test_env_up

if [[ -e bench/run.sh ]]; then
    step "bench/run.sh --runs 1 (smoke)"
    if [[ -x bench/run.sh ]]; then
        bench/run.sh --runs 1
    else
        bash bench/run.sh --runs 1
    fi
fi

# bench/run.sh built the release binary (a no-op here if so): it must carry no test hook.
step "the release binary has no test hooks"
cargo build --release
release_bin="${CARGO_TARGET_DIR:-target}/release/evi-install"
if grep -q EVI_INSTALL_TEST_ "$release_bin"; then
    evi_die "$release_bin mentions EVI_INSTALL_TEST_: the test hooks were built into a release binary"
fi

step "all checks passed"
