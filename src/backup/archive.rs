//! The archive file: a zstd-compressed tar whose first entry is
//! `manifest.json`, followed by the data files under `data/`.
//!
//! `backup` knows the manifest only at the end (the summary comes from the
//! throwaway server that loads the snapshot while the snapshot is copied), yet
//! keeps it first: the data's zstd frame starts [`MANIFEST_ROOM`] bytes into
//! the file, and at the end the manifest's own frame is written at offset 0,
//! followed by a zstd *skippable frame* over the rest of that room (RFC 8878
//! §3.1.2: a decoder skips it). The room is a hole in the file, which file
//! systems that support sparse files (ext4, xfs, btrfs, tmpfs) store without
//! using disk space.
//! A reader sees one tar stream, manifest first, as in an archive written in
//! one go; old archives read the same way.
//!
//! Reading never trusts the archive: the manifest is read first (a newer
//! format is refused), then every data file is hashed and compared with the
//! manifest before anything on the host changes.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use super::manifest::{FileEntry, Manifest};
use crate::render::hex;

pub const MANIFEST_ENTRY: &str = "manifest.json";
pub const DATA_PREFIX: &str = "data/";
/// zstd's fastest levels keep up with a disk; RDB strings are already LZF-compressed.
const ZSTD_LEVEL: i32 = 1;
const CHUNK: usize = 256 * 1024;
/// Where the data's frame starts; the manifest's frame must fit before it.
pub const MANIFEST_ROOM: u64 = 1024 * 1024;
/// The magic number of a zstd skippable frame (RFC 8878 §3.1.2), little-endian.
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;

type Entries = tar::Archive<zstd::Decoder<'static, BufReader<File>>>;

fn open(path: &Path) -> Result<Entries> {
    let file = File::open(path).map_err(|e| {
        anyhow!(
            "cannot read {}: {}; check the path",
            path.display(),
            crate::settings::io_reason(&e)
        )
    })?;
    let decoder = zstd::Decoder::new(file).map_err(|e| not_archive(path, &e.to_string()))?;
    Ok(tar::Archive::new(decoder))
}

fn not_archive(path: &Path, why: &str) -> anyhow::Error {
    anyhow!(
        "{} is not an evi-install backup archive ({why}); pass a file written by `evi-install backup`",
        path.display()
    )
}

fn corrupted(path: &Path, why: &str) -> anyhow::Error {
    anyhow!(
        "{} is truncated or corrupted ({why}); use another copy or take a new backup",
        path.display()
    )
}

/// Reads the manifest, the archive's first entry.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    // A zstd frame that fails to decode is a damaged archive; anything
    // else is not one of ours at all.
    let mut magic = [0u8; 4];
    let zstd = File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == [0x28, 0xb5, 0x2f, 0xfd];
    if !zstd {
        open(path)?;
        return Err(not_archive(path, "it is not zstd-compressed"));
    }
    let mut archive = open(path)?;
    let mut entries = archive
        .entries()
        .map_err(|e| corrupted(path, &e.to_string()))?;
    let mut entry = match entries.next() {
        Some(Ok(entry)) => entry,
        Some(Err(e)) => return Err(corrupted(path, &e.to_string())),
        None => return Err(corrupted(path, "it holds nothing")),
    };
    let name = entry
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if name != MANIFEST_ENTRY || entry.size() > 16 << 20 {
        return Err(not_archive(path, "its first entry is not a manifest"));
    }
    let mut bytes = Vec::new();
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| corrupted(path, &e.to_string()))?;
    Manifest::from_json(&bytes).map_err(|e| {
        if e.to_string().contains("newer than") {
            anyhow!("{}: {e:#}", path.display())
        } else {
            not_archive(path, &format!("{e:#}"))
        }
    })
}

/// Reads the archive's data files in order, each through `sink` (given its
/// manifest entry, its path under `data/` and a reader of its bytes), and
/// checks each against the manifest as it goes: listed, size and sha256,
/// and at the end that none is missing. A file fails its check only after
/// the sink has had its bytes: whoever writes them somewhere must drop them
/// on error. `progress` gets the bytes read so far.
fn each_data_file(
    path: &Path,
    manifest: &Manifest,
    mut progress: impl FnMut(u64),
    mut sink: impl FnMut(&FileEntry, &Path, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let mut archive = tar::Archive::new(read_ahead(open(path)?.into_inner()));
    let mut seen = Vec::new();
    let mut done = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| corrupted(path, &e.to_string()))?;
    for (i, entry) in entries.enumerate() {
        let entry = entry.map_err(|e| corrupted(path, &e.to_string()))?;
        if i == 0 || entry.header().entry_type().is_dir() {
            continue; // the manifest, read already
        }
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let Some(want) = manifest.files.iter().find(|f| f.path == name) else {
            return Err(corrupted(path, &format!("`{name}` is not in its manifest")));
        };
        // Only plain relative names under data/: they become paths on the host.
        let rel = Path::new(name.strip_prefix(DATA_PREFIX).unwrap_or(""));
        if rel.as_os_str().is_empty()
            || !rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(corrupted(
                path,
                &format!("`{name}` is not a file under data/"),
            ));
        }
        let mut reader = Hashing::new(entry);
        {
            let mut counted = Counting {
                inner: &mut reader,
                done: &mut done,
                progress: &mut progress,
            };
            sink(want, rel, &mut counted)?;
            std::io::copy(&mut counted, &mut std::io::sink())
                .map_err(|e| corrupted(path, &e.to_string()))?;
        }
        let (sha, size) = reader.finish();
        if sha != want.sha256 || size != want.size {
            return Err(corrupted(
                path,
                &format!("the checksum of `{name}` does not match its manifest"),
            ));
        }
        seen.push(name);
    }
    if let Some(missing) = manifest.files.iter().find(|f| !seen.contains(&f.path)) {
        return Err(corrupted(path, &format!("`{}` is missing", missing.path)));
    }
    Ok(())
}

/// Reads the whole archive and checks every data file against the
/// manifest: name, size and sha256, and that none is missing or extra.
pub fn check(path: &Path, manifest: &Manifest, progress: impl FnMut(u64)) -> Result<()> {
    each_data_file(path, manifest, progress, |_, _, _| Ok(()))
}

/// Writes the archive's data files under `dest` (their paths under `data/`),
/// each checked against the manifest as it is written. `dest` must be a new,
/// private directory, which the caller removes if this fails.
pub fn unpack_data(
    path: &Path,
    manifest: &Manifest,
    dest: &Path,
    progress: impl FnMut(u64),
) -> Result<()> {
    each_data_file(path, manifest, progress, |_, rel, reader| {
        let target = dest.join(rel);
        let mut write = || -> std::io::Result<()> {
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = BufWriter::with_capacity(CHUNK, File::create(&target)?);
            std::io::copy(reader, &mut file)?;
            // No fsync: the files live only as long as the check that reads
            // them, and a server reads them from the page cache.
            file.flush()
        };
        write().map_err(|e| {
            anyhow!(
                "cannot unpack {} into {}: {}",
                rel.display(),
                dest.display(),
                crate::settings::io_reason(&e)
            )
        })
    })
}

/// Writes the archive's data files as a plain tar to `out`, each under
/// `root` instead of `data/`, each checked against the manifest on the way
/// (a mismatch fails the stream, and the receiving side drops what it got).
pub fn stream_data(path: &Path, manifest: &Manifest, root: &str, out: impl Write) -> Result<()> {
    let mut builder = tar::Builder::new(out);
    each_data_file(
        path,
        manifest,
        |_| {},
        |want, rel, reader| {
            let mut header = file_header(want.size, 0);
            header.set_mode(0o644);
            builder
                .append_data(&mut header, format!("{root}{}", rel.display()), reader)
                .context("send the archive's files")
        },
    )?;
    builder
        .into_inner()
        .context("send the archive's files")?
        .flush()?;
    Ok(())
}

/// A new archive, written to a temporary file (mode 0600) beside its
/// destination and renamed into place only when complete. The data files go
/// in first; [`ArchiveWriter::persist`] puts the manifest in front.
pub struct ArchiveWriter {
    tmp_path: tempfile::TempPath,
    builder: tar::Builder<zstd::Encoder<'static, BufWriter<File>>>,
}

impl ArchiveWriter {
    pub fn new(dir: &Path) -> Result<ArchiveWriter> {
        let tmp = tempfile::Builder::new()
            .prefix(".evi-backup-")
            .tempfile_in(dir)
            .map_err(|e| {
                anyhow!(
                    "cannot create a file in {}: {}",
                    dir.display(),
                    crate::settings::io_reason(&e)
                )
            })?;
        let (mut file, tmp_path) = tmp.into_parts();
        file.seek(SeekFrom::Start(MANIFEST_ROOM))
            .context("write the archive")?;
        let mut encoder = zstd::Encoder::new(BufWriter::with_capacity(CHUNK, file), ZSTD_LEVEL)?;
        // A damaged frame then fails to decode instead of yielding other bytes.
        encoder.include_checksum(true)?;
        Ok(ArchiveWriter {
            tmp_path,
            builder: tar::Builder::new(encoder),
        })
    }

    /// Adds a file evi-install made itself (the AOF manifest), as `path`.
    pub fn append_bytes(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let mut header = file_header(bytes.len() as u64, chrono::Utc::now().timestamp());
        self.builder
            .append_data(&mut header, path, bytes)
            .context("write the archive")
    }

    /// Copies the one regular file of a tar stream (Podman's archive of a
    /// single file) in as `path`, hashing it on the way: its sha256 and size.
    pub fn append_file(
        &mut self,
        source: impl Read,
        path: &str,
        mut progress: impl FnMut(u64),
    ) -> Result<(String, u64)> {
        let mut source = tar::Archive::new(source);
        let mut done = 0u64;
        for entry in source.entries().context("read the snapshot from Podman")? {
            let entry = entry.context("read the snapshot from Podman")?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let mut header = file_header(entry.size(), entry.header().mtime().unwrap_or(0) as i64);
            let mut reader = Hashing::new(entry);
            let counted = Counting {
                inner: &mut reader,
                done: &mut done,
                progress: &mut progress,
            };
            self.builder
                .append_data(&mut header, path, counted)
                .context("write the archive")?;
            return Ok(reader.finish());
        }
        bail!("`{path}` did not come out of the container; run the backup again")
    }

    /// Finishes the data, puts `manifest` in front of it, syncs the file and
    /// renames it to `dest`: the archive's size.
    pub fn persist(self, manifest: &Manifest, dest: &Path) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        let encoder = self.builder.into_inner().context("write the archive")?;
        let file = encoder
            .finish()
            .context("write the archive")?
            .into_inner()
            .map_err(|e| anyhow!("write the archive: {}", e.error()))?;
        let front = manifest_frame(manifest)?;
        file.write_all_at(&front, 0).context("write the archive")?;
        file.sync_all().context("sync the archive")?;
        let size = file.metadata()?.len();
        drop(file);
        self.tmp_path.persist(dest).map_err(|e| {
            anyhow!(
                "cannot write {}: {}",
                dest.display(),
                crate::settings::io_reason(&e.error)
            )
        })?;
        if let Some(dir) = dest.parent() {
            File::open(dir).and_then(|d| d.sync_all()).ok();
        }
        Ok(size)
    }
}

/// The first [`MANIFEST_ROOM`] bytes of an archive but the hole: a zstd frame
/// holding the manifest's tar entry (header and contents, no end-of-archive
/// marker: the data's entries follow), then the header of a skippable frame
/// that covers the rest of the room.
fn manifest_frame(manifest: &Manifest) -> Result<Vec<u8>> {
    let json = serde_json::to_vec_pretty(manifest)?;
    let mut header = file_header(json.len() as u64, chrono::Utc::now().timestamp());
    header.set_path(MANIFEST_ENTRY)?;
    header.set_cksum();
    let mut entry = header.as_bytes().to_vec();
    entry.extend_from_slice(&json);
    entry.resize(entry.len().div_ceil(512) * 512, 0);
    let mut encoder = zstd::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
    encoder.include_checksum(true)?;
    encoder.write_all(&entry)?;
    let mut front = encoder.finish()?;
    let used = front.len() as u64 + 8;
    if used > MANIFEST_ROOM {
        bail!(
            "the manifest is too large for the archive ({used} bytes compressed, at most {MANIFEST_ROOM}); report this"
        );
    }
    let skipped = (MANIFEST_ROOM - used) as u32;
    front.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    front.extend_from_slice(&skipped.to_le_bytes());
    Ok(front)
}

/// The sha256 of `bytes`, in hex, as the manifest records it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A tar header for a regular file of the archive (mode 0600).
fn file_header(size: u64, mtime: i64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(mtime.max(0) as u64);
    header
}

/// A reader that hashes and counts what passes through it.
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }
    pub fn finish(self) -> (String, u64) {
        (hex(&self.hasher.finalize()), self.size)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

struct Counting<'a, R, F> {
    inner: &'a mut R,
    done: &'a mut u64,
    progress: &'a mut F,
}

impl<R: Read, F: FnMut(u64)> Read for Counting<'_, R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.done += n as u64;
        (self.progress)(*self.done);
        Ok(n)
    }
}

/// Reads the chunks that `next` hands over, one after another (`None`: the end).
struct Chunks<F> {
    next: F,
    buf: Vec<u8>,
    pos: usize,
}

impl<F: FnMut() -> Option<std::io::Result<Vec<u8>>>> Read for Chunks<F> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            match (self.next)() {
                Some(chunk) => {
                    self.buf = chunk?;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn chunks<F: FnMut() -> Option<std::io::Result<Vec<u8>>>>(next: F) -> Chunks<F> {
    Chunks {
        next,
        buf: Vec::new(),
        pos: 0,
    }
}

/// Reads `source` in a thread of its own, a few chunks ahead: the
/// decompression then runs beside what consumes the data (checksums, writing
/// files), on two cores, as `zstd -dc | tar -x` does.
fn read_ahead(mut source: impl Read + Send + 'static) -> impl Read {
    let (tx, rx) = std::sync::mpsc::sync_channel(8);
    std::thread::spawn(move || loop {
        let mut chunk = vec![0u8; CHUNK];
        let mut filled = 0;
        let mut error = None;
        while filled < CHUNK {
            match source.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        chunk.truncate(filled);
        let end = filled < CHUNK;
        // A send fails when the reader stopped early: stop too.
        if filled > 0 && tx.send(Ok(chunk)).is_err() {
            return;
        }
        if let Some(e) = error {
            let _ = tx.send(Err(e));
            return;
        }
        if end {
            return;
        }
    });
    // The thread ended (its sender dropped): everything was delivered.
    chunks(move || rx.recv().ok())
}

/// Reads the chunks a channel delivers, for the blocking tar reader.
pub fn channel_reader(mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> impl Read {
    chunks(move || rx.blocking_recv().map(Ok))
}

/// Sends what is written to a channel in chunks, for the engine to upload.
pub struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    pub fn new(tx: tokio::sync::mpsc::Sender<Vec<u8>>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(chunk).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "Podman stopped reading")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{Summary, FORMAT_VERSION};

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            tool_version: "t".into(),
            valkey_version: "8.1.1".into(),
            created_at: "2026-11-26T00:00:00Z".into(),
            settings_fingerprint: "f".into(),
            aof_dir: "appendonlydir".into(),
            aof_file: "appendonly.aof".into(),
            files,
            summary: Summary::default(),
        }
    }

    const AOF_MANIFEST: &[u8] = b"file appendonly.aof.1.base.rdb seq 1 type b\n";

    /// Podman's archive of one file, `name`.
    fn one_file_tar(name: &str, data: &[u8]) -> Vec<u8> {
        let mut src = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        src.append_data(&mut h, name, data).unwrap();
        src.into_inner().unwrap()
    }

    fn entry(path: &str, data: &[u8]) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: data.len() as u64,
            sha256: hex(&Sha256::digest(data)),
        }
    }

    /// An archive as `backup` writes it: the snapshot as an AOF base and the
    /// AOF manifest naming it.
    fn write_sample(dir: &Path) -> (std::path::PathBuf, Manifest) {
        let data = b"REDIS0011 some data".repeat(1000);
        let m = manifest(vec![
            entry("data/appendonlydir/appendonly.aof.manifest", AOF_MANIFEST),
            entry("data/appendonlydir/appendonly.aof.1.base.rdb", &data),
        ]);
        let mut w = ArchiveWriter::new(dir).unwrap();
        w.append_bytes(&m.files[0].path, AOF_MANIFEST).unwrap();
        let src = one_file_tar(".evi-backup-1.rdb", &data);
        let got = w
            .append_file(src.as_slice(), &m.files[1].path, |_| {})
            .unwrap();
        assert_eq!(got, (m.files[1].sha256.clone(), m.files[1].size));
        let path = dir.join("b.tar.zst");
        w.persist(&m, &path).unwrap();
        (path, m)
    }

    #[test]
    fn unpacking_writes_the_data_files_and_refuses_a_checksum_mismatch() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, m) = write_sample(tmp.path());
        let dest = tmp.path().join("out");
        unpack_data(&path, &m, &dest, |_| {}).unwrap();
        assert_eq!(
            std::fs::read(dest.join("appendonlydir/appendonly.aof.manifest")).unwrap(),
            AOF_MANIFEST
        );
        let mut other = m.clone();
        other.files[1].sha256 = "0".repeat(64);
        let err = unpack_data(&path, &other, &tmp.path().join("out2"), |_| {}).unwrap_err();
        assert!(err.to_string().contains("checksum of"), "{err}");
        // A manifest entry outside data/ is refused before anything is written.
        let mut outside = m.clone();
        outside.files[0].path = "data/../x".into();
        let err = check(&path, &outside, |_| {}).unwrap_err();
        assert!(err.to_string().contains("not in its manifest"), "{err}");
    }

    #[test]
    fn an_empty_answer_from_podman_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = ArchiveWriter::new(tmp.path()).unwrap();
        let empty = tar::Builder::new(Vec::new()).into_inner().unwrap();
        let err = w
            .append_file(empty.as_slice(), "data/x", |_| {})
            .unwrap_err();
        assert!(err.to_string().contains("did not come out"), "{err}");
    }

    #[test]
    fn the_manifest_goes_in_front_of_the_data_in_its_own_frame() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, m) = write_sample(tmp.path());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame first");
        // Where the data's frame starts, a zstd frame too; before it, the hole.
        let room = MANIFEST_ROOM as usize;
        assert_eq!(&bytes[room..room + 4], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert!(bytes[room - 1024..room].iter().all(|b| *b == 0));
        // One stream to a zstd decoder, manifest first.
        let names: Vec<String> = open(&path)
            .unwrap()
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names[0], MANIFEST_ENTRY);
        assert_eq!(names.len(), 3);
        assert_eq!(read_manifest(&path).unwrap(), m);
    }

    #[test]
    fn an_archive_round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let (path, m) = write_sample(tmp.path());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_manifest(&path).unwrap(), m);
        check(&path, &m, |_| {}).unwrap();
        let mut out = Vec::new();
        stream_data(&path, &m, "x/", &mut out).unwrap();
        let names: Vec<String> = tar::Archive::new(out.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "x/appendonlydir/appendonly.aof.manifest",
                "x/appendonlydir/appendonly.aof.1.base.rdb",
            ]
        );
        let leftovers = std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temp file left");
    }

    #[test]
    fn damaged_archives_are_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, m) = write_sample(tmp.path());
        let bytes = std::fs::read(&path).unwrap();
        // Truncated.
        let cut = tmp.path().join("cut");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_manifest(&cut)
            .and_then(|m| check(&cut, &m, |_| {}))
            .unwrap_err();
        assert!(
            err.to_string().contains("truncated or corrupted")
                || err.to_string().contains("not an evi-install"),
            "{err}"
        );
        // Not an archive.
        let text = tmp.path().join("text");
        std::fs::write(&text, "hello\n").unwrap();
        let err = read_manifest(&text).unwrap_err();
        assert!(
            err.to_string()
                .contains("is not an evi-install backup archive"),
            "{err}"
        );
        // A data file that does not match its checksum.
        let mut other = m.clone();
        other.files[1].sha256 = "0".repeat(64);
        let err = check(&path, &other, |_| {}).unwrap_err();
        assert!(
            err.to_string()
                .contains("checksum of `data/appendonlydir/appendonly.aof.1.base.rdb`"),
            "{err}"
        );
    }
}
