//! The catalogue of bad input and faults: each case asserts a clear one-line
//! error naming the problem and the fix, exit code 1, no panic, and no change
//! on the host (every Podman resource and the state directory compared before
//! and after).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command};

use crate::support::*;

/// A settings file with a valid stack plus `extra` YAML appended.
fn settings_with(site: &Site, extra: &str) {
    site.write_settings(extra);
}

/// Prepares the host for a case and returns the arguments for `evi-install`.
type Setup = Box<dyn Fn(&Site) -> Vec<String>>;

struct Case {
    name: &'static str,
    /// Prepares the host and returns the arguments for `evi-install`.
    setup: Setup,
    /// Text the one-line error must contain (the problem and the fix).
    expect: &'static [&'static str],
    /// Run as an unprivileged user (`nobody`).
    as_nobody: bool,
}

fn case(
    name: &'static str,
    expect: &'static [&'static str],
    setup: impl Fn(&Site) -> Vec<String> + 'static,
) -> Case {
    Case {
        name,
        setup: Box::new(setup),
        expect,
        as_nobody: false,
    }
}

fn up() -> Vec<String> {
    vec!["up".into()]
}

/// A unix socket that answers HTTP, but not as Podman.
fn not_podman_socket(path: &Path) -> Child {
    let server = format!(
        "import socketserver, http.server\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       self.send_response(404); self.end_headers(); self.wfile.write(b'not here')\n\
         \x20   def log_message(self, *a): pass\n\
         class S(socketserver.UnixStreamServer):\n\
         \x20   def get_request(self):\n\
         \x20       r, _ = super().get_request(); return r, ('local', 0)\n\
         S('{}', H).serve_forever()\n",
        path.display()
    );
    let child = Command::new("python3")
        .args(["-c", &server])
        .spawn()
        .unwrap();
    for _ in 0..50 {
        if path.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn every_bad_input_fails_clearly_and_changes_nothing() {
    let _lock = host_lock();
    let cases = vec![
        case(
            "malformed YAML",
            &["malformed YAML", "fix the YAML syntax"],
            |s| {
                std::fs::write(s.settings(), "valkey:\n  maxmemory: \"1gb\n").unwrap();
                up()
            },
        ),
        case(
            "unknown key",
            &[
                "unknown key `valkey.maxmemroy`",
                "did you mean `maxmemory`?",
            ],
            |s| {
                settings_with(s, "valkey:\n  maxmemroy: 1gb\n");
                up()
            },
        ),
        case(
            "wrong type",
            &["`valkey.appendonly`", "expected a boolean"],
            |s| {
                settings_with(s, "valkey:\n  appendonly: sometimes\n");
                up()
            },
        ),
        case(
            "bad size",
            &["`valkey.maxmemory`", "invalid size `lots`", "such as `1gb`"],
            |s| {
                settings_with(s, "valkey:\n  maxmemory: lots\n");
                up()
            },
        ),
        case(
            "bad policy",
            &["unknown value `lru`", "one of: noeviction"],
            |s| {
                settings_with(s, "valkey:\n  maxmemory_policy: lru\n");
                up()
            },
        ),
        case(
            "maxmemory of 0",
            &["`valkey.maxmemory`", "no memory limit", "set a limit"],
            |s| {
                settings_with(s, "valkey:\n  maxmemory: 0\n");
                up()
            },
        ),
        case(
            "maxmemory above the host's memory",
            &["more than this host's memory", "set a limit below"],
            |s| {
                settings_with(s, "valkey:\n  maxmemory: 100000gb\n");
                up()
            },
        ),
        case(
            "missing evi-be image",
            &["no image for evi-be", "set `services.evi-be.image`"],
            |s| {
                std::fs::write(
                    s.settings(),
                    format!("state_dir: {}\n", s.state_dir().display()),
                )
                .unwrap();
                up()
            },
        ),
        case(
            "image not present and not pullable",
            &[
                "`localhost/evi-no-such-image:1`",
                "cannot be pulled",
                "load or build it",
            ],
            |s| {
                settings_with(s, "");
                let text = std::fs::read_to_string(s.settings()).unwrap();
                let text = text.replacen(
                    &format!("evi-be: {{ image: {}", s.podman.valkey_image),
                    "evi-be: { image: localhost/evi-no-such-image:1",
                    1,
                );
                std::fs::write(s.settings(), text).unwrap();
                up()
            },
        ),
        case(
            "state directory is a file",
            &["is a file, not a directory", "--state-dir"],
            |s| {
                settings_with(s, "");
                std::fs::write(s.state_dir(), "").unwrap();
                up()
            },
        ),
        Case {
            as_nobody: true,
            ..case(
                "state directory not writable",
                &["is not writable", "choose another with --state-dir"],
                |s| {
                    settings_with(s, "");
                    std::fs::create_dir(s.state_dir()).unwrap();
                    up()
                },
            )
        },
        Case {
            as_nobody: true,
            ..case(
                "settings file unreadable",
                &["not readable (permission denied)", "--config"],
                |s| {
                    settings_with(s, "");
                    std::fs::set_permissions(s.settings(), std::fs::Permissions::from_mode(0o600))
                        .unwrap();
                    vec![
                        "--config".into(),
                        s.settings().display().to_string(),
                        "up".into(),
                    ]
                },
            )
        },
        case(
            "settings file not UTF-8",
            &["not UTF-8", "save it as UTF-8"],
            |s| {
                std::fs::write(s.settings(), b"network: \xff\n").unwrap();
                up()
            },
        ),
        case(
            "Podman socket missing",
            &[
                "no Podman service at",
                "systemctl enable --now podman.socket",
            ],
            |s| {
                settings_with(s, "");
                vec![
                    "--podman-url".into(),
                    format!("unix://{}/none.sock", s.dir.path().display()),
                    "up".into(),
                ]
            },
        ),
        case(
            "a socket that is not Podman",
            &["not a Podman API service", "--podman-url"],
            |s| {
                settings_with(s, "");
                vec![
                    "--podman-url".into(),
                    format!("unix://{}/other.sock", s.dir.path().display()),
                    "up".into(),
                ]
            },
        ),
        case(
            "foreign container",
            &[
                "container `evi-state` exists but was not created by evi-install",
                "remove or rename it",
            ],
            |s| {
                settings_with(s, "");
                podman_ok(&[
                    "create",
                    "--name",
                    "evi-state",
                    &s.podman.valkey_image,
                    "true",
                ]);
                up()
            },
        ),
        case(
            "foreign network",
            &["network `evi-net` exists but was not created by evi-install"],
            |s| {
                settings_with(s, "");
                podman_ok(&["network", "create", "evi-net"]);
                up()
            },
        ),
        case(
            "subnet with host bits",
            &[
                "`network_subnet`",
                "host bits set (the subnet is 10.90.213.0/24)",
                "write a private IPv4 subnet",
            ],
            |s| {
                settings_with(s, "network_subnet: 10.90.213.7/24\n");
                up()
            },
        ),
        case(
            "subnet used by another Podman network",
            Box::leak(Box::new([
                Box::leak(
                    format!(
                        "overlaps {}.128/25 of the Podman network `evi-test-overlap`",
                        lane_prefix()
                    )
                    .into_boxed_str(),
                ) as &str,
                "set `network_subnet` in the settings to a free private range",
            ])),
            |s| {
                settings_with(s, "");
                let half = format!("{}.128/25", lane_prefix());
                podman_ok(&["network", "create", "--subnet", &half, "evi-test-overlap"]);
                up()
            },
        ),
        case(
            "foreign volume",
            &["volume `evi-state-data` exists but was not created by evi-install"],
            |s| {
                settings_with(s, "");
                podman_ok(&["volume", "create", "evi-state-data"]);
                up()
            },
        ),
        case(
            "foreign secret",
            &["secret `evi-state-password-v1` exists but was not created by evi-install"],
            |s| {
                settings_with(s, "");
                let mut child = podman_command()
                    .args(["secret", "create", "evi-state-password-v1", "-"])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(b"somebody-elses")
                    .unwrap();
                assert!(child.wait().unwrap().success());
                up()
            },
        ),
    ];

    let mut python: Option<Child> = None;
    for c in &cases {
        reset_host();
        let site = Site::new("");
        std::fs::set_permissions(site.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let args = (c.setup)(&site);
        if c.name == "a socket that is not Podman" {
            python = Some(not_podman_socket(&site.dir.path().join("other.sock")));
        }
        // Already an ordinary user (the rootless lane): the owner's own rights are
        // taken away instead, which is what `nobody` meets as root's lanes run it.
        let unprivileged = !rustix::process::geteuid().is_root();
        if c.as_nobody && unprivileged {
            let (path, mode) = match c.name {
                "state directory not writable" => (site.state_dir(), 0o555),
                "settings file unreadable" => (site.settings(), 0o000),
                other => panic!("no unprivileged form of the case {other}"),
            };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let podman_before = snapshot_podman();
        let dir_before = snapshot_dir(site.dir.path());

        let out = if c.as_nobody && !unprivileged {
            let mut cmd = Command::new("setpriv");
            cmd.args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                env!("CARGO_BIN_EXE_evi-install"),
            ])
            .current_dir(site.dir.path())
            .env("NO_COLOR", "1")
            .args(["--podman-url", &site.podman.url])
            .args(&args);
            let o = cmd.output().unwrap();
            Output {
                code: o.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&o.stdout).into(),
                stderr: String::from_utf8_lossy(&o.stderr).into(),
            }
        } else if args.iter().any(|a| a == "--podman-url") {
            Evi::new(site.dir.path()).args(&args).run()
        } else {
            site.evi().args(&args).run()
        };
        if let Some(mut p) = python.take() {
            let _ = p.kill();
            let _ = p.wait();
        }

        assert_eq!(out.code, 1, "{}: exit code; {}", c.name, out.all());
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "{}: one line: {}",
            c.name,
            out.stderr
        );
        assert!(
            out.stderr.starts_with("error: "),
            "{}: {}",
            c.name,
            out.stderr
        );
        assert!(
            !out.all().contains("panicked") && !out.all().contains("RUST_BACKTRACE"),
            "{}",
            c.name
        );
        for needle in c.expect {
            assert!(
                out.stderr.contains(needle),
                "{}: `{needle}` missing from: {}",
                c.name,
                out.stderr
            );
        }
        assert_eq!(
            snapshot_podman(),
            podman_before,
            "{}: Podman changed",
            c.name
        );
        assert_eq!(
            snapshot_dir(site.dir.path()),
            dir_before,
            "{}: files changed",
            c.name
        );
        println!("ok   {:<40} {}", c.name, out.stderr.trim());
    }
    reset_host();
}

/// A server start that fails is reported with the server's own last words.
#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn evi_state_that_exits_at_start_shows_its_last_log_lines() {
    let _lock = fresh_host();
    let site = Site::new("");
    // An evi-state image without valkey-server: the start script's exec fails.
    let root = site.dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "id", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tar = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -c . | {} import - localhost/evi-broken-state:1",
            root.display(),
            podman_program()
        ))
        .output()
        .unwrap();
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
    let text = std::fs::read_to_string(site.settings()).unwrap();
    let text = text.replacen(
        &format!("evi-state: {{ image: {} }}", site.podman.valkey_image),
        "evi-state: { image: localhost/evi-broken-state:1 }",
        1,
    );
    std::fs::write(site.settings(), text).unwrap();

    let out = site.up(&["--ready-timeout", "20"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr
            .contains("create container evi-state failed: evi-state exited at start"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("its last log lines:")
            && out.stderr.contains("refusing to run Valkey as root"),
        "{}",
        out.stderr
    );
    reset_host();
    podman(&["rmi", "-f", "localhost/evi-broken-state:1"]);
}

/// The disk filling up while valkey.conf is written leaves the old file whole.
#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn a_full_disk_while_writing_the_config_leaves_the_old_file_intact() {
    let _lock = fresh_host();
    let site = Site::new("");
    std::fs::create_dir_all(site.state_dir()).unwrap();
    let state = site.state_dir().display().to_string();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs", &state])
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "mounting a small tmpfs for the state directory"
    );
    let unmount = || {
        Command::new("umount").arg(&state).status().unwrap();
    };

    let first = site.up(&[]);
    assert_eq!(first.code, 0, "{}", first.all());
    let conf = site.state_dir().join("valkey/valkey.conf");
    let before = std::fs::read(&conf).unwrap();
    // Fill the file system, then ask for a different config.
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dd if=/dev/zero of={state}/fill bs=1k count=1000 2>/dev/null"
        ))
        .status()
        .unwrap();
    site.write_settings("valkey:\n  maxmemory: 512mb\n");
    let podman_before = snapshot_podman();
    let out = site.up(&[]);
    let after = std::fs::read(&conf).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(conf.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    unmount();

    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    assert_eq!(after, before, "the old valkey.conf is intact");
    assert_eq!(
        leftovers.len(),
        1,
        "no temp file left behind: {leftovers:?}"
    );
    assert_eq!(snapshot_podman(), podman_before, "nothing else changed");
    reset_host();
}
