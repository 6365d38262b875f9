//! `evi-install down`: remove the containers and the network; with `--purge`,
//! also the data, the secrets and the config. Never touches what it does not own.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{observe, Host};
use crate::apply::{self, apply};
use crate::cli::DownArgs;
use crate::exit;
use crate::plan::plan_down;
use crate::plan_view;
use crate::settings::Settings;
use crate::ui::Ui;

pub async fn run(settings: &Settings, ctx: &Host, args: &DownArgs, ui: &Ui) -> Result<u8> {
    let engine = ctx.connect().await?;
    let observed = observe(&engine, settings).await?;
    let config_path = settings.config_path().display().to_string();
    let (plan, skipped) = plan_down(&observed, &settings.network, &config_path, args.purge);
    for resource in &skipped {
        ui.warn(&format!(
            "leaving {resource} alone: it was not created by evi-install"
        ));
    }
    if !plan.has_changes() {
        ui.result("Nothing to remove.");
        return Ok(exit::OK);
    }
    let listing = plan
        .steps
        .iter()
        .map(|s| plan_view::step_line(ui, s))
        .collect::<Vec<_>>()
        .join("\n");
    if args.dry_run {
        ui.result(&format!(
            "evi-install down would remove:\n\n{listing}\n\n{} to remove.",
            plan.steps.len()
        ));
        return Ok(exit::OK);
    }
    if args.purge && !args.yes {
        confirm_purge(&listing)?;
    }
    let _lock = ctx.lock(settings, "down").await?;
    ui.info(&format!("Removing:\n\n{listing}\n"));
    let started = Instant::now();
    let opts = apply::Options::new(Duration::from_secs(0));
    let report = apply(&engine, &plan, ui, &opts).await?;
    ui.result(&format!(
        "Down complete: {} removed in {:.1}s.",
        report.removed,
        started.elapsed().as_secs_f64()
    ));
    Ok(exit::OK)
}

/// `--purge` deletes the data: ask on a terminal, refuse elsewhere.
fn confirm_purge(listing: &str) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("down --purge deletes all Valkey data and the password; pass --yes to confirm (no terminal to ask on)");
    }
    print!("{listing}\n\nThis deletes all Valkey data and the password. Type `yes` to continue: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("down --purge cancelled; nothing was removed");
    }
    Ok(())
}
