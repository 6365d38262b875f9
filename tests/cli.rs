//! The command line without a container engine: help, rendering, and the full
//! text of every settings error, pinned by snapshots.

use std::fs;

use crate::support::Evi;

fn evi_in(dir: &tempfile::TempDir) -> Evi {
    Evi::new(dir.path())
}

#[test]
fn help_of_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("help_main", vec!["--help"]),
        ("help_render", vec!["render", "--help"]),
        ("help_up", vec!["up", "--help"]),
        ("help_down", vec!["down", "--help"]),
        ("help_rotate", vec!["rotate-secret", "--help"]),
        ("help_status", vec!["status", "--help"]),
    ] {
        let out = evi_in(&dir).args(&args).run();
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        insta::assert_snapshot!(name, out.stdout);
    }
}

#[test]
fn version_and_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = evi_in(&dir).args(["--version"]).run();
    assert_eq!(
        (out.code, out.stdout.trim()),
        (0, concat!("evi-install ", env!("CARGO_PKG_VERSION")))
    );
    let out = evi_in(&dir).args(["up", "--no-such-flag"]).run();
    assert_eq!(out.code, 64, "usage errors exit 64");
    assert!(
        out.stderr.contains("unexpected argument '--no-such-flag'"),
        "{}",
        out.stderr
    );
    let out = evi_in(&dir).args(["up", "--out", "x.json"]).run();
    assert_eq!(out.code, 64, "--out needs --dry-run: {}", out.stderr);
}

#[test]
fn default_render() {
    let dir = tempfile::tempdir().unwrap();
    let out = evi_in(&dir).args(["render"]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "");
    insta::assert_snapshot!("render_default", out.stdout);
    // Byte for byte the same on every run.
    assert_eq!(evi_in(&dir).args(["render"]).run().stdout, out.stdout);
}

#[test]
fn render_with_every_valkey_key_overridden() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("custom.yaml"),
        "valkey:\n  maxmemory: 512mb\n  maxmemory_policy: allkeys-lfu\n  appendonly: false\n  appendfsync: always\n  auto_aof_rewrite_percentage: 50\n  auto_aof_rewrite_min_size: 128mb\n",
    )
    .unwrap();
    let out = evi_in(&dir)
        .args(["--config", "custom.yaml", "render"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out
        .stdout
        .replace(&dir.path().display().to_string(), "[DIR]");
    insta::assert_snapshot!("render_overridden", text);
}

#[test]
fn implicit_evi_yaml_and_env_config_are_read() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("evi.yaml"),
        "valkey: { maxmemory: 256mb }\n",
    )
    .unwrap();
    assert!(evi_in(&dir)
        .args(["render"])
        .run()
        .stdout
        .contains("\nmaxmemory 256mb\n"));
    fs::write(
        dir.path().join("other.yaml"),
        "valkey: { maxmemory: 128mb }\n",
    )
    .unwrap();
    let out = evi_in(&dir)
        .env("EVI_CONFIG", "other.yaml")
        .args(["render"])
        .run();
    assert!(
        out.stdout.contains("\nmaxmemory 128mb\n"),
        "EVI_CONFIG wins over ./evi.yaml"
    );
    let out = evi_in(&dir)
        .env("EVI_CONFIG", "other.yaml")
        .args(["--config", "evi.yaml", "render"])
        .run();
    assert!(
        out.stdout.contains("\nmaxmemory 256mb\n"),
        "--config wins over EVI_CONFIG"
    );
}

#[test]
fn render_check_compares_with_the_installed_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let conf = state.join("valkey/valkey.conf");
    let check = || {
        evi_in(&dir)
            .args(["--state-dir", state.to_str().unwrap(), "render", "--check"])
            .run()
    };

    let out = check();
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("does not exist"), "{}", out.stdout);
    assert!(!state.exists(), "render --check never touches the host");

    let rendered = evi_in(&dir).args(["render"]).run().stdout;
    fs::create_dir_all(conf.parent().unwrap()).unwrap();
    fs::write(&conf, &rendered).unwrap();
    assert_eq!(check().code, 0);

    fs::write(&conf, rendered.replace("maxmemory 1gb", "maxmemory 2gb")).unwrap();
    let out = check();
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("-maxmemory 2gb\n+maxmemory 1gb\n"),
        "{}",
        out.stdout
    );
}

/// The full text of each class of settings error, pinned.
#[test]
fn settings_errors() {
    let cases: &[(&str, &[u8])] = &[
        ("unknown_key", b"valkey:\n  maxmemroy: 1gb\n"),
        ("unknown_top_level_key", b"netwrok: evi-net\n"),
        ("wrong_type", b"valkey:\n  appendonly: maybe\n"),
        (
            "wrong_type_command",
            b"services:\n  evi-be:\n    image: app\n    command: run\n",
        ),
        ("bad_size", b"valkey:\n  maxmemory: 1gx\n"),
        ("bad_policy", b"valkey:\n  maxmemory_policy: volatile-lr\n"),
        ("bad_policy_far", b"valkey:\n  maxmemory_policy: random\n"),
        ("zero_maxmemory", b"valkey:\n  maxmemory: 0\n"),
        ("malformed_yaml", b"valkey:\n  maxmemory: \"1gb\n"),
        ("malformed_flow", b"valkey:\n  maxmemory: [1gb\n"),
        ("not_a_mapping", b"- one\n- two\n"),
        ("not_utf8", b"valkey:\n  maxmemory: \xff\xfe\n"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in cases {
        fs::write(dir.path().join("evi.yaml"), content).unwrap();
        let out = evi_in(&dir).args(["--config", "evi.yaml", "render"]).run();
        assert_eq!(out.code, 1, "{name}");
        assert_eq!(out.stdout, "", "{name}: nothing on stdout");
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "{name}: one line: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{name}");
        insta::assert_snapshot!(format!("error_{name}"), out.stderr);
    }
}

#[test]
fn unreadable_settings_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = evi_in(&dir)
        .args(["--config", "missing.yaml", "render"])
        .run();
    assert_eq!(out.code, 1);
    insta::assert_snapshot!("error_missing_file", out.stderr);
    fs::create_dir(dir.path().join("adir")).unwrap();
    let out = evi_in(&dir).args(["--config", "adir", "render"]).run();
    assert_eq!(out.code, 1);
    insta::assert_snapshot!("error_file_is_directory", out.stderr);
}

#[test]
fn up_requires_an_evi_be_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = evi_in(&dir).args(["up", "--dry-run"]).run();
    assert_eq!(out.code, 1);
    insta::assert_snapshot!("error_missing_backend_image", out.stderr);
}

#[test]
fn world_writable_settings_file_warns() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evi.yaml");
    fs::write(&path, "").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    let out = evi_in(&dir).args(["render"]).run();
    assert_eq!(out.code, 0);
    assert!(
        out.stderr.starts_with("warning: settings file"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("chmod o-w"), "{}", out.stderr);
}
