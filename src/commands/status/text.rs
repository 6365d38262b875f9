//! `status` as text for people.

use super::Report;
use crate::reach::Reach;
use crate::size::human;

pub(super) fn text(report: &Report) -> String {
    let mut out = String::from("Resources:\n");
    for r in &report.resources {
        let verdict = match &r.drift {
            None => "matches".to_string(),
            Some(d) => format!("differs: {d}"),
        };
        out.push_str(&format!(
            "  {:<9} {:<46} {:<8} {verdict}\n",
            r.kind.as_str(),
            r.name,
            r.state
        ));
    }
    out.push_str(&format!("\nboot: {}\n", report.boot));
    if let Some(h) = &report.valkey {
        let percent = (h.used_memory * 100).checked_div(h.maxmemory).unwrap_or(0);
        out.push_str("\nevi-state:\n");
        out.push_str(&format!(
            "  memory   {} used of {} ({percent}%)\n",
            human(h.used_memory),
            human(h.maxmemory)
        ));
        out.push_str(&format!(
            "  AOF      {}, last rewrite {}, last write {}\n",
            if h.aof_enabled { "on" } else { "off" },
            h.aof_last_rewrite_status,
            h.aof_last_write_status
        ));
        out.push_str(&format!("  evicted  {} keys\n", h.evicted_keys));
        let estimate = match h.keys_sampled {
            Some(n) => format!(
                " (estimated from a random sample of {n} of {} keys)",
                h.keys_total
            ),
            None => String::new(),
        };
        out.push_str(&format!(
            "  keys     cache:db: {}, op: {}, stream: {}, other: {}{estimate}\n",
            h.keys_cache_db, h.keys_op, h.keys_stream, h.keys_other
        ));
        for u in &h.users {
            out.push_str(&format!(
                "  user     {} ({}, {} password{}): {}\n",
                u.name,
                if u.enabled { "on" } else { "off" },
                u.passwords,
                if u.passwords == 1 { "" } else { "s" },
                u.rules
            ));
        }
        for st in &h.streams {
            out.push_str(&format!("  queue    {}: {} entries", st.key, st.length));
            if st.groups.is_empty() {
                out.push_str(", no consumer group");
            }
            for g in &st.groups {
                let lag = g.lag.map_or("unknown".to_string(), |l| l.to_string());
                let oldest = g
                    .oldest_pending_idle_ms
                    .map(|ms| format!(" (oldest waiting {:.1}s)", ms as f64 / 1000.0))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "; group {}: {} consumers, {} pending{oldest}, lag {lag}",
                    g.name, g.consumers, g.pending
                ));
            }
            out.push('\n');
        }
    }
    if !report.clients.is_empty() {
        out.push_str("\nClients (probed from inside each client):\n");
        let width = report
            .clients
            .iter()
            .map(|c| c.client.len())
            .max()
            .unwrap_or(0)
            .max(10);
        for c in &report.clients {
            let verdict = match &c.reach {
                Reach::Ok => {
                    "reaches evi-state: PONG with its VALKEY_URL, as the user it names (ACL WHOAMI)"
                        .to_string()
                }
                Reach::Failed { layer, detail } => {
                    format!(
                        "CANNOT reach evi-state: {layer} failed: {detail}; {}",
                        layer.fix()
                    )
                }
            };
            out.push_str(&format!("  {:<width$} {verdict}\n", c.client));
        }
    }
    for w in &report.warnings {
        out.push_str(&format!("\nwarning: {w}"));
    }
    if !report.warnings.is_empty() {
        out.push('\n');
    }
    out.push_str(if report.healthy {
        "\nStatus: healthy. The host matches the settings."
    } else {
        "\nStatus: degraded or drifted. Run `evi-install up --dry-run` to see what `up` would change."
    });
    out
}
