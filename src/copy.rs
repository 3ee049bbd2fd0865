//! The copy: bring each image × tag up to date on every destination.
//!
//! Per job, in order:
//! 1. **HEAD first.** Every destination's tag, then the source: a HEAD when
//!    every destination has the tag (none when pinned, or for an immutable
//!    tag), else one GET of the tag, its digest and bytes at once.
//!    Destinations that already match are done; an up-to-date run makes
//!    nothing but HEADs.
//! 2. **Read and verify.** Only now is the rest of the source manifest tree
//!    fetched (every platform, attestations included), each manifest checked
//!    against its digest.
//! 3. **Gather before writing.** Blobs missing on some destination (HEAD) that
//!    no known repository of that registry can mount are fetched into the
//!    spool, verified. A mismatch fails the image here, before anything of it
//!    is pushed.
//! 4. **Write N.** Destinations are written concurrently: blobs (mount, or
//!    upload from the spool), then child manifests by digest, then the tag.
//!    One writer per (registry, repository, object): two tags of one
//!    repository sharing layers wait for each other instead of racing.
//! 5. **Verify.** HEAD the tag again; it must name the source digest.
//!
//! A job with `platforms` writes the index cut from the source's instead,
//! and compares the targets with that (`platforms`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::join_all;
use futures::{FutureExt, StreamExt, TryStreamExt, stream};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Manifest, Platform};
use crate::plan::{Destination, Job};
use crate::reference::Repository;
use crate::registry::meter::Meter;
use crate::registry::{Intent, RegistryClient};
use crate::report::{Failure, FailureKind, Outcome, Status, Summary, Transfer};
use crate::source::{Image, Source};
use crate::spool::Spool;

mod platforms;
mod referrers;
mod streaming;
mod write;

use write::{FirstWriter, Probe, WriteKey, Written};

/// How a run behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only HEAD and report what would be copied.
    pub dry_run: bool,
    /// Walk every child manifest and blob on destinations that already have
    /// the tag, and repair what is missing.
    pub deep: bool,
    /// Jobs (image × tag) in flight at once.
    pub jobs: usize,
    /// Blob transfers in flight per destination.
    pub blobs_per_destination: usize,
    /// Stops the run: no job starts after it fires, and jobs in flight get
    /// [`GRACE`] to finish; what did not is reported `cancelled`.
    pub cancel: CancellationToken,
}

/// How long a job waits, once one destination answered its HEAD, for the
/// others before it goes on without them: a destination that answers later
/// is written on its own then, so a silent target costs every other
/// target at most this (loopback and healthy registries answer within
/// milliseconds of each other).
pub const LAGGARD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A job's image as read from its source, once for every destination
/// that needs it: the root manifest step 1 already read, if any, and the
/// verified tree.
struct Tree {
    root: Mutex<Option<Manifest>>,
    image: OnceCell<Image>,
}

/// HEADs of destinations still under way, each with its index.
type Laggards<'a> = futures::stream::FuturesUnordered<
    futures::future::BoxFuture<'a, (usize, Result<Option<Digest>>)>,
>;

/// How long jobs in flight may go on after the run is cancelled. A job cut
/// off leaves no partial tag: the tag is the last write.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: false,
            deep: false,
            // Chosen by measurement (docs/benchmark.md): an up-to-date run
            // is bound by round trips, so more jobs in flight pay, while
            // memory follows the connections per registry, not the jobs.
            jobs: 32,
            blobs_per_destination: 4,
            cancel: CancellationToken::new(),
        }
    }
}

/// Told about the run as it goes (progress bars live in the binary).
pub trait Reporter: Send + Sync {
    /// The run starts: this many image × tag jobs, with this many
    /// (image × tag, target) pairs in all.
    fn started(&self, _jobs: usize, _pairs: usize) {}

    /// One job is done: its outcomes, one per destination, then one per
    /// referrer and destination.
    fn job_finished(&self, job: &Job, outcomes: &[Outcome]);

    /// A blob starts moving; `meter` counts its bytes until
    /// [`Reporter::transfer_finished`] is told of the same meter.
    fn transfer_started(&self, _meter: &Arc<Meter>) {}

    /// The blob stopped moving: done, failed or dropped.
    fn transfer_finished(&self, _meter: &Arc<Meter>) {}
}

/// A reporter that ignores everything.
pub struct Silent;

impl Reporter for Silent {
    fn job_finished(&self, _: &Job, _: &[Outcome]) {}
}

/// Runs jobs against registries; holds what the run has learned.
pub struct Engine {
    client: Arc<RegistryClient>,
    /// Told of jobs and transfers as they go.
    reporter: Arc<dyn Reporter>,
    spool: Spool,
    options: Options,
    /// The one write of each object into each repository. The first caller
    /// writes; others wait on the cell and share its result.
    writes: Mutex<HashMap<WriteKey, Arc<OnceCell<Written>>>>,
    /// Repositories this run wrote or saw holding each blob, per registry:
    /// mount sources. Only this run's knowledge; never kept between runs.
    holders: Mutex<HashMap<(String, Digest), BTreeSet<String>>>,
    /// Per (api host, blob): the repository that began writing it first
    /// this run, and its write cell. Other repositories of that registry
    /// wait for it and mount from it instead of uploading the same bytes
    /// again. The first writer waits on no one, so there is no cycle.
    first_writers: Mutex<HashMap<(String, Digest), FirstWriter>>,
    /// Per (api host, blob): the first HEAD this run sent for it in that
    /// registry, as (repository, present). Asking one repository is enough
    /// while the blob is being written: the others mount it from there.
    probes: Mutex<HashMap<(String, Digest), Probe>>,
    /// Source tag lists for referrer discovery.
    source_tags: referrers::SourceTags,
    /// Per blob, the registries (api hosts) it is being or was streamed
    /// to this run: another job that needs it there waits for that write
    /// and mounts it, rather than reading it from the source again.
    streams: Mutex<HashMap<Digest, HashSet<String>>>,
    /// Room for streams at each registry (see `streaming`): fewer
    /// transfers than its request permits.
    stream_rooms: streaming::StreamRooms,
    /// Bytes read from sources into the spool, and streamed past it.
    spooled: AtomicU64,
    streamed: AtomicU64,
}

/// What a job has done so far, kept for a run cancelled in the middle of
/// it: a pair whose tag was written is reported `copied` with its digest;
/// only what did not finish is `cancelled`.
#[derive(Default)]
struct Finished {
    /// Per destination (the job's order): its outcome once its tag is
    /// written or its end is known.
    outcomes: Mutex<Vec<Option<Outcome>>>,
    /// The source's digest, once read: what every pair of the job names.
    source: Mutex<Option<Digest>>,
}

impl Finished {
    fn new(job: &Job) -> Finished {
        Finished {
            outcomes: Mutex::new(vec![None; job.destinations.len()]),
            source: Mutex::new(job.pinned.clone()),
        }
    }

    /// Destination `i` has its outcome (a tag written, or its end).
    fn record(&self, i: usize, outcome: Outcome) {
        if let Some(slot) = self.outcomes.lock().expect("finished lock").get_mut(i) {
            *slot = Some(outcome);
        }
    }

    /// The job's outcomes as far as it got: each destination's recorded
    /// one, `cancelled` for the rest.
    fn cancelled(&self, job: &Job) -> Vec<Outcome> {
        let source = self.source.lock().expect("finished lock").clone();
        let outcomes = self.outcomes.lock().expect("finished lock");
        job.destinations
            .iter()
            .zip(outcomes.iter())
            .map(|(d, recorded)| {
                let outcome = recorded.clone().unwrap_or_else(|| {
                    Outcome::new(
                        &job.image,
                        &d.tag,
                        &d.name,
                        d.reference(),
                        Status::Cancelled,
                    )
                });
                Outcome {
                    source_digest: outcome.source_digest.clone().or_else(|| source.clone()),
                    ..outcome
                }
            })
            .collect()
    }
}

impl Engine {
    /// An engine using `client`, with a fresh spool, telling `reporter`.
    pub fn new(
        client: Arc<RegistryClient>,
        options: Options,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Engine> {
        Ok(Engine {
            client,
            reporter,
            spool: Spool::new()?,
            options,
            writes: Mutex::default(),
            holders: Mutex::default(),
            first_writers: Mutex::default(),
            probes: Mutex::default(),
            source_tags: referrers::SourceTags::default(),
            streams: Mutex::default(),
            stream_rooms: streaming::StreamRooms::default(),
            spooled: AtomicU64::new(0),
            streamed: AtomicU64::new(0),
        })
    }

    /// Source tag lists the run has read already (for tag selectors):
    /// referrer discovery uses them instead of guessing.
    pub fn know_tags(&self, listed: HashMap<Repository, Vec<String>>) {
        self.source_tags.known(listed);
    }

    /// Runs every job, `options.jobs` at a time, and summarises.
    pub async fn run(&self, jobs: &[Job]) -> Summary {
        let started = Instant::now();
        let started_at = std::time::SystemTime::now();
        let pairs = jobs.iter().map(|job| job.destinations.len()).sum();
        self.reporter.started(jobs.len(), pairs);
        self.source_tags.budget(jobs);
        // Jobs wait on each other only through registry permits (in the
        // client) and the per-object write cells.
        let mut done: Vec<(usize, Vec<Outcome>)> = stream::iter(jobs.iter().enumerate())
            .map(|(i, job)| async move {
                let cancel = &self.options.cancel;
                let finished = Finished::new(job);
                let outcomes = if cancel.is_cancelled() {
                    finished.cancelled(job)
                } else {
                    // The job, unless the run is cancelled and the grace
                    // period ends first (the job's requests are dropped,
                    // what it finished is kept).
                    tokio::select! {
                        outcomes = self.run_job(job, &finished) => outcomes,
                        () = async {
                            cancel.cancelled().await;
                            tokio::time::sleep(GRACE).await;
                        } => finished.cancelled(job),
                    }
                };
                self.reporter.job_finished(job, &outcomes);
                (i, outcomes)
            })
            .buffer_unordered(self.options.jobs.max(1))
            .collect()
            .await;
        done.sort_by_key(|(i, _)| *i);
        Summary {
            outcomes: done.into_iter().flat_map(|(_, o)| o).collect(),
            duration: started.elapsed(),
            started: Some(started_at),
            interrupted: None,
            throttled: self.client.paces(),
            requests: self.client.requests(),
            spool_waited: self.spool.budget.waited(),
            spooled: self.spooled.load(Ordering::Relaxed),
            streamed: self.streamed.load(Ordering::Relaxed),
        }
    }

    /// Brings one image × tag up to date on each of its destinations, then
    /// (unless the job says not to) what refers to it; tells `finished` of
    /// each destination as it ends.
    async fn run_job(&self, job: &Job, finished: &Finished) -> Vec<Outcome> {
        let mut outcomes = self.copy_job(job, finished).await;
        for (i, outcome) in outcomes.iter().enumerate() {
            finished.record(i, outcome.clone());
        }
        if job.referrers && !self.options.dry_run {
            self.copy_referrers(job, &mut outcomes).await;
        }
        outcomes
    }

    /// The image itself: one outcome per destination, in order; a tag
    /// written is told to `finished` at once.
    async fn copy_job(&self, job: &Job, finished: &Finished) -> Vec<Outcome> {
        let started = Instant::now();
        let outcome = |d: &Destination,
                       source: Option<&Digest>,
                       before: Option<Digest>,
                       result: Result<(Status, Transfer)>| {
            let base = Outcome {
                source_digest: source.cloned(),
                before: before.clone(),
                duration: started.elapsed(),
                ..Outcome::new(&job.image, &d.tag, &d.name, d.reference(), Status::Failed)
            };
            // Copied is only reported after the tag was HEADed back; a
            // failed target's state is unknown.
            let outcome = match result {
                Ok((status, transfer)) => Outcome {
                    status,
                    transfer,
                    after: match status {
                        Status::Copied | Status::Present => source.cloned(),
                        _ => before,
                    },
                    ..base
                },
                Err(error) => base.failed(Failure::from(&error)),
            };
            let outcome = match job.subject {
                Some(_) => refused_is_a_warning(outcome),
                None => outcome,
            };
            match &outcome.failure {
                Some(failure) if outcome.status == Status::Refused => tracing::warn!(
                    "{}:{} → {}: refused: {}",
                    job.image,
                    d.tag,
                    outcome.destination,
                    failure.message()
                ),
                Some(failure) => tracing::error!(
                    "{}:{} → {}: {}",
                    job.image,
                    d.tag,
                    outcome.destination,
                    failure.message()
                ),
                // A pair already in place is only counted, unless asked (-v).
                None if outcome.status == Status::Present => {
                    tracing::debug!("{}:{} → {}: present", job.image, d.tag, outcome.destination,)
                }
                None => tracing::info!(
                    "{}:{} → {}: {} ({} uploaded, {} mounted, {} skipped)",
                    job.image,
                    d.tag,
                    outcome.destination,
                    outcome.status.as_str(),
                    outcome.transfer.blobs_uploaded,
                    outcome.transfer.blobs_mounted,
                    outcome.transfer.blobs_skipped
                ),
            }
            outcome
        };
        // Without a source digest, every destination fails the same way.
        let fail_all = |error: Error| {
            let errors = error.share(job.destinations.len());
            job.destinations
                .iter()
                .zip(errors)
                .map(|(d, e)| outcome(d, None, None, Err(e)))
                .collect::<Vec<_>>()
        };

        // 1. HEAD first: every destination's tag, then the source as little
        // as possible. An immutable tag every destination has is done
        // without asking the source at all. A destination that has not
        // answered [`LAGGARD_WAIT`] after the first did joins later
        // (`laggards`): a silent target never holds up the others. With
        // `platforms`, whether the targets hold the cut index already is
        // known only from all of them: every answer is waited for.
        let (answered, mut laggards) = self.head_destinations(job, !job.platforms.is_empty()).await;
        let befores: Vec<Result<Option<Digest>>> = answered
            .iter()
            .map(|head| match head {
                Some(Ok(digest)) => Ok(digest.clone()),
                Some(Err(error)) => Err(Error::Shared(error.clone())),
                // Not asked for: `befores` is read only where `answered` is.
                None => Ok(None),
            })
            .collect();
        let lagging = |i: usize| answered[i].is_none();
        // Every destination holds what it should: each tag as it is.
        let all_present = |befores: Vec<Result<Option<Digest>>>, source: Option<Digest>| {
            job.destinations
                .iter()
                .zip(befores)
                .map(|(d, head)| Outcome {
                    source_digest: source.clone(),
                    after: head.ok().flatten(),
                    duration: started.elapsed(),
                    ..Outcome::new(&job.image, &d.tag, &d.name, d.reference(), Status::Present)
                })
                .collect::<Vec<_>>()
        };
        let everywhere =
            laggards.is_empty() && befores.iter().all(|head| matches!(head, Ok(Some(_))));
        if everywhere && job.immutable && job.pinned.is_none() && !self.options.deep {
            return all_present(befores, None);
        }
        // A destination answered that it lacks the tag, so the image will be
        // read: one GET of the tag gives its digest and its bytes (a HEAD
        // first would cost a second request). Otherwise (every destination
        // has a tag, or could not be asked) a HEAD, free at Docker Hub,
        // decides: a metered GET is never spent on targets that are down.
        let lacking = (0..befores.len()).any(|i| !lagging(i) && matches!(befores[i], Ok(None)));
        let fetch_root = lacking && !self.options.dry_run;
        let (source_digest, root) = match &job.pinned {
            Some(digest) => (digest.clone(), None),
            None if fetch_root => {
                match job.source.manifest_at(&self.client, &job.reference).await {
                    Ok(root) => (root.digest.clone(), Some(root)),
                    Err(error) => return fail_all(error),
                }
            }
            None => match job.source.resolve(&self.client, &job.reference).await {
                Ok(Some(digest)) => (digest, None),
                Ok(None) => {
                    return fail_all(Error::NotFound {
                        what: format!("{}:{}", job.source, job.reference),
                    });
                }
                Err(error) => return fail_all(error),
            },
        };
        // With `platforms`, the targets should hold the index cut from the
        // source's; reports still name the source's digest.
        let upstream = source_digest.clone();
        let (source_digest, root) = if job.platforms.is_empty() {
            (source_digest, root)
        } else {
            match self.cut(job, &source_digest, root, &befores).await {
                Ok(platforms::Cut::Index(index)) => (index.digest.clone(), Some(*index)),
                Ok(platforms::Cut::Current) => return all_present(befores, Some(upstream)),
                Err(error) => return fail_all(error),
            }
        };
        let source = Some(&source_digest);
        *finished.source.lock().expect("finished lock") = Some(upstream.clone());

        // What a destination's HEAD answer leaves to do: its outcome now,
        // or the digest it had, to be written.
        let sort = |i: usize,
                    head: Result<Option<Digest>>|
         -> std::result::Result<Outcome, Option<Digest>> {
            let destination = &job.destinations[i];
            match head {
                Err(error) => Ok(outcome(destination, source, None, Err(error))),
                Ok(before) => {
                    let current = before.as_ref() == source;
                    if current && !self.options.deep {
                        Ok(outcome(
                            destination,
                            source,
                            before,
                            Ok((Status::Present, Transfer::default())),
                        ))
                    } else if self.options.dry_run {
                        let status = if current {
                            Status::Present
                        } else {
                            Status::Planned
                        };
                        Ok(outcome(
                            destination,
                            source,
                            before,
                            Ok((status, Transfer::default())),
                        ))
                    } else {
                        Err(before)
                    }
                }
            }
        };
        let mut results: Vec<Option<Outcome>> = vec![None; job.destinations.len()];
        let mut work: Vec<(usize, Option<Digest>)> = Vec::new();
        for (i, before) in befores.into_iter().enumerate() {
            if lagging(i) {
                continue;
            }
            match sort(i, before) {
                Ok(done) => results[i] = Some(done),
                Err(before) => work.push((i, before)),
            }
        }
        // The destinations that answered are written now; each laggard as
        // it answers, alongside: the tree is read from the source once for
        // all of them (its blobs come from the spool while this job holds
        // them, or are fetched again).
        let tree = Tree {
            root: Mutex::new(root),
            image: OnceCell::new(),
        };
        let tree = &tree;
        let now = async {
            if work.is_empty() {
                return Vec::new();
            }
            let written = self
                .write_all(job, &source_digest, tree, &work, finished)
                .await;
            work.into_iter()
                .zip(written)
                .map(|((i, before), result)| {
                    (i, outcome(&job.destinations[i], source, before, result))
                })
                .collect::<Vec<_>>()
        };
        let later = async {
            let mut done = Vec::new();
            let mut writes = futures::stream::FuturesUnordered::new();
            loop {
                tokio::select! {
                    Some((i, head)) = laggards.next() => match sort(i, head) {
                        Ok(outcome) => done.push((i, outcome)),
                        Err(before) => {
                            let source_digest = &source_digest;
                            writes.push(async move {
                                let work = [(i, before.clone())];
                                let written = self.write_all(job, source_digest, tree, &work, finished).await;
                                let result = written.into_iter().next().expect("one destination, one result");
                                (i, outcome(&job.destinations[i], source, before, result))
                            });
                        }
                    },
                    Some(written) = writes.next() => done.push(written),
                    else => break,
                }
            }
            done
        };
        let (now, later) = tokio::join!(now, later);
        for (i, done) in now.into_iter().chain(later) {
            results[i] = Some(done);
        }
        results
            .into_iter()
            .map(|o| o.expect("every destination got an outcome"))
            .map(|o| Outcome {
                source_digest: o.source_digest.map(|_| upstream.clone()),
                ..o
            })
            .collect()
    }

    /// The digest each destination's tag names now (HEAD): every answer,
    /// or (unless `wait_for_all`) the answers that came within
    /// [`LAGGARD_WAIT`] of the first, with the HEADs still under way. An
    /// error is shared: it is reported for its destination and may also
    /// stand for the job's other steps.
    async fn head_destinations<'a>(
        &'a self,
        job: &'a Job,
        wait_for_all: bool,
    ) -> (
        Vec<Option<Result<Option<Digest>, Arc<Error>>>>,
        Laggards<'a>,
    ) {
        let mut pending: Laggards<'a> = job
            .destinations
            .iter()
            .enumerate()
            .map(|(i, d)| {
                async move {
                    let head = self
                        .client
                        .head_manifest(&d.repository, &d.tag, Intent::Write)
                        .await;
                    (i, head)
                }
                .boxed()
            })
            .collect();
        let mut answered: Vec<Option<Result<Option<Digest>, Arc<Error>>>> =
            (0..job.destinations.len()).map(|_| None).collect();
        let mut first_at = None;
        while !pending.is_empty() {
            // Who waits: this job, on the HEADs; after the first answer,
            // for at most LAGGARD_WAIT more.
            let next = match first_at {
                Some(at) if !wait_for_all => {
                    match tokio::time::timeout_at(at + LAGGARD_WAIT, pending.next()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    }
                }
                _ => pending.next().await,
            };
            let Some((i, head)) = next else { break };
            answered[i] = Some(head.map_err(Arc::new));
            first_at.get_or_insert_with(tokio::time::Instant::now);
        }
        (answered, pending)
    }

    /// Steps 2–5 for the destinations in `work` (index, digest before);
    /// `root` is the image's root manifest when step 1 already read it.
    async fn write_all(
        &self,
        job: &Job,
        source_digest: &Digest,
        tree: &Tree,
        work: &[(usize, Option<Digest>)],
        finished: &Finished,
    ) -> Vec<Result<(Status, Transfer)>> {
        let shared_failure = |error: Error| error.share(work.len()).map(Err).collect();
        // 2. Read and verify the whole manifest tree (once per job).
        let read = tree.image.get_or_try_init(|| async {
            let root = tree.root.lock().expect("tree lock").take();
            match root {
                Some(root) => job.source.read_tree(&self.client, root).await,
                None => job.source.read_image(&self.client, source_digest).await,
            }
        });
        let image = match read.await {
            Ok(image) => image,
            Err(error) => return shared_failure(error),
        };
        let blobs = image.blobs();
        // The spool keeps this image's blobs while its destinations are
        // written, and lets each go once no job needs it.
        let lease = self.spool.lease(blobs.iter().map(|b| &b.digest));
        if let Source::Registry(repository) = job.source.as_ref() {
            for blob in &blobs {
                self.record(repository, &blob.digest);
            }
        }
        if let Err(error) = self.check_platforms(job, image).await {
            return shared_failure(error);
        }
        // 3. What each destination lacks; fetch what cannot be mounted.
        // A `--deep` check of a tag that already names the image HEADs every
        // blob, so that only what was missing is reported as repaired.
        let mut missing = join_all(work.iter().map(|(i, before)| {
            let repository = &job.destinations[*i].repository;
            let repair = before.as_ref() == Some(source_digest);
            self.missing_blobs(repository, &blobs, !repair)
        }))
        .await;
        let mut needed = BTreeMap::new();
        for ((i, _), lacking) in work.iter().zip(&missing) {
            for blob in lacking.iter().flatten() {
                if self
                    .mount_source(&job.destinations[*i].repository, &blob.digest)
                    .is_none()
                {
                    needed.insert(blob.digest.clone(), blob.clone());
                }
            }
        }
        // Big blobs no job has spooled, and blobs bigger than the spool may
        // hold, are streamed to every destination that lacks them, at once
        // (see `streaming`). Per destination, the blobs streamed to it
        // (counted as uploads).
        let streamed_to = self
            .stream_blobs(job, work, &mut needed, &mut missing)
            .await;
        // Room in the spool for all of it at once, or a wait for it (the
        // spool's budget): a job never holds part of its room while it
        // waits for the rest.
        let bytes: u64 = needed.values().map(|blob| blob.size).sum();
        if self.spool.budget.exceeded_by(bytes) {
            tracing::warn!(
                "{}:{}: its blobs ({bytes} bytes) are more than the spool may hold ({} bytes, `{}`): it waits for an empty spool and runs alone, and may still fill the disk",
                job.image,
                job.reference,
                self.spool.budget.limit().unwrap_or_default(),
                crate::spool::budget::VARIABLE
            );
        }
        let room = self.spool.budget.reserve(bytes).await;
        // Dropped in this order: the files go, then their room.
        let _held = (lease, room);
        let prefetched: Result<Vec<PathBuf>> = stream::iter(needed.values())
            .map(|blob| self.spooled(job, blob))
            .buffer_unordered(self.options.blobs_per_destination.max(1))
            .try_collect()
            .await;
        if let Err(error) = prefetched {
            return shared_failure(error);
        }
        // 4 and 5, every destination at once.
        let streamed_to = &streamed_to;
        let writes = work.iter().zip(missing).map(|((i, before), lacking)| {
            let destination = &job.destinations[*i];
            async move {
                let mut lacking = lacking?;
                // What was streamed here is written; it counts as uploaded.
                let streamed = streamed_to.get(i).map(Vec::as_slice).unwrap_or_default();
                lacking.retain(|blob| !streamed.iter().any(|s| s.digest == blob.digest));
                let with_streamed = |transfer: &Transfer| Transfer {
                    blobs_uploaded: transfer.blobs_uploaded + streamed.len(),
                    bytes_uploaded: transfer.bytes_uploaded
                        + streamed.iter().map(|b| b.size).sum::<u64>(),
                    ..*transfer
                };
                let written = |transfer: &Transfer| {
                    finished.record(
                        *i,
                        Outcome {
                            before: before.clone(),
                            after: Some(image.root.digest.clone()),
                            transfer: with_streamed(transfer),
                            ..Outcome::new(
                                &job.image,
                                &destination.tag,
                                &destination.name,
                                destination.reference(),
                                Status::Copied,
                            )
                        },
                    )
                };
                let transfer = with_streamed(
                    &self
                        .push(job, image, destination, lacking, before.as_ref(), &written)
                        .await?,
                );
                let wrote =
                    transfer.blobs_uploaded + transfer.blobs_mounted + transfer.manifests_pushed
                        > 0;
                Ok((
                    if wrote {
                        Status::Copied
                    } else {
                        Status::Present
                    },
                    transfer,
                ))
            }
        });
        join_all(writes).await
    }

    /// Fails an image that lacks a platform the job requires, before
    /// anything of it is pushed: an index's entries say what it has
    /// (attestations, `unknown/unknown`, left out); a single image's config.
    async fn check_platforms(&self, job: &Job, image: &Image) -> Result<()> {
        if job.require_platforms.is_empty() {
            return Ok(());
        }
        let what = format!("{}:{}", job.source, job.reference);
        let has: Vec<Platform> = match image.root.blobs.first() {
            Some(config) if image.root.children.is_empty() => {
                if config.size > crate::manifest::MAX_MANIFEST_SIZE {
                    return Err(Error::Manifest {
                        what,
                        reason: format!("its config is {} bytes; not read", config.size),
                    });
                }
                let path = self.spooled(job, config).await?;
                let bytes = tokio::fs::read(&path)
                    .await
                    .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
                let platform: Platform =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Manifest {
                        what: what.clone(),
                        reason: format!("its config is not JSON ({e})"),
                    })?;
                vec![platform]
            }
            _ => image
                .root
                .children
                .iter()
                .filter_map(|child| child.platform.clone())
                .filter(|platform| platform.os != "unknown")
                .collect(),
        };
        let missing: Vec<String> = job
            .require_platforms
            .iter()
            .filter(|wanted| !has.iter().any(|platform| platform.satisfies(wanted)))
            .map(Platform::to_string)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let has: Vec<String> = has.iter().map(Platform::to_string).collect();
        Err(Error::Manifest {
            what,
            reason: format!(
                "`require_platforms` wants {}, which the source does not publish (it has {}); nothing was pushed",
                missing.join(", "),
                if has.is_empty() {
                    "none".into()
                } else {
                    has.join(", ")
                }
            ),
        })
    }

    /// Blobs, then child manifests, then the tag; then checks the tag.
    async fn push(
        &self,
        job: &Job,
        image: &Image,
        destination: &Destination,
        lacking: Vec<Descriptor>,
        before: Option<&Digest>,
        tag_written: &(dyn Fn(&Transfer) + Sync),
    ) -> Result<Transfer> {
        let repository = &destination.repository;
        self.client.prepare_push(repository).await?;
        // The tag already names the image (a `--deep` repair); or there was
        // no tag at all, so its children are most likely missing too.
        let tagged = before == Some(&image.root.digest);
        let fresh = before.is_none();
        let mut transfer = Transfer {
            blobs_skipped: image.blobs().len() - lacking.len(),
            ..Transfer::default()
        };
        let written: Vec<(Written, bool, u64)> = stream::iter(lacking.iter())
            .map(|blob| async move {
                self.ensure_blob(job, repository, blob)
                    .await
                    .map(|(w, mine)| (w, mine, blob.size))
            })
            .buffer_unordered(self.options.blobs_per_destination.max(1))
            .try_collect()
            .await?;
        for (written, mine, size) in written {
            match (written, mine) {
                (Written::Uploaded, true) => {
                    transfer.blobs_uploaded += 1;
                    transfer.bytes_uploaded += size;
                }
                (Written::Mounted, true) => transfer.blobs_mounted += 1,
                _ => transfer.blobs_skipped += 1,
            }
        }
        for child in &image.children {
            if self
                .ensure_manifest(job, image, repository, child, !fresh)
                .await?
            {
                transfer.manifests_pushed += 1;
            }
        }
        if tagged {
            // Step 1's HEAD already showed the tag names the source digest,
            // and we did not rewrite it: nothing more to verify.
            return Ok(transfer);
        }
        // The tag last: by now everything it points at is in place.
        self.put_manifest(job, image, repository, &destination.tag, &image.root)
            .await?;
        transfer.manifests_pushed += 1;
        tag_written(&transfer);
        let found = self
            .client
            .head_manifest(repository, &destination.tag, Intent::Write)
            .await?;
        if found.as_ref() != Some(&image.root.digest) {
            return Err(Error::Verification {
                destination: destination.reference(),
                expected: image.root.digest.clone(),
                found: found
                    .map(|d| format!("`{d}`"))
                    .unwrap_or_else(|| "no such tag".into()),
            });
        }
        Ok(transfer)
    }

    /// The blobs of `blobs` that `repository` lacks (HEAD, unless this run
    /// already knows it holds them). With `mount_unasked`, a blob another
    /// repository of the registry holds, or was asked about and lacks,
    /// counts as lacking without a HEAD: it is mounted from there once
    /// written (the mount costs the one request the HEAD would), so a
    /// registry is asked about each blob once however many repositories
    /// and jobs want it at the same moment.
    async fn missing_blobs(
        &self,
        repository: &Repository,
        blobs: &[Descriptor],
        mount_unasked: bool,
    ) -> Result<Vec<Descriptor>> {
        let lacking: Vec<Option<Descriptor>> = stream::iter(blobs)
            .map(|blob| async move {
                if self.holds(repository, &blob.digest) {
                    return Ok::<_, Error>(None);
                }
                if mount_unasked {
                    let lacking = self.mount_source(repository, &blob.digest).is_some()
                        || !self.probe(repository, &blob.digest).await?;
                    return Ok(lacking.then(|| blob.clone()));
                }
                if self
                    .client
                    .blob_exists(repository, &blob.digest, Intent::Write)
                    .await?
                {
                    self.record(repository, &blob.digest);
                    return Ok(None);
                }
                Ok(Some(blob.clone()))
            })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        Ok(lacking.into_iter().flatten().collect())
    }
}

/// A referrer the destination refuses for its media types does not fail
/// the image it refers to: it is `refused`, a warning, with what to do.
fn refused_is_a_warning(mut outcome: Outcome) -> Outcome {
    if let Some(failure) = outcome.failure.as_mut()
        && failure.kind == FailureKind::Refused
    {
        outcome.status = Status::Refused;
        failure.chain.push(
            "the image it refers to is copied; to copy the image without its referrers, set `referrers: false` on it".into(),
        );
    }
    outcome
}
