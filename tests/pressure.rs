//! The guide's eviction promise under memory pressure, on the deployed stack:
//! with `maxmemory-policy volatile-lru`, cache (`cache:db:*`) and operational
//! (`op:*`) keys with TTLs are evicted while the task queue (`stream:*`, no
//! TTL) keeps every entry; once memory is full of keys without a TTL, every
//! write fails with Valkey's OOM error, XADD included, and `status` says so.

use std::time::Duration;

use crate::support::*;

/// evi-be is the real producer (ioredis), adding a task every 50 ms.
fn pressure_site() -> Site {
    let site = Site::new("");
    let valkey = &site.podman.valkey_image;
    let clients = std::env::var("EVI_TEST_CLIENT_IMAGE")
        .expect("EVI_TEST_CLIENT_IMAGE is not set: run the tests with `scripts/test.sh`");
    let yaml = format!(
        "state_dir: {}\n{}services:\n  evi-state: {{ image: {valkey} }}\n  \
         evi-be: {{ image: {clients}, command: [node, /opt/evi-clients/producer.js] }}\n\
         valkey:\n  maxmemory: 32mb\n",
        site.state_dir().display(),
        lane_subnet_yaml()
    );
    std::fs::write(site.settings(), yaml).unwrap();
    site
}

fn info_field(section: &str, key: &str) -> u64 {
    let info = state_cli(&format!("info {section}"));
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in INFO {section}"))
        .trim()
        .parse()
        .unwrap()
}

/// Runs a Lua loop inside evi-state (authenticated from the mounted secret),
/// with `batch` as ARGV[1], and returns what valkey-cli printed, errors
/// included. (Scripts get the same `math.random` sequence every time: keys
/// are made unique by the batch number instead.)
fn eval(script: &str, batch: u32) -> Output {
    let cmd = format!(
        "REDISCLI_AUTH=\"$(cat /run/secrets/evi-admin-password)\" valkey-cli --no-auth-warning --user evi-admin eval \"{script}\" 0 {batch}"
    );
    podman(&["exec", "evi-state", "sh", "-c", &cmd])
}

/// Every acknowledged XADD of the producer is in the stream: `seq` 1..n, no hole.
fn stream_entries_all_kept() -> usize {
    let out = state_cli("xrange stream:tasks:email - +");
    let lines: Vec<&str> = out.lines().collect();
    let mut seqs: Vec<u64> = lines
        .windows(2)
        .filter(|w| w[0] == "seq")
        .map(|w| w[1].parse().unwrap())
        .collect();
    // At least once: an XADD whose reply timed out is sent again.
    seqs.sort_unstable();
    seqs.dedup();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "the producer's tasks, in order, none missing"
    );
    seqs.len()
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn under_memory_pressure_ttl_keys_go_stream_entries_stay_and_writes_fail_with_oom() {
    let _lock = fresh_host();
    let site = pressure_site();
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    std::thread::sleep(Duration::from_secs(1));

    // Phase 1: cache and op keys with TTLs, far more than 32 MB of them.
    let mut batches = 0;
    while info_field("stats", "evicted_keys") == 0 {
        let out = eval(
            "for i=1,4000 do local k=ARGV[1]..':'..i; \
             redis.call('SET','cache:db:user:'..k, string.rep('x',1000), 'EX', 600); \
             redis.call('SET','op:ratelimit:'..k, string.rep('y',200), 'EX', 60) end return 1",
            batches,
        );
        assert_eq!(out.code, 0, "{}", out.all());
        assert!(
            !out.all().contains("OOM"),
            "TTL keys are evicted, not refused: {}",
            out.all()
        );
        batches += 1;
        assert!(batches < 40, "no eviction after {batches} batches");
    }
    std::thread::sleep(Duration::from_secs(1));
    let evicted = info_field("stats", "evicted_keys");
    let kept = stream_entries_all_kept();
    assert!(kept > 0);
    let producer_errors = podman_ok(&["logs", "evi-be"]);
    assert!(
        !producer_errors.contains("\"class\":\"auth\""),
        "{producer_errors}"
    );
    let status = site.evi().args(["status", "--output", "json"]).run();
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert!(doc["valkey"]["evicted_keys"].as_u64().unwrap() >= evicted);

    // Phase 2: keys without a TTL, in small scripts (Valkey checks memory, and
    // evicts, before each command; never inside a script), until writes fail.
    let mut accepted = 0;
    let refused = loop {
        let out = eval(
            "for i=1,500 do redis.call('SET','plain:'..ARGV[1]..':'..i, string.rep('z',1000)) end return 1",
            accepted / 500,
        );
        if out.all().contains("OOM") {
            break out;
        }
        assert_eq!(out.code, 0, "{}", out.all());
        accepted += 500;
        assert!(accepted < 200_000, "writes never failed");
    };
    assert!(
        refused.all().contains("OOM command not allowed"),
        "{}",
        refused.all()
    );
    let used_at_failure = info_field("memory", "used_memory");
    let xadd = podman(&[
        "exec",
        "evi-state",
        "sh",
        "-c",
        "REDISCLI_AUTH=\"$(cat /run/secrets/evi-admin-password)\" valkey-cli --no-auth-warning --user evi-admin xadd stream:tasks:email '*' type welcome",
    ]);
    assert!(
        xadd.all()
            .contains("OOM command not allowed when used memory > 'maxmemory'"),
        "XADD fails with Valkey's OOM error: {}",
        xadd.all()
    );
    // The queue kept every entry it ever acknowledged.
    let kept_after = stream_entries_all_kept();
    assert!(kept_after >= kept);

    // status warned about memory and says writes are refused.
    let status = site.evi().args(["status"]).run();
    assert_eq!(status.code, 1, "{}", status.all());
    assert!(
        status.stdout.contains("OOM command not allowed") && status.stdout.contains("refused"),
        "{}",
        status.stdout
    );
    println!(
        "memory pressure (maxmemory 32mb): {evicted} TTL keys evicted while {kept} stream entries were all kept; \
         {accepted} keys without a TTL accepted before writes failed at used_memory {used_at_failure} bytes; \
         XADD then failed with OOM; {kept_after} stream entries kept in the end"
    );
}
