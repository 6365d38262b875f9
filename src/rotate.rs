//! Password rotation with no refused client.
//!
//! Valkey lets one user hold several passwords. evi-state is re-created with
//! the new generation's secret mounted beside the old one, and accepts both;
//! the clients move to the new password; then evi-state is re-created with the
//! new secret alone, which revokes the old one. At every moment, the clients
//! hold a password that evi-state accepts, and because both passwords come
//! from mounted secrets (not from an ACL change at run time, which a restart
//! would lose), that stays true if evi-state crashes and its restart policy
//! brings it back at any step.
//!
//! The password values never pass through evi-install after generation: they
//! are only in Podman secrets, read by evi-state's start script.
//!
//! Every step can be repeated. After an interruption, the next run reads from
//! the host (secret generations, the generation label on each container) how
//! far the last one got and completes it.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::apply::{replace_client, wait_ready};
use crate::desired::also_accepting;
use crate::engine::{create_secret_pair, Engine};
use crate::model::*;
use crate::secret::{redact, Password};
use crate::ui::Ui;

/// One step of a rotation, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotStep {
    /// Remove secrets of a generation whose creation was interrupted.
    RemoveIncomplete(Vec<String>),
    CreateSecrets,
    /// Re-create evi-state accepting the new password as well as the old.
    AddPassword,
    /// Re-create these clients with the new `VALKEY_URL`.
    ReplaceClients(Vec<String>),
    /// Re-create evi-state from the new secret alone: the old one is revoked.
    ReplaceState,
    RemoveOldSecrets(Vec<String>),
}

impl RotStep {
    /// A stable name, for the fault-injection hook and the tests.
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub fn key(&self) -> &'static str {
        match self {
            RotStep::RemoveIncomplete(_) => "remove-incomplete",
            RotStep::CreateSecrets => "create-secrets",
            RotStep::AddPassword => "add-password",
            RotStep::ReplaceClients(_) => "replace-clients",
            RotStep::ReplaceState => "replace-state",
            RotStep::RemoveOldSecrets(_) => "remove-old-secrets",
        }
    }
}

impl fmt::Display for RotStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RotStep::RemoveIncomplete(names) => {
                write!(f, "remove the incomplete secrets {}", names.join(", "))
            }
            RotStep::CreateSecrets => write!(
                f,
                "create the new password's secrets (the password is never shown)"
            ),
            RotStep::AddPassword => write!(
                f,
                "re-create evi-state accepting the new password as well as the old \
                 (graceful stop, data volume kept; a restart keeps both)"
            ),
            RotStep::ReplaceClients(names) => {
                write!(
                    f,
                    "re-create {} with the new VALKEY_URL and confirm they run",
                    names.join(" and ")
                )
            }
            RotStep::ReplaceState => {
                write!(
                    f,
                    "re-create evi-state from the new secret alone, which revokes the old password \
                     (graceful stop, data volume kept)"
                )
            }
            RotStep::RemoveOldSecrets(names) => {
                write!(f, "remove the old secrets {}", names.join(", "))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub from: SecretVersion,
    pub to: SecretVersion,
    /// Completing an interrupted rotation rather than starting one.
    pub resuming: bool,
    pub steps: Vec<RotStep>,
}

/// Works out the steps from the observed host. Pure.
pub fn plan_rotation(observed: &Observed, clients: &[&str]) -> Result<Rotation, String> {
    let run_up = "run `evi-install up` first";
    let state = match observed.containers.get(STATE_CONTAINER) {
        Some(c) if !c.owned() => {
            return Err(format!(
                "container `{STATE_CONTAINER}` was not created by evi-install"
            ))
        }
        Some(c) if c.running => c,
        Some(c) => return Err(format!("evi-state is {}, not running; {run_up}", c.state)),
        None => return Err(format!("evi-state does not exist; {run_up}")),
    };
    let from = state
        .secret_version()
        .ok_or_else(|| format!("evi-state has no password generation label; {run_up}"))?;
    let owned = |name: String| observed.secrets.iter().any(|s| s.name == name && s.owned());
    let complete = |v: SecretVersion| owned(v.password_name()) && owned(v.url_name());
    if !complete(from) {
        return Err(format!(
            "the secrets of evi-state's password (generation v{}) are missing; {run_up}",
            from.0
        ));
    }
    let versions: Vec<SecretVersion> = observed
        .secrets
        .iter()
        .filter_map(secret_version_of)
        .collect();
    let incomplete: Vec<String> = observed
        .secrets
        .iter()
        .filter(|s| secret_version_of(s).is_some_and(|v| !complete(v)))
        .map(|s| s.name.clone())
        .collect();
    let newest = versions
        .iter()
        .copied()
        .filter(|v| complete(*v))
        .max()
        .unwrap_or(from);
    let clients_not_on = |v: SecretVersion| -> Vec<String> {
        clients
            .iter()
            .filter(|name| {
                observed
                    .containers
                    .get(**name)
                    .is_some_and(|c| c.secret_version() != Some(v))
            })
            .map(|name| name.to_string())
            .collect()
    };
    let secrets_not_of = |v: SecretVersion| -> Vec<String> {
        observed
            .secrets
            .iter()
            .filter(|s| secret_version_of(s) != Some(v) && !incomplete.contains(&s.name))
            .map(|s| s.name.clone())
            .collect()
    };
    let mut steps = Vec::new();
    if !incomplete.is_empty() {
        steps.push(RotStep::RemoveIncomplete(incomplete.clone()));
    }

    if newest > from {
        // Interrupted after the new secrets were made: finish moving to them.
        let accepts = state
            .labels
            .get(ACCEPTS_LABEL)
            .and_then(|v| v.parse().ok())
            .map(SecretVersion);
        if accepts != Some(newest) {
            steps.push(RotStep::AddPassword);
        }
        let lagging = clients_not_on(newest);
        if !lagging.is_empty() {
            steps.push(RotStep::ReplaceClients(lagging));
        }
        steps.extend([
            RotStep::ReplaceState,
            RotStep::RemoveOldSecrets(secrets_not_of(newest)),
        ]);
        return Ok(Rotation {
            from,
            to: newest,
            resuming: true,
            steps,
        });
    }
    let lagging = clients_not_on(from);
    let stale = secrets_not_of(from);
    if !lagging.is_empty() || !stale.is_empty() {
        // Interrupted after evi-state moved: the clients and the clean-up remain.
        if !lagging.is_empty() {
            steps.push(RotStep::ReplaceClients(lagging));
        }
        if !stale.is_empty() {
            steps.push(RotStep::RemoveOldSecrets(stale));
        }
        return Ok(Rotation {
            from,
            to: from,
            resuming: true,
            steps,
        });
    }

    let to = versions.iter().copied().max().unwrap_or(from).next();
    let present: Vec<String> = clients
        .iter()
        .filter(|n| observed.containers.contains_key(**n))
        .map(|n| n.to_string())
        .collect();
    steps.push(RotStep::CreateSecrets);
    steps.push(RotStep::AddPassword);
    if !present.is_empty() {
        steps.push(RotStep::ReplaceClients(present));
    }
    steps.extend([
        RotStep::ReplaceState,
        RotStep::RemoveOldSecrets(vec![from.password_name(), from.url_name()]),
    ]);
    Ok(Rotation {
        from,
        to,
        resuming: false,
        steps,
    })
}

/// The specs of the stack at the two generations.
pub struct Specs {
    pub from: Desired,
    pub to: Desired,
}

fn spec<'a>(desired: &'a Desired, name: &str) -> Result<&'a ContainerSpec> {
    desired
        .containers
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| anyhow!("no spec for {name}"))
}

/// Test hook: `EVI_INSTALL_TEST_KILL_AFTER=<step key>` kills the process with
/// SIGKILL right after that step, to prove a rerun recovers from any point.
/// Built only with the `test-hooks` feature: a release build ignores the variable.
#[cfg(feature = "test-hooks")]
fn fault_point(step: &RotStep) {
    if std::env::var("EVI_INSTALL_TEST_KILL_AFTER").is_ok_and(|k| k == step.key()) {
        use rustix::process::{getpid, kill_process, Signal};
        let _ = kill_process(getpid(), Signal::KILL);
    }
}

#[cfg(not(feature = "test-hooks"))]
fn fault_point(_step: &RotStep) {}

/// Test hook: `EVI_INSTALL_TEST_FAIL_AFTER=<step key>` makes that step fail
/// once it is done, to prove the roll-back from each point.
#[cfg(feature = "test-hooks")]
fn fail_point(step: &RotStep) -> Result<()> {
    if std::env::var("EVI_INSTALL_TEST_FAIL_AFTER").is_ok_and(|k| k == step.key()) {
        bail!("injected failure after {}", step.key());
    }
    Ok(())
}

#[cfg(not(feature = "test-hooks"))]
fn fail_point(_step: &RotStep) -> Result<()> {
    Ok(())
}

pub struct Outcome {
    pub elapsed: Duration,
}

/// Runs the rotation. A failure before the old password is revoked rolls back
/// to it; a later one leaves the new password in force and says how to finish.
pub async fn execute<E: Engine>(
    engine: &E,
    rotation: &Rotation,
    specs: &Specs,
    ui: &Ui,
    ready: Duration,
) -> Result<Outcome> {
    let started = Instant::now();
    let state_to = spec(&specs.to, STATE_CONTAINER)?;
    // Clients that may run with the new URL: those an interrupted run already
    // moved, then each one this run starts to move.
    let moving: Vec<&String> = rotation
        .steps
        .iter()
        .flat_map(|s| match s {
            RotStep::ReplaceClients(names) => names.iter().collect(),
            _ => vec![],
        })
        .collect();
    let mut replaced_clients: Vec<String> = if rotation.resuming {
        specs
            .to
            .containers
            .iter()
            .map(|c| &c.name)
            .filter(|n| replica_of(n).is_some() && !moving.contains(n))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let mut progress = Progress::default();
    let mut revoked = false;
    for (i, step) in rotation.steps.iter().enumerate() {
        let done: Vec<String> = rotation.steps[..i].iter().map(|s| s.to_string()).collect();
        let not_done: Vec<String> = rotation.steps[i..].iter().map(|s| s.to_string()).collect();
        crate::interrupt::check(&done, &not_done)?;
        let t = Instant::now();
        // A step that fails may be half done: count it as taken.
        match step {
            RotStep::CreateSecrets => progress.secrets_made = true,
            RotStep::AddPassword => {
                progress.secrets_made = true;
                progress.password_added = true;
            }
            _ => {}
        }
        let result = run_step(
            engine,
            rotation,
            specs,
            state_to,
            step,
            ready,
            &mut replaced_clients,
        )
        .await
        .and_then(|()| fail_point(step));
        if let Err(e) = result {
            let failure = format!(
                "step {} ({step}) failed: {}",
                i + 1,
                redact(&format!("{e:#}"))
            );
            if revoked || matches!(step, RotStep::ReplaceState | RotStep::RemoveOldSecrets(_)) {
                bail!(
                    "{failure}; the new password is in force for the clients (completed forward so far); \
                     run `evi-install rotate-secret` again to finish"
                );
            }
            if rotation.resuming
                && !matches!(step, RotStep::AddPassword | RotStep::RemoveIncomplete(_))
            {
                bail!("{failure}; run `evi-install rotate-secret` again to finish");
            }
            progress.clients = replaced_clients;
            return Err(match rollback(engine, rotation, specs, ready, &progress).await {
                Ok(()) => anyhow!("{failure}; rolled back: the old password is still in force and nothing else changed"),
                Err(r) => anyhow!(
                    "{failure}; the roll-back failed too ({}); run `evi-install rotate-secret` again",
                    redact(&format!("{r:#}"))
                ),
            });
        }
        if matches!(step, RotStep::ReplaceState) {
            revoked = true;
        }
        ui.info(&format!(
            "  {}. {step} ({:.1}s)",
            i + 1,
            t.elapsed().as_secs_f64()
        ));
        fault_point(step);
        crate::interrupt::test_delay().await;
    }
    Ok(Outcome {
        elapsed: started.elapsed(),
    })
}

async fn run_step<E: Engine>(
    engine: &E,
    rotation: &Rotation,
    specs: &Specs,
    state_to: &ContainerSpec,
    step: &RotStep,
    ready: Duration,
    replaced_clients: &mut Vec<String>,
) -> Result<()> {
    let to = rotation.to;
    match step {
        RotStep::RemoveIncomplete(names) | RotStep::RemoveOldSecrets(names) => {
            for name in names {
                engine.remove_secret(name).await?;
            }
            Ok(())
        }
        RotStep::CreateSecrets => create_secret_pair(engine, to, &Password::generate()?).await,
        RotStep::AddPassword => {
            let both = also_accepting(spec(&specs.from, STATE_CONTAINER)?, to);
            recreate_state(engine, &both, ready).await
        }
        RotStep::ReplaceClients(names) => {
            for name in names {
                // Counted before it is done: a half-done move is rolled back too.
                replaced_clients.push(name.clone());
                replace_client(engine, spec(&specs.to, name)?).await?;
            }
            Ok(())
        }
        RotStep::ReplaceState => recreate_state(engine, state_to, ready).await,
    }
}

/// Re-creates evi-state from `spec`, keeping the data volume. A graceful stop
/// (SIGTERM, then up to its stop timeout) lets Valkey finish its AOF.
async fn recreate_state<E: Engine>(
    engine: &E,
    spec: &ContainerSpec,
    ready: Duration,
) -> Result<()> {
    engine
        .remove_container(STATE_CONTAINER, spec.stop_timeout)
        .await?;
    engine.create_container(spec).await?;
    engine.start_container(STATE_CONTAINER).await?;
    wait_ready(engine, ready).await
}

/// How far a rotation got before it failed: what a roll-back has to undo.
#[derive(Debug, Default)]
struct Progress {
    /// The new generation's secrets may exist.
    secrets_made: bool,
    /// The running evi-state may accept the new password.
    password_added: bool,
    /// Clients that may run with the new URL.
    clients: Vec<String>,
}

/// Back to the old password, undoing only what was done, in the order that
/// never refuses a client: the clients go back to the old URL while the
/// server still accepts both passwords; only then is evi-state re-created
/// with the old secret alone; last, the new secrets go.
async fn rollback<E: Engine>(
    engine: &E,
    rotation: &Rotation,
    specs: &Specs,
    ready: Duration,
    progress: &Progress,
) -> Result<()> {
    for name in &progress.clients {
        replace_client(engine, spec(&specs.from, name)?).await?;
    }
    if progress.password_added {
        recreate_state(engine, spec(&specs.from, STATE_CONTAINER)?, ready).await?;
    }
    if progress.secrets_made {
        engine.remove_secret(&rotation.to.url_name()).await?;
        engine.remove_secret(&rotation.to.password_name()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::owned_labels;

    const CLIENTS: [&str; 2] = ["evi-be", "evi-worker"];

    fn secret(name: &str) -> ObservedResource {
        ObservedResource {
            name: name.into(),
            labels: owned_labels(),
        }
    }

    fn container(name: &str, version: u32) -> (String, ObservedContainer) {
        let mut labels = owned_labels();
        labels.insert(SECRET_VERSION_LABEL.into(), version.to_string());
        (
            name.into(),
            ObservedContainer {
                name: name.into(),
                labels,
                running: true,
                state: "running".into(),
                ..Default::default()
            },
        )
    }

    fn host(secrets: &[&str], versions: [u32; 3]) -> Observed {
        Observed {
            secrets: secrets.iter().map(|s| secret(s)).collect(),
            containers: [
                container("evi-state", versions[0]),
                container("evi-be", versions[1]),
                container("evi-worker", versions[2]),
            ]
            .into(),
            ..Default::default()
        }
    }

    fn keys(r: &Rotation) -> Vec<&'static str> {
        r.steps.iter().map(RotStep::key).collect()
    }

    const V1: [&str; 2] = ["evi-state-password-v1", "evi-valkey-url-v1"];

    #[test]
    fn a_fresh_rotation_takes_every_step_in_order() {
        let r = plan_rotation(&host(&V1, [1, 1, 1]), &CLIENTS).unwrap();
        assert_eq!(
            (r.from, r.to, r.resuming),
            (SecretVersion(1), SecretVersion(2), false)
        );
        assert_eq!(
            keys(&r),
            [
                "create-secrets",
                "add-password",
                "replace-clients",
                "replace-state",
                "remove-old-secrets"
            ]
        );
    }

    #[test]
    fn interrupted_rotations_resume_where_they_stopped() {
        let both = [
            "evi-state-password-v1",
            "evi-valkey-url-v1",
            "evi-state-password-v2",
            "evi-valkey-url-v2",
        ];
        // Killed after the new secrets: everything after.
        let r = plan_rotation(&host(&both, [1, 1, 1]), &CLIENTS).unwrap();
        assert_eq!((r.to, r.resuming), (SecretVersion(2), true));
        assert_eq!(
            keys(&r),
            [
                "add-password",
                "replace-clients",
                "replace-state",
                "remove-old-secrets"
            ]
        );
        // Killed after evi-state was made to accept both: the clients and after.
        let mut accepting = host(&both, [1, 1, 1]);
        let state = accepting.containers.get_mut("evi-state").unwrap();
        state.labels.insert(ACCEPTS_LABEL.into(), "2".into());
        assert_eq!(
            keys(&plan_rotation(&accepting, &CLIENTS).unwrap()),
            ["replace-clients", "replace-state", "remove-old-secrets"]
        );
        // Killed half-way through the clients: only the lagging one is replaced.
        let r = plan_rotation(&host(&both, [1, 2, 1]), &CLIENTS).unwrap();
        assert_eq!(
            r.steps[1],
            RotStep::ReplaceClients(vec!["evi-worker".into()])
        );
        // Killed after evi-state moved: just the clean-up.
        let r = plan_rotation(&host(&both, [2, 2, 2]), &CLIENTS).unwrap();
        assert_eq!(
            r.steps,
            [RotStep::RemoveOldSecrets(V1.map(String::from).to_vec())]
        );
        // Killed between the two new secrets: drop the orphan, rotate afresh past it.
        let r = plan_rotation(
            &host(
                &[
                    "evi-state-password-v1",
                    "evi-valkey-url-v1",
                    "evi-valkey-url-v2",
                ],
                [1, 1, 1],
            ),
            &CLIENTS,
        )
        .unwrap();
        assert_eq!(
            r.steps[0],
            RotStep::RemoveIncomplete(vec!["evi-valkey-url-v2".into()])
        );
        assert_eq!((r.to, r.resuming), (SecretVersion(3), false));
    }

    use crate::engine::fake::FakeEngine;
    use crate::settings::from_yaml;

    /// A converged v1 stack in the fake engine, and the specs for v1 and v2.
    fn fake_stack(fail_on: &str) -> (FakeEngine, Specs) {
        let yaml = "services: { evi-be: { image: app }, evi-worker: { image: app } }";
        let settings = from_yaml(Some((std::path::Path::new("evi.yaml"), yaml)), None).unwrap();
        let specs = Specs {
            from: crate::desired::build(&settings, "port 6379\n", SecretVersion(1)),
            to: crate::desired::build(&settings, "port 6379\n", SecretVersion(2)),
        };
        let mut engine = FakeEngine {
            fail_on: Some(fail_on.to_string()),
            ..Default::default()
        };
        let host = engine.host.get_mut().unwrap();
        host.secrets = V1.iter().map(|s| secret(s)).collect();
        for c in &specs.from.containers {
            let observed = ObservedContainer {
                name: c.name.clone(),
                labels: c.labels.clone(),
                running: true,
                state: "running".into(),
                ..Default::default()
            };
            host.containers.insert(c.name.clone(), observed);
        }
        (engine, specs)
    }

    /// Runs a rotation on the fake stack with one injected failure; returns
    /// the engine afterwards and the error's text.
    async fn failed_rotation(fail_on: &str) -> (FakeEngine, String) {
        let (engine, specs) = fake_stack(fail_on);
        let rotation = plan_rotation(&engine.host.lock().unwrap().clone(), &CLIENTS).unwrap();
        let result = execute(
            &engine,
            &rotation,
            &specs,
            &Ui::silent(),
            Duration::from_secs(1),
        )
        .await;
        let text = format!("{:#}", result.err().expect("the injected failure surfaces"));
        (engine, text)
    }

    /// Where and from what evi-state was created, in call order.
    fn state_creations(engine: &FakeEngine) -> Vec<ContainerSpec> {
        let created = engine.created.lock().unwrap();
        created
            .iter()
            .filter(|c| c.name == STATE_CONTAINER)
            .cloned()
            .collect()
    }

    fn password_mounts(spec: &ContainerSpec) -> Vec<String> {
        spec.secrets
            .iter()
            .filter_map(|s| match s {
                SecretUse::File { secret, .. } => Some(secret.clone()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn whenever_a_client_may_hold_a_password_evi_state_mounts_it() {
        let (engine, specs) = fake_stack("nothing fails");
        let rotation = plan_rotation(&engine.host.lock().unwrap().clone(), &CLIENTS).unwrap();
        execute(
            &engine,
            &rotation,
            &specs,
            &Ui::silent(),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        // evi-state is re-created twice: both passwords before any client moves,
        // the new one alone after every client moved. A restart at any moment
        // (its restart policy) brings back a server with the same secrets.
        let states = state_creations(&engine);
        assert_eq!(
            states.iter().map(password_mounts).collect::<Vec<_>>(),
            [
                vec!["evi-state-password-v1", "evi-state-password-v2"],
                vec!["evi-state-password-v2"],
            ]
        );
        let calls = engine.calls();
        let at = |call: &str| calls.iter().position(|c| c == call).unwrap();
        let last_state = calls
            .iter()
            .rposition(|c| c == "create container evi-state")
            .unwrap();
        for client in CLIENTS {
            let moved = at(&format!("rename container {client}-next {client}"));
            assert!(at("create container evi-state") < moved && moved < last_state);
        }
        assert_eq!(states[0].labels[ACCEPTS_LABEL], "2");
        assert!(!states[1].labels.contains_key(ACCEPTS_LABEL));
    }

    #[tokio::test]
    async fn a_failure_before_the_revoke_rolls_back_to_the_old_password() {
        let (engine, text) = failed_rotation("create container evi-worker").await;
        assert!(
            text.contains("step 3")
                && text.contains("rolled back: the old password is still in force"),
            "{text}"
        );
        let host = engine.host.lock().unwrap().clone();
        let names: Vec<&str> = host.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, V1, "the new secrets are gone");
        let be = &host.containers["evi-be"];
        assert_eq!(
            be.secret_version(),
            Some(SecretVersion(1)),
            "evi-be is back on the old URL"
        );
        // evi-state accepted both, then was re-created with the old password alone.
        let states = state_creations(&engine);
        assert_eq!(
            states.iter().map(password_mounts).collect::<Vec<_>>(),
            [
                vec!["evi-state-password-v1", "evi-state-password-v2"],
                vec!["evi-state-password-v1"],
            ]
        );
    }

    #[tokio::test]
    async fn a_roll_back_moves_the_clients_back_before_the_server_drops_the_new_password() {
        let (engine, text) = failed_rotation("create container evi-worker").await;
        assert!(text.contains("rolled back"), "{text}");
        let calls = engine.calls();
        let last = |call: &str| calls.iter().rposition(|c| c == call).unwrap();
        // evi-worker (half moved) and evi-be (moved) are back on the old URL
        // before evi-state is re-created accepting the old password only.
        let drop_new = last("create container evi-state");
        assert!(
            last("rename container evi-be-next evi-be") < drop_new,
            "{calls:#?}"
        );
        assert!(
            last("rename container evi-worker-next evi-worker") < drop_new,
            "{calls:#?}"
        );
        let host = engine.host.lock().unwrap().clone();
        for client in CLIENTS {
            assert_eq!(
                host.containers[client].secret_version(),
                Some(SecretVersion(1)),
                "{client}"
            );
        }
    }

    #[tokio::test]
    async fn a_roll_back_undoes_only_what_was_done() {
        // The new secrets half made: evi-state untouched, no client moved.
        let (engine, text) = failed_rotation("create secret evi-state-password-v2").await;
        assert!(text.contains("rolled back"), "{text}");
        let calls = engine.calls();
        assert!(
            !calls
                .iter()
                .any(|c| c.contains("container evi-state") || c.contains("-next")),
            "{calls:#?}"
        );
        let host = engine.host.lock().unwrap().clone();
        let names: Vec<&str> = host.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, V1);

        // evi-state half re-created accepting both: it is re-created with the old alone.
        let (engine, text) = failed_rotation("start container evi-state").await;
        assert!(text.contains("rolled back"), "{text}");
        let calls = engine.calls();
        assert!(!calls.iter().any(|c| c.contains("-next")), "{calls:#?}");
        let states = state_creations(&engine);
        assert_eq!(
            password_mounts(states.last().unwrap()),
            ["evi-state-password-v1"]
        );
        let host = engine.host.lock().unwrap().clone();
        let names: Vec<&str> = host.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, V1);
    }

    #[tokio::test]
    async fn a_failure_after_the_revoke_completes_forward_and_says_so() {
        let (engine, text) = failed_rotation("remove secret evi-state-password-v1").await;
        assert!(
            text.contains("the new password is in force")
                && text.contains("run `evi-install rotate-secret` again"),
            "{text}"
        );
        let host = engine.host.lock().unwrap().clone();
        assert_eq!(
            host.containers["evi-state"].secret_version(),
            Some(SecretVersion(2))
        );
        // The rerun finishes the clean-up only.
        let again = plan_rotation(&host, &CLIENTS).unwrap();
        assert_eq!(keys(&again), ["remove-old-secrets"]);
    }

    #[test]
    fn nothing_to_rotate_without_a_running_stack() {
        assert!(plan_rotation(&Observed::default(), &CLIENTS)
            .unwrap_err()
            .contains("run `evi-install up` first"));
        let mut h = host(&V1, [1, 1, 1]);
        h.containers.get_mut("evi-state").unwrap().running = false;
        assert!(plan_rotation(&h, &CLIENTS)
            .unwrap_err()
            .contains("not running"));
    }
}
