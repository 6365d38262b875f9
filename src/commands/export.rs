//! `evi-install export kubernetes`: the manifests for these settings, to a
//! directory or standard output. Offline: no Podman, no host lock.
//!
//! Everything is checked before anything is written, so bad input leaves no
//! half-written export.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::cli::{ExportTarget, KubernetesArgs};
use crate::exit;
use crate::kubernetes::{self, Manifest, Options, RunAs};
use crate::render::valkey_conf;
use crate::secret::{redact, Password};
use crate::settings::{io_reason, Settings};
use crate::ui::Ui;

pub fn run(settings: &Settings, target: &ExportTarget, ui: &Ui) -> Result<u8> {
    match target {
        ExportTarget::Kubernetes(args) => kubernetes(settings, args, ui),
    }
}

fn kubernetes(settings: &Settings, args: &KubernetesArgs, ui: &Ui) -> Result<u8> {
    let opts = options(args)?;
    let out = Out::from_arg(&args.out)?;
    if let Some(file) = &args.with_secret {
        let out_dir = match &out {
            Out::Dir(dir) => Some(dir.as_path()),
            Out::Stdout => None,
        };
        check_secret_file(file, out_dir)?;
    }
    let conf = valkey_conf(settings)?;
    let manifests = kubernetes::manifests(settings, &conf, &opts)?;

    match &out {
        Out::Stdout => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(kubernetes::stream(&manifests).as_bytes());
            let _ = stdout.flush();
        }
        Out::Dir(dir) => {
            let written = write_dir(dir, &manifests)?;
            note(
                ui,
                &format!(
                    "Wrote {} manifests to {}: {}.",
                    written.len(),
                    dir.display(),
                    written.join(", ")
                ),
            );
        }
    }

    let ns = opts
        .namespace
        .as_deref()
        .map_or(String::new(), |ns| format!(" -n {ns}"));
    match &args.with_secret {
        Some(file) => {
            let password = Password::generate()?;
            let admin = Password::generate()?;
            let secret = kubernetes::secret_manifest(&password, &admin, &opts);
            write_secret(file, &secret.yaml)?;
            note(
                ui,
                &format!(
                    "Wrote the Secret `{}` with a new password to {} (mode 0600): apply it with `kubectl{ns} apply -f {}`, then delete the file.",
                    kubernetes::SECRET_NAME,
                    file.display(),
                    file.display()
                ),
            );
        }
        None => note(
            ui,
            &format!(
                "The manifests need the Secret `{}` (keys `{}`, `{}` and `{}`), which is not written: create it as the README shows (\"Running on Kubernetes\"), or export again with --with-secret FILE.",
                kubernetes::SECRET_NAME,
                kubernetes::SECRET_PASSWORD_KEY,
                kubernetes::SECRET_URL_KEY,
                kubernetes::SECRET_ADMIN_KEY,
            ),
        ),
    }
    Ok(exit::OK)
}

/// Notes go to stderr: stdout may be the YAML stream.
fn note(ui: &Ui, text: &str) {
    if !ui.quiet {
        eprintln!("{}", redact(text));
    }
}

fn options(args: &KubernetesArgs) -> Result<Options> {
    if let Some(ns) = &args.namespace {
        if let Err(problem) = kubernetes::check_namespace(ns) {
            bail!("{problem}");
        }
    }
    let run_as: RunAs = match args.valkey_user.parse() {
        Ok(run_as) => run_as,
        Err(problem) => bail!(
            "--valkey-user {problem}; give the numeric user and group of the image's `valkey` user, e.g. from `podman run --rm IMAGE id valkey`"
        ),
    };
    Ok(Options {
        namespace: args.namespace.clone(),
        run_as,
    })
}

enum Out {
    Stdout,
    Dir(PathBuf),
}

impl Out {
    fn from_arg(path: &Path) -> Result<Out> {
        if path.as_os_str() == "-" {
            return Ok(Out::Stdout);
        }
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_dir() => bail!(
                "--out {} is a file, not a directory; name a directory (it is created if missing) or `-` for standard output",
                path.display()
            ),
            _ => Ok(Out::Dir(path.to_path_buf())),
        }
    }
}

/// Writes one file per manifest and removes files of an earlier export
/// that this one no longer has (an evi-worker since removed from the
/// settings), recognised by their name and first line. Returns the names.
fn write_dir(dir: &Path, manifests: &[Manifest]) -> Result<Vec<String>> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot create directory {}: {}; name another --out directory",
                dir.display(),
                io_reason(&e)
            )
        })?;
    let names: Vec<String> = manifests
        .iter()
        .enumerate()
        .map(|(i, m)| m.file_name(i))
        .collect();
    for (name, manifest) in names.iter().zip(manifests) {
        crate::fsutil::write_atomic(&dir.join(name), manifest.yaml.as_bytes(), 0o644)?;
    }
    for stale in earlier_exports(dir)? {
        if !names.iter().any(|n| stale.file_name() == Some(n.as_ref())) {
            std::fs::remove_file(&stale).map_err(|e| {
                anyhow::anyhow!(
                    "cannot remove {} (left from an earlier export): {}",
                    stale.display(),
                    io_reason(&e)
                )
            })?;
        }
    }
    Ok(names)
}

fn earlier_exports(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        anyhow::anyhow!("cannot read directory {}: {}", dir.display(), io_reason(&e))
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours_by_name = name.len() > 3
            && name.as_bytes()[..2].iter().all(u8::is_ascii_digit)
            && name.as_bytes()[2] == b'-'
            && name.ends_with(".yaml");
        if ours_by_name
            && entry.file_type().is_ok_and(|t| t.is_file())
            && std::fs::read_to_string(&path)
                .is_ok_and(|text| text.lines().next() == Some(kubernetes::HEADER))
        {
            out.push(path);
        }
    }
    Ok(out)
}

/// The Secret file is never overwritten: it may hold the password in use.
/// Its directory must exist, unless it is the `--out` directory, which the
/// export creates first.
fn check_secret_file(file: &Path, out_dir: Option<&Path>) -> Result<()> {
    if std::fs::symlink_metadata(file).is_ok() {
        bail!(
            "--with-secret {} already exists; remove it or name another file (it may hold the password in use)",
            file.display()
        );
    }
    let parent = file.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent.filter(|d| !d.is_dir() && Some(*d) != out_dir) {
        bail!(
            "--with-secret {}: {} is not a directory; create it or name another file",
            file.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Created new with mode 0600 (never through a symbolic link), then synced.
fn write_secret(file: &Path, yaml: &str) -> Result<()> {
    let fail = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot write --with-secret {}: {}; name another file",
            file.display(),
            io_reason(&e)
        )
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)
        .map_err(fail)?;
    // The umask cannot widen 0600, but a narrower one would hide the file from its owner.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    f.write_all(yaml.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    Ok(())
}
