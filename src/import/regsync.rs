//! regclient's regsync (`regsync.yml`): its `sync` entries as pairs.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Pair, Selection, Warnings, any_of, reference, strings, text};

pub(super) fn regsync_pairs(
    document: &Value,
    warnings: &mut Warnings,
    registries: &mut BTreeMap<String, bool>,
) -> Vec<Pair> {
    if document.get("creds").is_some() {
        warnings.add("`creds` are not carried over: regmirror reads credentials from `docker login` (the Docker credential chain), `REGMIRROR_AUTH_<HOST>` or `GITHUB_TOKEN`");
        for cred in document["creds"].as_array().into_iter().flatten() {
            let Some(registry) = cred.get("registry").and_then(text) else {
                continue;
            };
            match cred.get("tls").and_then(text).as_deref() {
                Some("disabled") => {
                    registries.insert(registry, true);
                }
                Some("insecure") => warnings.add(format!(
                    "`{registry}`: `tls: insecure` (unverified TLS) has no equivalent; give the registry's CA instead"
                )),
                _ => {}
            }
        }
    }
    if let Some(defaults) = document.get("defaults").and_then(Value::as_object) {
        for key in defaults.keys() {
            warnings.add(format!("`defaults.{key}` is not carried over"));
        }
    }
    let mut pairs = Vec::new();
    for (i, entry) in document["sync"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let place = format!("sync[{i}]");
        for key in entry.as_object().into_iter().flat_map(|o| o.keys()) {
            if !["source", "target", "type", "tags"].contains(&key.as_str()) {
                warnings.add(format!("`sync[].{key}` is not carried over"));
            }
        }
        let (Some(source), Some(target)) = (
            entry.get("source").and_then(text),
            entry.get("target").and_then(text),
        ) else {
            warnings.add(format!("{place}: no `source` or `target`; skipped"));
            continue;
        };
        let (Some(source_ref), Some(target_ref)) =
            (reference(&source, warnings), reference(&target, warnings))
        else {
            warnings.add(format!(
                "{place}: `{source}` → `{target}` uses a Go template regmirror cannot evaluate; skipped"
            ));
            continue;
        };
        let kind = entry
            .get("type")
            .and_then(text)
            .unwrap_or_else(|| "repository".into());
        let selection = if kind == "image" {
            let tag = source_ref.tag.clone().unwrap_or_else(|| "latest".into());
            if source_ref.digest.is_some() {
                warnings.add(format!(
                    "{place}: `{source}` is pinned by digest without a tag to set; skipped"
                ));
                continue;
            }
            if target_ref.tag.as_ref().is_some_and(|t| *t != tag) {
                warnings.add(format!(
                    "{place}: `{source}` → `{target}` renames the tag, which mirror.yaml does not do; skipped"
                ));
                continue;
            }
            Selection::List(BTreeSet::from([tag]))
        } else {
            let tags = entry.get("tags");
            let allow = strings(tags.and_then(|t| t.get("allow")));
            let deny = strings(tags.and_then(|t| t.get("deny")));
            if let Some(extra) = tags.and_then(Value::as_object) {
                for key in extra
                    .keys()
                    .filter(|k| !["allow", "deny"].contains(&k.as_str()))
                {
                    warnings.add(format!("`sync[].tags.{key}` is not carried over"));
                }
            }
            // regsync anchors its patterns, as mirror.yaml does.
            Selection::Selector(
                Some(any_of(&allow).unwrap_or_else(|| ".*".into())),
                any_of(&deny),
                None,
            )
        };
        pairs.push(Pair {
            source: source_ref.repository.to_string(),
            selection,
            target: target_ref.repository.to_string(),
        });
    }
    pairs
}
