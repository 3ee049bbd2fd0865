//! Reading from a source: resolving a tag, reading manifests and the whole
//! manifest tree, fetching blobs, from a registry (through the client) or
//! an OCI layout. The source itself is data ([`super::Source`]).

use std::collections::HashMap;
use std::path::Path;

use futures::{StreamExt, TryStreamExt, stream};

use super::{
    Image, MAX_DEPTH, MAX_IMAGE_MANIFEST_BYTES, MAX_IMAGE_MANIFESTS, Source, push_order, unique,
};
use crate::digest::{Digest, DigestError};
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Manifest};
use crate::registry::meter::Meter;
use crate::registry::{Intent, RegistryClient};

impl Source {
    /// The digest `reference` (tag or digest) names, or `None` if absent.
    pub async fn resolve(
        &self,
        client: &RegistryClient,
        reference: &str,
    ) -> Result<Option<Digest>> {
        match self {
            Source::Registry(repository) => {
                client
                    .head_manifest(repository, reference, Intent::Read)
                    .await
            }
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

    /// Reads the manifest `reference` (a tag) names now, with its digest,
    /// in one request: what [`Source::resolve`] and [`Source::manifest`]
    /// would learn in two.
    pub async fn manifest_at(&self, client: &RegistryClient, reference: &str) -> Result<Manifest> {
        match self {
            Source::Registry(repository) => client.get_manifest(repository, reference, None).await,
            Source::Layout(layout) => {
                let digest = layout.resolve(Some(reference))?.digest;
                layout.manifest(&digest, None).await
            }
        }
    }

    /// Writes the verified blob to `to`, counting its bytes into `meter`.
    pub async fn fetch_blob(
        &self,
        client: &RegistryClient,
        blob: &Descriptor,
        to: &Path,
        meter: &Meter,
    ) -> Result<()> {
        match self {
            Source::Registry(repository) => client.download_blob(repository, blob, to, meter).await,
            Source::Layout(layout) => {
                layout.copy_blob(blob, to).await?;
                meter.add(blob.size);
                Ok(())
            }
        }
    }

    /// Reads the whole manifest tree under `digest`: every platform,
    /// attestation entries (`unknown/unknown`) included. Each digest is
    /// fetched once, however often indexes repeat it, and the tree may hold
    /// at most [`MAX_IMAGE_MANIFESTS`] manifests of [`MAX_IMAGE_MANIFEST_BYTES`]
    /// in all: memory is bounded by what is unique, not by what is listed.
    pub async fn read_image(&self, client: &RegistryClient, digest: &Digest) -> Result<Image> {
        let root = self.manifest(client, digest, None).await?;
        self.read_tree(client, root).await
    }

    /// [`Source::read_image`] from a root manifest already read.
    pub async fn read_tree(&self, client: &RegistryClient, root: Manifest) -> Result<Image> {
        let digest = &root.digest.clone();
        let hostile = |reason: String| Error::Manifest {
            what: digest.to_string(),
            reason,
        };
        let mut total = root.bytes.len() as u64;
        let mut fetched: HashMap<Digest, Manifest> = HashMap::new();
        let mut level: Vec<Descriptor> = unique(&root.children, &fetched, digest);
        let mut depth = 0;
        while !level.is_empty() {
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(hostile(format!("indexes nested deeper than {MAX_DEPTH}")));
            }
            if fetched.len() + level.len() > MAX_IMAGE_MANIFESTS {
                return Err(hostile(format!(
                    "more than {MAX_IMAGE_MANIFESTS} distinct manifests in one image"
                )));
            }
            let manifests: Vec<Manifest> = stream::iter(level.iter())
                .map(|d| self.manifest(client, &d.digest, Some(d.media_type.as_str())))
                .buffered(8)
                .try_collect()
                .await?;
            let mut next = Vec::new();
            for (descriptor, manifest) in level.iter().zip(manifests) {
                let actual = manifest.bytes.len() as u64;
                if actual != descriptor.size {
                    return Err(DigestError::SizeMismatch {
                        digest: descriptor.digest.clone(),
                        expected: descriptor.size,
                        actual,
                    }
                    .into());
                }
                total += actual;
                if total > MAX_IMAGE_MANIFEST_BYTES {
                    return Err(hostile(format!(
                        "its manifests pass {} MiB in all",
                        MAX_IMAGE_MANIFEST_BYTES >> 20
                    )));
                }
                next.extend(manifest.children.iter().cloned());
                fetched.insert(descriptor.digest.clone(), manifest);
            }
            level = unique(&next, &fetched, digest);
        }
        let children = push_order(&root, &mut fetched);
        Ok(Image { root, children })
    }
}
