//! What a restart of evi-state costs its clients. A restarted Valkey serves
//! nothing but `-LOADING` until it has read its whole data set back, so the
//! cost grows with the data. A plan that restarts evi-state says so, with an
//! estimate from evi-state's used memory; every other change avoids the
//! restart (see `live_config.rs` and the rotation).

use std::time::Duration;

use crate::engine::Engine;
use crate::model::STATE_CONTAINER;

/// The estimate's model, fitted to the plain-restart column of
/// bench/README.md ("rotate-secret at realistic data sizes", a 2-core host,
/// Podman 4.3, netavark): without an answer for 0.6 s at 0.7 MB of used
/// memory, 6.3 s at 257 MB and 13.2 s at 751 MB.
const FIXED: Duration = Duration::from_millis(600);
const MIB_PER_SECOND: f64 = 60.0;
const BYTES_PER_SECOND: f64 = MIB_PER_SECOND * 1024.0 * 1024.0;

/// How long evi-state would serve nothing if restarted with `used_memory`.
pub fn estimate(used_memory: u64) -> Duration {
    FIXED + Duration::from_secs_f64(used_memory as f64 / BYTES_PER_SECOND)
}

/// The line a plan that restarts evi-state ends with.
pub fn note(used_memory: u64) -> String {
    format!(
        "evi-state restarts: it serves nothing until it has reloaded its data set \
         ({} used): roughly {:.0} s (estimated at {} s + {} MiB/s, as measured on 2 cores; \
         a slower disk takes longer)",
        crate::size::human(used_memory),
        estimate(used_memory).as_secs_f64().ceil(),
        FIXED.as_secs_f64(),
        MIB_PER_SECOND
    )
}

/// evi-state's used memory (`INFO memory`), if it runs and answers.
pub async fn used_memory<E: Engine>(engine: &E) -> Option<u64> {
    let script = crate::acl::admin_script("cli INFO memory");
    let out = engine
        .exec(STATE_CONTAINER, &["sh", "-c", &script], &[])
        .await
        .ok()?;
    out.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_the_measured_restarts() {
        let mib = 1024 * 1024;
        // Measured: 0.6 s, 6.3 s and 13.2 s (bench/README.md).
        for (used, low, high) in [
            (mib, 0.5, 1.0),
            (257 * mib, 4.0, 7.0),
            (751 * mib, 12.0, 14.5),
        ] {
            let secs = estimate(used).as_secs_f64();
            assert!((low..=high).contains(&secs), "{used}: {secs}");
        }
        let line = note(751 * mib);
        assert!(line.contains("(751.0 MiB used): roughly 14 s"), "{line}");
        assert!(line.contains("(estimated at 0.6 s + 60 MiB/s,"), "{line}");
    }
}
