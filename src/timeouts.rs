//! Every wait evi-install makes, named, in one place.
//!
//! The stop timeouts are part of the container specs (`desired.rs`); removing
//! a container that has no spec at hand (`down`, an unwanted client, a
//! leftover of an interrupted run) uses the same value for its name, so a
//! container is never stopped harder than the spec it was created from says.

use std::time::Duration;

use crate::model::{replica_of, STATE_CONTAINER};

/// evi-state: long enough for Valkey to finish writing its AOF on SIGTERM.
pub const STATE_STOP_SECS: u64 = 30;
/// evi-be and evi-worker.
pub const CLIENT_STOP_SECS: u64 = 10;
/// The rotation job and other short-lived helpers: nothing to save.
pub const HELPER_STOP_SECS: u64 = 1;

/// How long a re-created client may take to reach `running`.
pub const CLIENT_START: Duration = Duration::from_secs(30);
/// How long a short-lived container (a client probe) may take to run to completion.
pub const JOB_RUN: Duration = Duration::from_secs(60);

/// One request's worth of work: inspect, create, start, rename, remove a
/// secret or a network, read logs.
pub const REQUEST: Duration = Duration::from_secs(30);
/// A command run inside a container (the readiness PING, status's INFO).
pub const EXEC: Duration = Duration::from_secs(30);
/// Removing the data volume deletes its files.
pub const REMOVE_VOLUME: Duration = Duration::from_secs(120);
/// Pulling an image from a registry.
pub const PULL: Duration = Duration::from_secs(600);
/// Copying a data set into or out of a container: sized for a few GB on a slow disk.
pub const COPY: Duration = Duration::from_secs(1800);
/// Added to a container's stop timeout: the stop itself, then the removal.
pub const REMOVE_MARGIN: Duration = Duration::from_secs(30);

/// How long to wait for the service to answer a ping before calling it down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a probe may take: connection set-up is bounded inside by
/// valkey-cli's own 2 s timeout.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a throwaway server may take to load, convert and summarise the
/// data: generous, a few GB of data set on a slow disk.
pub const JOB_LIMIT: Duration = Duration::from_secs(1800);

/// How long the snapshot (BGSAVE) may take.
pub const SAVE_LIMIT: Duration = Duration::from_secs(1800);

/// Polling: the first pause (a local Valkey usually answers within a few tens
/// of ms), growing by half up to the longest.
pub const POLL_FIRST: Duration = Duration::from_millis(20);
pub const POLL_LONGEST: Duration = Duration::from_millis(250);
/// How often a run that waits for the host lock tries again.
pub const LOCK_RETRY: Duration = Duration::from_millis(100);

/// The seconds `podman stop` waits before SIGKILL for the container `name`.
pub fn stop_secs_for(name: &str) -> u64 {
    // Every replica and its successor: a worker finishes its batch.
    let client = replica_of(name.strip_suffix("-next").unwrap_or(name)).is_some();
    if name == STATE_CONTAINER {
        STATE_STOP_SECS
    } else if client {
        CLIENT_STOP_SECS
    } else {
        HELPER_STOP_SECS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_is_stopped_as_its_spec_says() {
        let settings = crate::settings::from_yaml(
            Some((
                std::path::Path::new("evi.yaml"),
                "services: { evi-be: { image: app }, evi-worker: { image: app } }",
            )),
            None,
        )
        .unwrap();
        let desired =
            crate::desired::build(&settings, "port 6379\n", crate::model::SecretVersion(1));
        for spec in &desired.containers {
            assert_eq!(
                stop_secs_for(&spec.name),
                spec.stop_timeout,
                "{}",
                spec.name
            );
        }
        assert_eq!(stop_secs_for("evi-state"), 30, "Valkey's AOF gets its time");
        assert_eq!(stop_secs_for("evi-be-next"), CLIENT_STOP_SECS);
        assert_eq!(stop_secs_for("evi-worker-next"), CLIENT_STOP_SECS);
        assert_eq!(stop_secs_for("evi-worker-3"), CLIENT_STOP_SECS);
        assert_eq!(stop_secs_for("evi-be-2-next"), CLIENT_STOP_SECS);
        assert_eq!(stop_secs_for("evi-rotate"), HELPER_STOP_SECS);
        assert_eq!(stop_secs_for("evi-probe-be"), HELPER_STOP_SECS);
    }

    /// `--ready-timeout` holds even when the PING itself never answers.
    #[tokio::test]
    async fn a_hung_ping_does_not_outlast_the_ready_timeout() {
        use crate::engine::fake::FakeEngine;
        let engine = FakeEngine {
            exec_hangs: true,
            ..Default::default()
        };
        engine
            .host
            .lock()
            .unwrap()
            .containers
            .insert("evi-state".into(), owned("evi-state"));
        let started = std::time::Instant::now();
        let waited = tokio::time::timeout(
            Duration::from_secs(10),
            crate::apply::wait_ready(&engine, Duration::from_secs(1)),
        )
        .await
        .expect("wait_ready ends on its own");
        let err = waited.unwrap_err().to_string();
        assert!(
            err.starts_with(
                "evi-state did not answer an authenticated PING within 1s (last answer: none within 1.0s)"
            ),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    fn owned(name: &str) -> crate::model::ObservedContainer {
        crate::model::ObservedContainer {
            name: name.into(),
            labels: crate::desired::owned_labels(),
            running: true,
            state: "running".into(),
            ..Default::default()
        }
    }

    /// `down` and `up` remove containers that have no spec in the plan; each
    /// still gets the stop timeout its spec gives it.
    #[tokio::test]
    async fn removals_without_a_spec_at_hand_use_the_specs_stop_timeout() {
        use crate::engine::fake::FakeEngine;
        let engine = FakeEngine::default();
        {
            let mut host = engine.host.lock().unwrap();
            for name in [
                "evi-state",
                "evi-be",
                "evi-worker",
                "evi-be-next",
                "evi-rotate",
            ] {
                host.containers.insert(name.into(), owned(name));
            }
        }
        let observed = engine.host.lock().unwrap().clone();
        let (plan, _) = crate::plan::plan_down(&observed, "evi-net", "/s/valkey.conf", false);
        let opts = crate::apply::Options::new(Duration::from_secs(0));
        crate::apply::apply(&engine, &plan, &crate::ui::Ui::silent(), &opts)
            .await
            .unwrap();
        let got = engine.stop_timeouts.lock().unwrap().clone();
        let want: Vec<(String, u64)> = [
            ("evi-be-next", 10),
            ("evi-rotate", 1),
            ("evi-worker", 10),
            ("evi-be", 10),
            ("evi-state", 30),
        ]
        .iter()
        .map(|(n, t)| (n.to_string(), *t))
        .collect();
        assert_eq!(got, want);
    }
}
