//! Where an image is read from: a registry repository or an OCI layout.
//!
//! Both give the same three things — resolve a tag to a digest, read a
//! manifest by digest, write a verified blob to a file — so the copy does not
//! care which it has. [`Image`] is the whole manifest tree of one image.

use std::path::Path;

use futures::{StreamExt, TryStreamExt, stream};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::manifest::{Descriptor, Manifest};
use crate::reference::Repository;
use crate::registry::RegistryClient;

/// Index nesting we follow before calling the image hostile.
const MAX_DEPTH: usize = 4;

/// An image source.
#[derive(Debug)]
pub enum Source {
    /// A repository on a registry.
    Registry(Repository),
    /// An OCI image layout directory.
    Layout(Layout),
}

/// An image's manifests: the root and every manifest below it, verified.
#[derive(Debug)]
pub struct Image {
    /// The manifest the tag points at.
    pub root: Manifest,
    /// Child manifests, children before their parents (push order).
    pub children: Vec<Manifest>,
}

impl Image {
    /// Every blob of every image manifest, each once, in first-seen order.
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut seen = std::collections::HashSet::new();
        std::iter::once(&self.root)
            .chain(&self.children)
            .flat_map(|m| m.blobs.iter())
            .filter(|b| seen.insert(b.digest.clone()))
            .cloned()
            .collect()
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Registry(repository) => write!(f, "{repository}"),
            Source::Layout(layout) => write!(f, "oci:{}", layout.dir().display()),
        }
    }
}

impl Source {
    /// The digest `reference` (tag or digest) names, or `None` if absent.
    pub async fn resolve(
        &self,
        client: &RegistryClient,
        reference: &str,
    ) -> Result<Option<Digest>> {
        match self {
            Source::Registry(repository) => client.head_manifest(repository, reference).await,
            Source::Layout(layout) => match reference.parse::<Digest>() {
                Ok(digest) => Ok(Some(digest)),
                Err(_) => layout.resolve(Some(reference)).map(|d| Some(d.digest)),
            },
        }
    }

    /// Reads one manifest by digest; `media_type` is the parent's claim.
    pub async fn manifest(
        &self,
        client: &RegistryClient,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> Result<Manifest> {
        match self {
            Source::Registry(repository) => {
                client
                    .get_manifest(repository, digest.as_str(), Some(digest))
                    .await
            }
            Source::Layout(layout) => layout.manifest(digest, media_type).await,
        }
    }

    /// Writes the verified blob to `to`.
    pub async fn fetch_blob(
        &self,
        client: &RegistryClient,
        blob: &Descriptor,
        to: &Path,
    ) -> Result<()> {
        match self {
            Source::Registry(repository) => client.download_blob(repository, blob, to).await,
            Source::Layout(layout) => layout.copy_blob(blob, to).await,
        }
    }

    /// Reads the whole manifest tree under `digest`: every platform,
    /// attestation entries (`unknown/unknown`) included.
    pub async fn read_image(&self, client: &RegistryClient, digest: &Digest) -> Result<Image> {
        let root = self.manifest(client, digest, None).await?;
        let mut levels: Vec<Vec<Manifest>> = Vec::new();
        let mut next: Vec<Descriptor> = root.children.clone();
        while !next.is_empty() {
            if levels.len() == MAX_DEPTH {
                return Err(Error::Manifest {
                    what: digest.to_string(),
                    reason: format!("indexes nested deeper than {MAX_DEPTH}"),
                });
            }
            let fetched: Vec<Manifest> = stream::iter(next.iter())
                .map(|d| self.manifest(client, &d.digest, Some(d.media_type.as_str())))
                .buffered(8)
                .try_collect()
                .await?;
            for (descriptor, manifest) in next.iter().zip(&fetched) {
                let actual = manifest.bytes.len() as u64;
                if actual != descriptor.size {
                    return Err(Error::SizeMismatch {
                        digest: descriptor.digest.clone(),
                        expected: descriptor.size,
                        actual,
                    });
                }
            }
            next = fetched.iter().flat_map(|m| m.children.clone()).collect();
            levels.push(fetched);
        }
        // Deepest level first, so every child is pushed before its parent.
        let children = levels.into_iter().rev().flatten().collect();
        Ok(Image { root, children })
    }
}
