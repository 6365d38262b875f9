#!/usr/bin/env bash
# A second Podman for the end-to-end tests: Debian trixie's Podman 5.4, running nested in one
# privileged container of the host's Podman 4.3, with its libpod REST service on a socket
# bind-mounted out to the host. Operators installing a fresh host today get Podman 5; the
# host here has Debian 12's 4.3, and no registry, so Podman 5 is built from Debian packages.
#
# Use it after scripts/test-env.sh (it needs that file's host Podman, containers.conf and
# Valkey image):
#
#     source scripts/test-env.sh
#     source scripts/podman5-env.sh
#     trap 'evi_podman5_stop; evi_test_env_stop' EXIT
#     evi_test_env_up
#     evi_podman5_up          # now EVI_TEST_PODMAN_URL and EVI_TEST_PODMAN_CLI point at Podman 5
#
# or directly:  scripts/podman5-env.sh start   (build if needed, start, print the exports)
#               scripts/podman5-env.sh stop    (remove the container)
#
# After evi_podman5_up these are exported for the tests:
#   EVI_TEST_PODMAN_URL   unix://SOCKDIR/podman.sock, the nested service
#   EVI_TEST_PODMAN_CLI   a wrapper that runs the nested podman CLI (`podman exec -i ...`), so
#                         the tests inspect the same Podman the tool talks to
#
# Everything below was verified on these machines (shared/notes/podman-on-these-machines.md,
# "Podman 5 on these machines (nested)"); the comments say why each odd piece is there.
# Every failure is fatal and loud, as in test-env.sh.

set -euo pipefail

EVI_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EVI_TEST_DIR="${EVI_TEST_DIR:-$EVI_REPO/target/e2e}"
# Not `evi-...`: the tests reset every resource named like theirs (evi-state, evi-net,
# evi-* secrets); the harness container must never look like one of them. One per checkout
# (keyed like the socket fallback below): test runs of two checkouts on one host must not
# remove each other's Podman 5.
EVI_P5_NAME="${EVI_P5_NAME:-evi-test-podman5-$(printf '%s' "$EVI_REPO" | md5sum | cut -c1-8)}"
# The host's tests lock, taken while the container is created or removed: other test runs on
# the host compare `podman ps -a` before and after each step.
EVI_P5_HOST_LOCK=/tmp/evi-host.lock
EVI_P5_DIR="$EVI_TEST_DIR/podman5"
# The nested Podman's graphroot, on the host's disk: nested overlay needs a non-overlay
# directory under it (the host's own storage is overlay). Kept between runs, so loaded
# images stay cached.
EVI_P5_STORAGE="$EVI_P5_DIR/storage"
EVI_P5_PACKAGES=(podman crun runc conmon catatonit netavark aardvark-dns nftables iptables
    uidmap ca-certificates fuse-overlayfs)
EVI_P5_TIMEOUT="${EVI_P5_TIMEOUT:-60}"
# The tag names the package list, so a changed list builds a new image instead of reusing
# a cached one without the new package.
EVI_P5_IMAGE="${EVI_P5_IMAGE:-localhost/evi-test-podman5:trixie-$(printf '%s\n' "${EVI_P5_PACKAGES[@]}" | md5sum | cut -c1-8)}"

evi_p5_log() { printf '[podman5-env] %s\n' "$*" >&2; }
evi_p5_die() {
    printf '[podman5-env] ERROR: %s\n' "$*" >&2
    exit 1
}

# The socket directory is bind-mounted at the same path inside and outside, so the URL the
# host uses is the one the service binds. sun_path is 108 bytes: a deep checkout falls back
# to a short directory keyed by the checkout's path (as test-env.sh does).
evi_p5_sockdir() {
    local dir="$EVI_P5_DIR/run"
    if ((${#dir} >= 90)); then
        dir="/tmp/evi-test-podman5-$(printf '%s' "$EVI_REPO" | md5sum | cut -c1-12)"
    fi
    printf '%s' "$dir"
}
evi_p5_socket() { printf '%s/podman.sock' "$(evi_p5_sockdir)"; }

# (evi_ping_socket is test-env.sh's, which is sourced first.)
evi_p5_ping() { evi_ping_socket "$(evi_p5_socket)" v5.0.0; }

# The host's podman, with test-env.sh's containers.conf (runc, ulimits 4096): without it the
# outer container does not start on these machines.
evi_p5_require_conf() {
    [[ -n "${CONTAINERS_CONF:-}" ]] ||
        evi_p5_die "CONTAINERS_CONF is not set: run evi_test_env_up (scripts/test-env.sh) first"
}
evi_p5_host_podman() {
    evi_p5_require_conf
    podman "$@"
}

# Build the Podman 5 image unless the host's storage has it. Debian's own packages, from the
# mirror apt uses, verified against the archive keyring (no --no-check-gpg).
evi_p5_build_image() {
    if evi_p5_host_podman image exists "$EVI_P5_IMAGE"; then
        evi_p5_log "image $EVI_P5_IMAGE already present (cached)"
        return 0
    fi
    evi_require_trixie_keyring
    mkdir -p "$EVI_P5_DIR"
    local rc
    # A subshell with its own errexit and a lock, as in test-env.sh: concurrent runs build once.
    set +e
    (
        set -e
        flock 9
        evi_p5_host_podman image exists "$EVI_P5_IMAGE" && exit 0
        _evi_p5_build_image_locked
    ) 9>"$EVI_P5_DIR/image-build.lock"
    rc=$?
    set -e
    ((rc == 0)) || evi_p5_die "building $EVI_P5_IMAGE failed"
}

_evi_p5_build_image_locked() {
    local mirror root start log include
    mirror="$(evi_debian_mirror)"
    start=$SECONDS
    log="$EVI_P5_DIR/debootstrap.log"
    root="$(mktemp -d "$EVI_P5_DIR/root.XXXXXX")"
    # shellcheck disable=SC2064  # expand $root now: it is local to this function
    trap "evi_remove_root '$root'" EXIT
    include="$(
        IFS=,
        printf '%s' "${EVI_P5_PACKAGES[*]}"
    )"
    evi_p5_log "building $EVI_P5_IMAGE: debootstrap trixie with $include from $mirror (log: $log)"
    if ! debootstrap --variant=minbase --include="$include" trixie "$root" "$mirror" >"$log" 2>&1; then
        tail -n 30 "$log" >&2 || true
        evi_p5_die "debootstrap of trixie (podman 5) failed (see $log)"
    fi
    local tool
    for tool in /usr/bin/podman /usr/bin/catatonit /usr/bin/runc /usr/bin/conmon; do
        [[ -e "$root$tool" ]] || evi_p5_die "debootstrapped root lacks $tool"
    done
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/debootstrap"
    tar --numeric-owner -C "$root" -c . | evi_p5_host_podman import --quiet - "$EVI_P5_IMAGE" >/dev/null ||
        evi_p5_die "podman import of $EVI_P5_IMAGE failed"
    evi_p5_log "built $EVI_P5_IMAGE in $((SECONDS - start))s"
}

# The nested Podman's configuration, bind-mounted read-only into /etc/containers.
evi_p5_write_conf() {
    mkdir -p "$EVI_P5_DIR/etc" "$EVI_P5_STORAGE" "$(evi_p5_sockdir)"
    # cgroupfs: there is no systemd inside. events_logger=file: no journald.
    # log_driver=k8s-file: `podman logs` without journald. runc and ulimits 4096: the same
    # sandbox limits as the host's (crun cannot raise RLIMIT_NOFILE here).
    cat >"$EVI_P5_DIR/etc/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
    # Overlay on the bind-mounted host directory (ext4): overlay on the outer container's own
    # overlay root would not mount; vfs works but copies every layer.
    cat >"$EVI_P5_DIR/etc/storage.conf" <<'EOF'
[storage]
driver = "overlay"
graphroot = "/var/lib/containers/storage"
runroot = "/run/containers/storage"
EOF
}

# The wrapper the tests run instead of `podman` (EVI_TEST_PODMAN_CLI): the nested CLI, on the
# same storage as the nested service. -i passes stdin (`podman secret create NAME -`).
evi_p5_write_cli() {
    cat >"$EVI_P5_DIR/podman" <<EOF
#!/bin/sh
# Generated by scripts/podman5-env.sh: the podman CLI of the nested Podman 5.
exec podman exec -i $EVI_P5_NAME podman "\$@"
EOF
    chmod 0755 "$EVI_P5_DIR/podman"
}

# Remove the container (whatever state it is in). Never fails, so it can sit in an EXIT trap.
evi_podman5_stop() {
    if podman container exists "$EVI_P5_NAME" 2>/dev/null; then
        # flock -o: the lock is not inherited by anything podman leaves running.
        flock -o "$EVI_P5_HOST_LOCK" podman rm --force --time 5 "$EVI_P5_NAME" >/dev/null 2>&1 ||
            evi_p5_log "could not remove container $EVI_P5_NAME"
        evi_p5_log "container $EVI_P5_NAME removed"
    fi
    rm -f "$(evi_p5_socket)"
}

evi_p5_start() {
    local sockdir sock tmp start deadline
    sockdir="$(evi_p5_sockdir)"
    sock="$(evi_p5_socket)"
    start=$SECONDS
    # Always a fresh service: a container left by an interrupted run may hold stale mounts.
    evi_podman5_stop
    rm -f "$sock"
    # The tests' state directories are tempdirs (under TMPDIR, else /tmp), and evi-state
    # bind-mounts its valkey.conf from there: the nested Podman resolves that path inside
    # this container, so it must be the same path inside as outside.
    tmp="${TMPDIR:-/tmp}"
    tmp="${tmp%/}"
    local mounts=(-v "$EVI_P5_DIR/etc/containers.conf:/etc/containers/containers.conf:ro"
        -v "$EVI_P5_DIR/etc/storage.conf:/etc/containers/storage.conf:ro"
        -v "$EVI_P5_STORAGE:/var/lib/containers/storage"
        -v "/tmp:/tmp")
    [[ "$tmp" == /tmp ]] || mounts+=(-v "$tmp:$tmp")
    [[ "$sockdir" == /tmp/* ]] || mounts+=(-v "$sockdir:$sockdir")

    evi_p5_log "starting $EVI_P5_NAME (Podman 5 service on $sock)"
    # --privileged: the nested Podman mounts overlay, makes cgroups and network namespaces.
    # --network none: the nested netavark builds its bridges in this private namespace and
    # never touches the host's. catatonit as PID 1 reaps exited children (the service as
    # PID 1 lets them pile up as zombies). The cgroup v1 warning would go to every CLI call.
    # flock -o: conmon and the service outlive this command and must not hold the lock.
    evi_p5_require_conf
    flock -o "$EVI_P5_HOST_LOCK" podman run -d --name "$EVI_P5_NAME" --privileged --network none \
        --env PODMAN_IGNORE_CGROUPSV1_WARNING=1 \
        "${mounts[@]}" \
        "$EVI_P5_IMAGE" \
        /usr/bin/catatonit -- /usr/bin/podman system service --time=0 "unix://$sock" >/dev/null ||
        evi_p5_die "podman run $EVI_P5_NAME failed"
    # Measured from here: the wait for the host lock above is other test runs' time.
    evi_p5_log "container started after $((SECONDS - start))s (host lock wait included)"
    start=$SECONDS

    deadline=$((SECONDS + EVI_P5_TIMEOUT))
    until evi_p5_ping; do
        if [[ "$(podman inspect --format '{{.State.Running}}' "$EVI_P5_NAME" 2>/dev/null)" != true ]]; then
            podman logs --tail 30 "$EVI_P5_NAME" >&2 || true
            evi_p5_die "$EVI_P5_NAME exited before its Podman service answered on $sock"
        fi
        if ((SECONDS >= deadline)); then
            podman logs --tail 30 "$EVI_P5_NAME" >&2 || true
            evi_p5_die "the Podman 5 service did not answer _ping within ${EVI_P5_TIMEOUT}s"
        fi
        sleep 0.2
    done
    evi_p5_log "Podman 5 service ready in $((SECONDS - start))s ($("$EVI_P5_DIR/podman" --version))"
}

# Copy each test image from the host into the nested storage, unless the same image ID is
# already there (the storage survives between runs). No registry: `podman save | podman load`.
evi_p5_load_images() {
    # The Valkey test image, the real clients' image and the image-contract variants.
    local images image host_id nested_id
    mapfile -t images < <(evi_test_images)
    # EVI_TEST_IMAGES: more images the tests need, separated by spaces or commas.
    local extra="${EVI_TEST_IMAGES:-}"
    for image in ${extra//,/ }; do images+=("$image"); done
    for image in "${images[@]}"; do
        host_id="$(evi_p5_host_podman image inspect --format '{{.Id}}' "$image" 2>/dev/null)" ||
            evi_p5_die "image $image is not in the host's storage (build it first; see scripts/test-env.sh)"
        nested_id="$("$EVI_P5_DIR/podman" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
        if [[ "$nested_id" == "$host_id" ]]; then
            evi_p5_log "image $image already loaded (cached)"
            continue
        fi
        evi_p5_log "loading $image into Podman 5"
        # pipefail makes a failed save fail the pipe as well as a failed load.
        evi_p5_host_podman save --quiet "$image" | "$EVI_P5_DIR/podman" load --quiet >/dev/null ||
            evi_p5_die "podman save $image | (podman 5) podman load failed"
        nested_id="$("$EVI_P5_DIR/podman" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
        [[ -n "$nested_id" ]] || evi_p5_die "$image is not in Podman 5's storage after podman load"
    done
}

# Everything the Podman 5 lane needs. Call after evi_test_env_up.
evi_podman5_up() {
    evi_require_root
    command -v curl >/dev/null || evi_p5_die "curl not found (scripts/test-env.sh installs it)"
    evi_p5_build_image
    evi_p5_write_conf
    evi_p5_write_cli
    evi_p5_start
    evi_p5_load_images
    export EVI_TEST_PODMAN_URL="unix://$(evi_p5_socket)"
    export EVI_TEST_PODMAN_CLI="$EVI_P5_DIR/podman"
    evi_p5_log "EVI_TEST_PODMAN_URL=$EVI_TEST_PODMAN_URL"
    evi_p5_log "EVI_TEST_PODMAN_CLI=$EVI_TEST_PODMAN_CLI"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    # shellcheck source=scripts/test-env.sh
    source "$EVI_REPO/scripts/test-env.sh"
    case "${1:-}" in
        start)
            # The host side (packages, containers.conf, Valkey image); its service is not
            # needed here, so it is stopped again.
            evi_require_root
            evi_install_packages
            evi_write_containers_conf
            evi_build_valkey_image
            evi_podman5_up
            printf 'export EVI_TEST_PODMAN_URL=%q EVI_TEST_PODMAN_CLI=%q EVI_TEST_VALKEY_IMAGE=%q\n' \
                "$EVI_TEST_PODMAN_URL" "$EVI_TEST_PODMAN_CLI" "${EVI_TEST_VALKEY_IMAGE:-localhost/evi-valkey-test:8}"
            printf '# stop it with: %q stop\n' "$0"
            ;;
        stop)
            # The host podman that removes the container needs the same runtime settings.
            evi_write_containers_conf
            evi_podman5_stop
            ;;
        *)
            echo "usage: $0 start|stop   (or: source it and call evi_podman5_up)" >&2
            exit 2
            ;;
    esac
fi
