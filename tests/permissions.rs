//! Least privilege, from the clients' side: with their own `VALKEY_URL`, evi-be
//! and evi-worker can run what the seed guide's code runs and nothing
//! administrative, and nothing they try changes the data.

use crate::support::*;

/// Everything administrative or dangerous a stolen `VALKEY_URL` could try,
/// one command a line, as valkey-cli reads them from stdin.
const FORBIDDEN: &[&str] = &[
    "FLUSHALL",
    "FLUSHDB",
    "CONFIG GET maxmemory",
    "CONFIG SET dir /tmp",
    "CONFIG SET dbfilename evil.rdb",
    "CONFIG RESETSTAT",
    "ACL SETUSER default >mine",
    "ACL LIST",
    "ACL SAVE",
    "SHUTDOWN NOSAVE",
    "DEBUG SLEEP 0",
    "MODULE LIST",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "REPLICAOF 127.0.0.1 6380",
    "SLAVEOF NO ONE",
    "MONITOR",
    "CLIENT KILL TYPE normal",
    "CLIENT PAUSE 1000",
    "CLIENT LIST",
    "KEYS *",
    "MIGRATE 127.0.0.1 6380 cache:db:settings 0 1000",
    "SWAPDB 0 1",
    "FUNCTION FLUSH",
    "SCRIPT FLUSH",
    "EVAL \"return 1\" 0",
    // Keys and channels outside the guide's namespaces.
    "SET elsewhere 1",
    "GET elsewhere",
    "PUBLISH elsewhere hello",
];

/// What the guide's code runs, with the answer each must give.
const ALLOWED: &[(&str, &str)] = &[
    ("PING", "PONG"),
    ("ACL WHOAMI", "default"),
    ("SET op:ratelimit:probe 1 EX 60", "OK"),
    ("INCR op:ratelimit:probe", "2"),
    ("HSET cache:db:user:probe name x", "1"),
    ("EXPIRE cache:db:user:probe 300", "1"),
    ("DEL cache:db:user:probe", "1"),
    ("XADD stream:tasks:probe * type t", ""),
    ("XLEN stream:tasks:probe", "1"),
    ("PUBLISH cache:invalidated settings", "0"),
];

/// Runs `lines` through valkey-cli in `client`, authenticated with the
/// client's own VALKEY_URL (the password reaches valkey-cli through its
/// environment); one answer a line.
fn client_session(client: &str, lines: &[&str]) -> Vec<String> {
    let input = lines.join("\n") + "\n";
    let out = podman_stdin(
        &[
            "exec",
            "-i",
            client,
            "sh",
            "-c",
            "pw=${VALKEY_URL#redis://:}; REDISCLI_AUTH=${pw%@*} exec valkey-cli --no-auth-warning -h evi-state",
        ],
        &input,
    );
    assert_eq!(out.code, 0, "{client}: {}", out.all());
    // valkey-cli prints an empty line after an error reply in this mode.
    out.stdout
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Every key with its type, TTL presence and DUMP, hashed: the whole data set.
fn data_digest() -> String {
    let script = format!(
        "{}\ncli --scan | sort | while IFS= read -r k; do printf '%s %s ' \"$k\" \"$(cli TYPE \"$k\")\"; cli --no-raw DUMP \"$k\"; done | sha256sum; cli DBSIZE",
        ADMIN_CLI_FN
    );
    podman_ok(&["exec", "evi-state", "sh", "-c", &script])
        .trim()
        .to_string()
}

const ADMIN_CLI_FN: &str = "cli() { REDISCLI_AUTH=\"$(cat /run/secrets/evi-admin-password)\" valkey-cli --no-auth-warning --user evi-admin \"$@\"; }";

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn clients_can_run_the_guides_commands_and_nothing_administrative() {
    let _lock = fresh_host();
    let site = Site::new("");
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    state_cli("hset cache:db:settings theme dark");
    state_cli("xgroup create stream:tasks:email workers 0 mkstream");
    state_cli("xadd stream:tasks:email '*' type welcome");
    state_cli("set op:plain value");

    for client in ["evi-be", "evi-worker"] {
        let before = data_digest();
        let answers = client_session(client, FORBIDDEN);
        // DEBUG and MODULE are refused before the ACL check, to every user, by
        // Valkey's own `enable-debug-command`/`enable-module-command no`
        // (its "protected" commands); every other one by the ACL rules.
        let refused = FORBIDDEN
            .iter()
            .zip(&answers)
            .filter(|(command, answer)| {
                answer.starts_with("NOPERM")
                    || ((command.starts_with("DEBUG") || command.starts_with("MODULE"))
                        && answer.contains("command not allowed"))
            })
            .count();
        assert_eq!(
            refused,
            FORBIDDEN.len(),
            "{client}: every forbidden command is refused with NOPERM:\n{}",
            FORBIDDEN
                .iter()
                .zip(&answers)
                .map(|(c, a)| format!("{c} -> {a}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert_eq!(data_digest(), before, "{client}: the data changed");
        assert_eq!(
            state_cli("ping"),
            "PONG",
            "{client}: evi-state still serves"
        );

        let commands: Vec<&str> = ALLOWED.iter().map(|(c, _)| *c).collect();
        let answers = client_session(client, &commands);
        for ((command, want), got) in ALLOWED.iter().zip(&answers) {
            if want.is_empty() {
                assert!(
                    !got.starts_with("NOPERM") && !got.starts_with("ERR"),
                    "{client}: {command} -> {got}"
                );
            } else {
                assert_eq!(got, want, "{client}: {command}");
            }
        }
        state_cli("del stream:tasks:probe op:ratelimit:probe");
    }

    // status shows each user with its rules and how many passwords it accepts,
    // never a password or its hash, and each client authenticating as `default`.
    let status = site.evi().args(["status"]).run();
    assert_eq!(status.code, 0, "{}", status.all());
    assert!(
        status
            .stdout
            .contains("user     default (on, 1 password): ~cache:* ~op:* ~stream:*"),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("user     evi-admin (on, 1 password): ~* &* +@all"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains(
            "evi-be     reaches evi-state: PONG with its VALKEY_URL, as the user it names"
        ),
        "{}",
        status.stdout
    );
    let hex64 = status
        .all()
        .split(|c: char| !c.is_ascii_hexdigit())
        .any(|w| w.len() == 64);
    assert!(!hex64, "a hash in status' output: {}", status.all());
}

/// evi-state's container id and when it started: the same after a change made
/// in place.
fn state_identity() -> String {
    podman_ok(&[
        "inspect",
        "evi-state",
        "--format",
        "{{.Id}} {{.State.StartedAt}}",
    ])
    .trim()
    .to_string()
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs the real Podman (or the schema validator) that scripts/test.sh sets up"
)]
fn the_clients_rules_follow_the_settings_in_place_and_drift_is_repaired() {
    let _lock = fresh_host();
    let site = Site::new("");
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    let started = state_identity();
    // The rules a first start gives are what the settings ask: nothing to set.
    let again = site.up(&[]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    let wider = [
        "SCAN 0 MATCH session:* COUNT 10",
        "SET session:probe 1",
        "SORT_RO op:list",
    ];
    for answer in client_session("evi-be", &wider) {
        assert!(answer.starts_with("NOPERM"), "{answer}");
    }

    // Widened in the settings: set in place, evi-state never restarted, the
    // clients can run what was added and still nothing administrative.
    site.write_settings(
        "valkey:\n  client_access:\n    commands: [scan, sort_ro]\n    keys: ['session:*']\n",
    );
    let plan = site.up(&["--dry-run"]);
    assert!(
        plan.stdout.contains("user default") && plan.stdout.contains("no restart"),
        "the plan shows the rules' update: {}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("evi-state  ("), "{}", plan.stdout);
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    assert_eq!(state_identity(), started, "evi-state was restarted");
    for client in ["evi-be", "evi-worker"] {
        let answers = client_session(client, &wider);
        assert!(
            answers.iter().all(|a| !a.starts_with("NOPERM")),
            "{client}: {answers:?}"
        );
        let refused = client_session(client, &["FLUSHALL", "CONFIG GET dir", "KEYS *"]);
        assert!(
            refused.iter().all(|a| a.starts_with("NOPERM")),
            "{refused:?}"
        );
    }
    let again = site.up(&[]);
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);

    // Changed on the server (drift): status warns, up puts the settings' rules back
    // in place, and they survive a restart of evi-state (the ACL file has them).
    state_cli("ACL SETUSER default +flushall");
    let status = site.evi().args(["status"]).run();
    assert!(
        status
            .all()
            .contains("has other rules than the settings give it"),
        "{}",
        status.all()
    );
    let up = site.up(&[]);
    assert_eq!(up.code, 0, "{}", up.all());
    assert_eq!(state_identity(), started, "evi-state was restarted");
    assert!(client_session("evi-be", &["FLUSHALL"])[0].starts_with("NOPERM"));
    podman_ok(&["restart", "-t", "10", "evi-state"]);
    // `up` waits for evi-state; the rules it finds are the settings' (from the file).
    let after = site.up(&[]);
    assert_eq!(after.code, 0, "{}", after.all());
    assert!(after.stdout.contains("No changes."), "{}", after.stdout);
    let answers = client_session("evi-be", &["SET session:after-restart 1", "FLUSHALL"]);
    assert_eq!(answers[0], "OK", "{answers:?}");
    assert!(answers[1].starts_with("NOPERM"), "{answers:?}");
}
