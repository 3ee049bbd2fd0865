//! `mirror.yaml` as written: the file's shape, nothing resolved.
//!
//! Every struct denies unknown keys, and the values we check later carry
//! their place in the file ([`Spanned`]) so that [`crate::plan::resolve`] can
//! name the line and column of each problem. Parsing never stops at the
//! first semantic problem; only broken YAML does.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// The whole file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "mirror.yaml",
    description = "regmirror's configuration: what to mirror, from where, to where."
)]
pub struct ConfigFile {
    /// Format version; only `1` exists.
    #[schemars(with = "u32", range(min = 1, max = 1))]
    pub version: Spanned<u32>,
    /// Named destinations: name → `REGISTRY[/PREFIX]`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub targets: BTreeMap<String, Spanned<String>>,
    /// Per-registry behaviour, keyed by registry host as written.
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryEntry>,
    /// What images get unless they say otherwise.
    #[serde(default)]
    pub defaults: Defaults,
    /// The images to mirror.
    #[serde(default)]
    pub images: Vec<ImageEntry>,
}

/// `registries.<host>`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// Allow plain HTTP (loopback hosts are always allowed).
    #[serde(default)]
    pub insecure: bool,
    /// Requests in flight to this registry at once.
    #[serde(default)]
    #[schemars(with = "Option<usize>", range(min = 1))]
    pub concurrency: Option<Spanned<usize>>,
    /// Our own quota on metered requests (manifest GETs, which Docker Hub
    /// counts as pulls).
    #[serde(default)]
    pub rate_limit: Option<RateLimitEntry>,
    /// Our own pace of writes to this registry (PUTs: each blob's upload
    /// completion and each manifest). Defaults: GHCR 2000 a minute, ECR
    /// Public 10 a second (their documented limits).
    #[serde(default)]
    pub write_rate_limit: Option<RateLimitEntry>,
    /// Stop starting pulls from this registry when its `ratelimit-remaining`
    /// (or `x-ratelimit-remaining`) falls to this; the images left are
    /// deferred to the next run.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub min_remaining: Option<Spanned<u64>>,
    /// A PEM file of CA certificates to trust for this registry (relative
    /// to this file); implies TLS, even on a loopback host.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub ca: Option<Spanned<String>>,
    /// Require TLS even on a loopback host (which otherwise speaks plain HTTP).
    #[serde(default)]
    pub tls: bool,
    /// Amazon ECR Public: create a missing repository before its first push
    /// (CreateRepository in us-east-1, credentials from the AWS chain). The
    /// first path component of a target is the registry alias.
    #[serde(default)]
    pub create_repositories: bool,
    /// Amazon ECR: when no credentials are configured for this registry,
    /// get them from the AWS credential chain (GetAuthorizationToken), as
    /// `aws ecr get-login-password` would. `true` (ECR Public, or private
    /// ECR for an `<account>.dkr.ecr.<region>.amazonaws.com` host), `public`,
    /// `private` (region from the host, else the AWS configuration), or
    /// `false`. Default: true for ECR hosts.
    #[serde(default)]
    pub ecr_login: Option<EcrLoginEntry>,
    /// Idle time-out (`30s`, `2m`): a request or body that moves less than
    /// 1 KiB in this long has stalled and is retried; a registry that
    /// stalls 3 times in a row is marked down for the run. Never a limit
    /// on a transfer that keeps moving.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
}

/// `registries.<host>.rate_limit`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitEntry {
    /// Requests allowed per `per`.
    #[schemars(with = "u32", range(min = 1))]
    pub requests: Spanned<u32>,
    /// The window, as a duration: `1h`, `6h`, `30s`.
    #[schemars(with = "String")]
    pub per: Spanned<String>,
    /// Requests allowed at once before the pace applies (default: `requests`).
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub burst: Option<Spanned<u32>>,
}

/// `defaults`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Target names used by images without `targets` (without this, every
    /// target the file defines).
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub targets: Option<Vec<Spanned<String>>>,
    /// Copy what refers to each image: signatures, SBOMs, attestations
    /// (OCI referrers, cosign `sha256-…` tags). Default true.
    #[serde(default)]
    pub referrers: Option<bool>,
    /// Tags that never change once published (`true`, or a regular
    /// expression of such tags): a tag every target already has is not
    /// looked up at the source again. `sync --deep` and `verify` ignore it.
    #[serde(default)]
    #[schemars(with = "Option<ImmutableTags>")]
    pub immutable: Option<Spanned<ImmutableTags>>,
    /// Platforms (`os/arch[/variant]`) each image must publish: one that
    /// lacks any is failed, and nothing of it is pushed.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub require_platforms: Option<Vec<Spanned<String>>>,
    /// Platforms (`os/arch[/variant]`) to keep of each multi-platform
    /// image: targets get a new index holding only those (with their
    /// attestations), whose digest differs from the source's.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub platforms: Option<Vec<Spanned<String>>>,
}

/// `ecr_login`: on or off, or which ECR API to log in through.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EcrLoginEntry {
    /// `true`: as the host says (ECR Public unless a private ECR host); `false`: off.
    Flag(bool),
    /// `public` or `private`.
    Api(EcrApi),
}

/// Which ECR API issues a registry's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EcrApi {
    /// `ecr-public` (us-east-1).
    Public,
    /// `ecr`, in the registry's region.
    Private,
}

/// `immutable`: every tag, or the tags a regular expression matches.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ImmutableTags {
    /// `true`: every tag of the image; `false`: none.
    All(bool),
    /// The tags this regular expression matches (anchored at both ends).
    Matching(String),
}

/// One entry of `images`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// The handle for `--only` (default: the source's last path component).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// `REGISTRY/REPOSITORY` or `REGISTRY/REPOSITORY@sha256:…`.
    #[schemars(with = "String")]
    pub source: Spanned<String>,
    /// Tags to copy (or, for a pinned source, to set on the targets): a
    /// list, or a selector applied to the source's tags at run time.
    #[serde(default)]
    pub tags: Option<Tags>,
    /// Target names, instead of `defaults.targets` (or every target).
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub targets: Option<Vec<Spanned<String>>>,
    /// Path under each target prefix (default: the source repository path).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
    /// Copy what refers to this image, instead of `defaults.referrers`.
    #[serde(default)]
    pub referrers: Option<bool>,
    /// Immutable tags, instead of `defaults.immutable`.
    #[serde(default)]
    #[schemars(with = "Option<ImmutableTags>")]
    pub immutable: Option<Spanned<ImmutableTags>>,
    /// Platforms this image must publish, instead of
    /// `defaults.require_platforms`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub require_platforms: Option<Vec<Spanned<String>>>,
    /// Platforms to keep of this image, instead of `defaults.platforms`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub platforms: Option<Vec<Spanned<String>>>,
}

/// The JSON Schema of `mirror.yaml`, pretty-printed, for editors
/// (`# yaml-language-server: $schema=…`) and `regmirror schema`.
pub fn schema() -> String {
    let schema = schemars::schema_for!(ConfigFile);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
    text.push('\n');
    text
}

/// `images[].tags`: a list of tags, or a selector.
#[derive(Debug, JsonSchema)]
#[schemars(untagged)]
pub enum Tags {
    /// Exactly these tags.
    List(#[schemars(with = "Vec<String>")] Vec<Spanned<String>>),
    /// The source's tags this selects.
    Select(Box<TagSelector>),
}

/// A tag selector; each key narrows what the others picked: `regex`, then
/// `exclude`, then `semver`, then `latest`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagSelector {
    /// Tags matching this regular expression (anchored at both ends).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub regex: Option<Spanned<String>>,
    /// Leave out tags matching this regular expression (anchored).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub exclude: Option<Spanned<String>>,
    /// A version range, e.g. `>=16 <18` or `^1.2 || ^2`; a `v` prefix on tags is fine.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub semver: Option<Spanned<String>>,
    /// Only the newest N tags (in version order) of what the rest selected.
    #[serde(default)]
    #[schemars(with = "Option<usize>", range(min = 1))]
    pub latest: Option<Spanned<usize>>,
    /// `owner/repo`: take the tags of this GitHub project's releases (drafts
    /// and pre-releases left out) that the source has, instead of every
    /// source tag; the other keys narrow them further.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub github_releases: Option<Spanned<String>>,
    /// With `github_releases`: replacements applied to each release tag to
    /// get the image tag (default `{"+": "-"}`: k3s's release `v1.30.4+k3s1`
    /// is image tag `v1.30.4-k3s1`).
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub replace: Option<Spanned<BTreeMap<String, String>>>,
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Tags, D::Error> {
        struct TagsVisitor;
        impl<'de> serde::de::Visitor<'de> for TagsVisitor {
            type Value = Tags;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of tags, or a selector such as `{regex: 'v1\\..*', latest: 3}`")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Tags, A::Error> {
                let mut tags = Vec::new();
                while let Some(tag) = seq.next_element::<Spanned<String>>()? {
                    tags.push(tag);
                }
                Ok(Tags::List(tags))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Tags, A::Error> {
                TagSelector::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|s| Tags::Select(Box::new(s)))
            }
        }
        deserializer.deserialize_any(TagsVisitor)
    }
}

/// One thing wrong with the file, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, 0 when unknown.
    pub line: u64,
    /// 1-based column, 0 when unknown.
    pub column: u64,
    /// The key path, e.g. `images[3].source`.
    pub place: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: ", self.line, self.column)?;
        }
        if !self.place.is_empty() {
            write!(f, "{}: ", self.place)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {} problem(s)\n{}", .problems.len(), render(.file, .problems))]
pub struct Problems {
    /// The file's name as given.
    pub file: String,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

fn render(file: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {file}:{p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A problem at a spanned value.
pub fn problem_at<T>(
    value: &Spanned<T>,
    place: impl Into<String>,
    message: impl Into<String>,
) -> Problem {
    Problem {
        line: value.referenced.line(),
        column: value.referenced.column(),
        place: place.into(),
        message: message.into(),
    }
}

/// Parses YAML text into a [`ConfigFile`]; broken YAML and unknown keys are
/// one problem each, with the parser's line and column.
pub fn parse(file: &str, text: &str) -> Result<ConfigFile, Problems> {
    serde_saphyr::from_str::<ConfigFile>(text).map_err(|error| {
        let (line, column) = error
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let message = match error.without_snippet() {
            serde_saphyr::Error::Budget { breach, .. } => over_budget(breach),
            _ => {
                let message = error.to_string();
                // The rendered message repeats the position and adds a
                // snippet; keep the first line, without the position (the
                // Problem carries it).
                let first = message.lines().next().unwrap_or_default();
                let first = first.strip_prefix("error: ").unwrap_or(first);
                match first.split_once(": ") {
                    Some((position, rest)) if position.starts_with("line ") => rest.to_string(),
                    _ => first.to_string(),
                }
            }
        };
        Problems {
            file: file.to_string(),
            problems: vec![Problem {
                line,
                column,
                place: String::new(),
                message,
            }],
        }
    })
}

/// A parser limit (serde-saphyr's default budget, which keeps a hostile
/// file from taking the machine: alias bombs, deep nesting) in the user's
/// words, with what to do.
fn over_budget(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as Breach;
    let limits = serde_saphyr::Budget::default();
    let split = "split the images over several files (each run with `-c FILE`)";
    match breach {
        Breach::Nodes { .. } | Breach::Events { .. } | Breach::ScalarBytes { .. } => format!(
            "the file is larger than regmirror reads (more than {} YAML values: keys, values and list items); {split}",
            limits.max_nodes
        ),
        Breach::Depth { .. } => format!(
            "the file nests deeper than {} levels, more than mirror.yaml ever needs; look for a runaway `[` or `{{`",
            limits.max_depth
        ),
        Breach::Aliases { .. } | Breach::Anchors { .. } | Breach::AliasAnchorRatio { .. } => {
            "the file uses more YAML anchors and aliases (`&x`, `*x`) than regmirror expands, as an alias bomb does; write the repeated values out, or use `defaults:`".to_string()
        }
        Breach::MergeKeys { .. } => format!(
            "the file has more than {} merge keys (`<<`); use `defaults:` instead",
            limits.max_merge_keys
        ),
        Breach::Documents { .. } => format!(
            "the file holds more than {} YAML documents (`---`); mirror.yaml is one document",
            limits.max_documents
        ),
        other => format!("the file is beyond what regmirror reads ({other:?}); {split}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_parser_budget_is_refused_in_words() {
        let mut text = String::from("version: 1\ntargets: {a: ghcr.io/x}\nimages:\n");
        for i in 0..90_000 {
            text.push_str(&format!("  - {{source: docker.io/x/i{i}, tags: [v1]}}\n"));
        }
        let problems = parse("m.yaml", &text).unwrap_err().to_string();
        assert!(!problems.contains("budget breached"), "{problems}");
        assert!(!problems.contains("Nodes"), "{problems}");
        assert!(
            problems.contains("larger than regmirror reads (more than 250000 YAML values"),
            "{problems}"
        );
        assert!(
            problems.contains("split the images over several files"),
            "{problems}"
        );
    }

    #[test]
    fn unknown_keys_and_broken_yaml_name_the_line() {
        let unknown =
            "version: 1\ntargets: {a: ghcr.io/x}\nimages:\n  - source: docker.io/x\n    tag: [a]\n";
        let problems = parse("m.yaml", unknown).unwrap_err();
        assert_eq!(problems.problems[0].line, 5, "{problems}");
        assert!(problems.to_string().contains("tag"), "{problems}");

        let broken = "version: 1\nimages:\n  - source: [unclosed\n";
        let problems = parse("m.yaml", broken).unwrap_err();
        assert!(problems.problems[0].line >= 3, "{problems}");
    }
}
