//! `regmirror import`: a `mirror.yaml` from another tool's configuration
//! (regclient's regsync, `skopeo sync --src yaml`), so moving over is one
//! command and a review.
//!
//! Both tools speak in source → target pairs; `mirror.yaml` speaks in images
//! with named targets. The conversion groups pairs by source repository and
//! by the set of target repositories a tag goes to, names each distinct
//! target prefix once, and uses `path` only where the target repository is
//! not the source's path. What `mirror.yaml` cannot say (credentials in the
//! file, schedules, retags, Go templates) is left out and listed as a
//! warning with how many entries it touched; nothing is dropped silently.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

use crate::reference::Reference;

mod regsync;
mod skopeo;

use regsync::regsync_pairs;
use skopeo::skopeo_pairs;

/// The tools we read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// regclient's `regsync` (`version`, `creds`, `defaults`, `sync`).
    Regsync,
    /// `skopeo sync --src yaml`: registry → `images`, `images-by-tag-regex`, `images-by-semver`.
    Skopeo,
}

/// The converted file and what could not be carried over.
#[derive(Debug)]
pub struct Imported {
    /// The `mirror.yaml` text.
    pub yaml: String,
    /// One line per thing left out, with how many entries it touched.
    pub warnings: Vec<String>,
}

/// How tags are chosen for one source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Selection {
    /// These tags.
    List(BTreeSet<String>),
    /// A selector: regex, exclude, semver.
    Selector(Option<String>, Option<String>, Option<String>),
}

/// One source → target pair as the other tool wrote it, normalised.
struct Pair {
    /// `REGISTRY/PATH` of the source.
    source: String,
    /// The tag, or a selector.
    selection: Selection,
    /// `REGISTRY/PATH` of the target.
    target: String,
}

/// Warnings counted by message.
#[derive(Default)]
struct Warnings(BTreeMap<String, usize>);

impl Warnings {
    fn add(&mut self, message: impl Into<String>) {
        *self.0.entry(message.into()).or_default() += 1;
    }

    fn lines(self) -> Vec<String> {
        self.0
            .into_iter()
            .map(|(message, n)| match n {
                1 => message,
                n => format!("{message} ({n} entries)"),
            })
            .collect()
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(text).collect(),
        Some(value) => text(value).into_iter().collect(),
        None => Vec::new(),
    }
}

/// `(?:a)|(?:b)` for a list of patterns, or the one pattern.
fn any_of(patterns: &[String]) -> Option<String> {
    match patterns {
        [] => None,
        [one] => Some(one.clone()),
        many => Some(
            many.iter()
                .map(|p| format!("(?:{p})"))
                .collect::<Vec<_>>()
                .join("|"),
        ),
    }
}

/// A Go template's `{{ env "NAME" }}`, or `None` if the text has other templates.
fn env_template(text: &str) -> Option<String> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?.trim();
    let name = inner.strip_prefix("env")?.trim().trim_matches('"');
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        .then(|| name.to_string())
}

/// Parses a reference, resolving a leading `{{ env "X" }}` host into
/// `x.invalid` (with a warning saying to set it). Other templates: `None`.
fn reference(text: &str, warnings: &mut Warnings) -> Option<Reference> {
    let mut text = text.trim().to_string();
    if text.contains("{{") {
        let end = text.find("}}")? + 2;
        let name = env_template(&text[..end])?;
        if text[end..].contains("{{") {
            return None;
        }
        let host = format!("{}.invalid", name.to_lowercase().replace('_', "-"));
        warnings.add(format!(
            "the registry `{{{{ env \"{name}\" }}}}` became `{host}`: set that target to the value of ${name}"
        ));
        text = format!("{host}{}", &text[end..]);
    }
    text.parse().ok()
}

/// The documents of a file; a Kubernetes ConfigMap (regclient's example)
/// contributes the documents in its `data` values instead.
fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for document in yaml_documents(text)? {
        if document.get("kind").and_then(Value::as_str) == Some("ConfigMap") {
            for value in document["data"]
                .as_object()
                .into_iter()
                .flat_map(|d| d.values())
            {
                if let Some(inner) = value.as_str() {
                    out.extend(yaml_documents(inner)?);
                }
            }
        } else if document.get("kind").is_none() && !document.is_null() {
            out.push(document);
        }
    }
    Ok(out)
}

/// Every YAML document in `text`; the error is the parser's first line.
fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    serde_saphyr::from_multiple(text).map_err(|e| {
        e.to_string()
            .lines()
            .next()
            .unwrap_or("not YAML")
            .to_string()
    })
}

/// A YAML scalar: plain when unambiguous, else double-quoted (JSON quoting
/// is valid YAML).
fn scalar(text: &str) -> String {
    let plain = text.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-@".contains(c))
        && !["true", "false", "null", "yes", "no", "on", "off", "y", "n"]
            .contains(&text.to_ascii_lowercase().as_str());
    if plain {
        text.to_string()
    } else {
        serde_json::to_string(text).expect("a string serializes")
    }
}

/// A target's name: its host as a slug, or the whole prefix when the host
/// is already taken by another prefix.
fn target_name(prefix: &str, taken: &BTreeMap<String, String>) -> String {
    let slug = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect()
    };
    let host = prefix.split('/').next().unwrap_or(prefix);
    for candidate in [slug(host), slug(prefix)] {
        if !taken.contains_key(&candidate) {
            return candidate;
        }
    }
    (2..)
        .map(|n| format!("{}-{n}", slug(prefix)))
        .find(|c| !taken.contains_key(c))
        .expect("some number is free")
}

/// Converts `text`, written for `format`, into a `mirror.yaml`.
/// `destination` is the target prefix for skopeo (whose file has none).
pub fn import(
    format: Format,
    file: &str,
    text: &str,
    destination: Option<&str>,
) -> crate::Result<Imported> {
    let mut warnings = Warnings::default();
    let mut registries = BTreeMap::new();
    let mut pairs = Vec::new();
    let documents = documents(text).map_err(|reason| crate::Error::Invalid {
        what: format!("{file}:"),
        reason,
    })?;
    for document in documents {
        pairs.extend(match format {
            Format::Regsync => regsync_pairs(&document, &mut warnings, &mut registries),
            Format::Skopeo => {
                let destination = destination.unwrap_or_else(|| {
                    warnings.add("skopeo sync takes its destination on the command line: the target `mirror` is `registry.example.com/mirror`; change it, or pass `--dest`");
                    "registry.example.com/mirror"
                });
                skopeo_pairs(&document, destination, &mut warnings, &mut registries)
            }
        });
    }

    // (source, selection kind) → tag or selector → target repositories.
    let mut by_source: BTreeMap<String, BTreeMap<Selection, BTreeSet<String>>> = BTreeMap::new();
    for pair in pairs {
        let selections = by_source.entry(pair.source).or_default();
        match pair.selection {
            Selection::List(tags) => {
                for tag in tags {
                    selections
                        .entry(Selection::List(BTreeSet::from([tag])))
                        .or_default()
                        .insert(pair.target.clone());
                }
            }
            selector => {
                selections.entry(selector).or_default().insert(pair.target);
            }
        }
    }
    // Tags going to the same target repositories share one image entry.
    struct Image {
        source: String,
        selection: Selection,
        targets: BTreeSet<String>,
    }
    let mut images = Vec::new();
    for (source, selections) in by_source {
        let mut lists: BTreeMap<BTreeSet<String>, BTreeSet<String>> = BTreeMap::new();
        for (selection, targets) in selections {
            match selection {
                Selection::List(tags) => lists.entry(targets).or_default().extend(tags),
                selector => images.push(Image {
                    source: source.clone(),
                    selection: selector,
                    targets,
                }),
            }
        }
        for (targets, tags) in lists {
            images.push(Image {
                source: source.clone(),
                selection: Selection::List(tags),
                targets,
            });
        }
    }
    images.sort_by(|a, b| (&a.source, &a.selection).cmp(&(&b.source, &b.selection)));

    // Targets whose repositories end differently cannot share a `path`:
    // one image entry per last path component.
    let images: Vec<Image> = images
        .into_iter()
        .flat_map(|image| {
            let mut by_base: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for target in &image.targets {
                let base = target.rsplit('/').next().unwrap_or(target).to_string();
                by_base.entry(base).or_default().insert(target.clone());
            }
            by_base
                .into_values()
                .map(|targets| Image {
                    source: image.source.clone(),
                    selection: image.selection.clone(),
                    targets,
                })
                .collect::<Vec<_>>()
        })
        .collect();

    // Each image: the longest common tail of its target paths is its `path`,
    // what is left of each is a target prefix.
    let mut prefixes: BTreeMap<String, String> = BTreeMap::new(); // name → prefix
    let mut names_of: BTreeMap<String, String> = BTreeMap::new(); // prefix → name
    let mut entries = Vec::new();
    for image in &images {
        let split: Vec<(&str, Vec<&str>)> = image
            .targets
            .iter()
            .map(|t| {
                let (host, path) = t.split_once('/').expect("a repository has a path");
                (host, path.split('/').collect())
            })
            .collect();
        let shortest = split.iter().map(|(_, p)| p.len()).min().unwrap_or(1);
        // The last component is shared by construction; extend while all agree.
        let mut tail = 1;
        while tail < shortest
            && split
                .iter()
                .all(|(_, p)| p[p.len() - tail - 1] == split[0].1[split[0].1.len() - tail - 1])
        {
            tail += 1;
        }
        let first = &split[0].1;
        let path = first[first.len() - tail..].join("/");
        let mut names = Vec::new();
        for (host, parts) in &split {
            let head = &parts[..parts.len() - tail];
            let prefix = if head.is_empty() {
                host.to_string()
            } else {
                format!("{host}/{}", head.join("/"))
            };
            let name = match names_of.get(&prefix) {
                Some(name) => name.clone(),
                None => {
                    let name = target_name(&prefix, &prefixes);
                    prefixes.insert(name.clone(), prefix.clone());
                    names_of.insert(prefix, name.clone());
                    name
                }
            };
            names.push(name);
        }
        names.sort();
        entries.push((image, path, names));
    }

    // The most common target set becomes `defaults.targets`.
    let mut counts: BTreeMap<&Vec<String>, usize> = BTreeMap::new();
    for (_, _, names) in &entries {
        *counts.entry(names).or_default() += 1;
    }
    let defaults = counts
        .iter()
        .max_by_key(|(names, n)| (**n, std::cmp::Reverse(*names)))
        .map(|(names, _)| (*names).clone());

    // Names: the repository's last component, unless two images share it.
    let short = |source: &str| source.rsplit('/').next().unwrap_or(source).to_string();
    let mut uses: BTreeMap<String, usize> = BTreeMap::new();
    for (image, _, _) in &entries {
        *uses.entry(short(&image.source)).or_default() += 1;
    }
    let mut given: BTreeSet<String> = BTreeSet::new();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Imported from `{file}` by `regmirror import`; review, then `regmirror check`."
    );
    let _ = writeln!(
        out,
        "version: 1\n\ntargets:{}",
        if prefixes.is_empty() { " {}" } else { "" }
    );
    for (name, prefix) in &prefixes {
        let _ = writeln!(out, "  {}: {}", scalar(name), scalar(prefix));
    }
    if !registries.is_empty() {
        let _ = writeln!(out, "\nregistries:");
        for (host, insecure) in &registries {
            let _ = writeln!(out, "  {}:\n    insecure: {insecure}", scalar(host));
        }
    }
    if let Some(defaults) = &defaults {
        let _ = writeln!(out, "\ndefaults:\n  targets: [{}]", defaults.join(", "));
    }
    let _ = writeln!(
        out,
        "\nimages:{}",
        if entries.is_empty() { " []" } else { "" }
    );
    for (image, path, names) in &entries {
        let base = short(&image.source);
        let mut name = if uses[&base] == 1 {
            base
        } else {
            image
                .source
                .split_once('/')
                .map(|(_, p)| p.to_string())
                .unwrap_or(base)
        };
        if !given.insert(name.clone()) {
            let numbered = (2..)
                .map(|n| format!("{name}-{n}"))
                .find(|c| !given.contains(c))
                .expect("some number is free");
            given.insert(numbered.clone());
            name = numbered;
        }
        let _ = writeln!(out, "  - name: {}", scalar(&name));
        let _ = writeln!(out, "    source: {}", scalar(&image.source));
        match &image.selection {
            Selection::List(tags) => {
                let tags: Vec<String> = tags.iter().map(|t| scalar(t)).collect();
                let _ = writeln!(out, "    tags: [{}]", tags.join(", "));
            }
            Selection::Selector(regex, exclude, semver) => {
                let _ = writeln!(out, "    tags:");
                for (key, value) in [("regex", regex), ("exclude", exclude), ("semver", semver)] {
                    if let Some(value) = value {
                        let _ = writeln!(out, "      {key}: {}", scalar(value));
                    }
                }
            }
        }
        if Some(names) != defaults.as_ref() {
            let _ = writeln!(out, "    targets: [{}]", names.join(", "));
        }
        let source_path = image
            .source
            .split_once('/')
            .map(|(_, p)| p)
            .unwrap_or_default();
        if path != source_path {
            let _ = writeln!(out, "    path: {}", scalar(path));
        }
    }
    Ok(Imported {
        yaml: out,
        warnings: warnings.lines(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regsync_pairs_become_images_with_named_targets() {
        let regsync = "\
version: 1
creds:
  - registry: registry:5000
    tls: disabled
sync:
  - {source: 'amazon/aws-cli:2.0.52', target: 'docker.io/rancher/mirrored-amazon-aws-cli:2.0.52', type: image}
  - {source: 'amazon/aws-cli:2.0.52', target: 'registry.suse.com/rancher/mirrored-amazon-aws-cli:2.0.52', type: image}
  - {source: 'amazon/aws-cli:2.8.5', target: 'docker.io/rancher/mirrored-amazon-aws-cli:2.8.5', type: image}
  - {source: 'amazon/aws-cli:2.8.5', target: 'registry.suse.com/rancher/mirrored-amazon-aws-cli:2.8.5', type: image}
  - {source: 'alpine', target: 'registry:5000/hub/alpine', type: repository, tags: {allow: [3, '3\\.9'], deny: ['.*rc.*']}}
  - {source: 'busybox:1', target: 'docker.io/x/busybox:2', type: image, schedule: '15 3 * * *'}
";
        let imported = import(Format::Regsync, "r.yml", regsync, None).unwrap();
        let plan = crate::plan::load("out.yaml", &imported.yaml)
            .unwrap_or_else(|p| panic!("{p}\n{}", imported.yaml));
        assert_eq!(plan.pairs(), 4, "{}", imported.yaml);
        let aws = &plan.jobs[0];
        assert_eq!(aws.image, "aws-cli");
        let targets: Vec<String> = aws
            .destinations
            .iter()
            .map(|d| d.repository.to_string())
            .collect();
        assert_eq!(
            targets,
            [
                "docker.io/rancher/mirrored-amazon-aws-cli",
                "registry.suse.com/rancher/mirrored-amazon-aws-cli"
            ]
        );
        let alpine = &plan.queries[0];
        assert_eq!(alpine.targets[0].1.to_string(), "registry:5000/hub/alpine");
        assert_eq!(
            alpine
                .filter
                .select(&["3".into(), "3.9".into(), "3.9rc1".into(), "4".into()]),
            ["3", "3.9"]
        );
        assert!(
            imported.yaml.contains("insecure: true"),
            "{}",
            imported.yaml
        );
        let warnings = imported.warnings.join("\n");
        for needle in ["`creds`", "renames the tag", "`sync[].schedule`"] {
            assert!(warnings.contains(needle), "{needle}: {warnings}");
        }
    }

    /// regclient's Kubernetes example wraps regsync.yml in a ConfigMap;
    /// YAML merge keys fill in entries; a `{{ env "X" }}` host becomes
    /// `x.invalid` with a warning; the most common target set becomes
    /// `defaults.targets` and only the odd image names its own.
    #[test]
    fn configmaps_merge_keys_env_hosts_and_default_targets() {
        let file = r#"---
apiVersion: v1
kind: ConfigMap
metadata: {name: regsync}
data:
  regsync.yml: |
    x-hub: &hub
      type: repository
      tags: {allow: ['1\.\d+']}
    sync:
      - <<: *hub
        source: docker.io/library/nginx
        target: '{{ env "MIRROR_HOST" }}/library/nginx'
      - <<: *hub
        source: docker.io/library/redis
        target: '{{ env "MIRROR_HOST" }}/library/redis'
      - source: quay.io/coreos/etcd:v3.5.0
        target: ghcr.io/acme/coreos/etcd:v3.5.0
        type: image
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: regsync}
"#;
        let imported = import(Format::Regsync, "k8s.yaml", file, None).unwrap();
        let plan = crate::plan::load("out.yaml", &imported.yaml)
            .unwrap_or_else(|p| panic!("{p}\n{}", imported.yaml));
        let queries: Vec<String> = plan
            .queries
            .iter()
            .map(|q| format!("{} → {}", q.repository, q.targets[0].1))
            .collect();
        assert_eq!(
            queries,
            [
                "docker.io/library/nginx → mirror-host.invalid/library/nginx",
                "docker.io/library/redis → mirror-host.invalid/library/redis"
            ],
            "{}",
            imported.yaml
        );
        assert_eq!(
            plan.queries[0]
                .filter
                .select(&["1.25".into(), "2.0".into()]),
            ["1.25"]
        );
        assert_eq!(
            plan.jobs[0].destinations[0].repository.to_string(),
            "ghcr.io/acme/coreos/etcd"
        );
        assert!(
            imported
                .yaml
                .contains("defaults:\n  targets: [mirror-host-invalid]"),
            "{}",
            imported.yaml
        );
        assert!(
            imported.yaml.contains("    targets: [ghcr-io]"),
            "{}",
            imported.yaml
        );
        assert!(
            imported.warnings.iter().any(|w| w
                .contains("`mirror-host.invalid`: set that target to the value of $MIRROR_HOST")),
            "{:#?}",
            imported.warnings
        );
    }
}
