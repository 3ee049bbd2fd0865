//! `skopeo sync --src yaml`: its registries and images as pairs.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Pair, Selection, Warnings, strings, text};
use crate::reference::Reference;

/// skopeo's regex is unanchored (Go's `MatchString`); mirror.yaml's is
/// anchored: keep `^…$` as written, pad the open ends with `.*`.
fn skopeo_regex(pattern: &str) -> String {
    let (start, rest) = match pattern.strip_prefix('^') {
        Some(rest) => ("", rest),
        None => (".*", pattern),
    };
    let (body, end) = match rest.strip_suffix('$') {
        Some(body) if !body.ends_with('\\') => (body, ""),
        _ => (rest, ".*"),
    };
    format!("{start}(?:{body}){end}")
}

pub(super) fn skopeo_pairs(
    document: &Value,
    destination: &str,
    warnings: &mut Warnings,
    registries: &mut BTreeMap<String, bool>,
) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for (registry, entry) in document.as_object().into_iter().flatten() {
        for key in entry.as_object().into_iter().flat_map(|o| o.keys()) {
            match key.as_str() {
                "images" | "images-by-tag-regex" | "images-by-semver" => {}
                "credentials" => warnings.add("`credentials` are not carried over: regmirror reads credentials from `docker login` (the Docker credential chain) or `REGMIRROR_AUTH_<HOST>`"),
                "tls-verify" if entry[key] == Value::Bool(false) => {
                    registries.insert(registry.clone(), true);
                }
                "tls-verify" => {}
                other => warnings.add(format!("`{other}` is not carried over")),
            }
        }
        let mut add = |path: &str, selection: Selection, warnings: &mut Warnings| {
            let source = format!("{registry}/{path}");
            match source.parse::<Reference>() {
                Ok(reference) => pairs.push(Pair {
                    target: format!("{destination}/{}", reference.repository.path),
                    source: reference.repository.to_string(),
                    selection,
                }),
                Err(error) => warnings.add(format!("`{source}`: {error}; skipped")),
            }
        };
        for (path, tags) in entry
            .get("images")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let tags = strings(Some(tags));
            let (digests, tags): (Vec<String>, Vec<String>) =
                tags.into_iter().partition(|t| t.contains(':'));
            for digest in digests {
                warnings.add(format!(
                    "`{registry}/{path}@{digest}`: a digest without a tag to set on the targets; skipped"
                ));
            }
            let selection = if tags.is_empty() {
                Selection::Selector(Some(".*".into()), None, None)
            } else {
                Selection::List(tags.into_iter().collect())
            };
            add(path, selection, warnings);
        }
        for (path, pattern) in entry
            .get("images-by-tag-regex")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let pattern = text(pattern).unwrap_or_default();
            add(
                path,
                Selection::Selector(Some(skopeo_regex(&pattern)), None, None),
                warnings,
            );
        }
        for (path, range) in entry
            .get("images-by-semver")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let range = text(range).unwrap_or_default();
            add(path, Selection::Selector(None, None, Some(range)), warnings);
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skopeo_regex_is_anchored_like_skopeo_matches() {
        let cases = [
            ("^1\\.13\\.[12]-alpine-perl$", "1.13.1-alpine-perl", true),
            ("alpine", "3-alpine-x", true),
            ("^v1", "v1.2", true),
            ("^v1", "xv1", false),
        ];
        for (pattern, tag, expected) in cases {
            let regex = crate::plan::tags::anchored(&skopeo_regex(pattern)).unwrap();
            assert_eq!(regex.is_match(tag), expected, "{pattern} vs {tag}");
        }
    }
}
