//! `regmirror audit PATH…`: which images a repository's files pull, from
//! which registries, and which of them `mirror.yaml` does not mirror.
//!
//! Read: Kubernetes manifests, Helm values (`image: {registry, repository,
//! tag}`), compose files and GitHub/CircleCI workflows (any YAML: `image:`
//! strings, job `container:`, `uses: docker://…`; never a workflow's
//! `matrix` values or a CircleCI `machine` image), and Dockerfiles / Containerfiles
//! (`FROM`, stage names left out). A reference with a template or variable
//! in it (`${{ … }}`, `{{ … }}`, `$VAR`) cannot be resolved and is counted
//! apart. A reference without a registry is Docker Hub's, *implicitly*:
//! counted apart from explicit `docker.io/…`, since a node's registry
//! mirror or policy may not treat them alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::plan::Plan;
use crate::reference::Reference;

/// One image reference found in a file.
#[derive(Clone, Debug)]
pub struct Found {
    /// As written.
    pub text: String,
    /// `file:line`.
    pub place: String,
    /// Parsed, Docker Hub normalised.
    pub reference: Reference,
    /// Written without a registry (Docker Hub by default).
    pub implicit: bool,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Audit {
    /// Every image reference found, with its place.
    pub found: Vec<Found>,
    /// Templated or unparsable references: (`file:line`, text).
    pub unresolved: Vec<(String, String)>,
    /// Files read.
    pub files: usize,
}

/// The files under `paths` worth reading (YAML and Dockerfiles), sorted.
fn files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?.path();
                let hidden = entry
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.') && n != ".github" && n != ".circleci");
                if !hidden {
                    stack.push(entry);
                }
            }
        } else if is_yaml(&path) || is_dockerfile(&path) {
            out.push(path);
        } else if paths.contains(&path) {
            // Named on the command line: read it whatever its name.
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

fn is_dockerfile(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    name.starts_with("dockerfile")
        || name.starts_with("containerfile")
        || name.ends_with(".dockerfile")
}

/// Scans `paths` (files or directories).
pub fn scan(paths: &[PathBuf]) -> std::io::Result<Audit> {
    let mut audit = Audit::default();
    for path in files(paths)? {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(_) => continue, // not text
        };
        audit.files += 1;
        let mut candidates = Vec::new();
        if is_dockerfile(&path) {
            dockerfile(&text, &mut candidates);
        } else if let Ok(documents) = serde_saphyr::from_multiple::<Value>(&text) {
            for document in &documents {
                walk(document, &[], &mut candidates);
            }
        } else {
            // A Helm template is not YAML until rendered: read its lines.
            yaml_lines(&text, &mut candidates);
        }
        for candidate in candidates {
            let place = format!("{}:{}", path.display(), line_of(&text, &candidate));
            match resolve(&candidate) {
                Some((reference, implicit)) => audit.found.push(Found {
                    text: candidate,
                    place,
                    reference,
                    implicit,
                }),
                None => audit.unresolved.push((place, candidate)),
            }
        }
    }
    Ok(audit)
}

/// The first line holding `needle` as a whole word (not the tail of a longer
/// reference); for a Helm map, the line of its repository.
fn line_of(text: &str, needle: &str) -> usize {
    let bare = needle
        .split('@')
        .next()
        .unwrap_or(needle)
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or(needle.split('@').next().unwrap_or(needle), |(name, _)| name);
    let path = bare.split_once('/').map_or(bare, |(_, path)| path);
    let part_of_name = |c: char| c.is_ascii_alphanumeric() || "/._-".contains(c);
    for candidate in [needle, bare, path] {
        let found = text.lines().position(|line| {
            line.match_indices(candidate).any(|(at, _)| {
                !line[..at].chars().next_back().is_some_and(part_of_name)
                    && !line[at + candidate.len()..]
                        .chars()
                        .next()
                        .is_some_and(part_of_name)
            })
        });
        if let Some(index) = found {
            return index + 1;
        }
    }
    0
}

/// `FROM [--platform=…] IMAGE [AS NAME]`, skipping earlier stages and `scratch`.
fn dockerfile(text: &str, out: &mut Vec<String>) {
    let mut stages = BTreeSet::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            continue;
        }
        let rest: Vec<&str> = words[1..]
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let Some(image) = rest.first() else { continue };
        if let [_, as_word, name] = rest.as_slice()
            && as_word.eq_ignore_ascii_case("as")
        {
            stages.insert(name.to_ascii_lowercase());
        }
        if *image != "scratch" && !stages.contains(&image.to_ascii_lowercase()) {
            out.push(image.to_string());
        }
    }
}

/// Image references in a YAML tree; `path` is the keys above `value`.
fn walk(value: &Value, path: &[&str], out: &mut Vec<String>) {
    // A workflow's matrix values and CircleCI machine images are not images we pull.
    if path.iter().any(|k| *k == "matrix" || *k == "machine") {
        return;
    }
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let mut below = path.to_vec();
                below.push(key);
                match (key.as_str(), child) {
                    ("image", Value::String(image)) => out.push(image.clone()),
                    ("image", Value::Object(helm)) if helm.contains_key("repository") => {
                        if let Some(reference) = helm_image(helm) {
                            out.push(reference);
                        }
                    }
                    ("uses", Value::String(uses)) => {
                        if let Some(image) = uses.strip_prefix("docker://") {
                            out.push(image.to_string());
                        }
                    }
                    // A job's `container: IMAGE` shorthand.
                    ("container", Value::String(image)) if path.contains(&"jobs") => {
                        out.push(image.clone())
                    }
                    _ => walk(child, &below, out),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(item, path, out);
            }
        }
        _ => {}
    }
}

/// Helm's `image: {registry, repository, tag, digest}`.
fn helm_image(helm: &serde_json::Map<String, Value>) -> Option<String> {
    let text = |key: &str| match helm.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let repository = text("repository")?;
    let mut reference = match text("registry") {
        Some(registry) => format!("{registry}/{repository}"),
        None => repository,
    };
    if let Some(tag) = text("tag") {
        reference.push(':');
        reference.push_str(&tag);
    }
    if let Some(digest) = text("digest") {
        reference.push('@');
        reference.push_str(&digest);
    }
    Some(reference)
}

/// `image: …` lines of a file that is not YAML (a Helm template).
fn yaml_lines(text: &str, out: &mut Vec<String>) {
    for line in text.lines() {
        let line = line.trim_start().trim_start_matches("- ");
        if let Some(rest) = line.strip_prefix("image:") {
            let value = rest
                .split(" #")
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches(['"', '\'']);
            if !value.is_empty() {
                out.push(value.to_string());
            }
        }
    }
}

/// Parses a reference as Docker would; `None` for templates and variables.
/// The flag says the registry was left out (Docker Hub implied).
fn resolve(text: &str) -> Option<(Reference, bool)> {
    if text.contains('$') || text.contains("{{") || text.contains(' ') {
        return None;
    }
    // The reference parser puts a name without a registry on Docker Hub.
    let explicit = text
        .split_once('/')
        .is_some_and(|(first, _)| crate::reference::is_registry(first));
    let mut reference: Reference = text.parse().ok()?;
    if reference.tag.is_none() && reference.digest.is_none() {
        reference.tag = Some("latest".into());
    }
    Some((reference, !explicit))
}

/// The audit as text: counts by registry, what the plan does not mirror,
/// and with `suggest` the `images:` entries that would.
pub fn report(audit: &Audit, plan: Option<&Plan>, suggest: bool) -> String {
    let mut out = format!(
        "{} image references in {} files",
        audit.found.len(),
        audit.files
    );
    if !audit.unresolved.is_empty() {
        out.push_str(&format!(
            " ({} templated or unparsable, not counted)",
            audit.unresolved.len()
        ));
    }
    out.push('\n');
    let mut by_registry: BTreeMap<String, usize> = BTreeMap::new();
    for found in &audit.found {
        let registry = &found.reference.repository.registry;
        let key = match (registry.as_str(), found.implicit) {
            ("docker.io", true) => "implicit docker.io".to_string(),
            ("docker.io", false) => "explicit docker.io".to_string(),
            (other, _) => other.to_string(),
        };
        *by_registry.entry(key).or_default() += 1;
    }
    let mut counts: Vec<(String, usize)> = by_registry.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let counts: Vec<String> = counts.iter().map(|(r, n)| format!("{r} {n}")).collect();
    out.push_str(&format!("by registry: {}\n", counts.join(", ")));
    let implicit: Vec<&Found> = audit.found.iter().filter(|f| f.implicit).collect();
    if !implicit.is_empty() {
        out.push_str(&format!(
            "implicit docker.io ({}): write them as `docker.io/…` so mirrors and policies see where they come from\n",
            implicit.len()
        ));
        for found in implicit {
            out.push_str(&format!("  {}  {}\n", found.text, found.place));
        }
    }
    for (place, text) in &audit.unresolved {
        out.push_str(&format!("unresolved: {text}  {place}\n"));
    }
    let Some(plan) = plan else {
        return out;
    };
    let uncovered = uncovered(audit, plan);
    out.push_str(&format!(
        "not mirrored by the configuration ({}):\n",
        uncovered.len()
    ));
    for found in &uncovered {
        out.push_str(&format!("  {}  {}\n", found.reference, found.place));
    }
    if suggest && !uncovered.is_empty() {
        out.push_str("\n# mirror.yaml `images:` entries that would mirror them:\n");
        out.push_str(&suggestions(&uncovered, plan));
    }
    out
}

/// References neither mirrored by the plan nor already at one of its targets.
pub fn uncovered<'a>(audit: &'a Audit, plan: &Plan) -> Vec<&'a Found> {
    let mut mirrored: BTreeSet<(String, String)> = BTreeSet::new();
    let mut selected: BTreeSet<String> = BTreeSet::new();
    let mut targets: BTreeSet<String> = BTreeSet::new();
    for job in &plan.jobs {
        if let crate::source::Source::Registry(repository) = job.source.as_ref() {
            for d in &job.destinations {
                mirrored.insert((repository.to_string(), d.tag.clone()));
                mirrored.insert((repository.to_string(), job.reference.clone()));
                targets.insert(d.repository.to_string());
            }
        }
    }
    for query in &plan.queries {
        selected.insert(query.repository.to_string());
        targets.extend(query.targets.iter().map(|(_, r)| r.to_string()));
    }
    let mut seen = BTreeSet::new();
    audit
        .found
        .iter()
        .filter(|found| {
            let repository = found.reference.repository.to_string();
            let reference = found
                .reference
                .digest
                .as_ref()
                .map(|d| d.to_string())
                .or_else(|| found.reference.tag.clone())
                .unwrap_or_default();
            !(targets.contains(&repository)
                || selected.contains(&repository)
                || mirrored.contains(&(repository.clone(), reference.clone())))
                && seen.insert((repository, reference))
        })
        .collect()
}

/// YAML for `images:`, one entry per repository, its tags listed.
fn suggestions(uncovered: &[&Found], plan: &Plan) -> String {
    let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pinned = Vec::new();
    for found in uncovered {
        let repository = found.reference.repository.to_string();
        match (&found.reference.digest, &found.reference.tag) {
            (Some(digest), tag) => pinned.push((
                repository,
                digest.to_string(),
                tag.clone().unwrap_or_else(|| "latest".into()),
            )),
            (None, Some(tag)) => {
                tags.entry(repository).or_default().insert(tag.clone());
            }
            (None, None) => {}
        }
    }
    let taken: BTreeSet<String> = plan.jobs.iter().map(|j| j.image.clone()).collect();
    let mut out = String::new();
    let name = |repository: &str| {
        let last = repository
            .rsplit('/')
            .next()
            .unwrap_or(repository)
            .to_string();
        if taken.contains(&last) {
            repository.replace(['/', ':'], "-")
        } else {
            last
        }
    };
    for (repository, tags) in &tags {
        let list: Vec<String> = tags.iter().map(|t| format!("'{t}'")).collect();
        out.push_str(&format!(
            "  - name: {}\n    source: {repository}\n    tags: [{}]\n",
            name(repository),
            list.join(", ")
        ));
    }
    for (repository, digest, tag) in &pinned {
        out.push_str(&format!(
            "  - name: {}\n    source: {repository}@{digest}\n    tags: ['{tag}']\n",
            name(repository)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_as_docker_reads_them() {
        let (r, implicit) = resolve("postgres:16").unwrap();
        assert!(implicit);
        assert_eq!(r.to_string(), "docker.io/library/postgres:16");
        let (r, implicit) = resolve("docker.io/minio/minio").unwrap();
        assert!(!implicit);
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let (r, implicit) = resolve("bitnami/redis:7").unwrap();
        assert!(implicit);
        assert_eq!(r.repository.to_string(), "docker.io/bitnami/redis");
        assert!(!resolve("quay.io/x/y:1").unwrap().1);
        for templated in ["${{ env.IMAGE }}", "repo/{{ .Values.x }}", "img:$TAG"] {
            assert!(resolve(templated).is_none(), "{templated}");
        }
    }

    #[test]
    fn a_helm_template_is_read_line_by_line() {
        let template = "spec:\n  containers:\n    - name: app\n      image: \"{{ .Values.image }}\"\n    - image: 'quay.io/x/y:1' # sidecar\n{{- if .Values.debug }}\n      image: busybox\n{{- end }}\n";
        assert!(serde_saphyr::from_multiple::<Value>(template).is_err());
        let mut out = Vec::new();
        yaml_lines(template, &mut out);
        assert_eq!(out, ["{{ .Values.image }}", "quay.io/x/y:1", "busybox"]);
        assert!(resolve(&out[0]).is_none());
    }

    #[test]
    fn dockerfile_stages_are_not_images() {
        let mut out = Vec::new();
        dockerfile(
            "FROM --platform=$BUILDPLATFORM golang:1.23 AS build\nFROM build AS test\nfrom scratch\nFROM gcr.io/distroless/static:nonroot\n",
            &mut out,
        );
        assert_eq!(out, ["golang:1.23", "gcr.io/distroless/static:nonroot"]);
    }
}
