//! Several evi-be and evi-worker replicas (`services.<name>.replicas`), as the
//! service guide is written for: `up` scales with the minimum of changes,
//! workers in one consumer group share the stream and reclaim a killed
//! worker's entries with XAUTOCLAIM (every task acknowledged exactly once),
//! back-ends see each other's `cache:invalidated` messages, and a rotation
//! with three workers and two back-ends writing refuses no client.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::clients::{
    assert_drained, assert_no_task_missing, assert_working_within_patience, follow, followed_text,
    group_state, num, parse_stats, seqs_by_producer, stats_lines, test_client_image,
};
use crate::support::*;

/// A site whose `services` section is `services` (YAML lines under `services:`).
fn site_with(services: &str) -> Site {
    let site = Site::new("");
    let valkey = &site.podman.valkey_image;
    let yaml = format!(
        "state_dir: {}\n{}services:\n  evi-state: {{ image: {valkey} }}\n{services}",
        site.state_dir().display(),
        lane_subnet_yaml()
    );
    std::fs::write(site.settings(), yaml).unwrap();
    site
}

/// Clients that idle (and stop at once on SIGTERM), `be` and `worker` replicas.
fn idle_site(site: Option<Site>, be: u32, worker: u32) -> Site {
    let image = test_podman().valkey_image;
    let idle = r#"[sh, -c, "trap 'exit 0' TERM; sleep infinity & wait"]"#;
    let services = format!(
        "  evi-be: {{ image: {image}, command: {idle}, replicas: {be} }}\n  \
         evi-worker: {{ image: {image}, command: {idle}, replicas: {worker} }}\n"
    );
    match site {
        None => site_with(&services),
        Some(site) => {
            let valkey = &site.podman.valkey_image;
            let yaml = format!(
                "state_dir: {}\n{}services:\n  evi-state: {{ image: {valkey} }}\n{services}",
                site.state_dir().display(),
                lane_subnet_yaml()
            );
            std::fs::write(site.settings(), yaml).unwrap();
            site
        }
    }
}

/// The ids of the named containers (`-` for a missing one).
fn ids(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|n| {
            let out = podman(&["inspect", "--format", "{{.Id}}", n]);
            if out.code == 0 {
                out.stdout.trim().to_string()
            } else {
                "-".to_string()
            }
        })
        .collect()
}

fn our_clients() -> Vec<String> {
    let out = podman_ok(&[
        "ps",
        "-a",
        "--filter",
        "label=io.evi-install.managed=true",
        "--format",
        "{{.Names}}",
    ]);
    let mut names: Vec<String> = out
        .lines()
        .filter(|n| n.starts_with("evi-be") || n.starts_with("evi-worker"))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn up_scales_one_three_two_one_with_the_minimum_of_changes_and_then_does_nothing() {
    let _lock = fresh_host();
    let site = idle_site(None, 1, 1);
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    let stable = ["evi-state", "evi-be", "evi-worker"];
    let before = ids(&stable);

    // 1 -> 3: only evi-worker-2 and evi-worker-3 are created.
    let site = idle_site(Some(site), 1, 3);
    let dry = site.up(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.all());
    assert!(
        dry.stdout
            .contains("Plan: 2 to create, 0 to replace, 0 to update, 8 unchanged."),
        "{}",
        dry.stdout
    );
    for name in ["evi-worker-2", "evi-worker-3"] {
        assert!(
            dry.stdout
                .lines()
                .any(|l| l.contains(&format!("container {name} ")) && l.contains("create")),
            "the plan shows {name}: {}",
            dry.stdout
        );
    }
    let up = site.up(&["--detailed-exitcode"]);
    assert_eq!(up.code, 2, "{}", up.all());
    assert_eq!(ids(&stable), before, "nothing else was touched");
    assert_eq!(
        our_clients(),
        ["evi-be", "evi-worker", "evi-worker-2", "evi-worker-3"]
    );
    // Its own fixed address (evi-worker replica 3: client index 5, `.20`) and the hosts entry.
    let ip = podman_ok(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        "evi-worker-3",
    ]);
    assert_eq!(ip.trim(), format!("{}.20", lane_prefix()));
    let hosts = podman_ok(&["exec", "evi-worker-3", "cat", "/etc/hosts"]);
    assert!(
        hosts.contains(&state_address()) && hosts.contains("evi-state"),
        "{hosts}"
    );
    // The second `up` does nothing.
    let again = site.up(&["--detailed-exitcode"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(again.stdout.contains("No changes"), "{}", again.stdout);

    // `status` lists every replica, each with its own probe from inside it.
    let status = site.evi().args(["status"]).run();
    assert_eq!(status.code, 0, "{}", status.all());
    for name in ["evi-be", "evi-worker", "evi-worker-2", "evi-worker-3"] {
        assert!(
            status
                .stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{name} "))
                    && l.contains("reaches evi-state: PONG")),
            "{name} has its own client-reach line: {}",
            status.stdout
        );
        assert!(
            status
                .stdout
                .lines()
                .any(|l| l.contains(&format!("container {name} ")) && l.contains("matches")),
            "{name} is listed as a resource: {}",
            status.stdout
        );
    }

    // 3 -> 2: only the highest-numbered goes.
    let worker2 = ids(&["evi-worker-2"]);
    let site = idle_site(Some(site), 1, 2);
    let up = site.up(&["--detailed-exitcode"]);
    assert_eq!(up.code, 2, "{}", up.all());
    assert!(
        up.stdout.contains(
            "Plan: 0 to create, 0 to replace, 0 to update, 9 unchanged. (0 to start, 1 to remove.)"
        ),
        "{}",
        up.stdout
    );
    assert_eq!(our_clients(), ["evi-be", "evi-worker", "evi-worker-2"]);
    assert_eq!(ids(&stable), before);
    assert_eq!(ids(&["evi-worker-2"]), worker2);

    // 2 -> 1, evi-be 1 -> 2 at the same time: one removal, one creation.
    let site = idle_site(Some(site), 2, 1);
    let up = site.up(&["--detailed-exitcode"]);
    assert_eq!(up.code, 2, "{}", up.all());
    assert!(
        up.stdout.contains(
            "Plan: 1 to create, 0 to replace, 0 to update, 8 unchanged. (0 to start, 1 to remove.)"
        ),
        "{}",
        up.stdout
    );
    assert_eq!(our_clients(), ["evi-be", "evi-be-2", "evi-worker"]);
    assert_eq!(ids(&stable), before);
    let again = site.up(&["--detailed-exitcode"]);
    assert_eq!(again.code, 0, "{}", again.all());

    // Replicas that do not fit the subnet are refused before anything changes.
    let site = idle_site(Some(site), 1, 500);
    let refused = site.up(&[]);
    assert_eq!(refused.code, 1, "{}", refused.all());
    let line = refused.stderr.trim();
    assert!(
        line.starts_with("error: ")
            && line.contains("`services.evi-worker.replicas`")
            && line.contains("network_subnet")
            && !line.contains('\n'),
        "{line}"
    );
    assert_eq!(our_clients(), ["evi-be", "evi-be-2", "evi-worker"]);

    let site = idle_site(Some(site), 1, 1);
    let down = site.evi().args(["down"]).run();
    assert_eq!(down.code, 0, "{}", down.all());
    assert!(our_clients().is_empty(), "{:?}", our_clients());
}

/// Every JSON line a container printed (stats, start, ack, error).
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

/// `XPENDING stream:tasks:email workers`: pending entries by consumer.
fn pending_by_consumer() -> BTreeMap<String, u64> {
    let out = state_cli("xpending stream:tasks:email workers");
    let lines: Vec<&str> = out.lines().collect();
    // count, smallest id, greatest id, then consumer / count pairs.
    let mut by = BTreeMap::new();
    if lines.len() > 3 {
        for pair in lines[3..].chunks(2) {
            if let [name, count] = pair {
                by.insert(name.to_string(), count.parse().unwrap_or(0));
            }
        }
    }
    by
}

/// The ids of the entries pending for `consumer`.
fn pending_ids(consumer: &str) -> Vec<String> {
    let out = state_cli(&format!(
        "xpending stream:tasks:email workers - + 1000 {consumer}"
    ));
    // Four lines per entry: id, consumer, idle ms, deliveries.
    out.lines()
        .collect::<Vec<_>>()
        .chunks(4)
        .filter_map(|e| e.first().map(|id| id.to_string()))
        .filter(|id| id.contains('-'))
        .collect()
}

fn stream_ids() -> Vec<String> {
    let out = state_cli("xrange stream:tasks:email - +");
    // An entry starts with its id line (digits-digits), then field / value lines.
    out.lines()
        .filter(|l| {
            l.split_once('-').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.chars().all(|c| c.is_ascii_digit())
                    && b.chars().all(|c| c.is_ascii_digit())
            })
        })
        .map(str::to_string)
        .collect()
}

fn consumer_of(name: &str) -> String {
    let logs = podman_ok(&["logs", name]);
    json_lines(&logs)
        .into_iter()
        .find(|v| v["event"] == "start")
        .and_then(|v| v["consumer"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("{name} printed no start line: {logs}"))
}

/// Three workers (ioredis) in group `workers` share the stream; one is killed
/// with SIGKILL mid-batch; another reclaims its pending entries with
/// XAUTOCLAIM; a scale-down stops the highest-numbered gracefully, after its
/// batch; in the end every task is acknowledged exactly once.
#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn a_killed_workers_tasks_are_reclaimed_and_every_task_is_acked_exactly_once() {
    let _lock = fresh_host();
    let clients = test_client_image();
    // 20 tasks a second; each worker takes 200 ms a task (5 a second), so every
    // worker always holds a batch. Reclaim what has been idle for 5 s (longer than a
    // batch of 10 takes), every second: the guide's 60 s / 30 s, shortened for a test.
    let workers = |replicas: u32| {
        format!(
            "  evi-be: {{ image: {clients}, command: [node, /opt/evi-clients/producer.js] }}\n  \
             evi-worker:\n    image: {clients}\n    command: [node, /opt/evi-clients/worker.js]\n    \
             replicas: {replicas}\n    \
             env: {{ EVI_RECLAIM_IDLE_MS: 5000, EVI_RECLAIM_EVERY_MS: 1000, EVI_WORK_MS: 200, EVI_ACK_LOG: 1 }}\n"
        )
    };
    let site = site_with(&workers(3));
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    let names = ["evi-worker", "evi-worker-2", "evi-worker-3"];
    for name in ["evi-be"].iter().chain(&names) {
        assert_working_within_patience(name);
    }
    let consumers: Vec<String> = names.iter().map(|n| consumer_of(n)).collect();
    assert_eq!(
        consumers.iter().collect::<BTreeSet<_>>().len(),
        3,
        "one consumer per process: {consumers:?}"
    );
    std::thread::sleep(Duration::from_secs(3));

    // SIGKILL evi-worker-2 while it holds a batch.
    let victim = &consumers[1];
    let deadline = Instant::now() + Duration::from_secs(15);
    while pending_by_consumer().get(victim).copied().unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "evi-worker-2 never held a batch");
        std::thread::sleep(Duration::from_millis(50));
    }
    podman_ok(&["kill", "-s", "KILL", "evi-worker-2"]);
    let orphaned = pending_ids(victim);
    assert!(
        !orphaned.is_empty(),
        "the killed worker left entries pending"
    );

    // Another worker reclaims them (XAUTOCLAIM after 5 s idle) and acknowledges them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pending_ids(victim).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the killed worker's entries were not reclaimed within 20 s: {:?}",
            pending_ids(victim)
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Stop the producer; the two workers left drain the queue.
    podman_ok(&["stop", "-t", "10", "evi-be"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let (pending, lag) = loop {
        let state = group_state();
        if state == (0, Some(0)) || Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        (pending, lag),
        (0, Some(0)),
        "every task delivered and acked"
    );

    // Count: each stream entry has exactly one XACK that answered 1, in the ack
    // lines of all three workers (the killed evi-worker-2's log is still there).
    let mut lines = json_lines(&podman_ok(&["logs", "evi-worker-3"]));
    lines.extend(json_lines(&podman_ok(&["logs", "evi-worker"])));
    lines.extend(json_lines(&podman_ok(&["logs", "evi-worker-2"])));
    let acks: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["event"] == "ack" && v["acked"] == 1)
        .collect();
    let mut acked: BTreeMap<String, u32> = BTreeMap::new();
    for a in &acks {
        *acked
            .entry(a["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let twice: Vec<_> = acked.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "acknowledged more than once: {twice:?}");
    let ids = stream_ids();
    let in_stream: BTreeSet<&String> = ids.iter().collect();
    let acked_ids: BTreeSet<&String> = acked.keys().collect();
    assert_eq!(
        in_stream.len(),
        ids.len(),
        "the stream lists each entry once"
    );
    // The server is the record of what was acknowledged (pending 0 and lag 0
    // above). A worker killed with SIGKILL can have its XACK answered before it
    // prints the ack line, so entries of its last batch (COUNT 10) may have no
    // line; never one it left pending (those were reclaimed and acked by another
    // worker, which printed it).
    let unlogged: Vec<&&String> = in_stream.difference(&acked_ids).collect();
    assert!(
        unlogged.len() <= 10,
        "more entries without an ack line than the killed worker's one batch: {unlogged:?}"
    );
    for id in &unlogged {
        assert!(
            !orphaned.contains(**id),
            "{id} was left pending by the killed worker, yet no worker logged its XACK"
        );
    }
    assert_eq!(
        ids.len(),
        acks.len() + unlogged.len(),
        "stream length == acked total"
    );
    // The killed worker's entries went to another worker through XAUTOCLAIM.
    for id in &orphaned {
        let by = acks
            .iter()
            .find(|a| a["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} was never acked"));
        assert_eq!(by["reclaimed"], true, "{id} was reclaimed: {by}");
    }
    // Every task the producer added is in the stream, in order, none twice.
    let seqs = seqs_by_producer();
    for (producer, seq) in &seqs {
        let expected: Vec<u64> = (1..=seq.len() as u64).collect();
        assert_eq!(seq, &expected, "tasks of {producer}");
    }
    for s in lines.iter().filter(|v| v["event"] == "stats") {
        assert_eq!(num(s, &["errors", "auth"]), 0, "{s}");
    }
    let reclaimed: u64 = lines
        .iter()
        .filter(|v| v["event"] == "stats")
        .map(|s| s["reclaimed"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    println!(
        "replicas: 3 workers, evi-worker-2 killed with {} entries pending; all reclaimed through XAUTOCLAIM \
         (a worker's count: {reclaimed}); {} tasks in the stream, {} XACKs that answered 1, 0 twice, 0 pending",
        orphaned.len(),
        ids.len(),
        acks.len()
    );

    // Scale 3 -> 2 while evi-worker-3 holds a batch: `up` stops it (SIGTERM, the
    // clients' 10 s stop timeout) and it finishes the batch first; the killed
    // evi-worker-2 is started again. A backlog first, so that every worker holds one.
    podman_ok(&["start", "evi-be"]);
    std::thread::sleep(Duration::from_secs(4));
    let leaving = &consumers[2];
    let deadline = Instant::now() + Duration::from_secs(15);
    while pending_by_consumer().get(leaving).copied().unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "evi-worker-3 never held a batch");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(
        site.settings(),
        std::fs::read_to_string(site.settings())
            .unwrap()
            .replace("replicas: 3", "replicas: 2"),
    )
    .unwrap();
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    assert!(
        up.stdout.contains("(1 to start, 1 to remove.)"),
        "{}",
        up.stdout
    );
    assert_eq!(
        pending_by_consumer().get(leaving).copied().unwrap_or(0),
        0,
        "the worker removed by the scale-down finished its batch before it stopped"
    );
    assert_eq!(our_clients(), ["evi-be", "evi-worker", "evi-worker-2"]);
    podman_ok(&["stop", "-t", "10", "evi-be"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while group_state() != (0, Some(0)) {
        assert!(
            Instant::now() < deadline,
            "not drained: {:?}",
            group_state()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Two back-ends (ioredis) publish `cache:invalidated` and receive each
/// other's; then a rotation while both write and three workers (redis-py)
/// consume: no client ever sees an authentication failure, no task is lost.
#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn back_ends_see_each_others_invalidations_and_a_rotation_with_five_clients_refuses_none() {
    let _lock = fresh_host();
    let clients = test_client_image();
    let site = site_with(&format!(
        "  evi-be:\n    image: {clients}\n    command: [node, /opt/evi-clients/producer.js]\n    \
         replicas: 2\n    env: {{ EVI_INVALIDATE_MS: 300 }}\n  \
         evi-worker: {{ image: {clients}, command: [python3, /opt/evi-clients/worker.py], replicas: 3 }}\n"
    ));
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    let names = [
        "evi-be",
        "evi-be-2",
        "evi-worker",
        "evi-worker-2",
        "evi-worker-3",
    ];
    for name in names {
        assert_working_within_patience(name);
    }

    let from_others = |name: &str| {
        stats_lines(name)
            .last()
            .map_or(0, |s| num(s, &["invalidations", "from_others"]))
    };
    let await_invalidations = |when: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        for name in ["evi-be", "evi-be-2"] {
            while from_others(name) == 0 {
                assert!(
                    Instant::now() < deadline,
                    "{when}: {name} received no invalidation from the other back-end: {:?}",
                    stats_lines(name).last()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    await_invalidations("after up");
    let before: Vec<u64> = ["evi-be", "evi-be-2"]
        .iter()
        .map(|n| from_others(n))
        .collect();

    let old: Vec<Child> = names.iter().map(|n| follow(n)).collect();
    std::thread::sleep(Duration::from_secs(2));
    let rotate = site.evi().args(["rotate-secret"]).run();
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    assert!(!rotate.all().contains(&site.password()));
    assert!(
        rotate.stdout.contains(
            "re-create evi-be and evi-be-2 and evi-worker and evi-worker-2 and evi-worker-3"
        ),
        "every replica moves: {}",
        rotate.stdout
    );
    for name in names {
        assert_working_within_patience(name);
    }
    // The successors publish and receive too.
    await_invalidations("after rotate-secret");
    std::thread::sleep(Duration::from_secs(2));

    podman_ok(&["stop", "-t", "10", "evi-be", "evi-be-2"]);
    assert_drained(Duration::from_secs(30));

    let mut seqs = seqs_by_producer();
    assert_eq!(
        seqs.len(),
        4,
        "two producers before the rotation, two after: {seqs:?}"
    );
    let duplicates = assert_no_task_missing(&mut seqs);

    let mut seen = Vec::new();
    for child in old {
        seen.extend(parse_stats(&followed_text(child)));
    }
    for name in names {
        seen.extend(stats_lines(name));
    }
    let auth: u64 = seen.iter().map(|s| num(s, &["errors", "auth"])).sum();
    assert_eq!(auth, 0, "no client saw an authentication failure");
    let max_gap = seen.iter().map(|s| num(s, &["max_gap_ms"])).max().unwrap();
    let kept: usize = seqs.values().map(Vec::len).sum();
    println!(
        "replicas: 2 back-ends and 3 workers through rotate-secret: 0 auth errors in {} stats lines, \
         {kept} tasks kept, none missing ({duplicates} sent twice after a lost reply), 0 pending, \
         longest gap a client saw {max_gap} ms; \
         invalidations from the other back-end before the rotation: {before:?}",
        seen.len()
    );
}
