#!/usr/bin/env bash
# The README's "run the main job" command for a fresh Debian 12 machine with no container
# registry: installs Podman, writes the runc containers.conf, starts the Podman REST
# service, builds the local Valkey 8 image (all via scripts/test-env.sh), builds
# evi-install and brings up examples/evi.yaml with `evi-install up`.
#
# The Podman service is deliberately left running afterwards (the deployment is managed
# through it); stop it with `scripts/test-env.sh stop`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh
# No EXIT trap here, on purpose: the service has to outlive this script.
evi_test_env_up

printf '\n===== cargo build --release =====\n'
cargo build --release

# Honour CARGO_TARGET_DIR, where cargo put the binary if it is set.
bin="${CARGO_TARGET_DIR:-target}/release/evi-install"
printf '\n===== %s up =====\n' "$bin"
"$bin" --podman-url "$EVI_TEST_PODMAN_URL" --config examples/evi.yaml up

cat <<MSG

The Podman service is still running (pid ${EVI_TEST_PODMAN_PID:-?}) at $EVI_TEST_PODMAN_URL.
Use the podman CLI with the same configuration:
    export CONTAINERS_CONF=$CONTAINERS_CONF
Stop the service with:
    scripts/test-env.sh stop
MSG
