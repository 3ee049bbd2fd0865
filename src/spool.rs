//! The spool: blobs fetched from a source, kept on disk for the run.
//!
//! Read once, write N: each blob is fetched from upstream at most once per run
//! (concurrent askers wait for the one fetch) and every target uploads from
//! the file, so a target that fails mid-upload retries without touching the
//! upstream again. Files live in a temporary directory removed at the end.
//!
//! A blob leaves the spool as soon as no job holds a [`Lease`] on it (every
//! destination that needed it has it, or failed), so disk use is bounded by
//! the blobs in flight, not by the run. The directory is private (0700, its
//! files 0600) and unique per run.
//!
//! Jobs reserve room for what they fetch within a [`budget`], and wait for
//! it, so many images in flight never fill the disk.
//!
//! A run that is killed cannot remove its spool, so each spool holds a lock
//! on its `.lock` file while it lives, and a new spool removes the spools
//! next to it whose lock nobody holds.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::digest::Digest;
use crate::error::{Error, Result};

pub mod budget;
pub use budget::{Budget, Room};

/// Verified blobs on disk, by digest.
pub struct Spool {
    dir: tempfile::TempDir,
    /// Locked while this spool lives: tells other runs it is not garbage.
    _lock: File,
    /// One entry per digest: the first asker fetches, the others wait on
    /// the cell. A failed fetch leaves the cell empty for the next asker.
    entries: Mutex<HashMap<Digest, Entry>>,
    /// The disk it may use ([`budget`]).
    pub budget: Budget,
}

/// A blob in the spool: its file once fetched, and the jobs that need it.
#[derive(Default)]
struct Entry {
    cell: Arc<OnceCell<PathBuf>>,
    leases: usize,
}

/// A job's hold on blobs it may read from the spool; when the last lease
/// on a blob is dropped, its file is removed.
pub struct Lease<'a> {
    spool: &'a Spool,
    digests: Vec<Digest>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut entries = self.spool.entries.lock().expect("spool lock poisoned");
        for digest in &self.digests {
            let Some(entry) = entries.get_mut(digest) else {
                continue;
            };
            entry.leases = entry.leases.saturating_sub(1);
            if entry.leases == 0 {
                if let Some(path) = entry.cell.get() {
                    // Best effort: the directory goes at the end of the run anyway.
                    let _ = std::fs::remove_file(path);
                }
                entries.remove(digest);
            }
        }
    }
}

impl Spool {
    /// A spool in `$REGMIRROR_SPOOL`, `$RUNNER_TEMP`, or the system temp dir.
    pub fn new() -> Result<Spool> {
        let base = std::env::var_os("REGMIRROR_SPOOL")
            .or_else(|| std::env::var_os("RUNNER_TEMP"))
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let mut spool = Spool::in_dir(&base)?;
        spool.budget = Budget::for_spool_in(&base)?;
        Ok(spool)
    }

    /// A spool in `base`, after removing the abandoned ones there.
    pub fn in_dir(base: &Path) -> Result<Spool> {
        std::fs::create_dir_all(base)
            .map_err(|e| Error::io(format!("create the spool directory {}", base.display()), e))?;
        remove_abandoned(base);
        let mut builder = tempfile::Builder::new();
        builder.prefix(PREFIX);
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let dir = builder
            .tempdir_in(base)
            .map_err(|e| Error::io(format!("create spool in {}", base.display()), e))?;
        // Locked under another name, then renamed: another run's clean-up
        // only looks at `.lock`, which is never there unlocked while we live
        // (a lock follows its file through a rename).
        let staging = dir.path().join(".lock.new");
        let lock = File::create(&staging)
            .and_then(|file| file.lock().map(|()| file))
            .and_then(|file| std::fs::rename(&staging, dir.path().join(LOCK)).map(|()| file))
            .map_err(|e| Error::io(format!("lock spool {}", dir.path().display()), e))?;
        Ok(Spool {
            dir,
            _lock: lock,
            entries: Mutex::new(HashMap::new()),
            budget: Budget::new(None),
        })
    }

    /// The spool's directory (for messages: a full disk names it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Holds `digests` in the spool until the lease is dropped.
    pub fn lease<'a>(&'a self, digests: impl IntoIterator<Item = &'a Digest>) -> Lease<'a> {
        let mut entries = self.entries.lock().expect("spool lock poisoned");
        let digests: Vec<Digest> = digests.into_iter().cloned().collect();
        for digest in &digests {
            entries.entry(digest.clone()).or_default().leases += 1;
        }
        Lease {
            spool: self,
            digests,
        }
    }

    /// Blobs in the spool now (fetched, not yet released).
    pub fn held(&self) -> usize {
        let entries = self.entries.lock().expect("spool lock poisoned");
        entries.values().filter(|e| e.cell.get().is_some()).count()
    }

    /// Whether `digest` is in the spool now (fetched, not yet released).
    pub fn holds(&self, digest: &Digest) -> bool {
        let entries = self.entries.lock().expect("spool lock poisoned");
        entries.get(digest).is_some_and(|e| e.cell.initialized())
    }

    /// The file holding `digest`, fetching it with `fetch(path)` if no one has.
    /// `fetch` must write the verified blob to `path` or fail.
    pub async fn get<F, Fut>(&self, digest: &Digest, fetch: F) -> Result<PathBuf>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let cell = {
            let mut entries = self.entries.lock().expect("spool lock poisoned");
            entries.entry(digest.clone()).or_default().cell.clone()
        };
        let path = self
            .dir
            .path()
            .join(format!("{}-{}", digest.algorithm(), digest.hex()));
        cell.get_or_try_init(|| async {
            if let Err(error) = fetch(path.clone()).await {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(error);
            }
            Ok(path.clone())
        })
        .await
        .cloned()
    }
}

/// Bytes written to a spool file per hand-off to the blocking pool.
const WRITE_CHUNK: usize = 1024 * 1024;

/// Bytes read from a spool file per hand-off: each upload in flight holds
/// about two, so this bounds memory (many uploads run at once).
const READ_CHUNK: usize = 256 * 1024;

/// A spool file being written. Chunks are kept as they arrive (never
/// copied into a buffer) until [`WRITE_CHUNK`] bytes are pending, then written
/// on the blocking pool in one hand-off: `tokio::fs::File` would copy every
/// byte into its own buffer first, and a `BufWriter` over it once more.
pub struct Writer {
    file: Option<File>,
    path: PathBuf,
    pending: Vec<bytes::Bytes>,
    pending_len: usize,
}

impl Writer {
    /// Creates the file at `path`, readable by this user only.
    pub async fn create(path: &Path) -> Result<Writer> {
        Writer::open(path, false).await
    }

    /// Opens the file at `path` to write after what it holds (a download
    /// resumed), creating it if it is not there.
    pub async fn append(path: &Path) -> Result<Writer> {
        Writer::open(path, true).await
    }

    async fn open(path: &Path, append: bool) -> Result<Writer> {
        let owned = path.to_path_buf();
        let file = tokio::task::spawn_blocking(move || {
            let mut options = std::fs::OpenOptions::new();
            if append {
                options.append(true).create(true);
            } else {
                options.write(true).create(true).truncate(true);
            }
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options.open(owned)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|opened| opened)
        .map_err(|e| write_error(path, e))?;
        Ok(Writer {
            file: Some(file),
            path: path.to_path_buf(),
            pending: Vec::new(),
            pending_len: 0,
        })
    }

    /// Appends `chunk`.
    pub async fn write(&mut self, chunk: bytes::Bytes) -> Result<()> {
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        if self.pending_len >= WRITE_CHUNK {
            self.write_pending().await?;
        }
        Ok(())
    }

    /// Writes what is pending; the file is complete when this returns.
    pub async fn finish(mut self) -> Result<()> {
        self.write_pending().await
    }

    async fn write_pending(&mut self) -> Result<()> {
        use std::io::Write as _;
        let pending = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        let Some(mut file) = self.file.take() else {
            return Err(write_error(
                &self.path,
                std::io::Error::other("an earlier write failed"),
            ));
        };
        let (file, written) = tokio::task::spawn_blocking(move || {
            let written = pending.iter().try_for_each(|chunk| file.write_all(chunk));
            (file, written)
        })
        .await
        .map_err(|e| write_error(&self.path, std::io::Error::other(e)))?;
        written.map_err(|e| write_error(&self.path, e))?;
        self.file = Some(file);
        Ok(())
    }
}

/// A spool (or layout) file's bytes, [`READ_CHUNK`] at a time, each read
/// straight into the buffer it is handed over in. A chunk the page cache
/// holds (the usual case: the spool was written moments ago) is read where
/// the upload runs, without waiting for the blocking pool; on Linux,
/// `RWF_NOWAIT` makes that read refuse to wait for the disk, and only then
/// is the chunk read on the blocking pool. Handing every chunk to that pool
/// cost two thread wake-ups per chunk: reading in place took a full run's
/// client CPU from 2.7 s to 2.2 s (docs/benchmark.md).
pub fn read_chunks(file: File) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures::stream::try_unfold(Some((file, 0u64)), |state| async move {
        let Some((file, offset)) = state else {
            return Ok(None);
        };
        let (file, chunk) = match cached_chunk(&file, offset) {
            Some(chunk) => (file, Ok(chunk)),
            None => tokio::task::spawn_blocking(move || {
                let chunk = read_chunk(&file, offset);
                (file, chunk)
            })
            .await
            .map_err(std::io::Error::other)?,
        };
        let chunk = chunk?;
        if chunk.is_empty() {
            return Ok(None);
        }
        let next = offset + chunk.len() as u64;
        Ok(Some((bytes::Bytes::from(chunk), Some((file, next)))))
    })
}

/// Set once the kernel or the spool's filesystem refuses `RWF_NOWAIT`
/// itself (not "would wait"): every later chunk then goes straight to the
/// blocking pool instead of asking again.
#[cfg(target_os = "linux")]
static NOWAIT_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Up to [`READ_CHUNK`] bytes of `file` from `offset` if the page cache
/// holds them (short if it holds only some); `None` if reading would wait
/// for the disk, or cannot be asked not to. Errors are left to the blocking
/// read, which reports them.
#[cfg(target_os = "linux")]
fn cached_chunk(file: &File, offset: u64) -> Option<Vec<u8>> {
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    use std::sync::atomic::Ordering;
    if NOWAIT_REFUSED.load(Ordering::Relaxed) {
        return None;
    }
    let mut chunk = vec![0; READ_CHUNK];
    match preadv2(
        file,
        &mut [std::io::IoSliceMut::new(&mut chunk)],
        offset,
        ReadWriteFlags::NOWAIT,
    ) {
        Ok(read) => {
            chunk.truncate(read);
            Some(chunk)
        }
        Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
            NOWAIT_REFUSED.store(true, Ordering::Relaxed);
            None
        }
        Err(_) => None,
    }
}

#[cfg(not(target_os = "linux"))]
fn cached_chunk(_file: &File, _offset: u64) -> Option<Vec<u8>> {
    None
}

/// Up to [`READ_CHUNK`] bytes of `file` from `offset`, fewer only at its end.
fn read_chunk(file: &File, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    let mut chunk = Vec::with_capacity(READ_CHUNK);
    file.take(READ_CHUNK as u64).read_to_end(&mut chunk)?;
    Ok(chunk)
}

/// A failed write to the spool, naming its directory and, for a full disk,
/// how to move it.
pub fn write_error(path: &Path, error: std::io::Error) -> Error {
    let dir = path.parent().unwrap_or(path).display();
    let hint = if error.kind() == std::io::ErrorKind::StorageFull {
        "; set `REGMIRROR_SPOOL` to a directory on a disk with more room"
    } else {
        ""
    };
    Error::io(format!("write the spool in `{dir}`{hint}"), error)
}

const PREFIX: &str = "regmirror-spool-";
const LOCK: &str = ".lock";

/// Removes spools under `base` left by runs that were killed: their lock
/// file exists and nobody holds it. A spool still being set up (no lock
/// file yet) is left alone. Best effort: failures are logged, not fatal.
fn remove_abandoned(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_spool = entry.file_name().to_string_lossy().starts_with(PREFIX);
        if !is_spool || !path.is_dir() {
            continue;
        }
        let Ok(lock) = File::open(path.join(LOCK)) else {
            continue;
        };
        if lock.try_lock().is_ok() {
            tracing::info!(spool = %path.display(), "removing the spool of a run that did not finish");
            if let Err(error) = std::fs::remove_dir_all(&path) {
                tracing::warn!(spool = %path.display(), %error, "could not remove an abandoned spool");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn fetches_once_for_concurrent_askers() {
        let spool = Spool::new().unwrap();
        let digest = Digest::sha256(b"blob");
        let fetches = AtomicUsize::new(0);
        let ask = || {
            spool.get(&digest, |path| async {
                fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                tokio::fs::write(path, b"blob")
                    .await
                    .map_err(|e| Error::io("write", e))
            })
        };
        let (a, b, c) = tokio::join!(ask(), ask(), ask());
        assert_eq!(a.unwrap(), b.unwrap());
        assert!(c.is_ok());
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    /// `REGMIRROR_SPOOL` on a fresh volume (a Kubernetes `emptyDir`
    /// mounted above it) names a directory nobody has made yet.
    #[test]
    fn a_spool_directory_not_made_yet_is_made() {
        let volume = tempfile::tempdir().unwrap();
        let base = volume.path().join("regmirror/spool");
        let spool = Spool::in_dir(&base).unwrap();
        assert!(spool.dir.path().starts_with(&base));
    }

    #[test]
    fn removes_abandoned_spools_and_keeps_live_ones() {
        let base = tempfile::tempdir().unwrap();
        let abandoned = base.path().join(format!("{PREFIX}dead"));
        std::fs::create_dir(&abandoned).unwrap();
        std::fs::write(abandoned.join(LOCK), b"").unwrap();
        std::fs::write(abandoned.join("sha256-00"), b"half a blob").unwrap();
        let settling = base.path().join(format!("{PREFIX}new"));
        std::fs::create_dir(&settling).unwrap();
        let unrelated = base.path().join("other");
        std::fs::create_dir(&unrelated).unwrap();
        std::fs::write(unrelated.join(LOCK), b"").unwrap();

        let live = Spool::in_dir(base.path()).unwrap();
        let second = Spool::in_dir(base.path()).unwrap();

        assert!(!abandoned.exists(), "the abandoned spool is still there");
        assert!(settling.exists() && unrelated.exists());
        assert!(live.dir.path().exists(), "a live spool was removed");
        let (first, second_path) = (
            live.dir.path().to_path_buf(),
            second.dir.path().to_path_buf(),
        );
        drop((live, second));
        assert!(
            !first.exists() && !second_path.exists(),
            "a finished spool stayed"
        );
    }

    #[tokio::test]
    async fn written_chunks_read_back_whole_in_bounded_chunks() {
        use futures::StreamExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..(5 * READ_CHUNK + 123))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut writer = Writer::create(&path).await.unwrap();
        // Uneven pieces, as they arrive from a socket, across WRITE_CHUNK.
        for piece in data.chunks(70_001) {
            writer
                .write(bytes::Bytes::copy_from_slice(piece))
                .await
                .unwrap();
        }
        writer.finish().await.unwrap();
        let chunks: Vec<bytes::Bytes> = read_chunks(File::open(&path).unwrap())
            .map(|chunk| chunk.unwrap())
            .collect()
            .await;
        assert!(
            chunks
                .iter()
                .all(|c| !c.is_empty() && c.len() <= READ_CHUNK)
        );
        assert_eq!(chunks.concat(), data);
        // The same bytes from the blocking pool's read, chunk by chunk.
        let file = File::open(&path).unwrap();
        let mut read = Vec::new();
        loop {
            let chunk = read_chunk(&file, read.len() as u64).unwrap();
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() == READ_CHUNK || read.len() + chunk.len() == data.len());
            read.extend_from_slice(&chunk);
        }
        assert_eq!(read, data);
    }

    /// A file just written is in the page cache, so its chunks are read in
    /// place, without the blocking pool; past its end, an empty chunk.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_cached_chunk_is_read_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..(READ_CHUNK + 10)).map(|i| (i % 13) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let first = cached_chunk(&file, 0).expect("read in place");
        assert_eq!(first, data[..READ_CHUNK]);
        let rest = cached_chunk(&file, READ_CHUNK as u64).expect("read in place");
        assert_eq!(rest, data[READ_CHUNK..]);
        let end = cached_chunk(&file, data.len() as u64).expect("read in place");
        assert!(end.is_empty());
    }

    #[tokio::test]
    async fn a_blob_leaves_when_its_last_lease_does_and_files_are_private() {
        let spool = Spool::new().unwrap();
        let digest = Digest::sha256(b"blob");
        let (first, second) = (spool.lease([&digest]), spool.lease([&digest]));
        let path = spool
            .get(&digest, |path| async move {
                let mut file = Writer::create(&path).await?;
                file.write(bytes::Bytes::from_static(b"blob")).await?;
                file.finish().await
            })
            .await
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(spool.dir()), 0o700);
        }
        drop(first);
        assert!(path.exists(), "removed while another job holds it");
        assert_eq!(spool.held(), 1);
        drop(second);
        assert!(!path.exists(), "kept after every job let go");
        assert_eq!(spool.held(), 0);
    }

    #[test]
    fn a_full_disk_names_the_spool_and_how_to_move_it() {
        let error = write_error(
            Path::new("/tmp/regmirror-spool-x/sha256-00"),
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        let text = error.to_string();
        assert!(text.contains("`/tmp/regmirror-spool-x`"), "{text}");
        assert!(text.contains("REGMIRROR_SPOOL"), "{text}");
    }

    #[tokio::test]
    async fn failed_fetch_is_retried_by_the_next_asker() {
        let spool = Spool::new().unwrap();
        let digest = Digest::sha256(b"x");
        let failed = spool
            .get(&digest, |_| async {
                Err(Error::NotFound { what: "x".into() })
            })
            .await;
        assert!(failed.is_err());
        let ok = spool
            .get(&digest, |path| async {
                tokio::fs::write(path, b"x")
                    .await
                    .map_err(|e| Error::io("w", e))
            })
            .await;
        assert!(ok.is_ok());
    }
}
