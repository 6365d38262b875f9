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
///
/// The settings can add to them (`valkey.client_access`, [`client_rules`]).
pub const DEFAULT_USER_RULES: &str = "resetkeys ~cache:* ~op:* ~stream:* \
     resetchannels &cache:* nocommands \
     +@string +@hash +@stream +@pubsub +@transaction +@connection \
     +del +unlink +exists +type +expire +pexpire +expireat +pexpireat +persist \
     +ttl +pttl +expiretime +pexpiretime \
     -@dangerous -@admin -@scripting \
     +info +acl|whoami";

/// The clients' user: the seed guide's URL has no user name.
pub const CLIENT_USER: &str = "default";

/// Commands that the settings can never give the clients, in any of their
/// subcommands: administration stays with `evi-admin` (but `acl|whoami`,
/// which the clients already have).
const ADMIN_COMMANDS: &[&str] = &[
    "flushall",
    "flushdb",
    "config",
    "acl",
    "shutdown",
    "debug",
    "module",
    "save",
    "bgsave",
    "bgrewriteaof",
    "replicaof",
    "slaveof",
    "monitor",
    "keys",
    "migrate",
    "swapdb",
    "failover",
    "sync",
    "psync",
    "cluster",
];

/// Commands with harmless and dangerous subcommands: refused as wholes (a
/// command named without a subcommand grants all of them), and by these
/// subcommands; their others can be given.
const ADMIN_SUBCOMMANDS: &[&str] = &[
    "client",
    "function",
    "script",
    "client|kill",
    "client|pause",
    "client|unpause",
    "client|list",
    "client|no-evict",
    "function|flush",
    "function|delete",
    "function|restore",
    "function|load",
    "script|flush",
    "script|kill",
];

/// What the settings add to the clients' user (`valkey.client_access`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ClientAccess {
    /// Single commands (`scan`, `object|encoding`), lower case.
    pub commands: Vec<String>,
    /// Key patterns (`session:*`).
    pub keys: Vec<String>,
    /// Pub/sub channel patterns (`jobs:*`).
    pub channels: Vec<String>,
}

/// Checks one command the settings give the clients; returns it in lower
/// case, or the problem and its fix.
pub fn check_client_command(command: &str) -> Result<String, (String, String)> {
    let c = command.trim().to_ascii_lowercase();
    let word = |w: &str| {
        !w.is_empty()
            && w.starts_with(|ch: char| ch.is_ascii_lowercase())
            && w.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_')
    };
    if c.starts_with('@') || c.starts_with('+') || c.starts_with('-') || c == "allcommands" {
        return Err((
            format!("`{command}` is not a single command"),
            "name single commands (`scan`, `object|encoding`): a category could give back \
             administrative commands"
                .to_string(),
        ));
    }
    let valid = match c.split_once('|') {
        Some((name, sub)) => word(name) && word(sub),
        None => word(&c),
    };
    if !valid {
        return Err((
            format!("`{command}` is not a command name"),
            "use a Valkey command's name, or `command|subcommand`".to_string(),
        ));
    }
    let (name, _) = c.split_once('|').unwrap_or((&c, ""));
    let never = (ADMIN_COMMANDS.contains(&name) && c != "acl|whoami")
        || ADMIN_SUBCOMMANDS.contains(&c.as_str());
    if never {
        return Err((
            format!("`{command}` is administrative"),
            "remove it: administration stays with evi-install's own user".to_string(),
        ));
    }
    Ok(c)
}

/// Checks one key or channel pattern the settings give the clients.
pub fn check_client_pattern(pattern: &str) -> Result<String, (String, String)> {
    if pattern.is_empty() || !pattern.chars().all(|c| c.is_ascii_graphic()) {
        return Err((
            format!("`{pattern}` is not a pattern"),
            "use printable characters without spaces, for example `session:*`".to_string(),
        ));
    }
    Ok(pattern.to_string())
}

/// The rules of the clients' user: [`DEFAULT_USER_RULES`] and what the
/// settings add (after the revocations, so that a single command added is not
/// taken back by them; categories cannot be added, see [`check_client_command`]).
pub fn client_rules(extra: &ClientAccess) -> String {
    let words: Vec<&str> = DEFAULT_USER_RULES.split_whitespace().collect();
    let mut keys: Vec<String> = Vec::new();
    let mut channels: Vec<String> = Vec::new();
    let mut commands: Vec<String> = Vec::new();
    for w in &words {
        if let Some(k) = w.strip_prefix('~') {
            keys.push(k.to_string());
        } else if let Some(c) = w.strip_prefix('&') {
            channels.push(c.to_string());
        } else if !matches!(*w, "resetkeys" | "resetchannels" | "nocommands") {
            commands.push(w.to_string());
        }
    }
    let add = |list: &mut Vec<String>, item: String| {
        if !list.contains(&item) {
            list.push(item);
        }
    };
    for k in &extra.keys {
        add(&mut keys, k.clone());
    }
    for c in &extra.channels {
        add(&mut channels, c.clone());
    }
    for c in &extra.commands {
        add(&mut commands, format!("+{c}"));
    }
    format!(
        "resetkeys {} resetchannels {} nocommands {}",
        keys.iter()
            .map(|k| format!("~{k}"))
            .collect::<Vec<_>>()
            .join(" "),
        channels
            .iter()
            .map(|c| format!("&{c}"))
            .collect::<Vec<_>>()
            .join(" "),
        commands.join(" ")
    )
}

/// How Valkey describes these rules in `ACL LIST` (and its ACL file), as
/// [`parse_user`] leaves them: key patterns, then `resetchannels` and the
/// channels, then `-@all` and the command rules in the order given (each
/// command once). Seen on Valkey 8.1: `ACL SETUSER u resetkeys ~a:* resetchannels
/// &b:* nocommands +@string -@admin +get` lists as `~a:* resetchannels &b:*
/// -@all +@string -@admin +get`. `up` compares it with the live user's.
pub fn describe(rules: &str) -> String {
    rules
        .split_whitespace()
        .filter(|w| *w != "resetkeys")
        .map(|w| if w == "nocommands" { "-@all" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets the clients' user's rules in place (arguments: the rules, one word
/// each), saves them to the ACL file, and prints the user as Valkey now
/// describes it (`evi_user:` line, hashes reduced to `#`). Passwords are
/// untouched: no rule word sets or removes one.
pub const SET_CLIENT_RULES_SCRIPT: &str =
    "cli ACL SETUSER default \"$@\" >/dev/null && cli ACL SAVE >/dev/null && \
     cli ACL LIST | sed -E 's/ #[0-9a-f]{64}/ #/g; s/^/evi_user:/'";

/// The environment variable through which evi-state's start script gets
/// [`DEFAULT_USER_RULES`] under Podman: the rules of a first start only.
/// After that the ACL file keeps the rules `up` set in place
/// ([`SET_CLIENT_RULES_SCRIPT`]), so a change of `valkey.client_access`
/// never re-creates evi-state.
pub const RULES_ENV: &str = "EVI_DEFAULT_USER_RULES";

/// The environment variable through which evi-state's start script gets the
/// clients' rules on Kubernetes, where no `up` sets them in place: they
/// replace the ACL file's at every start (the manifest is the truth).
pub const CLIENT_RULES_ENV: &str = "EVI_CLIENT_RULES";

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

/// The users in a script's output: its `evi_user:` lines ([`USERS_SCRIPT`]).
pub fn users_in(output: &str) -> Vec<User> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("evi_user:"))
        .filter_map(parse_user)
        .collect()
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
    fn the_settings_add_single_commands_keys_and_channels_after_the_revocations() {
        let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        // Nothing added: the built-in rules, word for word (evi-state's first start).
        assert_eq!(
            words(&client_rules(&ClientAccess::default())),
            words(DEFAULT_USER_RULES)
        );
        let wide = client_rules(&ClientAccess {
            commands: vec!["scan".into(), "del".into(), "object|encoding".into()],
            keys: vec!["session:*".into(), "cache:*".into()],
            channels: vec!["jobs:*".into()],
        });
        assert!(wide.starts_with(
            "resetkeys ~cache:* ~op:* ~stream:* ~session:* resetchannels &cache:* &jobs:* nocommands +@string"
        ));
        assert!(wide
            .ends_with("-@dangerous -@admin -@scripting +info +acl|whoami +scan +object|encoding"));
        assert_eq!(wide.matches("+del").count(), 1);
        assert_eq!(
            describe(&wide),
            wide.replacen("resetkeys ", "", 1)
                .replace("nocommands", "-@all")
        );
    }

    #[test]
    fn the_settings_cannot_give_the_clients_administration() {
        for ok in [
            "scan",
            "SCAN",
            "object|encoding",
            "acl|whoami",
            "client|getname",
        ] {
            assert_eq!(check_client_command(ok).unwrap(), ok.to_ascii_lowercase());
        }
        for refused in [
            "flushall",
            "CONFIG",
            "config|get",
            "acl",
            "acl|setuser",
            "client",
            "client|kill",
            "client|list",
            "shutdown",
            "debug",
            "module|load",
            "keys",
            "script|flush",
            "function|flush",
            "replicaof",
            "monitor",
            "@keyspace",
            "@all",
            "+get",
            "-get",
            "allcommands",
            "get key",
            "",
            "gét",
        ] {
            let (problem, fix) = check_client_command(refused).unwrap_err();
            assert!(!problem.is_empty() && !fix.is_empty(), "{refused}");
        }
        assert!(check_client_pattern("session:*").is_ok());
        for bad in ["", "a b", "tab\t"] {
            assert!(check_client_pattern(bad).is_err(), "{bad:?}");
        }
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
