//! From `mirror.yaml` to the work: [`resolve`] turns a parsed file into a
//! [`Plan`] that cannot be invalid, or into every problem with its place.
//!
//! A plan is a list of [`Job`]s, one per image × tag, each naming the source
//! to read and the destinations (target repository + tag) to bring up to date.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::Problems;
use crate::digest::Digest;
use crate::manifest::Platform;
use crate::reference::Repository;
use crate::registry::options::RegistryOptions;

mod registries;
mod resolve;
mod select;
pub mod tags;

use crate::source::Source;
pub use resolve::resolve;
pub use select::drop_repeated_destinations;
use tags::TagFilter;

/// One place to write an image: a named target's repository and the tag to set.
#[derive(Clone, Debug)]
pub struct Destination {
    /// The target's name in `mirror.yaml` (or the reference, for `copy`).
    pub name: String,
    /// The repository on the target registry.
    pub repository: Repository,
    /// The tag to point at the image.
    pub tag: String,
}

impl Destination {
    /// `repository:tag`, or `repository@digest` for a referrer pushed by digest.
    pub fn reference(&self) -> String {
        let separator = if self.tag.contains(':') { '@' } else { ':' };
        format!("{}{separator}{}", self.repository, self.tag)
    }
}

/// One image × tag: where to read it and where to write it.
#[derive(Clone, Debug)]
pub struct Job {
    /// The image entry's name (the handle for `--only`).
    pub image: String,
    /// Where the bytes come from.
    pub source: Arc<Source>,
    /// What to resolve at the source: a tag or a digest.
    pub reference: String,
    /// The digest, when the source is pinned: no source request is needed to know it.
    pub pinned: Option<Digest>,
    /// Where to write.
    pub destinations: Vec<Destination>,
    /// Also copy what refers to the image (signatures, SBOMs, attestations).
    pub referrers: bool,
    /// The tag never changes once published: when every destination has
    /// it, the source is not asked (`immutable` in `mirror.yaml`).
    pub immutable: bool,
    /// Platforms the image must publish (`require_platforms`).
    pub require_platforms: Vec<Platform>,
    /// Platforms to keep of an index (`platforms`); empty keeps all.
    pub platforms: Vec<Platform>,
    /// For a referrer (a signature, an SBOM): the image it refers to. A
    /// target refusing a referrer for its media types does not fail it.
    pub subject: Option<Digest>,
}

/// Which tags of an image are immutable (`immutable` in `mirror.yaml`).
#[derive(Clone, Debug, Default)]
pub enum Immutable {
    /// None: every tag is looked up at the source on every run.
    #[default]
    None,
    /// Every tag.
    All,
    /// The tags this (anchored) regular expression matches.
    Matching(regex::Regex),
}

impl Immutable {
    /// Whether `tag` is immutable.
    pub fn covers(&self, tag: &str) -> bool {
        match self {
            Immutable::None => false,
            Immutable::All => true,
            Immutable::Matching(pattern) => pattern.is_match(tag),
        }
    }
}

/// An image whose tags come from a selector: its jobs are known only once
/// the source's tag list is read ([`crate::run::jobs`]).
#[derive(Clone, Debug)]
pub struct TagQuery {
    /// The image entry's name.
    pub image: String,
    /// Where the tags and bytes come from.
    pub source: Arc<Source>,
    /// The repository whose tags are listed.
    pub repository: Repository,
    /// Which tags to take.
    pub filter: TagFilter,
    /// Target name and repository for each destination.
    pub targets: Vec<(String, Repository)>,
    /// Also copy what refers to each image.
    pub referrers: bool,
    /// Which selected tags are immutable.
    pub immutable: Immutable,
    /// Platforms each image must publish.
    pub require_platforms: Vec<Platform>,
    /// Platforms to keep of each index; empty keeps all.
    pub platforms: Vec<Platform>,
}

impl TagQuery {
    /// One job per selected tag, the same tag on every target.
    pub fn jobs(&self, tags: &[String]) -> Vec<Job> {
        tags.iter()
            .map(|tag| Job {
                image: self.image.clone(),
                source: self.source.clone(),
                reference: tag.clone(),
                pinned: None,
                destinations: self
                    .targets
                    .iter()
                    .map(|(name, repository)| Destination {
                        name: name.clone(),
                        repository: repository.clone(),
                        tag: tag.clone(),
                    })
                    .collect(),
                referrers: self.referrers,
                immutable: self.immutable.covers(tag),
                require_platforms: self.require_platforms.clone(),
                platforms: self.platforms.clone(),
                subject: None,
            })
            .collect()
    }
}

/// The resolved work of a run.
#[derive(Debug, Default)]
pub struct Plan {
    /// Jobs in file order.
    pub jobs: Vec<Job>,
    /// Images with tag selectors, in file order; they become jobs at run time.
    pub queries: Vec<TagQuery>,
    /// Per-registry settings, keyed by registry as written.
    pub registries: HashMap<String, RegistryOptions>,
    /// Target names defined in the file.
    pub target_names: Vec<String>,
    /// What `check` should say of settings with consequences (`platforms`).
    pub notes: Vec<String>,
}

/// What the command line selected: `--only` globs and `--target` names.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Image names or globs; empty means all.
    pub only: Vec<String>,
    /// Target names; empty means all.
    pub targets: Vec<String>,
}

/// Parses and resolves a file's text.
pub fn load(file_name: &str, text: &str) -> Result<Plan, Problems> {
    resolve(file_name, crate::config::parse(file_name, text)?).map_err(|mut problems| {
        // Map keys (`registries.<host>`) carry no position of their own:
        // find the key's line in the text (the longest key that names it).
        let keys = resolve::section_keys(text, "registries");
        for problem in problems.problems.iter_mut().filter(|p| p.line == 0) {
            let found = keys
                .iter()
                .filter(|(key, _, _)| {
                    problem
                        .place
                        .strip_prefix("registries.")
                        .and_then(|rest| rest.strip_prefix(key.as_str()))
                        .is_some_and(|tail| tail.is_empty() || tail.starts_with('.'))
                })
                .max_by_key(|(key, _, _)| key.len());
            if let Some((_, line, column)) = found {
                (problem.line, problem.column) = (*line, *column);
            }
        }
        problems.problems.sort_by_key(|p| (p.line, p.column));
        problems
    })
}

impl Plan {
    /// Every image name in the plan (an image with several tags repeats).
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.jobs
            .iter()
            .map(|j| j.image.as_str())
            .chain(self.queries.iter().map(|q| q.image.as_str()))
    }

    /// `N images, N image×tag jobs, N image×tag×target pairs` and, when
    /// there are selectors, how many images get their tags at run time.
    pub fn size(&self) -> String {
        let images: HashSet<&str> = self.images().collect();
        let mut text = format!(
            "{} images, {} image×tag jobs, {} image×tag×target pairs",
            images.len(),
            self.jobs.len(),
            self.pairs()
        );
        if !self.queries.is_empty() {
            text += &format!(
                ", plus {} images whose tags a selector picks at run time",
                self.queries.len()
            );
        }
        text
    }

    /// Image × tag × target pairs in the plan.
    pub fn pairs(&self) -> usize {
        self.jobs.iter().map(|j| j.destinations.len()).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// A valid file the plan's tests share.
    pub(crate) const GOOD: &str = "\
version: 1
targets:
  ghcr: ghcr.io/acme/mirror
  hub: docker.io/acmemirror
defaults:
  targets: [ghcr]
images:
  - name: k3s
    source: docker.io/rancher/k3s
    tags: [v1.30.4-k3s1, v1.31.1-k3s1]
  - source: docker.io/library/busybox
    tags: ['1.37']
    targets: [ghcr, hub]
    path: busybox
  - name: fulcio
    source: gcr.io/projectsigstore/fulcio@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
    tags: [v1.4.0]
";
}
