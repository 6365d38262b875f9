//! `evi-install backup`: a consistent snapshot of evi-state's data while it
//! serves clients, checked by loading it into a throwaway server, written as
//! one archive (mode 0600) with a manifest. `backup --verify FILE` loads an
//! archive into a throwaway server and compares it with its manifest.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use super::Host;
use crate::backup::archive::{self, ArchiveWriter, ChannelWriter};
use crate::backup::jobs::{self, human_bytes};
use crate::backup::manifest::{compare_exact, FileEntry, Manifest, FORMAT_VERSION};
use crate::backup::scripts;
use crate::cli::BackupArgs;
use crate::engine::Engine;
use crate::exit;
use crate::model::*;
use crate::render::{effective_hash, valkey_conf};
use crate::settings::Settings;
use crate::ui::Ui;

/// Default archive names: `evi-state-20261126T041500Z.tar.zst`.
const PREFIX: &str = "evi-state-";
const SUFFIX: &str = ".tar.zst";
use crate::timeouts::SAVE_LIMIT;

pub async fn run(settings: &Settings, host: &Host, args: &BackupArgs, ui: &Ui) -> Result<u8> {
    if let Some(file) = &args.verify {
        return verify(settings, host, file, ui).await;
    }
    let started = Instant::now();
    let conf = valkey_conf(settings)?;
    let dir = settings.state_dir.join("backups");
    let dest = match &args.out {
        Some(out) => out.clone(),
        None => dir.join(format!(
            "{PREFIX}{}{SUFFIX}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        )),
    };
    let dest_dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let engine = host.connect().await?;
    require_state_running(&engine).await?;
    // Room for the archive beside its destination, and for the snapshot
    // (dump.rdb) in the volume: each at most about the data set's size.
    let info = exec_state(&engine, &info_script("memory")).await?;
    let dataset = info_field(&info, "used_memory_dataset").unwrap_or(0);
    if args.out.is_none() {
        create_private_dir(&dir)?;
    } else if !dest_dir.is_dir() {
        bail!(
            "{} is not a directory; create it or choose another --out",
            dest_dir.display()
        );
    }
    jobs::require_space(&dest_dir, dataset, "the archive")?;
    if let Some(mount) = engine.volume_mountpoint(DATA_VOLUME).await? {
        jobs::require_space(
            Path::new(&mount),
            dataset,
            "the snapshot in the data volume",
        )?;
    }
    let _lock = host.lock(settings, "backup").await?;

    // 1. The snapshot: BGSAVE in evi-state, while it serves its clients.
    let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let t = Instant::now();
    snapshot(&engine, ui).await?;
    ui.info(&format!(
        "  snapshot saved by evi-state (BGSAVE) in {:.1}s",
        t.elapsed().as_secs_f64()
    ));

    // 2. The snapshot gets a second name in the volume while it is read, so
    //    that evi-state's own save points cannot replace it mid-backup.
    let aof_dir =
        jobs::conf_value(&conf, "appenddirname").unwrap_or_else(|| "appendonlydir".into());
    let aof_file =
        jobs::conf_value(&conf, "appendfilename").unwrap_or_else(|| "appendonly.aof".into());
    let rdb = jobs::conf_value(&conf, "dbfilename").unwrap_or_else(|| "dump.rdb".into());
    let link = format!(".evi-backup-{}.rdb", std::process::id());
    let snap_size: u64 = exec_state_args(&engine, scripts::LINK_SNAPSHOT, &[&rdb, &link])
        .await?
        .trim()
        .parse()
        .unwrap_or(0);
    let name = format!("evi-backup-{}", std::process::id());
    // The archive holds an AOF directory, as evi-state keeps its data
    // (`appendonly yes`): the snapshot is its base, named by a manifest in
    // Valkey's own format (`file NAME seq 1 type b`).
    let base = format!("{aof_file}.1.base.rdb");
    let aof_manifest = format!("file {base} seq 1 type b\n");
    let data_file = |file: &str| format!("{}{aof_dir}/{file}", archive::DATA_PREFIX);
    let aof_manifest_path = data_file(&format!("{aof_file}.manifest"));
    let base_path = data_file(&base);
    let spec = jobs::throwaway(
        &name,
        &settings.services.evi_state.image,
        &scripts::backup_job(),
        &[&link],
        vec![Mount::Volume {
            name: DATA_VOLUME.into(),
            target: "/snapshot".into(),
        }],
    );
    let result = async {
        // 3. At the same time: a throwaway server on no network loads exactly
        //    that file and summarises it (taking its sha256 as it loads), and
        //    the file comes out of the volume (through evi-state, which mounts
        //    it) into the archive, hashed on the way. Both run to their end,
        //    so the throwaway is always removed.
        let t = Instant::now();
        let bar = ui.byte_bar(snap_size, "writing the archive");
        let load = async {
            let job = jobs::run_helper_job(&engine, &spec, "the backup's throwaway server").await;
            if job.is_ok() {
                // Above the archive's bar, which keeps drawing.
                bar.suspend(|| {
                    ui.info(&format!(
                        "  snapshot loaded into a throwaway server and summarised in {:.1}s",
                        t.elapsed().as_secs_f64()
                    ))
                });
            }
            job
        };
        let copy = async {
            let mut writer = ArchiveWriter::new(&dest_dir)?;
            writer.append_bytes(&aof_manifest_path, aof_manifest.as_bytes())?;
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let (path, bar2) = (base_path.clone(), bar.clone());
            let write = tokio::task::spawn_blocking(move || -> Result<_> {
                let got = writer.append_file(archive::channel_reader(rx), &path, |n| bar2.set_position(n))?;
                Ok((writer, got))
            });
            let copied = engine
                .copy_out(STATE_CONTAINER, &format!("/data/{link}"), tx)
                .await;
            let written = write
                .await
                .map_err(|e| anyhow!("writing the archive stopped: {e}"))?;
            copied?;
            written
        };
        let (job, written) = tokio::join!(load, copy);
        let (job, (writer, (sha256, size))) = (job?, written?);
        bar.finish_and_clear();
        match job.files.first() {
            Some((sha, n, _)) if *sha == sha256 && *n == size => {}
            _ => bail!("the snapshot in the archive is not the one the throwaway server loaded (checksum); run the backup again"),
        }
        ui.info(&format!(
            "  {} snapshot archived in {:.1}s",
            human_bytes(size),
            t.elapsed().as_secs_f64()
        ));
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            valkey_version: job.valkey_version.clone(),
            created_at: created_at.clone(),
            settings_fingerprint: effective_hash(&conf),
            aof_dir: aof_dir.clone(),
            aof_file: aof_file.clone(),
            files: vec![
                FileEntry {
                    path: aof_manifest_path.clone(),
                    size: aof_manifest.len() as u64,
                    sha256: archive::sha256_hex(aof_manifest.as_bytes()),
                },
                FileEntry {
                    path: base_path.clone(),
                    size,
                    sha256,
                },
            ],
            summary: job.summary.clone(),
        };
        let archive_size = writer.persist(&manifest, &dest)?;
        Ok::<_, anyhow::Error>((manifest, archive_size))
    }
    .await;
    let unlinked = exec_state_args(&engine, scripts::UNLINK_SNAPSHOT, &[]).await;
    let (manifest, size) = result?;
    unlinked?;
    jobs::fault_point("backup-written");

    let mut text = format!(
        "Backup written: {} ({}; {} of data, {} keys, {} streams) in {:.1}s.",
        dest.display(),
        human_bytes(size),
        human_bytes(manifest.data_size()),
        manifest.summary.keys(),
        manifest.summary.streams.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(keep) = args.keep {
        let pruned = prune(&dir, keep)?;
        if !pruned.is_empty() {
            text.push_str(&format!(
                "\nRemoved {} older backups (--keep {keep}).",
                pruned.len()
            ));
        }
    }
    ui.info(
        &manifest
            .summary
            .lines()
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    ui.result(&text);
    Ok(exit::OK)
}

/// `backup --verify FILE`: the data is unpacked once, each file checked
/// against its sha256 as it is written, into a private directory (in memory
/// when there is room, see `jobs::unpack_place`); a throwaway server on no
/// network, started meanwhile, then loads it from there (a bind mount: no
/// second copy) as evi-state would, and its data is compared with the
/// manifest.
async fn verify(settings: &Settings, host: &Host, file: &Path, ui: &Ui) -> Result<u8> {
    let manifest = archive::read_manifest(file)?;
    let engine = host.connect().await?;
    create_private_dir(&settings.state_dir)?;
    let place = jobs::unpack_place(manifest.data_size(), &settings.state_dir);
    jobs::require_space(&place, manifest.data_size(), "unpacking the archive")?;
    let unpacked = jobs::verify_dir(&place)?;
    // The throwaway starts while the data is unpacked, and waits for it (a
    // marker file): its container is made meanwhile, not after.
    let spec = jobs::throwaway(
        &format!("evi-verify-{}", std::process::id()),
        &settings.services.evi_state.image,
        &scripts::verify_job(),
        &[&manifest.aof_dir, &manifest.aof_file],
        vec![Mount::Bind {
            source: unpacked.path().to_path_buf(),
            target: "/work/data".into(),
            read_only: false,
        }],
    );
    let t = Instant::now();
    let bar = ui.byte_bar(manifest.data_size(), "unpacking and checking");
    let unpack = async {
        let (file, dir, m, b) = (
            file.to_path_buf(),
            unpacked.path().to_path_buf(),
            manifest.clone(),
            bar.clone(),
        );
        let done = tokio::task::spawn_blocking(move || {
            let done = archive::unpack_data(&file, &m, &dir, |n| b.set_position(n));
            let marker = if done.is_ok() {
                scripts::UNPACKED_MARKER
            } else {
                scripts::ABORT_MARKER
            };
            let written = std::fs::write(dir.join(marker), b"");
            // Without a marker the throwaway would wait until its time limit.
            if written.is_err() {
                let _ = std::fs::write(dir.join(scripts::ABORT_MARKER), b"");
            }
            match (done, written) {
                (Ok(()), Err(e)) => Err(anyhow!(
                    "cannot write in {}: {}",
                    dir.display(),
                    crate::settings::io_reason(&e)
                )),
                (done, _) => done,
            }
        })
        .await
        .map_err(|e| anyhow!("unpacking stopped: {e}"))
        .and_then(|r| r);
        bar.finish_and_clear();
        if done.is_ok() {
            ui.info(&format!(
                "  {} unpacked and checked in {:.1}s",
                human_bytes(manifest.data_size()),
                t.elapsed().as_secs_f64()
            ));
        }
        let spinner = done.is_ok().then(|| {
            ui.spinner(&format!(
                "a throwaway server loads {} of data",
                human_bytes(manifest.data_size())
            ))
        });
        (done, spinner, Instant::now())
    };
    let load = jobs::run_helper_job(&engine, &spec, "the verifying throwaway server");
    let (job, (done, spinner, loading)) = tokio::join!(load, unpack);
    drop(spinner);
    done?;
    let job = job?;
    ui.info(&format!(
        "  loaded into a throwaway server and summarised in {:.1}s",
        loading.elapsed().as_secs_f64()
    ));
    drop(unpacked);
    // The key counts as a whole (INFO keyspace), every stream and group in
    // full: each file's sha256 already proved the bytes are the ones the
    // manifest was summarised from.
    let got = job.totals();
    let c = compare_exact(&manifest.summary.totals(), &got, now_ms());
    for note in &c.notes {
        ui.info(&format!("  note: {note}"));
    }
    if c.differences.is_empty() {
        ui.result(&format!(
            "Verified: {} loads into Valkey {} and matches its manifest ({} keys, {} streams, taken {}).",
            file.display(),
            job.valkey_version,
            got.keys(),
            got.streams.len(),
            manifest.created_at
        ));
        Ok(exit::OK)
    } else {
        ui.result(&format!(
            "NOT verified: {} loads, but differs from its manifest:\n  {}",
            file.display(),
            c.differences.join("\n  ")
        ));
        Ok(exit::ERROR)
    }
}

/// Streams the archive's data files into a container at `path`, under
/// `root`, each checked against its sha256 on the way.
pub async fn send_data<E: Engine>(
    engine: &E,
    container: &str,
    path: &str,
    file: &Path,
    manifest: &Manifest,
    root: &str,
) -> Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let (file, manifest, root) = (file.to_path_buf(), manifest.clone(), root.to_string());
    let produce = tokio::task::spawn_blocking(move || {
        archive::stream_data(&file, &manifest, &root, ChannelWriter::new(tx))
    });
    let sent = engine.copy_in(container, path, rx).await;
    // The archive's own error (a checksum) explains a failed copy best.
    produce
        .await
        .map_err(|e| anyhow!("reading the archive stopped: {e}"))??;
    sent
}

pub async fn require_state_running<E: Engine>(engine: &E) -> Result<()> {
    match engine.container_state(STATE_CONTAINER).await? {
        Some(crate::engine::RunState::Running) => Ok(()),
        Some(_) => {
            bail!("evi-state is not running; start it with `evi-install up`, then run again")
        }
        None => bail!("evi-state does not exist; create it with `evi-install up`, then run again"),
    }
}

/// Runs a script in evi-state and returns its output (exit 0 required).
pub async fn exec_state<E: Engine>(engine: &E, script: &str) -> Result<String> {
    exec_state_args(engine, script, &[]).await
}

/// Runs a script with arguments (`$1`…) in evi-state: its output (exit 0 required).
pub async fn exec_state_args<E: Engine>(engine: &E, script: &str, args: &[&str]) -> Result<String> {
    let mut argv = vec!["sh", "-c", script, "sh"];
    argv.extend_from_slice(args);
    let out = engine.exec(STATE_CONTAINER, &argv, &[]).await?;
    if out.exit_code != 0 {
        bail!(
            "a command in evi-state failed: {}",
            crate::secret::redact(format!("{}{}", out.stdout, out.stderr).trim())
        );
    }
    Ok(out.stdout)
}

fn info_script(section: &str) -> String {
    crate::acl::admin_script(&format!("cli INFO {section}"))
}

fn info_field(info: &str, key: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .and_then(|v| v.trim().parse().ok())
}

/// BGSAVE (scheduled after an AOF rewrite in progress), then waits until
/// the save counter moves and no save is in progress. On a terminal, a bar
/// shows the keys saved so far (`current_save_keys_processed` of
/// `current_save_keys_total`, INFO persistence, <https://valkey.io/commands/info/>).
async fn snapshot<E: Engine>(engine: &E, ui: &Ui) -> Result<()> {
    let before = info_field(
        &exec_state(engine, &info_script("persistence")).await?,
        "rdb_saves",
    )
    .context("evi-state's INFO has no rdb_saves")?;
    exec_state(engine, &crate::acl::admin_script("cli BGSAVE SCHEDULE")).await?;
    let mut poll = crate::apply::Poll::new(SAVE_LIMIT);
    let bar = ui.key_bar("evi-state saves its snapshot (BGSAVE)");
    loop {
        let info = exec_state(engine, &info_script("persistence")).await?;
        if let Some(total) = info_field(&info, "current_save_keys_total").filter(|t| *t > 0) {
            if ui.tty && !ui.quiet && bar.length() == Some(0) {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            bar.set_length(total);
            bar.set_position(info_field(&info, "current_save_keys_processed").unwrap_or(0));
        }
        let saves = info_field(&info, "rdb_saves").unwrap_or(0);
        if saves > before && info_field(&info, "rdb_bgsave_in_progress") == Some(0) {
            if !info.contains("rdb_last_bgsave_status:ok") {
                bail!("evi-state's snapshot (BGSAVE) failed; check the disk under the evi-state-data volume and evi-state's log");
            }
            return Ok(());
        }
        if poll.expired() {
            bail!(
                "evi-state's snapshot (BGSAVE) did not finish within {}s",
                SAVE_LIMIT.as_secs()
            );
        }
        poll.pause().await;
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            anyhow!(
                "cannot create {}: {}",
                dir.display(),
                crate::settings::io_reason(&e)
            )
        })
}

/// Keeps the newest `keep` archives with default names in `dir`.
fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        .collect();
    names.sort();
    let remove = names.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for name in &names[..remove] {
        let path = dir.join(name);
        std::fs::remove_file(&path).map_err(|e| {
            anyhow!(
                "cannot remove {}: {}",
                path.display(),
                crate::settings::io_reason(&e)
            )
        })?;
        removed.push(path);
    }
    Ok(removed)
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_default_names_only() {
        let tmp = tempfile::tempdir().unwrap();
        for n in [
            "evi-state-20261101T000000Z.tar.zst",
            "evi-state-20261102T000000Z.tar.zst",
            "evi-state-20261103T000000Z.tar.zst",
            "mine.tar.zst",
        ] {
            std::fs::write(tmp.path().join(n), "").unwrap();
        }
        let removed = prune(tmp.path(), 2).unwrap();
        assert_eq!(
            removed,
            [tmp.path().join("evi-state-20261101T000000Z.tar.zst")]
        );
        assert!(tmp.path().join("mine.tar.zst").exists());
    }

    #[test]
    fn info_fields_are_read() {
        let info = "# Persistence\r\nrdb_saves:3\r\nrdb_bgsave_in_progress:0\r\n";
        assert_eq!(info_field(info, "rdb_saves"), Some(3));
        assert_eq!(info_field(info, "rdb_bgsave_in_progress"), Some(0));
    }
}
