//! Manifests as raw bytes plus the little we read from them.
//!
//! A [`Manifest`] keeps the exact bytes it was fetched with; they are what we
//! push, so the digest never changes. We parse only what the copy needs: the
//! media type, the children of an index, and the blobs of an image.

pub mod platforms;

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Sent on every manifest request: registries rewrite or 404 what a client
/// does not say it accepts (distribution converts to schema1 without it).
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest we accept (distribution's own limit).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// Most children an index may have before we refuse it as hostile.
pub const MAX_INDEX_CHILDREN: usize = 1024;

/// A platform as an index entry states it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, `windows`, or `unknown` for attestations.
    #[serde(default)]
    pub os: String,
    /// `amd64`, `arm64`, `arm`, …
    #[serde(default)]
    pub architecture: String,
    /// `v7`, `v8`, … when given.
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// `os/architecture[/variant]`, as `docker --platform` and OCI write it.
    pub fn parse(text: &str) -> Option<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        let word = |part: &&str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(word) {
            return None;
        }
        Some(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    /// Whether this platform (of an image) is `wanted`: the same OS and
    /// architecture, and the variant when `wanted` names one (`arm64`
    /// without a variant is `arm64/v8`).
    pub fn satisfies(&self, wanted: &Platform) -> bool {
        let variant = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v.map(str::to_string),
        };
        self.os == wanted.os
            && self.architecture == wanted.architecture
            && (wanted.variant.is_none() || variant(self) == variant(wanted))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// A pointer to content: what the copy walks.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    /// The content's media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// The content's digest.
    pub digest: Digest,
    /// The content's size in bytes.
    pub size: u64,
    /// The platform, on index entries.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Where a foreign (non-distributable) layer is downloaded from.
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

impl Descriptor {
    /// True for a layer that clients fetch from its `urls`, not from the
    /// registry (Windows base layers): it is not copied, and those URLs are
    /// never followed; the manifest keeps pointing at them, as it did.
    pub fn is_foreign(&self) -> bool {
        self.urls.as_ref().is_some_and(|urls| !urls.is_empty())
    }
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(rename = "artifactType", default)]
    artifact_type: Option<String>,
    #[serde(default)]
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    signatures: Option<serde_json::Value>,
    #[serde(rename = "fsLayers", default)]
    fs_layers: Option<serde_json::Value>,
}

/// A manifest: its exact bytes, its digest and media type, and what it points at.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The media type to push it with.
    pub media_type: String,
    /// The digest of `bytes`.
    pub digest: Digest,
    /// The bytes exactly as fetched.
    pub bytes: Bytes,
    /// Child manifests, for an index.
    pub children: Vec<Descriptor>,
    /// Config and layers, for an image manifest; foreign layers are left
    /// out (see [`Descriptor::is_foreign`]).
    pub blobs: Vec<Descriptor>,
    /// The manifest this one refers to (a signature's image), OCI 1.1.
    pub subject: Option<Descriptor>,
    /// What a referrers list says of it: `artifactType`, else the config's
    /// media type (OCI 1.1 distribution spec, listing referrers).
    pub artifact_type: Option<String>,
    /// Its top-level annotations, which a referrers list repeats.
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Manifest {
    /// Checks `bytes` against `digest`, then reads what the copy needs.
    /// `content_type` is the registry's or the layout's claim, used only when
    /// the body does not say its own media type.
    pub fn parse(bytes: Bytes, digest: &Digest, content_type: Option<&str>) -> Result<Manifest> {
        let what = digest.to_string();
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(refuse(&what, "larger than 4 MiB"));
        }
        digest.verify(&bytes, None, &format!("manifest {what}"))?;
        let body: Body = serde_json::from_slice(&bytes)
            .map_err(|e| refuse(&what, &format!("not a JSON manifest ({e})")))?;
        if let Some(version) = body.schema_version.filter(|v| *v > 2) {
            return Err(refuse(
                &what,
                &format!("schemaVersion {version} is not supported (2 is)"),
            ));
        }
        if body.schema_version == Some(1) || body.signatures.is_some() || body.fs_layers.is_some() {
            return Err(refuse(
                &what,
                "Docker schema1 manifests are deprecated and not copied; re-push the image with a current client",
            ));
        }
        let content_type = content_type
            .map(|c| c.split(';').next().unwrap_or_default().trim())
            .filter(|c| {
                !c.is_empty() && *c != "application/json" && *c != "application/octet-stream"
            });
        let media_type = match (body.media_type, content_type) {
            (Some(m), _) => m,
            (None, Some(c)) => c.to_string(),
            (None, None) if body.manifests.is_some() => OCI_INDEX.to_string(),
            (None, None) => OCI_MANIFEST.to_string(),
        };
        let artifact_type = body
            .artifact_type
            .or_else(|| body.config.as_ref().map(|c| c.media_type.clone()));
        let (children, blobs) = match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => {
                let children = body.manifests.unwrap_or_default();
                if children.len() > MAX_INDEX_CHILDREN {
                    return Err(refuse(&what, "index has more than 1024 entries"));
                }
                (children, Vec::new())
            }
            OCI_MANIFEST | DOCKER_MANIFEST => {
                let config = body
                    .config
                    .ok_or_else(|| refuse(&what, "image manifest without `config`"))?;
                let mut blobs = vec![config];
                blobs.extend(
                    body.layers
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|layer| !layer.is_foreign()),
                );
                (Vec::new(), blobs)
            }
            other => {
                return Err(refuse(
                    &what,
                    &format!("media type `{other}` is not an image manifest or index"),
                ));
            }
        };
        Ok(Manifest {
            media_type,
            digest: digest.clone(),
            bytes,
            children,
            blobs,
            subject: body.subject,
            artifact_type,
            annotations: body.annotations,
        })
    }

    /// This manifest as an entry of a referrers list (and of an OCI 1.1
    /// fallback index): media type, digest, size, artifact type, annotations.
    pub fn referrer_entry(&self) -> serde_json::Value {
        let mut entry = serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest.as_str(),
            "size": self.bytes.len(),
        });
        if let Some(kind) = &self.artifact_type {
            entry["artifactType"] = kind.clone().into();
        }
        if let Some(annotations) = self.annotations.as_ref().filter(|a| !a.is_empty()) {
            entry["annotations"] = serde_json::Value::Object(annotations.clone());
        }
        entry
    }

    /// True for an OCI index or Docker manifest list.
    pub fn is_index(&self) -> bool {
        matches!(self.media_type.as_str(), OCI_INDEX | DOCKER_LIST)
    }
}

fn refuse(what: &str, reason: &str) -> Error {
    Error::Manifest {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_match_as_docker_writes_them() {
        let wanted = |text: &str| Platform::parse(text).unwrap();
        let arm64 = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: None,
        };
        assert!(arm64.satisfies(&wanted("linux/arm64")));
        assert!(arm64.satisfies(&wanted("linux/arm64/v8")));
        assert!(!arm64.satisfies(&wanted("linux/amd64")));
        let arm_v6 = Platform {
            architecture: "arm".into(),
            variant: Some("v6".into()),
            ..arm64.clone()
        };
        assert!(arm_v6.satisfies(&wanted("linux/arm")));
        assert!(!arm_v6.satisfies(&wanted("linux/arm/v7")));
        assert_eq!(wanted("linux/arm/v7").to_string(), "linux/arm/v7");
        for bad in ["linux", "linux/", "linux/arm/v7/x", "linux/a b", ""] {
            assert_eq!(Platform::parse(bad), None, "{bad}");
        }
    }

    fn fixture(path: &str) -> Option<Bytes> {
        let full = format!(
            "{}/../shared/fixtures/real/manifests/{path}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(full).ok().map(Bytes::from)
    }

    #[test]
    fn keeps_non_canonical_bytes_and_digest() {
        let Some(bytes) = fixture("containers-image/internal_manifest_testdata/v2s2.manifest.json")
        else {
            panic!("shared fixtures missing: run from a checkout with ../shared");
        };
        let digest: Digest =
            "sha256:20bf21ed457b390829cdbeec8795a7bea1626991fda603e0d01b4e7f60427e55"
                .parse()
                .unwrap();
        let manifest = Manifest::parse(bytes.clone(), &digest, None).unwrap();
        assert_eq!(manifest.media_type, DOCKER_MANIFEST);
        assert_eq!(manifest.bytes, bytes);
        assert!(manifest.blobs.len() >= 2);
    }

    /// A real manifest from `../shared/fixtures/real/manifests/dockerhub-raw`,
    /// by the start of its file name.
    pub(super) fn dockerhub_raw(prefix: &str) -> Manifest {
        let dir = format!(
            "{}/../shared/fixtures/real/manifests/dockerhub-raw",
            env!("CARGO_MANIFEST_DIR")
        );
        let entry = std::fs::read_dir(&dir)
            .expect("shared fixtures")
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .expect("fixture");
        let bytes = Bytes::from(std::fs::read(entry.path()).unwrap());
        let digest = Digest::sha256(&bytes);
        Manifest::parse(bytes, &digest, None).unwrap()
    }

    #[test]
    fn reads_postgres_index_with_attestations() {
        let index = dockerhub_raw("postgres-17.11-index");
        assert!(index.is_index());
        assert_eq!(index.children.len(), 16);
        let attestations = index
            .children
            .iter()
            .filter(|c| c.platform.as_ref().is_some_and(|p| p.os == "unknown"))
            .count();
        assert_eq!(attestations, 8);
    }

    #[test]
    fn refuses_schema1_garbage_and_wrong_digest() {
        for (path, needle) in [
            (
                "containers-image/internal_manifest_testdata/v2s1-unsigned.manifest.json",
                "schema1",
            ),
            (
                "containers-image/internal_manifest_testdata/non-json.manifest.json",
                "not a JSON manifest",
            ),
        ] {
            let bytes = fixture(path).unwrap_or_else(|| {
                panic!("fixture {path} missing: run with ../shared beside the checkout")
            });
            let digest = Digest::sha256(&bytes);
            let err = Manifest::parse(bytes, &digest, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{path}: {err}");
        }
        let wrong = Digest::sha256(b"other");
        let err = Manifest::parse(Bytes::from_static(b"{}"), &wrong, None).unwrap_err();
        assert!(err.is_mismatch());
    }
}

/// Properties over arbitrary bytes (proptest): manifests come from
/// registries and layouts.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn descriptor() -> impl Strategy<Value = serde_json::Value> {
        (
            prop_oneof![Just(OCI_MANIFEST), Just(OCI_INDEX), Just("x/y"), Just("")],
            "[0-9a-f]{64}",
            any::<u64>(),
            proptest::option::of(prop_oneof![Just("linux"), Just("unknown")]),
        )
            .prop_map(|(media_type, hex, size, os)| {
                serde_json::json!({
                    "mediaType": media_type, "digest": format!("sha256:{hex}"), "size": size,
                    "platform": os.map(|os| serde_json::json!({"os": os, "architecture": "amd64"})),
                })
            })
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let bytes = Bytes::from(bytes);
            let _ = Manifest::parse(bytes.clone(), &Digest::sha256(&bytes), None);
        }

        #[test]
        fn manifest_shaped_json_parses_without_panic_and_keeps_its_bytes(
            media_type in prop_oneof![Just(OCI_INDEX), Just(OCI_MANIFEST), Just(DOCKER_LIST), Just(DOCKER_MANIFEST), Just("text/plain")],
            entries in proptest::collection::vec(descriptor(), 0..6),
            schema in proptest::option::of(0u64..4),
        ) {
            let body = serde_json::json!({
                "schemaVersion": schema, "mediaType": media_type,
                "manifests": entries, "config": entries.first(), "layers": entries,
            });
            let bytes = Bytes::from(body.to_string());
            if let Ok(manifest) = Manifest::parse(bytes.clone(), &Digest::sha256(&bytes), None) {
                prop_assert_eq!(&manifest.bytes, &bytes);
                prop_assert!(manifest.children.len() <= MAX_INDEX_CHILDREN);
            }
        }
    }
}
