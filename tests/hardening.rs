//! End-to-end tests of the hardening of issue 11 on real Podman: a saved plan
//! edited after review, a second Ctrl-C, and `down` after an interrupted run.

use std::io::{BufRead, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Sends `signal` to the process `pid`.
fn kill(signal: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

#[test]
fn a_second_ctrl_c_stops_the_run_at_once_and_a_rerun_converges() {
    require_test_hooks();
    let _lock = host_lock();
    reset_host();
    let site = Site::new("");
    // A long pause after each action: the first Ctrl-C lands in it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_evi-install"))
        .current_dir(site.dir.path())
        .env("NO_COLOR", "1")
        .env("EVI_INSTALL_TEST_STEP_DELAY_MS", "8000")
        .args(["--podman-url", &site.podman.url, "up"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "{seen}");
        seen.push_str(&line);
        if line.contains("created (") {
            break;
        }
    }
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
