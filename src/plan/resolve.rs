//! `mirror.yaml` resolved into a [`Plan`]: every target, registry and image
//! entry checked, jobs built, and every problem kept with its line and
//! column, never only the first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_saphyr::Spanned;

use super::registries;
use super::tags::{Releases, TagFilter, anchored, semver_range};
use super::{Destination, Immutable, Job, Plan, TagQuery};
use crate::config::{ConfigFile, ImmutableTags, Problem, Problems, TagSelector, Tags, problem_at};
use crate::digest::Digest;
use crate::manifest::{self, Platform};
use crate::reference::{Reference, Repository, valid_tag};
use crate::source::Source;

/// A target prefix: registry plus optional path.
struct Prefix {
    registry: String,
    path: String,
}

fn parse_prefix(value: &str) -> Result<Prefix, String> {
    let (host, path) = value.split_once('/').unwrap_or((value, ""));
    if !crate::reference::is_registry(host) {
        return Err(format!(
            "`{value}` must start with a registry host (e.g. `ghcr.io/acme`)"
        ));
    }
    // Validate by building a reference with a placeholder image path.
    let probe = format!("{}/placeholder", value.trim_end_matches('/'));
    let reference: Reference = probe.parse().map_err(|e| format!("{e}"))?;
    let registry = reference.repository.registry;
    let path = if path.is_empty() {
        String::new()
    } else {
        // Exactly one placeholder component was appended above.
        let full = &reference.repository.path;
        full.strip_suffix("/placeholder")
            .expect("probe ends with the placeholder")
            .to_string()
    };
    Ok(Prefix { registry, path })
}

fn join(prefix: &Prefix, path: &str) -> Result<Repository, String> {
    let full = if prefix.path.is_empty() {
        format!("{}/{path}", prefix.registry)
    } else {
        format!("{}/{}/{path}", prefix.registry, prefix.path)
    };
    full.parse::<Reference>()
        .map(|r| r.repository)
        .map_err(|e| e.to_string())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
}

/// Checks a parsed file and resolves it into a plan, or returns every problem.
pub fn resolve(file_name: &str, file: ConfigFile) -> Result<Plan, Problems> {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    if file.version.value != 1 {
        problems.push(problem_at(
            &file.version,
            "version",
            format!(
                "unsupported version {}; this regmirror reads version 1",
                file.version.value
            ),
        ));
    }

    let mut prefixes = BTreeMap::new();
    for (name, value) in &file.targets {
        match parse_prefix(&value.value) {
            Ok(prefix) => {
                prefixes.insert(name.clone(), prefix);
            }
            Err(message) => problems.push(problem_at(value, format!("targets.{name}"), message)),
        }
    }

    let registries = registries::resolve(file_name, &file.registries, &mut problems);

    let known_target = |name: &Spanned<String>, place: String, problems: &mut Vec<Problem>| {
        if !file.targets.contains_key(&name.value) {
            let defined: Vec<&str> = file.targets.keys().map(String::as_str).collect();
            problems.push(problem_at(
                name,
                place,
                format!(
                    "unknown target `{}` (defined: {})",
                    name.value,
                    defined.join(", ")
                ),
            ));
        }
    };
    if let Some(defaults) = &file.defaults.targets {
        for (i, name) in defaults.iter().enumerate() {
            known_target(name, format!("defaults.targets[{i}]"), &mut problems);
        }
    }

    let mut jobs = Vec::new();
    let mut queries = Vec::new();
    let mut names = HashSet::new();
    // Who writes each target repository:tag.
    let mut writers: HashMap<(Repository, String), String> = HashMap::new();
    // What an image without `targets` gets when `defaults` names none.
    let every_target: Vec<Spanned<String>> = file
        .targets
        .iter()
        .map(|(name, prefix)| Spanned::new(name.clone(), prefix.referenced, prefix.defined))
        .collect();
    for (i, entry) in file.images.iter().enumerate() {
        let place = |key: &str| format!("images[{i}].{key}");
        let reference = match entry.source.value.parse::<Reference>() {
            Ok(reference) => reference,
            Err(error) => {
                problems.push(problem_at(
                    &entry.source,
                    place("source"),
                    error.to_string(),
                ));
                continue;
            }
        };
        if reference.tag.is_some() {
            problems.push(problem_at(
                &entry.source,
                place("source"),
                "write the source without a tag and list tags under `tags`",
            ));
            continue;
        }
        let default_name = reference
            .repository
            .path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let name = entry
            .name
            .as_ref()
            .map(|n| n.value.clone())
            .unwrap_or(default_name);
        if let Some(spanned) = &entry.name
            && !valid_name(&name)
        {
            problems.push(problem_at(
                spanned,
                place("name"),
                "names use letters, digits, `.`, `_`, `-` and `/`",
            ));
        }
        if !names.insert(name.clone()) {
            let at = entry.name.as_ref().unwrap_or(&entry.source);
            problems.push(problem_at(
                at,
                place("name"),
                format!("duplicate image name `{name}`; set a distinct `name`"),
            ));
        }

        let no_tags =
            "no tags: list the tags to copy (for a pinned source, the tags to set on the targets)";
        let (tags, filter): (Vec<&Spanned<String>>, Option<TagFilter>) = match &entry.tags {
            Some(Tags::List(list)) if !list.is_empty() => (list.iter().collect(), None),
            None | Some(Tags::List(_)) => {
                problems.push(problem_at(&entry.source, place("tags"), no_tags));
                (Vec::new(), None)
            }
            Some(Tags::Select(selector)) => {
                if reference.digest.is_some() {
                    problems.push(problem_at(
                        &entry.source,
                        place("tags"),
                        "a digest-pinned source takes a list of tags to set, not a selector",
                    ));
                }
                let filter =
                    compile_selector(selector, &entry.source, &place("tags"), &mut problems);
                (Vec::new(), filter)
            }
        };
        let mut seen_tags = HashSet::new();
        for (t, tag) in tags.iter().enumerate() {
            if !valid_tag(&tag.value) {
                problems.push(problem_at(
                    tag,
                    format!("images[{i}].tags[{t}]"),
                    format!("`{}` is not a valid tag", tag.value),
                ));
            } else if !seen_tags.insert(&tag.value) {
                problems.push(problem_at(
                    tag,
                    format!("images[{i}].tags[{t}]"),
                    format!("duplicate tag `{}`", tag.value),
                ));
            }
        }

        let target_names = match (&entry.targets, &file.defaults.targets) {
            (Some(own), _) => {
                for (t, name) in own.iter().enumerate() {
                    known_target(name, format!("images[{i}].targets[{t}]"), &mut problems);
                }
                own
            }
            (None, Some(defaults)) => defaults,
            // Without `defaults.targets`, every target the file defines.
            (None, None) if !every_target.is_empty() => &every_target,
            (None, None) => {
                problems.push(problem_at(
                    &entry.source,
                    place("targets"),
                    "no targets: define some under `targets:`",
                ));
                continue;
            }
        };
        let path = entry
            .path
            .as_ref()
            .map(|p| p.value.trim_matches('/').to_string())
            .unwrap_or_else(|| reference.repository.path.clone());
        let mut repositories = Vec::new();
        let mut listed = HashSet::new();
        for (t, name) in target_names.iter().enumerate() {
            if !listed.insert(&name.value) {
                problems.push(problem_at(
                    name,
                    format!("{}[{t}]", place("targets")),
                    format!("target `{}` is listed twice", name.value),
                ));
                continue;
            }
            let Some(prefix) = prefixes.get(&name.value) else {
                continue;
            };
            match join(prefix, &path) {
                Ok(repository) if repository == reference.repository => {
                    problems.push(problem_at(
                        name,
                        place("targets"),
                        format!("target `{}` is the source itself", name.value),
                    ));
                }
                // Docker Hub has namespace/name and nothing deeper; a push
                // to more is refused only at run time, after every pull.
                Ok(repository)
                    if repository.registry == crate::reference::DOCKER_HUB
                        && repository.path.split('/').count() > 2 =>
                {
                    let at = entry.path.as_ref().unwrap_or(name);
                    let last = repository.path.rsplit('/').next().unwrap_or_default();
                    problems.push(problem_at(
                        at,
                        place("path"),
                        format!(
                            "`{repository}` has {} path components, and Docker Hub takes two (namespace/name): set `path:` (e.g. `path: {last}`; see {})",
                            repository.path.split('/').count(),
                            crate::troubleshooting!("docker-hub-path")
                        ),
                    ));
                }
                Ok(repository) => repositories.push((name.value.clone(), repository)),
                Err(message) => {
                    let at = entry.path.as_ref().unwrap_or(name);
                    problems.push(problem_at(at, place("path"), message));
                }
            }
        }

        // Two entries writing one target repository:tag would race, and
        // the tag would end up naming whichever finished last. (Tags that
        // selectors pick are known only at run time: see
        // [`drop_repeated_destinations`].)
        let at = entry.name.as_ref().unwrap_or(&entry.source);
        'repositories: for (_, repository) in &repositories {
            for tag in &tags {
                match writers.entry((repository.clone(), tag.value.clone())) {
                    std::collections::hash_map::Entry::Occupied(other) => {
                        problems.push(problem_at(
                            at,
                            place("targets"),
                            format!(
                                "`{repository}:{}` is also written by image `{}`; two entries cannot write one tag",
                                tag.value,
                                other.get()
                            ),
                        ));
                        break 'repositories;
                    }
                    std::collections::hash_map::Entry::Vacant(free) => {
                        free.insert(name.clone());
                    }
                }
            }
        }

        let referrers = entry.referrers.or(file.defaults.referrers).unwrap_or(true);
        let defaults = &file.defaults;
        let immutable = own_or_default(&entry.immutable, &defaults.immutable, &place, "immutable")
            .map_or(Immutable::None, |(value, at)| {
                compile_immutable(value, &at, &mut problems)
            });
        let require_platforms = own_or_default(
            &entry.require_platforms,
            &defaults.require_platforms,
            &place,
            "require_platforms",
        )
        .map_or_else(Vec::new, |(list, at)| platforms(list, &at, &mut problems));
        let keep = own_or_default(&entry.platforms, &defaults.platforms, &place, "platforms")
            .map_or_else(Vec::new, |(list, at)| platforms(list, &at, &mut problems));
        if !keep.is_empty() {
            for wanted in &require_platforms {
                if !keep.iter().any(|kept| wanted.satisfies(kept)) {
                    problems.push(problem_at(
                        &entry.source,
                        place("platforms"),
                        format!("`require_platforms` wants {wanted}, which `platforms` leaves out; add it to `platforms`"),
                    ));
                }
            }
            notes.push(format!(
                "{name}: `platforms` keeps {} of each multi-platform image: its targets get a new index holding only those (and their attestations), so their digest differs from the source's; `verify` compares them with the index cut from the source",
                manifest::platforms::list(&keep)
            ));
        }
        let source = Arc::new(Source::Registry(reference.repository.clone()));
        if let Some(filter) = filter {
            queries.push(TagQuery {
                image: name.clone(),
                source: source.clone(),
                repository: reference.repository.clone(),
                filter,
                targets: repositories.clone(),
                referrers,
                immutable: immutable.clone(),
                require_platforms: require_platforms.clone(),
                platforms: keep.clone(),
            });
        }
        for tag in tags {
            let destinations = repositories
                .iter()
                .map(|(target, repository)| Destination {
                    name: target.clone(),
                    repository: repository.clone(),
                    tag: tag.value.clone(),
                })
                .collect();
            jobs.push(Job {
                image: name.clone(),
                source: source.clone(),
                reference: reference
                    .digest
                    .as_ref()
                    .map(Digest::to_string)
                    .unwrap_or_else(|| tag.value.clone()),
                pinned: reference.digest.clone(),
                destinations,
                referrers,
                immutable: immutable.covers(&tag.value),
                require_platforms: require_platforms.clone(),
                platforms: keep.clone(),
                subject: None,
            });
        }
    }

    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.column));
        return Err(Problems {
            file: file_name.to_string(),
            problems,
        });
    }
    Ok(Plan {
        jobs,
        queries,
        registries,
        target_names: file.targets.keys().cloned().collect(),
        notes,
    })
}

/// An image's own setting `key`, else the one in `defaults`: the value and
/// its place, for problems (`images[2].platforms`, `defaults.platforms`).
fn own_or_default<'a, T>(
    own: &'a Option<T>,
    default: &'a Option<T>,
    place: &dyn Fn(&str) -> String,
    key: &str,
) -> Option<(&'a T, String)> {
    match (own, default) {
        (Some(value), _) => Some((value, place(key))),
        (None, Some(value)) => Some((value, format!("defaults.{key}"))),
        (None, None) => None,
    }
}

/// Parses a list of `os/arch[/variant]`; each bad one is a problem (pushed)
/// and left out.
fn platforms(list: &[Spanned<String>], place: &str, problems: &mut Vec<Problem>) -> Vec<Platform> {
    let mut parsed = Vec::new();
    for (i, text) in list.iter().enumerate() {
        match Platform::parse(&text.value) {
            Some(platform) => parsed.push(platform),
            None => problems.push(problem_at(
                text,
                format!("{place}[{i}]"),
                format!("`{}` is not a platform: write `os/arch` or `os/arch/variant`, e.g. `linux/arm64`", text.value),
            )),
        }
    }
    parsed
}

/// Compiles `immutable: true | false | REGEX`; a bad regular expression
/// is a problem (pushed) and makes nothing immutable.
fn compile_immutable(
    value: &Spanned<ImmutableTags>,
    place: &str,
    problems: &mut Vec<Problem>,
) -> Immutable {
    match &value.value {
        ImmutableTags::All(true) => Immutable::All,
        ImmutableTags::All(false) => Immutable::None,
        ImmutableTags::Matching(pattern) => match anchored(pattern) {
            Ok(pattern) => Immutable::Matching(pattern),
            Err(error) => {
                problems.push(problem_at(value, place, error.to_string()));
                Immutable::None
            }
        },
    }
}

/// Compiles `tags: {regex, exclude, semver, latest}`; `None` when a key is
/// wrong or none is given (the problem is pushed; an empty selector has no
/// position of its own, so it is reported at `entry`, the image's source).
fn compile_selector(
    selector: &TagSelector,
    entry: &Spanned<String>,
    place: &str,
    problems: &mut Vec<Problem>,
) -> Option<TagFilter> {
    let before = problems.len();
    let mut regex = |value: &Option<Spanned<String>>, key: &str| {
        let value = value.as_ref()?;
        anchored(&value.value)
            .map_err(|error| {
                problems.push(problem_at(
                    value,
                    format!("{place}.{key}"),
                    error.to_string(),
                ));
            })
            .ok()
    };
    let (include, exclude) = (
        regex(&selector.regex, "regex"),
        regex(&selector.exclude, "exclude"),
    );
    let semver = match &selector.semver {
        Some(range) => semver_range(&range.value).unwrap_or_else(|error| {
            problems.push(problem_at(
                range,
                format!("{place}.semver"),
                error.to_string(),
            ));
            Vec::new()
        }),
        None => Vec::new(),
    };
    if let Some(latest) = &selector.latest
        && latest.value == 0
    {
        problems.push(problem_at(
            latest,
            format!("{place}.latest"),
            "must be at least 1",
        ));
    }
    let github = selector.github_releases.as_ref().and_then(|project| {
        Releases::new(&project.value, selector.replace.as_ref().map(|r| &r.value))
            .map_err(|error| {
                problems.push(problem_at(
                    project,
                    format!("{place}.github_releases"),
                    error.to_string(),
                ));
            })
            .ok()
    });
    if let Some(replace) = &selector.replace
        && selector.github_releases.is_none()
    {
        problems.push(problem_at(
            replace,
            format!("{place}.replace"),
            "`replace` rewrites release tags: it needs `github_releases`",
        ));
    }
    let mut text = Vec::new();
    if let Some(project) = &selector.github_releases {
        text.push(format!("github_releases: {}", project.value));
    }
    for (key, value) in [
        ("regex", &selector.regex),
        ("exclude", &selector.exclude),
        ("semver", &selector.semver),
    ] {
        if let Some(value) = value {
            text.push(format!("{key}: {}", value.value));
        }
    }
    if let Some(latest) = &selector.latest {
        text.push(format!("latest: {}", latest.value));
    }
    if text.is_empty() {
        problems.push(problem_at(
            entry,
            place,
            "an empty selector: give `regex`, `semver`, `latest` or `github_releases` (`regex: '.*'` takes every tag)",
        ));
    }
    if problems.len() > before {
        return None;
    }
    Some(TagFilter {
        regex: include,
        exclude,
        semver,
        latest: selector.latest.as_ref().map(|l| l.value),
        github,
        text: format!("{{{}}}", text.join(", ")),
    })
}

/// The keys directly under the top-level `section:` of a YAML text written
/// in block style, unquoted, with their 1-based line and column.
pub(super) fn section_keys(text: &str, section: &str) -> Vec<(String, u64, u64)> {
    let mut keys = Vec::new();
    let mut inside = false;
    let mut indent = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let depth = line.len() - trimmed.len();
        if depth == 0 {
            inside = trimmed.trim_end().starts_with(&format!("{section}:"));
            indent = None;
            continue;
        }
        if !inside || *indent.get_or_insert(depth) != depth {
            continue;
        }
        // `host:port:` — the key ends at the colon before a space or the end.
        let trimmed = trimmed.trim_end();
        let Some(key) = trimmed
            .split_once(": ")
            .map(|(key, _)| key)
            .or_else(|| trimmed.strip_suffix(':'))
        else {
            continue;
        };
        let key = key.trim().trim_matches(['"', '\'']);
        keys.push((key.to_string(), (i + 1) as u64, (depth + 1) as u64));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::super::tests::GOOD;

    #[test]
    fn resolves_jobs_and_destinations() {
        let plan = load("m.yaml", GOOD).unwrap();
        assert_eq!(plan.jobs.len(), 4);
        assert_eq!(plan.pairs(), 5);
        let k3s = &plan.jobs[0];
        assert_eq!(
            k3s.destinations[0].repository.to_string(),
            "ghcr.io/acme/mirror/rancher/k3s"
        );
        assert_eq!(k3s.reference, "v1.30.4-k3s1");
        let busybox = &plan.jobs[2];
        assert_eq!(busybox.image, "busybox");
        assert_eq!(
            busybox.destinations[1].repository.to_string(),
            "docker.io/acmemirror/busybox"
        );
        let fulcio = &plan.jobs[3];
        assert!(fulcio.pinned.is_some());
        assert_eq!(fulcio.destinations[0].tag, "v1.4.0");
        assert!(fulcio.reference.starts_with("sha256:"));
    }

    #[test]
    fn refuses_clashing_writes_repeated_targets_bad_hosts_and_numbers_out_of_range() {
        let bad = "\
version: 1
targets:
  ghcr: ghcr.io/acme
  hub: docker.io/acme
registries:
  'evil.com#x':
    insecure: true
  ghcr.io:
    concurrency: 99999999999999
    timeout: 0s
  docker.io:
    rate_limit: { requests: 1, per: 99999y }
images:
  - name: a
    source: docker.io/library/k3s
    tags: [v1, v2]
    targets: [ghcr, ghcr]
  - name: b
    source: quay.io/other/k3s
    path: library/k3s
    tags: [v2]
    targets: [ghcr]
  - name: c
    source: docker.io/rancher/pause
    tags: [3.9]
    targets: [hub]
    path: pause
  - name: d
    source: quay.io/x/pause
    path: pause
    tags: [3.9]
    targets: [hub]
";
        let problems = load("m.yaml", bad).unwrap_err().problems;
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        for (line, needle) in [
            (6, "`evil.com#x` is not a registry host"),
            (9, "concurrency: must be at most 1024"),
            (10, "timeout: must be between 1s and 1h"),
            (12, "must be at most a year"),
            (17, "target `ghcr` is listed twice"),
            (
                18,
                "`ghcr.io/acme/library/k3s:v2` is also written by image `a`",
            ),
            (28, "is also written by image `c`"),
        ] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.line == line && p.to_string().contains(needle)),
                "expected `{needle}` at line {line}: {text:#?}"
            );
        }
        assert_eq!(problems.len(), 7, "{text:#?}");
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let bad = "\
version: 2
targets:
  ghcr: notahost
images:
  - source: docker.io/rancher/k3s:v1
    tags: [a]
  - name: x
    source: docker.io/a/b
    tags: ['bad tag', ok, ok]
    targets: [nope]
  - name: x
    source: docker.io/c/d
    tags: [a]
    targets: [ghcr]
";
        let problems = load("m.yaml", bad).unwrap_err().problems;
        let lines: Vec<u64> = problems.iter().map(|p| p.line).collect();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        for (line, needle) in [
            (1, "version"),
            (3, "registry host"),
            (5, "without a tag"),
            (9, "not a valid tag"),
            (9, "duplicate tag"),
            (10, "unknown target `nope`"),
            (11, "duplicate image name"),
        ] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.line == line && p.to_string().contains(needle)),
                "expected `{needle}` at line {line}; got {lines:?}: {text:#?}"
            );
        }
    }

    /// A file's start: one target, the default for every image.
    const HEAD: &str = "version: 1\ntargets:\n  ghcr: ghcr.io/acme\ndefaults:\n  targets: [ghcr]\n";

    #[test]
    fn without_default_targets_an_image_goes_to_every_target() {
        let config = "version: 1\ntargets: {a: ghcr.io/x, b: quay.io/y}\nimages: [{source: docker.io/library/alpine, tags: ['3.20']}]\n";
        let plan = load("m.yaml", config).unwrap();
        let targets: Vec<&str> = plan.jobs[0]
            .destinations
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(targets, ["a", "b"]);
    }

    #[test]
    fn a_docker_hub_target_deeper_than_namespace_and_name_is_refused() {
        let config = "\
version: 1
targets:
  hub: docker.io/acmemirror
images:
  - source: docker.io/library/postgres
    tags: ['17']
    targets: [hub]
  - source: docker.io/library/busybox
    tags: ['1.37']
    targets: [hub]
    path: busybox
";
        let problems = load("m.yaml", config).unwrap_err().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        let problem = &problems[0];
        assert_eq!(
            (problem.line, problem.place.as_str()),
            (7, "images[0].path")
        );
        assert!(
            problem.message.contains(
                "Docker Hub takes two (namespace/name): set `path:` (e.g. `path: postgres`; see https://acme.github.io/regmirror/troubleshooting/#docker-hub-path)"
            ),
            "{}",
            problem.message
        );
    }

    #[test]
    fn required_platforms_are_parsed_and_a_bad_one_names_its_line() {
        let config = HEAD.to_string()
            + "  require_platforms: [linux/amd64]\n"
            + "\
images:
  - source: docker.io/a/b
    tags: [v1]
  - source: docker.io/a/c
    tags: [v1]
    require_platforms: [linux/arm64, linux/arm/v7]
";
        let plan = load("m.yaml", &config).unwrap();
        let wanted: Vec<String> = plan
            .jobs
            .iter()
            .map(|job| crate::manifest::platforms::list(&job.require_platforms))
            .collect();
        assert_eq!(wanted, ["linux/amd64", "linux/arm64,linux/arm/v7"]);
        let bad = config.replace("linux/arm/v7]", "arm64]");
        let problems = load("m.yaml", &bad).unwrap_err().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, 12);
        assert_eq!(problems[0].place, "images[1].require_platforms[1]");
    }

    #[test]
    fn kept_platforms_come_with_a_note_and_must_keep_the_required_ones() {
        let config = HEAD.to_string()
            + "  platforms: [linux/amd64, linux/arm64]\n"
            + "\
images:
  - source: docker.io/a/b
    tags: [v1]
  - name: c
    source: docker.io/a/c
    tags: [v1]
    platforms: [linux/arm64]
";
        let plan = load("m.yaml", &config).unwrap();
        let kept: Vec<String> = plan
            .jobs
            .iter()
            .map(|job| crate::manifest::platforms::list(&job.platforms))
            .collect();
        assert_eq!(kept, ["linux/amd64,linux/arm64", "linux/arm64"]);
        assert_eq!(plan.notes.len(), 2);
        assert!(
            plan.notes[1]
                .starts_with("c: `platforms` keeps linux/arm64 of each multi-platform image"),
            "{:?}",
            plan.notes
        );
        let left_out = config.replace(
            "    platforms: [linux/arm64]\n",
            "    platforms: [linux/arm64]\n    require_platforms: [linux/amd64]\n",
        );
        let problems = load("m.yaml", &left_out).unwrap_err().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].place, "images[1].platforms");
        assert!(
            problems[0]
                .message
                .contains("wants linux/amd64, which `platforms` leaves out")
        );
    }

    #[test]
    fn immutable_is_a_flag_or_a_pattern_of_tags() {
        let config = HEAD.to_string()
            + "  immutable: 'v[0-9.]+'\n"
            + "\
images:
  - source: docker.io/a/b
    tags: [v1.2, latest]
  - source: docker.io/a/c
    tags: [latest]
    immutable: true
  - source: docker.io/a/d
    tags: [v1.2]
    immutable: false
";
        let plan = load("m.yaml", &config).unwrap();
        let immutable: Vec<(&str, bool)> = plan
            .jobs
            .iter()
            .map(|job| (job.reference.as_str(), job.immutable))
            .collect();
        assert_eq!(
            immutable,
            [
                ("v1.2", true),
                ("latest", false),
                ("latest", true),
                ("v1.2", false)
            ]
        );
        let bad = config.replace("immutable: true", "immutable: '(v'");
        let problems = load("m.yaml", &bad).unwrap_err().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            (problems[0].line, problems[0].place.as_str()),
            (12, "images[1].immutable")
        );
    }
}
