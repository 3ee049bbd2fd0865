//! OCI image layout directories (`oci:DIR[:TAG]`), as
//! `docker buildx --output type=oci` and `skopeo copy oci:` write them.
//!
//! Digests are validated before any path is built from them, so nothing
//! outside `DIR/blobs/` is ever read; every byte read is checked against its
//! digest and size.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::digest::{Digest, Verifier};
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, MAX_MANIFEST_SIZE, Manifest};

/// The annotation that names a tag in `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Entry>,
}

/// An opened layout.
#[derive(Debug)]
pub struct Layout {
    dir: PathBuf,
    /// `dir` with symlinks resolved: every blob must resolve inside it.
    root: PathBuf,
    entries: Vec<Entry>,
    /// What refers to what among the manifests in `index.json`; read on
    /// first use (a layout has no referrers API to ask).
    subjects: tokio::sync::OnceCell<Subjects>,
}

/// Subject digest → its referrers: digest and referrers-list entry.
type Subjects = HashMap<Digest, Vec<(Digest, serde_json::Value)>>;

impl Layout {
    /// Opens `dir`, checking it is a layout (`oci-layout`, `index.json`).
    pub fn open(dir: &Path) -> Result<Layout> {
        let fail = |reason: String| Error::Layout {
            path: dir.display().to_string(),
            reason,
        };
        let marker = std::fs::read(dir.join("oci-layout"))
            .map_err(|e| fail(format!("no `oci-layout` file ({e})")))?;
        let marker: serde_json::Value =
            serde_json::from_slice(&marker).map_err(|_| fail("`oci-layout` is not JSON".into()))?;
        if marker
            .get("imageLayoutVersion")
            .and_then(|v| v.as_str())
            .is_none()
        {
            return Err(fail("`oci-layout` has no `imageLayoutVersion`".into()));
        }
        let index = std::fs::read(dir.join("index.json"))
            .map_err(|e| fail(format!("no `index.json` ({e})")))?;
        let index: Index =
            serde_json::from_slice(&index).map_err(|e| fail(format!("`index.json`: {e}")))?;
        let root = dir
            .canonicalize()
            .map_err(|e| fail(format!("cannot resolve the directory ({e})")))?;
        Ok(Layout {
            dir: dir.to_path_buf(),
            root,
            entries: index.manifests,
            subjects: tokio::sync::OnceCell::new(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tags named in `index.json`.
    pub fn tags(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter_map(|e| e.annotations.get(REF_NAME).map(String::as_str))
            .collect()
    }

    /// The descriptor for `tag`, or the only entry when no tag is given.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Descriptor> {
        let fail = |reason: String| Error::Layout {
            path: self.dir.display().to_string(),
            reason,
        };
        let entry = match tag {
            Some(tag) => self
                .entries
                .iter()
                .find(|e| {
                    e.annotations
                        .get(REF_NAME)
                        .is_some_and(|name| name == tag || name.ends_with(&format!(":{tag}")))
                })
                .ok_or_else(|| {
                    fail(format!("no tag `{tag}` (tags: {})", self.tags().join(", ")))
                })?,
            None => match self.entries.as_slice() {
                [only] => only,
                _ => {
                    return Err(fail(format!(
                        "holds {} images; name one as `oci:DIR:TAG` (tags: {})",
                        self.entries.len(),
                        self.tags().join(", ")
                    )));
                }
            },
        };
        Ok(Descriptor {
            media_type: entry.media_type.clone(),
            digest: entry.digest.clone(),
            size: entry.size,
            platform: None,
            urls: None,
        })
    }

    /// The manifests listed in `index.json` (tagged or not) whose `subject`
    /// is `digest`, as OCI layouts keep referrers: each digest with its
    /// entry for a referrers list. The layout is read for this once.
    pub async fn referrers(&self, digest: &Digest) -> Result<Vec<(Digest, serde_json::Value)>> {
        let subjects = self
            .subjects
            .get_or_try_init(|| async {
                let mut subjects: Subjects = HashMap::new();
                let mut seen = std::collections::HashSet::new();
                for entry in &self.entries {
                    if !seen.insert(&entry.digest) {
                        continue;
                    }
                    // An entry that cannot be read refers to nothing we
                    // copy; the image that needs it fails on its own.
                    let Ok(manifest) = self.manifest(&entry.digest, Some(&entry.media_type)).await
                    else {
                        continue;
                    };
                    if let Some(subject) = &manifest.subject {
                        subjects
                            .entry(subject.digest.clone())
                            .or_default()
                            .push((manifest.digest.clone(), manifest.referrer_entry()));
                    }
                }
                Ok::<_, Error>(subjects)
            })
            .await?;
        Ok(subjects.get(digest).cloned().unwrap_or_default())
    }

    /// The file holding `digest`. `Digest` only holds a known algorithm and
    /// lowercase hex (no `..`, no `/`), and a file that resolves outside the
    /// layout (a symlink out of it) is refused before it is read.
    fn blob_path(&self, digest: &Digest) -> Result<PathBuf> {
        let path = self
            .dir
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex());
        if let Ok(real) = path.canonicalize()
            && !real.starts_with(&self.root)
        {
            return Err(Error::Layout {
                path: self.dir.display().to_string(),
                reason: format!(
                    "blob `{digest}` resolves to `{}`, outside the layout; refused",
                    real.display()
                ),
            });
        }
        Ok(path)
    }

    /// Reads and checks a manifest; `media_type` is the descriptor's claim.
    pub async fn manifest(&self, digest: &Digest, media_type: Option<&str>) -> Result<Manifest> {
        let path = self.blob_path(digest)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.missing(digest, e))?;
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST_SIZE + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        Manifest::parse(Bytes::from(bytes), digest, media_type)
    }

    fn missing(&self, digest: &Digest, error: std::io::Error) -> Error {
        Error::Layout {
            path: self.dir.display().to_string(),
            reason: format!("blob `{digest}` is missing ({error})"),
        }
    }

    /// Copies a blob to `to`, checking digest and size.
    pub async fn copy_blob(&self, blob: &Descriptor, to: &Path) -> Result<()> {
        let path = self.blob_path(&blob.digest)?;
        let input = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.missing(&blob.digest, e))?
            .into_std()
            .await;
        let mut output = crate::spool::Writer::create(to).await?;
        let mut verifier = Verifier::new(blob.digest.clone(), Some(blob.size));
        let mut chunks = std::pin::pin!(crate::spool::read_chunks(input));
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| Error::io(format!("read {}", path.display()), e))?;
            verifier.update(&chunk);
            if verifier.overrun() {
                break;
            }
            output.write(chunk).await?;
        }
        output.finish().await?;
        Ok(verifier.finish(&format!("blob {} in {}", blob.digest, self.dir.display()))?)
    }
}

/// Splits `oci:DIR[:TAG]` into directory and tag; `None` if not an `oci:` source.
pub fn parse_source(input: &str) -> Option<(PathBuf, Option<String>)> {
    let rest = input.strip_prefix("oci:")?;
    match rest.rsplit_once(':') {
        Some((dir, tag)) if crate::reference::valid_tag(tag) && !dir.is_empty() => {
            Some((PathBuf::from(dir), Some(tag.to_string())))
        }
        _ => Some((PathBuf::from(rest), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oci_sources() {
        assert_eq!(parse_source("oci:out"), Some((PathBuf::from("out"), None)));
        assert_eq!(
            parse_source("oci:./out:v1.2"),
            Some((PathBuf::from("./out"), Some("v1.2".into())))
        );
        assert_eq!(
            parse_source("oci:/tmp/a/b:latest"),
            Some((PathBuf::from("/tmp/a/b"), Some("latest".into())))
        );
        assert_eq!(parse_source("ghcr.io/a/b:1"), None);
    }
}
