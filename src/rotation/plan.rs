//! Works out a rotation's steps from the observed host. Pure.

use std::fmt;

use crate::model::*;

/// One step of a rotation, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotStep {
    /// Remove secrets of a generation whose creation was interrupted.
    RemoveIncomplete(Vec<String>),
    CreateSecrets,
    /// (Re-)create the helper that mounts both generations' passwords.
    StartHelper,
    /// evi-state accepts the new password as well as the old (saved to its ACL file).
    AddPassword,
    /// Re-create these clients with the new `VALKEY_URL`.
    ReplaceClients(Vec<String>),
    /// The new password becomes the only one: the old one is revoked (saved).
    Revoke,
    RemoveHelper,
    RemoveOldSecrets(Vec<String>),
}

impl RotStep {
    /// A stable name, for the fault-injection hook and the tests.
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub fn key(&self) -> &'static str {
        match self {
            RotStep::RemoveIncomplete(_) => "remove-incomplete",
            RotStep::CreateSecrets => "create-secrets",
            RotStep::StartHelper => "start-helper",
            RotStep::AddPassword => "add-password",
            RotStep::ReplaceClients(_) => "replace-clients",
            RotStep::Revoke => "revoke",
            RotStep::RemoveHelper => "remove-helper",
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
            RotStep::StartHelper => write!(
                f,
                "start the helper {JOB_CONTAINER} in evi-state's network namespace, with both passwords mounted"
            ),
            RotStep::AddPassword => write!(
                f,
                "evi-state accepts the new password as well as the old \
                 (ACL SETUSER, saved to its ACL file; no restart)"
            ),
            RotStep::ReplaceClients(names) => write!(
                f,
                "re-create {} with the new VALKEY_URL and confirm they run",
                names.join(" and ")
            ),
            RotStep::Revoke => write!(
                f,
                "evi-state accepts the new password only: the old one is revoked \
                 (saved to its ACL file; no restart)"
            ),
            RotStep::RemoveHelper => write!(f, "remove the helper {JOB_CONTAINER}"),
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

/// The complete generations on the host, oldest first.
fn complete_generations(observed: &Observed) -> Vec<SecretVersion> {
    let owned = |name: String| observed.secrets.iter().any(|s| s.name == name && s.owned());
    let mut versions: Vec<SecretVersion> = observed
        .secrets
        .iter()
        .filter_map(secret_version_of)
        .filter(|v| owned(v.password_name()) && owned(v.url_name()))
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

/// Whether a rotation was interrupted after its new secrets were made: two
/// complete generations (clients may hold either password), or its helper left.
pub fn interrupted(observed: &Observed) -> bool {
    complete_generations(observed).len() > 1 || observed.containers.contains_key(JOB_CONTAINER)
}

/// Works out the steps from the observed host. `clients` are the client
/// containers the settings ask for.
pub fn plan_rotation(observed: &Observed, clients: &[&str]) -> Result<Rotation, String> {
    let run_up = "run `evi-install up` first";
    match observed.containers.get(STATE_CONTAINER) {
        Some(c) if !c.owned() => {
            return Err(format!(
                "container `{STATE_CONTAINER}` was not created by evi-install"
            ))
        }
        Some(c) if c.running => {}
        Some(c) => return Err(format!("evi-state is {}, not running; {run_up}", c.state)),
        None => return Err(format!("evi-state does not exist; {run_up}")),
    }
    if !observed.has_admin_secret() {
        return Err(format!("the secret {ADMIN_SECRET} is missing; {run_up}"));
    }
    let generations = complete_generations(observed);
    let (Some(&newest), Some(&oldest)) = (generations.last(), generations.first()) else {
        return Err(format!(
            "evi-state's password secrets are missing; {run_up}"
        ));
    };
    let incomplete: Vec<String> = observed
        .secrets
        .iter()
        .filter(|s| secret_version_of(s).is_some_and(|v| !generations.contains(&v)))
        .map(|s| s.name.clone())
        .collect();
    let present: Vec<String> = clients
        .iter()
        .filter(|n| observed.containers.contains_key(**n))
        .map(|n| n.to_string())
        .collect();
    let not_on = |v: SecretVersion| -> Vec<String> {
        present
            .iter()
            .filter(|n| observed.containers[n.as_str()].secret_version() != Some(v))
            .cloned()
            .collect()
    };
    let older_secrets = |v: SecretVersion| -> Vec<String> {
        observed
            .secrets
            .iter()
            .filter(|s| {
                secret_version_of(s).is_some_and(|g| g != v) && !incomplete.contains(&s.name)
            })
            .map(|s| s.name.clone())
            .collect()
    };
    let helper_left = observed.containers.contains_key(JOB_CONTAINER);
    let mut steps = Vec::new();
    if !incomplete.is_empty() {
        steps.push(RotStep::RemoveIncomplete(incomplete.clone()));
    }

    if newest > oldest {
        // Interrupted after the new secrets were made: finish moving to them.
        // Every ACL step can be repeated, so the run takes them all again.
        let from = generations[generations.len() - 2];
        steps.extend([RotStep::StartHelper, RotStep::AddPassword]);
        let lagging = not_on(newest);
        if !lagging.is_empty() {
            steps.push(RotStep::ReplaceClients(lagging));
        }
        steps.extend([
            RotStep::Revoke,
            RotStep::RemoveHelper,
            RotStep::RemoveOldSecrets(older_secrets(newest)),
        ]);
        return Ok(Rotation {
            from,
            to: newest,
            resuming: true,
            steps,
        });
    }

    let lagging = not_on(newest);
    if !lagging.is_empty() || helper_left {
        // Interrupted after the old secrets went (or in a roll-back): the
        // clients still on a generation that is gone, and the clean-up.
        if !lagging.is_empty() {
            steps.push(RotStep::ReplaceClients(lagging));
        }
        if helper_left {
            steps.push(RotStep::RemoveHelper);
        }
        return Ok(Rotation {
            from: newest,
            to: newest,
            resuming: true,
            steps,
        });
    }

    let to = observed
        .secrets
        .iter()
        .filter_map(secret_version_of)
        .max()
        .unwrap_or(newest)
        .next();
    steps.extend([
        RotStep::CreateSecrets,
        RotStep::StartHelper,
        RotStep::AddPassword,
    ]);
    if !present.is_empty() {
        steps.push(RotStep::ReplaceClients(present));
    }
    steps.extend([
        RotStep::Revoke,
        RotStep::RemoveHelper,
        RotStep::RemoveOldSecrets(vec![newest.password_name(), newest.url_name()]),
    ]);
    Ok(Rotation {
        from: newest,
        to,
        resuming: false,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::owned_labels;

    pub const CLIENTS: [&str; 2] = ["evi-be", "evi-worker"];

    fn secret(name: &str) -> ObservedResource {
        ObservedResource {
            name: name.into(),
            labels: owned_labels(),
        }
    }

    fn container(name: &str, version: Option<u32>) -> (String, ObservedContainer) {
        let mut labels = owned_labels();
        if let Some(v) = version {
            labels.insert(SECRET_VERSION_LABEL.into(), v.to_string());
        }
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

    /// evi-state, and the two clients on these generations.
    pub fn host(secrets: &[&str], clients: [u32; 2]) -> Observed {
        let mut all: Vec<ObservedResource> = secrets.iter().map(|s| secret(s)).collect();
        all.push(secret(ADMIN_SECRET));
        Observed {
            secrets: all,
            containers: [
                container("evi-state", None),
                container("evi-be", Some(clients[0])),
                container("evi-worker", Some(clients[1])),
            ]
            .into(),
            ..Default::default()
        }
    }

    fn keys(r: &Rotation) -> Vec<&'static str> {
        r.steps.iter().map(RotStep::key).collect()
    }

    pub const V1: [&str; 2] = ["evi-state-password-v1", "evi-valkey-url-v1"];
    const BOTH: [&str; 4] = [
        "evi-state-password-v1",
        "evi-valkey-url-v1",
        "evi-state-password-v2",
        "evi-valkey-url-v2",
    ];

    #[test]
    fn a_fresh_rotation_takes_every_step_in_order() {
        let r = plan_rotation(&host(&V1, [1, 1]), &CLIENTS).unwrap();
        assert_eq!(
            (r.from, r.to, r.resuming),
            (SecretVersion(1), SecretVersion(2), false)
        );
        assert_eq!(
            keys(&r),
            [
                "create-secrets",
                "start-helper",
                "add-password",
                "replace-clients",
                "revoke",
                "remove-helper",
                "remove-old-secrets"
            ]
        );
        assert!(!interrupted(&host(&V1, [1, 1])));
    }

    #[test]
    fn interrupted_rotations_resume_where_they_stopped() {
        // Killed after the new secrets (or the password was added): every ACL
        // step again, since each can be repeated, and the clients.
        let h = host(&BOTH, [1, 1]);
        assert!(interrupted(&h));
        let r = plan_rotation(&h, &CLIENTS).unwrap();
        assert_eq!(
            (r.from, r.to, r.resuming),
            (SecretVersion(1), SecretVersion(2), true)
        );
        assert_eq!(
            keys(&r),
            [
                "start-helper",
                "add-password",
                "replace-clients",
                "revoke",
                "remove-helper",
                "remove-old-secrets"
            ]
        );
        // Killed half-way through the clients: only the lagging one is replaced.
        let r = plan_rotation(&host(&BOTH, [2, 1]), &CLIENTS).unwrap();
        assert_eq!(
            r.steps[2],
            RotStep::ReplaceClients(vec!["evi-worker".into()])
        );
        // Killed after the revoke: the same steps but the clients (all moved).
        let r = plan_rotation(&host(&BOTH, [2, 2]), &CLIENTS).unwrap();
        assert_eq!(
            keys(&r),
            [
                "start-helper",
                "add-password",
                "revoke",
                "remove-helper",
                "remove-old-secrets"
            ]
        );
        assert_eq!(
            r.steps[4],
            RotStep::RemoveOldSecrets(V1.map(String::from).to_vec())
        );
        // Killed after the old secrets went, before the helper: just that.
        let mut h = host(&["evi-state-password-v2", "evi-valkey-url-v2"], [2, 2]);
        h.containers.extend([container(JOB_CONTAINER, None)]);
        assert!(interrupted(&h));
        let r = plan_rotation(&h, &CLIENTS).unwrap();
        assert_eq!(keys(&r), ["remove-helper"]);
        // Killed between the two new secrets: drop the orphan, rotate afresh past it.
        let r = plan_rotation(
            &host(
                &[
                    "evi-state-password-v1",
                    "evi-valkey-url-v1",
                    "evi-valkey-url-v2",
                ],
                [1, 1],
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

    #[test]
    fn nothing_to_rotate_without_a_running_stack() {
        assert!(plan_rotation(&Observed::default(), &CLIENTS)
            .unwrap_err()
            .contains("run `evi-install up` first"));
        let mut h = host(&V1, [1, 1]);
        h.containers.get_mut("evi-state").unwrap().running = false;
        assert!(plan_rotation(&h, &CLIENTS)
            .unwrap_err()
            .contains("not running"));
        let mut h = host(&V1, [1, 1]);
        h.secrets.retain(|s| s.name != ADMIN_SECRET);
        assert!(plan_rotation(&h, &CLIENTS)
            .unwrap_err()
            .contains("evi-admin-password is missing"));
    }
}
