//! libpod JSON that evi-install decodes itself, for only the fields it reads.
//!
//! Podman shapes its answers by the API version in the request path. Under
//! `/v5.x/` a container inspect has `Config.StopSignal: "SIGTERM"` and
//! `Config.Entrypoint` as an array (or null), where `/v4.x/` has `15` and a
//! string; podman-api 0.11's typed `ContainerInspectResponseLibpod` decodes
//! only the 4.x shapes and fails on the whole document over fields the tool
//! never looks at (`invalid type: string "SIGTERM", expected u64`).
//!
//! The other answers the tool reads (container list, network, volume and
//! secret inspect, secret list, exec inspect) were compared on Podman 5.4.2:
//! byte for byte the same under `/v4.0.0/` and `/v5.4.0/`.
//!
//! So the tool keeps requesting `/v4.0.0/` (Podman 4.3 and 5.x both answer
//! it), and the container inspect, which carries the state that the
//! readiness, client and rotation-job waits poll, is decoded here into a
//! small struct that ignores every other field. It reads the same from 4.x
//! and 5.x shapes; the unit tests below hold it to JSON recorded from real
//! Podman 4.3.1 and 5.4.2 services (`tests/fixtures/libpod/`, recorded with
//! `tests/fixtures/libpod/record.sh`, environment values redacted).

use anyhow::{Context, Result};
use serde::Deserialize;

/// `GET /libpod/containers/{name}/json`, reduced to what the tool reads.
#[derive(Debug, Deserialize)]
struct ContainerInspect {
    #[serde(rename = "State")]
    state: Option<ContainerState>,
}

#[derive(Debug, Deserialize)]
struct ContainerState {
    /// `running`, `exited`, `created`, ... (the same words in 4.x and 5.x).
    #[serde(rename = "Status", default)]
    status: Option<String>,
    #[serde(rename = "ExitCode", default)]
    exit_code: Option<i64>,
}

/// Podman's state word for a container and its exit code, from the body of a
/// libpod container inspect. A missing `State` reads as an empty word and 0,
/// as podman-api's typed inspect did.
pub fn container_state(body: &[u8]) -> Result<(String, i64)> {
    let inspect: ContainerInspect =
        serde_json::from_slice(body).context("unexpected container inspect JSON from Podman")?;
    let state = inspect.state;
    let status = state
        .as_ref()
        .and_then(|s| s.status.clone())
        .unwrap_or_default();
    let code = state.and_then(|s| s.exit_code).unwrap_or_default();
    Ok((status, code))
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/libpod/", $name))
        };
    }

    /// (fixture, state word, exit code): a running container and one that
    /// exited with 3, from Podman 4.3.1 (v4 path) and 5.4.2 (v4 and v5 paths).
    const CASES: &[(&str, &str, &str, i64)] = &[
        (
            "podman4.3-v4.0.0-container-running.json",
            fixture!("podman4.3-v4.0.0-container-running.json"),
            "running",
            0,
        ),
        (
            "podman4.3-v4.0.0-container-exited.json",
            fixture!("podman4.3-v4.0.0-container-exited.json"),
            "exited",
            3,
        ),
        (
            "podman5.4-v4.0.0-container-running.json",
            fixture!("podman5.4-v4.0.0-container-running.json"),
            "running",
            0,
        ),
        (
            "podman5.4-v4.0.0-container-exited.json",
            fixture!("podman5.4-v4.0.0-container-exited.json"),
            "exited",
            3,
        ),
        (
            "podman5.4-v5.4.0-container-running.json",
            fixture!("podman5.4-v5.4.0-container-running.json"),
            "running",
            0,
        ),
        (
            "podman5.4-v5.4.0-container-exited.json",
            fixture!("podman5.4-v5.4.0-container-exited.json"),
            "exited",
            3,
        ),
    ];

    #[test]
    fn container_state_reads_every_recorded_shape() {
        for (name, json, status, code) in CASES {
            let got = container_state(json.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(got, (status.to_string(), *code), "{name}");
        }
    }

    /// The reason this module exists: the 5.x shapes differ exactly where
    /// podman-api's typed model is strict. If podman-api ever decodes them,
    /// this test says the workaround can go.
    #[test]
    fn the_v5_shapes_are_what_podman_api_0_11_cannot_decode() {
        for (name, json, _, _) in CASES {
            let doc: serde_json::Value = serde_json::from_str(json).unwrap();
            let typed =
                serde_json::from_str::<podman_api::models::ContainerInspectResponseLibpod>(json);
            if name.contains("-v5.") {
                assert_eq!(doc["Config"]["StopSignal"], "SIGTERM", "{name}");
                assert!(
                    doc["Config"]["Entrypoint"].is_null() || doc["Config"]["Entrypoint"].is_array(),
                    "{name}"
                );
                assert!(typed.is_err(), "{name}: podman-api decodes it now");
            } else {
                assert_eq!(doc["Config"]["StopSignal"], 15, "{name}");
                assert!(typed.is_ok(), "{name}: {}", typed.unwrap_err());
            }
        }
    }

    #[test]
    fn a_missing_state_reads_as_empty_and_other_fields_do_not_matter() {
        assert_eq!(container_state(b"{}").unwrap(), (String::new(), 0));
        assert_eq!(
            container_state(
                br#"{"State":{"Status":"exited","ExitCode":137},"Config":{"StopSignal":"SIGKILL","Entrypoint":["sh"]}}"#
            )
            .unwrap(),
            ("exited".to_string(), 137)
        );
        assert!(container_state(b"not json").is_err());
    }

    /// The committed fixtures hold no environment value but PATH (Podman 4.3
    /// shows a type=env secret's value in Config.Env).
    #[test]
    fn the_fixtures_carry_no_environment_values() {
        for (name, json, _, _) in CASES {
            let doc: serde_json::Value = serde_json::from_str(json).unwrap();
            for entry in doc["Config"]["Env"].as_array().unwrap() {
                let entry = entry.as_str().unwrap();
                assert!(
                    entry.starts_with("PATH=") || entry.ends_with("=REDACTED"),
                    "{name}: {entry}"
                );
            }
        }
    }
}
