//! Runs a rotation's steps; rolls back a failure before the old password is
//! revoked.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::plan::{RotStep, Rotation};
use crate::apply::{replace_client, wait_ready};
use crate::engine::Engine;
use crate::model::*;
use crate::secret::create_secret_pair;
use crate::secret::{redact, Password};
use crate::ui::Ui;

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

/// The helper: evi-state's image, in evi-state's network namespace (so it
/// reaches the server on 127.0.0.1 whatever the network), with the admin
/// secret and both generations' passwords mounted root-only. It only waits;
/// the ACL changes are `podman exec`s of `acl::ACL_CHANGE_SCRIPT` in it.
pub fn helper_spec(state: &ContainerSpec, rotation: &Rotation) -> ContainerSpec {
    let file = |secret: String, target: &str| SecretUse::File {
        secret,
        target: target.to_string(),
        mode: 0o400,
    };
    ContainerSpec {
        name: JOB_CONTAINER.to_string(),
        image: state.image.clone(),
        command: vec![
            "sh".into(),
            "-c".into(),
            crate::desired::ADDRESS_HOLDER_SCRIPT.into(),
        ],
        entrypoint: Some(vec![]),
        user: None,
        mounts: vec![],
        secrets: vec![
            file(ADMIN_SECRET.to_string(), ADMIN_SECRET_TARGET),
            file(rotation.from.password_name(), PASSWORD_SECRET_TARGET),
            file(rotation.to.password_name(), NEXT_PASSWORD_SECRET_TARGET),
        ],
        network: String::new(),
        aliases: vec![],
        env: Default::default(),
        addresses: vec![],
        hosts: vec![],
        network_of: Some(STATE_ADDRESS_CONTAINER.to_string()),
        restart: "no".to_string(),
        stop_timeout: crate::timeouts::HELPER_STOP_SECS,
        config_hash: None,
        secret_version: None,
        labels: crate::desired::owned_labels(),
    }
}

/// Which password an ACL change is about.
#[derive(Clone, Copy)]
enum Which {
    From,
    To,
}

/// Runs one ACL change in the helper once evi-state answers: `add` the
/// password, or make it the `only` one. The script saves the change to the
/// ACL file and proves the password authenticates before it reports success.
async fn acl_change<E: Engine>(
    engine: &E,
    action: &str,
    which: Which,
    ready: Duration,
) -> Result<()> {
    wait_ready(engine, ready).await?;
    let file = match which {
        Which::From => format!("/run/secrets/{PASSWORD_SECRET_TARGET}"),
        Which::To => format!("/run/secrets/{NEXT_PASSWORD_SECRET_TARGET}"),
    };
    let out = engine
        .exec(
            JOB_CONTAINER,
            &[
                "sh",
                "-c",
                crate::acl::ACL_CHANGE_SCRIPT,
                "acl-change",
                action,
                &file,
            ],
            &[],
        )
        .await?;
    if out.exit_code != 0 || !out.stdout.contains("evi-acl-ok") {
        bail!(
            "the ACL change `{action}` failed (exit code {}): {}",
            out.exit_code,
            redact(format!("{}{}", out.stdout, out.stderr).trim())
        );
    }
    Ok(())
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

#[derive(Debug)]
pub struct Outcome {
    pub elapsed: Duration,
}

/// How far a rotation got before it failed: what a roll-back has to undo.
#[derive(Debug, Default)]
struct Progress {
    /// The new generation's secrets may exist.
    secrets_made: bool,
    /// The helper may exist.
    helper: bool,
    /// evi-state may accept the new password.
    password_added: bool,
    /// Clients that may run with the new URL.
    clients: Vec<String>,
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
    let helper = helper_spec(spec(&specs.to, STATE_CONTAINER)?, rotation);
    let mut progress = Progress::default();
    for (i, step) in rotation.steps.iter().enumerate() {
        let done: Vec<String> = rotation.steps[..i].iter().map(|s| s.to_string()).collect();
        let not_done: Vec<String> = rotation.steps[i..].iter().map(|s| s.to_string()).collect();
        crate::interrupt::check(&done, &not_done)?;
        let t = Instant::now();
        // A step that fails may be half done: count it as taken.
        match step {
            RotStep::CreateSecrets => progress.secrets_made = true,
            RotStep::StartHelper => progress.helper = true,
            RotStep::AddPassword => progress.password_added = true,
            _ => {}
        }
        let result = run_step(engine, rotation, specs, &helper, step, ready, &mut progress)
            .await
            .and_then(|()| fail_point(step));
        if let Err(e) = result {
            let failure = format!(
                "step {} ({step}) failed: {}",
                i + 1,
                redact(&format!("{e:#}"))
            );
            let revoked = rotation.steps[..=i]
                .iter()
                .any(|s| matches!(s, RotStep::Revoke));
            if revoked {
                bail!(
                    "{failure}; the new password is in force for the clients (completed forward so far); \
                     run `evi-install rotate-secret` again to finish"
                );
            }
            if rotation.resuming && rotation.from == rotation.to {
                bail!("{failure}; run `evi-install rotate-secret` again to finish");
            }
            return Err(
                match rollback(engine, rotation, specs, &helper, ready, &progress).await {
                    Ok(()) => anyhow!(
                        "{failure}; rolled back: the old password is still in force and nothing else changed"
                    ),
                    Err(r) => anyhow!(
                        "{failure}; the roll-back failed too ({}); run `evi-install rotate-secret` again",
                        redact(&format!("{r:#}"))
                    ),
                },
            );
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
    helper: &ContainerSpec,
    step: &RotStep,
    ready: Duration,
    progress: &mut Progress,
) -> Result<()> {
    match step {
        RotStep::RemoveIncomplete(names) | RotStep::RemoveOldSecrets(names) => {
            for name in names {
                engine.remove_secret(name).await?;
            }
            Ok(())
        }
        RotStep::CreateSecrets => {
            create_secret_pair(engine, rotation.to, &Password::generate()?).await
        }
        RotStep::StartHelper => {
            engine
                .remove_container(JOB_CONTAINER, helper.stop_timeout)
                .await?;
            engine.create_container(helper).await?;
            engine.start_container(JOB_CONTAINER).await?;
            crate::apply::confirm_running(engine, JOB_CONTAINER).await
        }
        RotStep::AddPassword => acl_change(engine, "add", Which::To, ready).await,
        RotStep::ReplaceClients(names) => {
            for name in names {
                // Counted before it is done: a half-done move is rolled back too.
                progress.clients.push(name.clone());
                replace_client(engine, spec(&specs.to, name)?).await?;
            }
            Ok(())
        }
        RotStep::Revoke => acl_change(engine, "only", Which::To, ready).await,
        RotStep::RemoveHelper => {
            engine
                .remove_container(JOB_CONTAINER, helper.stop_timeout)
                .await
        }
    }
}

/// Back to the old password, undoing only what was done, in the order that
/// never refuses a client: the clients go back to the old URL while the
/// server still accepts both passwords; only then does the old password
/// become the only one; last, the helper and the new secrets go.
async fn rollback<E: Engine>(
    engine: &E,
    rotation: &Rotation,
    specs: &Specs,
    helper: &ContainerSpec,
    ready: Duration,
    progress: &Progress,
) -> Result<()> {
    for name in &progress.clients {
        replace_client(engine, spec(&specs.from, name)?).await?;
    }
    if progress.password_added {
        acl_change(engine, "only", Which::From, ready).await?;
    }
    if progress.helper {
        engine
            .remove_container(JOB_CONTAINER, helper.stop_timeout)
            .await?;
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
    use crate::engine::fake::FakeEngine;
    use crate::rotation::plan_rotation;
    use crate::settings::from_yaml;

    const CLIENTS: [&str; 2] = ["evi-be", "evi-worker"];
    const V1: [&str; 3] = ["evi-state-password-v1", "evi-valkey-url-v1", ADMIN_SECRET];

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
        host.secrets = V1
            .iter()
            .map(|s| ObservedResource {
                name: s.to_string(),
                labels: owned_labels(),
            })
            .collect();
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

    async fn rotate(engine: &FakeEngine, specs: &Specs) -> Result<Outcome> {
        let rotation = plan_rotation(&engine.host.lock().unwrap().clone(), &CLIENTS).unwrap();
        execute(
            engine,
            &rotation,
            specs,
            &Ui::silent(),
            Duration::from_secs(1),
        )
        .await
    }

    /// The ACL changes in call order: `add` or `only`, and which file.
    fn acl_changes(calls: &[String]) -> Vec<(usize, String)> {
        calls
            .iter()
            .enumerate()
            .filter(|(_, c)| c.starts_with("exec evi-rotate") && c.contains("acl-change"))
            .map(|(i, c)| (i, c.rsplit(" acl-change ").next().unwrap().to_string()))
            .collect()
    }

    #[tokio::test]
    async fn evi_state_is_never_touched_and_the_old_password_goes_after_every_client_moved() {
        let (engine, specs) = fake_stack("nothing fails");
        rotate(&engine, &specs).await.unwrap();
        let calls = engine.calls();
        assert!(
            !calls.iter().any(|c| c.ends_with("container evi-state")),
            "{calls:#?}"
        );
        let changes = acl_changes(&calls);
        assert_eq!(
            changes.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(),
            [
                "add /run/secrets/evi-state-password-next",
                "only /run/secrets/evi-state-password-next"
            ]
        );
        let at = |call: &str| calls.iter().position(|c| c == call).unwrap();
        for client in CLIENTS {
            let moved = at(&format!("rename container {client}-next {client}"));
            assert!(changes[0].0 < moved && moved < changes[1].0, "{calls:#?}");
        }
        let host = engine.host.lock().unwrap().clone();
        let names: Vec<&str> = host.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [ADMIN_SECRET, "evi-valkey-url-v2", "evi-state-password-v2"]
        );
        assert!(!host.containers.contains_key(JOB_CONTAINER));
    }

    #[tokio::test]
    async fn a_roll_back_moves_the_clients_back_before_the_new_password_goes() {
        let (engine, specs) = fake_stack("create container evi-worker-next");
        let text = format!("{:#}", rotate(&engine, &specs).await.unwrap_err());
        assert!(
            text.contains("step 4")
                && text.contains("rolled back: the old password is still in force"),
            "{text}"
        );
        let calls = engine.calls();
        let changes = acl_changes(&calls);
        let (only_old, what) = changes.last().unwrap();
        assert_eq!(what, "only /run/secrets/evi-state-password");
        let last = |call: &str| calls.iter().rposition(|c| c == call).unwrap();
        assert!(
            last("rename container evi-be-next evi-be") < *only_old,
            "{calls:#?}"
        );
        let host = engine.host.lock().unwrap().clone();
        let names: Vec<&str> = host.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, V1, "the new secrets are gone");
        for client in CLIENTS {
            assert_eq!(
                host.containers[client].secret_version(),
                Some(SecretVersion(1)),
                "{client}"
            );
        }
        assert!(!host.containers.contains_key(JOB_CONTAINER));
    }

    #[tokio::test]
    async fn a_roll_back_undoes_only_what_was_done() {
        // The new secrets half made: no helper, no ACL change, no client moved.
        let (engine, specs) = fake_stack("create secret evi-state-password-v2");
        let text = format!("{:#}", rotate(&engine, &specs).await.unwrap_err());
        assert!(text.contains("rolled back"), "{text}");
        let calls = engine.calls();
        assert!(
            !calls
                .iter()
                .any(|c| c.contains("evi-rotate") || c.contains("-next")),
            "{calls:#?}"
        );
        let host = engine.host.lock().unwrap().clone();
        let names: Vec<&str> = host.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, V1);
    }

    #[tokio::test]
    async fn a_failure_after_the_revoke_completes_forward_and_says_so() {
        let (engine, specs) = fake_stack("remove secret evi-state-password-v1");
        let text = format!("{:#}", rotate(&engine, &specs).await.unwrap_err());
        assert!(
            text.contains("the new password is in force")
                && text.contains("run `evi-install rotate-secret` again"),
            "{text}"
        );
        let host = engine.host.lock().unwrap().clone();
        for client in CLIENTS {
            assert_eq!(
                host.containers[client].secret_version(),
                Some(SecretVersion(2))
            );
        }
        // The rerun takes the steps again (each can be repeated) and finishes the clean-up.
        let again = plan_rotation(&host, &CLIENTS).unwrap();
        assert_eq!(again.to, SecretVersion(2));
        assert!(matches!(
            again.steps.last(),
            Some(RotStep::RemoveOldSecrets(_))
        ));
    }
}
