#!/usr/bin/env python3
"""The measuring half of bench/run.sh (run it through bench/run.sh, which sets up
Podman, builds the release binary and podman-compose, and holds /tmp/evi-host.lock).

Measures, N runs each, round-robin so that drift hits every method alike:
  * fresh `evi-install up` until evi-be gets an authenticated PONG from evi-state;
  * the same stack by the minimal sequence of podman CLI calls (the "CLI floor");
  * the same stack by podman-compose (bench/compose.yaml);
  * no-op `evi-install up`, `evi-install up --dry-run` and `podman-compose up -d`
    on a converged host;
  * `evi-install rotate-secret` and the longest gap a client in evi-be sees during it,
    when the binary has that command;
  * evi-install's peak RSS during a fresh `up` (GNU time) and the binary's size.
Prints one Markdown table. Exits non-zero when a measured command fails, never because
a target is missed. Removes every resource it made on the way out.
"""

import argparse
import collections
import json
import os
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
OTHERS = ["evi-state", "evi-rotate"]  # evi-rotate: rotate-secret's job container
CONTAINERS = CLIENTS + OTHERS
NETWORK = "evi-net"
VOLUME = "evi-state-data"
CONF_IN_CONTAINER = "/usr/local/etc/valkey/valkey.conf"
# The clients idle but stop at once on SIGTERM (a bare `sleep` as PID 1 ignores it).
CLIENT_SCRIPT = "trap 'exit 0' TERM; sleep infinity & wait"
# evi-state's own readiness check (as evi-install's): password from the mounted secret.
STATE_PING = (
    'REDISCLI_AUTH="$(cat /run/secrets/evi-state-password)" '
    "exec valkey-cli --no-auth-warning -e ping"
)
# What a client does: the password from its VALKEY_URL (redis://:PW@evi-state:6379),
# handed to valkey-cli in the environment (valkey-cli 8.1 refuses `-u redis://:PW@...`).
CLIENT_PING = (
    'pw="${VALKEY_URL#redis://:}"; pw="${pw%@evi-state:6379}"; '
    'REDISCLI_AUTH="$pw" exec valkey-cli --no-auth-warning -e -h evi-state ping'
)
# The client-gap prober: runs inside evi-be, PINGs with the password evi-be holds every
# ~20 ms and prints "<unix ns> ok|fail/EXIT <hostname> [error]" per attempt (EXIT 124: no
# answer within 2 s; 99: no address), for at most $1 seconds. Like a client that keeps its
# connection, it looks evi-state up again (by name, through Podman's DNS) only after a
# failed PING: rotate-secret re-creates evi-state, which then has a new address. Short
# timeouts (connect 0.25 s, lookup 1 s) keep the measured gap close to the time evi-state
# is really unreachable.
PROBE_LOOP = r"""
pw="${VALKEY_URL#redis://:}"; pw="${pw%@evi-state:6379}"
export REDISCLI_AUTH="$pw"
h="$(cat /etc/hostname)"
resolve() { ip="$(timeout 1 getent hosts evi-state | awk '{ print $1; exit }')"; }
resolve
end=$(( $(date +%s) + $1 ))
while [ "$(date +%s)" -lt "$end" ]; do
  if [ -n "$ip" ]; then
    out="$(timeout 2 valkey-cli -t 0.25 --no-auth-warning -e -h "$ip" ping 2>&1)"; rc=$?
  else
    out="no address for evi-state"; rc=99
  fi
  if [ "$rc" = 0 ] && [ "$out" = PONG ]; then
    echo "$(date +%s%N) ok $h"
  else
    echo "$(date +%s%N) fail/$rc $h $out" | tr '\n' ' ' | head -c 160; echo
    resolve
  fi
  sleep 0.02
done
"""
PROBE_NAME = "evi-bench-probe"  # the loop's $0, so that `ps` tells what it is
POLL_PAUSE = 0.02
# How long the client in evi-be may take to get a PONG again after rotate-secret returns.
RECOVERY_TIMEOUT = 120.0
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
        self.samples = {}
        self.notes = []
        self.gap_failures = collections.Counter()  # failed client PINGs during rotations, by kind
        self.gap_causes = []  # (gap, failure kinds inside it) per rotation
        self.prober = None

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
        """Removes every evi resource (containers, network, volume, secrets, state dir)."""
        if self.prober:
            self.prober.stop()
            self.prober = None
        # Clients first: podman-compose's depends_on makes them depend on evi-state, and
        # Podman refuses to remove a container that others depend on.
        for names in (CLIENTS, OTHERS):
            run(["podman", "rm", "--force", "--ignore", "--time", "0", *names])
        if run(["podman", "network", "exists", NETWORK], check=False).returncode == 0:
            run(["podman", "network", "rm", "--force", NETWORK])
        if run(["podman", "volume", "exists", VOLUME], check=False).returncode == 0:
            run(["podman", "volume", "rm", "--force", VOLUME])
        names = run(["podman", "secret", "ls", "--format", "{{.Name}}"]).stdout.split()
        evi_secrets = [n for n in names if n.startswith("evi-")]
        if evi_secrets:
            run(["podman", "secret", "rm", *evi_secrets])
        shutil.rmtree(self.state_dir, ignore_errors=True)
        left = run(["podman", "ps", "-a", "--format", "{{.Names}}"]).stdout.split()
        left = [n for n in left if n in CONTAINERS]
        if left:
            raise BenchError(f"containers still there after the clean-up: {left}")

    def wait_pong(self):
        """Polls an authenticated PING from evi-be until PONG; returns the attempts."""
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
            ["podman", "inspect", "evi-state", "--format",
             "evi-state IP: {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"],
            ["podman", "exec", "evi-be", "timeout", "3", "getent", "hosts", "evi-state"],
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
        shutil.copyfile(self.state_dir / "valkey" / "valkey.conf", self.conf)
        self.conf.chmod(0o644)
        self.reset()
        self.compose_env = dict(os.environ)
        self.compose_env.update(
            EVI_BENCH_IMAGE=image,
            EVI_BENCH_CONF=str(self.conf),
            EVI_BENCH_PASSWORD_FILE=str(self.tmp / "compose-password"),
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
        self.prober = Prober()
        self.prober.start()
        self.prober.wait_for_oks(3, timeout=20)
        start_ns = time.time_ns()
        t0 = time.perf_counter()
        run(self.evi("rotate-secret"), env=self.evi_env)
        self.add("rotate", time.perf_counter() - t0)
        end_ns = time.time_ns()
        # The client has to get through again after the rotation.
        try:
            self.prober.wait_for_ok_after(end_ns, timeout=RECOVERY_TIMEOUT)
        except BenchError as e:
            raise BenchError(f"{e}\n{self.diagnose()}") from None
        self.prober.stop()
        gap, failures, in_gap = self.prober.longest_gap(start_ns, end_ns)
        self.prober = None
        self.add("gap", gap)
        self.gap_failures.update(failures)
        self.gap_causes.append((gap, in_gap))
        # The stack still answers (with the new password) and is converged.
        attempts = self.wait_pong()
        self.note_attempts("after rotate-secret", attempts)
        run(self.evi("up", "--dry-run", "--detailed-exitcode"), env=self.evi_env)

    def floor_round(self, first):
        self.reset()
        pw = new_password()
        pw_file = self.tmp / "floor-password"
        pw_file.write_text(pw)
        pw_file.chmod(0o600)
        url = f"redis://:{pw}@evi-state:6379"
        image = self.args.image
        t0 = time.perf_counter()
        run(["podman", "network", "create", NETWORK])
        run(["podman", "secret", "create", "evi-state-password-v1", str(pw_file)])
        run(["podman", "secret", "create", "evi-valkey-url-v1", "-"], input=url)
        run(["podman", "volume", "create", VOLUME])
        run([
            "podman", "run", "-d", "--name", "evi-state",
            "--user", "valkey",
            "--network", NETWORK, "--network-alias", "evi-state",
            "--restart", "always",
            "-v", f"{self.conf}:{CONF_IN_CONTAINER}:ro",
            "-v", f"{VOLUME}:/data",
            "--secret", "evi-state-password-v1,target=evi-state-password,mode=0444",
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
                msg += (
                    f", rotate-secret {self.samples['rotate'][-1]:.2f}s "
                    f"(client gap {self.samples['gap'][-1]:.2f}s)"
                )
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
            row("longest client gap during `rotate-secret`", "gap", secs, "", "≤ 1 s",
                verdict(med["gap"] <= 1.0))
        else:
            na = "n/a (rotate-secret not built yet)"
            rows.append(["`rotate-secret`, evi-install", na, "", "", "", "≤ 5 s", ""])
            rows.append(["longest client gap during `rotate-secret`", na, "", "", "", "≤ 1 s", ""])
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
        if self.gap_failures:
            kinds = ", ".join(f"{k} ×{n}" for k, n in self.gap_failures.most_common())
            print(f"Failed client PINGs during `rotate-secret` (all runs): {kinds}.")
            gap, in_gap = max(self.gap_causes)
            print(f"The longest client gap ({gap:.2f} s) held: {', '.join(in_gap) or 'no failed PING'}.")
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


class Prober:
    """Runs PROBE_LOOP inside evi-be through `podman exec`, again and again: when evi-be
    is re-created the exec ends and the next one starts in the new container (so the
    measured gap includes starting an exec there, about 0.1-0.2 s on these machines).

    Each exec goes to one container ID, and a watchdog drops it as soon as that container
    is gone: an exec that races with the removal can outlive its container in a network
    namespace that no longer exists, where every PING times out."""

    MAX_SECONDS = 60
    WATCH_PERIOD = 0.2

    def __init__(self):
        self.results = []  # (unix ns, "ok" or the kind of failure)
        self.exec_errors = 0
        self.last_stderr = ""
        self.lines = []  # the loop's own lines, for diagnostics
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.proc = None
        self.cid = None
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.watchdog = threading.Thread(target=self.watch, daemon=True)

    def start(self):
        self.thread.start()
        self.watchdog.start()

    def failed(self, err):
        with self.lock:
            self.last_stderr = err
            self.exec_errors += 1
            self.results.append((time.time_ns(), "podman exec failed"))
            self.lines.append(f"{time.time_ns()} exec-error - {err.strip()[:120]}")

    def loop(self):
        while not self.stopping.is_set():
            p = run(["podman", "inspect", "evi-be", "--format", "{{.Id}} {{.State.Running}}"],
                    check=False, timeout=30)
            fields = p.stdout.split()
            if p.returncode != 0 or fields[1:] != ["true"]:
                self.failed(p.stderr or f"evi-be not running: {p.stdout.strip()}")
                time.sleep(POLL_PAUSE)
                continue
            with self.lock:
                if self.stopping.is_set():
                    return
                self.cid = fields[0]
                self.proc = subprocess.Popen(
                    ["podman", "exec", self.cid, "sh", "-c", PROBE_LOOP, PROBE_NAME,
                     str(self.MAX_SECONDS)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    text=True,
                )
                proc = self.proc
            for line in proc.stdout:
                parts = line.split(maxsplit=3)
                if len(parts) >= 3 and parts[0].isdigit():
                    with self.lock:
                        self.results.append((int(parts[0]), failure_kind(parts)))
                        self.lines.append(line.strip())
            err = proc.stderr.read()
            rc = proc.wait()
            with self.lock:
                self.cid = None
            if rc != 0 and not self.stopping.is_set():
                self.failed(err)
                time.sleep(POLL_PAUSE)

    def watch(self):
        while not self.stopping.wait(self.WATCH_PERIOD):
            with self.lock:
                cid, proc = self.cid, self.proc
            if not cid or proc is None or proc.poll() is not None:
                continue
            if run(["podman", "container", "exists", cid], check=False, timeout=30).returncode:
                proc.terminate()

    def stop(self):
        self.stopping.set()
        with self.lock:
            proc = self.proc
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.thread.join(timeout=15)
        self.watchdog.join(timeout=15)

    def oks(self):
        with self.lock:
            return [t for t, kind in self.results if kind == "ok"]

    def wait_for_oks(self, n, timeout):
        deadline = time.monotonic() + timeout
        while len(self.oks()) < n:
            if time.monotonic() >= deadline:
                raise BenchError("the evi-be prober got no PONG before rotate-secret")
            time.sleep(POLL_PAUSE)

    def wait_for_ok_after(self, t_ns, timeout):
        deadline = time.monotonic() + timeout
        while not any(t > t_ns for t in self.oks()):
            if time.monotonic() >= deadline:
                raise BenchError(
                    f"evi-be got no PONG within {timeout}s after rotate-secret returned; "
                    f"the prober's last results: {self.describe_tail()}"
                )
            time.sleep(POLL_PAUSE)

    def describe_tail(self, n=8):
        with self.lock:
            last = self.lines[-n:]
            stderr = self.last_stderr.strip()
        return (
            f"{'; '.join(last) or 'none'}; {self.exec_errors} exec error(s), "
            f"thread {'alive' if self.thread.is_alive() else 'ended'}"
            + (f"; last exec error: {stderr}" if stderr else "")
        )

    def longest_gap(self, start_ns, end_ns):
        """The longest time between two consecutive PONGs, over the PONGs from the last
        one before the rotation to the first one after it; the failures in that span, by
        kind; and the kinds of failure inside the longest gap."""
        oks = self.oks()
        lo = [t for t in oks if t <= start_ns][-1]
        hi = [t for t in oks if t >= end_ns][0]
        window = [t for t in oks if lo <= t <= hi]
        a, b = max(zip(window, window[1:]), key=lambda pair: pair[1] - pair[0])
        with self.lock:
            failures = collections.Counter(k for t, k in self.results if k != "ok" and lo <= t <= hi)
            in_gap = sorted({k for t, k in self.results if k != "ok" and a < t < b})
        return (b - a) / 1e9, failures, in_gap


def failure_kind(parts):
    """Sorts a prober line ("ns status host [message]") into ok or a kind of failure."""
    status = parts[1]
    message = parts[3] if len(parts) > 3 else ""
    if status == "ok":
        return "ok"
    if status == "fail/99":
        return "no address for evi-state (DNS lookup failed or took over 1 s)"
    if status == "fail/124":
        return "no answer within 2 s"
    if "Connection refused" in message:
        return "connection refused"
    if "timed out" in message:
        return "connect timed out (0.25 s)"
    if "WRONGPASS" in message or "NOAUTH" in message:
        return "password refused"
    return f"{status} {message[:40]}".strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--podman-compose", required=True)
    ap.add_argument("--compose-file", type=Path, required=True)
    ap.add_argument("--podman-url", default=os.environ.get("EVI_TEST_PODMAN_URL"))
    ap.add_argument("--image", default=os.environ.get("EVI_TEST_VALKEY_IMAGE"))
    args = ap.parse_args()
    if not args.podman_url or not args.image:
        sys.exit("bench.py: EVI_TEST_PODMAN_URL and EVI_TEST_VALKEY_IMAGE must be set (use bench/run.sh)")
    if args.runs < 1:
        sys.exit("bench.py: --runs must be at least 1")

    # SIGTERM/SIGHUP become an exception, so that the clean-up below still runs.
    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    bench = Bench(args)
    code = 0
    try:
        bench.main()
    except BenchError as e:
        print(f"[bench] ERROR: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        try:
            bench.cleanup()
        except Exception as e:  # noqa: BLE001 - report, and fail the run
            print(f"[bench] ERROR: clean-up failed: {e}", file=sys.stderr)
            code = code or 1
    sys.exit(code)


if __name__ == "__main__":
    main()
