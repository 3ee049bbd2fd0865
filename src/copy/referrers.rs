//! Referrers: what refers to an image (signatures, SBOMs, attestations),
//! copied after the image itself, on the destinations that now have it.
//!
//! Found at the source in every way they are kept:
//! - the OCI referrers API (`GET /v2/<name>/referrers/<digest>`), where the
//!   registry has it; an OCI layout's `index.json` (manifests whose
//!   `subject` is the image) plays that part for `oci:` sources;
//! - else the OCI 1.1 fallback tag `sha256-<hex>`, an index of referrers
//!   (distribution 2.8 and GHCR have no API, so clients keep one);
//! - cosign's tags `sha256-<hex>.sig`, `.att` and `.sbom`, always.
//!
//! Tags are copied as tags, byte for byte; referrers from an API are copied
//! by digest, and a destination without the API gets a fallback index
//! listing them (merged with the one it has). Referrers of referrers follow,
//! each digest once, so a cycle (an index whose subject is its own child)
//! ends. Only the image's own digest is asked about, not its platforms'.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::OnceCell;

use super::Engine;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, OCI_INDEX};
use crate::plan::{Destination, Job};
use crate::reference::Repository;
use crate::registry::{Intent, MAX_TAG_PAGES, RegistryClient};
use crate::report::{Failure, Outcome, Status, Transfer};
use crate::source::Source;

/// cosign's tag suffixes: signatures, attestations, SBOMs.
const COSIGN_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// Referrers of referrers followed at most this deep.
const MAX_DEPTH: usize = 8;

/// Requests a subject's referrer tags cost when guessed: a HEAD of the
/// fallback tag and of each cosign tag.
const GUESSES: usize = 1 + COSIGN_SUFFIXES.len();

/// Source repositories' tag lists, read at most once per run, so that
/// referrer discovery HEADs only the fallback and cosign tags that exist
/// instead of guessing all four for every image.
///
/// Which costs less is decided per repository by counting. Guessing costs
/// [`GUESSES`] HEADs per job that copies referrers from the repository, so
/// the list may cost at most that many pages (one request each): a
/// repository of 25 mirrored tags is listed in one request instead of 100
/// HEADs, and a repository of thousands of tags in pages of 100 is listed
/// only when enough of its tags are mirrored to pay for it; past the
/// budget, discovery guesses (at most twice the cost of guessing alone).
/// A list the run read anyway for a tag selector is free and always used.
#[derive(Default)]
pub(super) struct SourceTags {
    lists: Mutex<HashMap<Repository, Listing>>,
}

/// One repository's tag list: its page budget, and the list once read
/// (`None` inside when it could not be read within the budget).
#[derive(Clone, Default)]
struct Listing {
    pages: usize,
    tags: Arc<OnceCell<Option<Arc<HashSet<String>>>>>,
}

/// The pages a repository's list may cost for `guesses` HEADs it saves,
/// never more than any tag list may have ([`MAX_TAG_PAGES`]): a registry
/// that keeps linking is followed no further for thousands of mirrored
/// tags than for a selector.
fn page_budget(guesses: usize) -> usize {
    guesses.min(MAX_TAG_PAGES)
}

impl SourceTags {
    /// Counts `jobs` into each source repository's page budget.
    pub(super) fn budget(&self, jobs: &[Job]) {
        let mut lists = self.lists.lock().expect("tag lists lock");
        for job in jobs.iter().filter(|job| job.referrers) {
            if let Source::Registry(repository) = job.source.as_ref() {
                lists.entry(repository.clone()).or_default().pages += GUESSES;
            }
        }
    }

    /// Tag lists the run has already read (for selectors).
    pub(super) fn known(&self, listed: HashMap<Repository, Vec<String>>) {
        let mut lists = self.lists.lock().expect("tag lists lock");
        for (repository, tags) in listed {
            let tags = Some(Arc::new(tags.into_iter().collect()));
            lists.entry(repository).or_default().tags = Arc::new(OnceCell::new_with(Some(tags)));
        }
    }

    /// `repository`'s tags, read now unless known; `None` when guessing
    /// costs less or the list could not be read.
    async fn get(
        &self,
        client: &RegistryClient,
        repository: &Repository,
    ) -> Option<Arc<HashSet<String>>> {
        let listing = self
            .lists
            .lock()
            .expect("tag lists lock")
            .get(repository)
            .cloned()
            .unwrap_or_default();
        if listing.pages == 0 && !listing.tags.initialized() {
            return None;
        }
        let pages = page_budget(listing.pages);
        let read = listing.tags.get_or_init(|| async {
            match client.list_tags_within(repository, pages).await {
                Ok(Some(tags)) => Some(Arc::new(tags.into_iter().collect())),
                Ok(None) => {
                    tracing::debug!(
                        "{repository}: more than {pages} pages of tags; guessing referrer tags"
                    );
                    None
                }
                Err(error) => {
                    tracing::debug!(
                        "{repository}: tags not listed ({error}); guessing referrer tags"
                    );
                    None
                }
            }
        });
        read.await.clone()
    }
}

/// The OCI 1.1 referrers tag schema: `sha256:abc…` → `sha256-abc…`.
pub(crate) fn fallback_tag(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm(), digest.hex())
}

/// One thing found to refer to a subject.
#[derive(Debug)]
enum Found {
    /// A tag copied as it is: a fallback index (`fallback`) or a cosign tag.
    Tag {
        tag: String,
        digest: Digest,
        fallback: bool,
    },
    /// A referrer copied by digest, with its entry for a referrers list.
    Untagged { digest: Digest, entry: Value },
    /// A referrer listed in a fallback index: copied with the index; only
    /// its own referrers are still to be looked for.
    Listed { digest: Digest },
}

impl Engine {
    /// Copies the referrers of `job`'s image to the destinations that have
    /// the image now, appending an outcome per referrer × destination.
    pub(super) async fn copy_referrers(&self, job: &Job, outcomes: &mut Vec<Outcome>) {
        // The source's digest; for an immutable tag the source was not
        // asked, and the digest the destinations hold stands for it.
        let subject = outcomes.iter().find_map(|o| o.source_digest.clone());
        let held = outcomes
            .iter()
            .find(|o| matches!(o.status, Status::Present))
            .and_then(|o| o.after.clone());
        let Some(subject) = subject.or(held) else {
            return;
        };
        let ready: Vec<Destination> = job
            .destinations
            .iter()
            .zip(outcomes.iter())
            .filter(|(_, o)| matches!(o.status, Status::Copied | Status::Present))
            .map(|(d, _)| d.clone())
            .collect();
        if ready.is_empty() {
            return;
        }
        // (destination name, referrer) for every referrer a destination now holds.
        let mut held: HashSet<(String, Digest)> = HashSet::new();
        let mut visited = HashSet::from([subject.clone()]);
        let mut pending = vec![(subject, 0)];
        while let Some((subject, depth)) = pending.pop() {
            let found = match self.discover(&job.source, &subject).await {
                Ok(found) => found,
                Err(error) => {
                    let tag = fallback_tag(&subject);
                    for destination in &ready {
                        outcomes.push(outcome(job, destination, &tag, None, Err(&error)));
                    }
                    continue;
                }
            };
            let source_keeps_list = found
                .iter()
                .any(|f| matches!(f, Found::Tag { fallback: true, .. }));
            let mut untagged = Vec::new();
            for item in &found {
                // A tag is copied as that tag; an untagged referrer by digest.
                let (reference, digest) = match item {
                    Found::Tag {
                        tag,
                        digest,
                        fallback,
                    } => {
                        if !*fallback && visited.insert(digest.clone()) && depth < MAX_DEPTH {
                            pending.push((digest.clone(), depth + 1));
                        }
                        (tag.clone(), digest)
                    }
                    Found::Listed { digest } => {
                        if visited.insert(digest.clone()) && depth < MAX_DEPTH {
                            pending.push((digest.clone(), depth + 1));
                        }
                        continue;
                    }
                    Found::Untagged { digest, entry } => {
                        if !visited.insert(digest.clone()) {
                            continue;
                        }
                        if depth < MAX_DEPTH {
                            pending.push((digest.clone(), depth + 1));
                        }
                        untagged.push((digest.clone(), entry.clone()));
                        (digest.to_string(), digest)
                    }
                };
                let sub = Job {
                    image: job.image.clone(),
                    source: job.source.clone(),
                    destinations: ready
                        .iter()
                        .map(|d| Destination {
                            tag: reference.clone(),
                            ..d.clone()
                        })
                        .collect(),
                    reference,
                    pinned: Some(digest.clone()),
                    referrers: false,
                    immutable: false,
                    require_platforms: Vec::new(),
                    platforms: Vec::new(),
                    subject: Some(subject.clone()),
                };
                for copied in self.copy_job(&sub, &super::Finished::new(&sub)).await {
                    if matches!(copied.status, Status::Copied | Status::Present) {
                        held.insert((copied.target.clone(), digest.clone()));
                    }
                    outcomes.push(copied);
                }
            }
            if untagged.is_empty() || source_keeps_list {
                continue;
            }
            for destination in &ready {
                // A fallback index lists only what the destination holds: an
                // index naming a manifest the registry refused would be
                // refused too (or point nowhere).
                let entries: Vec<Value> = untagged
                    .iter()
                    .filter(|(digest, _)| {
                        held.contains(&(destination.name.clone(), digest.clone()))
                    })
                    .map(|(_, entry)| entry.clone())
                    .collect();
                if entries.is_empty() {
                    continue;
                }
                let result = self.update_fallback(destination, &subject, &entries).await;
                if let Some(result) = result.transpose() {
                    let tag = fallback_tag(&subject);
                    outcomes.push(outcome(job, destination, &tag, None, result.as_ref()));
                }
            }
        }
    }

    /// What refers to `subject` at the source.
    async fn discover(&self, source: &Source, subject: &Digest) -> Result<Vec<Found>> {
        let fallback = fallback_tag(subject);
        let mut found = Vec::new();
        let mut tags = vec![fallback.clone()];
        tags.extend(COSIGN_SUFFIXES.iter().map(|s| format!("{fallback}.{s}")));
        match source {
            Source::Registry(repository) => {
                // Only the tags the source's list has, when it was read.
                if let Some(listed) = self.source_tags.get(&self.client, repository).await {
                    tags.retain(|tag| listed.contains(tag));
                }
                if let Some(entries) = self.client.referrers(repository, subject).await? {
                    for entry in entries {
                        let digest = entry_digest(&entry)?;
                        found.push(Found::Untagged { digest, entry });
                    }
                    // With the API, nobody keeps a fallback list.
                    tags.retain(|tag| *tag != fallback);
                }
            }
            Source::Layout(layout) => {
                for (digest, entry) in layout.referrers(subject).await? {
                    found.push(Found::Untagged { digest, entry });
                }
            }
        }
        // Tags first, then what a fallback index lists (copied with it),
        // then what only the API or the layout knows.
        let (mut tagged, mut listed) = (Vec::new(), Vec::new());
        for tag in tags {
            let digest = match source {
                Source::Layout(layout) => {
                    if !layout.tags().contains(&tag.as_str()) {
                        continue;
                    }
                    layout.resolve(Some(&tag))?.digest
                }
                Source::Registry(repository) => {
                    match self
                        .client
                        .head_manifest(repository, &tag, Intent::Read)
                        .await?
                    {
                        Some(digest) => digest,
                        None => continue,
                    }
                }
            };
            let is_fallback = tag == fallback;
            if is_fallback {
                let index = source.manifest(&self.client, &digest, None).await?;
                listed.extend(index.children.iter().map(|child| Found::Listed {
                    digest: child.digest.clone(),
                }));
            }
            tagged.push(Found::Tag {
                tag,
                digest,
                fallback: is_fallback,
            });
        }
        tagged.append(&mut listed);
        tagged.append(&mut found);
        Ok(tagged)
    }

    /// Makes `destination`'s fallback tag for `subject` list `entries`, when
    /// the destination has no referrers API. `None` when nothing was to do.
    async fn update_fallback(
        &self,
        destination: &Destination,
        subject: &Digest,
        entries: &[Value],
    ) -> Result<Option<Transfer>> {
        let repository = &destination.repository;
        if self.client.referrers(repository, subject).await?.is_some() {
            // The registry lists referrers by their `subject` itself.
            return Ok(None);
        }
        let tag = fallback_tag(subject);
        // HEAD first (unmetered), so a target without an index is never
        // GET-checked; only an index that exists is read, to merge with it.
        let mut listed: Vec<Value> = match self
            .client
            .head_manifest(repository, &tag, Intent::Write)
            .await?
        {
            Some(_) => {
                let current = self.client.get_manifest(repository, &tag, None).await?;
                let body: Value = serde_json::from_slice(&current.bytes).unwrap_or_default();
                body["manifests"].as_array().cloned().unwrap_or_default()
            }
            None => Vec::new(),
        };
        let known: HashSet<String> = listed
            .iter()
            .filter_map(|e| e["digest"].as_str().map(str::to_string))
            .collect();
        let before = listed.len();
        listed.extend(
            entries
                .iter()
                .filter(|e| e["digest"].as_str().is_some_and(|d| !known.contains(d)))
                .cloned(),
        );
        if listed.len() == before {
            return Ok(None);
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": listed,
        });
        let bytes = bytes::Bytes::from(index.to_string());
        let digest = Digest::sha256(&bytes);
        let manifest = Manifest::parse(bytes, &digest, Some(OCI_INDEX))?;
        self.client
            .put_manifest(repository, &tag, &manifest)
            .await?;
        Ok(Some(Transfer {
            manifests_pushed: 1,
            ..Transfer::default()
        }))
    }
}

fn entry_digest(entry: &Value) -> Result<Digest> {
    entry["digest"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|_| Error::Manifest {
            what: "referrers list".into(),
            reason: format!("an entry without a valid digest: {entry}"),
        })
}

/// The outcome of a fallback-index write or of a failed discovery.
fn outcome(
    job: &Job,
    destination: &Destination,
    tag: &str,
    digest: Option<Digest>,
    result: std::result::Result<&Transfer, &Error>,
) -> Outcome {
    let base = Outcome::new(
        &job.image,
        tag,
        &destination.name,
        format!("{}:{tag}", destination.repository),
        Status::Copied,
    );
    match result {
        Ok(transfer) => Outcome {
            source_digest: digest.clone(),
            after: digest,
            transfer: *transfer,
            ..base
        },
        Err(error) => {
            let failure = Failure::from(error);
            tracing::error!(
                "{}: referrers → {}:{tag}: {}",
                job.image,
                destination.repository,
                failure.message()
            );
            Outcome {
                source_digest: digest,
                ..base
            }
            .failed(failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_budget_is_the_guesses_it_saves_up_to_the_page_cap() {
        assert_eq!(page_budget(GUESSES), 4);
        assert_eq!(page_budget(GUESSES * 25), 100);
        // 2,500 tags of one repository would allow 10,000 pages.
        assert_eq!(page_budget(GUESSES * 2_500), MAX_TAG_PAGES);
    }

    #[test]
    fn fallback_tags_follow_the_tag_schema() {
        let digest: Digest =
            "sha256:dfae8f425735a5e3a72e40d6609e03079995511d48157c74d54801ff4430491e"
                .parse()
                .unwrap();
        assert_eq!(
            fallback_tag(&digest),
            "sha256-dfae8f425735a5e3a72e40d6609e03079995511d48157c74d54801ff4430491e"
        );
    }
}
