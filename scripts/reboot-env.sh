#!/usr/bin/env bash
# A nested "host" for the reboot test (tests/reboot.rs): one privileged container of the
# host's Podman 4.3 with systemd as PID 1 and a Debian release's Podman in it:
# EVI_RB_SUITE=trixie (the default) gives Podman 5.4, EVI_RB_SUITE=bookworm Podman 4.3.
# Restarting that container (`podman restart`) is a reboot: systemd boots again, and
# whatever `evi-install up` enabled (podman-restart.service) has to bring the stack back.
#
# Same recipe as scripts/podman5-env.sh (shared/notes/podman-on-these-machines.md, "Podman 5
# on these machines (nested)"), plus systemd. scripts/test.sh boots both releases, one after
# the other: podman-restart.service starts the containers in no order of its own, and
# evi-state must come back inside evi-state-addr's network namespace on both.
#
# Use it after scripts/test-env.sh (it needs that file's host Podman, containers.conf and
# images):
#
#     source scripts/test-env.sh
#     source scripts/reboot-env.sh
#     trap 'evi_reboot_stop; evi_test_env_stop' EXIT
#     evi_test_env_up
#     evi_reboot_up            # builds the image, boots the nested host, loads the images
#
# After evi_reboot_up these are exported for tests/reboot.rs:
#   EVI_TEST_REBOOT_HOST   the nested host's container name (on the host's Podman)
#   EVI_TEST_REBOOT_CLI    a wrapper: `$EVI_TEST_REBOOT_CLI CMD ARGS` runs CMD inside it
#
# The evi-install binary (EVI_REBOOT_BIN, default target/release/evi-install) and
# examples/evi.yaml are bind-mounted read-only at /usr/local/bin/evi-install and
# /etc/evi/evi.yaml. Every failure is fatal and loud: if the nested systemd does not boot,
# the run fails, it never skips.

set -euo pipefail

EVI_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EVI_TEST_DIR="${EVI_TEST_DIR:-$EVI_REPO/target/e2e}"
# `evi-test-reboot-...`: never `evi-...` alone (the tests reset evi-state, evi-net, ...).
EVI_RB_SUITE="${EVI_RB_SUITE:-trixie}"
EVI_RB_NAME="${EVI_RB_NAME:-evi-test-reboot-host-$EVI_RB_SUITE-$(printf '%s' "$EVI_REPO" | md5sum | cut -c1-8)}"
EVI_RB_HOST_LOCK=/tmp/evi-host.lock
EVI_RB_DIR="$EVI_TEST_DIR/reboot-$EVI_RB_SUITE"
# The nested graphroot on the host's disk (nested overlay needs a non-overlay directory),
# its own: podman5-env.sh's storage may be in use by another lane at the same time.
EVI_RB_STORAGE="$EVI_RB_DIR/storage"
EVI_RB_PACKAGES=(podman crun runc conmon catatonit netavark aardvark-dns nftables iptables
    uidmap ca-certificates fuse-overlayfs systemd systemd-sysv dbus procps)
EVI_RB_TIMEOUT="${EVI_RB_TIMEOUT:-60}"
EVI_RB_IMAGE="${EVI_RB_IMAGE:-localhost/evi-test-reboot-host:$EVI_RB_SUITE-$(printf '%s\n' "${EVI_RB_PACKAGES[@]}" | md5sum | cut -c1-8)}"
EVI_REBOOT_BIN="${EVI_REBOOT_BIN:-${CARGO_TARGET_DIR:-$EVI_REPO/target}/release/evi-install}"

evi_rb_log() { printf '[reboot-env] %s\n' "$*" >&2; }
evi_rb_die() {
    printf '[reboot-env] ERROR: %s\n' "$*" >&2
    exit 1
}

evi_rb_host_podman() {
    [[ -n "${CONTAINERS_CONF:-}" ]] ||
        evi_rb_die "CONTAINERS_CONF is not set: run evi_test_env_up (scripts/test-env.sh) first"
    podman "$@"
}

# Build the image unless the host's storage has it (Debian packages, verified keyring).
evi_rb_build_image() {
    if evi_rb_host_podman image exists "$EVI_RB_IMAGE"; then
        evi_rb_log "image $EVI_RB_IMAGE already present (cached)"
        return 0
    fi
    [[ "$EVI_RB_SUITE" != trixie ]] || evi_require_trixie_keyring
    mkdir -p "$EVI_RB_DIR"
    local rc
    set +e
    (
        set -e
        flock 9
        evi_rb_host_podman image exists "$EVI_RB_IMAGE" && exit 0
        _evi_rb_build_image_locked
    ) 9>"$EVI_RB_DIR/image-build.lock"
    rc=$?
    set -e
    ((rc == 0)) || evi_rb_die "building $EVI_RB_IMAGE failed"
}

_evi_rb_build_image_locked() {
    local mirror root start log include tool
    mirror="$(evi_debian_mirror)"
    start=$SECONDS
    log="$EVI_RB_DIR/debootstrap.log"
    root="$(mktemp -d "$EVI_RB_DIR/root.XXXXXX")"
    # shellcheck disable=SC2064  # expand $root now: it is local to this function
    trap "evi_remove_root '$root'" EXIT
    include="$(
        IFS=,
        printf '%s' "${EVI_RB_PACKAGES[*]}"
    )"
    evi_rb_log "building $EVI_RB_IMAGE: debootstrap $EVI_RB_SUITE with $include from $mirror (log: $log)"
    if ! debootstrap --variant=minbase --include="$include" "$EVI_RB_SUITE" "$root" "$mirror" >"$log" 2>&1; then
        tail -n 30 "$log" >&2 || true
        evi_rb_die "debootstrap of $EVI_RB_SUITE (systemd + podman) failed (see $log)"
    fi
    for tool in /usr/bin/podman /usr/bin/runc /usr/bin/conmon /usr/lib/systemd/systemd \
        /usr/lib/systemd/system/podman-restart.service /usr/lib/systemd/system/podman.socket; do
        [[ -e "$root$tool" ]] || evi_rb_die "debootstrapped root lacks $tool"
    done
    _evi_rb_configure_root "$root"
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/debootstrap"
    tar --numeric-owner -C "$root" -c . | evi_rb_host_podman import --quiet \
        --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3' - "$EVI_RB_IMAGE" >/dev/null ||
        evi_rb_die "podman import of $EVI_RB_IMAGE failed"
    evi_rb_log "built $EVI_RB_IMAGE in $((SECONDS - start))s"
}

# What the nested host boots with: Podman's API socket (evi-install's default URL for root,
# /run/podman/podman.sock), nothing else that needs hardware or a network. podman-restart
# .service is NOT enabled here: enabling it is evi-install's job, and the test checks that.
_evi_rb_configure_root() {
    local root="$1" unit
    mkdir -p "$root/etc/systemd/system/sockets.target.wants" "$root/etc/containers" "$root/etc/evi"
    ln -sf /usr/lib/systemd/system/podman.socket "$root/etc/systemd/system/sockets.target.wants/podman.socket"
    rm -f "$root/etc/systemd/system/default.target.wants/podman-restart.service" \
        "$root/etc/systemd/system/multi-user.target.wants/podman-restart.service"
    # Units that cannot work in a container and only slow the boot down or fail it.
    for unit in systemd-networkd.service systemd-networkd.socket systemd-resolved.service \
        systemd-timesyncd.service getty@tty1.service console-getty.service apt-daily.timer \
        apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer podman-auto-update.timer \
        podman-clean-transient.service systemd-pstore.service dpkg-db-backup.timer \
        systemd-modules-load.service; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    # Podman's defaults where systemd runs (systemd cgroup manager, journald), as on a real
    # host. cgroupfs would not do here: with systemd's name=systemd hierarchy mounted in the
    # nested host, runc fails every container ("bind mount source stat:
    # /sys/fs/cgroup/systemd/libpod-ID: no such file or directory"). runc and ulimits 4096:
    # crun cannot raise RLIMIT_NOFILE here (the sandbox's quirk, as in test-env.sh).
    cat >"$root/etc/containers/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
cgroup_manager = "systemd"
runtime = "runc"
EOF
    cat >"$root/etc/containers/storage.conf" <<'EOF'
[storage]
driver = "overlay"
graphroot = "/var/lib/containers/storage"
runroot = "/run/containers/storage"
EOF
    # The host's cgroups are v1: keep the warning out of every CLI call, systemd units included.
    mkdir -p "$root/etc/systemd/system.conf.d"
    printf '[Manager]\nDefaultEnvironment=PODMAN_IGNORE_CGROUPSV1_WARNING=1\n' \
        >"$root/etc/systemd/system.conf.d/evi-test.conf"
}

evi_rb_write_cli() {
    mkdir -p "$EVI_RB_DIR"
    cat >"$EVI_RB_DIR/exec" <<EOF
#!/bin/sh
# Generated by scripts/reboot-env.sh: runs a command inside the nested host $EVI_RB_NAME.
exec podman exec -i --env PODMAN_IGNORE_CGROUPSV1_WARNING=1 $EVI_RB_NAME "\$@"
EOF
    chmod 0755 "$EVI_RB_DIR/exec"
}

# Remove the nested host (whatever state it is in). Never fails: it sits in EXIT traps.
evi_reboot_stop() {
    if podman container exists "$EVI_RB_NAME" 2>/dev/null; then
        flock -o "$EVI_RB_HOST_LOCK" podman rm --force --time 10 "$EVI_RB_NAME" >/dev/null 2>&1 ||
            evi_rb_log "could not remove container $EVI_RB_NAME"
        evi_rb_log "container $EVI_RB_NAME removed"
    fi
}

# systemd's own verdict, from inside: `running` means it booted. `degraded` (a unit failed)
# fails the run at once, naming the unit; anything else after the timeout fails it too.
evi_rb_wait_booted() {
    local deadline state
    deadline=$((SECONDS + EVI_RB_TIMEOUT))
    while :; do
        if [[ "$(podman inspect --format '{{.State.Running}}' "$EVI_RB_NAME" 2>/dev/null)" != true ]]; then
            podman logs --tail 40 "$EVI_RB_NAME" >&2 || true
            evi_rb_die "$EVI_RB_NAME exited: systemd did not boot in the nested host (its log above)"
        fi
        state="$("$EVI_RB_DIR/exec" systemctl is-system-running 2>/dev/null || true)"
        case "$state" in
            running) return 0 ;;
            degraded)
                "$EVI_RB_DIR/exec" systemctl --failed --no-legend >&2 || true
                evi_rb_die "the nested systemd booted degraded: a unit failed (listed above)"
                ;;
        esac
        if ((SECONDS >= deadline)); then
            podman logs --tail 40 "$EVI_RB_NAME" >&2 || true
            evi_rb_die "the nested systemd did not finish booting within ${EVI_RB_TIMEOUT}s (state: ${state:-no answer})"
        fi
        sleep 0.5
    done
}

evi_rb_start() {
    local start bin
    start=$SECONDS
    evi_reboot_stop
    [[ -x "$EVI_REBOOT_BIN" ]] ||
        evi_rb_die "no evi-install binary at $EVI_REBOOT_BIN (cargo build --release first)"
    bin="$(realpath "$EVI_REBOOT_BIN")"
    mkdir -p "$EVI_RB_STORAGE"
    evi_rb_log "booting $EVI_RB_NAME (systemd + $EVI_RB_SUITE's Podman; waits for the host's tests lock $EVI_RB_HOST_LOCK)"
    # --privileged: the nested Podman mounts overlay, makes cgroups and network namespaces.
    # --systemd=always: tmpfs on /run, /run/lock, /tmp, a writable cgroup tree for systemd,
    # container=podman, and SIGRTMIN+3 to stop it. --cgroupns=private: the nested systemd
    # and runc see their cgroups from / (with the host's namespace, runc fails every nested
    # container on cgroups v1). --network none: the nested netavark builds its bridges in
    # this private namespace. /dev/shm (Podman's locks) is a fresh tmpfs at each start.
    flock -o "$EVI_RB_HOST_LOCK" podman run -d --name "$EVI_RB_NAME" --privileged --network none \
        --systemd=always --cgroupns=private \
        -v "$EVI_RB_STORAGE:/var/lib/containers/storage" \
        -v "$bin:/usr/local/bin/evi-install:ro" \
        -v "$EVI_REPO/examples/evi.yaml:/etc/evi/evi.yaml:ro" \
        "$EVI_RB_IMAGE" /sbin/init >/dev/null ||
        evi_rb_die "podman run $EVI_RB_NAME failed"
    local created=$SECONDS
    evi_rb_wait_booted
    evi_rb_log "nested systemd booted in $((SECONDS - created))s ($((created - start))s to create the container)"
}

# Copy the images examples/evi.yaml runs into the nested storage, unless already there.
evi_rb_load_images() {
    local image host_id nested_id
    for image in "${EVI_TEST_VALKEY_IMAGE:-localhost/evi-valkey-test:8}" \
        "${EVI_TEST_CLIENT_IMAGE:-localhost/evi-client-test:1}"; do
        grep -q "image: ${image}[ ,}]" "$EVI_REPO/examples/evi.yaml" ||
            evi_rb_die "examples/evi.yaml does not use $image"
        host_id="$(evi_rb_host_podman image inspect --format '{{.Id}}' "$image" 2>/dev/null)" ||
            evi_rb_die "image $image is not in the host's storage (scripts/test-env.sh builds it)"
        nested_id="$("$EVI_RB_DIR/exec" podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
        if [[ "$nested_id" == "$host_id" ]]; then
            evi_rb_log "image $image already loaded (cached)"
            continue
        fi
        evi_rb_log "loading $image into the nested host"
        evi_rb_host_podman save --quiet "$image" | "$EVI_RB_DIR/exec" podman load --quiet >/dev/null ||
            evi_rb_die "podman save $image | (nested) podman load failed"
    done
}

# The nested storage outlives the host container (it keeps the loaded images between runs),
# and with them whatever an earlier run created: each run starts from a host with images
# only. Only this nested Podman's own resources; nothing on the outer host.
evi_rb_reset_nested() {
    local exec="$EVI_RB_DIR/exec"
    # Podman 4.3's `rm --all` refuses a container that another's network namespace depends
    # on (evi-state-addr) while that one is still there; each pass removes the dependents.
    local pass
    for pass in 1 2 3; do
        "$exec" podman rm --all --force --time 0 >/dev/null 2>&1 && break
    done
    [[ -z "$("$exec" podman ps --all --quiet)" ]] || evi_rb_die "(nested) podman rm --all left containers"
    "$exec" podman volume rm --all --force >/dev/null || evi_rb_die "(nested) podman volume rm --all failed"
    "$exec" podman network prune --force >/dev/null || evi_rb_die "(nested) podman network prune failed"
    "$exec" podman secret rm --all >/dev/null || evi_rb_die "(nested) podman secret rm --all failed"
}

# Reboot: restart the nested host and wait until its systemd has booted again.
evi_reboot_restart() {
    local start=$SECONDS
    flock -o "$EVI_RB_HOST_LOCK" podman restart --time 30 "$EVI_RB_NAME" >/dev/null ||
        evi_rb_die "podman restart $EVI_RB_NAME failed"
    evi_rb_wait_booted
    evi_rb_log "nested host rebooted in $((SECONDS - start))s"
}

evi_reboot_up() {
    evi_require_root
    evi_rb_build_image
    evi_rb_write_cli
    evi_rb_start
    evi_rb_reset_nested
    evi_rb_load_images
    export EVI_TEST_REBOOT_HOST="$EVI_RB_NAME"
    export EVI_TEST_REBOOT_CLI="$EVI_RB_DIR/exec"
    evi_rb_log "EVI_TEST_REBOOT_HOST=$EVI_TEST_REBOOT_HOST"
    evi_rb_log "EVI_TEST_REBOOT_CLI=$EVI_TEST_REBOOT_CLI"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    # shellcheck source=scripts/test-env.sh
    source "$EVI_REPO/scripts/test-env.sh"
    case "${1:-}" in
        start)
            evi_require_root
            evi_install_packages
            evi_write_containers_conf
            evi_build_valkey_image
            evi_build_client_image
            evi_reboot_up
            printf 'export EVI_TEST_REBOOT_HOST=%q EVI_TEST_REBOOT_CLI=%q\n' \
                "$EVI_TEST_REBOOT_HOST" "$EVI_TEST_REBOOT_CLI"
            printf '# stop it with: %q stop\n' "$0"
            ;;
        restart)
            evi_write_containers_conf
            evi_rb_write_cli
            evi_reboot_restart
            ;;
        stop)
            evi_write_containers_conf
            evi_reboot_stop
            ;;
        *)
            echo "usage: $0 start|restart|stop   (or: source it and call evi_reboot_up)" >&2
            exit 2
            ;;
    esac
fi
