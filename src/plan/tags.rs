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
//! prefix is tolerated, tags `1.30` and `17` count as `1.30.0` and `17.0.0`,
//! a range may be written npm-style (`>=16 <18`, `>= 2.6.1`, `^1.2 || ^2`),
//! a bare version in a range is npm's (`1.30` is `1.30.x`, not Cargo's
//! `^1.30`), and pre-releases (`1.0.0-rc.1`) are left out unless the range
//! names one.

use std::collections::{BTreeMap, HashMap};

use regex::Regex;
use semver::{Version, VersionReq};

use crate::reference::valid_tag;

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
    pub github: Option<Releases>,
    /// The selector as written, for messages and `plan`.
    pub text: String,
}

fn invalid(what: String, reason: String) -> crate::Error {
    crate::Error::Invalid { what, reason }
}

/// `^(?:pattern)$`, compiled; the reason is the regex crate's, one line.
pub fn anchored(pattern: &str) -> crate::Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        let text = e.to_string();
        let reason = text.lines().last().unwrap_or("").trim();
        invalid(
            format!("pattern `{pattern}`"),
            format!("is not a regular expression: {reason}"),
        )
    })
}

/// An npm/Masterminds-style range as `semver` requirements, one per `||`
/// alternative: spaces between comparators become commas, spaces after an
/// operator and `v` prefixes go.
pub fn semver_range(range: &str) -> crate::Result<Vec<VersionReq>> {
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
                .ok_or_else(|| invalid(format!("`{range}`"), "is not a version range".into()))?,
        };
        alternatives.push(
            VersionReq::parse(&requirement).map_err(|e| {
                invalid(format!("`{range}`"), format!("is not a version range: {e}"))
            })?,
        );
    }
    Ok(alternatives)
}

/// The operator a bare version means, as npm, regsync and skopeo's
/// `images-by-semver` read it (not Cargo's caret): `1.30` is `1.30.x`,
/// `17` is `17.x`, `1.30.4` is exactly `1.30.4`; wildcards stay as written.
fn bare(version: &str) -> &'static str {
    let core = version.split(['-', '+']).next().unwrap_or(version);
    let parts: Vec<&str> = core.split('.').collect();
    if parts.iter().any(|p| matches!(*p, "*" | "x" | "X")) {
        ""
    } else if parts.len() >= 3 {
        "="
    } else {
        "~"
    }
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
        let operator = match (pending_operator.as_str(), operator) {
            ("", "") => bare(version),
            _ => operator,
        };
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

/// A project whose release tags select image tags.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Releases {
    /// The GitHub owner (user or organization).
    pub owner: String,
    /// The repository name.
    pub repo: String,
    /// Applied in order to each release tag.
    pub replace: Vec<(String, String)>,
}

impl Releases {
    /// `owner/repo`, with the replacements (default `+` → `-`).
    pub fn new(project: &str, replace: Option<&BTreeMap<String, String>>) -> crate::Result<Self> {
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let Some((owner, repo)) = project
            .split_once('/')
            .filter(|(o, r)| valid(o) && valid(r))
        else {
            return Err(invalid(
                format!("`{project}`"),
                "is not a GitHub project; write `owner/repo`, e.g. `k3s-io/k3s`".into(),
            ));
        };
        let replace = match replace {
            Some(map) => {
                if let Some(from) = map.keys().find(|from| from.is_empty()) {
                    return Err(invalid(
                        format!("replace: `{from}`"),
                        "is empty; nothing to replace".into(),
                    ));
                }
                map.iter().map(|(f, t)| (f.clone(), t.clone())).collect()
            }
            None => vec![("+".to_string(), "-".to_string())],
        };
        Ok(Releases {
            owner: owner.to_string(),
            repo: repo.to_string(),
            replace,
        })
    }

    /// A release tag as an image tag, or `None` if it cannot be one.
    pub fn image_tag(&self, release_tag: &str) -> Option<String> {
        let tag = self
            .replace
            .iter()
            .fold(release_tag.to_string(), |tag, (from, to)| {
                tag.replace(from, to)
            });
        valid_tag(&tag).then_some(tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_tags_become_image_tags() {
        let k3s = Releases::new("k3s-io/k3s", None).unwrap();
        assert_eq!(
            k3s.image_tag("v1.30.4+k3s1").as_deref(),
            Some("v1.30.4-k3s1")
        );
        assert_eq!(k3s.image_tag("v1.31.1").as_deref(), Some("v1.31.1"));
        // Not a tag even after replacing.
        assert_eq!(k3s.image_tag("release/1.0"), None);
        let mut map = BTreeMap::new();
        map.insert("+".to_string(), "_".to_string());
        let custom = Releases::new("o/r", Some(&map)).unwrap();
        assert_eq!(custom.image_tag("v1+k3s1").as_deref(), Some("v1_k3s1"));
        for bad in ["k3s", "/k3s", "k3s-io/", "a/b/c", "a b/c"] {
            assert!(Releases::new(bad, None).is_err(), "{bad}");
        }
        map.insert(String::new(), "x".to_string());
        assert!(Releases::new("o/r", Some(&map)).is_err());
    }

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
            // A bare version is a range as npm reads it, not Cargo's caret.
            ("1.30", "v1.30.9", true),
            ("1.30", "v1.31.0", false),
            ("17", "17.2", true),
            ("17", "18.0", false),
            ("1.30.4", "1.30.4", true),
            ("1.30.4", "1.30.5", false),
            ("1.30.x", "1.30.7", true),
            ("1.30.x", "1.31.0", false),
            ("1.29 || 1.31", "1.30.1", false),
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
