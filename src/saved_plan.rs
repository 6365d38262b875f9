//! Saved plans (`up --dry-run --out`, then `up --plan`): what is applied is
//! always the plan computed now from the settings and the host; the saved
//! file only has to agree with it, action for action and spec for spec.
//! A file edited after review (another image, an extra bind mount) is refused
//! with the first difference, and nothing of it is applied.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::model::Plan;
use crate::plan_view::{self, PlanDocument};
use crate::settings::io_reason;

/// Longest value shown in a difference; the rest is elided.
const SHOWN_CHARS: usize = 100;

/// Reads the saved plan at `path` and checks that it is exactly `current`,
/// the plan for the settings and the host as they are now.
pub fn check(path: &Path, current: &PlanDocument) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow!(
            "cannot read the saved plan {}: {}",
            path.display(),
            io_reason(&e)
        )
    })?;
    let saved: PlanDocument = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a plan saved by `evi-install up --dry-run --out`",
            path.display()
        )
    })?;
    let remake = format!(
        "review a new plan with `evi-install up --dry-run --out {}`",
        path.display()
    );
    if saved.format_version != plan_view::FORMAT_VERSION {
        bail!(
            "the saved plan {} has format version {}, this evi-install reads {}; {remake}",
            path.display(),
            saved.format_version,
            plan_view::FORMAT_VERSION
        );
    }
    if saved.settings_fingerprint != current.settings_fingerprint {
        bail!(
            "the settings changed since the plan {} was made; {remake}",
            path.display()
        );
    }
    if saved.host_fingerprint != current.host_fingerprint {
        bail!(
            "the host changed since the plan {} was made; {remake}",
            path.display()
        );
    }
    if let Some(difference) = first_difference(&saved.plan, &current.plan) {
        bail!(
            "the saved plan {} is not the plan for these settings and this host: {difference}; \
             it was changed after it was made, or by another version of evi-install; {remake}",
            path.display()
        );
    }
    Ok(())
}

/// The first difference between a saved plan and the one computed now, as
/// `step 5 (container evi-state): image differs: saved "x", now "y"`.
pub fn first_difference(saved: &Plan, now: &Plan) -> Option<String> {
    for (i, (s, n)) in saved.steps.iter().zip(&now.steps).enumerate() {
        let (sv, nv) = (to_value(s), to_value(n));
        if let Some((path, saved_text, now_text)) = walk(&sv, &nv, String::new()) {
            let what = field_name(&path);
            return Some(format!(
                "step {} ({} {}): {what} differs: saved {saved_text}, now {now_text}",
                i + 1,
                s.kind.as_str(),
                s.name
            ));
        }
    }
    let (s, n) = (saved.steps.len(), now.steps.len());
    if s == n {
        return None;
    }
    let extra = |steps: &[crate::model::Step]| {
        let step = &steps[s.min(n)];
        format!(
            "step {} ({} {} {})",
            s.min(n) + 1,
            plan_view::verb_word(step.verb),
            step.kind.as_str(),
            step.name
        )
    };
    Some(if s > n {
        format!(
            "it has {s} steps, the plan now has {n}: {} is not in the plan now",
            extra(&saved.steps)
        )
    } else {
        format!(
            "it has {s} steps, the plan now has {n}: {} is missing from it",
            extra(&now.steps)
        )
    })
}

fn to_value(step: &crate::model::Step) -> Value {
    serde_json::to_value(step).unwrap_or(Value::Null)
}

/// The first place where `a` and `b` differ: its path and both values as text.
fn walk(a: &Value, b: &Value, path: String) -> Option<(String, String, String)> {
    if a == b {
        return None;
    }
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let found = match (x.get(key), y.get(key)) {
                    (Some(xv), Some(yv)) => walk(xv, yv, join(key)),
                    (xv, yv) => Some((join(key), shown(xv), shown(yv))),
                };
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (xv, yv)) in x.iter().zip(y).enumerate() {
                if let Some(found) = walk(xv, yv, format!("{path}[{i}]")) {
                    return Some(found);
                }
            }
            let i = x.len().min(y.len());
            Some((format!("{path}[{i}]"), shown(x.get(i)), shown(y.get(i))))
        }
        _ => Some((path, shown(Some(a)), shown(Some(b)))),
    }
}

fn shown(value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "nothing".to_string();
    };
    let text = value.to_string();
    if text.chars().count() <= SHOWN_CHARS {
        text
    } else {
        let head: String = text.chars().take(SHOWN_CHARS).collect();
        format!("{head}...")
    }
}

/// `change.spec.image` reads as `image`: inside a step, the spec is implied.
fn field_name(path: &str) -> &str {
    path.strip_prefix("change.spec.")
        .or_else(|| path.strip_prefix("change."))
        .filter(|rest| !rest.is_empty())
        .unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, Mount, Observed, SecretVersion};

    /// The plan for a fresh host: file, secrets, network, volume, evi-state,
    /// evi-be, evi-worker.
    fn fresh() -> Plan {
        let yaml = "services: { evi-be: { image: app }, evi-worker: { image: app } }";
        let settings =
            crate::settings::from_yaml(Some((Path::new("evi.yaml"), yaml)), None).unwrap();
        let desired = crate::desired::build(&settings, "port 6379\n", SecretVersion(1));
        crate::plan::plan(&desired, &Observed::default()).unwrap()
    }

    fn spec_of<'a>(plan: &'a mut Plan, name: &str) -> &'a mut crate::model::ContainerSpec {
        let step = plan.steps.iter_mut().find(|s| s.name == name).unwrap();
        match &mut step.change {
            Change::CreateContainer { spec } | Change::ReplaceContainer { spec } => spec,
            other => panic!("{name} has no spec: {other:?}"),
        }
    }

    fn step_no(plan: &Plan, name: &str) -> usize {
        plan.steps.iter().position(|s| s.name == name).unwrap() + 1
    }

    #[test]
    fn the_same_plan_has_no_difference() {
        assert_eq!(first_difference(&fresh(), &fresh()), None);
    }

    #[test]
    fn an_edited_plan_is_refused_naming_the_first_difference() {
        type Edit = fn(&mut Plan);
        let cases: Vec<(Edit, String)> = vec![
            (
                |p| spec_of(p, "evi-state").image = "evil/valkey:8".into(),
                r#"(container evi-state): image differs: saved "evil/valkey:8", now ""#.into(),
            ),
            (
                |p| {
                    spec_of(p, "evi-be").mounts.push(Mount::Bind {
                        source: "/".into(),
                        target: "/host".into(),
                        read_only: false,
                    })
                },
                r#"(container evi-be): mounts[0] differs: saved {"Bind":{"read_only":false,"source":"/","target":"/host"}}, now nothing"#.into(),
            ),
            (
                |p| spec_of(p, "evi-state").command.push("--enable-debug-command".into()),
                "(container evi-state): command[".into(),
            ),
            (
                |p| {
                    spec_of(p, "evi-worker")
                        .labels
                        .insert("extra".into(), "1".into());
                },
                r#"(container evi-worker): labels.extra differs: saved "1", now nothing"#.into(),
            ),
            (
                |p| p.steps[5].change = Change::RemoveContainer,
                r#"(container evi-state): action differs: saved "remove_container", now "create_container""#.into(),
            ),
            (
                |p| {
                    if let Change::WriteConfig { content } = &mut p.steps[0].change {
                        content.push_str("enable-debug-command yes\n");
                    }
                },
                "step 1 (file /var/lib/evi/valkey/valkey.conf): content differs: saved".into(),
            ),
        ];
        for (edit, expected) in cases {
            let mut saved = fresh();
            edit(&mut saved);
            let text = first_difference(&saved, &fresh()).expect("a difference");
            assert!(text.contains(&expected), "{text}\nexpected: {expected}");
            assert!(!text.contains('\n'), "one line: {text}");
        }
        let mut saved = fresh();
        spec_of(&mut saved, "evi-state").image = "x".into();
        let text = first_difference(&saved, &fresh()).unwrap();
        assert!(
            text.starts_with(&format!(
                "step {} (container evi-state): image differs: saved \"x\", now ",
                step_no(&saved, "evi-state")
            )),
            "{text}"
        );
    }

    #[test]
    fn a_step_added_or_dropped_is_named() {
        let now = fresh();
        let mut saved = fresh();
        saved.steps.pop();
        assert_eq!(
            first_difference(&saved, &now).unwrap(),
            "it has 7 steps, the plan now has 8: step 8 (create container evi-worker) is missing from it"
        );
        let mut saved = fresh();
        let mut extra = saved.steps[5].clone();
        extra.name = "evi-extra".into();
        saved.steps.push(extra);
        assert_eq!(
            first_difference(&saved, &now).unwrap(),
            "it has 9 steps, the plan now has 8: step 9 (create container evi-extra) is not in the plan now"
        );
    }

    #[test]
    fn a_long_value_is_elided() {
        let mut saved = fresh();
        spec_of(&mut saved, "evi-be").image = "a".repeat(500);
        let text = first_difference(&saved, &fresh()).unwrap();
        assert!(text.len() < 300 && text.contains("aaa..."), "{text}");
    }
}
