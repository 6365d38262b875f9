//! Password rotation with no refused client.
//!
//! Valkey lets one user hold several passwords, so the running server is made
//! to accept the new password beside the old one, the clients move to it, the
//! old one is revoked, and only then is evi-state re-created from the new
//! secret. At every moment the clients hold a password the server accepts.
//!
//! The password values never pass through evi-install after generation: a
//! short-lived job container on the network mounts the old and the new secret
//! as files and drives `valkey-cli` with commands built by shell built-ins
//! (`read`, `printf`), so no password is in any process's arguments.
//!
//! Every step can be repeated. After an interruption, the next run reads from
//! the host (secret generations, the generation label on each container) how
//! far the last one got and completes it.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::apply::{replace_client, wait_ready};
use crate::desired::owned_labels;
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
    /// The running evi-state accepts the new password as well as the old.
    AddPassword,
    /// Re-create these clients with the new `VALKEY_URL`.
    ReplaceClients(Vec<String>),
    /// The running evi-state accepts only the new password.
    RevokeOld,
    /// Re-create evi-state from the new secret (data volume kept).
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
            RotStep::RevokeOld => "revoke-old",
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
                "make the running evi-state accept the new password as well as the old"
            ),
            RotStep::ReplaceClients(names) => {
                write!(
                    f,
                    "re-create {} with the new VALKEY_URL and confirm they run",
                    names.join(" and ")
                )
            }
            RotStep::RevokeOld => write!(f, "revoke the old password on the running evi-state"),
            RotStep::ReplaceState => {
                write!(
                    f,
                    "re-create evi-state from the new secret (graceful stop, data volume kept)"
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

fn label_version(labels: &Labels) -> Option<SecretVersion> {
    labels
        .get(SECRET_VERSION_LABEL)?
        .parse()
        .ok()
        .map(SecretVersion)
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
    let from = label_version(&state.labels)
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
                    .is_some_and(|c| label_version(&c.labels) != Some(v))
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
        steps.push(RotStep::AddPassword);
        let lagging = clients_not_on(newest);
        if !lagging.is_empty() {
            steps.push(RotStep::ReplaceClients(lagging));
        }
        steps.extend([
            RotStep::RevokeOld,
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
        RotStep::RevokeOld,
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

/// The job container's script. `$1` is `add`, `revoke` or `rollback`. Both
/// passwords are read from the mounted secrets with `read`; the commands are
/// built with `printf` (a built-in) and piped to valkey-cli.
pub const JOB_SCRIPT: &str = r#"set -u
old=; new=
IFS= read -r old < /run/secrets/evi-old-password || true
IFS= read -r new < /run/secrets/evi-new-password || true
if [ -z "$old" ] || [ -z "$new" ]; then echo "rotation job: a password secret is empty" >&2; exit 78; fi
cli() { valkey-cli --no-auth-warning -t 2 -h evi-state -p 6379; }
works() { [ "$(printf 'AUTH %s\nPING\n' "$1" | cli 2>&1)" = "$(printf 'OK\nPONG')" ]; }
# Unreachable is not a wrong password: without AUTH a reachable server answers NOAUTH.
out=$(printf 'PING\n' | cli 2>&1)
case "$out" in
  *NOAUTH*|PONG) ;;
  *) echo "rotation job: cannot reach evi-state (connection, not password): $out" >&2; exit 69 ;;
esac
# The password the server accepts now: old first, new after an interrupted run.
current() { if works "$old"; then cur=$old; elif works "$new"; then cur=$new; else echo "rotation job: evi-state accepts neither password" >&2; exit 1; fi; }
case "$1" in
  add)
    current
    printf 'AUTH %s\nACL SETUSER default on >%s\n' "$cur" "$new" | cli >/dev/null 2>&1
    works "$new" || { echo "rotation job: evi-state does not accept the new password" >&2; exit 1; } ;;
  revoke)
    works "$new" || { echo "rotation job: evi-state does not accept the new password; nothing revoked" >&2; exit 1; }
    printf 'AUTH %s\nACL SETUSER default resetpass >%s\n' "$new" "$new" | cli >/dev/null 2>&1
    works "$new" || { echo "rotation job: the new password stopped working" >&2; exit 1; }
    if works "$old"; then echo "rotation job: the old password is still accepted" >&2; exit 1; fi ;;
  rollback)
    current
    printf 'AUTH %s\nACL SETUSER default resetpass >%s\n' "$cur" "$old" | cli >/dev/null 2>&1
    works "$old" || { echo "rotation job: evi-state does not accept the old password" >&2; exit 1; } ;;
  *) echo "rotation job: unknown action $1" >&2; exit 64 ;;
esac
echo "rotation job: $1 done"
"#;

fn job_spec(
    state: &ContainerSpec,
    subnet: ipnet::Ipv4Net,
    from: SecretVersion,
    to: SecretVersion,
    action: &str,
) -> ContainerSpec {
    let mut labels = owned_labels();
    labels.insert("io.evi-install.role".into(), "rotation-job".into());
    ContainerSpec {
        name: JOB_CONTAINER.to_string(),
        image: state.image.clone(),
        command: vec![
            "sh".into(),
            "-c".into(),
            JOB_SCRIPT.into(),
            "evi-rotate".into(),
            action.into(),
        ],
        entrypoint: Some(vec![]),
        user: state.user.clone(),
        mounts: vec![],
        secrets: vec![
            SecretUse::File {
                secret: from.password_name(),
                target: "evi-old-password".into(),
                mode: 0o400,
            },
            SecretUse::File {
                secret: to.password_name(),
                target: "evi-new-password".into(),
                mode: 0o400,
            },
        ],
        network: state.network.clone(),
        aliases: vec![],
        env: Default::default(),
        // Finds evi-state as the clients do: a fixed address in /etc/hosts.
        addresses: vec![crate::addressing::job_address(subnet)],
        hosts: vec![crate::addressing::state_host_entry(subnet)],
        network_of: None,
        restart: "no".into(),
        stop_timeout: crate::timeouts::HELPER_STOP_SECS,
        config_hash: None,
        secret_version: None,
        labels,
    }
}

/// Runs the job container to completion and removes it.
async fn run_job<E: Engine>(engine: &E, spec: &ContainerSpec) -> Result<()> {
    let (code, logs) = crate::reach::run_once(engine, spec, crate::timeouts::JOB_RUN).await?;
    if code != 0 {
        bail!(
            "the rotation job failed (exit code {code}): {}",
            redact(logs.trim())
        );
    }
    Ok(())
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
            .filter(|n| *n != STATE_CONTAINER && !moving.contains(n))
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
            return Err(match rollback(engine, rotation, specs, state_to, &progress).await {
                Ok(()) => anyhow!("{failure}; rolled back: the old password is still in force and nothing else changed"),
                Err(r) => anyhow!(
                    "{failure}; the roll-back failed too ({}); run `evi-install rotate-secret` again",
                    redact(&format!("{r:#}"))
                ),
            });
        }
        if matches!(step, RotStep::RevokeOld) {
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
    let (from, to) = (rotation.from, rotation.to);
    let subnet = specs.to.network_spec.subnet;
    match step {
        RotStep::RemoveIncomplete(names) | RotStep::RemoveOldSecrets(names) => {
            for name in names {
                engine.remove_secret(name).await?;
            }
            Ok(())
        }
        RotStep::CreateSecrets => create_secret_pair(engine, to, &Password::generate()?).await,
        RotStep::AddPassword => run_job(engine, &job_spec(state_to, subnet, from, to, "add")).await,
        RotStep::RevokeOld => {
            run_job(engine, &job_spec(state_to, subnet, from, to, "revoke")).await
        }
        RotStep::ReplaceClients(names) => {
            for name in names {
                // Counted before it is done: a half-done move is rolled back too.
                replaced_clients.push(name.clone());
                replace_client(engine, spec(&specs.to, name)?).await?;
            }
            Ok(())
        }
        RotStep::ReplaceState => {
            // A graceful stop (SIGTERM, then up to stop_timeout) lets Valkey finish its AOF.
            engine
                .remove_container(STATE_CONTAINER, state_to.stop_timeout)
                .await?;
            engine.create_container(state_to).await?;
            engine.start_container(STATE_CONTAINER).await?;
            wait_ready(engine, ready).await
        }
    }
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
/// server still accepts both passwords; only then does the server drop the
/// new one (the job needs the new secret, which exists by then); last, the
/// new secrets go.
async fn rollback<E: Engine>(
    engine: &E,
    rotation: &Rotation,
    specs: &Specs,
    state_to: &ContainerSpec,
    progress: &Progress,
) -> Result<()> {
    for name in &progress.clients {
        replace_client(engine, spec(&specs.from, name)?).await?;
    }
    if progress.password_added {
        run_job(
            engine,
            &job_spec(
                state_to,
                specs.to.network_spec.subnet,
                rotation.from,
                rotation.to,
                "rollback",
            ),
        )
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
                "revoke-old",
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
        // Killed after the new secrets (or after adding the password): everything after.
        let r = plan_rotation(&host(&both, [1, 1, 1]), &CLIENTS).unwrap();
        assert_eq!((r.to, r.resuming), (SecretVersion(2), true));
        assert_eq!(
            keys(&r),
            [
                "add-password",
                "replace-clients",
                "revoke-old",
                "replace-state",
                "remove-old-secrets"
            ]
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
            label_version(&be.labels),
            Some(SecretVersion(1)),
            "evi-be is back on the old URL"
        );
        assert!(
            engine
                .calls()
                .iter()
                .any(|c| c == "create container evi-rotate"),
            "the rollback job ran"
        );
    }

    #[tokio::test]
    async fn a_roll_back_moves_the_clients_back_before_the_server_drops_the_new_password() {
        let (engine, text) = failed_rotation("create container evi-worker").await;
        assert!(text.contains("rolled back"), "{text}");
        let calls = engine.calls();
        let last = |call: &str| calls.iter().rposition(|c| c == call).unwrap();
        let first_job = calls
            .iter()
            .position(|c| c == "create container evi-rotate")
            .unwrap();
        assert!(
            last("create container evi-rotate") != first_job,
            "the add job ran, then the roll-back job"
        );
        // evi-worker (half moved) and evi-be (moved) are back on the old URL
        // before the roll-back job makes the server accept the old password only.
        let rollback_job = last("create container evi-rotate");
        assert!(
            last("rename container evi-be-next evi-be") < rollback_job,
            "{calls:#?}"
        );
        assert!(
            last("rename container evi-worker-next evi-worker") < rollback_job,
            "{calls:#?}"
        );
        let host = engine.host.lock().unwrap().clone();
        for client in CLIENTS {
            assert_eq!(
                label_version(&host.containers[client].labels),
                Some(SecretVersion(1)),
                "{client}"
            );
        }
    }

    #[tokio::test]
    async fn a_roll_back_undoes_only_what_was_done() {
        // The new secrets half made: no job (it would need them), no client moved.
        let (engine, text) = failed_rotation("create secret evi-state-password-v2").await;
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

        // The password added, then the job itself failed: it runs again to roll back.
        let (engine, text) = failed_rotation("start container evi-rotate").await;
        assert!(text.contains("rolled back"), "{text}");
        let calls = engine.calls();
        assert_eq!(
            calls
                .iter()
                .filter(|c| *c == "start container evi-rotate")
                .count(),
            1,
            "only the roll-back job ran to the end: {calls:#?}"
        );
        assert!(!calls.iter().any(|c| c.contains("-next")), "{calls:#?}");
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
            label_version(&host.containers["evi-state"].labels),
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

    #[test]
    fn the_job_script_expands_passwords_only_in_builtins() {
        for line in JOB_SCRIPT
            .lines()
            .filter(|l| l.contains("$old") || l.contains("$new") || l.contains("$cur"))
        {
            let uses_only_builtins = line.contains("printf")
                || line.contains("works \"$")
                || line.contains("[ -z")
                || line.contains("cur=$");
            assert!(uses_only_builtins, "a password may reach argv in: {line}");
        }
    }
}
