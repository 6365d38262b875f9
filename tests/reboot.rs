//! A real reboot: `evi-install up` on a host with systemd (a nested one, see
//! scripts/reboot-env.sh), data written into evi-state, the host restarted,
//! and then, without anyone running evi-install, the stack must be back with
//! its data and its clients must reach evi-state.
//!
//! Ignored by default: it needs the nested host that only scripts/test.sh's
//! reboot step boots (`cargo test --test integration -- --ignored reboot::`).
//! Run without that host, it fails loudly, naming the command.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::Output;

const CONFIG: &str = "/etc/evi/evi.yaml";
const STACK: [&str; 3] = ["evi-state", "evi-be", "evi-worker"];

struct NestedHost {
    /// The host container's name on the outer Podman.
    name: String,
    /// Runs a command inside it.
    exec: String,
}

fn nested_host() -> NestedHost {
    let get = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the reboot test needs the nested systemd host of scripts/reboot-env.sh. \
                 Run it with `scripts/test.sh` (its reboot step boots that host)."
            )
        })
    };
    NestedHost {
        name: get("EVI_TEST_REBOOT_HOST"),
        exec: get("EVI_TEST_REBOOT_CLI"),
    }
}

fn output(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run a command");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl NestedHost {
    /// `ARGS` inside the nested host.
    fn run(&self, args: &[&str]) -> Output {
        output(Command::new(&self.exec).args(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.code, 0, "(nested) {args:?} failed: {}", out.all());
        out.stdout
    }

    fn evi(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "env",
            "NO_COLOR=1",
            "COLUMNS=100",
            "evi-install",
            "--config",
            CONFIG,
        ];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// valkey-cli inside evi-state, with the password from its mounted secret
    /// (in the environment, never in arguments or output).
    fn valkey(&self, command: &str) -> String {
        let script = format!(
            "REDISCLI_AUTH=\"$(cat /run/secrets/evi-admin-password)\" valkey-cli --no-auth-warning --user evi-admin {command}"
        );
        self.ok(&["podman", "exec", "evi-state", "sh", "-c", &script])
            .trim()
            .to_string()
    }

    /// The password generation evi-be was given (its label).
    fn generation(&self) -> String {
        self.ok(&[
            "podman",
            "inspect",
            "evi-be",
            "--format",
            "{{index .Config.Labels \"io.evi-install.secret-version\"}}",
        ])
        .trim()
        .to_string()
    }

    /// The running containers of the nested Podman, by name.
    fn running(&self) -> Vec<String> {
        let out = self.run(&["podman", "ps", "--format", "{{.Names}}"]);
        out.stdout.lines().map(str::to_string).collect()
    }

    /// systemd's own verdict: `running`, or `degraded` with a failed unit.
    fn system_state(&self) -> String {
        self.run(&["systemctl", "is-system-running"])
            .stdout
            .trim()
            .to_string()
    }

    fn wait_booted(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let state = self.system_state();
            match state.as_str() {
                "running" => return,
                "degraded" => panic!(
                    "the nested systemd booted degraded: {}",
                    self.run(&["systemctl", "--failed", "--no-legend"]).all()
                ),
                _ if Instant::now() > deadline => panic!(
                    "the nested systemd did not finish booting within {within:?} (state: {state:?}); {}",
                    self.run(&["journalctl", "-b", "--no-pager", "-n", "40"]).all()
                ),
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// A reboot: the outer Podman restarts the host container, whose systemd
    /// (PID 1) shuts down on SIGRTMIN+3 and boots again.
    fn reboot(&self) {
        // The host's own podman (with the harness's CONTAINERS_CONF), never a
        // nested lane's EVI_TEST_PODMAN_CLI.
        let out = output(Command::new("podman").args(["restart", "--time", "30", &self.name]));
        assert_eq!(out.code, 0, "podman restart {}: {}", self.name, out.all());
    }
}

#[test]
#[ignore = "needs the nested systemd host of scripts/reboot-env.sh; scripts/test.sh runs it"]
fn the_stack_comes_back_after_a_reboot_with_its_data() {
    let host = nested_host();
    host.wait_booted(Duration::from_secs(60));
    let started = Instant::now();
    let version = host.ok(&["podman", "--version"]);
    eprintln!("nested host: {}", version.trim());

    let up = host.evi(&["up"]);
    assert_eq!(
        up.code,
        0,
        "evi-install up in the nested host: {}",
        up.all()
    );
    assert!(
        up.all().contains("podman-restart.service"),
        "up did not enable the boot unit: {}",
        up.all()
    );
    assert_eq!(
        host.ok(&["systemctl", "is-enabled", "podman-restart.service"])
            .trim(),
        "enabled"
    );
    let before = host.evi(&["status"]);
    assert!(
        before
            .stdout
            .contains("boot: podman-restart.service enabled"),
        "status before the reboot: {}",
        before.all()
    );

    // A rotation before the reboot: what comes back must be the rotated
    // definitions (the clients with the new URL), not the ones `up` made.
    let before_rotation = host.generation();
    let rotate = host.evi(&["rotate-secret"]);
    assert_eq!(rotate.code, 0, "rotate-secret: {}", rotate.all());
    let generation = host.generation();
    assert_ne!(
        generation, before_rotation,
        "rotate-secret left evi-be's generation"
    );

    // Data: a key without a TTL and a stream entry. appendfsync everysec: the
    // AOF has them on disk a second later, whatever the shutdown does.
    let marker = format!("reboot-{}", std::process::id());
    assert_eq!(host.valkey(&format!("SET reboot:marker {marker}")), "OK");
    let id = host.valkey("XADD stream:reboot '*' step before-reboot");
    assert!(!id.is_empty(), "XADD returned nothing");
    std::thread::sleep(Duration::from_secs(2));
    let ids_before = host.ok(&[
        "podman",
        "ps",
        "--format",
        "{{.Names}} {{.ID}} {{.StartedAt}}",
    ]);

    let reboot_at = Instant::now();
    host.reboot();
    host.wait_booted(Duration::from_secs(90));
    eprintln!("nested host rebooted in {:?}", reboot_at.elapsed());

    // Nobody runs evi-install from here on until the stack is back.
    assert_eq!(
        host.ok(&["systemctl", "is-active", "podman-restart.service"])
            .trim(),
        "active",
        "podman-restart.service did not run at boot"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = host.running();
        if STACK.iter().all(|c| running.iter().any(|r| r == c)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the reboot only {running:?} run (want {STACK:?}); before: {ids_before}; {}",
            host.run(&[
                "journalctl",
                "-b",
                "-u",
                "podman-restart.service",
                "--no-pager"
            ])
            .all()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "stack back {:?} after the reboot began",
        reboot_at.elapsed()
    );

    // podman-restart.service starts containers in no order of its own: evi-state
    // must be back inside evi-state-addr's network namespace (Podman starts a
    // container's namespace dependency first), and nothing may differ from the
    // settings, rotated generation included: `up` would change nothing.
    let addr_id = host.ok(&["podman", "inspect", "evi-state-addr", "--format", "{{.Id}}"]);
    let mode = host.ok(&[
        "podman",
        "inspect",
        "evi-state",
        "--format",
        "{{.HostConfig.NetworkMode}}",
    ]);
    assert_eq!(
        mode.trim(),
        format!("container:{}", addr_id.trim()),
        "evi-state is not in evi-state-addr's network namespace after the reboot"
    );
    assert_eq!(
        host.generation(),
        generation,
        "evi-be came back with another password generation"
    );
    let plan = host.evi(&["up", "--dry-run", "--detailed-exitcode"]);
    assert_eq!(
        plan.code,
        0,
        "up would change something after the reboot: {}",
        plan.all()
    );

    assert_eq!(host.valkey("GET reboot:marker"), marker, "the key was lost");
    let entries = host.valkey("XRANGE stream:reboot - +");
    assert!(
        entries.contains(&id) && entries.contains("before-reboot"),
        "the stream entry {id} was lost: {entries}"
    );

    // The clients reach evi-state again (status probes from inside each
    // client's network namespace); they may need a moment to reconnect.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = host.evi(&["status"]);
        if status.code == 0 || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(status.code, 0, "status after the reboot: {}", status.all());
    for client in ["evi-be", "evi-worker"] {
        assert!(
            status
                .stdout
                .lines()
                .any(|l| l.contains(client) && l.contains("PONG")),
            "{client} does not reach evi-state after the reboot: {}",
            status.stdout
        );
    }
    assert!(
        status
            .stdout
            .contains("boot: podman-restart.service enabled"),
        "{}",
        status.stdout
    );
    eprintln!("reboot test took {:?}", started.elapsed());
}
