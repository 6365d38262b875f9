//! End-to-end tests of `rotate-secret` on real Podman: clients that keep
//! writing through the rotation, the data that must survive, and a SIGKILL
//! after every step followed by a rerun.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Child, Command, Stdio};

use crate::support::*;

/// The clients' command: a loop of XADD and read-back with the VALKEY_URL
/// they were given, reconnecting for every command, logging each result with
/// a millisecond timestamp to stdout (read back through `podman logs`).
const CLIENT_LOOP: &str = r#"pw=${VALKEY_URL#redis://:}; export REDISCLI_AUTH=${pw%@*}
trap 'exit 0' TERM
i=0
while :; do
  i=$((i+1)); t=$(date +%s%3N)
  if id=$(valkey-cli --no-auth-warning -e -h evi-state XADD stream:rotation '*' by "$HOSTNAME" i "$i" 2>&1); then
    if back=$(valkey-cli --no-auth-warning -e -h evi-state XRANGE stream:rotation "$id" "$id" 2>&1) && [ -n "$back" ]; then
      echo "ok $t $id"
    else
      echo "fail $t read-back: $back" | tr '\n' ' '; echo
    fi
  else
    echo "fail $t $id" | tr '\n' ' '; echo
  fi
  sleep 0.02
done"#;

/// Settings whose clients run `CLIENT_LOOP` (the images stay the test image).
fn looping_site() -> Site {
    let site = Site::new("");
    let image = &site.podman.valkey_image;
    let quoted = serde_json::to_string(CLIENT_LOOP).unwrap();
    let yaml = format!(
        "state_dir: {}\n{}services:\n  evi-state: {{ image: {image} }}\n  evi-be: {{ image: {image}, command: [sh, -c, {quoted}] }}\n  evi-worker: {{ image: {image}, command: [sh, -c, {quoted}] }}\n",
        site.state_dir().display(),
        lane_subnet_yaml()
    );
    std::fs::write(site.settings(), yaml).unwrap();
    site
}

/// What the password `pw` gets from evi-state, asked from inside evi-be.
fn ping_with(pw: &str) -> String {
    until_reachable(|| Output {
        code: 0,
        stdout: ping_once(pw),
        stderr: String::new(),
    })
    .stdout
}

fn ping_once(pw: &str) -> String {
    let script =
        "IFS= read -r p; REDISCLI_AUTH=$p valkey-cli --no-auth-warning -h evi-state ping 2>&1";
    let mut child = podman_command()
        .args(["exec", "-i", "evi-be", "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{pw}").unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn seed_data() {
    state_cli("xgroup create stream:tasks:email workers 0 mkstream");
    state_cli("xadd stream:tasks:email '*' type welcome");
    state_cli("xadd stream:tasks:email '*' type reset");
    state_cli("xreadgroup group workers c1 count 1 streams stream:tasks:email '>'");
    state_cli("hset cache:db:settings theme dark");
    state_cli("expire cache:db:settings 3600");
    state_cli("set op:plain value");
}

fn assert_data_intact() {
    assert_eq!(state_cli("xlen stream:tasks:email"), "2");
    assert!(
        state_cli("xpending stream:tasks:email workers").starts_with('1'),
        "one pending entry"
    );
    assert_eq!(state_cli("hget cache:db:settings theme"), "dark");
    let ttl: i64 = state_cli("ttl cache:db:settings").parse().unwrap();
    assert!(ttl > 0 && ttl <= 3600, "the hash keeps its TTL: {ttl}");
    assert_eq!(state_cli("get op:plain"), "value");
}

fn our_secrets() -> Vec<String> {
    podman_ok(&["secret", "ls", "--format", "{{.Name}}"])
        .lines()
        .filter(|n| n.starts_with("evi-"))
        .map(String::from)
        .collect()
}

fn follow_logs(name: &str) -> Child {
    podman_command()
        .args(["logs", "-f", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn rotation_moves_every_client_with_no_auth_failure_and_no_lost_write() {
    let _lock = fresh_host();
    let site = looping_site();
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    seed_data();
    let old = site.password();
    std::thread::sleep(std::time::Duration::from_millis(500));

    let dry = site.evi().args(["rotate-secret", "--dry-run"]).run();
    assert_eq!(dry.code, 0, "{}", dry.all());
    assert!(
        dry.stdout.contains("7. remove the old secrets"),
        "{}",
        dry.stdout
    );
    assert_eq!(site.password(), old, "the dry run changed nothing");

    // evi-state is never restarted: the same container, started at the same time.
    let state_identity = || {
        podman_ok(&[
            "inspect",
            "evi-state",
            "--format",
            "{{.Id}} {{.State.StartedAt}} {{.RestartCount}}",
        ])
        .trim()
        .to_string()
    };
    let state_before = state_identity();
    let followers = [follow_logs("evi-be"), follow_logs("evi-worker")];
    let rotate = site.evi().args(["rotate-secret"]).run();
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    assert_eq!(state_identity(), state_before, "evi-state was restarted");
    println!("{}", rotate.stdout);
    std::thread::sleep(std::time::Duration::from_millis(1000));

    // Old containers' logs end when they are removed; the new ones are read whole.
    let mut per_client: Vec<(&str, String)> = Vec::new();
    for (name, mut f) in ["evi-be", "evi-worker"].into_iter().zip(followers) {
        let _ = f.kill();
        let mut text = String::new();
        f.stdout.take().unwrap().read_to_string(&mut text).unwrap();
        text.push_str(&podman_ok(&["logs", name]));
        per_client.push((name, text));
    }
    let log: String = per_client.iter().map(|(_, t)| t.as_str()).collect();

    let new = site.password();
    assert_ne!(new, old);
    assert_eq!(ping_with(&new), "PONG");
    assert!(
        ping_with(&old).contains("WRONGPASS"),
        "the old password is revoked"
    );
    assert_eq!(our_secrets().len(), 3, "{:?}", our_secrets());
    assert_data_intact();
    assert_eq!(site.up(&["--dry-run", "--detailed-exitcode"]).code, 0);

    let failures: Vec<&str> = log.lines().filter(|l| l.starts_with("fail")).collect();
    let auth_failures: Vec<&&str> = failures
        .iter()
        .filter(|l| l.contains("AUTH") || l.contains("WRONGPASS") || l.contains("NOAUTH"))
        .collect();
    // The longest time one client went without a successful write, the
    // re-creation of that client included.
    let longest_gap = per_client
        .iter()
        .map(|(_, text)| {
            let mut times: Vec<u64> = text
                .lines()
                .filter(|l| l.starts_with("ok "))
                .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
                .collect();
            times.sort();
            times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let acked: BTreeSet<&str> = log
        .lines()
        .filter(|l| l.starts_with("ok "))
        .filter_map(|l| l.split(' ').nth(2))
        .collect();
    let stored = state_cli("xrange stream:rotation - +");
    let lost: Vec<&&str> = acked.iter().filter(|id| !stored.contains(**id)).collect();
    println!(
        "rotation: {} acknowledged writes, {} failed commands ({} auth), longest gap a client saw {} ms",
        acked.len(),
        failures.len(),
        auth_failures.len(),
        longest_gap
    );
    assert!(
        acked.len() > 20,
        "the clients were writing: {}",
        acked.len()
    );
    assert!(
        auth_failures.is_empty(),
        "authentication failures: {auth_failures:?}"
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    for (what, out) in [("dry run", &dry), ("rotate-secret", &rotate)] {
        assert!(
            !out.all().contains(&old) && !out.all().contains(&new),
            "a password leaked into {what}"
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn a_sigkill_after_any_step_is_repaired_by_a_rerun() {
    require_test_hooks();
    let _lock = host_lock();
    let steps = [
        "create-secrets",
        "start-helper",
        "add-password",
        "replace-clients",
        "revoke",
        "remove-helper",
        "remove-old-secrets",
    ];
    for (i, step) in steps.iter().enumerate() {
        reset_host();
        let site = Site::new("");
        assert_eq!(site.up(&[]).code, 0);
        seed_data();
        let old = site.password();

        let killed = site
            .evi()
            .env("EVI_INSTALL_TEST_KILL_AFTER", step)
            .args(["rotate-secret"])
            .run();
        assert_eq!(
            killed.code,
            -1,
            "{step}: killed by a signal: {}",
            killed.all()
        );

        // Alternate the repair: rotate-secret again, or a plain up, which
        // refuses (changing nothing) while a rotation is unfinished and says
        // what to run instead.
        let repair = if i % 2 == 0 {
            site.evi().args(["rotate-secret"]).run()
        } else {
            let before = snapshot_podman();
            let up = site.up(&[]);
            if up.code == 0 {
                up
            } else {
                assert_eq!(up.code, 1, "{step}: {}", up.all());
                assert_eq!(up.stderr.trim().lines().count(), 1, "{step}: {}", up.stderr);
                assert!(
                    up.stderr
                        .contains("run `evi-install rotate-secret` to finish it"),
                    "{step}: {}",
                    up.stderr
                );
                assert_eq!(
                    snapshot_podman(),
                    before,
                    "{step}: a refused up changed Podman"
                );
                site.evi().args(["rotate-secret"]).run()
            }
        };
        assert_eq!(repair.code, 0, "{step}: {}", repair.all());

        let current = site.password();
        assert_eq!(ping_with(&current), "PONG", "{step}");
        let url = podman_ok(&["exec", "evi-be", "sh", "-c", "printf %s \"$VALKEY_URL\""]);
        assert_eq!(
            url,
            format!("redis://:{current}@evi-state:6379"),
            "{step}: evi-be holds the server's password"
        );
        if current != old {
            assert!(
                ping_with(&old).contains("WRONGPASS"),
                "{step}: exactly one password works"
            );
        }
        assert_eq!(
            our_secrets().len(),
            3,
            "{step}: one generation of secrets and the admin one: {:?}",
            our_secrets()
        );
        assert_eq!(passwords_in_force(), 1, "{step}: one password in force");
        assert_data_intact();
        assert_eq!(
            site.up(&["--dry-run", "--detailed-exitcode"]).code,
            0,
            "{step}: converged"
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn a_held_host_lock_makes_a_second_run_wait_then_fail_naming_the_holder() {
    let _lock = fresh_host();
    let site = Site::new("");
    std::fs::create_dir_all(site.state_dir()).unwrap();
    let lock_file = site.state_dir().join(".evi-install.lock");
    std::fs::write(&lock_file, "pid=4242 command=rotate-secret\n").unwrap();
    let mut holder = Command::new("flock")
        .arg(&lock_file)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = site.evi().args(["--lock-timeout", "1", "up"]).run();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains("pid=4242 command=rotate-secret"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--lock-timeout"), "{}", out.stderr);
    assert_eq!(
        podman(&["container", "exists", "evi-state"]).code,
        1,
        "nothing was created"
    );
}

/// Starts `evi-install` with a pause after each action, waits for the first
/// finished action, sends `signal`, and returns (exit code, stdout, stderr).
fn interrupt_after_first_action(
    site: &Site,
    args: &[&str],
    signal: &str,
    marker: &str,
) -> (i32, String, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_evi-install"))
        .current_dir(site.dir.path())
        .env("NO_COLOR", "1")
        .env("EVI_INSTALL_TEST_STEP_DELAY_MS", "1500")
        .args(["--podman-url", &site.podman.url])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if line.contains(marker) {
            Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .unwrap();
            break;
        }
    }
    stdout.read_to_string(&mut seen).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (code, seen, stderr)
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn ctrl_c_and_sigterm_stop_between_actions_and_a_rerun_converges() {
    require_test_hooks();
    let _lock = fresh_host();
    let site = Site::new("");

    let (code, stdout, stderr) = interrupt_after_first_action(&site, &["up"], "INT", "created (");
    assert_eq!(code, 130, "{stdout}{stderr}");
    assert!(
        stderr.contains("interrupted by SIGINT") && stderr.contains("not done: create"),
        "{stderr}"
    );
    assert!(
        stdout.contains("file") && !stdout.contains("Apply complete"),
        "{stdout}"
    );
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    assert_eq!(site.up(&["--dry-run", "--detailed-exitcode"]).code, 0);

    let old = site.password();
    let (code, stdout, stderr) =
        interrupt_after_first_action(&site, &["rotate-secret"], "TERM", "1. create");
    assert_eq!(code, 143, "{stdout}{stderr}");
    assert!(
        stderr.contains("interrupted by SIGTERM")
            && stderr.contains("not done: start the helper evi-rotate"),
        "{stderr}"
    );
    let again = site.evi().args(["rotate-secret"]).run();
    assert_eq!(again.code, 0, "{}", again.all());
    assert_ne!(site.password(), old);
    assert_eq!(our_secrets().len(), 3);
    assert_eq!(site.up(&["--dry-run", "--detailed-exitcode"]).code, 0);
}

/// Every line the client containers print while it runs, successors and
/// containers removed meanwhile included: each running evi-be* or
/// evi-worker* container is followed from its first line.
struct ClientLogs {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<String>,
}

impl ClientLogs {
    fn start() -> ClientLogs {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            let mut followers = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let running = podman(&[
                    "ps",
                    "--filter",
                    "name=^evi-be",
                    "--filter",
                    "name=^evi-worker",
                    "--format",
                    "{{.ID}}",
                ]);
                for id in running.stdout.lines().map(str::to_string) {
                    if seen.insert(id.clone()) {
                        let mut child = follow_logs(&id);
                        let mut out = child.stdout.take().unwrap();
                        let reader = std::thread::spawn(move || {
                            let mut text = String::new();
                            let _ = out.read_to_string(&mut text);
                            text
                        });
                        followers.push((child, reader));
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let mut all = String::new();
            for (mut child, reader) in followers {
                let _ = child.kill();
                let _ = child.wait();
                all.push_str(&reader.join().unwrap());
            }
            all
        });
        ClientLogs { stop, handle }
    }

    fn finish(self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// How many passwords the server holds for the default user (ACL GETUSER
/// lists each as a SHA-256 in hex).
fn passwords_in_force() -> usize {
    state_cli("acl getuser default")
        .lines()
        .filter(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .count()
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn a_failure_before_the_revoke_rolls_back_with_no_refused_client() {
    require_test_hooks();
    let _lock = host_lock();
    for step in [
        "create-secrets",
        "start-helper",
        "add-password",
        "replace-clients",
    ] {
        reset_host();
        let site = looping_site();
        let up = site.up(&[]);
        assert_eq!(up.code, 0, "{step}: {}", up.all());
        let old = site.password();
        let logs = ClientLogs::start();
        std::thread::sleep(std::time::Duration::from_millis(500));

        let rotate = site
            .evi()
            .env("EVI_INSTALL_TEST_FAIL_AFTER", step)
            .args(["rotate-secret"])
            .run();
        std::thread::sleep(std::time::Duration::from_millis(1000));
        let log = logs.finish();
        assert_eq!(rotate.code, 1, "{step}: {}", rotate.all());
        assert!(
            rotate
                .stderr
                .contains(&format!("injected failure after {step}"))
                && rotate
                    .stderr
                    .contains("rolled back: the old password is still in force"),
            "{step}: {}",
            rotate.stderr
        );

        let writes = log.lines().filter(|l| l.starts_with("ok ")).count();
        let auth_failures: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("fail"))
            .filter(|l| l.contains("AUTH") || l.contains("WRONGPASS") || l.contains("NOAUTH"))
            .collect();
        println!(
            "roll-back after {step}: {writes} acknowledged writes, {} auth failures",
            auth_failures.len()
        );
        assert!(writes > 20, "{step}: the clients were writing: {writes}");
        assert!(
            auth_failures.is_empty(),
            "{step}: authentication failures: {auth_failures:?}"
        );
        assert_eq!(site.password(), old, "{step}");
        assert_eq!(ping_with(&old), "PONG", "{step}");
        assert_eq!(passwords_in_force(), 1, "{step}: one password in force");
        assert_eq!(our_secrets().len(), 3, "{step}: {:?}", our_secrets());
        assert_eq!(
            podman(&["container", "exists", "evi-rotate"]).code,
            1,
            "{step}: the helper is gone"
        );
        let converged = site.up(&["--dry-run", "--detailed-exitcode"]);
        assert_eq!(converged.code, 0, "{step}: {}", converged.all());
    }
}

/// evi-state restarts (a crash, an OOM kill: its restart policy brings it
/// back) at any step of a rotation, even one whose evi-install died right
/// after that step: every password a client may hold is still accepted,
/// because each ACL change is saved to the ACL file before the next step. (`podman kill` would not do: Podman does not
/// restart a container stopped by request. A clean exit is answered with a
/// restart, like a crash.)
#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn evi_state_restarting_at_any_step_of_a_rotation_refuses_no_client() {
    require_test_hooks();
    let _lock = host_lock();
    for step in [
        "create-secrets",
        "start-helper",
        "add-password",
        "replace-clients",
        "revoke",
        "remove-helper",
    ] {
        reset_host();
        let site = looping_site();
        let up = site.up(&[]);
        assert_eq!(up.code, 0, "{step}: {}", up.all());
        let logs = ClientLogs::start();
        std::thread::sleep(std::time::Duration::from_millis(500));

        let killed = site
            .evi()
            .env("EVI_INSTALL_TEST_KILL_AFTER", step)
            .args(["rotate-secret"])
            .run();
        assert_eq!(killed.code, -1, "{step}: {}", killed.all());

        let started = || {
            podman_ok(&["inspect", "evi-state", "--format", "{{.State.StartedAt}}"])
                .trim()
                .to_string()
        };
        let before = started();
        podman(&[
            "exec",
            "evi-state",
            "sh",
            "-c",
            "REDISCLI_AUTH=\"$(cat /run/secrets/evi-admin-password)\" valkey-cli --no-auth-warning --user evi-admin shutdown",
        ]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while started() == before || state_ping() != "PONG" {
            assert!(
                std::time::Instant::now() < deadline,
                "{step}: evi-state did not come back after its restart"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // The clients go on writing against the restarted server.
        std::thread::sleep(std::time::Duration::from_millis(2000));
        let log = logs.finish();
        let auth_failures: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("fail"))
            .filter(|l| l.contains("AUTH") || l.contains("WRONGPASS") || l.contains("NOAUTH"))
            .collect();
        let writes = log.lines().filter(|l| l.starts_with("ok ")).count();
        println!(
            "evi-state restarted after {step}: {writes} acknowledged writes, {} auth failures",
            auth_failures.len()
        );
        assert!(
            auth_failures.is_empty(),
            "{step}: authentication failures after the restart: {auth_failures:?}"
        );

        // A rerun completes the rotation.
        let again = site.evi().args(["rotate-secret"]).run();
        assert_eq!(again.code, 0, "{step}: {}", again.all());
        assert_eq!(passwords_in_force(), 1, "{step}");
        assert_eq!(ping_with(&site.password()), "PONG", "{step}");
    }
}

/// An authenticated PING inside evi-state, from the mounted secret.
fn state_ping() -> String {
    podman(&[
        "exec",
        "evi-state",
        "sh",
        "-c",
        "REDISCLI_AUTH=\"$(cat /run/secrets/evi-admin-password)\" valkey-cli --no-auth-warning --user evi-admin ping",
    ])
    .stdout
    .trim()
    .to_string()
}
