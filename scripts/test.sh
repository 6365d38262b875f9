#!/usr/bin/env bash
# THE test command for evi-install (the README's "scripts/test.sh", and what CI runs via
# .ci/run): lint, unit and end-to-end tests against a real Podman, then a benchmark smoke
# run, then the end-to-end tests again against Podman 5.4. Extra arguments go to
# `cargo test` in both lanes, e.g. `scripts/test.sh e2e -- --nocapture`.
#
# Two lanes, because operators run both: the host's Podman 4.3 (Debian 12), and Debian
# trixie's Podman 5.4 nested in a container of the host's Podman (scripts/podman5-env.sh).
# EVI_TEST_PODMAN5=0 leaves out the second lane (a quicker local run; CI always runs it).
#
# It sets up its own Podman REST services and Valkey image (scripts/test-env.sh) and stops
# them again on exit, whatever happens, so nothing is left running after CI.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh
# shellcheck source=scripts/podman5-env.sh
source scripts/podman5-env.sh

# The trap is in place before anything is started. INT/TERM are turned into a normal exit
# so that the EXIT trap runs (bash skips it when killed by an untrapped signal).
trap 'evi_podman5_stop; evi_test_env_stop' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '\n===== %s =====\n' "$*"; }

step "test environment (podman service, valkey image)"
evi_test_env_up

# Fail with the fix spelled out rather than with cargo's "no such command".
cargo fmt --version >/dev/null 2>&1 || evi_die "rustfmt missing: run 'rustup component add rustfmt'"
cargo clippy --version >/dev/null 2>&1 || evi_die "clippy missing: run 'rustup component add clippy'"

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "lane 1: Podman 4.3 (host): cargo test${*:+ $*}"
cargo test "$@"

if [[ -e bench/run.sh ]]; then
    step "bench/run.sh --runs 1 (smoke)"
    if [[ -x bench/run.sh ]]; then
        bench/run.sh --runs 1
    else
        bash bench/run.sh --runs 1
    fi
fi

# The second lane: the integration tests that talk to Podman (the unit and cli tests already
# ran), or, when extra arguments were given, what they select (e.g. `scripts/test.sh e2e --
# --nocapture` runs e2e in both lanes). One test is always left out: the full-disk one mounts
# a tmpfs over its state directory after the nested Podman started, the host's mounts are
# private so the nested Podman would never see it, and what it tests (atomic config writes)
# does not depend on Podman.
if [[ "${EVI_TEST_PODMAN5:-1}" != 0 ]]; then
    step "lane 2: Podman 5.4 (nested): start the service"
    lane2_start=$SECONDS
    evi_podman5_up
    lane2_skip=(--skip catalogue::a_full_disk_while_writing_the_config_leaves_the_old_file_intact)
    has_dashes=0
    for arg in "$@"; do [[ "$arg" != -- ]] || has_dashes=1; done
    if (($# == 0)); then
        # libtest runs a test when its name matches any of the filters.
        lane2_args=(-- e2e:: rotation:: catalogue:: "${lane2_skip[@]}")
    elif ((has_dashes)); then
        lane2_args=("$@" "${lane2_skip[@]}")
    else
        lane2_args=("$@" -- "${lane2_skip[@]}")
    fi
    step "lane 2: Podman 5.4 (nested): cargo test --test integration ${lane2_args[*]}"
    cargo test --test integration "${lane2_args[@]}"
    evi_podman5_stop
    evi_log "lane 2 (Podman 5.4) took $((SECONDS - lane2_start))s"
fi

step "all checks passed"
