//! The spool: blobs fetched from a source, kept on disk for the run.
//!
//! Read once, write N: each blob is fetched from upstream at most once per run
//! (concurrent askers wait for the one fetch) and every target uploads from
//! the file, so a target that fails mid-upload retries without touching the
//! upstream again. Files live in a temporary directory removed at the end.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Verified blobs on disk, by digest.
pub struct Spool {
    dir: tempfile::TempDir,
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
        let dir = tempfile::Builder::new()
            .prefix("regmirror-spool-")
            .tempdir_in(&base)
            .map_err(|e| Error::io(format!("create spool in {}", base.display()), e))?;
        Ok(Spool {
            dir,
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
