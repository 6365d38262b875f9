//! The guide's promise seen by real clients: the example producer (Node,
//! ioredis) as evi-be and the example consumer (Python, redis-py) as
//! evi-worker, with `VALKEY_URL` in the guide's exact form, through `up` and
//! `rotate-secret`. Their own JSON stats lines (examples/clients/stats.js) say
//! what they saw; the stream on the server says what was kept and processed.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// evi-be produces a task every 50 ms; evi-worker consumes them.
fn client_site() -> Site {
    let site = Site::new("");
    let valkey = &site.podman.valkey_image;
    let clients = test_client_image();
    let yaml = format!(
        "state_dir: {}\n{}services:\n  evi-state: {{ image: {valkey} }}\n  \
         evi-be: {{ image: {clients}, command: [node, /opt/evi-clients/producer.js] }}\n  \
         evi-worker: {{ image: {clients}, command: [python3, /opt/evi-clients/worker.py] }}\n",
        site.state_dir().display(),
        lane_subnet_yaml()
    );
    std::fs::write(site.settings(), yaml).unwrap();
    site
}

pub(crate) fn test_client_image() -> String {
    std::env::var("EVI_TEST_CLIENT_IMAGE").unwrap_or_else(|_| {
        panic!("EVI_TEST_CLIENT_IMAGE is not set: run the tests with `scripts/test.sh`, which builds the client image")
    })
}

/// The stats lines a container printed so far.
pub(crate) fn stats_lines(name: &str) -> Vec<serde_json::Value> {
    parse_stats(&podman_ok(&["logs", name]))
}

pub(crate) fn parse_stats(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "stats")
        .collect()
}

pub(crate) fn num(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {v}"))
}

/// Follows a container's log until it is removed (its final stats line included).
pub(crate) fn follow(name: &str) -> Child {
    Command::new(podman_program())
        .args(["logs", "-f", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub(crate) fn collected(child: Child) -> Vec<serde_json::Value> {
    parse_stats(&followed_text(child))
}

/// What a followed container printed until it was removed (20 s at most).
pub(crate) fn followed_text(mut child: Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let _ = child.wait();
    text
}

/// Waits until `name` reports a success no older than `CLIENT_PATIENCE`.
pub(crate) fn assert_working_within_patience(name: &str) {
    let deadline = Instant::now() + CLIENT_PATIENCE + Duration::from_millis(1500);
    loop {
        let last = stats_lines(name).last().cloned();
        if let Some(s) = &last {
            if num(s, &["ok"]) > 0 && num(s, &["gap_now_ms"]) <= CLIENT_PATIENCE.as_millis() as u64
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} has not reached evi-state within {CLIENT_PATIENCE:?}: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn group_state() -> (u64, Option<u64>) {
    let out = state_cli("xinfo groups stream:tasks:email");
    let lines: Vec<&str> = out.lines().collect();
    let field = |k: &str| {
        lines
            .iter()
            .position(|l| *l == k)
            .and_then(|i| lines.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    (field("pending").expect("pending"), field("lag"))
}

/// Waits up to `limit` until the group `workers` has nothing pending and no
/// lag, and fails if it never gets there: every task delivered and acked.
pub fn assert_drained(limit: Duration) {
    let deadline = Instant::now() + limit;
    let state = loop {
        let state = group_state();
        if state == (0, Some(0)) || Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        state,
        (0, Some(0)),
        "every task delivered and acknowledged (pending, lag)"
    );
}

/// For each producer id, the `seq` numbers its acknowledged XADDs carried.
pub(crate) fn seqs_by_producer() -> BTreeMap<String, Vec<u64>> {
    let out = state_cli("xrange stream:tasks:email - +");
    let lines: Vec<&str> = out.lines().collect();
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut producer = String::new();
    for pair in lines.windows(2) {
        match pair[0] {
            "producer" => producer = pair[1].to_string(),
            "seq" => by
                .entry(producer.clone())
                .or_default()
                .push(pair[1].parse().unwrap()),
            _ => {}
        }
    }
    by
}

/// Asserts that each producer's `seq` numbers run 1..n with no hole, and
/// leaves them sorted and unique; returns how many were sent twice. An XADD
/// whose reply was lost to evi-state's restart is sent again: at least once,
/// so a `seq` may appear twice, but none may be missing.
pub(crate) fn assert_no_task_missing(seqs: &mut BTreeMap<String, Vec<u64>>) -> usize {
    let mut duplicates = 0;
    for (producer, seq) in seqs.iter_mut() {
        let before = seq.len();
        seq.sort_unstable();
        seq.dedup();
        duplicates += before - seq.len();
        let expected: Vec<u64> = (1..=seq.len() as u64).collect();
        assert_eq!(seq, &expected, "tasks of {producer}: none missing");
    }
    duplicates
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn real_clients_work_at_once_and_through_a_rotation_lose_no_task() {
    let _lock = fresh_host();
    let site = client_site();
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    // Right after `up`: both clients reach evi-state within a client's patience.
    assert_working_within_patience("evi-be");
    assert_working_within_patience("evi-worker");

    let old_be = follow("evi-be");
    let old_worker = follow("evi-worker");
    std::thread::sleep(Duration::from_secs(2));
    let rotate = site.evi().args(["rotate-secret"]).run();
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    assert!(!rotate.all().contains(&site.password()));
    assert_working_within_patience("evi-be");
    assert_working_within_patience("evi-worker");
    std::thread::sleep(Duration::from_secs(2));

    // Stop the producer, let the worker drain the queue.
    podman_ok(&["stop", "-t", "10", "evi-be"]);
    assert_drained(Duration::from_secs(20));

    // Every acknowledged XADD is in the stream: seq 1..n with no hole, for the
    // producer before and the producer after the rotation.
    let mut seqs = seqs_by_producer();
    assert_eq!(seqs.len(), 2, "one producer before, one after: {seqs:?}");
    let duplicates = assert_no_task_missing(&mut seqs);

    // What the clients saw: no refused password, ever.
    let mut seen = collected(old_be);
    seen.extend(collected(old_worker));
    let now_be = podman_ok(&["logs", "evi-be"]);
    seen.extend(parse_stats(&now_be));
    seen.extend(stats_lines("evi-worker"));
    for s in &seen {
        assert_eq!(num(s, &["errors", "auth"]), 0, "{s}");
    }
    // The producer stopped last said how many tasks it added: all are in the stream.
    let id = now_be
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "start")
        .and_then(|v| v["id"].as_str().map(str::to_string))
        .expect("the producer's start line");
    let last = parse_stats(&now_be)
        .into_iter()
        .rfind(|s| s["final"] == true)
        .expect("the stopped producer's final stats line");
    let produced = num(&last, &["produced"]);
    assert_eq!(
        seqs.get(&id).map_or(0, Vec::len) as u64,
        produced,
        "every task the producer added is in the stream"
    );
    let max_gap = seen.iter().map(|s| num(s, &["max_gap_ms"])).max().unwrap();
    let kept: usize = seqs.values().map(Vec::len).sum();
    println!(
        "real clients through rotate-secret: {kept} tasks kept, none missing ({duplicates} sent twice \
         after a lost reply), 0 pending, 0 auth errors, longest gap a client saw {max_gap} ms"
    );
    let logs = podman_ok(&["logs", "evi-worker"]);
    assert!(!logs.contains(&site.password()));
}
