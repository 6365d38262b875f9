//! The exported manifests, run for real: `podman kube play` on Podman 5.
//!
//! Podman 4.3's kube play cannot read a Secret through `secretKeyRef`
//! (podman#16269, fixed in 4.4), so these tests are `#[ignore]`d: a plain
//! `cargo test` and the Podman 4.3 lanes never select them, and
//! `scripts/test.sh` runs them in the Podman 5.4 lane alone with `--ignored`.
//! Each checks that the Podman it drives really is 5 or later, and fails
//! loudly otherwise.
//!
//! What kube play does with the export (verified on Podman 5.4.2):
//! - it runs the ConfigMap, the PersistentVolumeClaim (a named volume), the
//!   Secret and the three Deployments (one pod each, `NAME-pod`);
//! - it skips the Service and the NetworkPolicy without a word: it has
//!   neither. Clients still find `evi-state`, because the container in
//!   evi-state's pod is named `evi-state`, and a pod's containers are DNS
//!   aliases on a network with DNS (`--network`). Nothing enforces the
//!   policy: on one host, the network itself is the boundary, as with `up`;
//! - it ignores the readiness probe (this test sends the PING itself) and
//!   does not apply `fsGroup` to Secret files (hence their mode 0444).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// The network the pods join: a user network, so it has DNS.
const NETWORK: &str = "evi-kube-test";
const STATE: &str = "evi-state-pod-evi-state";
const BACKEND: &str = "evi-be-pod-evi-be";
const WORKER: &str = "evi-worker-pod-evi-worker";
const PODS: [&str; 3] = ["evi-state-pod", "evi-be-pod", "evi-worker-pod"];
/// The volumes kube play makes: the claim, and one each for the ConfigMap
/// and the Secret (which `kube down --force` leaves behind).
const VOLUMES: [&str; 3] = ["evi-state-data", "evi-state-config", "evi-state"];

fn require_podman5() {
    let version = podman_ok(&["version", "--format", "{{.Client.Version}}"]);
    let major: u32 = version
        .trim()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 5,
        "the kube play tests need Podman 5 (4.3's kube play cannot read secretKeyRef, podman#16269), \
         but {} is Podman {}: run them in scripts/test.sh's Podman 5.4 lane",
        podman_program(),
        version.trim()
    );
}

/// Removes whatever kube play made; runs before the test and when it ends.
struct Cleanup;

impl Cleanup {
    fn run() {
        let mut args = vec!["pod", "rm", "--force", "--ignore", "--time", "0"];
        args.extend(PODS);
        podman(&args);
        let mut args = vec!["volume", "rm", "--force"];
        args.extend(VOLUMES);
        podman(&args);
        podman(&["secret", "rm", "--ignore", "evi-state"]);
        podman(&["network", "rm", "--force", NETWORK]);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        Cleanup::run();
    }
}

/// valkey-cli in evi-be's pod, against `evi-state:6379` by name, the
/// password (if any) read from stdin into REDISCLI_AUTH by a shell built-in.
fn client_cli(password: Option<&str>, command: &str) -> Output {
    let script = format!(
        "IFS= read -r REDISCLI_AUTH || true; [ -n \"$REDISCLI_AUTH\" ] && export REDISCLI_AUTH; \
         exec valkey-cli -h evi-state -p 6379 --no-auth-warning {command}"
    );
    podman_stdin(
        &["exec", "-i", BACKEND, "sh", "-c", &script],
        &format!("{}\n", password.unwrap_or("")),
    )
}

/// The numeric `valkey` user of the image, as `--valkey-user` wants it.
fn valkey_user(image: &str) -> String {
    let ids = podman_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "sh",
        "-c",
        "echo $(id -u valkey):$(id -g valkey)",
    ]);
    ids.trim().to_string()
}

fn client_image() -> String {
    std::env::var("EVI_TEST_CLIENT_IMAGE").unwrap_or_else(|_| {
        panic!("EVI_TEST_CLIENT_IMAGE is not set: run the tests with `scripts/test.sh`, which builds the client image")
    })
}

/// The last stats line a client printed (examples/clients/stats.js).
fn last_stats(container: &str) -> Option<serde_json::Value> {
    podman(&["logs", container])
        .all()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|v| v["event"] == "stats")
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The export, played: evi-state with the rendered config and the Secret's
/// password, reached by name from a client pod; the real clients working
/// through `secretKeyRef`; data kept across `kube down` and `kube play`.
#[test]
#[ignore = "needs Podman 5: scripts/test.sh runs it in the Podman 5.4 lane with --ignored"]
fn kube_play_runs_the_export_and_keeps_the_data() {
    let waited = Instant::now();
    let _lock = host_lock();
    eprintln!("waited {:?} for the host lock", waited.elapsed());
    let test = test_podman();
    require_podman5();
    reset_host();
    Cleanup::run();
    let _cleanup = Cleanup;

    let clients = client_image();
    let site = tempfile::tempdir().unwrap();
    std::fs::write(
        site.path().join("evi.yaml"),
        format!(
            "services:\n  evi-state: {{ image: {} }}\n  \
             evi-be: {{ image: {clients}, command: [node, /opt/evi-clients/producer.js] }}\n  \
             evi-worker: {{ image: {clients}, command: [python3, /opt/evi-clients/worker.py] }}\n\
             valkey: {{ maxmemory: 200mb }}\n",
            test.valkey_image
        ),
    )
    .unwrap();
    let user = valkey_user(&test.valkey_image);
    let out = Evi::new(site.path())
        .args([
            "export",
            "kubernetes",
            "--out",
            "k8s",
            "--with-secret",
            "secret.yaml",
        ])
        .args(["--valkey-user", &user])
        .run();
    assert_eq!(out.code, 0, "{}", out.all());
    let secret = std::fs::read_to_string(site.path().join("secret.yaml")).unwrap();
    let secret: serde_json::Value = serde_yaml::from_str(&secret).unwrap();
    let password = secret["stringData"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    let admin = secret["stringData"]["admin-password"]
        .as_str()
        .unwrap()
        .to_string();
    let yaml = play_set(site.path());

    // Play: everything it supports is created; Service and NetworkPolicy are skipped.
    podman_ok(&["network", "create", NETWORK]);
    let started = Instant::now();
    let out = podman_stdin(&["kube", "play", "--network", NETWORK, "-"], &yaml);
    assert_eq!(out.code, 0, "kube play failed: {}", out.all());
    eprintln!("kube play took {:?}", started.elapsed());
    let pods = podman_ok(&["pod", "ps", "--format", "{{.Name}} {{.Status}}"]);
    for pod in PODS {
        assert!(
            pods.lines().any(|l| l == format!("{pod} Running")),
            "{pod} not running:\n{pods}"
        );
    }

    // Without the password: NOAUTH, by name from a client pod (no Service there:
    // the container's name is the alias).
    let out = until_reachable(|| client_cli(None, "ping"));
    assert_eq!(
        out.stdout.trim(),
        "NOAUTH Authentication required.",
        "{}",
        out.all()
    );
    // With the Secret's password: PONG; with another: WRONGPASS.
    let out = client_cli(Some(&password), "-e ping");
    assert_eq!((out.code, out.stdout.trim()), (0, "PONG"), "{}", out.all());
    let out = client_cli(Some("not-the-password"), "ping");
    assert!(out.all().contains("WRONGPASS"), "{}", out.all());

    // The rendered config, as `render` prints it, and in force.
    let rendered = Evi::new(site.path()).args(["render"]).run().stdout;
    assert_eq!(
        podman_ok(&["exec", STATE, "cat", "/usr/local/etc/valkey/valkey.conf"]),
        rendered
    );
    // The clients' user may not read the config; evi-install's own user may.
    let out = client_cli(Some(&password), "config get maxmemory");
    assert!(out.all().contains("NOPERM"), "{}", out.all());
    let out = client_cli(Some(&admin), "--user evi-admin config get maxmemory");
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["maxmemory", "209715200"],
        "{}",
        out.all()
    );
    // Valkey runs as the image's valkey user, and no argument holds the password.
    assert_eq!(
        podman_ok(&["exec", STATE, "sh", "-c", "echo $(id -u):$(id -g)"]).trim(),
        user
    );
    let cmdlines = podman_ok(&[
        "exec",
        STATE,
        "sh",
        "-c",
        "cat /proc/[0-9]*/cmdline | tr '\\0' ' '",
    ]);
    assert!(cmdlines.contains("valkey-server"), "{cmdlines}");
    assert!(
        !cmdlines.contains(&password),
        "the password is in a process's arguments"
    );
    assert!(!podman_ok(&["logs", STATE]).contains(&password));

    // The real clients got VALKEY_URL through secretKeyRef: they produce and consume.
    wait_for(
        "evi-be producing and evi-worker acknowledging",
        Duration::from_secs(10),
        || {
            let (be, worker) = (last_stats(BACKEND), last_stats(WORKER));
            matches!((be, worker), (Some(b), Some(w)) if b["produced"].as_u64() > Some(0) && w["acked"].as_u64() > Some(0))
        },
    );
    for client in [BACKEND, WORKER] {
        let stats = last_stats(client).unwrap();
        assert_eq!(stats["errors"]["auth"], 0, "{client}: {stats}");
    }

    // A client pod writes a stream entry.
    let marker = format!("kube-play-{}", std::process::id());
    let out = client_cli(
        Some(&password),
        &format!("-e xadd stream:tasks:kube-play '*' marker {marker}"),
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let id = out.stdout.trim().to_string();
    assert!(id.contains('-'), "not a stream ID: {id}");
    let before = client_cli(Some(&password), "-e xlen stream:tasks:email")
        .stdout
        .trim()
        .parse::<u64>()
        .unwrap();
    assert!(before > 0);

    // Down (the claim's volume stays) and play again: the entry is still there.
    let out = podman_stdin(&["kube", "down", "-"], &yaml);
    assert_eq!(out.code, 0, "kube down failed: {}", out.all());
    assert_eq!(
        podman_ok(&["pod", "ps", "-q"]).trim(),
        "",
        "kube down left pods"
    );
    assert_eq!(
        podman(&["volume", "exists", "evi-state-data"]).code,
        0,
        "kube down removed the data"
    );
    let out = podman_stdin(&["kube", "play", "--network", NETWORK, "-"], &yaml);
    assert_eq!(out.code, 0, "kube play (again) failed: {}", out.all());
    let out = until_reachable(|| {
        client_cli(
            Some(&password),
            &format!("xrange stream:tasks:kube-play {id} {id}"),
        )
    });
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        [id.as_str(), "marker", marker.as_str()],
        "the entry did not survive kube down + kube play: {}",
        out.all()
    );
    let after = client_cli(Some(&password), "-e xlen stream:tasks:email")
        .stdout
        .trim()
        .parse::<u64>()
        .unwrap();
    assert!(
        after >= before,
        "stream:tasks:email lost entries: {before} before, {after} after"
    );
    eprintln!("kept across kube down + kube play: entry {id}, stream:tasks:email {before} -> {after} entries");

    // The README's rotation by hand, steps 1 and 4: the ACL dual-password
    // commands as evi-admin, saved to the ACL file, fed to valkey-cli on its
    // stdin as `printf` would.
    let new = format!("Rotated{}", "x".repeat(41));
    let valkey_cli = ["exec", "-i", STATE, "valkey-cli"];
    let out = podman_stdin(
        &valkey_cli,
        &format!("AUTH evi-admin {admin}\nACL SETUSER default >{new}\nACL SAVE\n"),
    );
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["OK", "OK", "OK"],
        "{}",
        out.all()
    );
    for pw in [&password, &new] {
        assert_eq!(
            client_cli(Some(pw), "-e ping").stdout.trim(),
            "PONG",
            "both passwords work"
        );
    }
    let out = podman_stdin(
        &valkey_cli,
        &format!("AUTH evi-admin {admin}\nACL SETUSER default resetpass >{new}\nACL SAVE\n"),
    );
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["OK", "OK", "OK"],
        "{}",
        out.all()
    );
    assert!(
        client_cli(Some(&password), "ping")
            .all()
            .contains("WRONGPASS"),
        "the old password still works"
    );
    assert_eq!(client_cli(Some(&new), "-e ping").stdout.trim(), "PONG");
}

/// The Secret file and every manifest, as one YAML stream, in export order.
fn play_set(site: &Path) -> String {
    let mut files: Vec<_> = std::fs::read_dir(site.join("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut yaml = std::fs::read_to_string(site.join("secret.yaml")).unwrap();
    for f in files {
        yaml.push_str("---\n");
        yaml.push_str(&std::fs::read_to_string(f).unwrap());
    }
    yaml
}
