#!/usr/bin/env bash
# The README's "run the main job" command for a fresh Debian 12 machine with no container
# registry: installs Podman, writes the runc containers.conf, starts the Podman REST
# service, builds the local Valkey 8 image and the client image with the example programs
# (all via scripts/test-env.sh), builds evi-install, brings up examples/evi.yaml with
# `evi-install up`, and then checks from the clients' own stats lines that evi-be produces
# tasks and evi-worker acknowledges them.
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

# examples/evi.yaml names the image test-env.sh builds; a mismatch would mean up ran
# something else than the programs in examples/clients.
grep -q "image: $EVI_TEST_CLIENT_IMAGE," examples/evi.yaml ||
    evi_die "examples/evi.yaml does not run $EVI_TEST_CLIENT_IMAGE for the clients"

# The clients print one JSON stats line a second (examples/clients/stats.js). Wait until
# evi-be has produced and evi-worker has acknowledged tasks, with no auth error. They find
# evi-state through their /etc/hosts entry, not DNS, so this takes a couple of seconds;
# the deadline only bounds a broken run.
printf '\n===== clients (evi-be: producer.js, evi-worker: worker.js) =====\n'
last_stats() { podman logs "$1" 2>/dev/null | grep '"event":"stats"' | tail -n 1 || true; }
num() { grep -o "\"$1\":[0-9]*" <<<"$2" | head -n 1 | cut -d: -f2; }
deadline=$((SECONDS + 20))
while :; do
    be="$(last_stats evi-be)"
    worker="$(last_stats evi-worker)"
    if [[ -n "$be" && -n "$worker" ]]; then
        (($(num auth "$be") == 0 && $(num auth "$worker") == 0)) ||
            evi_die "a client was refused by evi-state (auth errors): evi-be: $be; evi-worker: $worker"
        (($(num produced "$be") > 0 && $(num acked "$worker") > 0)) && break
    fi
    ((SECONDS < deadline)) ||
        evi_die "the clients did not produce and acknowledge tasks within 20 s; evi-be: ${be:-no stats line}; evi-worker: ${worker:-no stats line}"
    sleep 1
done
printf 'evi-be:     %s\nevi-worker: %s\n' "$be" "$worker"

# What an operator sees: each resource, the clients' view of evi-state, and the queue.
printf '\n===== %s status =====\n' "$bin"
"$bin" --podman-url "$EVI_TEST_PODMAN_URL" --config examples/evi.yaml status

cat <<MSG

The Podman service is still running (pid ${EVI_TEST_PODMAN_PID:-?}) at $EVI_TEST_PODMAN_URL.
Use the podman CLI with the same configuration:
    export CONTAINERS_CONF=$CONTAINERS_CONF
Watch the clients' stats (one JSON line a second):
    podman logs -f evi-be      podman logs -f evi-worker
Stop the service with:
    scripts/test-env.sh stop
MSG
