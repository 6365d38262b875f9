//! Helpers shared by the integration tests: a builder around the built binary,
//! and access to the real Podman service that `scripts/test.sh` starts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `evi-install` with a clean environment in a working directory of its own.
pub struct Evi {
    cmd: Command,
}

impl Evi {
    pub fn new(cwd: &Path) -> Evi {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_evi-install"));
        cmd.current_dir(cwd)
            .env_remove("EVI_CONFIG")
            .env_remove("EVI_STATE_DIR")
            .env_remove("CONTAINER_HOST")
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100");
        Evi { cmd }
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, args: I) -> Evi {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Evi {
        self.cmd.env(key, value);
        self
    }

    pub fn run(mut self) -> Output {
        let out = self.cmd.output().expect("run evi-install");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The Podman service and image that `scripts/test.sh` provides. A missing
/// one is a loud failure, never a skip.
pub struct TestPodman {
    pub url: String,
    pub valkey_image: String,
}

pub fn test_podman() -> TestPodman {
    let get = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the end-to-end tests need the real Podman service and the local Valkey image. \
                 Run them with `scripts/test.sh` (it installs Podman, starts the service and builds the image)."
            )
        })
    };
    TestPodman {
        url: get("EVI_TEST_PODMAN_URL"),
        valkey_image: get("EVI_TEST_VALKEY_IMAGE"),
    }
}

/// Tests that drive the binary's fault-injection hooks (`EVI_INSTALL_TEST_*`)
/// need them built in: they exist only with the `test-hooks` feature, which
/// `scripts/test.sh` enables. Without it such a test fails loudly, never skips.
pub fn require_test_hooks() {
    if !cfg!(feature = "test-hooks") {
        panic!("this test needs the binary's test hooks: run it with `cargo test --features test-hooks` (scripts/test.sh does)");
    }
}

/// The end-to-end tests share one host and fixed resource names (evi-state,
/// evi-net, ...), so they take turns: within this process through a mutex, and
/// with other processes (a second test run, `bench/run.sh`) through an flock on
/// `/tmp/evi-host.lock`, held until the guard is dropped.
pub struct HostGuard {
    _file: std::fs::File,
    _guard: MutexGuard<'static, ()>,
}

/// A test lane with a Podman of its own (scripts/test-env.sh `evi_test_lane`)
/// has its own lock file.
fn lock_path() -> String {
    std::env::var("EVI_TEST_LOCK").unwrap_or_else(|_| "/tmp/evi-host.lock".to_string())
}

pub fn host_lock() -> HostGuard {
    use std::os::fd::AsRawFd;
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path())
        .expect("open the host lock file");
    // SAFETY: flock on a descriptor we own; it blocks until the lock is ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {} failed", lock_path());
    HostGuard {
        _file: file,
        _guard: guard,
    }
}

/// The podman CLI on the same storage as the service under test: the host's
/// `podman`, or, when `EVI_TEST_PODMAN_CLI` is set, that program instead (the
/// Podman 5 lane sets it to a wrapper around the nested Podman's CLI, see
/// `scripts/podman5-env.sh`), so the tests inspect the Podman the tool talks to.
pub fn podman_program() -> String {
    std::env::var("EVI_TEST_PODMAN_CLI")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "podman".to_string())
}

/// A `Command` for the podman CLI (see `podman_program`), for the tests that
/// need stdin or a running child.
pub fn podman_command() -> Command {
    Command::new(podman_program())
}

/// Runs the podman CLI (same storage as the service) and returns its output.
pub fn podman(args: &[&str]) -> Output {
    let run = || {
        let out = podman_command().args(args).output().expect("run podman");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    let out = run();
    // runc in the nested Podman 5 now and then fails to set up an exec session
    // (`read init-p: connection reset by peer`): the test's own look inside a
    // container, not evi-install's work, so it is tried once more.
    if args.first() == Some(&"exec") && out.stderr.contains("OCI runtime error") {
        return run();
    }
    out
}

/// Runs the podman CLI with `input` on stdin (the YAML, or a password that
/// must stay out of every argument list).
pub fn podman_stdin(args: &[&str], input: &str) -> Output {
    let mut child = podman_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run podman");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Like `podman` but panics when the command fails.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert_eq!(out.code, 0, "podman {args:?} failed: {}", out.stderr);
    out.stdout
}

/// Takes the host lock, then starts from a fresh host: how every test that
/// creates the stack begins.
pub fn fresh_host() -> HostGuard {
    let lock = host_lock();
    reset_host();
    lock
}

/// Removes every resource evi-install could have created (and any foreign
/// stand-in a test made), so each test starts from a fresh host.
pub fn reset_host() {
    // Stopped by request first: removing a container that its restart policy is
    // bringing back can leave its fixed address allocated in Podman's IPAM.
    let managed = podman_ok(&["ps", "-aq", "--filter", "label=io.evi-install.managed=true"]);
    let mut names: Vec<&str> = vec!["evi-be", "evi-worker", "evi-state", "evi-state-addr"];
    names.extend(managed.split_whitespace());
    let mut stop = vec!["stop", "--ignore", "--time", "0"];
    stop.extend(&names);
    podman(&stop);
    // evi-state first: Podman removes no container another runs in the
    // network namespace of (evi-state-addr).
    podman_ok(&["rm", "--force", "--ignore", "--time", "0", "evi-state"]);
    let mut rm = vec!["rm", "--force", "--ignore", "--time", "0"];
    rm.extend(&names);
    podman_ok(&rm);
    podman(&["network", "rm", "-f", "evi-net"]);
    podman(&["network", "rm", "-f", "evi-test-overlap"]);
    remove_stale_bridges();
    podman(&["volume", "rm", "-f", "evi-state-data"]);
    let secrets = podman_ok(&["secret", "ls", "--format", "{{.Name}}"]);
    for name in secrets.lines().filter(|n| n.starts_with("evi-")) {
        podman(&["secret", "rm", name]);
    }
}

/// With evi-net gone, a bridge that still holds the lane's subnet is a leftover
/// of a killed run, and Podman would refuse to create evi-net over it (the
/// same hygiene as scripts/test-env.sh `evi_remove_stale_bridges`).
fn remove_stale_bridges() {
    if std::env::var_os("EVI_TEST_PODMAN_CLI").is_some() {
        // A nested Podman: its bridges live in its own network namespace.
        return;
    }
    let prefix = format!("{}.", lane_prefix());
    let Ok(out) = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(3).is_some_and(|a| a.starts_with(&prefix)) {
            let _ = Command::new("ip")
                .args(["link", "delete", fields[1]])
                .status();
        }
    }
}

/// A settings file and state directory in a temp dir, pointing at the local image.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub podman: TestPodman,
}

impl Site {
    pub fn new(extra_yaml: &str) -> Site {
        let podman = test_podman();
        let dir = tempfile::tempdir().unwrap();
        let site = Site { dir, podman };
        site.write_settings(extra_yaml);
        site
    }

    pub fn write_settings(&self, extra_yaml: &str) {
        let image = &self.podman.valkey_image;
        // The clients idle, but stop at once on SIGTERM (a bare `sleep` as PID 1 ignores it).
        let idle = r#"[sh, -c, "trap 'exit 0' TERM; sleep infinity & wait"]"#;
        let yaml = format!(
            "state_dir: {}\n{}services:\n  evi-state: {{ image: {image} }}\n  evi-be: {{ image: {image}, command: {idle} }}\n  evi-worker: {{ image: {image}, command: {idle} }}\n{extra_yaml}",
            self.state_dir().display(),
            if extra_yaml.contains("network_subnet") {
                String::new()
            } else {
                lane_subnet_yaml()
            }
        );
        std::fs::write(self.settings(), yaml).unwrap();
    }

    pub fn settings(&self) -> PathBuf {
        self.dir.path().join("evi.yaml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn evi(&self) -> Evi {
        Evi::new(self.dir.path()).args(["--podman-url", &self.podman.url])
    }

    pub fn up(&self, args: &[&str]) -> Output {
        self.evi().args(["up"]).args(args).run()
    }

    /// The clients' password now: the one in a client's VALKEY_URL (evi-state's
    /// mounted secret only seeded its ACL file and is stale after a rotation).
    pub fn password(&self) -> String {
        for client in ["evi-be", "evi-worker"] {
            let out = podman(&["exec", client, "sh", "-c", "printf %s \"$VALKEY_URL\""]);
            if out.code == 0 {
                let url = out.stdout.trim();
                let pw = url
                    .strip_prefix("redis://:")
                    .and_then(|rest| rest.split_once('@'))
                    .map(|(pw, _)| pw.to_string());
                return pw
                    .unwrap_or_else(|| panic!("{client}'s VALKEY_URL is not the seed's form"));
            }
        }
        panic!("no client runs, so no client password can be read")
    }
}

/// `network_subnet: ...` when the test lane has a subnet of its own (so that two
/// lanes' evi-net bridges never route the same subnet), else nothing.
pub fn lane_subnet_yaml() -> String {
    std::env::var("EVI_TEST_SUBNET")
        .map(|s| format!("network_subnet: {s}\n"))
        .unwrap_or_default()
}

/// evi-state's fixed address: `.2` of the lane's subnet (the default one
/// outside a lane of its own).
pub fn state_address() -> String {
    format!("{}.2", lane_prefix())
}

/// The first three octets of the lane's /24 (`10.90.213` by default).
pub fn lane_prefix() -> String {
    let subnet = std::env::var("EVI_TEST_SUBNET").unwrap_or_else(|_| "10.90.213.0/24".to_string());
    let base = subnet.split('/').next().unwrap();
    base.rsplit_once('.').unwrap().0.to_string()
}

/// Every file under `dir`, with its content, for before/after comparisons.
pub fn snapshot_dir(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.push((path.clone(), vec![], meta.permissions().mode()));
            out.extend(snapshot_dir(&path));
        } else {
            out.push((
                path.clone(),
                std::fs::read(&path).unwrap_or_default(),
                meta.permissions().mode(),
            ));
        }
    }
    out.sort();
    out
}

/// Everything Podman shows about our resources (ids, states, labels), for
/// proving that a command changed nothing. Only names starting with `evi-`
/// count: other users of the host's Podman come and go meanwhile.
pub fn snapshot_podman() -> String {
    let mut out = String::new();
    for args in [
        // `{{.State}}` reads "Up 2 seconds ago" on Podman 4.3: list the running ones instead.
        &["ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Labels}}"][..],
        &["ps", "--format", "running: {{.ID}} {{.Names}}"],
        &["network", "ls", "--format", "{{.ID}} {{.Name}} {{.Labels}}"],
        &["volume", "ls", "--format", "{{.Name}} {{.Labels}}"],
        &["secret", "ls", "--format", "{{.ID}} {{.Name}}"],
    ] {
        let ours = |line: &str| line.split_whitespace().any(|w| w.starts_with("evi-"));
        let mut lines: Vec<String> = podman_ok(args)
            .lines()
            .filter(|l| ours(l))
            .map(str::to_string)
            .collect();
        lines.sort();
        out.push_str(&lines.join("\n"));
        out.push('\n');
    }
    out
}

/// Runs valkey-cli inside evi-state, authenticated from the mounted secret
/// (the password never appears in any argument list).
pub fn state_cli(command: &str) -> String {
    let script = format!(
        "REDISCLI_AUTH=\"$(cat /run/secrets/evi-admin-password)\" valkey-cli --no-auth-warning --user evi-admin -e {command}"
    );
    podman_ok(&["exec", "evi-state", "sh", "-c", &script])
        .trim()
        .to_string()
}

/// How long a real client keeps retrying a failed connection before its
/// caller sees an error: ioredis and redis-py reconnect within about a second.
/// No test waits longer for evi-state to become reachable, because a client
/// would not.
pub const CLIENT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `ask` until its answer is not a connection error, for at most
/// `CLIENT_PATIENCE`.
pub fn until_reachable(ask: impl Fn() -> Output) -> Output {
    let deadline = std::time::Instant::now() + CLIENT_PATIENCE;
    loop {
        let out = ask();
        let text = out.all();
        let unreachable = text.contains("Could not connect") || text.trim().is_empty();
        if !unreachable || std::time::Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
