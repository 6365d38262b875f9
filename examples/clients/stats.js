'use strict';
// Shared by producer.js and worker.js: the ioredis options, error classes, the scrubbing
// of secrets out of error text, the once-a-second JSON stats line and SIGTERM handling.
//
// Output contract (one JSON object per line on stdout, nothing else is printed there):
//   {"event":"start", "client":..., "id":...}
//   {"event":"stats", "client":..., "ok":N, "produced"|"acked":N,
//    "errors":{"auth":N,"conn":N,"other":N}, "max_gap_ms":N, "gap_now_ms":N,
//    "last_error":"...", "uptime_ms":N}                         once a second
//   {"event":"error", "client":..., "class":"auth|conn|other", "op":"XADD",
//    "error":"...", "suppressed":N}                            at most 5 a second
//   the stats line once more with "final":true on SIGTERM/SIGINT, then exit 0.
// The password and VALKEY_URL never appear in any of it.

const os = require('os');

const URL_ENV = 'VALKEY_URL';

function valkeyUrl() {
  const url = process.env[URL_ENV];
  if (!url) {
    // Not a secret: says only that the variable is missing.
    process.stderr.write(`${URL_ENV} is not set\n`);
    process.exit(2);
  }
  return url;
}

// Every form in which the secret could show up in an error message: the whole URL, the
// password as written in it (percent-encoded) and decoded.
function secretsOf(url) {
  const out = new Set([url]);
  try {
    const u = new URL(url);
    if (u.password) {
      out.add(u.password);
      try {
        out.add(decodeURIComponent(u.password));
      } catch (_) {
        // A malformed escape: the raw form above is what a message could contain.
      }
    }
  } catch (_) {
    // Not parseable as a URL: only the whole string is known to be secret.
  }
  return [...out].filter((s) => s.length > 0).sort((a, b) => b.length - a.length);
}

function makeScrubber(url) {
  const secrets = secretsOf(url);
  return (text) => {
    let s = String(text);
    for (const secret of secrets) s = s.split(secret).join('***');
    // Belt and braces: any redis URL with credentials, whatever they are.
    s = s.replace(/(rediss?|valkeys?):\/\/[^\s@/]*@/gi, '$1://***@');
    return s.length > 400 ? `${s.slice(0, 400)}...` : s;
  };
}

// auth: the server refused our credentials. conn: no usable connection (refused, reset,
// closed, timed out, name resolution, server still loading its data after a restart).
// other: everything else (a wrong command, NOGROUP, OOM, ...).
const AUTH_RE = /\b(NOAUTH|WRONGPASS)\b/;
const CONN_RE = new RegExp(
  [
    'ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH',
    'ENETUNREACH', 'EHOSTDOWN', 'ENOTFOUND', 'EAI_AGAIN', 'Connection is closed',
    "Stream isn't writeable", 'max retries per request', 'Command timed out',
    'timed out', 'socket closed', 'LOADING',
  ].map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'),
  'i',
);

function classify(err) {
  const msg = `${(err && err.code) || ''} ${(err && err.message) || err}`;
  if (AUTH_RE.test(msg)) return 'auth';
  if (CONN_RE.test(msg)) return 'conn';
  if (err && err.name === 'MaxRetriesPerRequestError') return 'conn';
  return 'other';
}

// Short timeouts so that an outage shows up as errors within about a second instead of
// commands hanging: connect in 1 s, reconnect every 100 ms for ever, fail a command after
// one failed reconnect, and time out any command after 3 s (above the workers' 1 s BLOCK).
function redisOptions() {
  return {
    connectTimeout: 1000,
    commandTimeout: 3000,
    maxRetriesPerRequest: 1,
    retryStrategy: () => 100,
    // Re-send a blocked XREADGROUP after a reconnect rather than failing it twice.
    autoResendUnfulfilledCommands: true,
  };
}

function nowMs() {
  return Number(process.hrtime.bigint() / 1000000n);
}

class Stats {
  // countKey: "produced" (producer) or "acked" (workers).
  constructor(client, countKey, url) {
    this.client = client;
    this.countKey = countKey;
    this.id = `${os.hostname()}-${process.pid}`;
    this.scrub = makeScrubber(url);
    this.started = nowMs();
    this.ok = 0;
    this.count = 0;
    this.errors = { auth: 0, conn: 0, other: 0 };
    this.lastOk = null;
    this.maxGap = 0;
    this.lastError = '';
    // Error lines: at most ERROR_LINES_PER_S in each second, the rest only counted.
    this.windowStart = 0;
    this.windowLines = 0;
    this.suppressed = 0;
    this.timer = null;
    // ioredis fails a command that outlived its reconnect attempts with "Reached the max
    // retries per request limit", which hides why; the last connection error says it.
    this.lastConnError = '';
  }

  // For the client's 'error' event (connection errors, failed AUTH on connect).
  connError(err) {
    this.lastConnError = this.scrub(`${(err && err.message) || err}`);
  }

  // For the client's 'ready' event.
  connected() {
    this.lastConnError = '';
  }

  emit(obj) {
    process.stdout.write(`${JSON.stringify(obj)}\n`);
  }

  start(extra) {
    this.emit({ event: 'start', client: this.client, id: this.id, ...extra });
    this.timer = setInterval(() => this.print(false), 1000);
  }

  success() {
    const t = nowMs();
    if (this.lastOk !== null) this.maxGap = Math.max(this.maxGap, t - this.lastOk);
    this.lastOk = t;
    this.ok += 1;
  }

  add(n) {
    this.count += n;
  }

  failure(op, err) {
    let text = this.scrub(`${(err && err.message) || err}`);
    let cls = classify(err);
    if (err && err.name === 'MaxRetriesPerRequestError' && this.lastConnError) {
      text = `${text} (last connection error: ${this.lastConnError})`;
      // The cause decides the class: a refused AUTH is auth, not conn.
      if (classify(this.lastConnError) === 'auth') cls = 'auth';
    }
    this.errors[cls] += 1;
    this.lastError = `${op}: ${text}`;
    const t = nowMs();
    if (t - this.windowStart >= 1000) {
      this.windowStart = t;
      this.windowLines = 0;
    }
    if (this.windowLines < 5) {
      this.windowLines += 1;
      this.emit({
        event: 'error', client: this.client, class: cls, op, error: text,
        suppressed: this.suppressed,
      });
      this.suppressed = 0;
    } else {
      this.suppressed += 1;
    }
    return cls;
  }

  snapshot() {
    const t = nowMs();
    return {
      event: 'stats',
      client: this.client,
      ok: this.ok,
      [this.countKey]: this.count,
      errors: { ...this.errors },
      max_gap_ms: this.maxGap,
      gap_now_ms: this.lastOk === null ? t - this.started : t - this.lastOk,
      last_error: this.lastError,
      uptime_ms: t - this.started,
    };
  }

  print(final) {
    const s = this.snapshot();
    if (final) s.final = true;
    this.emit(s);
  }
}

// SIGTERM/SIGINT: the main loop sees stopping() and ends after its current command, then
// calls finish(). If a command hangs (an outage), a backstop ends the process anyway so
// that a replaced container stops well inside its stop timeout. graceMs: how long the
// current batch may take (a worker with EVI_WORK_MS finishes its batch before it stops).
function installShutdown(stats, onStop, graceMs = 1500) {
  let stopping = false;
  const handler = () => {
    if (stopping) return;
    stopping = true;
    onStop();
    setTimeout(() => finish(stats, null), graceMs).unref();
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
  return () => stopping;
}

let finished = false;
function finish(stats, redis) {
  if (finished) return;
  finished = true;
  if (stats.timer) clearInterval(stats.timer);
  stats.print(true);
  if (redis) redis.disconnect();
  process.exit(0);
}

// The last line of defence: a bug that leaves a promise rejected must not end the process
// (Node 15+ exits on an unhandled rejection); count it and go on.
function installSafetyNets(stats) {
  process.on('unhandledRejection', (err) => stats.failure('unhandled', err));
  process.on('uncaughtException', (err) => stats.failure('uncaught', err));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

module.exports = {
  valkeyUrl, makeScrubber, classify, redisOptions, Stats, installShutdown, finish,
  installSafetyNets, sleep, nowMs,
};
