//! End-to-end tests of `backup`, `backup --verify` and `restore` on real
//! Podman and Valkey 8: the data set of the service guide survives
//! backup -> `down --purge` -> `up` -> `restore` exactly; damaged archives and
//! a missing evi-state change nothing; a SIGKILL of `restore` after any step
//! leaves the old or the restored data, never a mix and never nothing.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::support::*;

/// Every key in evi-state, sorted, with its type, whether it has a TTL and
/// its whole value; for streams every entry, every group with its last
/// delivered ID, and every pending entry with its consumer and delivery count.
const DUMP_LUA: &str = r#"
local keys, cursor = {}, '0'
repeat
  local r = redis.call('SCAN', cursor, 'COUNT', 1000); cursor = r[1]
  for _, k in ipairs(r[2]) do keys[#keys + 1] = k end
until cursor == '0'
table.sort(keys)
local out = {}
for _, k in ipairs(keys) do
  local t = redis.call('TYPE', k)['ok']
  out[#out + 1] = k .. ' ' .. t .. ' ttl=' .. (redis.call('PTTL', k) >= 0 and 'yes' or 'no')
  if t == 'string' then out[#out + 1] = '  ' .. redis.call('GET', k)
  elseif t == 'hash' then
    local h = redis.call('HGETALL', k); local pairs_ = {}
    for i = 1, #h, 2 do pairs_[#pairs_ + 1] = h[i] .. '=' .. h[i + 1] end
    table.sort(pairs_); out[#out + 1] = '  ' .. table.concat(pairs_, ',')
  elseif t == 'stream' then
    local info = redis.call('XINFO', 'STREAM', k)
    for i = 1, #info, 2 do if info[i] == 'last-generated-id' then out[#out + 1] = '  last ' .. info[i + 1] end end
    for _, e in ipairs(redis.call('XRANGE', k, '-', '+')) do out[#out + 1] = '  entry ' .. e[1] .. ' ' .. table.concat(e[2], ',') end
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', k)) do
      local f = {}; for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
      out[#out + 1] = '  group ' .. f['name'] .. ' last-delivered ' .. f['last-delivered-id'] .. ' pending ' .. f['pending']
      for _, p in ipairs(redis.call('XPENDING', k, f['name'], '-', '+', 1000)) do
        out[#out + 1] = '    pending ' .. p[1] .. ' ' .. p[2] .. ' deliveries ' .. p[4]
      end
    end
  end
end
return table.concat(out, '\n')
"#;

fn dump() -> String {
    let script = r#"S=$(cat); REDISCLI_AUTH="$(cat /run/secrets/evi-admin-password)" valkey-cli --no-auth-warning --user evi-admin -e EVAL "$S" 0"#;
    let mut child = podman_command()
        .args(["exec", "-i", "evi-state", "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(DUMP_LUA.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The guide's data set: two task queues with consumer groups and pending
/// entries (delivered, not acknowledged), hashes with TTLs under `cache:db:`,
/// `op:` counters with and without a TTL.
fn seed() {
    for cmd in [
        "xgroup create stream:tasks:email workers 0 mkstream",
        "xadd stream:tasks:email '*' type welcome user 1",
        "xadd stream:tasks:email '*' type reset user 2",
        "xadd stream:tasks:email '*' type welcome user 3",
        "xreadgroup group workers c1 count 2 streams stream:tasks:email '>'",
        "xgroup create stream:tasks:notify workers 0 mkstream",
        "xgroup create stream:tasks:notify audit 0",
        "xadd stream:tasks:notify '*' channel sms",
        "xadd stream:tasks:notify '*' channel mail",
        "xreadgroup group workers c2 count 1 streams stream:tasks:notify '>'",
        "hset cache:db:settings theme dark lang en",
        "expire cache:db:settings 3600",
        "hset cache:db:user:1 name ada",
        "expire cache:db:user:1 3600",
        "incr op:ratelimit:api:user:123",
        "incr op:ratelimit:api:user:123",
        "expire op:ratelimit:api:user:123 600",
        "incrby op:jobs:done 41",
    ] {
        state_cli(cmd);
    }
    // One of the two delivered email tasks is acknowledged, one stays pending.
    let first = state_cli("xrange stream:tasks:email - + count 1");
    let id = first.lines().next().unwrap().to_string();
    state_cli(&format!("xack stream:tasks:email workers {id}"));
}

fn archive_bytes(path: &Path) -> (Vec<u8>, Vec<u8>) {
    let raw = std::fs::read(path).unwrap();
    let plain = zstd::decode_all(raw.as_slice()).unwrap();
    (raw, plain)
}

fn manifest_of(path: &Path) -> serde_json::Value {
    let (_, plain) = archive_bytes(path);
    let mut archive = tar::Archive::new(plain.as_slice());
    let mut first = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(first.path().unwrap().display().to_string(), "manifest.json");
    let mut text = String::new();
    first.read_to_string(&mut text).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `backup --out path`, which must succeed.
fn backup_to(site: &Site, path: &Path) {
    let out = site.evi().args(["backup", "--out"]).args([path]).run();
    assert_eq!(out.code, 0, "backup: {}", out.all());
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn the_guides_data_survives_backup_purge_up_and_restore() {
    let _lock = fresh_host();
    let site = Site::new("");
    assert_eq!(site.up(&[]).code, 0);
    seed();
    let before = dump();
    assert!(before.contains("pending "), "{before}");
    let password = site.password();
    let file = site.dir.path().join("evi.tar.zst");

    let out = site.evi().args(["backup", "--out"]).args([&file]).run();
    println!("{}", out.all());
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (raw, plain) = archive_bytes(&file);
    assert!(
        !contains(&raw, password.as_bytes()) && !contains(&plain, password.as_bytes()),
        "no password in the archive"
    );
    assert!(!out.all().contains(&password));
    let data = podman_ok(&["exec", "evi-state", "ls", "-A", "/data"]);
    assert!(
        !data.contains(".evi-backup-"),
        "the snapshot's second name is removed after the backup: {data}"
    );
    let m = manifest_of(&file);
    assert_eq!(m["format_version"], 1);
    assert!(
        m["valkey_version"].as_str().unwrap().starts_with('8'),
        "{m}"
    );
    let files: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with(".base.rdb"))
            && files.iter().any(|f| f.ends_with(".manifest")),
        "{files:?}"
    );
    assert!(m["files"][0]["sha256"].as_str().unwrap().len() == 64);
    let email = &m["summary"]["streams"]["stream:tasks:email"];
    assert_eq!(
        (
            email["length"].as_u64(),
            email["groups"]["workers"]["pending"].as_u64()
        ),
        (Some(3), Some(1)),
        "{m}"
    );
    assert_eq!(
        m["summary"]["namespaces"]["cache:db:"]["with_ttl"], 2,
        "{m}"
    );

    let verify = site.evi().args(["backup", "--verify"]).args([&file]).run();
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains("Verified:"), "{}", verify.stdout);
    // Its unpacked copy (in memory, or under the state directory) is gone.
    for place in [std::path::PathBuf::from("/dev/shm"), site.state_dir()] {
        let left: Vec<String> = std::fs::read_dir(&place)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".evi-verify-"))
            .collect();
        assert!(left.is_empty(), "left in {}: {left:?}", place.display());
    }

    assert_eq!(site.evi().args(["down", "--purge", "--yes"]).run().code, 0);
    assert_eq!(site.up(&[]).code, 0);
    assert_eq!(dump(), "", "a purged host starts empty");
    let new_password = site.password();

    let restore = site
        .evi()
        .args(["restore"])
        .args([&file])
        .args(["--yes"])
        .run();
    println!("{}", restore.all());
    assert_eq!(restore.code, 0, "{}", restore.all());
    assert!(!restore.all().contains(&password) && !restore.all().contains(&new_password));
    let after = dump();
    assert_eq!(
        after, before,
        "every key, type, value, entry, group, pending entry and last-delivered ID is back"
    );
    assert!(
        after.contains("cache:db:settings hash ttl=yes"),
        "TTL keys have a TTL again"
    );
    assert!(state_cli("ttl cache:db:settings").parse::<i64>().unwrap() > 3000);
    // A worker reclaims the pending entry, as the guide's workers do on start.
    let pending: Vec<String> = before
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pending "))
        .filter(|l| l.contains(" c1 "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(pending.len(), 1);
    let claimed = state_cli("xautoclaim stream:tasks:email workers worker-new 0 0-0");
    assert!(
        claimed.contains(&pending[0]),
        "XAUTOCLAIM reclaims {pending:?}: {claimed}"
    );
    assert_eq!(
        site.up(&["--dry-run", "--detailed-exitcode"]).code,
        0,
        "the restored host is converged"
    );

    // Default names under STATE_DIR/backups, private, pruned by --keep.
    for _ in 0..2 {
        let out = site.evi().args(["backup", "--keep", "1"]).run();
        assert_eq!(out.code, 0, "{}", out.all());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let dir = site.state_dir().join("backups");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let name = names[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with("evi-state-") && name.ends_with("Z.tar.zst"),
        "{name}"
    );
    assert_eq!(
        std::fs::metadata(&names[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// A copy of `good` whose manifest `edit` changed (the data files, and so
/// their checksums, stay as they are).
fn edit_manifest(good: &Path, dest: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let (_, plain) = archive_bytes(good);
    let mut src = tar::Archive::new(plain.as_slice());
    let mut out = tar::Builder::new(Vec::new());
    for (i, entry) in src.entries().unwrap().enumerate() {
        let mut entry = entry.unwrap();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if i == 0 {
            let mut m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            edit(&mut m);
            bytes = serde_json::to_vec(&m).unwrap();
        }
        let mut header = entry.header().clone();
        header.set_size(bytes.len() as u64);
        header.set_cksum();
        out.append(&header, bytes.as_slice()).unwrap();
    }
    let tar = out.into_inner().unwrap();
    std::fs::write(dest, zstd::encode_all(tar.as_slice(), 1).unwrap()).unwrap();
}

fn with_format(good: &Path, version: u64, dest: &Path) {
    edit_manifest(good, dest, |m| m["format_version"] = version.into());
}

/// What is in evi-state's data volume (names only), as root sees it.
fn volume_listing() -> String {
    let mount = podman_ok(&[
        "volume",
        "inspect",
        "evi-state-data",
        "--format",
        "{{.Mountpoint}}",
    ]);
    let out = std::process::Command::new("ls")
        .args(["-A", mount.trim()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn a_restore_whose_data_differs_from_its_manifest_rolls_back() {
    let _lock = fresh_host();
    let site = Site::new("");
    assert_eq!(site.up(&[]).code, 0);
    seed();
    let good = site.dir.path().join("good.tar.zst");
    backup_to(&site, &good);
    state_cli("set op:after-backup 1");
    let old = dump();
    // The data files are intact (their checksums match), but the manifest
    // says the email queue holds 99 entries: what loads is not what it promises.
    let lying = site.dir.path().join("lying.tar.zst");
    edit_manifest(&good, &lying, |m| {
        m["summary"]["streams"]["stream:tasks:email"]["length"] = 99.into();
    });
    let verify = site.evi().args(["backup", "--verify"]).args([&lying]).run();
    assert_eq!(verify.code, 1, "{}", verify.all());
    assert!(
        verify.stdout.contains("NOT verified")
            && verify
                .stdout
                .contains("stream stream:tasks:email: 3 entries"),
        "{}",
        verify.stdout
    );

    let out = site.evi().args(["restore", "--yes"]).args([&lying]).run();
    println!("{}", out.all());
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("restore failed: the restored data differs from the manifest: stream stream:tasks:email: 3 entries"), "{}", out.stderr);
    assert!(
        out.stderr
            .ends_with("evi-state was not stopped and keeps its data\n"),
        "{}",
        out.stderr
    );
    assert_eq!(dump(), old, "the data from before the restore is back");
    assert!(
        !volume_listing().contains(".evi-restore"),
        "no roll-back copy left: {}",
        volume_listing()
    );
    assert_eq!(
        site.up(&["--dry-run", "--detailed-exitcode"]).code,
        0,
        "converged"
    );
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn damaged_archives_and_a_missing_evi_state_fail_clearly_and_change_nothing() {
    let _lock = fresh_host();
    let site = Site::new("");
    assert_eq!(site.up(&[]).code, 0);
    seed();
    let good = site.dir.path().join("good.tar.zst");
    backup_to(&site, &good);
    let bytes = std::fs::read(&good).unwrap();
    let bad = site.dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let truncated = bad.join("truncated.tar.zst");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let corrupted = bad.join("corrupted.tar.zst");
    let mut flipped = bytes.clone();
    let at = flipped.len() - 40;
    flipped[at] ^= 0x55;
    std::fs::write(&corrupted, &flipped).unwrap();
    let newer = bad.join("newer.tar.zst");
    with_format(&good, 99, &newer);
    let text = bad.join("notes.txt");
    std::fs::write(&text, "not an archive\n").unwrap();

    let cases: Vec<(&Path, &[&str])> = vec![
        (
            &truncated,
            &[
                "truncated or corrupted",
                "use another copy or take a new backup",
            ],
        ),
        (&corrupted, &["corrupted"]),
        (
            &newer,
            &[
                "format version 99, newer than this evi-install reads (1)",
                "newer evi-install",
            ],
        ),
        (
            &text,
            &[
                "is not an evi-install backup archive",
                "pass a file written by `evi-install backup`",
            ],
        ),
    ];
    let data_before = dump();
    for (file, expect) in &cases {
        for args in [vec!["restore", "--yes"], vec!["backup", "--verify"]] {
            let podman_before = snapshot_podman();
            let dir_before = snapshot_dir(site.dir.path());
            let out = site.evi().args(&args).args([file]).run();
            let what = format!("{args:?} {}", file.display());
            assert_eq!(out.code, 1, "{what}: {}", out.all());
            assert_eq!(
                out.stderr.lines().count(),
                1,
                "{what}: one line: {}",
                out.stderr
            );
            assert!(out.stderr.starts_with("error: "), "{what}: {}", out.stderr);
            for e in *expect {
                assert!(
                    out.stderr.contains(e),
                    "{what}: expected `{e}` in {}",
                    out.stderr
                );
            }
            assert_eq!(snapshot_podman(), podman_before, "{what}: Podman unchanged");
            assert_eq!(
                snapshot_dir(site.dir.path()),
                dir_before,
                "{what}: files unchanged"
            );
            assert_eq!(dump(), data_before, "{what}: data unchanged");
        }
    }

    // Not enough space where the archive goes: refused before anything is done.
    let small = site.dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8k", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a small tmpfs");
    let podman_before = snapshot_podman();
    let out = site
        .evi()
        .args(["backup", "--out"])
        .args([small.join("b.tar.zst")])
        .run();
    std::process::Command::new("umount")
        .arg(&small)
        .status()
        .unwrap();
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains("not enough disk space for the archive"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert_eq!(snapshot_podman(), podman_before, "nothing changed");

    // A restore while evi-state does not exist.
    assert_eq!(site.evi().args(["down"]).run().code, 0);
    let podman_before = snapshot_podman();
    let dir_before = snapshot_dir(site.dir.path());
    let out = site.evi().args(["restore", "--yes"]).args([&good]).run();
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(
        out.stderr.trim(),
        "error: evi-state does not exist; create it with `evi-install up`, then restore"
    );
    assert_eq!(snapshot_podman(), podman_before);
    assert_eq!(snapshot_dir(site.dir.path()), dir_before);
    // Without a terminal, --yes is required.
    assert_eq!(site.up(&[]).code, 0);
    let out = site.evi().args(["restore"]).args([&good]).run();
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("pass --yes to confirm"),
        "{}",
        out.stderr
    );
    assert_eq!(dump(), data_before);
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn a_sigkill_of_restore_after_any_step_leaves_the_old_or_the_restored_data() {
    require_test_hooks();
    let _lock = host_lock();
    let steps = [
        "prepare",
        "stage",
        "check",
        "stop-state",
        "swap",
        "start-state",
        "verify-live",
        "finish",
    ];
    for (i, step) in steps.iter().enumerate() {
        reset_host();
        let site = Site::new("");
        let up = site.up(&[]);
        assert_eq!(up.code, 0, "{step}: {}", up.all());
        seed();
        let restored = dump();
        let file = site.dir.path().join("a.tar.zst");
        backup_to(&site, &file);
        // The data moves on after the backup.
        state_cli("xadd stream:tasks:email '*' type later");
        state_cli("set op:after-backup 1");
        let old = dump();
        assert_ne!(old, restored);

        let killed = site
            .evi()
            .env("EVI_INSTALL_TEST_KILL_AFTER", step)
            .args(["restore", "--yes"])
            .args([&file])
            .run();
        assert_eq!(
            killed.code,
            -1,
            "{step}: killed by a signal: {}",
            killed.all()
        );

        // Alternate the repair: restore again, or a plain up.
        let rerun = i % 2 == 0;
        let repair = if rerun {
            site.evi().args(["restore", "--yes"]).args([&file]).run()
        } else {
            site.up(&[])
        };
        assert_eq!(repair.code, 0, "{step}: {}", repair.all());
        let now = dump();
        if rerun {
            assert_eq!(now, restored, "{step}: a rerun restores");
        } else {
            assert!(
                now == old || now == restored,
                "{step}: old or restored data, not a mix:\n{now}"
            );
        }
        println!(
            "{step}: repaired by {}: {}",
            if rerun { "restore" } else { "up" },
            if now == restored {
                "restored data"
            } else {
                "old data"
            }
        );
        assert_eq!(
            site.up(&["--dry-run", "--detailed-exitcode"]).code,
            0,
            "{step}: converged"
        );
    }
}
