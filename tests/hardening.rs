//! End-to-end tests of the hardening of issue 11 on real Podman: a saved plan
//! edited after review, a second Ctrl-C, and `down` after an interrupted run.

use std::io::{BufRead, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Rewrites the spec of container `name` in the saved plan at `path`.
fn edit_saved_spec(path: &std::path::Path, name: &str, edit: impl Fn(&mut serde_json::Value)) {
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let step = doc["plan"]["steps"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step for {name}"));
    edit(&mut step["change"]["spec"]);
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn an_edited_saved_plan_is_refused_with_the_first_difference_and_changes_nothing() {
    let _lock = fresh_host();
    let site = Site::new("");
    let saved = site.dir.path().join("plan.json");
    let dry = site.up(&["--dry-run", "--out", saved.to_str().unwrap()]);
    assert_eq!(dry.code, 0, "{}", dry.all());

    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, &str, Edit, &str); 2] = [
        (
            "a bind mount of /",
            "evi-be",
            |spec| {
                spec["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!(
                        {"Bind": {"source": "/", "target": "/host", "read_only": false}}
                    ))
            },
            r#"(container evi-be): mounts[0] differs: saved {"Bind":{"read_only":false,"source":"/","target":"/host"}}, now nothing"#,
        ),
        (
            "another image",
            "evi-state",
            |spec| spec["image"] = "localhost/evil:latest".into(),
            r#"(container evi-state): image differs: saved "localhost/evil:latest", now ""#,
        ),
    ];
    for (what, name, edit, difference) in cases {
        let edited = site.dir.path().join(format!("edited-{name}.json"));
        std::fs::copy(&saved, &edited).unwrap();
        edit_saved_spec(&edited, name, edit);
        let before = snapshot_podman();
        let out = site.up(&["--plan", edited.to_str().unwrap()]);
        assert_eq!(out.code, 1, "{what}: {}", out.all());
        assert!(out.stderr.contains(difference), "{what}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("review a new plan with `evi-install up --dry-run --out"),
            "{what}: {}",
            out.stderr
        );
        assert_eq!(out.stderr.trim().lines().count(), 1, "{what}: one line");
        assert_eq!(snapshot_podman(), before, "{what}: Podman unchanged");
        assert!(
            !site.state_dir().exists(),
            "{what}: nothing written, not even the lock file"
        );
    }
}

/// Sends `signal` to the process `pid`.
fn kill(signal: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// `up` with a long pause (8 s) after each action, for a signal to land in,
/// its stdout and stderr piped.
fn spawn_pausing_up(site: &Site) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_evi-install"))
        .current_dir(site.dir.path())
        .env("NO_COLOR", "1")
        .env("EVI_INSTALL_TEST_STEP_DELAY_MS", "8000")
        .args(["--podman-url", &site.podman.url, "up"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads `reader` line by line up to the first line that contains `marker`:
/// all it read. Fails if the output ends first.
fn read_until(reader: &mut impl BufRead, marker: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert_ne!(reader.read_line(&mut line).unwrap(), 0, "{seen}");
        seen.push_str(&line);
        if line.contains(marker) {
            return seen;
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn a_second_ctrl_c_stops_the_run_at_once_and_a_rerun_converges() {
    require_test_hooks();
    let _lock = fresh_host();
    let site = Site::new("");
    // A long pause after each action: the first Ctrl-C lands in it.
    let mut child = spawn_pausing_up(&site);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = read_until(&mut stdout, "created (");
    kill("INT", child.id());
    std::thread::sleep(Duration::from_millis(500));
    let second = Instant::now();
    kill("INT", child.id());
    let code = child.wait().unwrap().code();
    let took = second.elapsed();
    stdout.read_to_string(&mut seen).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(code, Some(130), "{seen}{stderr}");
    assert!(
        took < Duration::from_secs(3),
        "stopped {took:?} after the second Ctrl-C (the pause is 8s)"
    );
    assert!(
        stderr.contains("SIGINT received: finishing the action in progress")
            && stderr.contains("error: interrupted again by SIGINT: stopped at once")
            && stderr.contains("run the same command again to finish it"),
        "{stderr}"
    );
    assert!(!seen.contains("Apply complete"), "{seen}");

    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    assert_eq!(site.up(&["--dry-run", "--detailed-exitcode"]).code, 0);
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn down_removes_our_leftovers_of_an_interrupted_run_and_leaves_others_alone() {
    let _lock = fresh_host();
    let extra = ["evi-rotate", "evi-probe-be", "evi-probe-mine"];
    let remove_extra = || {
        let mut args = vec!["rm", "--force", "--ignore", "--time", "0"];
        args.extend(extra);
        podman_ok(&args);
    };
    remove_extra();
    let site = Site::new("");
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    let image = site.podman.valkey_image.as_str();
    // What a killed rotation or probe leaves on evi-net, and someone else's
    // container that merely shares the prefix.
    for (name, labelled) in [
        ("evi-rotate", true),
        ("evi-probe-be", true),
        ("evi-probe-mine", false),
    ] {
        let mut args = vec!["run", "-d", "--name", name];
        if labelled {
            args.extend([
                "--label",
                "io.evi-install.managed=true",
                "--network",
                "evi-net",
            ]);
        } else {
            args.extend(["--network", "none"]);
        }
        args.extend([image, "sleep", "1000"]);
        podman_ok(&args);
    }

    let down = site.evi().args(["down"]).run();
    assert_eq!(down.code, 0, "{}", down.all());
    assert!(
        down.stderr
            .contains("leaving container evi-probe-mine alone: it was not created by evi-install"),
        "{}",
        down.stderr
    );
    for gone in [
        "evi-rotate",
        "evi-probe-be",
        "evi-state",
        "evi-be",
        "evi-worker",
    ] {
        assert_eq!(podman(&["container", "exists", gone]).code, 1, "{gone}");
    }
    assert_eq!(podman(&["network", "exists", "evi-net"]).code, 1);
    assert_eq!(podman(&["container", "exists", "evi-probe-mine"]).code, 0);
    remove_extra();
}

/// A run whose stderr reader is gone (a killed pipeline, a closed terminal)
/// still stops at once on a second SIGTERM: the notice of the first cannot
/// be written, and that must not disarm the second.
#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn a_second_sigterm_stops_the_run_even_when_stderr_is_gone() {
    require_test_hooks();
    let _lock = fresh_host();
    let site = Site::new("");
    let mut child = spawn_pausing_up(&site);
    drop(child.stderr.take());
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let seen = read_until(&mut stdout, "created (");
    kill("TERM", child.id());
    std::thread::sleep(Duration::from_millis(500));
    let second = Instant::now();
    kill("TERM", child.id());
    let code = child.wait().unwrap().code();
    let took = second.elapsed();
    assert_eq!(code, Some(143), "{seen}");
    assert!(
        took < Duration::from_secs(3),
        "stopped {took:?} after the second SIGTERM (the pause is 8s)"
    );
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
}

/// With stderr closed, a failing run still exits 1 (printing the error must
/// not panic into exit code 101).
#[test]
fn an_error_with_stderr_gone_still_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("evi.yaml"),
        "services: { evi-be: { image: app } }\n",
    )
    .unwrap();
    let url = format!("unix://{}", dir.path().join("nothing.sock").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_evi-install"))
        .current_dir(dir.path())
        .args(["--podman-url", &url, "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("up")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    assert_eq!(child.wait().unwrap().code(), Some(1));
}
