//! How a plan is shown: Terraform-style text, JSON, and the saved-plan file.

use serde::{Deserialize, Serialize};

use crate::model::{Plan, Step, Verb};
use crate::ui::{Style, Ui};

/// Bumped whenever the JSON layout changes incompatibly.
pub const FORMAT_VERSION: &str = "2";

pub fn symbol(verb: Verb) -> &'static str {
    match verb {
        Verb::Create => "+",
        Verb::Update => "~",
        Verb::Replace => "-/+",
        Verb::Start => ">",
        Verb::Remove => "-",
        Verb::Keep => "=",
    }
}

pub fn verb_word(verb: Verb) -> &'static str {
    match verb {
        Verb::Create => "create",
        Verb::Update => "update",
        Verb::Replace => "replace",
        Verb::Start => "start",
        Verb::Remove => "remove",
        Verb::Keep => "keep",
    }
}

fn style(verb: Verb) -> Style {
    match verb {
        Verb::Create | Verb::Start => Style::Green,
        Verb::Update | Verb::Replace => Style::Yellow,
        Verb::Remove => Style::Red,
        Verb::Keep => Style::Dim,
    }
}

/// One line per step: `  -/+ replace container evi-state  (valkey.conf changed)`.
pub fn step_line(ui: &Ui, step: &Step) -> String {
    let head = format!(
        "{:>3} {:<7} {} {}",
        symbol(step.verb),
        verb_word(step.verb),
        step.kind.as_str(),
        step.name
    );
    format!("  {}  ({})", ui.paint(style(step.verb), &head), step.reason)
}

/// The whole plan as text, ending with the `Plan:` or `No changes.` line.
pub fn text(ui: &Ui, plan: &Plan) -> String {
    let mut out = String::new();
    if !plan.has_changes() {
        out.push_str(&summary_line(plan));
        return out;
    }
    out.push_str("evi-install will perform these actions:\n\n");
    for step in &plan.steps {
        if step.verb == Verb::Keep && ui.verbose == 0 {
            continue;
        }
        out.push_str(&step_line(ui, step));
        out.push('\n');
        if let Some(diff) = &step.diff {
            for line in diff.lines() {
                let painted = match line.chars().next() {
                    Some('+') if !line.starts_with("+++") => ui.paint(Style::Green, line),
                    Some('-') if !line.starts_with("---") => ui.paint(Style::Red, line),
                    _ => line.to_string(),
                };
                out.push_str(&format!("        {painted}\n"));
            }
        }
    }
    out.push('\n');
    out.push_str(&summary_line(plan));
    out
}

pub fn summary_line(plan: &Plan) -> String {
    if !plan.has_changes() {
        return "No changes. The host matches the settings.".to_string();
    }
    let mut line = format!(
        "Plan: {} to create, {} to replace, {} to update, {} unchanged.",
        plan.count(Verb::Create),
        plan.count(Verb::Replace),
        plan.count(Verb::Update),
        plan.count(Verb::Keep),
    );
    let (start, remove) = (plan.count(Verb::Start), plan.count(Verb::Remove));
    if start + remove > 0 {
        line.push_str(&format!(" ({start} to start, {remove} to remove.)"));
    }
    line
}

/// A plan as written by `--output json` and `--out`, and read by `--plan`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlanDocument {
    pub format_version: String,
    pub evi_install_version: String,
    /// sha256 of the resolved settings and the rendered config.
    pub settings_fingerprint: String,
    /// sha256 of everything observed on the host.
    pub host_fingerprint: String,
    pub changes_pending: bool,
    pub summary: Summary,
    pub plan: Plan,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub replace: usize,
    pub update: usize,
    pub start: usize,
    pub remove: usize,
    pub unchanged: usize,
}

impl PlanDocument {
    pub fn new(plan: Plan, settings_fingerprint: String, host_fingerprint: String) -> PlanDocument {
        PlanDocument {
            format_version: FORMAT_VERSION.to_string(),
            evi_install_version: env!("CARGO_PKG_VERSION").to_string(),
            settings_fingerprint,
            host_fingerprint,
            changes_pending: plan.has_changes(),
            summary: Summary {
                create: plan.count(Verb::Create),
                replace: plan.count(Verb::Replace),
                update: plan.count(Verb::Update),
                start: plan.count(Verb::Start),
                remove: plan.count(Verb::Remove),
                unchanged: plan.count(Verb::Keep),
            },
            plan,
        }
    }
}
