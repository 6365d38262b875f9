//! `evi-install restore FILE`: puts an archive's data in place of evi-state's,
//! proves it loads to what the manifest says, and rolls back otherwise.
//!
//! The steps, each safe to be killed after (a rerun or `up` then finds either
//! the old data or the restored data in place, never a mix, never nothing):
//! 1. `prepare`: leftovers of an interrupted restore are rolled back (evi-state
//!    stopped) or discarded (evi-state running: its data is the current one);
//! 2. `stage`: the archive's files go into the volume under `.evi-restore/`,
//!    each checked against its sha256 as it is sent, and given to the server's user;
//! 3. `check`: a server with evi-state's image, valkey.conf, volume and user,
//!    on no network, loads the staged files while evi-state still serves; its
//!    data must equal the manifest's (a failure here changes nothing);
//! 4. `stop-state`: evi-state stops gracefully (its AOF is complete);
//! 5. `swap`: the current data moves to the roll-back copy, the new data in;
//! 6. `start-state`: evi-state starts and answers an authenticated PING;
//! 7. `verify-live`: its data must hold every stream and group of the archive;
//! 8. `finish`: the roll-back copy is deleted.
//!
//! A failure in 5-7 puts the roll-back copy back and starts evi-state on it.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::backup::{exec_state, now_ms, send_data};
use super::{observe, Host};
use crate::backup::archive;
use crate::backup::jobs::{self, human_bytes, HELPER_CONTAINER};
use crate::backup::manifest::{compare_exact, compare_live, Manifest, Summary};
use crate::backup::scripts;
use crate::cli::RestoreArgs;
use crate::engine::Engine;
use crate::exit;
use crate::model::*;
use crate::render::{effective_hash, valkey_conf};
use crate::settings::Settings;
use crate::ui::Ui;

/// Where `stage` leaves the checked files, in evi-state's volume.
const STAGED_DIR: &str = "/data/.evi-restore/incoming";

pub async fn run(settings: &Settings, host: &Host, args: &RestoreArgs, ui: &Ui) -> Result<u8> {
    let started = Instant::now();
    let file = &args.file;
    // Nothing on the host changes before the whole archive has been checked.
    let manifest = archive::read_manifest(file)?;
    let bar = ui.byte_bar(manifest.data_size(), "checking checksums");
    archive::check(file, &manifest, |n| bar.set_position(n))?;
    bar.finish_and_clear();
    let conf = valkey_conf(settings)?;
    let aof_dir =
        jobs::conf_value(&conf, "appenddirname").unwrap_or_else(|| "appendonlydir".into());
    let aof_file =
        jobs::conf_value(&conf, "appendfilename").unwrap_or_else(|| "appendonly.aof".into());
    if (aof_dir.as_str(), aof_file.as_str())
        != (manifest.aof_dir.as_str(), manifest.aof_file.as_str())
    {
        bail!(
            "the archive's AOF is `{}/{}`, but valkey.conf names `{aof_dir}/{aof_file}`; restore it under settings with the same AOF names",
            manifest.aof_dir,
            manifest.aof_file
        );
    }
    let engine = host.connect().await?;
    let observed = observe(&engine, settings).await?;
    let state = match observed.containers.get(STATE_CONTAINER) {
        None => bail!("evi-state does not exist; create it with `evi-install up`, then restore"),
        Some(c) if !c.owned() => bail!("container evi-state exists but was not created by evi-install; remove or rename it, then run `evi-install up`"),
        Some(c) => c.clone(),
    };
    let with_rdb = !settings.valkey.appendonly;
    let needed = manifest.data_size() * if with_rdb { 2 } else { 1 } + manifest.data_size() / 10;
    if let Some(mount) = engine.volume_mountpoint(DATA_VOLUME).await? {
        jobs::require_space(
            Path::new(&mount),
            needed,
            "the restored data beside the roll-back copy",
        )?;
    }
    let live = if state.running {
        Some(live_view(&engine).await?)
    } else {
        None
    };
    let plan = plan_text(file, &manifest, live.as_ref(), &effective_hash(&conf));
    if args.dry_run {
        ui.result(&plan);
        return Ok(exit::OK);
    }
    if !args.yes {
        confirm(&plan)?;
    } else {
        ui.info(&plan);
    }
    let _lock = host.lock(settings, "restore").await?;

    let image = settings.services.evi_state.image.clone();
    let helper = |action: &str| {
        let rdb = if with_rdb { "rdb" } else { "no-rdb" };
        jobs::throwaway(
            HELPER_CONTAINER,
            &image,
            scripts::HELPER,
            &[action, &aof_dir, &aof_file, rdb],
            vec![jobs::data_volume()],
        )
    };
    let step = |name: &str, t: Instant| {
        ui.info(&format!("  {name} ({:.1}s)", t.elapsed().as_secs_f64()));
        jobs::fault_point(name);
    };

    // 1. Leftovers of an interrupted restore.
    let t = Instant::now();
    let running = matches!(
        engine.container_state(STATE_CONTAINER).await?,
        Some(crate::engine::RunState::Running)
    );
    let leftover = jobs::run_helper(
        &engine,
        &helper(if running { "discard" } else { "rollback" }),
    )
    .await?;
    if leftover.contains("rolled back") {
        ui.warn("an interrupted restore was found and rolled back: its roll-back copy is in place again");
    }
    step("prepare", t);
    crate::interrupt::check(&["prepare".into()], &["stage".into()])?;

    // 2. Stage the files in the volume.
    let t = Instant::now();
    let spec = helper("stage");
    jobs::create(&engine, &spec).await?;
    let staged = async {
        send_data(
            &engine,
            HELPER_CONTAINER,
            "/data",
            file,
            &manifest,
            ".evi-restore/partial/",
        )
        .await?;
        let (code, out) = jobs::run_to_end(&engine, HELPER_CONTAINER, jobs::JOB_LIMIT).await?;
        if code != 0 {
            bail!(
                "staging the archive's files failed (exit code {code}): {}",
                jobs::last_lines(&out)
            );
        }
        Ok(())
    }
    .await;
    engine.remove_container(HELPER_CONTAINER, 1).await?;
    if let Err(e) = staged {
        // Nothing was swapped: drop what arrived; evi-state kept serving.
        let _ = jobs::run_helper(&engine, &helper("discard")).await;
        bail!("restore failed: {e:#}; evi-state was not stopped and keeps its data");
    }
    step("stage", t);
    crate::interrupt::check(&["prepare".into(), "stage".into()], &["check".into()])?;

    // 3. The check server, on the staged files, while evi-state still serves.
    let t = Instant::now();
    let check = jobs::throwaway(
        jobs::CHECK_CONTAINER,
        &image,
        &scripts::check_job(CONF_IN_CONTAINER),
        &[STAGED_DIR],
        vec![
            Mount::Bind {
                source: settings.config_path(),
                target: CONF_IN_CONTAINER.into(),
                read_only: true,
            },
            jobs::data_volume(),
        ],
    );
    let spinner = ui.spinner(&format!(
        "a check server loads the staged {} (evi-state keeps serving)",
        human_bytes(manifest.data_size())
    ));
    let checked = async {
        let job = jobs::run_helper_job(&engine, &check, "the restore's check server").await?;
        if job.aof_enabled != Some(settings.valkey.appendonly) {
            bail!(
                "the check server's AOF is {:?}, the settings say appendonly {}",
                job.aof_enabled,
                settings.valkey.appendonly
            );
        }
        let c = compare_exact(&manifest.summary.totals(), &job.totals(), now_ms());
        if !c.differences.is_empty() {
            bail!(
                "the restored data differs from the manifest: {}",
                c.differences.join("; ")
            );
        }
        Ok(c.notes)
    }
    .await;
    drop(spinner);
    let notes = match checked {
        Ok(notes) => notes,
        Err(e) => {
            // Nothing was swapped: drop the staged files; evi-state kept serving.
            let _ = jobs::run_helper(&engine, &helper("discard")).await;
            bail!("restore failed: {e:#}; evi-state was not stopped and keeps its data");
        }
    };
    step("check", t);
    crate::interrupt::check(
        &["prepare".into(), "stage".into(), "check".into()],
        &["stop-state".into()],
    )?;

    // 4.-5. Stop evi-state and swap the data. From here on evi-state is down
    // until step 6; clients get connection errors and retry.
    let down = Instant::now();
    let t = Instant::now();
    if running && settings.valkey.appendonly {
        // SIGTERM makes Valkey fsync its AOF and, if a save point is set, also
        // write a blocking RDB snapshot (https://valkey.io/topics/signals/):
        // about 5 s at 500 MB while clients wait, for a file the swap moves
        // aside. The AOF holds the data; the save points are dropped in
        // memory only, and evi-state's restart reads them from valkey.conf.
        // Should this fail, the stop only takes longer.
        exec_state(&engine, &crate::acl::admin_script("cli CONFIG SET save ''"))
            .await
            .ok();
    }
    engine
        .stop_container(STATE_CONTAINER, crate::timeouts::STATE_STOP_SECS)
        .await?;
    step("stop-state", t);
    let t = Instant::now();
    if let Err(e) = jobs::run_helper(&engine, &helper("swap")).await {
        return Err(roll_back(&engine, &helper("rollback"), args.ready_timeout, e).await);
    }
    step("swap", t);

    let ready = Duration::from_secs(args.ready_timeout);
    let verified = async {
        // 6. evi-state on the restored data.
        let t = Instant::now();
        engine.start_container(STATE_CONTAINER).await?;
        crate::apply::wait_ready_reporting(&engine, ready, &|p| ui.info(&format!("  {p}"))).await?;
        let gap = down.elapsed();
        step("start-state", t);
        // 7. What clients cannot undo is there.
        let t = Instant::now();
        let c2 = compare_live(&manifest.summary, &live_view(&engine).await?.streams);
        if !c2.differences.is_empty() {
            bail!(
                "evi-state's live data differs from the manifest: {}",
                c2.differences.join("; ")
            );
        }
        step("verify-live", t);
        Ok::<_, anyhow::Error>(gap)
    }
    .await;
    let gap = match verified {
        Ok(v) => v,
        Err(e) => return Err(roll_back(&engine, &helper("rollback"), args.ready_timeout, e).await),
    };
    // 8. The roll-back copy is no longer needed.
    let t = Instant::now();
    jobs::run_helper(&engine, &helper("finish")).await?;
    step("finish", t);
    for note in notes {
        ui.info(&format!("  note: {note}"));
    }
    ui.result(&format!(
        "Restore complete: evi-state runs on the data of {} ({} keys, {} streams, taken {}), checked against its manifest; \
         evi-state was down for {:.1}s; total {:.1}s.",
        file.display(),
        manifest.summary.keys(),
        manifest.summary.streams.len(),
        manifest.created_at,
        gap.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    Ok(exit::OK)
}

/// Puts the roll-back copy back and starts evi-state on it; returns the
/// error to report, saying where the data stands.
async fn roll_back<E: Engine>(
    engine: &E,
    helper: &ContainerSpec,
    ready_secs: u64,
    cause: anyhow::Error,
) -> anyhow::Error {
    let undo = async {
        engine
            .stop_container(STATE_CONTAINER, crate::timeouts::STATE_STOP_SECS)
            .await?;
        jobs::run_helper(engine, helper).await?;
        engine.start_container(STATE_CONTAINER).await?;
        crate::apply::wait_ready(engine, Duration::from_secs(ready_secs)).await
    }
    .await;
    match undo {
        Ok(()) => anyhow!("restore failed: {cause:#}; the previous data is back in place and evi-state runs on it"),
        Err(e) => anyhow!(
            "restore failed: {cause:#}; rolling back failed too: {e:#}; the previous data is in the evi-state-data volume under .evi-restore/rollback: run `evi-install restore` again to roll back, or `evi-install up`"
        ),
    }
}

/// The live evi-state as `restore` reads it: key counts from `INFO keyspace`
/// and every stream and group. Clients are using it, so no key is read one
/// by one (see [`scripts::live_streams_script`]).
#[derive(Debug, Default, PartialEq, Eq)]
struct Live {
    keys: u64,
    with_ttl: u64,
    /// Streams and groups only: its namespaces count stream keys alone.
    streams: Summary,
}

async fn live_view<E: Engine>(engine: &E) -> Result<Live> {
    parse_live(&exec_state(engine, &scripts::live_streams_script()).await?)
}

fn parse_live(out: &str) -> Result<Live> {
    let mut live = Live::default();
    let mut lines = String::new();
    for line in out.lines() {
        if let Some(l) = line.strip_prefix("evi-summary ") {
            lines.push_str(l);
            lines.push('\n');
        } else if let Some(fields) = line.strip_prefix("evi-keyspace ") {
            let k = jobs::parse_keyspace(fields);
            (live.keys, live.with_ttl) = (k.keys, k.with_ttl);
        }
    }
    live.streams = Summary::parse(&lines)?;
    Ok(live)
}

fn plan_text(file: &Path, m: &Manifest, live: Option<&Live>, fingerprint: &str) -> String {
    let mut text = format!(
        "evi-install restore will replace evi-state's data with the archive's:\n\n\
         \x20 archive {} (taken {}, Valkey {}, {} of data)\n",
        file.display(),
        m.created_at,
        m.valkey_version,
        human_bytes(m.data_size())
    );
    if m.settings_fingerprint != fingerprint {
        text.push_str("  note: the archive was taken under other valkey.conf settings than the current ones\n");
    }
    text.push_str(
        "\n  1. stage its files in the volume evi-state-data (each checked against its checksum as it is sent)\n\
         \x20 2. load them in a check server on no network and compare with the manifest (evi-state keeps serving)\n\
         \x20 3. stop evi-state (gracefully, up to 30 s): clients get connection errors and retry\n\
         \x20 4. swap the data in; the current data is kept as a roll-back copy\n\
         \x20 5. start evi-state and check its data again; on any mismatch the roll-back copy goes back\n\n",
    );
    let archive_lines = m.summary.lines();
    match live {
        Some(live) => {
            text.push_str("  in the archive:\n");
            for l in &archive_lines {
                text.push_str(&format!("    {l}\n"));
            }
            text.push_str("  replaces what evi-state holds now:\n");
            text.push_str(&format!(
                "    {} keys ({} with a TTL)\n",
                live.keys, live.with_ttl
            ));
            for l in live.streams.stream_lines() {
                text.push_str(&format!("    {l}\n"));
            }
        }
        None => {
            text.push_str("  in the archive:\n");
            for l in &archive_lines {
                text.push_str(&format!("    {l}\n"));
            }
            text.push_str("  evi-state is not running; its current data is kept as the roll-back copy all the same\n");
        }
    }
    text
}

/// Restoring replaces all data: ask on a terminal, refuse elsewhere.
fn confirm(plan: &str) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("restore replaces all of evi-state's data; pass --yes to confirm (no terminal to ask on)");
    }
    print!("{plan}\nThis replaces all of evi-state's data. Type `yes` to continue: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("restore cancelled; nothing was changed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_view_reads_info_keyspace_and_the_streams() {
        let out = "evi-summary s 73747265616d3a74 5 1-5 5\n\
                   evi-summary n stream: 1 0 -1\n\
                   evi-keyspace keys=374495,expires=370000,avg_ttl=0\n";
        let live = parse_live(out).unwrap();
        assert_eq!((live.keys, live.with_ttl), (374495, 370000));
        assert_eq!(live.streams.streams["stream:t"].last_id, "1-5");
        // An empty server has no db0 line.
        assert_eq!(parse_live("").unwrap(), Live::default());
        let plan = plan_text(
            Path::new("a.tar.zst"),
            &Manifest {
                format_version: 1,
                tool_version: "t".into(),
                valkey_version: "8.1.1".into(),
                created_at: "2026-12-07T00:00:00Z".into(),
                settings_fingerprint: "f".into(),
                aof_dir: "appendonlydir".into(),
                aof_file: "appendonly.aof".into(),
                files: vec![],
                summary: Summary::default(),
            },
            Some(&live),
            "f",
        );
        assert!(
            plan.contains("replaces what evi-state holds now:\n    374495 keys (370000 with a TTL)\n    stream:t: 5 entries, last 1-5\n"),
            "{plan}"
        );
    }
}
