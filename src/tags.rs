//! Tag selectors: which of a source's tags to mirror when `tags:` is a
//! selector rather than a list.
//!
//! A [`TagFilter`] is compiled once from the file (so a bad pattern is a
//! config problem with its line) and applied to the source's tag list at
//! run time, in this order: `regex`, then `exclude`, then `semver`, then
//! `latest: N`. Patterns are anchored at both ends, as in regsync and skopeo
//! sync: `v1\.30\..*` must match the whole tag.
//!
//! Semver follows what users of skopeo's `images-by-semver` expect: a `v`
//! prefix is tolerated, `1.30` and `17` count as `1.30.0` and `17.0.0`, a
//! range may be written npm-style (`>=16 <18`, `>= 2.6.1`, `^1.2 || ^2`),
//! and pre-releases (`1.0.0-rc.1`) are left out unless the range names one.

use futures::{StreamExt, stream};
use regex::Regex;
use semver::{Version, VersionReq};

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use crate::github::Releases;
use crate::plan::{Job, TagQuery};
use crate::reference::Repository;
use crate::registry::RegistryClient;
use crate::report::{Failure, FailureKind, Outcome, Status, Transfer};

/// Tag lists read at once.
const LISTS_IN_FLIGHT: usize = 4;

/// A compiled selector.
#[derive(Clone, Debug)]
pub struct TagFilter {
    /// Tags must match this (anchored).
    pub regex: Option<Regex>,
    /// Tags matching this (anchored) are left out.
    pub exclude: Option<Regex>,
    /// Tags must parse as a version within one of these ranges.
    pub semver: Vec<VersionReq>,
    /// Keep only the newest N, in version order.
    pub latest: Option<usize>,
    /// Candidates come from a GitHub project's releases, not the tag list.
    pub github: Option<crate::github::Releases>,
    /// The selector as written, for messages and `plan`.
    pub text: String,
}

/// `^(?:pattern)$`, compiled; the error is the regex crate's, one line.
pub fn anchored(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        let text = e.to_string();
        text.lines()
            .last()
            .unwrap_or("invalid regular expression")
            .trim()
            .to_string()
    })
}

/// An npm/Masterminds-style range as `semver` requirements, one per `||`
/// alternative: spaces between comparators become commas, spaces after an
/// operator and `v` prefixes go.
pub fn semver_range(range: &str) -> Result<Vec<VersionReq>, String> {
    let mut alternatives = Vec::new();
    for alternative in range.split("||") {
        let words: Vec<&str> = alternative.split_whitespace().collect();
        let requirement = match words.as_slice() {
            // A hyphen range, `1.2 - 1.4`: both ends included.
            [low, "-", high] => {
                let bare = |v: &str| v.strip_prefix('v').unwrap_or(v).to_string();
                format!(">={}, <={}", bare(low), bare(high))
            }
            _ => comparators(alternative)
                .ok_or_else(|| format!("`{range}` is not a version range"))?,
        };
        alternatives.push(
            VersionReq::parse(&requirement)
                .map_err(|e| format!("`{range}` is not a version range: {e}"))?,
        );
    }
    Ok(alternatives)
}

/// `>= 1.2 <2` as `>=1.2, <2`: operators joined to their versions, `v`
/// prefixes dropped, comparators comma-separated. `None` if an operator
/// has no version or there is nothing at all.
fn comparators(alternative: &str) -> Option<String> {
    let mut comparators: Vec<String> = Vec::new();
    let mut pending_operator = String::new();
    for token in alternative.split([' ', ',']).filter(|t| !t.is_empty()) {
        if token.chars().all(|c| "<>=~^".contains(c)) {
            pending_operator.push_str(token);
            continue;
        }
        let (operator, version) =
            token.split_at(token.find(|c: char| !"<>=~^".contains(c)).unwrap_or(0));
        let version = version.strip_prefix('v').unwrap_or(version);
        comparators.push(format!("{pending_operator}{operator}{version}"));
        pending_operator.clear();
    }
    (pending_operator.is_empty() && !comparators.is_empty()).then(|| comparators.join(", "))
}

/// A tag as a version: `v` prefix tolerated, missing minor and patch are 0.
pub fn version_of(tag: &str) -> Option<Version> {
    let text = tag.strip_prefix('v').unwrap_or(tag);
    let (core, rest) = match text.find(['-', '+']) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let parts = core.split('.').count();
    if parts == 0
        || parts > 3
        || !core
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let padded = match parts {
        1 => format!("{core}.0.0{rest}"),
        2 => format!("{core}.0{rest}"),
        _ => format!("{core}{rest}"),
    };
    Version::parse(&padded).ok()
}

impl TagFilter {
    /// The tags of `available` this selector picks, in a stable order:
    /// newest version first when `semver` or `latest` is set, else as listed.
    pub fn select(&self, available: &[String]) -> Vec<String> {
        self.select_versioned(available, &HashMap::new())
    }

    /// As [`TagFilter::select`], reading each tag's version from `versions`
    /// where it has one: a GitHub release `v1.31.1+k3s1` is version 1.31.1
    /// (build metadata), while its image tag `v1.31.1-k3s1` would read as a
    /// pre-release.
    pub fn select_versioned(
        &self,
        available: &[String],
        versions: &HashMap<String, String>,
    ) -> Vec<String> {
        let mut picked: Vec<(Option<Version>, &String)> = available
            .iter()
            .filter(|t| self.regex.as_ref().is_none_or(|r| r.is_match(t)))
            .filter(|t| !self.exclude.as_ref().is_some_and(|r| r.is_match(t)))
            .map(|t| (version_of(versions.get(t).unwrap_or(t)), t))
            .filter(|(version, _)| {
                self.semver.is_empty()
                    || version
                        .as_ref()
                        .is_some_and(|v| self.semver.iter().any(|r| r.matches(v)))
            })
            .collect();
        if self.latest.is_some() || !self.semver.is_empty() {
            // Tags that are not versions cannot be "latest".
            picked.retain(|(version, _)| version.is_some());
            picked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        }
        if let Some(n) = self.latest {
            picked.truncate(n);
        }
        picked.into_iter().map(|(_, t)| t.clone()).collect()
    }
}

/// Reads each query's source tag list and turns the selected tags into
/// jobs, in query order. A repository several queries select from is listed
/// once. A source whose tags cannot be listed fails that image on each of
/// its targets (reported, not fatal to the others).
pub async fn expand(client: &RegistryClient, queries: &[TagQuery]) -> (Vec<Job>, Vec<Outcome>) {
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
                tracing::info!(
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
                let kind = if error.is_auth() {
                    FailureKind::Auth
                } else {
                    FailureKind::Other
                };
                tracing::error!("{}: list tags: {error}", query.image);
                for (target, repository) in &query.targets {
                    failures.push(Outcome {
                        image: query.image.clone(),
                        tag: query.filter.text.clone(),
                        target: target.clone(),
                        destination: repository.to_string(),
                        source_digest: None,
                        before: None,
                        after: None,
                        status: Status::Failed,
                        failure: Some(Failure::of(kind, error)),
                        transfer: Transfer::default(),
                        duration: std::time::Duration::ZERO,
                    });
                }
            }
        }
    }
    (jobs, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(
        regex: Option<&str>,
        exclude: Option<&str>,
        semver: Option<&str>,
        latest: Option<usize>,
    ) -> TagFilter {
        TagFilter {
            regex: regex.map(|r| anchored(r).unwrap()),
            exclude: exclude.map(|r| anchored(r).unwrap()),
            semver: semver.map(|s| semver_range(s).unwrap()).unwrap_or_default(),
            latest,
            github: None,
            text: String::new(),
        }
    }

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn ranges_as_people_write_them() {
        let cases = [
            (">=16 <18", "16.4", true),
            (">=16 <18", "18.0", false),
            (">= 2.6.1", "v2.7.0", true),
            (">= v1.17.2", "v1.17.1", false),
            ("= 3.7", "3.7", true),
            ("^1.2 || ^3", "3.1.0", true),
            ("^1.2 || ^3", "2.0.0", false),
            ("v3.1.1 - v3.4.0", "v3.4.0", true),
            ("v3.1.1 - v3.4.0", "v3.4.1", false),
            (">=1.0.0", "1.1.0-rc.1", false),
        ];
        for (range, tag, expected) in cases {
            let requirements = semver_range(range).unwrap();
            let version = version_of(tag).unwrap();
            assert_eq!(
                requirements.iter().any(|r| r.matches(&version)),
                expected,
                "{range} vs {tag}"
            );
        }
        assert!(semver_range(">=").is_err());
        assert!(semver_range("banana").is_err());
        assert_eq!(version_of("latest"), None);
        assert_eq!(version_of("1.2.3.4"), None);
        assert_eq!(
            version_of("17-alpine").unwrap().to_string(),
            "17.0.0-alpine"
        );
    }

    #[test]
    fn regex_exclude_semver_latest_in_order() {
        let available = tags(&[
            "latest",
            "v1.29.9-k3s1",
            "v1.30.4-k3s1",
            "v1.30.5-k3s1",
            "v1.31.1-k3s1",
            "v1.31.1-rc1-k3s1",
            "1.0",
            "2.0",
            "2.1",
            "3.0-alpine",
        ]);
        let k3s = filter(Some(r"v1\.(30|31)\..*-k3s\d+"), Some(".*-rc.*"), None, None);
        assert_eq!(
            k3s.select(&available),
            tags(&["v1.30.4-k3s1", "v1.30.5-k3s1", "v1.31.1-k3s1"])
        );
        // Anchored: a pattern matching a middle part selects nothing.
        assert!(
            filter(Some("30"), None, None, None)
                .select(&available)
                .is_empty()
        );
        let newest = filter(None, None, Some(">=1"), Some(2));
        assert_eq!(newest.select(&available), tags(&["2.1", "2.0"]));
        let latest = filter(Some(r"v1\..*"), Some(".*-rc.*"), None, Some(1));
        assert_eq!(latest.select(&available), tags(&["v1.31.1-k3s1"]));
    }
}
