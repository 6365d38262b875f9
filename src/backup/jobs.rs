//! The containers that `backup`, `backup --verify` and `restore` run, and
//! what they print. Every one is evi-install's (labelled), on no network,
//! and removed when its work is done.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use super::manifest::{Namespace, Summary, ALL_KEYS};
use crate::apply::Poll;
use crate::desired::owned_labels;
use crate::engine::Engine;
use crate::engine::RunState;
use crate::model::*;

/// The restore helper (one action per run) and the check server.
pub const HELPER_CONTAINER: &str = "evi-restore";
pub const CHECK_CONTAINER: &str = "evi-restore-check";
pub use crate::timeouts::JOB_LIMIT;

/// A short-lived container on no network, running `script` with `args`.
pub fn throwaway(
    name: &str,
    image: &str,
    script: &str,
    args: &[&str],
    mounts: Vec<Mount>,
) -> ContainerSpec {
    let mut labels = owned_labels();
    labels.insert("io.evi-install.role".into(), "backup".into());
    let mut command = vec![
        "sh".to_string(),
        "-c".to_string(),
        script.to_string(),
        "sh".to_string(),
    ];
    command.extend(args.iter().map(|a| a.to_string()));
    ContainerSpec {
        name: name.to_string(),
        image: image.to_string(),
        command,
        entrypoint: Some(vec![]),
        env: Default::default(),
        user: None,
        mounts,
        secrets: vec![],
        // Empty: no network at all.
        network: String::new(),
        aliases: vec![],
        addresses: vec![],
        hosts: vec![],
        network_of: None,
        restart: "no".into(),
        stop_timeout: crate::timeouts::HELPER_STOP_SECS,
        config_hash: None,
        secret_version: None,
        labels,
    }
}

pub fn data_volume() -> Mount {
    Mount::Volume {
        name: DATA_VOLUME.to_string(),
        target: "/data".to_string(),
    }
}

/// Removes any earlier container of that name, then creates it (not started).
pub async fn create<E: Engine>(engine: &E, spec: &ContainerSpec) -> Result<()> {
    engine.remove_container(&spec.name, 1).await?;
    engine.create_container(spec).await
}

/// Starts a created container and waits until it exits: its exit code and
/// its whole output.
pub async fn run_to_end<E: Engine>(
    engine: &E,
    name: &str,
    limit: Duration,
) -> Result<(i64, String)> {
    engine.start_container(name).await?;
    // Podman's own wait (checked every 20 ms) ends the moment the job does;
    // polling the state from here would add up to its longest pause.
    if tokio::time::timeout(limit, engine.wait_exited(name))
        .await
        .is_err()
    {
        bail!("{name} did not finish within {}s", limit.as_secs());
    }
    let mut poll = Poll::new(limit);
    let mut failures = 0;
    loop {
        // Podman 4.3 can fail to inspect a container in the instant it exits
        // (`read /proc/PID/cgroup: no such process`): ask again.
        let state = match engine.container_state(name).await {
            Ok(state) => state,
            Err(e) if failures < 5 && format!("{e:#}").contains("no such process") => {
                failures += 1;
                poll.pause().await;
                continue;
            }
            Err(e) => return Err(e),
        };
        match state {
            Some(RunState::Exited { code }) => {
                let logs = engine.logs(name, 1_000_000).await?;
                return Ok((code, logs));
            }
            None => bail!("{name} disappeared while it ran"),
            _ if poll.expired() => bail!("{name} did not finish within {}s", limit.as_secs()),
            _ => poll.pause().await,
        }
    }
}

/// Creates, runs and removes a helper container: its output on success.
pub async fn run_helper<E: Engine>(engine: &E, spec: &ContainerSpec) -> Result<String> {
    let (code, out) = run_and_remove(engine, spec).await?;
    if code != 0 {
        bail!(
            "{} failed (exit code {code}): {}",
            spec.name,
            last_lines(&out)
        );
    }
    Ok(out)
}

/// Creates, runs and removes a throwaway server: what it printed, parsed
/// (`what` names it in errors).
pub async fn run_helper_job<E: Engine>(
    engine: &E,
    spec: &ContainerSpec,
    what: &str,
) -> Result<JobOutput> {
    let (code, out) = run_and_remove(engine, spec).await?;
    parse_job(what, code, &out)
}

/// Creates, runs and removes a container, whether it ran or not: its exit
/// code and its whole output.
async fn run_and_remove<E: Engine>(engine: &E, spec: &ContainerSpec) -> Result<(i64, String)> {
    create(engine, spec).await?;
    let result = run_to_end(engine, &spec.name, JOB_LIMIT).await;
    engine.remove_container(&spec.name, 1).await?;
    result
}

/// What a throwaway server printed.
#[derive(Debug, Default)]
pub struct JobOutput {
    pub valkey_version: String,
    pub summary: Summary,
    /// `(sha256, size, name)` of each file it made.
    pub files: Vec<(String, u64, String)>,
    pub aof_enabled: Option<bool>,
    /// Key counts from `INFO keyspace` (`isolated totals`).
    pub keyspace: Option<Keyspace>,
}

impl JobOutput {
    /// The streams it summarised, with the key counts of `INFO keyspace` as
    /// the one namespace [`ALL_KEYS`]: to compare with a manifest's
    /// [`Summary::totals`].
    pub fn totals(&self) -> Summary {
        let k = self.keyspace.unwrap_or_default();
        let mut s = self.summary.clone();
        s.namespaces = std::collections::BTreeMap::from([(
            ALL_KEYS.to_string(),
            Namespace {
                keys: k.keys,
                with_ttl: k.with_ttl,
            },
        )]);
        s
    }
}

/// A server's key count and how many of its keys have a TTL.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Keyspace {
    pub keys: u64,
    pub with_ttl: u64,
}

/// Reads `keys=N,expires=M,avg_ttl=…`, db0's line of `INFO keyspace`
/// (<https://valkey.io/commands/info/>). A server with no key has no line.
pub fn parse_keyspace(fields: &str) -> Keyspace {
    let mut k = Keyspace::default();
    for field in fields.trim().split(',') {
        match field.split_once('=') {
            Some(("keys", n)) => k.keys = n.parse().unwrap_or(0),
            Some(("expires", n)) => k.with_ttl = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    k
}

pub fn parse_job(name: &str, code: i64, out: &str) -> Result<JobOutput> {
    let errors: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("evi-error: "))
        .collect();
    if code != 0 || !out.lines().any(|l| l.trim() == "evi-done") {
        let why = if errors.is_empty() {
            last_lines(out)
        } else {
            errors.join("; ")
        };
        bail!("{name} failed (exit code {code}): {why}");
    }
    let mut job = JobOutput::default();
    let mut summary = String::new();
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("evi-version ") {
            job.valkey_version = v.trim().to_string();
        } else if let Some(s) = line.strip_prefix("evi-summary ") {
            summary.push_str(s);
            summary.push('\n');
        } else if let Some(f) = line.strip_prefix("evi-file ") {
            let mut parts = f.splitn(3, ' ');
            let (Some(sha), Some(size), Some(file)) = (parts.next(), parts.next(), parts.next())
            else {
                bail!("{name}: unexpected line `{line}`");
            };
            let size = size
                .parse()
                .map_err(|_| anyhow!("{name}: unexpected line `{line}`"))?;
            job.files.push((sha.to_string(), size, file.to_string()));
        } else if let Some(v) = line.strip_prefix("evi-keyspace ") {
            job.keyspace = Some(parse_keyspace(v));
        } else if let Some(v) = line.strip_prefix("evi-aof_enabled:") {
            job.aof_enabled = Some(v.trim() == "1");
        }
    }
    job.summary = Summary::parse(&summary)?;
    Ok(job)
}

/// The last few lines of a container's output, redacted, on one line.
pub fn last_lines(out: &str) -> String {
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(4)..];
    crate::secret::redact(&tail.join(" | "))
}

/// The value of a directive in the rendered valkey.conf, quotes removed.
pub fn conf_value(conf: &str, key: &str) -> Option<String> {
    conf.lines().rev().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next()? == key).then(|| parts.next().unwrap_or("").trim_matches('"').to_string())
    })
}

/// The free bytes of the file system holding `path`, when this host can see it.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// A field of /proc/meminfo (`MemAvailable`), in bytes.
pub fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Where `backup --verify` unpacks an archive of `size` bytes of data: in
/// memory (`/dev/shm`, a tmpfs) when the host has room there and memory for
/// it beside the throwaway server's own copy of the data, so that no
/// write-back to disk competes with the server's load (at 1 GB on two cores
/// the load took 3.9-5.1 s instead of 3.2 s with the unpacked files still being
/// written back); else `fallback` (the state directory).
pub fn unpack_place(size: u64, fallback: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let room = free_bytes(shm).unwrap_or(0);
    let memory = meminfo("MemAvailable").unwrap_or(0);
    if room > size + size / 8 && memory / 3 > size {
        shm.to_path_buf()
    } else {
        fallback.to_path_buf()
    }
}

/// A private directory (0700) `.evi-verify-PID` in `place`, removed when
/// dropped. Those of verifications that were killed (their process is gone,
/// the directory is ours) are removed first: in /dev/shm they would hold
/// memory until the next reboot.
pub fn verify_dir(place: &Path) -> Result<tempfile::TempDir> {
    const PREFIX: &str = ".evi-verify-";
    let me = rustix::process::geteuid();
    for entry in std::fs::read_dir(place).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        // Not through a link: in /dev/shm anyone can make one.
        let ours = rustix::fs::lstat(entry.path()).is_ok_and(|st| {
            st.st_uid == me.as_raw()
                && rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::Directory
        });
        let gone = rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH);
        if ours && gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}", std::process::id()))
        .rand_bytes(0)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(place)
        .map_err(|e| {
            anyhow!(
                "cannot create a directory in {}: {}",
                place.display(),
                crate::settings::io_reason(&e)
            )
        })
}

/// Refuses to start when `path`'s file system has less than `needed` bytes free.
pub fn require_space(path: &Path, needed: u64, what: &str) -> Result<()> {
    if let Some(free) = free_bytes(path) {
        if free < needed {
            bail!(
                "not enough disk space for {what}: {} needs about {}, {} is free; free some space (or choose another place) and run again",
                path.display(),
                human_bytes(needed),
                human_bytes(free)
            );
        }
    }
    Ok(())
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// SIGKILLs this process after the named step when the test hook asks for it.
#[cfg(feature = "test-hooks")]
pub fn fault_point(step: &str) {
    if std::env::var("EVI_INSTALL_TEST_KILL_AFTER").is_ok_and(|k| k == step) {
        use rustix::process::{getpid, kill_process, Signal};
        let _ = kill_process(getpid(), Signal::KILL);
    }
}

#[cfg(not(feature = "test-hooks"))]
pub fn fault_point(_step: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_verifications_directory_is_removed_and_a_running_ones_kept() {
        let place = tempfile::tempdir().unwrap();
        let dead = place.path().join(format!(".evi-verify-{}", i32::MAX));
        let alive = place.path().join(".evi-verify-1");
        let other = place.path().join(".evi-verify-notes");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir(d).unwrap();
        }
        let dir = verify_dir(place.path()).unwrap();
        assert_eq!(
            dir.path().file_name().unwrap().to_str().unwrap(),
            format!(".evi-verify-{}", std::process::id())
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(!dead.exists() && alive.exists() && other.exists());
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn job_output_is_parsed_and_failures_named() {
        let out = "evi-version 8.1.1\nevi-summary n op: 2 0 -1\nevi-summary digest ab\n\
                   evi-file 0123 88 appendonly.aof.manifest\nevi-aof_enabled:1\nevi-done\n";
        let job = parse_job("j", 0, out).unwrap();
        assert_eq!(job.valkey_version, "8.1.1");
        assert_eq!(job.summary.keys(), 2);
        assert_eq!(
            job.files,
            [(
                "0123".to_string(),
                88,
                "appendonly.aof.manifest".to_string()
            )]
        );
        assert_eq!(job.aof_enabled, Some(true));
        let err = parse_job("j", 1, "evi-error: the snapshot did not load\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "j failed (exit code 1): the snapshot did not load"
        );
    }

    #[test]
    fn a_totals_summary_holds_the_keyspace_counts_and_the_streams() {
        let out = "evi-version 8.1.1\nevi-keyspace keys=3,expires=1,avg_ttl=0\n\
                   evi-summary s 73747265616d3a74 5 1-5 5\nevi-done\n";
        let t = parse_job("j", 0, out).unwrap().totals();
        assert_eq!(
            t.namespaces[ALL_KEYS],
            Namespace {
                keys: 3,
                with_ttl: 1
            }
        );
        assert_eq!(t.streams["stream:t"].length, 5);
        // An empty server prints no keyspace line.
        let empty = parse_job("j", 0, "evi-done\n").unwrap().totals();
        assert_eq!(empty.keys(), 0);
    }

    #[test]
    fn conf_values_and_sizes() {
        let conf = "dir /data\nappenddirname \"appendonlydir\"\n# appendfilename x\n";
        assert_eq!(
            conf_value(conf, "appenddirname").as_deref(),
            Some("appendonlydir")
        );
        assert_eq!(conf_value(conf, "appendfilename"), None);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }

    #[test]
    fn a_throwaway_has_no_network_and_is_ours() {
        let spec = throwaway("evi-backup-1", "img", "echo", &["a"], vec![]);
        assert!(spec.network.is_empty() && spec.network_of.is_none());
        assert_eq!(spec.command, ["sh", "-c", "echo", "sh", "a"]);
        assert!(is_owned(&spec.labels));
        // One left by a killed run is removed by `down`.
        for name in [
            HELPER_CONTAINER,
            CHECK_CONTAINER,
            "evi-backup-42",
            "evi-verify-42",
        ] {
            assert!(is_leftover(name), "{name}");
        }
        assert!(!is_leftover("evi-state"));
    }
}
