//! Renders `valkey.conf` from the embedded Tera template.
//!
//! One context struct feeds the template; undefined variables are errors, and
//! nothing time- or host-dependent goes in, so the output is byte-identical on
//! every run for the same settings.

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tera::Tera;

use crate::settings::Settings;

const TEMPLATE_NAME: &str = "valkey.conf";
const TEMPLATE: &str = include_str!("../templates/valkey.conf.tera");

/// Everything the template may use.
#[derive(Debug, Serialize)]
pub struct ValkeyConfContext {
    pub source: String,
    pub maxmemory: String,
    pub maxmemory_policy: String,
    pub appendonly: bool,
    pub appendfsync: String,
    pub auto_aof_rewrite_percentage: u32,
    pub auto_aof_rewrite_min_size: String,
}

impl ValkeyConfContext {
    pub fn from_settings(settings: &Settings) -> Self {
        let v = &settings.valkey;
        ValkeyConfContext {
            source: settings.source_description(),
            maxmemory: v.maxmemory.to_string(),
            maxmemory_policy: v.maxmemory_policy.to_string(),
            appendonly: v.appendonly,
            appendfsync: v.appendfsync.to_string(),
            auto_aof_rewrite_percentage: v.auto_aof_rewrite_percentage,
            auto_aof_rewrite_min_size: v.auto_aof_rewrite_min_size.to_string(),
        }
    }
}

/// Renders the config for these settings.
pub fn valkey_conf(settings: &Settings) -> Result<String> {
    let mut tera = Tera::default();
    tera.add_raw_template(TEMPLATE_NAME, TEMPLATE)
        .context("the embedded valkey.conf template is invalid")?;
    let context = tera::Context::from_serialize(ValkeyConfContext::from_settings(settings))
        .context("cannot build the template context")?;
    tera.render(TEMPLATE_NAME, &context)
        .context("cannot render valkey.conf")
}

/// A hash of what the server reads from the config: comments and blank lines
/// are left out, so a header change rewrites the file without restarting
/// evi-state, while any effective change does restart it.
pub fn effective_hash(conf: &str) -> String {
    let mut hasher = Sha256::new();
    for line in conf.lines().map(str::trim) {
        if !line.is_empty() && !line.starts_with('#') {
            hasher.update(line.as_bytes());
            hasher.update(b"\n");
        }
    }
    hex(&hasher.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::from_yaml;

    #[test]
    fn render_is_deterministic() {
        let s = from_yaml(None, None).unwrap();
        assert_eq!(valkey_conf(&s).unwrap(), valkey_conf(&s).unwrap());
    }

    #[test]
    fn default_render_holds_the_seed_values_and_no_password() {
        let conf = valkey_conf(&from_yaml(None, None).unwrap()).unwrap();
        for line in [
            "maxmemory 1gb",
            "maxmemory-policy volatile-lru",
            "appendonly yes",
            "appendfsync everysec",
            "auto-aof-rewrite-percentage 100",
            "auto-aof-rewrite-min-size 64mb",
            "dir /data",
            "port 6379",
            "protected-mode yes",
            "daemonize no",
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "missing `{line}` in:\n{conf}"
            );
        }
        let effective: Vec<&str> = conf.lines().filter(|l| !l.starts_with('#')).collect();
        for word in ["requirepass", "masterauth", "user "] {
            assert!(
                !effective.iter().any(|l| l.contains(word)),
                "{word} must not be in the config"
            );
        }
        // Users and password hashes live in the ACL file on the data volume.
        assert!(effective.contains(&"aclfile /data/acl/users.acl"));
    }

    #[test]
    fn effective_hash_ignores_comments_only() {
        let a = "# one\nport 6379\n";
        assert_eq!(effective_hash(a), effective_hash("# two\n\nport 6379\n"));
        assert_ne!(effective_hash(a), effective_hash("port 6380\n"));
    }
}
