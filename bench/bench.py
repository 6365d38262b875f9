#!/usr/bin/env python3
"""The measuring half of bench/run.sh (run it through bench/run.sh, which sets up
Podman for each lane, builds the release binary and podman-compose, and holds the lane's
host lock: /tmp/evi-host.lock or /tmp/evi-host-cni.lock).

The stack rows (--runs N), N runs each, round-robin so that drift hits every method alike:
  * fresh `evi-install up` until evi-be gets an authenticated PONG from evi-state;
  * the same stack by the minimal sequence of podman CLI calls (the "CLI floor");
  * the same stack by podman-compose (bench/compose.yaml);
  * no-op `evi-install up`, `evi-install up --dry-run` and `podman-compose up -d`
    on a converged host;
  * `evi-install rotate-secret`, when the binary has that command;
  * evi-install's peak RSS during a fresh `up` (GNU time) and the binary's size.
  Printed as one Markdown table.
The real clients (--clients-runs M), on the lane's Podman: M runs of a fresh `up` with
  the example producer (ioredis) as evi-be and the example worker (redis-py) as
  evi-worker, `rotate-secret` under their load, a drain, and the stream checked. The
  figures go to --clients-out as JSON; --report prints the table of one or more lanes.
Exits non-zero when a measured command fails, never because a target is missed.
Removes every resource it made on the way out.
"""

import argparse
import calendar
import collections
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLIENTS = ["evi-be", "evi-worker"]
# evi-rotate: rotate-secret's job container; evi-state-addr holds evi-state's address
# and network namespace (src/desired.rs ADDRESS_HOLDER_SCRIPT), so it goes after evi-state.
OTHERS = ["evi-state", "evi-rotate", "evi-state-addr"]
CONTAINERS = CLIENTS + OTHERS
NETWORK = "evi-net"
MANAGED_LABEL = "io.evi-install.managed=true"
DEFAULT_SUBNET = "10.90.213.0/24"  # evi-install's default network_subnet
VOLUME = "evi-state-data"
CONF_IN_CONTAINER = "/usr/local/etc/valkey/valkey.conf"
# The clients idle but stop at once on SIGTERM (a bare `sleep` as PID 1 ignores it).
CLIENT_SCRIPT = "trap 'exit 0' TERM; sleep infinity & wait"
# evi-install's ADDRESS_HOLDER_SCRIPT (src/desired.rs).
HOLDER_SCRIPT = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"
# evi-state's own readiness check (as evi-install's, src/acl.rs PING_SCRIPT): an
# authenticated PING as evi-install's own user, its password from the mounted secret.
STATE_PING = (
    'REDISCLI_AUTH="$(cat /run/secrets/evi-admin-password)" '
    "exec valkey-cli --no-auth-warning --user evi-admin -e ping"
)
# The environment variable that carries the clients' ACL rules to evi-state's start
# script; its value is read from evi-install's own evi-state (warm-up).
RULES_ENV = "EVI_DEFAULT_USER_RULES"
# What a client does: the password from its VALKEY_URL (redis://:PW@evi-state:6379),
# handed to valkey-cli in the environment (valkey-cli 8.1 refuses `-u redis://:PW@...`).
CLIENT_PING = (
    'pw="${VALKEY_URL#redis://:}"; pw="${pw%@evi-state:6379}"; '
    'REDISCLI_AUTH="$pw" exec valkey-cli --no-auth-warning -e -h evi-state ping'
)
POLL_PAUSE = 0.02
READY_TIMEOUT = 60.0
CMD_TIMEOUT = 180.0


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def run(cmd, *, check=True, input=None, env=None, timeout=CMD_TIMEOUT):
    """Runs cmd, output captured. With check, a non-zero exit is a BenchError."""
    try:
        p = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"timed out after {timeout:.0f}s: {show(cmd)}") from e
    if check and p.returncode != 0:
        raise BenchError(
            f"command failed (exit {p.returncode}): {show(cmd)}\n"
            f"--- stdout ---\n{tail(p.stdout)}\n--- stderr ---\n{tail(p.stderr)}"
        )
    return p


def show(cmd):
    text = " ".join(cmd)
    return text if len(text) < 300 else text[:300] + " ..."


def tail(text, n=25):
    return "\n".join(text.rstrip().splitlines()[-n:])


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def new_password():
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(48))


def remove_stale_bridges(subnet):
    """Deletes every bridge that holds an address in evi-net's subnet but has no port.
    A run that was killed can leave its evi-net's bridge behind (netavark removes it with
    the network's last container), and `up` then refuses the subnet because of its route.
    A bridge without ports carries no traffic, so deleting it harms nobody."""
    net = ipaddress.ip_network(subnet)
    for line in run(["ip", "-o", "-4", "addr", "show"]).stdout.splitlines():
        fields = line.split()
        dev, addr = fields[1], fields[3]
        if ipaddress.ip_interface(addr).ip not in net:
            continue
        if run(["ip", "-o", "link", "show", "master", dev]).stdout.strip():
            continue  # in use: `up` will say whose route it is
        log(f"removing stale bridge {dev} (holds {addr} of {subnet}, no port)")
        run(["ip", "link", "delete", dev])


def reset_host(state_dir, subnet):
    """Removes every evi resource (containers, network, volume, secrets, state dir) from
    the Podman the `podman` CLI talks to (the lane's, through CONTAINERS_CONF and
    CONTAINERS_STORAGE_CONF): whatever evi-install labelled as its own (the clients'
    successors `evi-*-next`, the rotation job, the probes) and the fixed names (the CLI
    floor and podman-compose make unlabelled containers)."""
    # Podman refuses to remove a container that others depend on. So the clients
    # first (podman-compose's depends_on makes them depend on evi-state), then
    # evi-state (it runs in evi-state-addr's network namespace), then the rest.
    for names in (CLIENTS, ["evi-state"]):
        run(["podman", "rm", "--force", "--ignore", "--time", "0", *names])
    labelled = run(["podman", "ps", "-aq", "--filter", f"label={MANAGED_LABEL}"]).stdout.split()
    if labelled:
        run(["podman", "rm", "--force", "--ignore", "--time", "0", *labelled])
    run(["podman", "rm", "--force", "--ignore", "--time", "0", *OTHERS])
    if run(["podman", "network", "exists", NETWORK], check=False).returncode == 0:
        run(["podman", "network", "rm", "--force", NETWORK])
    remove_stale_bridges(subnet)
    if run(["podman", "volume", "exists", VOLUME], check=False).returncode == 0:
        run(["podman", "volume", "rm", "--force", VOLUME])
    names = run(["podman", "secret", "ls", "--format", "{{.Name}}"]).stdout.split()
    evi_secrets = [n for n in names if n.startswith("evi-")]
    if evi_secrets:
        run(["podman", "secret", "rm", *evi_secrets])
    shutil.rmtree(state_dir, ignore_errors=True)
    left = run(["podman", "ps", "-a", "--format", "{{.Names}}"]).stdout.split()
    left = [n for n in left if n in CONTAINERS]
    if left:
        raise BenchError(f"containers still there after the clean-up: {left}")


class Bench:
    def __init__(self, args):
        self.args = args
        self.bin = args.bin
        self.compose_bin = args.podman_compose
        self.tmp = Path(tempfile.mkdtemp(prefix="evi-bench."))
        self.state_dir = self.tmp / "state"
        self.settings = self.tmp / "evi.yaml"
        self.conf = self.tmp / "valkey.conf"
        self.time_out = self.tmp / "time.txt"
        self.evi_env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("EVI_CONFIG", "EVI_STATE_DIR", "CONTAINER_HOST")
        }
        self.evi_env["NO_COLOR"] = "1"
        self.compose_env = None
        self.state_cmd = None
        self.rules = None
        self.samples = {}
        self.notes = []

    # ---- helpers -------------------------------------------------------------------

    def evi(self, *args):
        return [
            self.bin,
            "--podman-url",
            self.args.podman_url,
            "--config",
            str(self.settings),
            *args,
        ]

    def add(self, key, value):
        self.samples.setdefault(key, []).append(value)

    def reset(self):
        reset_host(self.state_dir, self.args.subnet)

    def wait_pong(self):
        """Polls an authenticated PING from evi-be until PONG; returns the attempts. A
        failure shows what the host looks like (diagnose)."""
        try:
            return self.poll_pong()
        except BenchError as e:
            raise BenchError(f"{e}\n{self.diagnose()}") from None

    def poll_pong(self):
        deadline = time.perf_counter() + READY_TIMEOUT
        attempts = 0
        while True:
            attempts += 1
            p = run(["podman", "exec", "evi-be", "sh", "-c", CLIENT_PING], check=False)
            if p.returncode == 0 and p.stdout.strip() == "PONG":
                return attempts
            if time.perf_counter() >= deadline:
                raise BenchError(
                    f"evi-be got no PONG within {READY_TIMEOUT:.0f}s "
                    f"(last: exit {p.returncode}, {tail(p.stdout + p.stderr, 5)})"
                )
            time.sleep(POLL_PAUSE)

    def note_attempts(self, what, attempts):
        if attempts > 1:
            self.notes.append(f"{what}: the first PONG from evi-be took {attempts} attempts")

    def diagnose(self):
        """What the host looks like, for an error message."""
        out = []
        for cmd in (
            ["podman", "ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Status}} {{.Labels}}"],
            ["podman", "inspect", "evi-state-addr", "--format",
             "evi-state IP: {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"],
            ["podman", "exec", "evi-be", "timeout", "3", "getent", "ahosts", "evi-state"],
            ["podman", "exec", "evi-be", "cat", "/etc/hosts"],
            ["podman", "inspect", "evi-be", "--format", "{{.Id}} {{.Created}} {{.HostConfig.ExtraHosts}}"],
            ["podman", "exec", "evi-be", "sh", "-c", f"timeout 3 sh -c '{CLIENT_PING}'"],
        ):
            try:
                p = run(cmd, check=False, timeout=20)
            except BenchError as e:
                out.append(f"$ {show(cmd)[:120]}\n{e}")
                continue
            out.append(f"$ {show(cmd)[:120]}\n{tail(p.stdout + p.stderr, 10)} (exit {p.returncode})")
        return "\n".join(out)

    def state_cmd_now(self):
        out = run(["podman", "inspect", "evi-state", "--format", "{{json .Config.Cmd}}"])
        return json.loads(out.stdout)

    def check_same_state_cmd(self, method):
        cmd = self.state_cmd_now()
        if cmd != self.state_cmd:
            raise BenchError(
                f"{method}: evi-state's command differs from evi-install's:\n{cmd}\nvs\n{self.state_cmd}"
            )

    # ---- setup -----------------------------------------------------------------------

    def setup(self):
        image = self.args.image
        self.settings.write_text(
            f"state_dir: {self.state_dir}\n"
            f"network_subnet: {self.args.subnet}\n"
            "services:\n"
            f"  evi-state: {{ image: {image} }}\n"
            f'  evi-be: {{ image: {image}, command: [sh, -c, "{CLIENT_SCRIPT}"] }}\n'
            f'  evi-worker: {{ image: {image}, command: [sh, -c, "{CLIENT_SCRIPT}"] }}\n'
        )
        self.reset()
        # Warm-up (untimed): one evi-install up. It also gives the exact start command and
        # valkey.conf that the CLI floor and the compose stack then use.
        log("warm-up: evi-install up (untimed)")
        run(self.evi("up"), env=self.evi_env)
        self.wait_pong()
        self.state_cmd = self.state_cmd_now()
        if self.state_cmd[:2] != ["sh", "-c"] or len(self.state_cmd) != 3:
            raise BenchError(f"unexpected evi-state command: {self.state_cmd}")
        env = json.loads(run(["podman", "inspect", "evi-state", "--format", "{{json .Config.Env}}"]).stdout)
        self.rules = next((e.split("=", 1)[1] for e in env if e.startswith(RULES_ENV + "=")), None)
        if not self.rules:
            raise BenchError(f"evi-state has no {RULES_ENV} in its environment")
        shutil.copyfile(self.state_dir / "valkey" / "valkey.conf", self.conf)
        self.conf.chmod(0o644)
        self.reset()
        self.compose_env = dict(os.environ)
        self.compose_env.update(
            EVI_BENCH_SUBNET=self.args.subnet,
            EVI_BENCH_STATE_IP=str(self.state_ip()),
            EVI_BENCH_STATE_MAC=self.state_mac(),
            EVI_BENCH_IMAGE=image,
            EVI_BENCH_CONF=str(self.conf),
            EVI_BENCH_PASSWORD_FILE=str(self.tmp / "compose-password"),
            EVI_BENCH_ADMIN_PASSWORD_FILE=str(self.tmp / "compose-admin-password"),
            EVI_BENCH_RULES=self.rules,
            EVI_BENCH_STATE_SCRIPT=self.state_cmd[2],
            EVI_BENCH_CLIENT_SCRIPT=CLIENT_SCRIPT,
        )
        p = run([self.bin, "rotate-secret", "--help"], check=False)
        self.rotate = p.returncode == 0
        if not self.rotate:
            log("rotate-secret is not in this build: its rows read n/a")

    # ---- the measurements --------------------------------------------------------------

    def evi_round(self, first):
        self.reset()
        t0 = time.perf_counter()
        run(["/usr/bin/time", "-v", "-o", str(self.time_out), *self.evi("up")], env=self.evi_env)
        attempts = self.wait_pong()
        self.add("evi_fresh", time.perf_counter() - t0)
        self.note_attempts("evi-install fresh up", attempts)
        self.add("rss", max_rss_bytes(self.time_out.read_text()))

        dt, _ = timed(lambda: run(self.evi("up"), env=self.evi_env))
        self.add("evi_noop", dt)
        dt, _ = timed(lambda: run(self.evi("up", "--dry-run"), env=self.evi_env))
        self.add("evi_dry", dt)
        # Untimed: the host really is converged (exit 0 = no changes pending).
        run(self.evi("up", "--dry-run", "--detailed-exitcode"), env=self.evi_env)

        if self.rotate:
            self.rotate_once()

    def rotate_once(self):
        # The client gap is measured with the real clients (ClientBench); here only the
        # command's own time, with the stand-in clients.
        t0 = time.perf_counter()
        run(self.evi("rotate-secret"), env=self.evi_env)
        self.add("rotate", time.perf_counter() - t0)
        # The stack still answers (with the new password) and is converged.
        attempts = self.wait_pong()
        self.note_attempts("after rotate-secret", attempts)
        run(self.evi("up", "--dry-run", "--detailed-exitcode"), env=self.evi_env)

    def state_ip(self):
        """evi-state's fixed address, as evi-install gives it: .2 of the subnet."""
        return ipaddress.ip_network(self.args.subnet).network_address + 2

    def state_mac(self):
        """The MAC evi-install pins to that address (src/addressing.rs mac_for)."""
        return "0a:e1:" + ":".join(f"{b:02x}" for b in self.state_ip().packed)

    def floor_round(self, first):
        self.reset()
        pw = new_password()
        pw_file = self.tmp / "floor-password"
        pw_file.write_text(pw)
        pw_file.chmod(0o600)
        url = f"redis://:{pw}@evi-state:6379"
        image = self.args.image
        t0 = time.perf_counter()
        # As evi-install does, so that clients need no DNS: a fixed subnet, evi-state
        # at a fixed address and MAC, held by a container of its own in whose network
        # namespace evi-state runs, and a hosts entry in each client.
        run(["podman", "network", "create", "--subnet", self.args.subnet, NETWORK])
        run(["podman", "secret", "create", "evi-state-password-v1", str(pw_file)])
        run(["podman", "secret", "create", "evi-admin-password", "-"], input=new_password())
        run(["podman", "secret", "create", "evi-valkey-url-v1", "-"], input=url)
        run(["podman", "volume", "create", VOLUME])
        run([
            "podman", "run", "-d", "--name", "evi-state-addr",
            "--network", NETWORK, "--network-alias", "evi-state",
            "--ip", str(self.state_ip()), "--mac-address", self.state_mac(),
            "--restart", "always",
            image, "sh", "-c", HOLDER_SCRIPT,
        ])
        run([
            "podman", "run", "-d", "--name", "evi-state",
            "--user", "valkey",
            "--network", "container:evi-state-addr",
            "--restart", "always",
            "-v", f"{self.conf}:{CONF_IN_CONTAINER}:ro",
            "-v", f"{VOLUME}:/data",
            "--secret", "evi-state-password-v1,target=evi-state-password,mode=0444",
            "--secret", "evi-admin-password,target=evi-admin-password,mode=0444",
            "-e", f"{RULES_ENV}={self.rules}",
            image, *self.state_cmd,
        ])
        deadline = time.perf_counter() + READY_TIMEOUT
        polls = 0
        while True:
            polls += 1
            p = run(["podman", "exec", "evi-state", "sh", "-c", STATE_PING], check=False)
            if p.returncode == 0 and p.stdout.strip() == "PONG":
                break
            if time.perf_counter() >= deadline:
                raise BenchError(f"CLI floor: evi-state not ready: {tail(p.stdout + p.stderr, 5)}")
            time.sleep(POLL_PAUSE)
        for name in ("evi-be", "evi-worker"):
            run([
                "podman", "run", "-d", "--name", name,
                "--network", NETWORK, "--network-alias", name,
                "--add-host", f"evi-state:{self.state_ip()}",
                "--restart", "always",
                "--secret", "evi-valkey-url-v1,type=env,target=VALKEY_URL",
                image, "sh", "-c", CLIENT_SCRIPT,
            ])
        attempts = self.wait_pong()
        self.add("floor_fresh", time.perf_counter() - t0)
        self.add("floor_polls", polls)
        self.note_attempts("CLI floor", attempts)
        if first:
            self.check_same_state_cmd("CLI floor")

    def compose(self, *args):
        return [self.compose_bin, "-f", str(self.args.compose_file), *args]

    def compose_round(self, first):
        self.reset()
        pw = new_password()
        pw_file = Path(self.compose_env["EVI_BENCH_PASSWORD_FILE"])
        pw_file.write_text(pw)
        # A bind-mounted file secret: the valkey user in the container must read it.
        pw_file.chmod(0o444)
        admin_file = Path(self.compose_env["EVI_BENCH_ADMIN_PASSWORD_FILE"])
        admin_file.write_text(new_password())
        admin_file.chmod(0o444)
        url = f"redis://:{pw}@evi-state:6379"
        t0 = time.perf_counter()
        run(["podman", "secret", "create", "evi-valkey-url-v1", "-"], input=url)
        run(self.compose("up", "-d"), env=self.compose_env)
        attempts = self.wait_pong()
        self.add("compose_fresh", time.perf_counter() - t0)
        self.note_attempts("podman-compose", attempts)
        if first:
            self.check_same_state_cmd("podman-compose")
            ports = run(["podman", "ps", "--format", "{{.Names}} {{.Ports}}"]).stdout
            if any(len(line.split()) > 1 for line in ports.splitlines()):
                raise BenchError(f"podman-compose published a port:\n{ports}")
        ids = self.container_ids()
        dt, _ = timed(lambda: run(self.compose("up", "-d"), env=self.compose_env))
        self.add("compose_noop", dt)
        if self.container_ids() != ids:
            raise BenchError("podman-compose up -d re-created containers on a converged stack")

    def container_ids(self):
        return run(["podman", "ps", "-a", "--format", "{{.Names}} {{.ID}}"]).stdout.split()

    def main(self):
        started = time.perf_counter()
        self.setup()
        n = self.args.runs
        for i in range(n):
            first = i == 0
            self.evi_round(first)
            self.floor_round(first)
            self.compose_round(first)
            msg = (
                f"run {i + 1}/{n}: evi-install {self.samples['evi_fresh'][-1]:.2f}s, "
                f"CLI floor {self.samples['floor_fresh'][-1]:.2f}s, "
                f"podman-compose {self.samples['compose_fresh'][-1]:.2f}s"
            )
            if self.rotate:
                msg += f", rotate-secret {self.samples['rotate'][-1]:.2f}s"
            log(msg)
        self.reset()
        log(f"measured in {time.perf_counter() - started:.0f}s")
        self.print_table()

    def cleanup(self):
        try:
            self.reset()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- the report -------------------------------------------------------------------

    def print_table(self):
        s = {k: sorted(v) for k, v in self.samples.items()}
        med = {k: statistics.median(v) for k, v in s.items()}
        compose_version = run([self.compose_bin, "--version"]).stdout.splitlines()[0].split()[-1]

        def secs(x):
            return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"

        def mb(x):
            return f"{x / 1e6:.1f} MB"

        def ratio(a, b):
            return f"{a / b:.2f}×"

        def verdict(ok):
            return "PASS" if ok else "MISS"

        rows = []

        def row(name, key, fmt, compare="", target="", result=""):
            v = s[key]
            rows.append([name, fmt(med[key]), fmt(v[0]), fmt(v[-1]), compare, target, result])

        ef, ff, cf = med["evi_fresh"], med["floor_fresh"], med["compose_fresh"]
        row(
            "fresh `up` → PONG, evi-install", "evi_fresh", secs,
            f"{ratio(ef, ff)} CLI floor, {ratio(ef, cf)} podman-compose",
            "≤ 1.0× CLI floor", verdict(ef <= ff),
        )
        row("fresh → PONG, CLI floor (podman CLI)", "floor_fresh", secs)
        row(f"fresh → PONG, podman-compose {compose_version}", "compose_fresh", secs)
        cn = med["compose_noop"]
        for name, key in (("no-op `up`, evi-install", "evi_noop"),
                          ("`up --dry-run` (converged), evi-install", "evi_dry")):
            row(
                name, key, secs, f"{ratio(med[key], cn)} podman-compose no-op",
                "≤ 60 ms and ≤ 0.15× compose no-op",
                verdict(med[key] <= 0.060 and med[key] <= 0.15 * cn),
            )
        row(f"no-op `up -d`, podman-compose {compose_version}", "compose_noop", secs)
        if self.rotate:
            row("`rotate-secret`, evi-install", "rotate", secs, "", "≤ 5 s",
                verdict(med["rotate"] <= 5.0))
        else:
            na = "n/a (rotate-secret not built yet)"
            rows.append(["`rotate-secret`, evi-install", na, "", "", "", "≤ 5 s", ""])
        row("peak RSS during fresh `up`, evi-install", "rss", mb, "", "≤ 30 MB",
            verdict(med["rss"] <= 30e6))
        size = os.path.getsize(self.bin)
        rows.append(["release binary size", f"{mb(size)} ({size} bytes)", "", "", "", "", ""])

        header = ["measurement", "median", "min", "max", "compared (medians)", "target", "result"]
        table = [header, ["---"] * len(header)] + rows
        widths = [max(len(r[i]) for r in table if r[0] != "---") for i in range(len(header))]
        lines = []
        for r in table:
            if r[0] == "---":
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
            else:
                lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        n = self.args.runs
        print(f"evi-install benchmark: {n} run{'s' if n != 1 else ''} of each; times are wall clock.")
        print(f"Host: {host_description()}; {run(['podman', '--version']).stdout.strip()}; "
              f"podman-compose {compose_version}; evi-install at {git_commit()}.")
        print()
        print("\n".join(lines))
        if s.get("floor_polls"):
            print()
            print(
                "CLI floor readiness polls of evi-state: "
                f"median {statistics.median(s['floor_polls']):g}, max {s['floor_polls'][-1]}."
            )
        for note in self.notes:
            print(f"Note: {note}.")


def host_description():
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    date = time.strftime("%Y-%m-%d", time.gmtime())
    return f"{date}, {len(os.sched_getaffinity(0))} cores, {mem_kib / 2**20:.0f} GiB memory"


def git_commit():
    p = run(["git", "describe", "--always", "--dirty"], check=False)
    return p.stdout.strip() if p.returncode == 0 else "unknown commit"


def max_rss_bytes(time_v_output):
    for line in time_v_output.splitlines():
        if "Maximum resident set size" in line:
            return int(line.rsplit(":", 1)[1]) * 1024
    raise BenchError(f"no 'Maximum resident set size' in GNU time output:\n{time_v_output}")


# ---- the real clients through rotate-secret -------------------------------------------

# evi-be is the guide's producer (Node, ioredis), evi-worker its consumer (Python,
# redis-py): the programs of examples/clients, in the client image, unchanged.
PRODUCER_CMD = ["node", "/opt/evi-clients/producer.js"]
WORKER_CMD = ["python3", "/opt/evi-clients/worker.py"]
STREAM = "stream:tasks:email"
# Load before the rotation starts and after both new clients work again.
STEADY_SECONDS = 2.0
# After `up`, both clients must report a success within this (or the run fails).
WORKING_TIMEOUT = 30.0
# After rotate-secret, how long to wait for the new clients before ending the window
# anyway (a client that never comes back shows as a gap as long as its life).
RECOVERY_TIMEOUT = 60.0
# After the producer stopped, how long the restarted worker may take to drain the stream.
DRAIN_TIMEOUT = 30.0
# The target of issue 9: the longest client gap of a run.
GAP_TARGET_MS = 1000
# valkey-cli inside evi-state with evi-state's own password (as the end-to-end tests do);
# the command comes as arguments, so nothing is quoted into the script. --json: RESP3
# replies as JSON.
STATE_CLI = (
    'REDISCLI_AUTH="$(cat /run/secrets/evi-admin-password)" '
    'exec valkey-cli --no-auth-warning --user evi-admin -e --json "$@"'
)


class LogFollower:
    """`podman logs -f` of one container (by ID), read by a thread: the only way to get
    the last lines (the final stats line) of a client that rotate-secret removes."""

    def __init__(self, cid):
        self.lines = []
        self.proc = subprocess.Popen(
            ["podman", "logs", "-f", "-t", cid],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def collect(self, timeout=20.0):
        """The container's lines, once it is gone (or after timeout)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
        self.thread.join(timeout=5)
        return list(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def log_time(stamp):
    """`podman logs -t`'s time stamp (RFC 3339 with nanoseconds) as Unix seconds."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", stamp)
    if not m:
        return None
    t = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    t += float(f"0.{m.group(2) or 0}")
    if m.group(3) != "Z":
        sign = 1 if m.group(3)[0] == "+" else -1
        t -= sign * (int(m.group(3)[1:3]) * 3600 + int(m.group(3)[4:6]) * 60)
    return t


def client_processes(lines):
    """Splits a container's stdout (`podman logs -t`: a time stamp, then the line) into
    its client processes (a container that was started twice holds two): for each, the
    "start" event, the stats lines and the error events, in order, each with the time
    Podman logged it in "_t". Lines that are not JSON are ignored (the clients print none)."""
    procs = []
    for line in lines:
        stamp, _, text = line.partition(" ")
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        obj["_t"] = log_time(stamp)
        if obj.get("event") == "start" or not procs:
            procs.append({"start": None, "stats": [], "errors": []})
        if obj.get("event") == "start":
            procs[-1]["start"] = obj
        elif obj.get("event") == "stats":
            procs[-1]["stats"].append(obj)
        elif obj.get("event") == "error":
            procs[-1]["errors"].append(obj)
    return procs


def process_gap_ms(stats, count_head):
    """A client process's longest time without a successful command, from its stats
    lines (see bench/README.md): the longest time between two of its successes
    (max_gap_ms of its last line) or from its last success to its exit (gap_now_ms of
    its final line); with count_head, also the time from its start to its first success,
    as far as its once-a-second lines show it (gap_now_ms of the lines with no success
    yet, a lower bound). A process that never had a success counts its whole life."""
    last = stats[-1]
    if last["ok"] == 0:
        return last["uptime_ms"]
    gap = max(last["max_gap_ms"], last["gap_now_ms"])
    if count_head:
        gap = max([gap] + [s["gap_now_ms"] for s in stats if s["ok"] == 0])
    return gap


def gap_end(stats, gap_ms, t0):
    """When a process's longest gap ended, as seen from its stats lines' log times, in
    seconds after t0 (the start of rotate-secret): the line that first showed it (its
    max_gap_ms, or gap_now_ms of a final or not-yet-successful line) and the line before;
    lines come once a second, so that is the resolution. None if the log had no times."""
    prev = None
    for s in stats:
        shown = s["max_gap_ms"] >= gap_ms or (s["gap_now_ms"] >= gap_ms and (s.get("final") or s["ok"] == 0))
        if shown and s["_t"] is not None:
            lo = prev["_t"] - t0 if prev and prev["_t"] is not None else None
            return [lo, s["_t"] - t0]
        prev = s
    return None


def stream_ms(entry_id):
    return int(entry_id.split("-")[0])


class ClientBench:
    """N runs of: fresh `up` with the real clients, steady load, `rotate-secret`, steady
    load with the new clients, stop, drain, and the stream checked for lost tasks. Writes
    the results as JSON (the report is printed from there, with the other lane's)."""

    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="evi-bench-clients."))
        self.state_dir = self.tmp / "state"
        self.settings = self.tmp / "evi.yaml"
        self.evi_env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("EVI_CONFIG", "EVI_STATE_DIR", "CONTAINER_HOST")
        }
        self.evi_env["NO_COLOR"] = "1"
        self.followers = {}

    def evi(self, *args):
        return [self.args.bin, "--podman-url", self.args.podman_url,
                "--config", str(self.settings), *args]

    def cid(self, name):
        return run(["podman", "inspect", name, "--format", "{{.Id}}"]).stdout.strip()

    def state_cli(self, *command):
        p = run(["podman", "exec", "evi-state", "sh", "-c", STATE_CLI, "sh", *command])
        return json.loads(p.stdout)

    def last_stats(self, cid):
        """The last stats line a container printed so far, or None."""
        p = run(["podman", "logs", "-t", cid], check=False, timeout=30)
        procs = client_processes(p.stdout.splitlines())
        stats = procs[-1]["stats"] if procs else []
        return stats[-1] if stats else None

    def wait_working(self, cid, timeout, since=None):
        """Until the client's latest stats line shows a success in its last second, and
        (with since, Unix seconds) one after since, as placed by the line's log time.
        Returns that line, or None after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            last = self.last_stats(cid)
            if last and last["ok"] > 0 and last["gap_now_ms"] <= 1000 and (
                since is None
                or (last["_t"] is not None and last["_t"] - last["gap_now_ms"] / 1000 > since)
            ):
                return last
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)

    def group_state(self):
        """(pending, lag) of the consumer group on the stream (lag None if unknown)."""
        groups = self.state_cli("XINFO", "GROUPS", STREAM)
        if not groups:
            return None, None
        g = groups[0]
        if isinstance(g, list):  # RESP2-style flat pairs, should --json fall back to it
            g = dict(zip(g[::2], g[1::2]))
        return g.get("pending"), g.get("lag")

    def drain(self):
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            pending, lag = self.group_state()
            if (pending, lag) == (0, 0) or time.monotonic() >= deadline:
                return pending, lag
            time.sleep(0.25)

    def entries(self):
        """The stream's entries as (id, {field: value})."""
        out = []
        for entry_id, fields in self.state_cli("XRANGE", STREAM, "-", "+"):
            if isinstance(fields, dict):
                out.append((entry_id, fields))
            else:
                out.append((entry_id, dict(zip(fields[::2], fields[1::2]))))
        return out

    def client_versions(self):
        """ioredis and redis-py as installed in the client image."""
        script = (
            "node -p 'require(\"/opt/evi-clients/node_modules/ioredis/package.json\").version'; "
            "python3 -c 'import redis; print(redis.__version__)'"
        )
        p = run(["podman", "run", "--rm", "--network", "none", self.args.client_image,
                 "sh", "-c", script])
        ioredis, redis_py = p.stdout.split()
        return {"ioredis": ioredis, "redis-py": redis_py}

    def setup(self):
        image, clients = self.args.image, self.args.client_image
        subnet = f"network_subnet: {self.args.subnet}\n"
        self.settings.write_text(
            f"state_dir: {self.state_dir}\n"
            f"{subnet}"
            "services:\n"
            f"  evi-state: {{ image: {image} }}\n"
            f"  evi-be: {{ image: {clients}, command: {json.dumps(PRODUCER_CMD)} }}\n"
            f"  evi-worker: {{ image: {clients}, command: {json.dumps(WORKER_CMD)} }}\n"
        )

    def one_run(self):
        """One run; returns its figures (see bench/README.md for what each means)."""
        reset_host(self.state_dir, self.args.subnet)
        notes = []
        run(self.evi("up"), env=self.evi_env)
        before = {name: self.cid(name) for name in CLIENTS}
        self.followers = {name: LogFollower(cid) for name, cid in before.items()}
        for name, cid in before.items():
            if not self.wait_working(cid, WORKING_TIMEOUT):
                raise BenchError(f"{name} reported no success within {WORKING_TIMEOUT:.0f}s "
                                 f"of `up`: {self.last_stats(cid)}")
        time.sleep(STEADY_SECONDS)

        rotate_start_ns = time.time_ns()
        t0 = time.perf_counter()
        run(self.evi("rotate-secret"), env=self.evi_env)
        rotate_s = time.perf_counter() - t0
        rotate_end = time.time()
        after = {name: self.cid(name) for name in CLIENTS}
        for name in CLIENTS:
            if after[name] == before[name]:
                raise BenchError(f"rotate-secret did not re-create {name}")
        # A success after rotate-secret returned: its last step re-creates evi-state, so a
        # success from before that says nothing.
        for name, cid in after.items():
            if not self.wait_working(cid, RECOVERY_TIMEOUT, since=rotate_end):
                notes.append(f"{name} reported no success within {RECOVERY_TIMEOUT:.0f}s "
                             "after rotate-secret returned")
        time.sleep(STEADY_SECONDS)

        # The end of the measured window: the worker first, while tasks still flow (an
        # idle worker's XREADGROUP BLOCK 1000 would add ~1 s pauses that are no outage),
        # then the producer. Both print their final stats line on SIGTERM.
        run(["podman", "stop", "--time", "10", after["evi-worker"]])
        producer_stop_ms = time.time_ns() // 10**6
        run(["podman", "stop", "--time", "10", after["evi-be"]])
        # The drain: the same worker container once more, until nothing is pending and
        # nothing is undelivered; its second process's stats are not part of the window.
        run(["podman", "start", after["evi-worker"]])
        pending, lag = self.drain()
        run(["podman", "stop", "--time", "10", after["evi-worker"]])
        entries = self.entries()

        # Every client process: the two replaced by the rotation (followed until they
        # were removed), the two that replaced them, and the drain worker.
        containers = {f"{name} (before)": self.followers[name].collect() for name in CLIENTS}
        for name in CLIENTS:
            lines = run(["podman", "logs", "-t", after[name]]).stdout.splitlines()
            containers[f"{name} (after)"] = lines
        self.followers = {}

        procs = []  # (label, process, counts for the gap)
        for label, lines in containers.items():
            ps = client_processes(lines)
            if not ps:
                raise BenchError(f"{label}: no output from the client")
            # Only the worker after the rotation runs twice (the second time to drain).
            expected = 2 if label == "evi-worker (after)" else 1
            if len(ps) != expected:
                notes.append(f"{label} ran {len(ps)} client processes, not {expected}")
            for i, proc in enumerate(ps):
                in_window = i == 0
                procs.append((label if in_window else f"{label}, drain", proc, in_window))

        errors = {"auth": 0, "conn": 0, "other": 0}
        gaps = []  # (ms, label, client, last error, when)
        produced = {}  # producer id -> confirmed XADDs
        for label, proc, in_window in procs:
            if not proc["stats"]:
                raise BenchError(f"{label}: no stats line")
            last = proc["stats"][-1]
            if not last.get("final"):
                notes.append(f"{label}: no final stats line (the figures are from its last one)")
            for cls in errors:
                errors[cls] += last["errors"][cls]
            if in_window:
                gap_ms = process_gap_ms(proc["stats"], count_head=label.endswith("(after)"))
                when = gap_end(proc["stats"], gap_ms, rotate_start_ns / 1e9)
                gaps.append((gap_ms, label, last["client"], last.get("last_error", ""), when))
            if last["client"] == "producer":
                produced[(proc["start"] or {}).get("id", label)] = last["produced"]

        # Lost tasks: each producer numbers its confirmed XADDs 1, 2, ... (it moves on to
        # seq n+1 only once XADD n was confirmed), so every seq from 1 to the larger of its
        # `produced` and the highest seq of it in the stream must be in the stream.
        seqs = collections.defaultdict(set)
        kept = 0
        for _entry_id, fields in entries:
            kept += 1
            seqs[fields.get("producer", "?")].add(int(fields.get("seq", "0")))
        lost = 0
        for pid, n in produced.items():
            have = seqs.get(pid, set())
            lost += len(set(range(1, max([n] + list(have)) + 1)) - have)
        strangers = sorted(set(seqs) - set(produced))
        if strangers:
            notes.append(f"stream entries from unknown producers: {strangers}")

        # Server side: the longest pause in the stream from the start of rotate-secret to
        # the moment the producer is told to stop, counting both ends (entry IDs are the
        # server's milliseconds, on the host's clock).
        start_ms = rotate_start_ns // 10**6
        times = [start_ms] + [stream_ms(i) for i, _ in entries
                              if start_ms <= stream_ms(i) <= producer_stop_ms] + [producer_stop_ms]
        pause = max(b - a for a, b in zip(times, times[1:]))

        gap = max(gaps)
        errors_seen = collections.Counter()
        for label, proc, _ in procs:
            for e in proc["errors"]:
                errors_seen[f"{e.get('client')}: {e.get('class')}: {e.get('op')}: "
                            f"{scrub(str(e.get('error', '')))[:100]}"] += 1
        return {
            "gap_ms": gap[0],
            "gap_where": f"{gap[2]} in {gap[1]}",
            "gap_when": gap[4],
            "gap_last_error": scrub(gap[3])[:160],
            "gaps": [[g[0], g[1], g[2], g[4]] for g in gaps],
            "errors": errors,
            "error_kinds": dict(errors_seen.most_common(8)),
            "produced": sum(produced.values()),
            "kept": kept,
            "lost": lost,
            "producers": len(produced),
            "pending": pending,
            "lag": lag,
            "stream_pause_ms": pause,
            "rotate_s": rotate_s,
            "notes": notes,
        }

    def main(self):
        started = time.perf_counter()
        self.setup()
        backend = run(["podman", "info", "--format", "{{.Host.NetworkBackend}}"]).stdout.strip()
        result = {
            "lane": self.args.lane,
            "network_backend": backend,
            "podman": run(["podman", "--version"]).stdout.strip(),
            "clients": self.client_versions(),
            "runs": [],
        }
        n = self.args.clients_runs
        for i in range(n):
            r = self.one_run()
            result["runs"].append(r)
            log(f"clients run {i + 1}/{n} ({self.args.lane}): longest gap {r['gap_ms']} ms "
                f"({r['gap_where']}), failed commands auth {r['errors']['auth']} conn "
                f"{r['errors']['conn']} other {r['errors']['other']}, produced {r['produced']} "
                f"kept {r['kept']} lost {r['lost']}, pending {r['pending']}, "
                f"rotate-secret {r['rotate_s']:.2f}s")
            # Written after every run: an interrupted benchmark keeps what it measured.
            self.args.clients_out.write_text(json.dumps(result, indent=1) + "\n")
        reset_host(self.state_dir, self.args.subnet)
        log(f"clients ({self.args.lane}): measured in {time.perf_counter() - started:.0f}s")

    def cleanup(self):
        try:
            for f in list(getattr(self, "followers", {}).values()):
                f.stop()
            reset_host(self.state_dir, self.args.subnet)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def scrub(text):
    """Belt and braces: the clients already scrub their error text; any redis URL with
    credentials is cut down once more before it reaches the output."""
    return re.sub(r"((?:rediss?|valkeys?)://)[^\s@/]*@", r"\1***@", text, flags=re.IGNORECASE)


def print_clients_report(paths):
    """The client-gap table, one column per setup, from the JSON files of the lanes."""
    # A lane whose runs failed before the first one ended wrote no file.
    lanes = [json.loads(Path(p).read_text()) for p in paths if Path(p).exists()]
    lanes = [lane for lane in lanes if lane["runs"]]
    if not lanes:
        print("No client-gap runs.")
        return

    def secs(ms):
        return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"

    def verdict(ok):
        return "PASS" if ok else "MISS"

    def each(fn):
        return [fn(lane["runs"]) for lane in lanes]

    def total(key):
        return lambda runs: sum(r[key] or 0 for r in runs)

    def err_total(cls):
        return lambda runs: sum(r["errors"][cls] for r in runs)

    def gaps(runs):
        return sorted(r["gap_ms"] for r in runs)

    rows = []
    g = each(gaps)
    rows.append(["longest client gap: median"] + [secs(statistics.median(x)) for x in g] + ["", ""])
    rows.append(["longest client gap: min"] + [secs(x[0]) for x in g] + ["", ""])
    rows.append(["longest client gap: max"] + [secs(x[-1]) for x in g] + ["", ""])
    within = [sum(1 for v in x if v <= GAP_TARGET_MS) for x in g]
    rows.append(
        ["runs with longest client gap ≤ 1 s"]
        + [f"{w} of {len(x)}" for w, x in zip(within, g)]
        + ["all runs, each setup", verdict(all(w == len(x) for w, x in zip(within, g)))]
    )
    auth = each(err_total("auth"))
    rows.append(["failed commands: auth (NOAUTH/WRONGPASS)"] + [str(a) for a in auth]
                + ["0", verdict(not any(auth))])
    rows.append(["failed commands: conn"] + [str(v) for v in each(err_total("conn"))] + ["", ""])
    rows.append(["failed commands: other"] + [str(v) for v in each(err_total("other"))] + ["", ""])
    rows.append(["tasks produced / kept in the stream"]
                + [f"{p} / {k}" for p, k in zip(each(total("produced")), each(total("kept")))]
                + ["", ""])
    lost = each(total("lost"))
    rows.append(["tasks lost (confirmed XADD not in the stream)"] + [str(v) for v in lost]
                + ["0", verdict(not any(lost))])
    pending = each(lambda runs: sum(r["pending"] if r["pending"] is not None else 1 for r in runs))
    undelivered = each(lambda runs: sum(r["lag"] if r["lag"] is not None else 1 for r in runs))
    rows.append(["pending entries left after the drain"] + [str(v) for v in pending]
                + ["0", verdict(not any(pending))])
    rows.append(["undelivered entries left after the drain (lag)"] + [str(v) for v in undelivered]
                + ["0", verdict(not any(undelivered))])
    pauses = each(lambda runs: sorted(r["stream_pause_ms"] for r in runs
                                      if r["stream_pause_ms"] is not None))
    rows.append(["longest pause between tasks in the stream (server side): median / max"]
                + [f"{secs(statistics.median(x))} / {secs(x[-1])}" if x else "n/a" for x in pauses]
                + ["", ""])
    rot = each(lambda runs: sorted(r["rotate_s"] for r in runs))
    rows.append(["`rotate-secret` under client load: median / max"]
                + [f"{statistics.median(x):.2f} s / {x[-1]:.2f} s" for x in rot]
                + ["", ""])

    header = ["measurement"] + [f"{lane['lane']} ({len(lane['runs'])} runs)" for lane in lanes] \
        + ["target", "result"]
    table = [header, ["---"] * len(header)] + rows
    widths = [max(len(r[i]) for r in table if r[0] != "---") for i in range(len(header))]
    c = lanes[0]["clients"]
    print(f"Real clients through `rotate-secret`: evi-be = examples/clients/producer.js "
          f"(Node, ioredis {c['ioredis']}), evi-worker = examples/clients/worker.py "
          f"(redis-py {c['redis-py']}).")
    print("Setups: " + "; ".join(
        f"{lane['lane']}: {lane['podman']}, network backend {lane['network_backend']}"
        for lane in lanes) + ".")
    print()
    for r in table:
        if r[0] == "---":
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        else:
            print("| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths)) + " |")
    print()
    for lane in lanes:
        runs = lane["runs"]
        per_run = ", ".join(str(r["gap_ms"]) for r in runs)
        print(f"{lane['lane']}: longest client gap per run (ms): {per_run}.")
        worst = max(runs, key=lambda r: r["gap_ms"])
        when = worst.get("gap_when")
        if when and when[0] is not None:
            when_text = (f", ending between {when[0]:+.1f} s and {when[1]:+.1f} s from the start "
                         f"of rotate-secret (which took {worst['rotate_s']:.1f} s)")
        elif when:
            when_text = f", ending by {when[1]:+.1f} s from the start of rotate-secret"
        else:
            when_text = ""
        print(f"  The longest ({secs(worst['gap_ms'])}): {worst['gap_where']}{when_text}"
              + (f"; its last error: {worst['gap_last_error'].rstrip('.')}" if worst["gap_last_error"] else "")
              + ".")
        kinds = collections.Counter()
        for r in runs:
            kinds.update(r["error_kinds"])
        if kinds:
            print("  Error lines the clients printed (all runs; at most 5 a second each): "
                  + "; ".join(f"{k} ×{n}" for k, n in kinds.most_common(5)) + ".")
        for i, r in enumerate(runs, 1):
            for note in r["notes"]:
                print(f"  Note (run {i}): {note}.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5,
                    help="rounds of the stack rows (fresh up, CLI floor, compose...); 0: none")
    ap.add_argument("--clients-runs", type=int, default=0,
                    help="runs of the real clients through rotate-secret on this lane")
    ap.add_argument("--clients-out", type=Path, help="where the client runs' JSON goes")
    ap.add_argument("--lane", default="netavark + aardvark-dns", help="this setup's name")
    ap.add_argument("--subnet", help="evi-net's subnet for this lane (network_subnet) when "
                    "evi-install makes it; default: evi-install's own, 10.90.213.0/24")
    ap.add_argument("--report", type=Path, nargs="+",
                    help="only print the client-gap table from these JSON files")
    ap.add_argument("--bin")
    ap.add_argument("--podman-compose")
    ap.add_argument("--compose-file", type=Path)
    ap.add_argument("--podman-url", default=os.environ.get("EVI_TEST_PODMAN_URL"))
    ap.add_argument("--image", default=os.environ.get("EVI_TEST_VALKEY_IMAGE"))
    ap.add_argument("--client-image", default=os.environ.get("EVI_TEST_CLIENT_IMAGE"))
    args = ap.parse_args()
    args.subnet = args.subnet or DEFAULT_SUBNET
    if args.report:
        print_clients_report(args.report)
        return
    if not args.podman_url or not args.image or not args.bin:
        sys.exit("bench.py: --bin, EVI_TEST_PODMAN_URL and EVI_TEST_VALKEY_IMAGE must be set (use bench/run.sh)")
    if args.runs < 0 or args.clients_runs < 0 or args.runs + args.clients_runs == 0:
        sys.exit("bench.py: --runs and --clients-runs must not be negative, nor both 0")
    if args.runs and not (args.podman_compose and args.compose_file):
        sys.exit("bench.py: --runs needs --podman-compose and --compose-file")
    if args.clients_runs and not (args.client_image and args.clients_out):
        sys.exit("bench.py: --clients-runs needs --client-image (EVI_TEST_CLIENT_IMAGE) and --clients-out")

    # SIGTERM/SIGHUP become an exception, so that the clean-up below still runs.
    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    # The stack rows first (their table goes to stdout), then the real clients; a failure
    # of one does not stop the other (the exit status says it failed).
    # Made one at a time: each makes a temporary directory that only its cleanup removes.
    kinds = []
    if args.runs:
        kinds.append(Bench)
    if args.clients_runs:
        kinds.append(ClientBench)
    code = 0
    for kind in kinds:
        bench = kind(args)
        try:
            bench.main()
        except BenchError as e:
            print(f"[bench] ERROR: {e}", file=sys.stderr)
            code = code or 1
        except KeyboardInterrupt:
            code = 130
        finally:
            try:
                bench.cleanup()
            except Exception as e:  # noqa: BLE001 - report, and fail the run
                print(f"[bench] ERROR: clean-up failed: {e}", file=sys.stderr)
                code = code or 1
        if code == 130:
            break
    sys.exit(code)


if __name__ == "__main__":
    main()
