//! The `platforms:` filter: an index cut down to the platforms a job wants.
//!
//! The one place regmirror writes a manifest it did not fetch. The kept
//! entries are the source's descriptors byte for byte, and so are the
//! child manifests and blobs they point at; only the index is new, so the
//! target's tag has another digest than the source's. BuildKit's
//! attestation entries (`unknown/unknown`, annotated with the digest of
//! the image they describe) stay with the platforms they describe.
//!
//! An OCI index made here says where it came from in two annotations (the
//! source index's digest and the platforms kept), so an up-to-date run
//! knows it from the target alone, without a metered GET at the source. A
//! Docker manifest list has no annotations in its schema; it is compared
//! by reading the source's list again.

use bytes::Bytes;
use serde_json::Value;

use super::{Manifest, OCI_INDEX, Platform};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// The annotation naming the source index an index was cut from.
pub const SOURCE_ANNOTATION: &str = "dev.regmirror.source.digest";

/// The annotation naming the platforms kept, as the config lists them.
pub const PLATFORMS_ANNOTATION: &str = "dev.regmirror.platforms";

/// BuildKit's annotation on an attestation entry: the image it describes.
const ATTESTED: &str = "vnd.docker.reference.digest";

/// `wanted` as the annotation writes it: `linux/amd64,linux/arm64`.
pub fn list(wanted: &[Platform]) -> String {
    wanted
        .iter()
        .map(Platform::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `root` with only the entries of `wanted` platforms and their
/// attestations. `root` itself when it is not an index, or when every
/// entry is kept. An index with none of the wanted platforms is an error.
pub fn select(root: &Manifest, wanted: &[Platform]) -> Result<Manifest> {
    if wanted.is_empty() || !root.is_index() {
        return Ok(root.clone());
    }
    let refuse = |reason: String| Error::Manifest {
        what: root.digest.to_string(),
        reason,
    };
    let mut index: Value = serde_json::from_slice(&root.bytes)
        .map_err(|e| refuse(format!("not a JSON index ({e})")))?;
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let platform_of = |entry: &Value| -> Option<Platform> {
        serde_json::from_value(entry.get("platform")?.clone()).ok()
    };
    let wanted_here = |entry: &Value| {
        platform_of(entry)
            .is_some_and(|p| p.os != "unknown" && wanted.iter().any(|wanted| p.satisfies(wanted)))
    };
    let kept: Vec<&str> = entries
        .iter()
        .filter(|entry| wanted_here(entry))
        .filter_map(|entry| entry.get("digest")?.as_str())
        .collect();
    if kept.is_empty() {
        let has: Vec<String> = entries
            .iter()
            .filter_map(platform_of)
            .filter(|p| p.os != "unknown")
            .map(|p| p.to_string())
            .collect();
        return Err(refuse(format!(
            "`platforms` keeps none of its platforms (wants {}; it has {})",
            list(wanted),
            if has.is_empty() {
                "none".into()
            } else {
                has.join(", ")
            }
        )));
    }
    let attests_kept = |entry: &Value| {
        entry
            .pointer(&format!("/annotations/{}", ATTESTED.replace('/', "~1")))
            .and_then(Value::as_str)
            .is_some_and(|digest| kept.contains(&digest))
    };
    let selected: Vec<Value> = entries
        .iter()
        .filter(|entry| wanted_here(entry) || attests_kept(entry))
        .cloned()
        .collect();
    if selected.len() == entries.len() {
        return Ok(root.clone());
    }
    index["manifests"] = Value::Array(selected);
    if root.media_type == OCI_INDEX {
        let annotations = index
            .as_object_mut()
            .expect("an index parsed as an object")
            .entry("annotations")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Value::Object(annotations) = annotations {
            annotations.insert(SOURCE_ANNOTATION.into(), root.digest.to_string().into());
            annotations.insert(PLATFORMS_ANNOTATION.into(), list(wanted).into());
        }
    }
    let bytes = serde_json::to_vec(&index).map_err(|e| refuse(format!("write the index ({e})")))?;
    let digest = Digest::sha256(&bytes);
    Manifest::parse(Bytes::from(bytes), &digest, Some(&root.media_type))
}

/// True if `target` is the index [`select`] makes from the source index
/// `source` for `wanted`, by its annotations (OCI indexes only).
pub fn made_from(target: &Manifest, source: &Digest, wanted: &[Platform]) -> bool {
    let said = |key: &str| {
        target
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    target.media_type == OCI_INDEX
        && said(SOURCE_ANNOTATION).as_deref() == Some(source.as_str())
        && said(PLATFORMS_ANNOTATION) == Some(list(wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::manifest::DOCKER_LIST;
    use crate::manifest::tests::dockerhub_raw as fixture;

    fn platforms(list: &[&str]) -> Vec<Platform> {
        list.iter().map(|p| Platform::parse(p).unwrap()).collect()
    }

    fn platforms_of(index: &Manifest) -> Vec<String> {
        let entry = |c: &super::super::Descriptor| {
            c.platform
                .as_ref()
                .map(Platform::to_string)
                .unwrap_or_default()
        };
        index.children.iter().map(entry).collect()
    }

    /// postgres:17.11 (OCI, 8 platforms, each with a BuildKit attestation):
    /// two platforms keep their two images and two attestations, as the
    /// source wrote those entries; the index says where it came from.
    #[test]
    fn an_oci_index_keeps_the_wanted_platforms_and_their_attestations() {
        let source = fixture("postgres-17.11-index");
        let wanted = platforms(&["linux/amd64", "linux/arm64"]);
        let cut = select(&source, &wanted).unwrap();
        assert_eq!(cut.media_type, OCI_INDEX);
        assert_ne!(cut.digest, source.digest);
        assert_eq!(
            platforms_of(&cut),
            [
                "linux/amd64",
                "unknown/unknown",
                "linux/arm64/v8",
                "unknown/unknown"
            ]
        );
        for child in &cut.children {
            assert!(
                source.children.contains(child),
                "{child:?} is not the source's"
            );
        }
        assert!(made_from(&cut, &source.digest, &wanted));
        assert!(!made_from(&cut, &cut.digest, &wanted));
        assert!(!made_from(&cut, &source.digest, &wanted[..1]));
        // The same source and platforms make the same bytes, run after run.
        assert_eq!(select(&source, &wanted).unwrap().bytes, cut.bytes);
    }

    /// hello-world (a Docker manifest list, served with escaped slashes):
    /// `linux/arm64` matches `arm64/v8`; the list stays a Docker list,
    /// without annotations (its schema has none).
    #[test]
    fn a_docker_list_is_cut_without_annotations() {
        let source = fixture("hello-world-latest-manifest-list");
        let cut = select(&source, &platforms(&["linux/arm64"])).unwrap();
        assert_eq!(cut.media_type, DOCKER_LIST);
        assert_eq!(platforms_of(&cut), ["linux/arm64/v8"]);
        assert!(cut.annotations.is_none());
        assert!(!made_from(
            &cut,
            &source.digest,
            &platforms(&["linux/arm64"])
        ));
    }

    /// Every entry kept, or not an index: the source's own bytes. None kept:
    /// an error naming what the source has.
    #[test]
    fn nothing_cut_is_the_source_and_nothing_kept_is_an_error() {
        let source = fixture("postgres-17.11-index");
        let all = [
            "linux/amd64",
            "linux/arm/v5",
            "linux/arm/v7",
            "linux/arm64",
            "linux/386",
            "linux/riscv64",
            "linux/ppc64le",
            "linux/s390x",
        ];
        let same = select(&source, &platforms(&all)).unwrap();
        assert_eq!(same.digest, source.digest);
        let image = fixture("alpine-amd64-manifest");
        assert_eq!(
            select(&image, &platforms(&["linux/arm64"])).unwrap().digest,
            image.digest
        );
        let error = select(&source, &platforms(&["windows/amd64"]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("wants windows/amd64; it has linux/amd64, linux/arm/v5"),
            "{error}"
        );
    }
}
