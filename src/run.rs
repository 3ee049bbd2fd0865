//! The runs the commands make, from a [`Plan`] to a [`Summary`]: the
//! library's facade. `sync` reads the source tag lists that selectors need
//! (and a project's GitHub releases), copies, follows referrers and merges
//! the failures of listing into the summary; `verify` does the same
//! expansion, then compares. Both commands build their work here, so they
//! cannot differ in how.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, stream};

use crate::copy::{Engine, Options, Reporter};
use crate::error::Result;
use crate::plan::tags::Releases;
use crate::plan::{self, Job, Plan, TagQuery};
use crate::reference::Repository;
use crate::registry::RegistryClient;
use crate::report::{Failure, Outcome, Status, Summary};
use crate::verify::{self, Check, Depth};

/// Tag lists read at once.
const LISTS_IN_FLIGHT: usize = 4;

/// Jobs verified at once.
const VERIFY_IN_FLIGHT: usize = 8;

/// Brings every job of `plan` up to date (see [`crate::copy`]); sources
/// whose tags could not be listed are failed outcomes in the summary.
pub async fn sync(plan: Plan, options: Options, reporter: Arc<dyn Reporter>) -> Result<Summary> {
    let client = Arc::new(RegistryClient::new(plan.registries.clone())?);
    let (jobs, failures, listed) = listed_jobs(&client, plan).await;
    let engine = Engine::new(client, options, reporter)?;
    engine.know_tags(listed);
    let mut summary = engine.run(&jobs).await;
    summary.outcomes.splice(0..0, failures);
    for (registry, settled) in &summary.throttled {
        let paces: Vec<String> = settled
            .pace
            .iter()
            .map(|(kind, rate)| format!("{} {rate:.1}/s", kind.as_str().replace('_', " ")))
            .collect();
        tracing::warn!(
            "{registry}: throttled {} times; regmirror slowed down to {} (to spare the throttling next time, set `registries.{registry}.write_rate_limit` or `rate_limit` near these)",
            settled.throttled,
            if paces.is_empty() {
                "the back-off of each request".to_string()
            } else {
                paces.join(", ")
            }
        );
    }
    Ok(summary)
}

/// Compares every job of `plan` at its source and targets, to `depth`;
/// targets read without credentials when `anonymous`. The checks (for the
/// side-by-side table) and the run's summary.
pub async fn verify(plan: Plan, depth: Depth, anonymous: bool) -> Result<(Vec<Check>, Summary)> {
    let started = std::time::Instant::now();
    let started_at = std::time::SystemTime::now();
    let client = RegistryClient::new(plan.registries.clone())?;
    let anonymous_client = if anonymous {
        Some(RegistryClient::anonymous(plan.registries.clone())?)
    } else {
        None
    };
    let targets = anonymous_client.as_ref().unwrap_or(&client);
    let (jobs, failures) = jobs(&client, plan).await;
    let checks = verify::verify(&client, targets, &jobs, depth, VERIFY_IN_FLIGHT).await;
    let mut summary = verify::summary(&checks, started.elapsed());
    summary.outcomes.splice(0..0, failures);
    summary.started = Some(started_at);
    summary.throttled = client.paces();
    summary.requests = client.requests();
    Ok((checks, summary))
}

/// The plan's jobs, plus those its tag selectors pick from the source tag
/// lists (read now), each destination written by one job only; and a
/// failed (or deferred) outcome for each source that could not be listed.
pub async fn jobs(client: &RegistryClient, plan: Plan) -> (Vec<Job>, Vec<Outcome>) {
    let (jobs, failures, _) = listed_jobs(client, plan).await;
    (jobs, failures)
}

/// [`jobs`], and the source tag lists read for them.
async fn listed_jobs(client: &RegistryClient, plan: Plan) -> (Vec<Job>, Vec<Outcome>, Listed) {
    let (mut selected, failures, listed) = expand(client, &plan.queries).await;
    let mut jobs = plan.jobs;
    jobs.append(&mut selected);
    plan::drop_repeated_destinations(&mut jobs);
    jobs.retain(|job| !job.destinations.is_empty());
    (jobs, failures, listed)
}

/// Source tag lists read in full, per repository.
type Listed = HashMap<Repository, Vec<String>>;

/// Reads each query's source tag list and turns the selected tags into
/// jobs, in query order. A repository several queries select from is listed
/// once. A source whose tags cannot be listed fails that image on each of
/// its targets (reported, not fatal to the others).
async fn expand(client: &RegistryClient, queries: &[TagQuery]) -> (Vec<Job>, Vec<Outcome>, Listed) {
    let mut repositories: Vec<&Repository> = queries.iter().map(|q| &q.repository).collect();
    repositories.sort_by_key(|r| r.to_string());
    repositories.dedup();
    let lists: HashMap<&Repository, crate::Result<Vec<String>>> = stream::iter(repositories)
        .map(|repository| async move { (repository, client.list_tags(repository).await) })
        .buffer_unordered(LISTS_IN_FLIGHT)
        .collect()
        .await;
    let mut projects: Vec<&Releases> = queries
        .iter()
        .filter_map(|q| q.filter.github.as_ref())
        .collect();
    projects.sort_by_key(|p| (p.owner.clone(), p.repo.clone()));
    projects.dedup();
    let releases: HashMap<&Releases, crate::Result<Vec<(String, String)>>> = stream::iter(projects)
        .map(|project| async move { (project, project.image_tags().await) })
        .buffer_unordered(LISTS_IN_FLIGHT)
        .collect()
        .await;
    let mut jobs = Vec::new();
    let mut failures = Vec::new();
    for query in queries {
        let mut versions = HashMap::new();
        let candidates: Result<Cow<[String]>, &crate::Error> =
            match (&lists[&query.repository], &query.filter.github) {
                (Err(error), _) => Err(error),
                (Ok(available), None) => Ok(Cow::Borrowed(available)),
                (Ok(available), Some(project)) => match &releases[project] {
                    // Releases whose image the source does not have (yet)
                    // are left out: a release is often out before its image.
                    Ok(released) => {
                        let have: HashSet<&String> = available.iter().collect();
                        Ok(Cow::Owned(
                            released
                                .iter()
                                .filter(|(_, tag)| have.contains(tag))
                                .map(|(release, tag)| {
                                    versions.insert(tag.clone(), release.clone());
                                    tag.clone()
                                })
                                .collect(),
                        ))
                    }
                    Err(error) => Err(error),
                },
            };
        match candidates {
            Ok(available) => {
                let available: &[String] = &available;
                let tags = query.filter.select_versioned(available, &versions);
                tracing::debug!(
                    "{}: {} of {} tags selected by {}",
                    query.image,
                    tags.len(),
                    available.len(),
                    query.filter.text
                );
                if tags.is_empty() {
                    tracing::warn!(
                        "{}: {} selects none of the {} tags of {}",
                        query.image,
                        query.filter.text,
                        available.len(),
                        query.repository
                    );
                }
                jobs.extend(query.jobs(&tags));
            }
            Err(error) => {
                tracing::error!("{}: list tags: {error}", query.image);
                for (target, repository) in &query.targets {
                    let outcome = Outcome::new(
                        &query.image,
                        &query.filter.text,
                        target,
                        repository.to_string(),
                        Status::Failed,
                    );
                    failures.push(outcome.failed(Failure::from(error)));
                }
            }
        }
    }
    let listed = lists
        .into_iter()
        .filter_map(|(repository, list)| Some((repository.clone(), list.ok()?)))
        .collect();
    (jobs, failures, listed)
}
