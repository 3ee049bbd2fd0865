//! Writing into target repositories, one writer per object: each blob and
//! manifest is written into each repository once per run (concurrent
//! askers share the one write), a blob another repository of the same
//! registry is writing is waited for and mounted, and a manifest PUT that
//! the registry answers `MANIFEST_BLOB_UNKNOWN` puts back what it names.
//!
//! What this run learned of who holds which blob (mount sources) lives
//! here too; it is never kept between runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::OnceCell;

use super::{Engine, Reporter};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Manifest};
use crate::plan::Job;
use crate::reference::Repository;
use crate::registry::meter::{Direction, Meter};
use crate::registry::{Intent, Mount};
use crate::source::Image;

/// Times a manifest PUT answered `MANIFEST_BLOB_UNKNOWN` is tried again.
const BLOB_UNKNOWN_RETRIES: u32 = 3;

/// What one write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Written {
    Present,
    Mounted,
    Uploaded,
}

/// The repository path that began writing a blob first, and its write cell.
pub(super) type FirstWriter = (String, Arc<OnceCell<Written>>);

/// The first HEAD of a blob in a registry this run: (repository, present).
pub(super) type Probe = Arc<OnceCell<(String, bool)>>;

/// Identifies one object in one repository: (is manifest, api host, path, digest).
pub(super) type WriteKey = (bool, String, String, Digest);

impl Engine {
    pub(super) fn cell(&self, key: WriteKey) -> Arc<OnceCell<Written>> {
        self.writes
            .lock()
            .expect("writes lock poisoned")
            .entry(key)
            .or_default()
            .clone()
    }

    pub(super) fn forget_write(&self, key: &WriteKey) {
        self.writes
            .lock()
            .expect("writes lock poisoned")
            .remove(key);
    }

    pub(super) fn key(manifest: bool, repository: &Repository, digest: &Digest) -> WriteKey {
        (
            manifest,
            repository.api_host().to_string(),
            repository.path.clone(),
            digest.clone(),
        )
    }

    pub(super) fn holds(&self, repository: &Repository, digest: &Digest) -> bool {
        let holders = self.holders.lock().expect("holders lock poisoned");
        holders
            .get(&(repository.api_host().to_string(), digest.clone()))
            .is_some_and(|paths| paths.contains(&repository.path))
    }

    pub(super) fn record(&self, repository: &Repository, digest: &Digest) {
        let mut holders = self.holders.lock().expect("holders lock poisoned");
        holders
            .entry((repository.api_host().to_string(), digest.clone()))
            .or_default()
            .insert(repository.path.clone());
    }

    pub(super) fn unrecord(&self, repository: &Repository, digest: &Digest) {
        let mut holders = self.holders.lock().expect("holders lock poisoned");
        if let Some(paths) = holders.get_mut(&(repository.api_host().to_string(), digest.clone())) {
            paths.remove(&repository.path);
        }
    }

    /// Another repository of the same registry known to hold `digest`.
    pub(super) fn mount_source(&self, repository: &Repository, digest: &Digest) -> Option<String> {
        let holders = self.holders.lock().expect("holders lock poisoned");
        holders
            .get(&(repository.api_host().to_string(), digest.clone()))?
            .iter()
            .find(|path| **path != repository.path)
            .cloned()
    }

    /// Whether `repository` may be taken to hold `digest`, asking its
    /// registry once per blob this run (concurrent askers wait for the
    /// first's answer). An answer for another repository of the registry
    /// counts as "lacks": where it is present, it is mounted from there;
    /// where it is absent, it is being written there, waited for and
    /// mounted (or written here, if that write fails).
    pub(super) async fn probe(&self, repository: &Repository, digest: &Digest) -> Result<bool> {
        let probe = self
            .probes
            .lock()
            .expect("probes lock poisoned")
            .entry((repository.api_host().to_string(), digest.clone()))
            .or_default()
            .clone();
        let (path, present) = probe
            .get_or_try_init(|| async {
                let present = self
                    .client
                    .blob_exists(repository, digest, Intent::Write)
                    .await?;
                if present {
                    self.record(repository, digest);
                }
                Ok::<_, Error>((repository.path.clone(), present))
            })
            .await?;
        Ok(*path == repository.path && *present)
    }

    /// The spooled file for `blob`, fetched from the job's source at most once.
    pub(super) async fn spooled(&self, job: &Job, blob: &Descriptor) -> Result<PathBuf> {
        self.spool
            .get(&blob.digest, |path| async move {
                let shown = self.show(Direction::Download, job, &job.source.to_string(), blob);
                job.source
                    .fetch_blob(&self.client, blob, &path, &shown.meter)
                    .await?;
                self.spooled.fetch_add(blob.size, Ordering::Relaxed);
                Ok(())
            })
            .await
    }

    /// A meter for `blob` moving to or from `peer`, shown to the reporter
    /// until the returned guard drops (the transfer ended, or its job was
    /// dropped).
    pub(super) fn show(
        &self,
        direction: Direction,
        job: &Job,
        peer: &str,
        blob: &Descriptor,
    ) -> Shown<'_> {
        let meter = Arc::new(Meter::new(
            direction,
            (&job.image, &job.reference),
            peer,
            &blob.digest,
            blob.size,
        ));
        self.reporter.transfer_started(&meter);
        Shown {
            reporter: self.reporter.as_ref(),
            meter,
        }
    }

    /// Puts `blob` into `repository` once per run: mount if a sibling
    /// repository has it, else upload from the spool. Returns what was done
    /// and whether this caller did it.
    pub(super) async fn ensure_blob(
        &self,
        job: &Job,
        repository: &Repository,
        blob: &Descriptor,
    ) -> Result<(Written, bool)> {
        let cell = self.cell(Self::key(false, repository, &blob.digest));
        let mine = AtomicBool::new(false);
        let written = cell
            .get_or_try_init(|| async {
                mine.store(true, Ordering::Relaxed);
                self.after_first_writer(repository, &blob.digest, &cell).await;
                let mut session = None;
                if let Some(from) = self.mount_source(repository, &blob.digest) {
                    match self.client.mount_blob(repository, &blob.digest, &from).await {
                        Ok(Mount::Mounted) => {
                            self.record(repository, &blob.digest);
                            return Ok(Written::Mounted);
                        }
                        Ok(Mount::Declined { upload_url }) => session = Some(upload_url),
                        // A refused mount (Harbor answers 401 when it cannot
                        // see the source project, goharbor/harbor#17097;
                        // GitLab did too, estesp/manifest-tool#53) is only a
                        // missed shortcut: the upload says whether we may
                        // write at all.
                        Err(error) => tracing::debug!(%repository, digest = %blob.digest, "mount refused, uploading: {error}"),
                    }
                }
                let path = self.spooled(job, blob).await?;
                let shown = self.show(Direction::Upload, job, &repository.to_string(), blob);
                self.client
                    .upload_blob(repository, blob, &path, session, &shown.meter)
                    .await?;
                self.record(repository, &blob.digest);
                Ok::<_, Error>(Written::Uploaded)
            })
            .await?;
        Ok((*written, mine.load(Ordering::Relaxed)))
    }

    /// Waits for the repository of the same registry that began writing
    /// `digest` first, if that is another one: once it is done, the blob is
    /// mounted from there instead of uploaded again. If it failed, this
    /// writer goes on by itself.
    pub(super) async fn after_first_writer(
        &self,
        repository: &Repository,
        digest: &Digest,
        cell: &Arc<OnceCell<Written>>,
    ) {
        let (path, first) = self.claim_first_write(repository, digest, cell);
        if path != repository.path {
            // Waits while the first writer is busy; an empty cell (it
            // failed) is left empty.
            let _ = first
                .get_or_try_init(|| async { Err::<Written, ()>(()) })
                .await;
        }
    }

    /// Makes `repository` (writing `digest` through `cell`) its registry's
    /// first writer of the blob, unless another repository is already:
    /// the first writer.
    pub(super) fn claim_first_write(
        &self,
        repository: &Repository,
        digest: &Digest,
        cell: &Arc<OnceCell<Written>>,
    ) -> FirstWriter {
        self.first_writers
            .lock()
            .expect("first writers lock poisoned")
            .entry((repository.api_host().to_string(), digest.clone()))
            .or_insert_with(|| (repository.path.clone(), cell.clone()))
            .clone()
    }

    /// Puts a child manifest by digest unless the repository has it. True if
    /// pushed. `check_first: false` (the tag was absent, so its children
    /// most likely are too) skips the HEAD: putting a manifest the registry
    /// already has is harmless and costs one request, as the HEAD would.
    pub(super) async fn ensure_manifest(
        &self,
        job: &Job,
        image: &Image,
        repository: &Repository,
        manifest: &Manifest,
        check_first: bool,
    ) -> Result<bool> {
        let cell = self.cell(Self::key(true, repository, &manifest.digest));
        let mine = AtomicBool::new(false);
        let written = cell
            .get_or_try_init(|| async {
                if check_first
                    && self
                        .client
                        .head_manifest(repository, manifest.digest.as_str(), Intent::Write)
                        .await?
                        .as_ref()
                        == Some(&manifest.digest)
                {
                    return Ok(Written::Present);
                }
                mine.store(true, Ordering::Relaxed);
                self.put_manifest(job, image, repository, manifest.digest.as_str(), manifest)
                    .await?;
                Ok::<_, Error>(Written::Uploaded)
            })
            .await?;
        Ok(*written == Written::Uploaded && mine.load(Ordering::Relaxed))
    }

    /// PUTs a manifest. If the registry says something it names is unknown
    /// (`MANIFEST_BLOB_UNKNOWN`: distribution can lose a blob link while
    /// another writer rewrites it, and a run beside ours writes the same
    /// blobs), checks every blob and child manifest it names again, puts
    /// back what is missing, and tries again, a few times.
    pub(super) async fn put_manifest(
        &self,
        job: &Job,
        image: &Image,
        repository: &Repository,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<()> {
        let mut tries = 0;
        loop {
            let error = match self
                .client
                .put_manifest(repository, reference, manifest)
                .await
            {
                Err(error) if error.is_blob_unknown() && tries < BLOB_UNKNOWN_RETRIES => error,
                other => return other,
            };
            tries += 1;
            tracing::warn!(%repository, %reference, "registry reports something unknown; checking again: {error}");
            for blob in &manifest.blobs {
                if !self
                    .client
                    .blob_exists(repository, &blob.digest, Intent::Write)
                    .await?
                {
                    self.unrecord(repository, &blob.digest);
                    self.forget_write(&Self::key(false, repository, &blob.digest));
                    // Leased by this job: still in the spool, or fetched again.
                    self.ensure_blob(job, repository, blob).await?;
                }
            }
            for child in &manifest.children {
                let present = self
                    .client
                    .head_manifest(repository, child.digest.as_str(), Intent::Write)
                    .await?
                    .is_some();
                let known = image.children.iter().find(|m| m.digest == child.digest);
                if let (false, Some(known)) = (present, known) {
                    self.forget_write(&Self::key(true, repository, &known.digest));
                    Box::pin(self.ensure_manifest(job, image, repository, known, false)).await?;
                }
            }
            // Give the other writer a moment to finish its link files.
            tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(tries))).await;
        }
    }
}

/// A transfer the reporter was told of; tells it the transfer ended when
/// dropped, however its future ended.
pub(super) struct Shown<'a> {
    reporter: &'a dyn Reporter,
    /// What the verbs count into.
    pub(super) meter: Arc<Meter>,
}

impl Drop for Shown<'_> {
    fn drop(&mut self) {
        self.reporter.transfer_finished(&self.meter);
    }
}
