'use strict';
// evi-worker's part of the service guide: a consumer in group `workers` on
// stream:tasks:email.
//   - XGROUP CREATE ... 0 MKSTREAM once (BUSYGROUP means it exists: fine), again on NOGROUP
//     (a server that lost its data);
//   - XAUTOCLAIM (min idle 60000 ms) at start and every 30 s: take over tasks a dead
//     consumer left unacknowledged (EVI_RECLAIM_IDLE_MS and EVI_RECLAIM_EVERY_MS change the
//     two for tests; the defaults are the guide's);
//   - XREADGROUP COUNT 10 BLOCK 1000 ... '>' in a loop, process, XACK;
//   - after any error, first re-read this consumer's own pending entries (ID 0): a batch
//     whose reply or XACK was lost in an outage is finished at once, not after 60 s.
// Every command's error is caught and counted (Node 15+ ends the process on an unhandled
// rejection, which the guide's snippet allows). "acked" counts entries XACK removed,
// "reclaimed" the entries XAUTOCLAIM handed over.
// For tests: EVI_WORK_MS makes processing take that long per task (so that a worker can be
// killed mid-batch); EVI_ACK_LOG=1 acknowledges entry by entry and prints one line for each,
//   {"event":"ack", "client":..., "id":"<entry id>", "acked":0|1, "reclaimed":true|false}
// where "acked" is XACK's answer: 1 for exactly one XACK of an entry in the whole group.

const os = require('os');
const Redis = require('ioredis');
const {
  valkeyUrl, redisOptions, Stats, installShutdown, finish, installSafetyNets, sleep, nowMs,
} = require('./stats');

const STREAM = 'stream:tasks:email';
const GROUP = 'workers';
const envMs = (name, dflt) => {
  const v = Number(process.env[name]);
  return process.env[name] !== undefined && Number.isFinite(v) && v >= 0 ? v : dflt;
};
const MIN_IDLE_MS = envMs('EVI_RECLAIM_IDLE_MS', 60000); // the guide's reclaim window
const RECLAIM_EVERY_MS = envMs('EVI_RECLAIM_EVERY_MS', 30000);
const COUNT = 10;
const BLOCK_MS = envMs('EVI_BLOCK_MS', 1000);
const WORK_MS = envMs('EVI_WORK_MS', 0);
const ACK_LOG = process.env.EVI_ACK_LOG === '1';

// "Processing" a task: check it is one of ours. A malformed entry is still acknowledged
// (retrying it would not make it well-formed) but counted.
let malformed = 0;
function processTask(fields) {
  const task = {};
  for (let i = 0; fields && i + 1 < fields.length; i += 2) task[fields[i]] = fields[i + 1];
  if (!task.producer || !/^\d+$/.test(task.seq || '')) malformed += 1;
}

async function main() {
  const url = valkeyUrl();
  const stats = new Stats('worker-js', 'acked', url);
  installSafetyNets(stats);
  const consumer = `worker-js-${os.hostname()}-${process.pid}`;
  const redis = new Redis(url, redisOptions());
  redis.on('error', (err) => stats.connError(err)); // counted where the commands fail
  redis.on('ready', () => stats.connected());
  // The backstop leaves time for a whole batch: a worker stopped by request finishes it.
  const stopping = installShutdown(stats, () => {}, 1500 + COUNT * WORK_MS);
  stats.start({
    stream: STREAM, group: GROUP, consumer, reclaim_idle_ms: MIN_IDLE_MS,
    reclaim_every_ms: RECLAIM_EVERY_MS,
  });
  let reclaimed = 0;
  const baseSnapshot = stats.snapshot.bind(stats);
  stats.snapshot = () => ({ ...baseSnapshot(), malformed, reclaimed });

  let needGroup = true;
  let checkOwnPending = true;

  const run = async (op, fn) => {
    try {
      const value = await fn();
      stats.success();
      return [true, value];
    } catch (err) {
      if (/\bBUSYGROUP\b/.test(err && err.message)) {
        stats.success(); // the group exists: the answer we wanted
        return [true, null];
      }
      stats.failure(op, err);
      if (/\bNOGROUP\b/.test(err && err.message)) needGroup = true;
      checkOwnPending = true;
      return [false, null];
    }
  };

  // Process a batch and acknowledge it in one XACK; even while stopping, so that nothing
  // this consumer took is left pending for a minute.
  const handle = async (entries, fromReclaim = false) => {
    const ids = [];
    for (const [id, fields] of entries) {
      if (fields) processTask(fields);
      if (WORK_MS > 0) await sleep(WORK_MS);
      ids.push(id);
    }
    if (ids.length === 0) return;
    if (!ACK_LOG) {
      const [ok, n] = await run('XACK', () => redis.xack(STREAM, GROUP, ...ids));
      if (ok) stats.add(Number(n) || 0);
      return;
    }
    for (const id of ids) {
      const [ok, n] = await run('XACK', () => redis.xack(STREAM, GROUP, id));
      if (!ok) return; // the rest stay pending: re-read after the error (checkOwnPending)
      stats.add(Number(n) || 0);
      stats.emit({
        event: 'ack', client: stats.client, id, acked: Number(n) || 0, reclaimed: fromReclaim,
      });
    }
  };

  const reclaim = async () => {
    let cursor = '0-0';
    do {
      const [ok, reply] = await run('XAUTOCLAIM', () => redis.xautoclaim(
        STREAM, GROUP, consumer, MIN_IDLE_MS, cursor, 'COUNT', 100,
      ));
      if (!ok || !reply) return false;
      cursor = reply[0];
      // Entries deleted while pending come back as null: nothing to process or acknowledge.
      const claimed = (reply[1] || []).filter((e) => e && e[1]);
      reclaimed += claimed.length;
      await handle(claimed, true);
    } while (cursor !== '0-0' && !stopping());
    return true;
  };

  let nextReclaim = 0;
  while (!stopping()) {
    if (needGroup) {
      const [ok] = await run('XGROUP', () => redis.xgroup('CREATE', STREAM, GROUP, '0', 'MKSTREAM'));
      if (!ok) {
        await sleep(100);
        continue;
      }
      needGroup = false;
    }
    if (nowMs() >= nextReclaim) {
      if (await reclaim()) nextReclaim = nowMs() + RECLAIM_EVERY_MS;
      else await sleep(100); // an outage: do not spin on errors
      continue;
    }
    if (checkOwnPending) {
      // ID 0: this consumer's own pending entries, no blocking.
      const [ok, reply] = await run('XREADGROUP', () => redis.xreadgroup(
        'GROUP', GROUP, consumer, 'COUNT', 100, 'STREAMS', STREAM, '0',
      ));
      if (ok) {
        const entries = (reply && reply[0] && reply[0][1]) || [];
        await handle(entries);
        if (entries.length === 0) checkOwnPending = false;
      } else {
        await sleep(100);
      }
      continue;
    }
    const [ok, reply] = await run('XREADGROUP', () => redis.xreadgroup(
      'GROUP', GROUP, consumer, 'COUNT', COUNT, 'BLOCK', BLOCK_MS, 'STREAMS', STREAM, '>',
    ));
    if (ok) {
      await handle((reply && reply[0] && reply[0][1]) || []);
    } else {
      await sleep(100); // an outage: do not spin on errors
    }
  }
  finish(stats, redis);
}

main().catch((err) => {
  process.stderr.write(`worker: fatal: ${err && err.name}\n`);
  process.exit(1);
});
