//! evi-state's health as `status` reads it: one authenticated script in the
//! container (INFO, key counts, task queues, users) and its parser.

use anyhow::Result;
use serde::Serialize;

use crate::engine::Engine;
use crate::model::STATE_CONTAINER;

#[derive(Debug, Serialize, Default)]
pub(super) struct ValkeyHealth {
    pub(super) used_memory: u64,
    pub(super) maxmemory: u64,
    pub(super) aof_enabled: bool,
    pub(super) aof_last_rewrite_status: String,
    pub(super) aof_last_write_status: String,
    pub(super) evicted_keys: u64,
    /// Writes refused with `OOM command not allowed` since the server started.
    pub(super) oom_refusals: u64,
    pub(super) keys_cache_db: u64,
    pub(super) keys_op: u64,
    pub(super) keys_stream: u64,
    pub(super) keys_other: u64,
    /// All keys (DBSIZE).
    pub(super) keys_total: u64,
    /// Above 100000 keys the namespace counts come from a random sample of this
    /// many keys, scaled to the total: estimates, and the output says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) keys_sampled: Option<u64>,
    pub(super) streams_with_ttl: Vec<String>,
    /// The task queues (`stream:*`), at most 100.
    pub(super) streams: Vec<StreamInfo>,
    /// evi-state's Valkey users (`acl.rs`), without their password hashes.
    pub(super) users: Vec<crate::acl::User>,
}

#[derive(Debug, Serialize, Default, PartialEq)]
pub(super) struct StreamInfo {
    pub(super) key: String,
    pub(super) length: u64,
    pub(super) groups: Vec<GroupInfo>,
}

#[derive(Debug, Serialize, Default, PartialEq)]
pub(super) struct GroupInfo {
    pub(super) name: String,
    pub(super) consumers: u64,
    /// Delivered to a consumer, not yet acknowledged.
    pub(super) pending: u64,
    /// Entries not yet delivered to the group; unknown after some deletions.
    pub(super) lag: Option<u64>,
    /// How long the oldest pending entry has waited since its last delivery.
    pub(super) oldest_pending_idle_ms: Option<u64>,
}

/// INFO and key counts from inside evi-state; the password goes from the
/// mounted secret into valkey-cli's environment, never into arguments.
/// Run after `acl::ADMIN_CLI`, which defines `cli` as evi-install's own user.
pub(super) const HEALTH_SCRIPT: &str =
    include_str!("../../../templates/container/status-health.sh");

pub(super) async fn health<E: Engine>(engine: &E) -> Result<ValkeyHealth> {
    let out = engine
        .exec(
            STATE_CONTAINER,
            &[
                "sh",
                "-c",
                &crate::acl::admin_script(&format!(
                    "{HEALTH_SCRIPT}\n{}",
                    crate::acl::USERS_SCRIPT
                )),
            ],
            &[],
        )
        .await?;
    if out.exit_code != 0 {
        anyhow::bail!("{}{}", out.stdout.trim(), out.stderr.trim());
    }
    Ok(parse_info(&out.stdout))
}

/// Reads the `key:value` lines of INFO (and of the key counts).
fn parse_info(text: &str) -> ValkeyHealth {
    let mut h = ValkeyHealth::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim_end_matches('\r').split_once(':') else {
            continue;
        };
        let num = || value.parse::<u64>().unwrap_or(0);
        match key {
            "evi_user" => h.users.extend(crate::acl::parse_user(value)),
            "used_memory" => h.used_memory = num(),
            "maxmemory" => h.maxmemory = num(),
            "aof_enabled" => h.aof_enabled = value == "1",
            "aof_last_bgrewrite_status" => h.aof_last_rewrite_status = value.to_string(),
            "aof_last_write_status" => h.aof_last_write_status = value.to_string(),
            "evicted_keys" => h.evicted_keys = num(),
            "errorstat_OOM" => {
                h.oom_refusals = value
                    .strip_prefix("count=")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            }
            "keys_cache_db" => h.keys_cache_db = num(),
            "keys_op" => h.keys_op = num(),
            "keys_stream" => h.keys_stream = num(),
            "keys_other" => h.keys_other = num(),
            "keys_total" => h.keys_total = num(),
            "keys_sampled" => h.keys_sampled = Some(num()),
            "stream_with_ttl" => h.streams_with_ttl.push(value.to_string()),
            "evi_stream" => h.streams.push(StreamInfo {
                key: value.to_string(),
                ..StreamInfo::default()
            }),
            "evi_stream_length" => {
                if let Some(st) = h.streams.last_mut() {
                    st.length = num();
                }
            }
            _ if key.starts_with("evi_group") => {
                let Some(st) = h.streams.last_mut() else {
                    continue;
                };
                if key == "evi_group" {
                    st.groups.push(GroupInfo {
                        name: value.to_string(),
                        ..GroupInfo::default()
                    });
                    continue;
                }
                let Some(g) = st.groups.last_mut() else {
                    continue;
                };
                match key {
                    "evi_group_consumers" => g.consumers = num(),
                    "evi_group_pending" => g.pending = num(),
                    "evi_group_lag" => g.lag = value.parse().ok(),
                    "evi_group_oldest_idle_ms" => g.oldest_pending_idle_ms = value.parse().ok(),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lines_are_parsed() {
        let h = parse_info(
            "# Memory\r\nused_memory:1048576\r\nmaxmemory:1073741824\r\naof_enabled:1\r\naof_last_bgrewrite_status:ok\r\n\
             evicted_keys:3\r\nerrorstat_OOM:count=7\r\n# evi-keys\r\nkeys_stream:2\r\nstream_with_ttl:stream:tasks:x\r\n",
        );
        assert_eq!(
            (h.used_memory, h.maxmemory, h.aof_enabled, h.evicted_keys),
            (1 << 20, 1 << 30, true, 3)
        );
        assert_eq!(h.oom_refusals, 7);
        assert_eq!(h.keys_sampled, None);
        let sampled =
            parse_info("keys_cache_db:500000\r\nkeys_sampled:10000\r\nkeys_total:2000000\r\n");
        assert_eq!(
            (
                sampled.keys_cache_db,
                sampled.keys_sampled,
                sampled.keys_total
            ),
            (500000, Some(10000), 2000000)
        );
        assert_eq!(h.aof_last_rewrite_status, "ok");
        assert_eq!(h.keys_stream, 2);
        assert_eq!(h.streams_with_ttl, ["stream:tasks:x"]);
    }

    #[test]
    fn queues_are_parsed_per_stream_and_group() {
        let h = parse_info(
            "keys_stream:2\r\nevi_stream:stream:tasks:email\r\nevi_stream_length:42\r\n\
             evi_group:workers\r\nevi_group_oldest_idle_ms:61000\r\nevi_group_consumers:2\r\n\
             evi_group_pending:3\r\nevi_group_lag:0\r\n\
             evi_group:audit\r\nevi_group_oldest_idle_ms:\r\nevi_group_consumers:0\r\n\
             evi_group_pending:0\r\nevi_group_lag:\r\n\
             evi_stream:stream:tasks:sms\r\nevi_stream_length:0\r\n",
        );
        assert_eq!(
            h.streams,
            [
                StreamInfo {
                    key: "stream:tasks:email".into(),
                    length: 42,
                    groups: vec![
                        GroupInfo {
                            name: "workers".into(),
                            consumers: 2,
                            pending: 3,
                            lag: Some(0),
                            oldest_pending_idle_ms: Some(61000),
                        },
                        GroupInfo {
                            name: "audit".into(),
                            ..GroupInfo::default()
                        },
                    ],
                },
                StreamInfo {
                    key: "stream:tasks:sms".into(),
                    ..StreamInfo::default()
                },
            ]
        );
    }
}
