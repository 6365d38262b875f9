#!/usr/bin/env python3
"""A second evi-worker, in Python with redis-py: the same protocol as worker.js.

Consumer group `workers` on stream:tasks:email: XGROUP CREATE ... 0 MKSTREAM (BUSYGROUP is
fine, again on NOGROUP), XAUTOCLAIM (min idle 60000 ms) at start and every 30 s,
XREADGROUP COUNT 10 BLOCK 1000 '>' in a loop, process, XACK; after an error first re-read
this consumer's own pending entries (ID 0). Connects with
redis.from_url(os.environ["VALKEY_URL"]).

Prints the same JSON lines as the Node programs (see stats.js), with "client":"worker-py".
The password and VALKEY_URL never appear in the output.

For tests, as worker.js: EVI_RECLAIM_IDLE_MS and EVI_RECLAIM_EVERY_MS (defaults: the guide's
60000 and 30000), EVI_WORK_MS (processing time per task, default 0) and EVI_ACK_LOG=1 (XACK
entry by entry, one {"event":"ack","id":...,"acked":0|1,"reclaimed":...} line for each).
"""

import json
import os
import re
import signal
import socket
import sys
import threading
import time
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

STREAM = "stream:tasks:email"
GROUP = "workers"
def env_ms(name, default):
    try:
        value = int(os.environ[name])
    except (KeyError, ValueError):
        return default
    return value if value >= 0 else default


MIN_IDLE_MS = env_ms("EVI_RECLAIM_IDLE_MS", 60000)  # the guide's reclaim window
RECLAIM_EVERY_S = env_ms("EVI_RECLAIM_EVERY_MS", 30000) / 1000.0
COUNT = 10
BLOCK_MS = env_ms("EVI_BLOCK_MS", 1000)
WORK_S = env_ms("EVI_WORK_MS", 0) / 1000.0
ACK_LOG = os.environ.get("EVI_ACK_LOG") == "1"
CLIENT = "worker-py"

AUTH_RE = re.compile(r"\b(NOAUTH|WRONGPASS)\b|invalid username-password|Authentication required")
CONN_RE = re.compile(
    r"ECONNREFUSED|ECONNRESET|Connection refused|Connection reset|Connection closed|"
    r"Broken pipe|closed by server|timed out|Timeout|Name or service not known|"
    r"Temporary failure in name resolution|No address associated|EAI_AGAIN|ENOTFOUND|"
    r"No route to host|Network is unreachable|LOADING",
    re.IGNORECASE,
)


def classify(err):
    """auth: NOAUTH/WRONGPASS; conn: no usable connection (refused, reset, closed,
    timeouts, name resolution, server still loading after a restart); other: the rest."""
    text = f"{type(err).__name__} {err}"
    if isinstance(err, redis.exceptions.AuthenticationError) or AUTH_RE.search(text):
        return "auth"
    if isinstance(err, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                        ConnectionError, TimeoutError, socket.gaierror, socket.timeout)):
        return "conn"
    if CONN_RE.search(text):
        return "conn"
    return "other"


def make_scrubber(url):
    secrets = {url}
    try:
        pw = urlsplit(url).password
    except ValueError:
        pw = None
    if pw:
        secrets.update({pw, unquote(pw)})
    ordered = sorted((s for s in secrets if s), key=len, reverse=True)
    any_url = re.compile(r"((?:rediss?|valkeys?)://)[^\s@/]*@", re.IGNORECASE)

    def scrub(text):
        s = str(text)
        for secret in ordered:
            s = s.replace(secret, "***")
        s = any_url.sub(r"\1***@", s)
        return s if len(s) <= 300 else s[:300] + "..."

    return scrub


def now_ms():
    return time.monotonic_ns() // 1_000_000


class Stats:
    def __init__(self, url):
        self.lock = threading.Lock()
        self.id = f"{socket.gethostname()}-{os.getpid()}"
        self.scrub = make_scrubber(url)
        self.started = now_ms()
        self.ok = 0
        self.acked = 0
        self.malformed = 0
        self.reclaimed = 0
        self.errors = {"auth": 0, "conn": 0, "other": 0}
        self.last_ok = None
        self.max_gap = 0
        self.last_error = ""
        self.window_start = 0
        self.window_lines = 0
        self.suppressed = 0

    def emit(self, obj):
        # One write per line, under the lock: the stats thread and the main loop share stdout.
        sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def success(self):
        with self.lock:
            t = now_ms()
            if self.last_ok is not None:
                self.max_gap = max(self.max_gap, t - self.last_ok)
            self.last_ok = t
            self.ok += 1

    def failure(self, op, err):
        cls = classify(err)
        text = self.scrub(f"{type(err).__name__}: {err}")
        with self.lock:
            self.errors[cls] += 1
            self.last_error = f"{op}: {text}"
            t = now_ms()
            if t - self.window_start >= 1000:
                self.window_start = t
                self.window_lines = 0
            if self.window_lines < 5:
                self.window_lines += 1
                self.emit({"event": "error", "client": CLIENT, "class": cls, "op": op,
                           "error": text, "suppressed": self.suppressed})
                self.suppressed = 0
            else:
                self.suppressed += 1
        return cls

    def print(self, final=False):
        with self.lock:
            t = now_ms()
            line = {
                "event": "stats", "client": CLIENT, "ok": self.ok, "acked": self.acked,
                "errors": dict(self.errors), "max_gap_ms": self.max_gap,
                "gap_now_ms": t - (self.started if self.last_ok is None else self.last_ok),
                "last_error": self.last_error, "uptime_ms": t - self.started,
                "malformed": self.malformed, "reclaimed": self.reclaimed,
            }
            if final:
                line["final"] = True
            self.emit(line)


def main():
    url = os.environ.get("VALKEY_URL")
    if not url:
        sys.stderr.write("VALKEY_URL is not set\n")
        return 2
    stats = Stats(url)
    consumer = f"worker-py-{socket.gethostname()}-{os.getpid()}"

    stop = threading.Event()

    def on_signal(_signum, _frame):
        # Only a flag: a blocked XREADGROUP is resumed after the handler (PEP 475) and ends
        # within BLOCK_MS; the loop then finishes its batch and stops.
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Short timeouts so that an outage shows as errors: connect in 1 s, any reply within 3 s
    # (above the 1 s BLOCK), and no retries inside redis-py (its 6.x default retries with
    # backoff would hide an outage): this loop retries after 100 ms itself.
    r = redis.from_url(
        url,
        socket_connect_timeout=1,
        socket_timeout=3,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        decode_responses=True,
    )

    stats.emit({"event": "start", "client": CLIENT, "id": stats.id, "stream": STREAM,
                "group": GROUP, "consumer": consumer, "reclaim_idle_ms": MIN_IDLE_MS,
                "reclaim_every_ms": int(RECLAIM_EVERY_S * 1000)})

    def ticker():
        while not stop.wait(1.0):
            stats.print()

    threading.Thread(target=ticker, daemon=True).start()

    # Backstop: if a command hangs through an outage, end anyway soon after SIGTERM.
    def backstop():
        stop.wait()
        time.sleep(1.5 + COUNT * WORK_S)  # time for a whole batch: it is finished first
        stats.print(final=True)
        os._exit(0)

    threading.Thread(target=backstop, daemon=True).start()

    state = {"need_group": True, "check_own": True}

    def run(op, fn):
        try:
            value = fn()
        except redis.exceptions.ResponseError as err:
            if "BUSYGROUP" in str(err):
                stats.success()
                return True, None
            stats.failure(op, err)
            if "NOGROUP" in str(err):
                state["need_group"] = True
            state["check_own"] = True
            return False, None
        except Exception as err:  # noqa: BLE001 - every failure is counted, none is fatal
            stats.failure(op, err)
            state["check_own"] = True
            return False, None
        stats.success()
        return True, value

    def process(fields):
        if not fields or not fields.get("producer") or not str(fields.get("seq", "")).isdigit():
            with stats.lock:
                stats.malformed += 1

    def handle(entries, from_reclaim=False):
        ids = []
        for entry_id, fields in entries:
            if entry_id is None:  # an entry trimmed away while pending: nothing to do
                continue
            process(fields)
            if WORK_S > 0:
                time.sleep(WORK_S)
            ids.append(entry_id)
        if not ids:
            return
        if not ACK_LOG:
            ok, n = run("XACK", lambda: r.xack(STREAM, GROUP, *ids))
            if ok:
                with stats.lock:
                    stats.acked += int(n or 0)
            return
        for entry_id in ids:
            ok, n = run("XACK", lambda: r.xack(STREAM, GROUP, entry_id))
            if not ok:
                return  # the rest stay pending: re-read after the error (check_own)
            with stats.lock:
                stats.acked += int(n or 0)
                stats.emit({"event": "ack", "client": CLIENT, "id": entry_id,
                            "acked": int(n or 0), "reclaimed": from_reclaim})

    def reclaim():
        cursor = "0-0"
        while True:
            ok, reply = run("XAUTOCLAIM", lambda: r.xautoclaim(
                STREAM, GROUP, consumer, MIN_IDLE_MS, start_id=cursor, count=100))
            if not ok or reply is None:
                return False
            cursor = reply[0]
            claimed = [e for e in (reply[1] or []) if e and e[0] is not None]
            with stats.lock:
                stats.reclaimed += len(claimed)
            handle(claimed, from_reclaim=True)
            if cursor in ("0-0", b"0-0") or stop.is_set():
                return True

    def entries_of(reply):
        # redis-py returns [[stream, [(id, fields), ...]]] (RESP2).
        if not reply:
            return []
        return reply[0][1] or []

    next_reclaim = 0.0
    while not stop.is_set():
        if state["need_group"]:
            ok, _ = run("XGROUP", lambda: r.xgroup_create(STREAM, GROUP, id="0", mkstream=True))
            if not ok:
                time.sleep(0.1)
                continue
            state["need_group"] = False
        if time.monotonic() >= next_reclaim:
            if reclaim():
                next_reclaim = time.monotonic() + RECLAIM_EVERY_S
            else:
                time.sleep(0.1)  # an outage: do not spin on errors
            continue
        if state["check_own"]:
            ok, reply = run("XREADGROUP", lambda: r.xreadgroup(
                GROUP, consumer, {STREAM: "0"}, count=100))
            if ok:
                entries = entries_of(reply)
                handle(entries)
                if not entries:
                    state["check_own"] = False
            else:
                time.sleep(0.1)
            continue
        ok, reply = run("XREADGROUP", lambda: r.xreadgroup(
            GROUP, consumer, {STREAM: ">"}, count=COUNT, block=BLOCK_MS))
        if ok:
            handle(entries_of(reply))
        else:
            time.sleep(0.1)  # an outage: do not spin on errors

    stats.print(final=True)
    try:
        r.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail; we exit anyway
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
