//! Proof that every target serves the source's digest.
//!
//! For each image × tag: the source digest and each target's, side by side,
//! from HEAD requests only (a target is never GET-checked: Docker Hub as a
//! target would count pulls). `--deep` reads the source's manifest tree and
//! HEADs every child manifest and blob on each matching target.
//! `--deep --content` GETs them instead and hashes every byte as it streams:
//! a stored layer with flipped bytes (same size, so a HEAD calls it present)
//! is found. Each target reads each blob once; memory stays bounded (the
//! bytes are hashed, not kept). Its cost is a full download of every image
//! from every target, and on Docker Hub as a target each manifest GET
//! counts as a pull.

use futures::future::join_all;
use futures::{StreamExt, stream};

use crate::digest::{Digest, DigestError, Verifier};
use crate::error::{Error, Result};
use crate::manifest::platforms;
use crate::plan::{Destination, Job};
use crate::reference::Repository;
use crate::registry::{Intent, RegistryClient};
use crate::report::{Failure, FailureKind, Outcome, Status, Summary};
use crate::source::Image;

/// What a target has for one image × tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Same digest as the source (and, when deep, every part present).
    Match,
    /// The tag names another digest.
    Mismatch,
    /// The tag does not exist.
    Missing,
    /// The digest matches but parts are missing (`--deep`).
    Incomplete(Vec<String>),
    /// The digest matches but parts hold other bytes than their digests
    /// (`--deep --content`), each named with what its bytes hash to; and
    /// the parts missing besides.
    Corrupt {
        /// `blob sha256:… is corrupt: …`, one per part.
        corrupt: Vec<String>,
        /// `blob sha256:…`, one per part missing.
        missing: Vec<String>,
    },
    /// We could not tell: the error, as every run classifies it.
    Error(Failure),
    /// `--anonymous`: the registry wants credentials to pull it.
    Private(String),
}

/// One row of the verification.
#[derive(Clone, Debug)]
pub struct Check {
    /// The image entry's name.
    pub image: String,
    /// The tag.
    pub tag: String,
    /// The target's name.
    pub target: String,
    /// `repository:tag` at the target.
    pub destination: String,
    /// The source's digest, when known.
    pub source: Option<Digest>,
    /// The index `platforms` cut from the source's, which the target
    /// should hold instead, when it differs from the source's.
    pub cut: Option<Digest>,
    /// The target's digest, when it has the tag.
    pub found: Option<Digest>,
    /// The verdict.
    pub state: State,
}

/// How far `verify` looks at a target that has the tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// The tag's digest only (a HEAD).
    Tag,
    /// Every child manifest and blob is present (HEADs).
    Parts,
    /// Every manifest and blob is present and hashes to its digest (GETs).
    Content,
}

/// Checks every job, `concurrency` at a time: sources through `client`,
/// targets through `targets` (the same client, or an anonymous one for
/// `verify --anonymous`).
pub async fn verify(
    client: &RegistryClient,
    targets: &RegistryClient,
    jobs: &[Job],
    depth: Depth,
    concurrency: usize,
) -> Vec<Check> {
    let mut done: Vec<(usize, Vec<Check>)> = stream::iter(jobs.iter().enumerate())
        .map(|(i, job)| async move { (i, verify_job(client, targets, job, depth).await) })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().flat_map(|(_, checks)| checks).collect()
}

fn error_state(error: &Error) -> State {
    State::Error(Failure::from(error))
}

async fn verify_job(
    client: &RegistryClient,
    targets: &RegistryClient,
    job: &Job,
    depth: Depth,
) -> Vec<Check> {
    let check =
        |d: &Destination, source: Option<&Digest>, found: Option<Digest>, state: State| Check {
            image: job.image.clone(),
            tag: d.tag.clone(),
            target: d.name.clone(),
            destination: d.reference(),
            source: source.cloned(),
            cut: None,
            found,
            state,
        };
    let source = match &job.pinned {
        Some(digest) => Ok(Some(digest.clone())),
        None => job.source.resolve(client, &job.reference).await,
    };
    let source = match source {
        Ok(Some(digest)) => digest,
        Ok(None) => {
            let error = Error::NotFound {
                what: format!("{}:{}", job.source, job.reference),
            };
            return job
                .destinations
                .iter()
                .map(|d| check(d, None, None, error_state(&error)))
                .collect();
        }
        Err(error) => {
            return job
                .destinations
                .iter()
                .map(|d| check(d, None, None, error_state(&error)))
                .collect();
        }
    };
    // With `platforms`, the target should hold the index cut from the
    // source's; the index read for it is the tree's root when going deep.
    let mut root = None;
    if !job.platforms.is_empty() {
        let index = match job.source.manifest(client, &source, None).await {
            Ok(read) => platforms::select(&read, &job.platforms),
            Err(error) => Err(error),
        };
        match index {
            Ok(index) => root = Some(index),
            Err(error) => {
                return job
                    .destinations
                    .iter()
                    .map(|d| check(d, Some(&source), None, error_state(&error)))
                    .collect();
            }
        }
    }
    let cut = root
        .as_ref()
        .map(|index| index.digest.clone())
        .filter(|digest| *digest != source);
    let wanted = cut.clone().unwrap_or_else(|| source.clone());
    let founds = join_all(
        job.destinations
            .iter()
            .map(|d| targets.head_manifest(&d.repository, &d.tag, Intent::Read)),
    )
    .await;
    let any_match = founds
        .iter()
        .any(|f| matches!(f, Ok(Some(d)) if *d == wanted));
    let image: Option<Result<Image>> = match root {
        _ if depth == Depth::Tag || !any_match => None,
        Some(root) => Some(job.source.read_tree(client, root).await),
        None => Some(job.source.read_image(client, &source).await),
    };

    let mut checks = Vec::new();
    for (destination, found) in job.destinations.iter().zip(founds) {
        let state = match (&found, &image) {
            (Err(error), _) if error.is_auth() && targets.is_anonymous() => {
                State::Private(error.to_string())
            }
            (Err(error), _) => error_state(error),
            (Ok(None), _) => State::Missing,
            (Ok(Some(digest)), _) if *digest != wanted => State::Mismatch,
            (Ok(Some(_)), Some(Err(error))) => error_state(error),
            (Ok(Some(_)), Some(Ok(image))) => {
                let lacking = match depth {
                    Depth::Content => bad_content(targets, &destination.repository, image).await,
                    _ => missing_parts(targets, &destination.repository, image).await,
                };
                match lacking {
                    Ok(Lacking { corrupt, missing }) if !corrupt.is_empty() => {
                        State::Corrupt { corrupt, missing }
                    }
                    Ok(Lacking { missing, .. }) if missing.is_empty() => State::Match,
                    Ok(Lacking { missing, .. }) => State::Incomplete(missing),
                    Err(error) => error_state(&error),
                }
            }
            (Ok(Some(_)), None) => State::Match,
        };
        checks.push(Check {
            cut: cut.clone(),
            ..check(destination, Some(&source), found.ok().flatten(), state)
        });
    }
    checks
}

/// What a deep check found wrong with an image's parts, each named.
#[derive(Default)]
struct Lacking {
    /// Parts the target holds other bytes for (`--content` only).
    corrupt: Vec<String>,
    /// Parts the target does not have.
    missing: Vec<String>,
}

/// Child manifests and blobs of `image` the repository lacks (HEADs only).
async fn missing_parts(
    client: &RegistryClient,
    repository: &Repository,
    image: &Image,
) -> Result<Lacking> {
    let manifests = image.children.iter().map(|m| (true, m.digest.clone()));
    let blobs = image.blobs().into_iter().map(|b| (false, b.digest));
    let results: Vec<Result<Option<String>>> = stream::iter(manifests.chain(blobs))
        .map(|(is_manifest, digest)| async move {
            let present = if is_manifest {
                client
                    .head_manifest(repository, digest.as_str(), Intent::Read)
                    .await?
                    .is_some()
            } else {
                client
                    .blob_exists(repository, &digest, Intent::Read)
                    .await?
            };
            Ok((!present)
                .then(|| format!("{} {digest}", if is_manifest { "manifest" } else { "blob" })))
        })
        .buffered(8)
        .collect()
        .await;
    Ok(Lacking {
        corrupt: Vec::new(),
        missing: results
            .into_iter()
            .filter_map(Result::transpose)
            .collect::<Result<_>>()?,
    })
}

/// Manifests (the root included) and blobs of `image` the repository lacks
/// or holds other bytes for: each read once, hashed as it streams.
async fn bad_content(
    client: &RegistryClient,
    repository: &Repository,
    image: &Image,
) -> Result<Lacking> {
    let manifests = std::iter::once(&image.root)
        .chain(&image.children)
        .map(|m| (true, m.digest.clone(), m.bytes.len() as u64));
    let blobs = image.blobs().into_iter().map(|b| (false, b.digest, b.size));
    let results: Vec<Result<Option<(bool, String)>>> = stream::iter(manifests.chain(blobs))
        .map(|(is_manifest, digest, size)| async move {
            let what = if is_manifest { "manifest" } else { "blob" };
            let verdict = if is_manifest {
                client
                    .get_manifest(repository, digest.as_str(), Some(&digest))
                    .await
                    .map(|_| ())
            } else {
                match client.get_blob(repository, &digest).await? {
                    None => Err(Error::NotFound {
                        what: digest.to_string(),
                    }),
                    Some(chunks) => {
                        let mut verifier = Verifier::new(digest.clone(), Some(size));
                        let mut chunks = std::pin::pin!(chunks);
                        while let Some(chunk) = chunks.next().await {
                            verifier.update(&chunk?);
                            if verifier.overrun() {
                                break;
                            }
                        }
                        verifier
                            .finish(&format!("blob {digest} at {repository}"))
                            .map_err(Error::from)
                    }
                }
            };
            let corrupt =
                |how: String| Ok(Some((true, format!("{what} {digest} is corrupt: {how}"))));
            match verdict {
                Ok(()) => Ok(None),
                Err(Error::NotFound { .. }) => Ok(Some((false, format!("{what} {digest}")))),
                Err(error) => match error.root() {
                    Error::Digest(DigestError::Mismatch { actual, .. }) => {
                        corrupt(format!("the target serves bytes of digest {actual}"))
                    }
                    Error::Digest(DigestError::SizeMismatch {
                        expected, actual, ..
                    }) => corrupt(format!(
                        "the target serves {actual} bytes where {expected} are due"
                    )),
                    _ => Err(error),
                },
            }
        })
        .buffered(4)
        .collect()
        .await;
    let mut lacking = Lacking::default();
    for result in results {
        match result? {
            Some((true, part)) => lacking.corrupt.push(part),
            Some((false, part)) => lacking.missing.push(part),
            None => {}
        }
    }
    Ok(lacking)
}

/// The checks as a run [`Summary`], for the `--json` and `--summary` reports
/// and annotations: a match is `verified`, everything else `failed` with the
/// kind that sets the exit code: 3 auth, 4 mismatch, missing or incomplete,
/// 1 other errors.
pub fn summary(checks: &[Check], duration: std::time::Duration) -> Summary {
    let outcomes = checks
        .iter()
        .map(|c| {
            let failure = |kind, text: String| Some(Failure::text(kind, text));
            let failure = match &c.state {
                State::Match => None,
                State::Missing => failure(
                    FailureKind::Missing,
                    format!("`{}` does not exist", c.destination),
                ),
                State::Mismatch => failure(
                    FailureKind::Verification,
                    format!(
                        "`{}` serves `{}` but the source has `{}`{}",
                        c.destination,
                        c.found.as_ref().map(Digest::as_str).unwrap_or("-"),
                        c.source.as_ref().map(Digest::as_str).unwrap_or("-"),
                        c.cut
                            .as_ref()
                            .map(|cut| format!(", cut by `platforms` to `{cut}`"))
                            .unwrap_or_default()
                    ),
                ),
                State::Incomplete(parts) => failure(
                    FailureKind::Verification,
                    format!("`{}` lacks {}", c.destination, parts.join(", ")),
                ),
                State::Corrupt { corrupt, missing } => failure(
                    FailureKind::Verification,
                    format!(
                        "`{}`: {}{}",
                        c.destination,
                        corrupt.join(", "),
                        if missing.is_empty() {
                            String::new()
                        } else {
                            format!("; it lacks {}", missing.join(", "))
                        }
                    ),
                ),
                State::Private(reason) => failure(
                    FailureKind::Verification,
                    format!(
                        "`{}` cannot be pulled without credentials ({reason}); make it public: on GHCR new packages are private, so change the package's visibility in its settings (or the organization's default for new packages); on Docker Hub, in the repository's settings",
                        c.destination
                    ),
                ),
                State::Error(failure) => Some(failure.clone()),
            };
            let outcome = Outcome {
                source_digest: c.source.clone(),
                before: c.found.clone(),
                after: c.found.clone(),
                ..Outcome::new(
                    &c.image,
                    &c.tag,
                    &c.target,
                    c.destination.clone(),
                    Status::Verified,
                )
            };
            match failure {
                Some(failure) => outcome.failed(failure),
                None => outcome,
            }
        })
        .collect();
    Summary {
        outcomes,
        duration,
        started: None,
        interrupted: None,
        throttled: Vec::new(),
        requests: Vec::new(),
        spool_waited: std::time::Duration::ZERO,
        spooled: 0,
        streamed: 0,
    }
}
