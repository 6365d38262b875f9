#!/usr/bin/env bash
# The rootless lane of scripts/test.sh: Debian 12's Podman 4.3 run by an ordinary user, as
# Podman is meant to be run, with that user's own storage, its own API service on the
# user's socket ($XDG_RUNTIME_DIR/podman/podman.sock, where evi-install looks by default)
# and the end-to-end tests run as that user.
#
#   source scripts/test-env.sh; source scripts/rootless-env.sh
#   evi_rootless_up                 # after evi_test_env_up (packages, images)
#   evi_rootless_test e2e:: ...     # the integration tests, as the user, with a filter
#   evi_rootless_stop
#
# What a real host gives an ordinary user and this sandbox does not, the lane sets up (as
# root, before anything runs as the user), and nothing of it is in the product:
#   - the user (evi-rootless) with subordinate uid/gid ranges (useradd adds them);
#   - /dev/net/tun usable by everyone (0666 on a normal host; 0600 here), which the
#     rootless network namespace (slirp4netns) needs;
#   - /run/user/UID as a tmpfs owned by the user, as systemd-logind mounts it: Podman 4.3
#     cannot set up the rootless network namespace on a plain directory there ("failed to
#     mount runtime directory for rootless netns");
#   - runc and lower ulimits in the user's containers.conf, as for the rootful lanes.
# Every failure is fatal and loud.
set -euo pipefail

EVI_RL_USER="${EVI_RL_USER:-evi-rootless}"
EVI_RL_DIR="${EVI_REPO:?source scripts/test-env.sh first}/target/e2e-rootless"
# The lane's own evi-net subnet: rootless Podman still refuses a subnet a host route uses.
EVI_RL_SUBNET=10.90.253.0/24

evi_rl_log() { printf '[rootless-env] %s\n' "$*" >&2; }
evi_rl_die() {
    printf '[rootless-env] ERROR: %s\n' "$*" >&2
    exit 1
}

evi_rl_uid() { id -u "$EVI_RL_USER"; }
evi_rl_home() { getent passwd "$EVI_RL_USER" | cut -d: -f6; }
evi_rl_runtime_dir() { printf '/run/user/%s' "$(evi_rl_uid)"; }

# Runs a command as the lane's user, with a login-like environment.
evi_rl_as_user() {
    runuser -u "$EVI_RL_USER" -- env -i \
        PATH=/usr/local/bin:/usr/bin:/bin HOME="$(evi_rl_home)" USER="$EVI_RL_USER" \
        XDG_RUNTIME_DIR="$(evi_rl_runtime_dir)" LANG=C.UTF-8 "$@"
}

evi_rl_prepare_user() {
    if ! id "$EVI_RL_USER" >/dev/null 2>&1; then
        evi_rl_log "creating the user $EVI_RL_USER"
        useradd --create-home --shell /bin/sh "$EVI_RL_USER" || evi_rl_die "useradd $EVI_RL_USER failed"
    fi
    grep -q "^$EVI_RL_USER:" /etc/subuid || evi_rl_die "$EVI_RL_USER has no range in /etc/subuid"
    grep -q "^$EVI_RL_USER:" /etc/subgid || evi_rl_die "$EVI_RL_USER has no range in /etc/subgid"
    if ! evi_rl_as_user sh -c 'test -r /dev/net/tun && test -w /dev/net/tun'; then
        evi_rl_log "making /dev/net/tun usable by every user, as on a normal host"
        chmod 0666 /dev/net/tun || evi_rl_die "chmod 0666 /dev/net/tun failed"
    fi
    local run uid gid
    run="$(evi_rl_runtime_dir)"
    uid="$(evi_rl_uid)"
    gid="$(id -g "$EVI_RL_USER")"
    # Each run starts as after a fresh login on a rebooted host: none of the user's processes
    # left and an empty runtime directory. A run killed half-way (a CI job cancelled, a
    # machine suspended) leaves the runtime directory naming a pause process that no longer
    # exists, and Podman then refuses every command ("invalid internal status, try resetting
    # the pause process").
    evi_rootless_stop
    if pgrep -u "$EVI_RL_USER" >/dev/null 2>&1; then
        evi_rl_die "processes of $EVI_RL_USER survive SIGKILL: $(pgrep -u "$EVI_RL_USER" | tr '\n' ' ')"
    fi
    if mountpoint -q "$run"; then
        umount "$run" || umount --lazy "$run" || evi_rl_die "cannot unmount the user's old runtime directory $run"
    fi
    mkdir -p "$run"
    mount -t tmpfs -o "mode=0700,uid=$uid,gid=$gid,size=256m" tmpfs "$run" ||
        evi_rl_die "cannot mount the user's runtime directory $run"
    local conf_dir
    conf_dir="$(evi_rl_home)/.config/containers"
    evi_rl_as_user mkdir -p "$conf_dir"
    evi_rl_as_user sh -c "cat > '$conf_dir/containers.conf'" <<'EOF'
# Written by scripts/rootless-env.sh (the rootless test lane): sandbox quirks, as in
# scripts/test-env.sh's containers.conf for the rootful lanes.
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
[network]
network_backend = "netavark"
EOF
    mkdir -p "$EVI_RL_DIR"
}

evi_rl_socket() { printf '%s/podman/podman.sock' "$(evi_rl_runtime_dir)"; }

evi_rl_start_service() {
    local socket start
    socket="$(evi_rl_socket)"
    # evi_rl_prepare_user stopped every process of the user: the service is always new.
    evi_rl_as_user mkdir -p "$(dirname "$socket")"
    evi_rl_as_user podman system service --time=0 "unix://$socket" \
        >"$EVI_RL_DIR/service.log" 2>&1 &
    start=$SECONDS
    until curl -fsS --unix-socket "$socket" http://d/v4.0.0/libpod/_ping >/dev/null 2>&1; do
        if ((SECONDS - start > 30)); then
            tail -n 20 "$EVI_RL_DIR/service.log" >&2 || true
            evi_rl_die "the rootless Podman service did not answer _ping within 30s"
        fi
        sleep 0.2
    done
    local rootless
    rootless="$(evi_rl_as_user podman info --format '{{.Host.Security.Rootless}}')"
    [[ "$rootless" == true ]] || evi_rl_die "the lane's Podman is not rootless (podman info says $rootless)"
    evi_rl_log "rootless Podman service ready for $EVI_RL_USER on $socket ($(evi_rl_as_user podman --version))"
}

# Copies each test image from root's storage into the user's, unless the same ID is there.
evi_rl_load_images() {
    local images image root_id user_id
    mapfile -t images < <(evi_test_images)
    for image in "${images[@]}"; do
        root_id="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null)" ||
            evi_rl_die "image $image is not in root's storage (scripts/test-env.sh builds it)"
        user_id="$(evi_rl_as_user podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
        if [[ "$user_id" == "$root_id" ]]; then
            continue
        fi
        evi_rl_log "loading $image into $EVI_RL_USER's storage"
        podman save --quiet "$image" | evi_rl_as_user podman load --quiet >/dev/null ||
            evi_rl_die "podman save $image | (as $EVI_RL_USER) podman load failed"
    done
    # An image whose / only root can enter runs nothing as the valkey user when rootless
    # (an image built before scripts/test-env.sh set its root's mode): say so, with the fix.
    local mode
    mode="$(evi_rl_as_user podman run --rm --network none --entrypoint '' "${images[0]}" stat -c %a /)"
    [[ "$mode" == 755 ]] ||
        evi_rl_die "${images[0]} has / with mode $mode: remove it (podman rmi) so that scripts/test-env.sh builds it anew"
}

evi_rootless_up() {
    evi_require_root
    command -v runuser >/dev/null || evi_rl_die "runuser not found (util-linux)"
    command -v slirp4netns >/dev/null || evi_rl_die "slirp4netns not found (scripts/test-env.sh installs it)"
    evi_rl_prepare_user
    evi_rl_start_service
    evi_rl_load_images
}

# The integration tests as the lane's user (cargo stays root's: the test binary is built
# here, then run as the user). Arguments: the test filter and libtest options.
evi_rootless_test() {
    local bin
    bin="$(cargo test --features test-hooks,e2e --test integration --no-run 2>&1 |
        sed -n 's/.*Executable tests\/main.rs (\(.*\))/\1/p' | tail -n 1)"
    [[ -n "$bin" ]] || evi_rl_die "cannot find the integration test binary (cargo test --no-run)"
    [[ "$bin" == /* ]] || bin="$EVI_REPO/$bin"
    (cd "$EVI_REPO" && evi_rl_as_user \
        EVI_TEST_PODMAN_URL="unix://$(evi_rl_socket)" \
        EVI_TEST_VALKEY_IMAGE="${EVI_TEST_VALKEY_IMAGE:-localhost/evi-valkey-test:8}" \
        EVI_TEST_CLIENT_IMAGE="${EVI_TEST_CLIENT_IMAGE:-}" \
        EVI_TEST_IMAGE_NODATA="${EVI_TEST_IMAGE_NODATA:-}" \
        EVI_TEST_IMAGE_OFFICIAL="${EVI_TEST_IMAGE_OFFICIAL:-}" \
        EVI_TEST_IMAGE_NOSETPRIV="${EVI_TEST_IMAGE_NOSETPRIV:-}" \
        EVI_TEST_IMAGE_NOCLI="${EVI_TEST_IMAGE_NOCLI:-}" \
        EVI_TEST_NETWORK_BACKEND=netavark \
        EVI_TEST_SUBNET="$EVI_RL_SUBNET" \
        EVI_TEST_LOCK="$(evi_rl_runtime_dir)/evi-host.lock" \
        RUST_BACKTRACE=1 \
        "$bin" "$@")
}

# Stops every process of the lane's user: the service, conmon and whatever containers a
# failed test left running (the user is the lane's own).
# SIGTERM first, SIGKILL to what is left after 5 s, then up to 5 s more for them to go.
evi_rootless_stop() {
    id "$EVI_RL_USER" >/dev/null 2>&1 || return 0
    local signal waited
    # The tests leave the last stack up, with restart policies: killed under
    # it, evi-state would be restarted by its conmon's cleanup again and again
    # (seen: a restart loop eating a core for the rest of the run). Remove
    # the user's containers first, then stop every process of the user.
    # Twice: Podman 4.3 leaves a container whose namespace another one used
    # (evi-state-addr) on the first pass. After a killed pause process Podman
    # asks for `system migrate` first.
    evi_rl_as_user timeout 120 podman rm -a -f -t 0 >/dev/null 2>&1 ||
        evi_rl_as_user timeout 60 podman system migrate >/dev/null 2>&1 || true
    evi_rl_as_user timeout 120 podman rm -a -f -t 0 >/dev/null 2>&1 || true
    for signal in TERM KILL; do
        pkill "-$signal" -u "$EVI_RL_USER" 2>/dev/null || return 0
        waited=0
        while pgrep -u "$EVI_RL_USER" >/dev/null 2>&1 && ((waited++ < 50)); do
            sleep 0.1
        done
    done
}
