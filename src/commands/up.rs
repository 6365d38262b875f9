//! `evi-install up`: observe, plan, then (unless `--dry-run`) apply.
//!
//! Everything that can be checked without changing the host is checked before
//! the first change: settings, the state directory, ownership of every
//! resource, images. A failure there leaves the host exactly as it was.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use sha2::{Digest, Sha256};

use super::{observe, Host};
use crate::apply;
use crate::cli::{OutputFormat, UpArgs};
use crate::desired;
use crate::engine::Engine;
use crate::exit;
use crate::fsutil::read_optional;
use crate::model::*;
use crate::plan::{plan, secret_version_for};
use crate::plan_view::{self, PlanDocument};
use crate::render::{hex, valkey_conf};
use crate::settings::{check_fits_host, io_reason, Settings};
use crate::ui::Ui;

pub async fn run(settings: &Settings, ctx: &Host, args: &UpArgs, ui: &Ui) -> Result<u8> {
    settings.require_backend()?;
    if let Some(total) = crate::backup::jobs::meminfo("MemTotal") {
        check_fits_host(settings, total)?;
    }
    let conf = valkey_conf(settings)?;
    check_state_dir(&settings.state_dir)?;

    let engine = match ctx.connect().await {
        Ok(engine) => Some(engine),
        Err(e) if args.dry_run => {
            ui.warn(&format!("{e:#}"));
            ui.warn(
                "planning against an empty host: the plan below shows what a fresh host would get",
            );
            None
        }
        Err(e) => return Err(e),
    };
    let Some(engine) = engine else {
        let observed = Observed {
            config: read_optional(&settings.config_path())?,
            ..Observed::default()
        };
        return show_plan(&make_document(settings, &conf, &observed)?, args, ui);
    };

    // Planning reads only, so it needs no lock: a no-op `up` or a dry run never
    // waits for another run, and bad input stops here with the host untouched.
    let observed = observe(&engine, settings).await?;
    let document = make_document(settings, &conf, &observed)?;
    if args.dry_run {
        let code = show_plan(&document, args, ui)?;
        if args.output == OutputFormat::Text {
            if let Some(note) = restart_note(&engine, &document.plan, &observed).await {
                ui.result(&note);
            }
        }
        return Ok(code);
    }
    if let Some(path) = &args.plan {
        crate::saved_plan::check(path, &document)?;
    }
    if !document.plan.has_changes() {
        ui.result(&plan_view::summary_line(&document.plan));
        return Ok(exit::OK);
    }

    // Images come before the lock: a bad image reference must fail before the
    // lock file (or anything else) is written.
    apply::ensure_images(&engine, &document.plan, ui).await?;

    // Changes ahead: take the host lock, then look again, since another run may
    // have changed the host while this one waited.
    let _lock = ctx.lock(settings, "up").await?;
    let observed = observe(&engine, settings).await?;
    let to_apply = make_document(settings, &conf, &observed)?;
    let version = secret_version_for(&observed);
    // What is applied is always the plan made now; a saved one must equal it.
    if let Some(path) = &args.plan {
        crate::saved_plan::check(path, &to_apply)?;
    }
    if !to_apply.plan.has_changes() {
        ui.result(&plan_view::summary_line(&to_apply.plan));
        return Ok(exit::OK);
    }
    ui.info(&plan_view::text(ui, &to_apply.plan));
    if let Some(note) = restart_note(&engine, &to_apply.plan, &observed).await {
        ui.info(&note);
    }
    ui.info("");

    let started = Instant::now();
    let (report, proven_by, probe_time) = apply::apply_and_prove(
        &engine,
        &to_apply.plan,
        ui,
        Duration::from_secs(args.ready_timeout),
        settings,
        version,
    )
    .await?;

    // Look again: what was applied must now plan to nothing.
    let observed = observe(&engine, settings).await?;
    let after = make_document(settings, &conf, &observed)?;
    if after.plan.has_changes() {
        bail!(
            "the host still differs from the settings after apply ({}); run `evi-install up --dry-run` to see what",
            plan_view::summary_line(&after.plan)
        );
    }
    ui.info(&format!(
        "  {} got PONG from evi-state with its VALKEY_URL ({:.1}s)",
        proven_by.who(&settings.network),
        probe_time.as_secs_f64()
    ));
    ui.result(&report.summary(started.elapsed()));
    if !crate::boot::systemd_running() {
        ui.info(crate::boot::NO_SYSTEMD_NOTE);
    } else if let Some(note) = crate::boot::linger_note() {
        ui.info(&note);
    }
    Ok(if args.detailed_exitcode {
        exit::CHANGES
    } else {
        exit::OK
    })
}

/// Plans `up` for the observed host, with the fingerprints a saved plan needs.
fn make_document(settings: &Settings, conf: &str, observed: &Observed) -> Result<PlanDocument> {
    // Mid-rotation the clients may hold either password and only the rotation
    // knows which one evi-state accepts: `up` would move them all to the newest.
    let state_runs = observed
        .containers
        .get(STATE_CONTAINER)
        .is_some_and(|c| c.running);
    if state_runs && crate::rotation::interrupted(observed) {
        bail!(
            "a password rotation was interrupted; run `evi-install rotate-secret` to finish it, then `evi-install up`"
        );
    }
    let wanted = desired::build(settings, conf, secret_version_for(observed));
    let the_plan = plan(&wanted, observed)?;
    Ok(PlanDocument::new(
        the_plan,
        settings_fingerprint(settings, conf),
        host_fingerprint(observed),
    ))
}

/// A plan that restarts a running evi-state says what the restart costs
/// (`restart_cost.rs`): not in the plan itself, which a saved plan must
/// match, while the data size changes all the time.
async fn restart_note<E: Engine>(engine: &E, plan: &Plan, observed: &Observed) -> Option<String> {
    let restarts = plan
        .steps
        .iter()
        .any(|s| s.kind == Kind::Container && s.name == STATE_CONTAINER && s.verb == Verb::Replace);
    let runs = observed
        .containers
        .get(STATE_CONTAINER)
        .is_some_and(|c| c.running);
    if !(restarts && runs) {
        return None;
    }
    let used = crate::restart_cost::used_memory(engine).await?;
    Some(crate::restart_cost::note(used))
}

fn show_plan(document: &PlanDocument, args: &UpArgs, ui: &Ui) -> Result<u8> {
    match args.output {
        OutputFormat::Text => ui.result(&plan_view::text(ui, &document.plan)),
        OutputFormat::Json => ui.result(&serde_json::to_string_pretty(document)?),
    }
    if let Some(path) = &args.out {
        let json = serde_json::to_string_pretty(document)? + "\n";
        std::fs::write(path, json).map_err(|e| {
            anyhow!(
                "cannot write the plan to {}: {}",
                path.display(),
                io_reason(&e)
            )
        })?;
        ui.info(&format!(
            "Saved the plan to {}. Apply it with `evi-install up --plan {}`.",
            path.display(),
            path.display()
        ));
    }
    Ok(if args.detailed_exitcode && document.plan.has_changes() {
        exit::CHANGES
    } else {
        exit::OK
    })
}

fn settings_fingerprint(settings: &Settings, conf: &str) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(settings).unwrap_or_default());
    h.update(conf.as_bytes());
    hex(&h.finalize())
}

fn host_fingerprint(observed: &Observed) -> String {
    hex(&Sha256::digest(
        serde_json::to_vec(observed).unwrap_or_default(),
    ))
}

/// The state directory must be a directory we can write, or creatable.
fn check_state_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("state directory {} is a file, not a directory; remove it or choose another with --state-dir", dir.display());
    }
    // The nearest existing ancestor decides whether we can create or write it.
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if !writable(existing) {
        bail!(
            "state directory {} is not writable ({} is not writable by this user); run as root or choose another with --state-dir",
            dir.display(),
            existing.display()
        );
    }
    Ok(())
}

fn writable(path: &Path) -> bool {
    rustix::fs::access(path, rustix::fs::Access::WRITE_OK).is_ok()
}
