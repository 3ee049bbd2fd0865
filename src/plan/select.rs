//! Narrowing a plan (`--only`, `--target`), the plan of `copy`, and one
//! writer per destination once selectors have picked their tags.

use std::collections::HashMap;
use std::sync::Arc;

use globset::Glob;

use super::{Destination, Job, Plan, Selection};
use crate::reference::{Reference, Repository};
use crate::source::Source;

impl Plan {
    /// Keeps the jobs and destinations the selection names. A glob that
    /// matches no image, or an unknown target, is an error (a typo should not
    /// silently mirror nothing).
    pub fn select(mut self, selection: &Selection) -> crate::Result<Plan> {
        let invalid = |what: String, reason: String| crate::Error::Invalid { what, reason };
        for target in &selection.targets {
            if !self.target_names.contains(target) {
                return Err(invalid(
                    format!("target `{target}`"),
                    format!("does not exist (defined: {})", self.target_names.join(", ")),
                ));
            }
        }
        let mut matchers = Vec::new();
        for pattern in &selection.only {
            let glob = Glob::new(pattern).map_err(|e| {
                invalid(
                    format!("image pattern `{pattern}`"),
                    format!("is not a glob: {e}"),
                )
            })?;
            matchers.push((pattern, glob.compile_matcher()));
        }
        for (pattern, matcher) in &matchers {
            if !self.images().any(|image| matcher.is_match(image)) {
                return Err(invalid(
                    format!("image pattern `{pattern}`"),
                    "matches no image".into(),
                ));
            }
        }
        let wanted =
            |image: &str| matchers.is_empty() || matchers.iter().any(|(_, m)| m.is_match(image));
        self.jobs.retain(|job| wanted(&job.image));
        self.queries.retain(|query| wanted(&query.image));
        if !selection.targets.is_empty() {
            for job in &mut self.jobs {
                job.destinations
                    .retain(|d| selection.targets.contains(&d.name));
            }
            self.jobs.retain(|job| !job.destinations.is_empty());
            for query in &mut self.queries {
                query
                    .targets
                    .retain(|(name, _)| selection.targets.contains(name));
            }
            self.queries.retain(|query| !query.targets.is_empty());
        }
        Ok(self)
    }
}

impl Plan {
    /// The plan of `regmirror copy SRC DST…`: one image (a reference, or
    /// `oci:DIR[:TAG]`) to each destination, under the tag it names, else
    /// the source's (`latest` for a registry reference with neither tag nor
    /// digest, as Docker reads it). A source named only by its digest has
    /// no tag to give: each destination must name one, rather than the
    /// image landing on `latest` unasked. A destination with a digest is
    /// refused: the digest is the source's.
    pub fn for_copy(source: &str, destinations: &[String], referrers: bool) -> crate::Result<Plan> {
        let (source, reference, pinned, default_tag) = match crate::layout::parse_source(source) {
            Some((dir, tag)) => {
                let layout = crate::layout::Layout::open(&dir)?;
                let digest = layout.resolve(tag.as_deref())?.digest;
                (
                    Source::Layout(layout),
                    digest.to_string(),
                    Some(digest),
                    tag,
                )
            }
            None => {
                let reference: Reference = source.parse()?;
                let default_tag = match (&reference.tag, &reference.digest) {
                    (Some(tag), _) => Some(tag.clone()),
                    (None, Some(_)) => None,
                    (None, None) => Some("latest".to_string()),
                };
                (
                    Source::Registry(reference.repository.clone()),
                    reference.manifest_reference(),
                    reference.digest.clone(),
                    default_tag,
                )
            }
        };
        let mut resolved = Vec::new();
        for destination in destinations {
            let reference: Reference = destination.parse()?;
            if reference.digest.is_some() {
                return Err(crate::Error::Reference {
                    input: destination.clone(),
                    reason: "a destination takes a tag; give a tag, not a digest (the digest is the source's)".into(),
                });
            }
            let Some(tag) = reference.tag.or_else(|| default_tag.clone()) else {
                return Err(crate::Error::Reference {
                    input: destination.clone(),
                    reason: format!(
                        "`{source}` is named by digest only, so there is no tag to copy it to: give one (`{destination}:TAG`)"
                    ),
                });
            };
            resolved.push(Destination {
                name: destination.clone(),
                repository: reference.repository,
                tag,
            });
        }
        Ok(Plan {
            jobs: vec![Job {
                image: source.to_string(),
                source: Arc::new(source),
                reference,
                pinned,
                destinations: resolved,
                referrers,
                immutable: false,
                require_platforms: Vec::new(),
                platforms: Vec::new(),
                subject: None,
            }],
            ..Plan::default()
        })
    }
}

/// Leaves out of later jobs each destination (target repository:tag) an
/// earlier job already writes, with a warning naming both images: two tag
/// selectors (or a selector and a list) that pick the same tag for one
/// target repository would race for it. Returns how many were left out.
pub fn drop_repeated_destinations(jobs: &mut [Job]) -> usize {
    let mut writers: HashMap<(Repository, String), String> = HashMap::new();
    let mut dropped = 0;
    for job in jobs.iter_mut() {
        job.destinations.retain(
            |d| match writers.entry((d.repository.clone(), d.tag.clone())) {
                // The same image twice (a tag list that repeats a tag) is
                // one job, not a collision.
                std::collections::hash_map::Entry::Occupied(first) if *first.get() == job.image => {
                    tracing::debug!(
                        "{}: `{}` listed twice; copied once",
                        job.image,
                        d.reference()
                    );
                    false
                }
                std::collections::hash_map::Entry::Occupied(first) => {
                    tracing::warn!(
                        "{}: `{}` is also written by image `{}`; left to that one",
                        job.image,
                        d.reference(),
                        first.get()
                    );
                    dropped += 1;
                    false
                }
                std::collections::hash_map::Entry::Vacant(free) => {
                    free.insert(job.image.clone());
                    true
                }
            },
        );
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::super::tests::GOOD;
    use super::*;

    #[test]
    fn selection_filters_and_rejects_typos() {
        let plan = load("m.yaml", GOOD).unwrap();
        let only = plan
            .select(&Selection {
                only: vec!["k*".into()],
                targets: vec![],
            })
            .unwrap();
        assert_eq!(only.jobs.len(), 2);
        let plan = load("m.yaml", GOOD).unwrap();
        let hub = plan
            .select(&Selection {
                only: vec![],
                targets: vec!["hub".into()],
            })
            .unwrap();
        assert_eq!(hub.jobs.len(), 1);
        let plan = load("m.yaml", GOOD).unwrap();
        assert!(
            plan.select(&Selection {
                only: vec!["nothing*".into()],
                targets: vec![]
            })
            .is_err()
        );
        let plan = load("m.yaml", GOOD).unwrap();
        assert!(
            plan.select(&Selection {
                only: vec![],
                targets: vec!["ecr".into()]
            })
            .is_err()
        );
    }

    #[test]
    fn a_destination_two_jobs_pick_is_left_to_the_first() {
        let plan = load(
            "m.yaml",
            "version: 1\ntargets: {t: ghcr.io/m}\ndefaults: {targets: [t]}\nimages:\n  - {name: a, source: quay.io/x/app, path: app, tags: [v1, v2]}\n  - {name: b, source: docker.io/y/app, path: app, tags: [v3]}\n",
        )
        .unwrap();
        let mut jobs = plan.jobs;
        // As if b's selector had also picked v2 at run time.
        let mut picked = jobs[2].clone();
        picked.destinations[0].tag = "v2".into();
        jobs.push(picked);
        assert_eq!(drop_repeated_destinations(&mut jobs), 1);
        let kept: Vec<usize> = jobs.iter().map(|j| j.destinations.len()).collect();
        assert_eq!(kept, [1, 1, 1, 0]);
    }
}
