//! The spool: blobs fetched from a source, kept on disk for the run.
//!
//! Read once, write N: each blob is fetched from upstream at most once per run
//! (concurrent askers wait for the one fetch) and every target uploads from
//! the file, so a target that fails mid-upload retries without touching the
//! upstream again. Files live in a temporary directory removed at the end.
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

/// Verified blobs on disk, by digest.
pub struct Spool {
    dir: tempfile::TempDir,
    /// Locked while this spool lives: tells other runs it is not garbage.
    _lock: File,
    /// One cell per digest: the first asker fetches, the others wait on the
    /// cell. A failed fetch leaves the cell empty for the next asker.
    entries: Mutex<HashMap<Digest, Arc<OnceCell<PathBuf>>>>,
}

impl Spool {
    /// A spool in `$REGMIRROR_SPOOL`, `$RUNNER_TEMP`, or the system temp dir.
    pub fn new() -> Result<Spool> {
        let base = std::env::var_os("REGMIRROR_SPOOL")
            .or_else(|| std::env::var_os("RUNNER_TEMP"))
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        Spool::in_dir(&base)
    }

    /// A spool in `base`, after removing the abandoned ones there.
    pub fn in_dir(base: &Path) -> Result<Spool> {
        remove_abandoned(base);
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir_in(base)
            .map_err(|e| Error::io(format!("create spool in {}", base.display()), e))?;
        let lock = File::create(dir.path().join(LOCK))
            .and_then(|file| file.lock().map(|()| file))
            .map_err(|e| Error::io(format!("lock spool {}", dir.path().display()), e))?;
        Ok(Spool {
            dir,
            _lock: lock,
            entries: Mutex::new(HashMap::new()),
        })
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
            entries.entry(digest.clone()).or_default().clone()
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
