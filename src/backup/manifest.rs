//! The archive's manifest and the data summary: what a backup holds, and how
//! the data a server loaded is compared with it. Pure.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The archive format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The first entry of every archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// `evi-install backup`'s own version.
    pub tool_version: String,
    /// valkey-server's version, from the server that loaded the snapshot.
    pub valkey_version: String,
    /// When the snapshot was taken (UTC, RFC 3339).
    pub created_at: String,
    /// sha256 of the effective valkey.conf lines the backup was taken under.
    pub settings_fingerprint: String,
    /// Valkey's names for its AOF directory and files (`appenddirname`, `appendfilename`).
    pub aof_dir: String,
    pub aof_file: String,
    /// Every data file, by its path in the archive, with its size and sha256.
    pub files: Vec<FileEntry>,
    pub summary: Summary,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    pub fn data_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Reads a manifest; an archive from a newer format is refused by name.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version =
            serde_json::from_slice(bytes).context("its manifest is not valid JSON")?;
        if version.format_version > FORMAT_VERSION {
            bail!(
                "the archive has format version {}, newer than this evi-install reads ({FORMAT_VERSION}); restore it with a newer evi-install",
                version.format_version
            );
        }
        serde_json::from_slice(bytes).context("its manifest is malformed")
    }
}

/// The data, as counted by a server that holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Keys per namespace of the service guide: `cache:db:`, `op:`, `stream:`, `other`.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Every stream (any key of type stream), by key.
    pub streams: BTreeMap<String, Stream>,
    /// The earliest expiry (Unix ms) of any key with a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_expiry_ms: Option<i64>,
    /// `DEBUG DIGEST` of the whole data set: only in archives of earlier
    /// versions, whose throwaway servers computed it. Compared only when both
    /// sides have one, so no server computes it any more (it read every value:
    /// three times the load's time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub keys: u64,
    pub with_ttl: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    pub length: u64,
    pub last_id: String,
    pub entries_added: u64,
    pub groups: BTreeMap<String, Group>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub consumers: u64,
    /// Delivered, not acknowledged.
    pub pending: u64,
    pub last_delivered_id: String,
    /// sha1 of every pending entry: its ID, consumer and delivery count.
    pub pending_digest: String,
}

/// The one namespace of [`Summary::totals`].
pub const ALL_KEYS: &str = "all keys";

impl Summary {
    pub fn keys(&self) -> u64 {
        self.namespaces.values().map(|n| n.keys).sum()
    }

    /// The same summary with its namespaces added up into one, [`ALL_KEYS`]:
    /// what a server's `INFO keyspace` is compared with.
    pub fn totals(&self) -> Summary {
        let all = Namespace {
            keys: self.keys(),
            with_ttl: self.namespaces.values().map(|n| n.with_ttl).sum(),
        };
        Summary {
            namespaces: BTreeMap::from([(ALL_KEYS.to_string(), all)]),
            ..self.clone()
        }
    }

    /// Parses the lines the summary script prints (see `scripts.rs`):
    /// `n NS KEYS WITH_TTL FIRST_EXPIRY`, `s KEYHEX LENGTH LAST_ID ADDED`,
    /// `g KEYHEX GROUPHEX CONSUMERS PENDING LAST_DELIVERED DIGEST`, `digest D`.
    pub fn parse(text: &str) -> Result<Summary> {
        let mut s = Summary::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split(' ').collect();
            let bad = || anyhow::anyhow!("unexpected summary line `{line}`");
            let num =
                |i: usize| -> Result<u64> { f.get(i).ok_or_else(bad)?.parse().map_err(|_| bad()) };
            match f[0] {
                "n" if f.len() == 5 => {
                    let ns = s.namespaces.entry(f[1].to_string()).or_default();
                    ns.keys += num(2)?;
                    ns.with_ttl += num(3)?;
                    let first: i64 = f[4].parse().map_err(|_| bad())?;
                    if first >= 0 {
                        s.first_expiry_ms = Some(s.first_expiry_ms.map_or(first, |e| e.min(first)));
                    }
                }
                "s" if f.len() == 5 => {
                    let st = s.streams.entry(unhex(f[1]).ok_or_else(bad)?).or_default();
                    st.length = num(2)?;
                    st.last_id = f[3].to_string();
                    st.entries_added = num(4)?;
                }
                "g" if f.len() == 7 => {
                    let st = s.streams.entry(unhex(f[1]).ok_or_else(bad)?).or_default();
                    st.groups.insert(
                        unhex(f[2]).ok_or_else(bad)?,
                        Group {
                            consumers: num(3)?,
                            pending: num(4)?,
                            last_delivered_id: f[5].to_string(),
                            pending_digest: f[6].to_string(),
                        },
                    );
                }
                "digest" if f.len() == 2 => s.digest = Some(f[1].to_string()),
                _ => return Err(bad()),
            }
        }
        Ok(s)
    }

    /// One line per namespace and stream, for plans and reports.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(self.namespace_lines());
        out.extend(self.stream_lines());
        out
    }

    fn namespace_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ns in ["cache:db:", "op:", "stream:", "other"] {
            let n = self.namespaces.get(ns).cloned().unwrap_or_default();
            let label = if ns == "other" {
                "other keys".to_string()
            } else {
                format!("{ns}*")
            };
            out.push(format!(
                "{label:<12} {} keys ({} with a TTL)",
                n.keys, n.with_ttl
            ));
        }
        out
    }

    /// One line per stream: its length, last ID and groups.
    pub fn stream_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, st) in &self.streams {
            let groups: Vec<String> = st
                .groups
                .iter()
                .map(|(g, gr)| {
                    format!(
                        "{g}: {} pending, last delivered {}",
                        gr.pending, gr.last_delivered_id
                    )
                })
                .collect();
            out.push(format!(
                "{key}: {} entries, last {}{}",
                st.length,
                st.last_id,
                if groups.is_empty() {
                    String::new()
                } else {
                    format!("; group {}", groups.join("; group "))
                }
            ));
        }
        out
    }
}

/// What a comparison found: the differences (empty when equal) and notes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub differences: Vec<String>,
    pub notes: Vec<String>,
}

/// Compares the data a server loaded from an archive (`got`) with the
/// archive's manifest (`want`), exactly: every namespace count, every stream,
/// group, pending entry and last-delivered ID, and the data set's digest.
///
/// Keys with a TTL keep their absolute expiry time, so those whose time has
/// come since the backup are legitimately gone. When `now_ms` is past the
/// archive's earliest expiry, keys with a TTL may be fewer (never more) and
/// the digest is not compared; keys without a TTL and streams still are.
pub fn compare_exact(want: &Summary, got: &Summary, now_ms: i64) -> Comparison {
    let mut c = Comparison::default();
    let expired_possible = want.first_expiry_ms.is_some_and(|e| e <= now_ms);
    let names: std::collections::BTreeSet<&String> = want
        .namespaces
        .keys()
        .chain(got.namespaces.keys())
        .collect();
    let mut expired = 0;
    for ns in names {
        let w = want.namespaces.get(ns).cloned().unwrap_or_default();
        let g = got.namespaces.get(ns).cloned().unwrap_or_default();
        let (w_plain, g_plain) = (w.keys - w.with_ttl, g.keys.saturating_sub(g.with_ttl));
        if w_plain != g_plain {
            c.differences.push(format!(
                "{ns}: {g_plain} keys without a TTL, the archive has {w_plain}"
            ));
        }
        if g.with_ttl > w.with_ttl || (g.with_ttl < w.with_ttl && !expired_possible) {
            c.differences.push(format!(
                "{ns}: {} keys with a TTL, the archive has {}",
                g.with_ttl, w.with_ttl
            ));
        } else {
            expired += w.with_ttl - g.with_ttl.min(w.with_ttl);
        }
    }
    if expired > 0 {
        c.notes.push(format!(
            "{expired} keys with a TTL expired since the backup"
        ));
    }
    compare_streams(want, got, &mut c.differences, |w, g| w == g);
    match (&want.digest, &got.digest) {
        (Some(w), Some(g)) if w != g && !expired_possible => c.differences.push(format!(
            "the data set's digest is {g}, the archive's is {w}"
        )),
        (Some(_), Some(_)) if expired_possible => c.notes.push(
            "the digest was not compared: keys with a TTL may have expired since the backup".into(),
        ),
        _ => {}
    }
    c
}

/// Compares a live evi-state that clients already use with the manifest: only
/// what clients cannot undo. Every stream and group is there, and no stream or
/// group has gone back before the archive's last IDs (stream IDs only grow).
/// An empty server, or one that loaded other data, fails this.
pub fn compare_live(want: &Summary, got: &Summary) -> Comparison {
    let mut c = Comparison::default();
    compare_streams(want, got, &mut c.differences, |w, g| id_at_least(g, w));
    c
}

fn compare_streams(
    want: &Summary,
    got: &Summary,
    out: &mut Vec<String>,
    id_ok: impl Fn(&str, &str) -> bool,
) {
    let exact = id_ok("1-1", "1-2") == id_ok("1-2", "1-1");
    for (key, w) in &want.streams {
        let Some(g) = got.streams.get(key) else {
            out.push(format!("stream {key} is missing"));
            continue;
        };
        if !id_ok(&w.last_id, &g.last_id) {
            out.push(format!(
                "stream {key}: last ID {}, the archive has {}",
                g.last_id, w.last_id
            ));
        }
        if exact && (w.length, w.entries_added) != (g.length, g.entries_added) {
            out.push(format!(
                "stream {key}: {} entries ({} ever added), the archive has {} ({})",
                g.length, g.entries_added, w.length, w.entries_added
            ));
        }
        for (name, wg) in &w.groups {
            let Some(gg) = g.groups.get(name) else {
                out.push(format!("stream {key}: group {name} is missing"));
                continue;
            };
            if !id_ok(&wg.last_delivered_id, &gg.last_delivered_id) {
                out.push(format!(
                    "stream {key} group {name}: last delivered {}, the archive has {}",
                    gg.last_delivered_id, wg.last_delivered_id
                ));
            }
            if exact && wg != gg {
                out.push(format!(
                    "stream {key} group {name}: {} consumers and {} pending entries (digest {}), the archive has {} and {} ({})",
                    gg.consumers, gg.pending, gg.pending_digest, wg.consumers, wg.pending, wg.pending_digest
                ));
            }
        }
        if exact {
            for name in g.groups.keys().filter(|n| !w.groups.contains_key(*n)) {
                out.push(format!("stream {key}: group {name} is not in the archive"));
            }
        }
    }
    if exact {
        for key in got
            .streams
            .keys()
            .filter(|k| !want.streams.contains_key(*k))
        {
            out.push(format!("stream {key} is not in the archive"));
        }
    }
}

/// Whether stream ID `a` (`ms-seq`) is at or after `b`.
fn id_at_least(a: &str, b: &str) -> bool {
    let parse = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    parse(a) >= parse(b)
}

fn unhex(s: &str) -> Option<String> {
    if s.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "n cache:db: 3 3 1800000000000\nn op: 2 1 1900000000000\nn stream: 1 0 -1\n\
        s 73747265616d3a74 5 1-5 5\ng 73747265616d3a74 776f726b657273 1 2 1-3 abc\ndigest d1\n";

    #[test]
    fn totals_add_the_namespaces_up_and_still_catch_a_wrong_count() {
        let s = Summary::parse(
            "n cache:db: 10 10 1900000000000\nn op: 2 1 1900000000000\nn stream: 1 0 -1\n\
             s 73747265616d3a74 5 1-5 5\n",
        )
        .unwrap();
        let t = s.totals();
        assert_eq!(t.namespaces.len(), 1);
        assert_eq!(
            t.namespaces[ALL_KEYS],
            Namespace {
                keys: 13,
                with_ttl: 11
            }
        );
        assert_eq!(t.streams, s.streams);
        // What a server reports: one key without a TTL too many.
        let mut got = t.clone();
        got.namespaces.get_mut(ALL_KEYS).unwrap().keys = 14;
        let c = compare_exact(&t, &got, 0);
        assert_eq!(
            c.differences,
            ["all keys: 3 keys without a TTL, the archive has 2"]
        );
        assert!(compare_exact(&t, &t, 0).differences.is_empty());
    }

    #[test]
    fn parses_the_summary_lines() {
        let s = Summary::parse(SAMPLE).unwrap();
        assert_eq!(s.keys(), 6);
        assert_eq!(s.first_expiry_ms, Some(1_800_000_000_000));
        let st = &s.streams["stream:t"];
        assert_eq!(
            (st.length, st.last_id.as_str(), st.entries_added),
            (5, "1-5", 5)
        );
        assert_eq!(st.groups["workers"].pending, 2);
        assert_eq!(s.digest.as_deref(), Some("d1"));
        assert!(Summary::parse("x 1").is_err());
        assert!(Summary::parse("s zz 1 1-1 1").is_err());
    }

    #[test]
    fn an_exact_comparison_finds_every_difference() {
        let want = Summary::parse(SAMPLE).unwrap();
        let before_expiry = 1_700_000_000_000;
        assert_eq!(
            compare_exact(&want, &want, before_expiry),
            Comparison::default()
        );
        let mut got = want.clone();
        got.streams
            .get_mut("stream:t")
            .unwrap()
            .groups
            .get_mut("workers")
            .unwrap()
            .pending_digest = "x".into();
        got.namespaces.get_mut("op:").unwrap().keys = 1;
        got.namespaces.get_mut("op:").unwrap().with_ttl = 0;
        got.digest = Some("d2".into());
        let c = compare_exact(&want, &got, before_expiry);
        assert_eq!(c.differences.len(), 3, "{c:?}");
        // Empty: everything missing.
        let c = compare_exact(&want, &Summary::default(), before_expiry);
        assert!(
            c.differences
                .iter()
                .any(|d| d == "stream stream:t is missing"),
            "{c:?}"
        );
    }

    #[test]
    fn keys_past_their_expiry_may_be_gone_but_nothing_else() {
        let want = Summary::parse(SAMPLE).unwrap();
        let mut got = want.clone();
        got.namespaces.get_mut("cache:db:").unwrap().keys = 0;
        got.namespaces.get_mut("cache:db:").unwrap().with_ttl = 0;
        got.digest = Some("other".into());
        assert!(!compare_exact(&want, &got, 1_700_000_000_000)
            .differences
            .is_empty());
        let c = compare_exact(&want, &got, 1_850_000_000_000);
        assert!(c.differences.is_empty(), "{c:?}");
        assert_eq!(c.notes[0], "3 keys with a TTL expired since the backup");
        // A key without a TTL is never excused.
        got.namespaces.get_mut("stream:").unwrap().keys = 0;
        assert!(!compare_exact(&want, &got, 1_850_000_000_000)
            .differences
            .is_empty());
    }

    #[test]
    fn a_live_comparison_allows_what_clients_do_but_not_going_back() {
        let want = Summary::parse(SAMPLE).unwrap();
        let mut got = want.clone();
        let st = got.streams.get_mut("stream:t").unwrap();
        st.length = 9;
        st.last_id = "2-0".into();
        st.groups.get_mut("workers").unwrap().last_delivered_id = "1-5".into();
        got.namespaces.clear();
        assert!(compare_live(&want, &got).differences.is_empty());
        got.streams.get_mut("stream:t").unwrap().last_id = "1-4".into();
        assert_eq!(compare_live(&want, &got).differences.len(), 1);
        assert_eq!(
            compare_live(&want, &Summary::default()).differences,
            ["stream stream:t is missing"]
        );
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let err = Manifest::from_json(br#"{"format_version": 2}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("format version 2, newer than this evi-install reads (1)"),
            "{err}"
        );
        assert!(Manifest::from_json(b"nope").is_err());
    }
}
