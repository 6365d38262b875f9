//! evi-state's users, and how evi-install speaks to Valkey as its own user.
//!
//! Two users, kept in Valkey's ACL file on the data volume (see
//! `templates/container/evi-state-start.sh`):
//! - `default`: the clients' user, reached with the seed guide's
//!   `VALKEY_URL=redis://:PASSWORD@evi-state:6379`. It may run only what the
//!   guide's code paths use, on the guide's key namespaces and channel
//!   ([`DEFAULT_USER_RULES`]).
//! - `evi-admin`: evi-install's own user (readiness, `status`, `backup`,
//!   `restore`, the rotation's ACL changes), with its own password in the
//!   [`ADMIN_SECRET`](crate::model::ADMIN_SECRET) secret, mounted into evi-state
//!   alone.
//!
//! Valkey's ACL rules are applied left to right
//! (<https://valkey.io/topics/acl/>): the categories first, then `-@dangerous`
//! takes back whatever they hold that is administrative (`CLIENT KILL`/`LIST`/
//! `PAUSE`, and so on), then the few single commands are added back.

/// The rules of `default`, the clients' user:
/// - keys: `cache:*` (the guide's `cache:db:*` entries), `op:*` and `stream:*`;
/// - channels: `cache:*` (the guide's `cache:invalidated`);
/// - commands: strings and counters, hashes, streams and consumer groups,
///   pub/sub, transactions, connection commands (`AUTH`, `HELLO`, `PING`,
///   `SELECT`, `CLIENT SETNAME`/`SETINFO`), key expiry and deletion, `INFO`
///   (ioredis' ready check sends it on every connect) and `ACL WHOAMI`.
///
/// Refused with `NOPERM`: everything in `@dangerous` and `@admin` (`FLUSHALL`,
/// `FLUSHDB`, `CONFIG`, `ACL` but `WHOAMI`, `SHUTDOWN`, `DEBUG`, `MODULE`,
/// `SAVE`, `BGSAVE`, `BGREWRITEAOF`, `REPLICAOF`, `MONITOR`, `CLIENT
/// KILL`/`PAUSE`/`LIST`, `KEYS`, `MIGRATE`, `SWAPDB`, ...), scripting and
/// functions, and every key or channel outside the namespaces above. (`DEBUG`
/// and `MODULE` Valkey already refuses to every user, before the ACL check,
/// while `enable-debug-command`/`enable-module-command` are `no`, the default.)
pub const DEFAULT_USER_RULES: &str = "resetkeys ~cache:* ~op:* ~stream:* \
     resetchannels &cache:* nocommands \
     +@string +@hash +@stream +@pubsub +@transaction +@connection \
     +del +unlink +exists +type +expire +pexpire +expireat +pexpireat +persist \
     +ttl +pttl +expiretime +pexpiretime \
     -@dangerous -@admin -@scripting \
     +info +acl|whoami";

/// The environment variable through which evi-state's start script gets
/// [`DEFAULT_USER_RULES`].
pub const RULES_ENV: &str = "EVI_DEFAULT_USER_RULES";

/// A shell function `cli` that runs valkey-cli in evi-state as `evi-admin`:
/// the password is read from the mounted admin secret into valkey-cli's
/// environment (`REDISCLI_AUTH`), never into an argument. `-e` makes an error
/// reply a failed exit. Every script that evi-install runs in evi-state
/// starts with it.
pub const ADMIN_CLI: &str = "cli() { REDISCLI_AUTH=\"$(cat /run/secrets/evi-admin-password)\" \
     valkey-cli --no-auth-warning --user evi-admin -e \"$@\"; }";

/// An authenticated PING as `evi-admin`: evi-state's readiness check. Only a
/// PING that authenticates tells a serving server from a loading one, which
/// answers `-LOADING` (an unauthenticated one answers `-NOAUTH` either way).
pub const PING_SCRIPT: &str = "REDISCLI_AUTH=\"$(cat /run/secrets/evi-admin-password)\" \
     exec valkey-cli --no-auth-warning --user evi-admin -e ping";

/// `up`'s readiness check: [`PING_SCRIPT`]'s PING, and while the server
/// answers `-LOADING` (it is reading its data set at start), its progress
/// from `INFO persistence` (`loading_loaded_perc`, `loading_eta_seconds`;
/// INFO is one of the commands Valkey serves while loading). Exit 0 on PONG.
pub const READY_SCRIPT: &str = include_str!("../templates/container/ready.sh");

/// `ADMIN_CLI`, then `body`.
pub fn admin_script(body: &str) -> String {
    format!("{ADMIN_CLI}\n{body}")
}

/// A Valkey user as `status` shows it: from one line of `ACL LIST`, with the
/// password hashes counted and left out (they never reach any output).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub name: String,
    pub enabled: bool,
    /// How many passwords it accepts (two in the middle of a rotation).
    pub passwords: usize,
    /// Its keys, channels and commands, as Valkey reports them.
    pub rules: String,
}

/// Appended to a script after `ADMIN_CLI`: one `evi_user:` line per user, the
/// SHA-256 hashes already replaced by a bare `#` inside the container.
pub const USERS_SCRIPT: &str = "cli ACL LIST | sed -E 's/ #[0-9a-f]{64}/ #/g; s/^/evi_user:/'";

/// One line of `ACL LIST` (hashes already reduced to `#`).
pub fn parse_user(line: &str) -> Option<User> {
    let mut words = line.split_whitespace();
    if words.next()? != "user" {
        return None;
    }
    let name = words.next()?.to_string();
    let mut user = User {
        name,
        enabled: false,
        passwords: 0,
        rules: String::new(),
    };
    let mut rules = Vec::new();
    for w in words {
        match w {
            "on" => user.enabled = true,
            "off" => user.enabled = false,
            "sanitize-payload" | "skip-sanitize-payload" => {}
            w if w.starts_with('#') => user.passwords += 1,
            w => rules.push(w),
        }
    }
    user.rules = rules.join(" ");
    Some(user)
}

/// The rotation helper's script (`templates/container/acl-change.sh`).
pub const ACL_CHANGE_SCRIPT: &str = include_str!("../templates/container/acl-change.sh");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_cli_reads_the_password_only_into_the_environment() {
        assert!(ADMIN_CLI.contains("REDISCLI_AUTH=\"$(cat /run/secrets/evi-admin-password)\""));
        assert!(!ADMIN_CLI.contains("-a "));
        assert!(admin_script("cli PING").ends_with("\ncli PING"));
    }

    /// Every script under templates/container/ (embedded in the binary) is valid
    /// POSIX shell: `sh -n` on each file, and on each with `ADMIN_CLI` before it.
    #[test]
    fn every_container_script_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/container");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sh") {
                let text = std::fs::read_to_string(&path).unwrap();
                for script in [text.clone(), admin_script(&text)] {
                    let out = std::process::Command::new("sh")
                        .args(["-n", "-c", &script])
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "{}: {}",
                        path.display(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                checked += 1;
            }
        }
        assert!(
            checked >= 7,
            "only {checked} scripts found in {}",
            dir.display()
        );
    }

    #[test]
    fn acl_list_lines_read_as_users_without_hashes() {
        let u = parse_user(
            "user default on sanitize-payload # # ~cache:* resetchannels &cache:* -@all +@string",
        )
        .unwrap();
        assert_eq!(
            (u.name.as_str(), u.enabled, u.passwords, u.rules.as_str()),
            (
                "default",
                true,
                2,
                "~cache:* resetchannels &cache:* -@all +@string"
            )
        );
        assert_eq!(parse_user("not a user"), None);
        assert!(USERS_SCRIPT.contains("[0-9a-f]{64}"));
    }

    #[test]
    fn the_rules_refuse_what_a_client_must_never_run() {
        // Order matters in Valkey's ACL rules: the categories that hold
        // something administrative are taken back after every grant of a category.
        let words: Vec<&str> = DEFAULT_USER_RULES.split_whitespace().collect();
        let last_grant = words.iter().rposition(|w| w.starts_with("+@")).unwrap();
        let revoke = words.iter().position(|w| *w == "-@dangerous").unwrap();
        assert!(revoke > last_grant);
        assert!(!words.contains(&"+@all") && !words.contains(&"allkeys"));
        for w in &words[revoke..] {
            assert!(!w.starts_with("+@"), "{w}");
        }
    }
}
