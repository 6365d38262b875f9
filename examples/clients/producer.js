'use strict';
// evi-be's part of the service guide, as a load generator: every EVI_INTERVAL_MS (50 ms)
//   1. XADD stream:tasks:email (a task for evi-worker) with a per-process `producer` id
//      (hostname-pid) and `seq`, which counts this process's confirmed XADDs from 1 (a
//      failed XADD is retried with the same seq, so a worker can check for gaps);
//   2. the cache-aside read: GET cache:db:user:<n>, on a miss SET it with EX (TTL 300 s);
//   3. an operational key: INCR op:ratelimit:api:<producer>, EXPIRE 60.
//   4. with EVI_INVALIDATE_MS set (> 0), every that many ms the guide's write path for
//      several evi-be instances: DEL cache:db:settings, then PUBLISH cache:invalidated with
//      the message "settings <producer id>" (the key's name, and who sent it). Every instance
//      subscribes to cache:invalidated on a connection of its own and drops its in-memory
//      copy of the settings on each message.
// Connects with the guide's URL form: new Redis(process.env.VALKEY_URL).
// Prints JSON lines (see stats.js); "produced" counts confirmed XADDs, and
// "invalidations": {"sent", "received", "from_others"} the messages published (PUBLISH
// confirmed), received, and received from another instance.

const Redis = require('ioredis');
const {
  valkeyUrl, redisOptions, Stats, installShutdown, finish, installSafetyNets, sleep, nowMs,
} = require('./stats');

const STREAM = 'stream:tasks:email';
const CACHE_TTL_S = 300; // the guide's default for cache:db:*
const OP_TTL_S = 60; // the guide's rate-limit window
// The guide's optional XTRIM, folded into XADD: at 20 tasks a second an entry is dropped
// only after about 80 minutes, far longer than any outage a worker should have.
const STREAM_MAXLEN = 100000;
const INVALIDATION_CHANNEL = 'cache:invalidated';
const SETTINGS_KEY = 'cache:db:settings';

function intervalMs() {
  const v = Number(process.env.EVI_INTERVAL_MS || 50);
  return Number.isFinite(v) && v >= 0 ? v : 50;
}

async function main() {
  const url = valkeyUrl();
  const stats = new Stats('producer', 'produced', url);
  installSafetyNets(stats);
  const redis = new Redis(url, redisOptions());
  // Connection errors also reject the commands that were waiting; those are counted where
  // they are awaited. Without a listener ioredis would log every one to stderr.
  redis.on('error', (err) => stats.connError(err));
  redis.on('ready', () => stats.connected());
  const stopping = installShutdown(stats, () => {});
  const interval = intervalMs();
  const invalidateMs = Math.max(0, Number(process.env.EVI_INVALIDATE_MS || 0)) || 0;
  stats.start({ stream: STREAM, interval_ms: interval, invalidate_ms: invalidateMs });

  // The local in-memory copy that invalidations drop (the guide's "local in-memory copy").
  let localSettings = null;
  const invalidations = { sent: 0, received: 0, from_others: 0 };
  const baseSnapshot = stats.snapshot.bind(stats);
  stats.snapshot = () => ({ ...baseSnapshot(), invalidations: { ...invalidations } });
  // A subscribed connection can run no other command: a second one. ioredis subscribes
  // again by itself after a reconnect.
  const sub = new Redis(url, redisOptions());
  sub.on('error', (err) => stats.connError(err));
  sub.on('message', (channel, message) => {
    if (channel !== INVALIDATION_CHANNEL) return;
    invalidations.received += 1;
    const [what, from] = String(message).split(' ');
    if (from && from !== stats.id) invalidations.from_others += 1;
    if (what === 'settings') localSettings = null;
  });
  sub.subscribe(INVALIDATION_CHANNEL).catch((err) => stats.failure('SUBSCRIBE', err));
  let nextInvalidation = invalidateMs > 0 ? nowMs() + invalidateMs : Infinity;

  // One command: count it either way; resolves to [ok, value].
  const run = async (op, fn) => {
    try {
      const value = await fn();
      stats.success();
      return [true, value];
    } catch (err) {
      stats.failure(op, err);
      return [false, null];
    }
  };

  let seq = 1;
  while (!stopping()) {
    const begin = nowMs();
    const [added] = await run('XADD', () => redis.xadd(
      STREAM, 'MAXLEN', '~', STREAM_MAXLEN, '*',
      'type', 'welcome', 'producer', stats.id, 'seq', String(seq),
      'payload', JSON.stringify({ user: seq % 100, at: Date.now() }),
    ));
    if (added) {
      stats.add(1);
      seq += 1;
    }
    if (stopping()) break;

    // Cache-aside: a miss "loads from the database" (here: builds the row) and caches it.
    const key = `cache:db:user:${seq % 100}`;
    const [got, cached] = await run('GET', () => redis.get(key));
    if (stopping()) break;
    if (got && cached === null) {
      const row = JSON.stringify({ id: seq % 100, name: `user ${seq % 100}`, loaded_at: Date.now() });
      await run('SET', () => redis.set(key, row, 'EX', CACHE_TTL_S));
      if (stopping()) break;
    }

    const opKey = `op:ratelimit:api:${stats.id}`;
    const [incr] = await run('INCR', () => redis.incr(opKey));
    if (stopping()) break;
    if (incr) await run('EXPIRE', () => redis.expire(opKey, OP_TTL_S));

    // The settings, cache-aside, kept in memory until an invalidation drops them.
    if (localSettings === null) {
      const [ok, cachedSettings] = await run('GET', () => redis.get(SETTINGS_KEY));
      if (ok) {
        localSettings = cachedSettings || JSON.stringify({ loaded_at: Date.now() });
        if (!cachedSettings) await run('SET', () => redis.set(SETTINGS_KEY, localSettings, 'EX', CACHE_TTL_S));
      }
      if (stopping()) break;
    }
    if (nowMs() >= nextInvalidation) {
      nextInvalidation = nowMs() + invalidateMs;
      const [deleted] = await run('DEL', () => redis.del(SETTINGS_KEY));
      if (deleted) {
        const [published] = await run('PUBLISH', () => redis.publish(INVALIDATION_CHANNEL, `settings ${stats.id}`));
        if (published) invalidations.sent += 1;
      }
      if (stopping()) break;
    }

    // Sleep out the interval in short steps so that SIGTERM is noticed at once.
    for (let rest = interval - (nowMs() - begin); rest > 0 && !stopping();
      rest = interval - (nowMs() - begin)) {
      await sleep(Math.min(rest, 50));
    }
  }
  sub.disconnect();
  finish(stats, redis);
}

main().catch((err) => {
  // Only reachable through a bug in main itself; say so without any secret in it.
  process.stderr.write(`producer: fatal: ${err && err.name}\n`);
  process.exit(1);
});
