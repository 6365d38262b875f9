//! `export kubernetes` without a cluster: the manifests, pinned by snapshots,
//! checked by strict schema validation (`kubernetes-validate`, which
//! `scripts/test.sh` installs), the Secret file, and bad input.
//! `kube_play.rs` runs the same manifests for real on Podman 5.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::Evi;

/// The Kubernetes versions every document must validate against: the oldest
/// release still supported when this was written, and the newest the
/// validator knows (`kubernetes-validate==1.37.0`, pinned in scripts/test.sh).
pub const KUBERNETES_VERSIONS: [&str; 2] = ["1.35.0", "1.37.0"];

const APPS: &str = "services:\n  evi-be: { image: registry.example/evi-be:1, command: [node, server.js] }\n  evi-worker: { image: registry.example/evi-be:1, command: [node, worker.js] }\n";

fn site(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("evi.yaml"), yaml).unwrap();
    dir
}

fn export(dir: &tempfile::TempDir, args: &[&str]) -> crate::support::Output {
    Evi::new(dir.path())
        .args(["export", "kubernetes"])
        .args(args)
        .run()
}

/// The temp dir's path in the rendered config header, made stable.
fn stable(dir: &tempfile::TempDir, text: &str) -> String {
    text.replace(&dir.path().display().to_string(), "[DIR]")
}

/// The validator `scripts/test.sh` installs. Missing is a loud failure.
pub fn validator() -> PathBuf {
    let path = std::env::var_os("EVI_TEST_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/kubernetes-validate/bin/kubernetes-validate")
        });
    assert!(
        path.is_file(),
        "kubernetes-validate not found at {}: run the tests with `scripts/test.sh`, which installs it \
         (pip install kubernetes-validate==1.37.0 into target/kubernetes-validate), or set EVI_TEST_KUBERNETES_VALIDATE",
        path.display()
    );
    path
}

/// Runs the validator strictly on `files` for one Kubernetes version.
pub fn validate(files: &[PathBuf], version: &str) -> (bool, String) {
    let out = Command::new(validator())
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn help_of_export_kubernetes() {
    let dir = site("");
    let out = Evi::new(dir.path())
        .args(["export", "kubernetes", "--help"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!("help_export_kubernetes", out.stdout);
}

/// The whole export as one stream, and the notes on stderr.
#[test]
fn export_to_stdout() {
    let dir = site(APPS);
    let out = export(&dir, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!("kubernetes_stdout", stable(&dir, &out.stdout));
    insta::assert_snapshot!("kubernetes_stderr", out.stderr);
    // Byte for byte the same on every run.
    assert_eq!(export(&dir, &[]).stdout, out.stdout);
    // The ConfigMap holds exactly what `render` prints.
    let rendered = Evi::new(dir.path()).args(["render"]).run().stdout;
    let indented: String = rendered
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("    {l}\n")
            }
        })
        .collect();
    assert!(
        out.stdout
            .contains(&format!("  valkey.conf: |\n{indented}")),
        "the ConfigMap is not the rendered valkey.conf"
    );
}

/// `--out DIR`: one file per resource, in apply order, the same documents
/// as the stream; with a namespace and another valkey user.
#[test]
fn export_to_a_directory() {
    let dir = site(APPS);
    let out = export(
        &dir,
        &[
            "--out",
            "k8s",
            "--namespace",
            "evi-prod",
            "--valkey-user",
            "100:101",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let k8s = dir.path().join("k8s");
    let files = yaml_files(&k8s);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "01-configmap-evi-state-config.yaml",
            "02-persistentvolumeclaim-evi-state-data.yaml",
            "03-deployment-evi-state.yaml",
            "04-service-evi-state.yaml",
            "05-networkpolicy-evi-state.yaml",
            "06-deployment-evi-be.yaml",
            "07-deployment-evi-worker.yaml",
        ]
    );
    let stream = export(
        &dir,
        &["--namespace", "evi-prod", "--valkey-user", "100:101"],
    )
    .stdout;
    let joined: String = files
        .iter()
        .map(|f| format!("---\n{}", fs::read_to_string(f).unwrap()))
        .collect();
    assert_eq!(joined, stream, "the files are the stream's documents");
    for f in &files {
        assert_eq!(fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o644);
        assert!(
            fs::read_to_string(f)
                .unwrap()
                .contains("\n  namespace: evi-prod\n"),
            "{}",
            f.display()
        );
    }
    let state = fs::read_to_string(k8s.join("03-deployment-evi-state.yaml")).unwrap();
    for line in ["runAsUser: 100", "runAsGroup: 101", "fsGroup: 101"] {
        assert!(state.contains(line), "{line}");
    }
    insta::assert_snapshot!("kubernetes_dir_stderr", stable(&dir, &out.stderr));
}

/// Exporting again after evi-worker left the settings removes its file,
/// and only files an export wrote.
#[test]
fn a_second_export_removes_what_the_settings_dropped_and_nothing_else() {
    let dir = site(APPS);
    // The Secret file too may sit among the manifests; it is not an export's own file.
    let out = export(
        &dir,
        &["--out", "k8s", "--with-secret", "k8s/00-secret.yaml"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let k8s = dir.path().join("k8s");
    fs::write(k8s.join("99-mine.yaml"), "apiVersion: v1\n").unwrap();
    fs::write(k8s.join("notes.txt"), "mine\n").unwrap();
    fs::write(
        dir.path().join("evi.yaml"),
        "services: { evi-be: { image: be:2 } }\n",
    )
    .unwrap();
    let out = export(&dir, &["--out", "k8s"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let names: Vec<String> = fs::read_dir(&k8s)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        names,
        [
            "00-secret.yaml",
            "01-configmap-evi-state-config.yaml",
            "02-persistentvolumeclaim-evi-state-data.yaml",
            "03-deployment-evi-state.yaml",
            "04-service-evi-state.yaml",
            "05-networkpolicy-evi-state.yaml",
            "06-deployment-evi-be.yaml",
            "99-mine.yaml",
            "notes.txt",
        ]
    );
    assert!(fs::read_to_string(k8s.join("06-deployment-evi-be.yaml"))
        .unwrap()
        .contains("image: be:2"));
}

/// Every document, the Secret included, passes strict schema validation for
/// each pinned Kubernetes version, across settings that change what is exported.
#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn every_exported_document_passes_strict_validation() {
    let variants: &[(&str, &str, &[&str])] = &[
        ("apps", APPS, &[]),
        ("namespaced", APPS, &["--namespace", "evi", "--valkey-user", "100:101"]),
        ("no_worker_no_command", "services: { evi-be: { image: be } }\n", &[]),
        (
            "tuned",
            "services: { evi-state: { image: reg.example/valkey:8.1 }, evi-be: { image: be }, evi-worker: { image: w, command: [python3, w.py] } }\nvalkey: { maxmemory: 3gb, maxmemory_policy: noeviction, appendonly: false, appendfsync: always, auto_aof_rewrite_percentage: 50, auto_aof_rewrite_min_size: 128mb }\n",
            &[],
        ),
    ];
    let mut checked = 0;
    for (name, yaml, args) in variants {
        let dir = site(yaml);
        let mut all: Vec<&str> = vec!["--out", "k8s", "--with-secret", "secret.yaml"];
        all.extend_from_slice(args);
        let out = export(&dir, &all);
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        let mut files = yaml_files(&dir.path().join("k8s"));
        files.push(dir.path().join("secret.yaml"));
        for version in KUBERNETES_VERSIONS {
            let (ok, report) = validate(&files, version);
            assert!(ok, "{name}: not valid for Kubernetes {version}:\n{report}");
            // One "passed" line per document: nothing was left unchecked.
            assert_eq!(
                report.matches(" passed ").count(),
                files.len(),
                "{name} {version}:\n{report}"
            );
            checked += files.len();
        }
    }
    // 7 + 7 + 6 + 7 documents, each against two versions.
    assert_eq!(checked, 2 * (8 + 8 + 7 + 8));
}

/// The validator is strict: an unknown field or a wrong type fails it.
/// (Without this, a validator that accepted anything would pass the test above.)
#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn the_validator_rejects_what_a_cluster_would() {
    let dir = site(APPS);
    assert_eq!(export(&dir, &["--out", "k8s"]).code, 0);
    let k8s = dir.path().join("k8s");
    let state = k8s.join("03-deployment-evi-state.yaml");
    let good = fs::read_to_string(&state).unwrap();
    for (what, bad) in [
        (
            "an unknown field",
            good.replace("  strategy:\n", "  strategee:\n"),
        ),
        ("a wrong type", good.replace("replicas: 1", "replicas: one")),
    ] {
        fs::write(&state, bad).unwrap();
        let (ok, report) = validate(std::slice::from_ref(&state), KUBERNETES_VERSIONS[0]);
        assert!(!ok, "{what} passed validation:\n{report}");
    }
}

/// The password is only in the `--with-secret` file, which is new and 0600.
#[test]
fn only_the_secret_file_holds_the_password() {
    let dir = site(APPS);
    let out = export(&dir, &["--out", "k8s", "--with-secret", "secret.yaml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let secret_path = dir.path().join("secret.yaml");
    let secret = fs::read_to_string(&secret_path).unwrap();
    assert_eq!(
        fs::metadata(&secret_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let value: serde_json::Value = serde_yaml_value(&secret);
    let password = value["stringData"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(password.len(), 48);
    assert!(password.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(
        value["stringData"]["valkey-url"].as_str().unwrap(),
        format!("redis://:{password}@evi-state:6379")
    );
    assert!(!out.all().contains(&password), "the password is printed");
    for f in yaml_files(&dir.path().join("k8s")) {
        assert!(
            !fs::read_to_string(&f).unwrap().contains(&password),
            "{}",
            f.display()
        );
    }
    insta::assert_snapshot!("kubernetes_with_secret_stderr", out.stderr);

    // With the manifests on stdout, the password is still only in the file.
    let out = export(&dir, &["--with-secret", "second.yaml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let second = fs::read_to_string(dir.path().join("second.yaml")).unwrap();
    let second_pw = serde_yaml_value(&second)["stringData"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(second_pw, password, "each export makes a new password");
    assert!(!out.all().contains(&second_pw));

    // An existing file is never overwritten: it may hold the password in use.
    let out = export(&dir, &["--with-secret", "secret.yaml"]);
    assert_eq!(out.code, 1);
    assert_eq!(fs::read_to_string(&secret_path).unwrap(), secret);
    assert_eq!(out.stdout, "", "nothing exported");
}

fn serde_yaml_value(text: &str) -> serde_json::Value {
    serde_yaml::from_str(text).expect("the Secret file is YAML")
}

/// Bad input: one line `error: <problem>; <fix>`, exit 1, nothing written.
#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let dir = site(APPS);
    fs::write(dir.path().join("a-file"), "x").unwrap();
    fs::write(dir.path().join("taken.yaml"), "mine").unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("namespace_uppercase", &["--namespace", "EVI"]),
        (
            "namespace_underscore",
            &["--namespace", "evi_prod", "--out", "k8s"],
        ),
        (
            "out_is_a_file",
            &["--out", "a-file", "--with-secret", "s.yaml"],
        ),
        (
            "secret_file_exists",
            &["--out", "k8s", "--with-secret", "taken.yaml"],
        ),
        (
            "secret_dir_missing",
            &["--out", "k8s", "--with-secret", "nowhere/s.yaml"],
        ),
        (
            "valkey_user_not_numbers",
            &["--valkey-user", "valkey", "--out", "k8s"],
        ),
        ("valkey_user_root", &["--valkey-user", "0:0"]),
    ];
    for (name, args) in cases {
        let out = export(&dir, args);
        assert_eq!(out.code, 1, "{name}: {}", out.all());
        assert_eq!(out.stdout, "", "{name}");
        assert_eq!(out.stderr.lines().count(), 1, "{name}: {}", out.stderr);
        assert!(
            out.stderr.starts_with("error: ") && out.stderr.contains("; "),
            "{name}: {}",
            out.stderr
        );
        assert!(!dir.path().join("k8s").exists(), "{name}: wrote the export");
        assert!(
            !dir.path().join("s.yaml").exists(),
            "{name}: wrote the secret"
        );
        insta::assert_snapshot!(format!("export_error_{name}"), out.stderr);
    }
    assert_eq!(
        fs::read_to_string(dir.path().join("taken.yaml")).unwrap(),
        "mine"
    );

    // evi-be is required, as for `up`.
    let dir = site("");
    let out = export(&dir, &["--out", "k8s"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    insta::assert_snapshot!(
        "export_error_missing_backend_image",
        stable(&dir, &out.stderr)
    );
}
