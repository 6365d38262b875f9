#!/usr/bin/env bash
# Test environment for evi-install's end-to-end tests: a rootful Podman with its
# libpod REST service on a private socket, and a locally built Valkey 8 image.
#
# Two ways to use it:
#
#   * From another bash script (scripts/test.sh, scripts/up-example.sh):
#
#         source scripts/test-env.sh
#         trap evi_test_env_stop EXIT   # only if the service must not outlive the script
#         evi_test_env_up
#
#     Sourcing only defines functions and variables; evi_test_env_up does the work, so
#     the caller can install its trap *before* anything is started and nothing leaks.
#
#   * Directly:  scripts/test-env.sh start   (set up, leave the service running)
#                scripts/test-env.sh stop    (stop the service recorded in the PID file)
#
# After evi_test_env_up these are exported for the tests:
#   EVI_TEST_PODMAN_URL    unix://$EVI_TEST_DIR/podman.sock
#   EVI_TEST_VALKEY_IMAGE  localhost/evi-valkey-test:8
#   EVI_TEST_CLIENT_IMAGE  localhost/evi-client-test:1 (node + ioredis, python3-redis and the
#                          programs of examples/clients under /opt/evi-clients/)
#   EVI_TEST_CLIENT_HASH   the examples/clients content hash that image was built from
#   CONTAINERS_CONF        $EVI_TEST_DIR/containers.conf
#
# Why the odd containers.conf: on these machines crun cannot raise RLIMIT_NOFILE (no
# CAP_SYS_RESOURCE) and does not support the hybrid cgroup layout, so containers only start
# with runc and lower default ulimits. That is a quirk of the sandbox, so it lives here,
# in the test harness, and never in the product's defaults.
#
# Why a local image: no container registry is reachable, so Valkey 8 (Debian trixie's
# valkey-server) is debootstrapped and imported, then cached in Podman's storage. The same
# goes for the client image that runs the real evi-be/evi-worker example programs.
#
# Every failure is fatal and loud: a missing prerequisite must fail the test run, never
# turn the end-to-end tests into silent skips.

set -euo pipefail

EVI_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EVI_TEST_DIR="${EVI_TEST_DIR:-$EVI_REPO/target/e2e}"
EVI_TEST_VALKEY_IMAGE="${EVI_TEST_VALKEY_IMAGE:-localhost/evi-valkey-test:8}"
# A stable tag (examples/evi.yaml names it); which programs it holds is recorded in the
# image label EVI_CLIENT_HASH_LABEL, and a different hash means a rebuild under the same tag.
EVI_TEST_CLIENT_IMAGE="${EVI_TEST_CLIENT_IMAGE:-localhost/evi-client-test:1}"
EVI_CLIENT_HASH_LABEL=evi.clients.hash
EVI_CLIENTS_DIR="$EVI_REPO/examples/clients"
# Everything that goes into /opt/evi-clients (node_modules comes from the lockfile).
EVI_CLIENT_FILES=(package.json package-lock.json stats.js producer.js worker.js worker.py)
# The network backend this lane's Podman uses: netavark (with aardvark-dns, what a plain
# `apt-get install podman` gives) or cni (what `--no-install-recommends` gives on Debian 12:
# no DNS at all). Both are real hosts; scripts/test.sh runs the end-to-end tests on each.
EVI_TEST_NETWORK_BACKEND="${EVI_TEST_NETWORK_BACKEND:-netavark}"
# Debian packages the harness needs, each named: podman is installed without its
# recommends, so both network backends are listed explicitly and nothing depends on what
# an earlier run or another package happened to bring. curl is for the readiness ping.
EVI_TEST_PACKAGES=(podman runc netavark aardvark-dns containernetworking-plugins iproute2 procps python3
    debootstrap busybox-static uidmap slirp4netns ca-certificates curl)
# How long to wait for the REST service to answer its ping.
EVI_TEST_SERVICE_TIMEOUT="${EVI_TEST_SERVICE_TIMEOUT:-20}"

evi_log() { printf '[test-env] %s\n' "$*" >&2; }

# exit, not return: when sourced from a script this ends that script with an error,
# which is the point (fail the run rather than skip).
evi_die() {
    printf '[test-env] ERROR: %s\n' "$*" >&2
    exit 1
}

evi_require_root() {
    # Rootful Podman, apt-get and debootstrap all need root; this is how the dev/CI
    # machines run.
    [[ "$(id -u)" -eq 0 ]] || evi_die "must run as root (rootful podman, apt-get, debootstrap)"
}

evi_pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

# Install whatever is missing from EVI_TEST_PACKAGES; no apt-get at all when nothing is.
evi_install_packages() {
    local missing=() pkg
    for pkg in "${EVI_TEST_PACKAGES[@]}"; do
        evi_pkg_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    command -v apt-get >/dev/null || evi_die "apt-get not found; this harness expects Debian 12 (missing: ${missing[*]})"
    evi_log "installing missing Debian packages: ${missing[*]}"
    # The lock timeout makes us wait for another apt (e.g. a provisioning run) instead of
    # failing straight away on the dpkg lock.
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update ||
        evi_die "apt-get update failed"
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}" ||
        evi_die "apt-get install ${missing[*]} failed"
    for pkg in "${missing[@]}"; do
        evi_pkg_installed "$pkg" || evi_die "package $pkg still not installed after apt-get install"
    done
}

evi_require_cargo() {
    # rustup puts cargo in ~/.cargo/bin, which a non-login shell (CI) may not have on PATH.
    if ! command -v cargo >/dev/null && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
        export PATH="${HOME:-/root}/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null ||
        evi_die "cargo not found: install the Rust toolchain with rustup (https://rustup.rs), e.g. 'curl --proto =https --tlsv1.2 -sSf https://sh.rustup.rs | sh', then add ~/.cargo/bin to PATH"
}

# The test-only containers.conf; both the REST service and every podman CLI call must see
# it (they share root's storage), hence the export.
evi_write_containers_conf() {
    mkdir -p "$EVI_TEST_DIR"
    # The backend is named explicitly: Podman 4.3 otherwise keeps whatever it chose first
    # on this machine (recorded in its storage), whatever is installed now.
    cat >"$EVI_TEST_DIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
tmp_dir = "${EVI_TEST_TMP_DIR:-/run/libpod}"
[network]
network_backend = "$EVI_TEST_NETWORK_BACKEND"
$([[ -z "${EVI_TEST_NETWORK_CONFIG_DIR:-}" ]] || printf 'network_config_dir = "%s"' "$EVI_TEST_NETWORK_CONFIG_DIR")
EOF
    export CONTAINERS_CONF="$EVI_TEST_DIR/containers.conf"
}

# A unix socket path must fit in 108 bytes; a deep checkout (CI clones anywhere) falls
# back to a short directory keyed by the checkout's path.
evi_socket_path() {
    local sock="$EVI_TEST_DIR/podman.sock" short
    if ((${#sock} >= 100)); then
        short="/tmp/evi-test-$(printf '%s' "$EVI_REPO" | md5sum | cut -c1-12)"
        mkdir -p "$short"
        sock="$short/podman.sock"
    fi
    printf '%s' "$sock"
}
evi_pid_file() { printf '%s/podman-service.pid' "$EVI_TEST_DIR"; }

# True if the libpod service on socket $1 answers its ping (API version $2).
evi_ping_socket() {
    local answer
    answer="$(curl --silent --fail --max-time 2 --unix-socket "$1" \
        "http://d/$2/libpod/_ping" 2>/dev/null)" || return 1
    [[ "$answer" == OK ]]
}

evi_ping() { evi_ping_socket "$(evi_socket_path)" v4.0.0; }

# True if PID is a live (not zombie) "podman system service" process. Checking the command
# line guards against killing an unrelated process that reused a stale PID.
evi_service_alive() {
    local pid="$1" state cmdline
    [[ -n "$pid" && -r "/proc/$pid/stat" ]] || return 1
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ "$state" != Z ]] || return 1
    # Captured, not piped into grep -q: with pipefail an early grep exit can fail the pipe.
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *"podman system service"* ]]
}

# Start the libpod REST service on a private socket (there is no systemd to socket-activate
# it). Reuses a service that an earlier `start` (e.g. scripts/up-example.sh) left running on
# the same socket; in that case EVI_TEST_PODMAN_STARTED stays 0 and evi_test_env_stop
# leaves it alone.
evi_start_service() {
    local sock pidfile pid log deadline
    sock="$(evi_socket_path)"
    pidfile="$(evi_pid_file)"
    log="$EVI_TEST_DIR/podman-service.log"
    # A service this shell started earlier (an earlier lane) is still this shell's to stop.
    local ours=""
    [[ "${EVI_TEST_PODMAN_STARTED:-0}" == 1 ]] && ours="${EVI_TEST_PODMAN_PID:-}"
    export EVI_TEST_PODMAN_STARTED=0
    export EVI_TEST_PODMAN_URL="unix://$sock"

    # sun_path is 108 bytes; a deep checkout would otherwise fail with an obscure bind error.
    ((${#sock} < 100)) || evi_die "socket path too long for a unix socket (${#sock} bytes): $sock; set EVI_TEST_DIR to a shorter directory"

    # The configuration a service runs with: one started with another (an older
    # containers.conf, another storage) must not be reused, or the service and the
    # podman CLI of the tests would each see a different host.
    local conf_hash
    conf_hash="$(cat "$CONTAINERS_CONF" "${CONTAINERS_STORAGE_CONF:-/dev/null}" | sha256sum | cut -c1-16)"
    if [[ -f "$pidfile" ]]; then
        pid="$(<"$pidfile")"
        if evi_service_alive "$pid" && evi_ping; then
            if [[ "$(cat "$pidfile.conf" 2>/dev/null)" == "$conf_hash" ]]; then
                evi_log "reusing running podman service (pid $pid) on $sock"
                EVI_TEST_PODMAN_PID="$pid"
                [[ "$pid" == "$ours" ]] && EVI_TEST_PODMAN_STARTED=1
                return 0
            fi
            evi_log "the running podman service (pid $pid) has another configuration; restarting it"
            EVI_TEST_PODMAN_PID="$pid" EVI_TEST_PODMAN_STARTED=1 evi_test_env_stop
        fi
        rm -f "$pidfile"
    fi
    # A socket file left by a killed service makes bind() fail.
    rm -f "$sock"

    evi_log "starting podman system service on $sock (log: $log)"
    # nohup: the service must survive the end of scripts/up-example.sh and a closed terminal;
    # it execs podman, so $! is podman's own PID.
    nohup podman system service --time=0 "unix://$sock" >"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pidfile"
    echo "$conf_hash" >"$pidfile.conf"
    export EVI_TEST_PODMAN_PID="$pid"
    EVI_TEST_PODMAN_STARTED=1

    deadline=$((SECONDS + EVI_TEST_SERVICE_TIMEOUT))
    until evi_ping; do
        if ! evi_service_alive "$pid"; then
            evi_log "podman service log:"
            tail -n 30 "$log" >&2 || true
            evi_test_env_stop
            evi_die "podman system service exited before answering on $sock"
        fi
        if ((SECONDS >= deadline)); then
            evi_log "podman service log:"
            tail -n 30 "$log" >&2 || true
            evi_test_env_stop
            evi_die "podman system service did not answer _ping within ${EVI_TEST_SERVICE_TIMEOUT}s"
        fi
        sleep 0.2
    done
    evi_log "podman service ready (pid $pid, $(podman --version))"
}

# Proves that the service runs the network backend this lane is about; a lane that
# silently ran on the other backend would hide exactly the failures it exists to show.
evi_check_network_backend() {
    local backend
    backend="$(curl --silent --fail --max-time 5 --unix-socket "$(evi_socket_path)" \
        http://d/v4.0.0/libpod/info | sed -n 's/.*"networkBackend": *"\([a-z]*\)".*/\1/p')" ||
        evi_die "cannot read the network backend from the podman service's info"
    [[ "$backend" == "$EVI_TEST_NETWORK_BACKEND" ]] ||
        evi_die "podman service runs network backend '$backend', expected '$EVI_TEST_NETWORK_BACKEND'"
    evi_log "network backend in effect: $backend"
}

# Removes what the tests or the main job left under this lane's configuration, so the
# next lane (another network backend on the same storage) starts from a clean host and no
# bridge of this lane's evi-net keeps its subnet's route.
# A bridge that still holds this lane's evi-net subnet while the lane has no evi-net is a
# leftover of a killed run (netavark tears bridges down with their last container); Podman
# refuses to create a network over it. Remove it.
evi_remove_stale_bridges() {
    local subnet="${EVI_TEST_SUBNET:-10.90.213.0/24}" prefix dev
    prefix="${subnet%.0/*}."
    podman network exists evi-net 2>/dev/null && return 0
    while read -r dev; do
        evi_log "removing stale bridge $dev (holds $subnet, no evi-net uses it)"
        ip link delete "$dev" || true
    done < <(ip -o -4 addr show 2>/dev/null | awk -v p="$prefix" 'index($4, p) == 1 { print $2 }')
}

evi_test_env_clean() {
    local ids
    ids="$(podman ps -aq --filter label=io.evi-install.managed=true 2>/dev/null || true)"
    # Stopped by request first, so that no restart policy races with the removal.
    # shellcheck disable=SC2086  # one ID per word
    [[ -z "$ids" ]] || podman stop --ignore -t 0 $ids >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    [[ -z "$ids" ]] || podman rm -f -t 0 $ids >/dev/null 2>&1 || true
    podman rm -f -t 0 --ignore evi-state evi-be evi-worker >/dev/null 2>&1 || true
    podman network rm -f evi-net >/dev/null 2>&1 || true
    evi_remove_stale_bridges
}

# Stop the service by PID, only if this shell started it (or, when run as
# `test-env.sh stop`, whatever the PID file records). Safe to call more than once and from
# an EXIT trap: it never fails.
evi_test_env_stop() {
    local pid="${EVI_TEST_PODMAN_PID:-}" pidfile i
    pidfile="$(evi_pid_file)"
    [[ "${EVI_TEST_PODMAN_STARTED:-0}" == 1 && -n "$pid" ]] || return 0
    if evi_service_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            evi_service_alive "$pid" || break
            sleep 0.2
        done
        if evi_service_alive "$pid"; then
            evi_log "podman service (pid $pid) ignored SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # Reap it if it is our child, so it does not linger as a zombie.
    wait "$pid" 2>/dev/null || true
    if [[ -f "$pidfile" && "$(<"$pidfile")" == "$pid" ]]; then
        rm -f "$pidfile"
    fi
    rm -f "$(evi_socket_path)"
    EVI_TEST_PODMAN_STARTED=0
    evi_log "podman service (pid $pid) stopped"
}

# The URL of the Debian mirror apt on this machine uses (not the security archive), so
# debootstrap goes wherever apt is allowed to go. EVI_TEST_DEBIAN_MIRROR overrides it.
evi_debian_mirror() {
    local uri=""
    if [[ -n "${EVI_TEST_DEBIAN_MIRROR:-}" ]]; then
        printf '%s\n' "$EVI_TEST_DEBIAN_MIRROR"
        return 0
    fi
    shopt -s nullglob
    local sources=(/etc/apt/sources.list.d/*.sources)
    shopt -u nullglob
    if ((${#sources[@]})); then
        # deb822: "URIs: a b"; take the first URI that is not the security archive.
        uri="$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "${sources[@]}" |
            grep -v -- '-security' | grep -E '^(https?|ftp)://' | head -n 1 || true)"
    fi
    if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
        # One-line format: "deb [opts] URI suite comps".
        uri="$(sed -E -n 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
            /etc/apt/sources.list | grep -v -- '-security' | grep -E '^(https?|ftp)://' | head -n 1 || true)"
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# debootstrap verifies trixie's Release file against /usr/share/keyrings/
# debian-archive-keyring.gpg. Bookworm's keyring has the trixie keys only from
# 2023.3+deb12u2 on; an older one gets upgraded from the bookworm point release/updates.
# We never fall back to --no-check-gpg.
EVI_ARCHIVE_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

evi_keyring_has_trixie() {
    local keys
    [[ -r "$EVI_ARCHIVE_KEYRING" ]] || return 1
    if ! command -v gpg >/dev/null; then
        # No gpg to list keys with (it is not a dependency of anything we install): the
        # trixie keys arrived in bookworm's debian-archive-keyring 2023.3+deb12u2.
        dpkg --compare-versions "$(dpkg-query -W -f='${Version}' debian-archive-keyring 2>/dev/null || echo 0)" \
            ge 2023.3+deb12u2
        return
    fi
    keys="$(gpg --batch --no-default-keyring --keyring "$EVI_ARCHIVE_KEYRING" --list-keys 2>/dev/null)" || return 1
    [[ "$keys" == *"(13/trixie)"* ]]
}

evi_require_trixie_keyring() {
    evi_keyring_has_trixie && return 0
    evi_log "the Debian archive keyring has no trixie key; upgrading debian-archive-keyring"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update || evi_die "apt-get update failed"
    apt-get -o DPkg::Lock::Timeout=300 install -y debian-archive-keyring ||
        evi_die "could not install debian-archive-keyring"
    evi_keyring_has_trixie ||
        evi_die "$EVI_ARCHIVE_KEYRING still has no Debian 13/trixie signing key (need debian-archive-keyring >= 2023.3+deb12u2); cannot verify trixie for debootstrap"
}

# Unmount anything debootstrap left mounted inside ROOT (it mounts proc/sys during the
# second stage and may leave them after a failure), then delete ROOT without crossing into
# any other filesystem.
evi_remove_root() {
    local root="$1" mnt
    [[ -n "$root" && -d "$root" ]] || return 0
    # Deepest first; /proc/self/mounts escapes spaces as \040, our mktemp paths have none.
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts | sort -r)
    rm -rf --one-file-system "$root"
}

# Build localhost/evi-valkey-test:8 unless it is already in Podman's storage.
evi_build_valkey_image() {
    if podman image exists "$EVI_TEST_VALKEY_IMAGE"; then
        evi_log "image $EVI_TEST_VALKEY_IMAGE already present (cached)"
        return 0
    fi
    evi_copy_image_from_default "$EVI_TEST_VALKEY_IMAGE" && return 0
    evi_require_trixie_keyring
    mkdir -p "$EVI_TEST_DIR"
    # Serialise concurrent builds (two test runs at once) and re-check under the lock.
    # The subshell is not run as "( ... ) || die": bash ignores errexit inside anything on
    # the left of ||, which would let a failed step go unnoticed.
    local rc
    set +e
    (
        set -e
        flock 9
        if podman image exists "$EVI_TEST_VALKEY_IMAGE"; then
            exit 0
        fi
        _evi_build_valkey_image_locked
    ) 9>"$EVI_TEST_DIR/image-build.lock"
    rc=$?
    set -e
    ((rc == 0)) || evi_die "building $EVI_TEST_VALKEY_IMAGE failed"
}

# Runs in a subshell (see above), so its EXIT trap only cleans up the build root.
_evi_build_valkey_image_locked() {
    local mirror root start uid gid
    mirror="$(evi_debian_mirror)"
    start=$SECONDS
    root="$(mktemp -d "$EVI_TEST_DIR/valkey-root.XXXXXX")"
    # mktemp makes it 0700, and it becomes the image's /: only root could enter it,
    # which a rootless Podman's valkey user notices (the rootless lane).
    chmod 0755 "$root"
    # shellcheck disable=SC2064  # expand $root now: it is local to this function
    trap "evi_remove_root '$root'" EXIT
    evi_log "building $EVI_TEST_VALKEY_IMAGE: debootstrap trixie from $mirror (log: $EVI_TEST_DIR/debootstrap.log)"

    # trixie ships valkey-server 8.x; valkey-server pulls in valkey-tools (valkey-cli).
    if ! debootstrap --variant=minbase --include=valkey-server trixie "$root" "$mirror" \
        >"$EVI_TEST_DIR/debootstrap.log" 2>&1; then
        tail -n 30 "$EVI_TEST_DIR/debootstrap.log" >&2 || true
        [[ -f "$root/debootstrap/debootstrap.log" ]] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
        evi_die "debootstrap of trixie failed (see $EVI_TEST_DIR/debootstrap.log)"
    fi

    # The tests run valkey as the image's own 'valkey' user (created by valkey-server's
    # postinst); without it /data ownership below makes no sense.
    uid="$(awk -F: '$1 == "valkey" { print $3 }' "$root/etc/passwd")"
    gid="$(awk -F: '$1 == "valkey" { print $4 }' "$root/etc/passwd")"
    [[ -n "$uid" && -n "$gid" ]] || evi_die "debootstrapped root has no 'valkey' user in /etc/passwd"

    local tool
    for tool in /bin/sh /usr/bin/sleep /usr/bin/valkey-server /usr/bin/valkey-cli; do
        # -e follows symlinks relative to the host, so check with the root's layout in mind:
        # trixie is merged-/usr, /bin -> usr/bin.
        [[ -e "$root$tool" || -L "$root$tool" ]] || evi_die "debootstrapped root lacks $tool"
    done

    # Like the official valkey image: /data belongs to valkey, so a fresh named volume
    # mounted there (Podman copies the mount point's ownership into it) is writable by
    # that user.
    mkdir -p "$root/data"
    chown "$uid:$gid" "$root/data"
    chmod 0755 "$root/data"

    # Downloaded .debs and apt lists are dead weight in a test image.
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/debootstrap"

    # --numeric-owner: the host has no 'valkey' user; keep the image's own IDs.
    tar --numeric-owner -C "$root" -c . | podman import --quiet - "$EVI_TEST_VALKEY_IMAGE" >/dev/null ||
        evi_die "podman import of $EVI_TEST_VALKEY_IMAGE failed"
    evi_log "built $EVI_TEST_VALKEY_IMAGE in $((SECONDS - start))s (valkey uid:gid $uid:$gid)"
}

# Switches to the lane of network backend $1. The netavark lane is the machine's default
# Podman (the storage scripts/up-example.sh uses, directory target/e2e). Any other lane gets
# a Podman of its own: its own storage, run and tmp directories, its own lock and evi-net
# subnet, so it never meets a container, network route or lease of the other lane (a second
# Podman on the same storage would tear down the first one's containers with the wrong
# backend). Images are copied over from the default storage.
evi_test_lane() {
    # $2, optional: a private lane of that name with backend $1 (its own storage, lock and
    # subnet), for a developer's run beside others on the same machine.
    local key="${2:-$1}" subnet hash
    EVI_TEST_NETWORK_BACKEND="$1"
    if [[ "$key" == netavark ]]; then
        EVI_TEST_DIR="$EVI_REPO/target/e2e"
        unset CONTAINERS_STORAGE_CONF EVI_TEST_TMP_DIR EVI_TEST_SUBNET EVI_TEST_LOCK EVI_TEST_NETWORK_CONFIG_DIR
    else
        EVI_TEST_DIR="$EVI_REPO/target/e2e-$key"
        mkdir -p "$EVI_TEST_DIR"
        cat >"$EVI_TEST_DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "/var/lib/containers/storage-evi-$key"
runroot = "/run/containers/storage-evi-$key"
EOF
        if [[ "$key" == cni ]]; then
            subnet=10.90.223.0/24
        else
            # Two octets from the name's checksum: lanes of different names do not share.
            hash=$(printf '%s' "$key" | cksum | cut -d' ' -f1)
            subnet="10.$((100 + hash % 100)).$((hash / 100 % 250)).0/24"
        fi
        export CONTAINERS_STORAGE_CONF="$EVI_TEST_DIR/storage.conf"
        export EVI_TEST_TMP_DIR="/run/libpod-evi-$key"
        # Network definitions live outside the storage (/etc/containers/networks, or
        # /etc/cni/net.d for CNI): without a directory of its own, this lane's evi-net would
        # be the same network as every other Podman's on the machine.
        export EVI_TEST_NETWORK_CONFIG_DIR="$EVI_TEST_DIR/networks"
        mkdir -p "$EVI_TEST_NETWORK_CONFIG_DIR"
        export EVI_TEST_SUBNET="$subnet"
        export EVI_TEST_LOCK="/tmp/evi-host-$key.lock"
    fi
    export EVI_TEST_NETWORK_BACKEND EVI_TEST_DIR
}

# Copies IMAGE from the machine's default storage into this lane's, if the lane has a
# storage of its own and the default one has the image. Fails (returns 1) otherwise.
evi_copy_image_from_default() {
    local image="$1"
    [[ -n "${CONTAINERS_STORAGE_CONF:-}" ]] || return 1
    env -u CONTAINERS_STORAGE_CONF podman image exists "$image" || return 1
    evi_log "copying $image from the default storage into this lane's"
    env -u CONTAINERS_STORAGE_CONF podman save "$image" | podman load -q >/dev/null ||
        evi_die "copying $image into the lane's storage failed"
}

# The content hash the client image is tagged with (as a label): the program files, the
# lockfile and this build recipe, so editing any of them rebuilds the image.
evi_client_hash() {
    local f
    for f in "${EVI_CLIENT_FILES[@]}"; do
        [[ -f "$EVI_CLIENTS_DIR/$f" ]] || evi_die "missing client program file $EVI_CLIENTS_DIR/$f"
    done
    {
        for f in "${EVI_CLIENT_FILES[@]}"; do
            printf '%s\0' "$f"
            cat "$EVI_CLIENTS_DIR/$f"
        done
        declare -f _evi_build_client_image_locked
    } | sha256sum | cut -c1-12
}

# The hash label of the image under EVI_TEST_CLIENT_IMAGE, or nothing if there is none.
evi_client_image_hash() {
    podman image inspect --format "{{ index .Labels \"$EVI_CLIENT_HASH_LABEL\" }}" \
        "$EVI_TEST_CLIENT_IMAGE" 2>/dev/null || true
}

# npm installs ioredis on the host and the result is copied into the image. Why the host and
# not the image: ioredis and its 8 dependencies are plain JavaScript (no native addons;
# --ignore-scripts runs no install scripts), so the files do not depend on which Node
# installed them, and putting trixie's npm into the image would pull ~100 node-* packages
# into it and into every debootstrap. Any npm >= 7 reads the lockfile (v3): a fresh Debian 12
# gets its own npm 9 from apt.
evi_require_npm() {
    local major
    if ! command -v npm >/dev/null; then
        evi_log "npm not found; installing Debian's npm (needed once, to fetch ioredis for the client image)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=300 update || evi_die "apt-get update failed"
        apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends npm ||
            evi_die "apt-get install npm failed"
        command -v npm >/dev/null || evi_die "npm still not found after apt-get install npm"
    fi
    major="$(npm --version 2>/dev/null | cut -d. -f1)" || true
    if ! [[ "$major" =~ ^[0-9]+$ ]] || ((major < 7)); then
        evi_die "npm $(npm --version 2>/dev/null || echo '?') is too old for examples/clients/package-lock.json (lockfile v3 needs npm >= 7)"
    fi
}

# Build localhost/evi-client-test:1 unless it already holds the current examples/clients.
evi_build_client_image() {
    local hash rc
    hash="$(evi_client_hash)"
    [[ "$hash" =~ ^[0-9a-f]{12}$ ]] || evi_die "could not hash $EVI_CLIENTS_DIR"
    export EVI_TEST_CLIENT_HASH="$hash"
    if [[ "$(evi_client_image_hash)" == "$hash" ]]; then
        evi_log "image $EVI_TEST_CLIENT_IMAGE already present (cached, clients $hash)"
        return 0
    fi
    # A lane with a storage of its own (evi_test_lane) takes the image from the default
    # storage, but only if that one holds these very programs; otherwise it builds.
    if [[ -n "${CONTAINERS_STORAGE_CONF:-}" ]] &&
        [[ "$(env -u CONTAINERS_STORAGE_CONF podman image inspect \
            --format "{{ index .Labels \"$EVI_CLIENT_HASH_LABEL\" }}" "$EVI_TEST_CLIENT_IMAGE" 2>/dev/null || true)" == "$hash" ]]; then
        evi_copy_image_from_default "$EVI_TEST_CLIENT_IMAGE" ||
            evi_die "copying $EVI_TEST_CLIENT_IMAGE from the default storage failed"
        [[ "$(evi_client_image_hash)" == "$hash" ]] ||
            evi_die "$EVI_TEST_CLIENT_IMAGE copied into this lane's storage lacks label $EVI_CLIENT_HASH_LABEL=$hash"
        return 0
    fi
    evi_require_trixie_keyring
    evi_require_npm
    mkdir -p "$EVI_TEST_DIR"
    # Serialised and re-checked under a lock, like the Valkey image (see there for why the
    # subshell is not written as "( ... ) || die").
    set +e
    (
        set -e
        flock 9
        if [[ "$(evi_client_image_hash)" == "$hash" ]]; then
            exit 0
        fi
        _evi_build_client_image_locked "$hash"
    ) 9>"$EVI_TEST_DIR/client-image-build.lock"
    rc=$?
    set -e
    ((rc == 0)) || evi_die "building $EVI_TEST_CLIENT_IMAGE failed"
    [[ "$(evi_client_image_hash)" == "$hash" ]] ||
        evi_die "$EVI_TEST_CLIENT_IMAGE does not carry label $EVI_CLIENT_HASH_LABEL=$hash after the build"
}

# Runs in a subshell (see above), so its EXIT trap only cleans up the build root.
_evi_build_client_image_locked() {
    local hash="$1" mirror root start app old_id new_id f
    mirror="$(evi_debian_mirror)"
    start=$SECONDS
    root="$(mktemp -d "$EVI_TEST_DIR/client-root.XXXXXX")"
    chmod 0755 "$root"  # the image's /, as for the Valkey image
    # shellcheck disable=SC2064  # expand $root now: it is local to this function
    trap "evi_remove_root '$root'" EXIT
    evi_log "building $EVI_TEST_CLIENT_IMAGE (clients $hash): debootstrap trixie from $mirror (log: $EVI_TEST_DIR/client-debootstrap.log)"

    # nodejs (trixie: 20.x) runs the Node programs, python3-redis (redis-py 6.x) worker.py.
    # valkey-tools (valkey-cli) is not used by the programs; it is there so that the usual
    # checks from inside a client container (`podman exec evi-be valkey-cli ... ping`, as the
    # tests and the benchmark do with the stand-in clients) keep working with this image.
    if ! debootstrap --variant=minbase --include=nodejs,python3-redis,valkey-tools trixie "$root" "$mirror" \
        >"$EVI_TEST_DIR/client-debootstrap.log" 2>&1; then
        tail -n 30 "$EVI_TEST_DIR/client-debootstrap.log" >&2 || true
        [[ -f "$root/debootstrap/debootstrap.log" ]] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
        evi_die "debootstrap of trixie (client image) failed (see $EVI_TEST_DIR/client-debootstrap.log)"
    fi

    app="$root/opt/evi-clients"
    mkdir -p "$app"
    for f in "${EVI_CLIENT_FILES[@]}"; do
        install -m 0644 "$EVI_CLIENTS_DIR/$f" "$app/$f"
    done
    # npm ci: exactly the lockfile's versions and integrity hashes, no dev dependencies,
    # no install scripts. It runs on the host (see evi_require_npm for why).
    if ! (cd "$app" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error) \
        >"$EVI_TEST_DIR/client-npm.log" 2>&1; then
        tail -n 30 "$EVI_TEST_DIR/client-npm.log" >&2 || true
        evi_die "npm ci for the client image failed (see $EVI_TEST_DIR/client-npm.log; the npm registry must be reachable)"
    fi
    printf '%s\n' "$hash" >"$app/CLIENTS_HASH"
    # Readable by whichever user the container runs as.
    chmod -R a+rX "$app"

    # Prove the image can run what it is for before importing it: node loads ioredis and
    # parses every program, python3 imports redis and compiles worker.py.
    local checks=(
        "node -e 'require(\"/opt/evi-clients/node_modules/ioredis\")'"
        "node --check /opt/evi-clients/producer.js"
        "node --check /opt/evi-clients/worker.js"
        "node --check /opt/evi-clients/stats.js"
        "python3 -c 'import redis, redis.retry, redis.backoff'"
        "python3 -c 'import ast; ast.parse(open(\"/opt/evi-clients/worker.py\").read())'"
        "valkey-cli --version"
    )
    local check
    for check in "${checks[@]}"; do
        chroot "$root" /bin/sh -c "$check" >/dev/null 2>"$EVI_TEST_DIR/client-check.log" || {
            cat "$EVI_TEST_DIR/client-check.log" >&2 || true
            evi_die "client image check failed: $check"
        }
    done

    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/debootstrap"

    # The image this build replaces, if any: removed below once the tag has moved.
    old_id="$(podman image inspect --format '{{.Id}}' "$EVI_TEST_CLIENT_IMAGE" 2>/dev/null || true)"
    # The label carries the hash (checked for caching); the programs run as the image's
    # 'nobody' (65534), they need no root.
    tar --numeric-owner -C "$root" -c . | podman import --quiet \
        --change "LABEL=$EVI_CLIENT_HASH_LABEL=$hash" \
        --change "WORKDIR=/opt/evi-clients" \
        --change "USER=65534:65534" \
        - "$EVI_TEST_CLIENT_IMAGE" >/dev/null ||
        evi_die "podman import of $EVI_TEST_CLIENT_IMAGE failed"
    new_id="$(podman image inspect --format '{{.Id}}' "$EVI_TEST_CLIENT_IMAGE")" ||
        evi_die "$EVI_TEST_CLIENT_IMAGE missing right after podman import"
    if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
        # Best effort on purpose: a container still running the old programs keeps its
        # image, and that must not fail the build; it is untagged either way.
        podman image rm "$old_id" >/dev/null 2>&1 || true
    fi
    evi_log "built $EVI_TEST_CLIENT_IMAGE in $((SECONDS - start))s (clients $hash)"
}

# Images for the evi-state image contract (README "The image evi-state runs"), derived
# from the Valkey test image with `podman build` (no registry needed: FROM a local image):
#   nodata    /data owned by root, as a volume restored by root would be;
#   official  laid out like the official valkey/valkey:8: valkey-server and valkey-cli in
#             /usr/local/bin, user valkey with uid/gid 999, VOLUME /data, WORKDIR /data and
#             the official entrypoint script;
#   nosetpriv no setpriv: nothing can drop privileges, so evi-state must refuse to start;
#   nocli     no valkey-cli, used as a client image: the proof of reach cannot run inside
#             such a client, so evi-install runs a probe container instead.
# Each is tagged by a hash of its recipe and rebuilt when that changes.
EVI_TEST_CONTRACT_IMAGES=(nodata official nosetpriv nocli)

_evi_contract_recipe() {
    printf 'FROM %s\n' "$EVI_TEST_VALKEY_IMAGE"
    case "$1" in
        nodata) printf 'RUN chown root:root /data && chmod 0755 /data\n' ;;
        nosetpriv) printf 'RUN rm -f /usr/bin/setpriv\n' ;;
        nocli) printf 'RUN rm -f /usr/bin/valkey-cli /usr/bin/redis-cli\n' ;;
        official)
            cat <<'EOF'
RUN sed -i 's/^valkey:x:[0-9]*:[0-9]*:/valkey:x:999:999:/' /etc/passwd \
 && sed -i 's/^valkey:x:[0-9]*:/valkey:x:999:/' /etc/group \
 && cp /usr/bin/valkey-check-rdb /usr/local/bin/valkey-server \
 && mv /usr/bin/valkey-cli /usr/local/bin/valkey-cli \
 && rm -f /usr/bin/valkey-server \
 && chown 999:999 /data
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["valkey-server"]
EOF
            ;;
    esac
}

# The official image's entrypoint (valkey-container's docker-entrypoint.sh), as it is.
_evi_official_entrypoint() {
    cat <<'EOF'
#!/bin/sh
set -e
# first arg is `-f` or `--some-option` or first arg is `something.conf`
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- valkey-server "$@"
fi
# allow the container to be started with `--user`
if [ "$1" = 'valkey-server' -a "$(id -u)" = '0' ]; then
	find . \! -user valkey -exec chown valkey '{}' +
	exec setpriv --reuid=valkey --regid=valkey --clear-groups -- "$0" "$@"
fi
# set an appropriate umask (if one isn't set already)
um="$(umask)"
if [ "$um" = '0022' ]; then
	umask 0077
fi
exec "$@"
EOF
}

evi_build_contract_images() {
    local kind image hash ctx
    for kind in "${EVI_TEST_CONTRACT_IMAGES[@]}"; do
        hash="$({ _evi_contract_recipe "$kind"; _evi_official_entrypoint; podman image inspect --format '{{.Id}}' "$EVI_TEST_VALKEY_IMAGE"; } | sha256sum | cut -c1-12)"
        image="localhost/evi-valkey-$kind:$hash"
        if ! podman image exists "$image"; then
            evi_log "building $image (image contract: $kind)"
            ctx="$(mktemp -d "$EVI_TEST_DIR/contract.XXXXXX")"
            _evi_contract_recipe "$kind" >"$ctx/Containerfile"
            _evi_official_entrypoint >"$ctx/docker-entrypoint.sh"
            chmod 0755 "$ctx/docker-entrypoint.sh"
            podman build --quiet --network none -t "$image" -f "$ctx/Containerfile" "$ctx" >/dev/null ||
                evi_die "podman build of $image failed"
            rm -rf "$ctx"
        fi
        case "$kind" in
            nodata) export EVI_TEST_IMAGE_NODATA="$image" ;;
            official) export EVI_TEST_IMAGE_OFFICIAL="$image" ;;
            nosetpriv) export EVI_TEST_IMAGE_NOSETPRIV="$image" ;;
            nocli) export EVI_TEST_IMAGE_NOCLI="$image" ;;
        esac
    done
    evi_log "image contract images: $EVI_TEST_IMAGE_NODATA $EVI_TEST_IMAGE_OFFICIAL $EVI_TEST_IMAGE_NOSETPRIV $EVI_TEST_IMAGE_NOCLI"
}

# The images the end-to-end tests run, one per line, the Valkey test image first: that one,
# the clients' image and the image-contract variants, whichever are set. The lanes with a
# storage of their own (Podman 5 nested, rootless) load exactly these.
evi_test_images() {
    local image
    for image in "${EVI_TEST_VALKEY_IMAGE:-localhost/evi-valkey-test:8}" "${EVI_TEST_CLIENT_IMAGE:-}" \
        "${EVI_TEST_IMAGE_NODATA:-}" "${EVI_TEST_IMAGE_OFFICIAL:-}" "${EVI_TEST_IMAGE_NOSETPRIV:-}" \
        "${EVI_TEST_IMAGE_NOCLI:-}"; do
        [[ -z "$image" ]] || printf '%s\n' "$image"
    done
}

# Netavark keeps its address leases in /run (a tmpfs, so a reboot clears them). A lease
# whose container is gone (a killed run racing a restart policy) blocks that fixed address
# until then. With no Podman running containers on the machine, no lease is live: start
# from an empty database, as after a reboot.
evi_clear_stale_leases() {
    local db=/run/containers/networks/ipam.db
    [[ -e "$db" ]] || return 0
    if pgrep -f "podman system service" >/dev/null || pgrep -x conmon >/dev/null; then
        return 0
    fi
    evi_log "no Podman runs containers here: removing netavark's lease database $db (as a reboot would)"
    rm -f "$db"
}

# Everything the end-to-end tests need. Fails (exits) on any missing piece.
evi_test_env_up() {
    evi_require_root
    evi_install_packages
    evi_require_cargo
    evi_write_containers_conf
    evi_clear_stale_leases
    evi_start_service
    evi_check_network_backend
    evi_remove_stale_bridges
    evi_build_valkey_image
    evi_build_client_image
    evi_build_contract_images
    export EVI_TEST_PODMAN_URL EVI_TEST_VALKEY_IMAGE EVI_TEST_CLIENT_IMAGE EVI_TEST_CLIENT_HASH CONTAINERS_CONF EVI_TEST_NETWORK_BACKEND
    evi_log "EVI_TEST_NETWORK_BACKEND=$EVI_TEST_NETWORK_BACKEND"
    evi_log "EVI_TEST_PODMAN_URL=$EVI_TEST_PODMAN_URL"
    evi_log "EVI_TEST_VALKEY_IMAGE=$EVI_TEST_VALKEY_IMAGE"
    evi_log "EVI_TEST_CLIENT_IMAGE=$EVI_TEST_CLIENT_IMAGE (clients $EVI_TEST_CLIENT_HASH)"
    evi_log "CONTAINERS_CONF=$CONTAINERS_CONF"
}

# Direct execution: `start` leaves the service running, `stop` stops it via the PID file.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    case "${1:-}" in
        start)
            evi_test_env_up
            printf 'export CONTAINERS_CONF=%q EVI_TEST_PODMAN_URL=%q EVI_TEST_VALKEY_IMAGE=%q EVI_TEST_CLIENT_IMAGE=%q\n' \
                "$CONTAINERS_CONF" "$EVI_TEST_PODMAN_URL" "$EVI_TEST_VALKEY_IMAGE" "$EVI_TEST_CLIENT_IMAGE"
            printf '# stop the service with: %q stop\n' "$0"
            ;;
        stop)
            if [[ -f "$(evi_pid_file)" ]]; then
                EVI_TEST_PODMAN_PID="$(<"$(evi_pid_file)")"
                EVI_TEST_PODMAN_STARTED=1
                evi_test_env_stop
            else
                evi_log "no podman service recorded in $(evi_pid_file)"
            fi
            ;;
        *)
            echo "usage: $0 start|stop   (or: source it and call evi_test_env_up)" >&2
            exit 2
            ;;
    esac
fi
