//! Blobs that go from the source to their targets without the spool: one
//! download, teed to an upload per target through a bounded buffer,
//! hashed on the way, the last chunk held back until the digest is proven.
//!
//! A blob streams when it pays: it is at least [`STREAM_FROM`] and no job
//! has put it into the spool yet (each byte then crosses the kernel once,
//! not three times, and needs no disk), or it is bigger than the spool may
//! hold (it has no other way). Smaller blobs, and blobs already spooled,
//! go through the spool, where an upload that fails is simply sent again.
//! A target whose streamed upload fails gets the blob through the spool
//! afterwards (a blob the spool cannot hold is streamed to it once more).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};

use super::Engine;
use super::write::Written;
use crate::digest::{Digest, Verifier};
use crate::error::{Error, Result};
use crate::manifest::Descriptor;
use crate::plan::Job;
use crate::reference::Repository;
use crate::registry::meter::Direction;
use crate::registry::retry;
use crate::source::Source;

/// Blobs this big or bigger stream when no job has spooled them.
const STREAM_FROM: u64 = 1 << 20;

/// Room for streams, per registry: fewer transfers of streams at once
/// than the registry has request permits (`concurrency`; at least one). A
/// stream's download holds a permit of its source while it waits for its
/// targets to take each chunk, and each upload holds a permit of its
/// target while it waits for the source: two streams could each hold what
/// the other waits for. With fewer stream transfers at each registry than
/// it has permits, each registry always has a permit that no stream holds,
/// so some stream can always go on. (Other requests hold one permit and
/// wait on none.) A stream enters the rooms of its registries in the
/// order of their names, so entering cannot deadlock either.
#[derive(Default)]
pub(super) struct StreamRooms {
    rooms: std::sync::Mutex<HashMap<String, (Arc<tokio::sync::Semaphore>, usize)>>,
}

impl StreamRooms {
    /// Waits for room for a stream from `source` to `targets`.
    async fn enter(
        &self,
        client: &crate::registry::RegistryClient,
        source: &Repository,
        targets: &[&Repository],
    ) -> Vec<tokio::sync::OwnedSemaphorePermit> {
        let mut wanted: BTreeMap<String, (usize, &Repository)> = BTreeMap::new();
        for repository in std::iter::once(source).chain(targets.iter().copied()) {
            wanted
                .entry(repository.api_host().to_string())
                .or_insert((0, repository))
                .0 += 1;
        }
        let mut held = Vec::new();
        for (host, (count, repository)) in wanted {
            let (room, size) = self
                .rooms
                .lock()
                .expect("stream rooms lock poisoned")
                .entry(host)
                .or_insert_with(|| {
                    let size = client.concurrency(repository).saturating_sub(1).max(1);
                    (Arc::new(tokio::sync::Semaphore::new(size)), size)
                })
                .clone();
            let permits = room
                .acquire_many_owned(count.min(size) as u32)
                .await
                .expect("a stream room is never closed");
            held.push(permits);
        }
        held
    }
}

/// Chunks a streamed blob may have waiting for each target.
const STREAM_DEPTH: usize = 4;

/// How long a target may take no chunk of a streamed blob before it is
/// cut off (it gets the blob through the spool afterwards): well inside
/// the idle window (30 s by default) of the other targets' uploads, which
/// wait meanwhile.
const STREAM_LAG: Duration = Duration::from_secs(10);

type Sender = tokio::sync::mpsc::Sender<std::io::Result<Bytes>>;

impl Engine {
    /// Streams the blobs of `needed` that pay to stream (see the module)
    /// from the job's registry source to the destinations of `work` that
    /// lack them (per `missing`) and cannot mount them, and takes them out
    /// of `needed`. A blob another job is streaming into a registry is
    /// left to that job there: the destination mounts it afterwards. A
    /// stream that fails a destination puts the blob back into `needed`
    /// (the spool takes over), except a blob the spool cannot hold or one
    /// the source sent wrong, which fails that destination in `missing`. Per destination index, the
    /// blobs streamed to it.
    pub(super) async fn stream_blobs(
        &self,
        job: &Job,
        work: &[(usize, Option<Digest>)],
        needed: &mut BTreeMap<Digest, Descriptor>,
        missing: &mut [Result<Vec<Descriptor>>],
    ) -> HashMap<usize, Vec<Descriptor>> {
        let mut streamed_to: HashMap<usize, Vec<Descriptor>> = HashMap::new();
        let Source::Registry(source) = job.source.as_ref() else {
            return streamed_to;
        };
        let limit = self.spool.budget.limit();
        let plans: Vec<(Descriptor, bool, Vec<usize>)> = needed
            .values()
            .filter_map(|blob| {
                let must = limit.is_some_and(|limit| blob.size > limit);
                if !must && (blob.size < STREAM_FROM || self.spool.holds(&blob.digest)) {
                    return None;
                }
                let lacking: Vec<usize> = work
                    .iter()
                    .zip(missing.iter())
                    .filter(|(_, lacking)| {
                        lacking
                            .as_ref()
                            .is_ok_and(|l| l.iter().any(|b| b.digest == blob.digest))
                    })
                    .map(|((i, _), _)| *i)
                    .filter(|i| {
                        let repository = &job.destinations[*i].repository;
                        self.mount_source(repository, &blob.digest).is_none()
                    })
                    .collect();
                // A registry that refused a PUT this big takes it in parts,
                // from the spool; the others read it there too (one download).
                let in_parts = lacking.iter().any(|i| {
                    let repository = &job.destinations[*i].repository;
                    !self.client.takes_whole(repository, blob.size)
                });
                if in_parts && !must {
                    return None;
                }
                Some((blob.clone(), must, lacking))
            })
            .collect();
        for (blob, _, _) in &plans {
            needed.remove(&blob.digest);
        }
        let ended: Vec<_> = stream::iter(plans)
            .map(|(blob, must, lacking)| async move {
                let results = self.stream_to(job, source, &blob, must, lacking).await;
                (blob, must, results)
            })
            .buffer_unordered(self.options.blobs_per_destination.max(1))
            .collect()
            .await;
        for (blob, must, results) in ended {
            for (i, result) in results {
                match result {
                    Ok(true) => streamed_to.entry(i).or_default().push(blob.clone()),
                    Ok(false) => {}
                    // The source sent other bytes than its digest says:
                    // reading them again through the spool would not help.
                    Err(error) if must || error.is_mismatch() => {
                        if let Some(at) = work.iter().position(|(w, _)| *w == i) {
                            missing[at] = Err(error);
                        }
                    }
                    Err(error) => {
                        tracing::debug!(digest = %blob.digest, "streaming failed; through the spool instead: {error}");
                        needed.insert(blob.digest.clone(), blob.clone());
                    }
                }
            }
        }
        streamed_to
    }

    /// Streams `blob` to the destinations `lacking` (indices into the
    /// job's destinations): to one per registry no stream of this run went
    /// to yet (the others mount it from there later), or, for a blob the
    /// spool cannot hold (`must`), to all of them, twice at most. Per
    /// destination streamed to: `Ok(true)` written by this stream,
    /// `Ok(false)` written by another job, or why it was not.
    async fn stream_to(
        &self,
        job: &Job,
        source: &Repository,
        blob: &Descriptor,
        must: bool,
        lacking: Vec<usize>,
    ) -> Vec<(usize, Result<bool>)> {
        let host = |i: usize| job.destinations[i].repository.api_host().to_string();
        let mut left: Vec<usize> = {
            let mut streams = self.streams.lock().expect("streams lock poisoned");
            let hosts = streams.entry(blob.digest.clone()).or_default();
            lacking
                .into_iter()
                .filter(|i| hosts.insert(host(*i)) || must)
                .collect()
        };
        let mut ended = Vec::new();
        if left.is_empty() {
            // Every registry it needs is another stream's: nothing to
            // download, no room to wait for.
            return ended;
        }
        for attempt in 1..=if must { 2 } else { 1 } {
            let repositories: Vec<&Repository> = left
                .iter()
                .map(|i| &job.destinations[*i].repository)
                .collect();
            let room = self
                .stream_rooms
                .enter(&self.client, source, &repositories)
                .await;
            let results = self.stream_blob(job, source, blob, &repositories).await;
            drop(room);
            let mut again = Vec::new();
            for (i, result) in left.into_iter().zip(results) {
                match result {
                    Err(error) if must && attempt == 1 => {
                        tracing::debug!(digest = %blob.digest, "streaming failed, again: {error}");
                        again.push(i);
                    }
                    Err(error) => {
                        // Another job may stream it there itself.
                        if let Some(hosts) = self
                            .streams
                            .lock()
                            .expect("streams lock poisoned")
                            .get_mut(&blob.digest)
                        {
                            hosts.remove(&host(i));
                        }
                        ended.push((i, Err(error)));
                    }
                    written => ended.push((i, written)),
                }
            }
            left = again;
            if left.is_empty() {
                break;
            }
        }
        ended
    }

    /// Streams `blob` from `source` to `repositories` at once: one
    /// download, teed to an upload per repository through a bounded
    /// buffer, hashed on the way. The last chunk goes out only once the
    /// digest and size are proven, so a mismatch aborts every upload
    /// before the registry can commit it. A repository that stops taking
    /// chunks for [`STREAM_LAG`] is cut off, so it cannot hold the others
    /// for ever. Each upload is its registry's first writer of the blob
    /// (unless another was first): other repositories there wait for it
    /// and mount. Per repository: `Ok(true)` written by this stream,
    /// `Ok(false)` written by another job, or why it was not (the
    /// source's fault when the download failed, else the upload's).
    async fn stream_blob(
        &self,
        job: &Job,
        source: &Repository,
        blob: &Descriptor,
        repositories: &[&Repository],
    ) -> Vec<Result<bool>> {
        let mut senders = Vec::new();
        let mut uploads = Vec::new();
        for &repository in repositories {
            let cell = self.cell(Self::key(false, repository, &blob.digest));
            if cell.initialized() {
                uploads.push(futures::future::Either::Left(async { Ok(false) }));
                continue;
            }
            let (sender, receiver) =
                tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(STREAM_DEPTH);
            senders.push(Some(sender));
            uploads.push(futures::future::Either::Right(async move {
                let mine = AtomicBool::new(false);
                cell.get_or_try_init(|| async {
                    mine.store(true, Ordering::Relaxed);
                    self.claim_first_write(repository, &blob.digest, &cell);
                    // No session, no permit of the target, until the
                    // source has sent something: an upload never waits
                    // on the source while it holds the target.
                    let mut receiver = receiver;
                    let first = match receiver.recv().await {
                        Some(Ok(first)) => first,
                        Some(Err(error)) => return Err(Error::io("stream a blob", error)),
                        None => {
                            return Err(Error::io(
                                "stream a blob",
                                std::io::Error::other("the download ended before its first byte"),
                            ));
                        }
                    };
                    let shown = self.show(Direction::Upload, job, &repository.to_string(), blob);
                    let rest = futures::stream::unfold(receiver, |mut receiver| async {
                        receiver.recv().await.map(|chunk| (chunk, receiver))
                    });
                    let body = futures::stream::once(async { Ok(first) }).chain(rest);
                    self.client
                        .upload_stream(repository, blob, Box::pin(body), &shown.meter)
                        .await?;
                    self.record(repository, &blob.digest);
                    Ok::<_, Error>(Written::Uploaded)
                })
                .await
                .map(|_| mine.load(Ordering::Relaxed))
            }));
        }
        if senders.is_empty() {
            return futures::future::join_all(uploads).await;
        }
        let feed = async {
            let fed = self.feed(job, source, blob, &mut senders).await;
            if let Err(error) = &fed {
                // Every upload ends in an error before its last byte.
                for sender in senders.iter().flatten() {
                    let _ = sender
                        .send(Err(std::io::Error::other(error.to_string())))
                        .await;
                }
            }
            // Dropped: an upload whose body ended whole completes.
            senders.clear();
            fed
        };
        let (fed, written) = futures::future::join(feed, futures::future::join_all(uploads)).await;
        match fed {
            Ok(()) => written,
            // The source's fault is each failed upload's reason.
            Err(error) => {
                let failed = written.iter().filter(|w| w.is_err()).count();
                let mut reasons = error.share(failed);
                written
                    .into_iter()
                    .map(|w| match w {
                        Err(_) => Err(reasons.next().expect("one reason per failure")),
                        ok => ok,
                    })
                    .collect()
            }
        }
    }

    /// The download half of [`Engine::stream_blob`]: each chunk to every
    /// sender still taking them, the last only once the blob is proven. A
    /// connection that breaks is taken up where it stopped (`Range`; a
    /// registry that answers the whole blob again has what was sent
    /// skipped), a few times, with the usual back-off.
    async fn feed(
        &self,
        job: &Job,
        source: &Repository,
        blob: &Descriptor,
        senders: &mut [Option<Sender>],
    ) -> Result<()> {
        let shown = self.show(Direction::Download, job, &source.to_string(), blob);
        let mut verifier = Verifier::new(blob.digest.clone(), Some(blob.size));
        let mut held: Option<Bytes> = None;
        let mut breaks = 0;
        loop {
            let from = verifier.seen();
            let (start, chunks) = self
                .client
                .get_blob_from(source, &blob.digest, from)
                .await?
                .ok_or_else(|| Error::NotFound {
                    what: format!("{source}@{}", blob.digest),
                })?;
            // Bytes of this answer that were sent already.
            let mut skip = from - start;
            let mut chunks = std::pin::pin!(chunks);
            let broke = loop {
                let mut chunk = match chunks.next().await {
                    None => break None,
                    Some(Ok(chunk)) => chunk,
                    Some(Err(error)) => break Some(error),
                };
                if skip > 0 {
                    let skipped = skip.min(chunk.len() as u64);
                    skip -= skipped;
                    chunk = chunk.slice(skipped as usize..);
                    if chunk.is_empty() {
                        continue;
                    }
                }
                verifier.update(&chunk);
                if verifier.overrun() {
                    break None;
                }
                shown.meter.add(chunk.len() as u64);
                if let Some(previous) = held.replace(chunk) {
                    tee(senders, previous).await?;
                }
            };
            let Some(error) = broke else { break };
            let wait = retry::error_is_retryable(&error)
                .then(|| retry::delay(breaks, None))
                .flatten();
            let Some(wait) = wait else {
                return Err(error);
            };
            tracing::debug!(digest = %blob.digest, at = verifier.seen(), "streamed download broke; taking it up where it stopped: {error}");
            breaks += 1;
            tokio::time::sleep(wait).await;
        }
        verifier.finish(&format!("blob {} from {source}", blob.digest))?;
        if let Some(last) = held {
            tee(senders, last).await?;
        }
        self.streamed.fetch_add(blob.size, Ordering::Relaxed);
        Ok(())
    }
}

/// Sends `chunk` to every sender still taking chunks; one that is gone (its
/// upload failed) or takes none for [`STREAM_LAG`] is dropped. Fails when
/// none is left.
async fn tee(senders: &mut [Option<Sender>], chunk: Bytes) -> Result<()> {
    for slot in senders.iter_mut() {
        if let Some(sender) = slot {
            let sent = tokio::time::timeout(STREAM_LAG, sender.send(Ok(chunk.clone()))).await;
            if !matches!(sent, Ok(Ok(()))) {
                *slot = None;
            }
        }
    }
    if senders.iter().all(Option::is_none) {
        return Err(Error::io(
            "stream a blob to its targets",
            std::io::Error::other("no target is taking it any more"),
        ));
    }
    Ok(())
}
