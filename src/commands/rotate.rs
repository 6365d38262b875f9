//! `evi-install rotate-secret [--dry-run]`: a new password for the whole stack.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use super::{observe, Host};
use crate::cli::RotateArgs;
use crate::desired;
use crate::exit;
use crate::model::Observed;
use crate::plan::plan;
use crate::plan_view;
use crate::render::valkey_conf;
use crate::rotation::{execute, plan_rotation, Rotation, Specs};
use crate::settings::Settings;
use crate::ui::Ui;

pub async fn run(settings: &Settings, ctx: &Host, args: &RotateArgs, ui: &Ui) -> Result<u8> {
    let conf = valkey_conf(settings)?;
    let engine = ctx.connect().await?;
    let rotation = checked_rotation(settings, &conf, &observe(&engine, settings).await?)?;
    if args.dry_run {
        ui.result(&describe(&rotation, "would take"));
        return Ok(exit::OK);
    }

    let _lock = ctx.lock(settings, "rotate-secret").await?;
    // Another run may have moved the host on while this one waited.
    let rotation = checked_rotation(settings, &conf, &observe(&engine, settings).await?)?;
    ui.info(&describe(&rotation, "takes"));
    let specs = Specs {
        from: desired::build(settings, &conf, rotation.from),
        to: desired::build(settings, &conf, rotation.to),
    };
    let outcome = execute(
        &engine,
        &rotation,
        &specs,
        ui,
        Duration::from_secs(args.ready_timeout),
    )
    .await?;
    // The clients hold the new URL now: prove that one gets PONG with it.
    let first_client = settings.client_names().into_iter().next();
    crate::reach::require_reach(&engine, settings, rotation.to, first_client.as_deref()).await?;
    let what = if rotation.resuming {
        "Rotation completed (it had been interrupted)"
    } else {
        "Rotation complete"
    };
    ui.result(&format!(
        "{what}: the stack uses password generation v{}; the old password is revoked ({:.1}s).",
        rotation.to.0,
        outcome.elapsed.as_secs_f64()
    ));
    Ok(exit::OK)
}

/// Plans the rotation; a fresh one also needs the stack to match the settings,
/// so that rotating never doubles as an unreviewed `up`.
fn checked_rotation(settings: &Settings, conf: &str, observed: &Observed) -> Result<Rotation> {
    // Every replica the settings ask for (a fresh rotation needs the host to match them).
    let clients = settings.client_names();
    let clients: Vec<&str> = clients.iter().map(String::as_str).collect();
    let rotation = plan_rotation(observed, &clients)
        .map_err(|e| anyhow!("cannot rotate the password: {e}"))?;
    if !rotation.resuming {
        let pending = plan(&desired::build(settings, conf, rotation.from), observed)?;
        if pending.has_changes() {
            bail!(
                "cannot rotate the password: the host differs from the settings ({}); run `evi-install up` first",
                plan_view::summary_line(&pending)
            );
        }
    }
    Ok(rotation)
}

fn describe(rotation: &Rotation, verb: &str) -> String {
    let mut text = if rotation.resuming {
        format!("Completing an interrupted rotation to password generation v{}. rotate-secret {verb} these steps:\n", rotation.to.0)
    } else {
        format!(
            "Rotating from password generation v{} to v{}. rotate-secret {verb} these steps:\n",
            rotation.from.0, rotation.to.0
        )
    };
    for (i, step) in rotation.steps.iter().enumerate() {
        text.push_str(&format!("  {}. {step}\n", i + 1));
    }
    text.trim_end().to_string()
}
