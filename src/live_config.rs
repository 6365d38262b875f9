//! Which of valkey.conf's directives Valkey can change at run time, and the
//! `CONFIG SET` that changes them without restarting evi-state.
//!
//! Every key in [`LIVE_KEYS`] is one that `CONFIG SET` accepts on a running
//! server (<https://valkey.io/commands/config-set/>: "reconfigure the server
//! at run time without the need to restart"; in Valkey's `src/config.c` each
//! is a `MODIFIABLE_CONFIG`). Valkey applies the parameters of one
//! `CONFIG SET` all or none, so a refused value leaves the server as it was.
//! Everything else the template renders (`bind`, `port`, `dir`, `aclfile`, the
//! AOF file names, ...) takes a restart.

/// The directives of the template that `CONFIG SET` changes in place.
pub const LIVE_KEYS: &[&str] = &[
    "maxmemory",
    "maxmemory-policy",
    "appendonly",
    "appendfsync",
    "auto-aof-rewrite-percentage",
    "auto-aof-rewrite-min-size",
    "save",
    "loglevel",
];

/// The effective lines of a config (no comments, no blank lines), each
/// split into its key and the rest of the line.
pub fn directives(conf: &str) -> Vec<(String, String)> {
    conf.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((k, v)) => (k.to_ascii_lowercase(), v.trim().to_string()),
            None => (l.to_ascii_lowercase(), String::new()),
        })
        .collect()
}

pub fn is_live(key: &str) -> bool {
    LIVE_KEYS.contains(&key)
}

/// What a restart would pick up that `CONFIG SET` cannot: the effective
/// lines but the live ones. evi-state's container carries its hash, so a
/// change to live directives alone never makes evi-state differ.
pub fn restart_part(conf: &str) -> String {
    directives(conf)
        .into_iter()
        .filter(|(k, _)| !is_live(k))
        .map(|(k, v)| format!("{k} {v}\n"))
        .collect()
}

/// One directive to change in place.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveChange {
    pub key: String,
    /// As the old file had it; `None` when there was no old file to read.
    pub old: Option<String>,
    pub new: String,
}

/// The live directives whose value differs between the old config file and
/// the new one, in the new file's order (all of them without an old file).
pub fn live_changes(old: Option<&str>, new: &str) -> Vec<LiveChange> {
    let before = old.map(directives);
    directives(new)
        .into_iter()
        .filter(|(k, _)| is_live(k))
        .filter_map(|(key, value)| {
            let was = before
                .as_ref()
                .and_then(|d| d.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()));
            (was.as_deref() != Some(value.as_str())).then_some(LiveChange {
                key,
                old: was,
                new: value,
            })
        })
        .collect()
}

/// `maxmemory 1gb → 2gb, appendfsync everysec → always`.
pub fn describe(changes: &[LiveChange]) -> String {
    changes
        .iter()
        .map(|c| match &c.old {
            Some(old) => format!("{} {old} → {}", c.key, c.new),
            None => format!("{} {}", c.key, c.new),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A config value as `CONFIG GET` reports it: memory sizes in bytes (Valkey's
/// units: `k`/`m`/`g` are powers of 1000, `kb`/`mb`/`gb` of 1024), the rest as written.
pub fn as_reported(value: &str) -> String {
    let lower = value.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let factor: u64 = match unit {
        "" => 1,
        "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return value.to_string(),
    };
    match digits.parse::<u64>() {
        Ok(n) if !digits.is_empty() => n.saturating_mul(factor).to_string(),
        _ => value.to_string(),
    }
}

/// The script that applies `changes` in evi-state as evi-install's own user
/// (`acl::ADMIN_CLI`), then prints each key's value as the server reports it
/// (`CONFIG GET`), one `key value` a line. Its arguments are the keys and
/// values, which hold no secret.
pub const APPLY_SCRIPT: &str = include_str!("../templates/container/config-set.sh");

/// Prints `evi-config KEY VALUE` for each key given as an argument, as the
/// running server reports it (run after `acl::ADMIN_CLI`).
pub const READ_SCRIPT: &str = include_str!("../templates/container/config-get.sh");

/// The changes the server does not have yet: those whose value, as the
/// server reports it (`READ_SCRIPT`'s output), is not the new one.
pub fn not_in_force<'a>(changes: &'a [LiveChange], reported: &str) -> Vec<&'a LiveChange> {
    changes
        .iter()
        .filter(|c| {
            let got = reported
                .lines()
                .find_map(|l| l.strip_prefix(&format!("evi-config {} ", c.key)));
            got.map(str::trim) != Some(as_reported(&c.new).as_str())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "# head\nbind * -::*\nmaxmemory 1gb\nmaxmemory-policy volatile-lru\nsave 3600 1 300 100 60 10000\n";

    #[test]
    fn only_live_directives_that_differ_are_changed_in_place() {
        let new = OLD.replace("maxmemory 1gb", "maxmemory 2gb");
        let changes = live_changes(Some(OLD), &new);
        assert_eq!(describe(&changes), "maxmemory 1gb → 2gb");
        assert_eq!(restart_part(OLD), restart_part(&new));
        // Without an old file every live directive is set.
        assert_eq!(live_changes(None, OLD).len(), 3);
        // A restart-only change shows in the restart part.
        let moved = OLD.replace("bind * -::*", "bind 127.0.0.1");
        assert_ne!(restart_part(OLD), restart_part(&moved));
        assert!(live_changes(Some(OLD), &moved).is_empty());
        // Comments change nothing.
        assert_eq!(
            restart_part(OLD),
            restart_part(&OLD.replace("# head", "# other"))
        );
    }

    #[test]
    fn sizes_read_back_in_bytes() {
        assert_eq!(as_reported("1gb"), "1073741824");
        assert_eq!(as_reported("64mb"), "67108864");
        assert_eq!(as_reported("100"), "100");
        assert_eq!(as_reported("2g"), "2000000000");
        assert_eq!(as_reported("volatile-lru"), "volatile-lru");
        assert_eq!(as_reported("everysec"), "everysec");
        assert_eq!(as_reported("3600 1 300 100"), "3600 1 300 100");
    }
}
