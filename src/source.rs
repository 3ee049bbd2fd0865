//! Where an image is read from: a registry repository or an OCI layout.
//!
//! Both give the same three things — resolve a tag to a digest, read a
//! manifest by digest, write a verified blob to a file — so the copy does not
//! care which it has. [`Image`] is the whole manifest tree of one image.

use std::collections::{HashMap, HashSet};

use crate::digest::Digest;
use crate::layout::Layout;
use crate::manifest::{Descriptor, Manifest};

mod read;
use crate::reference::Repository;

/// Index nesting we follow before calling the image hostile.
pub const MAX_DEPTH: usize = 4;

/// Most distinct manifests one image may have (a 1,024-entry index of
/// 1,024-entry indexes is not an image anyone pushes).
pub const MAX_IMAGE_MANIFESTS: usize = 4096;

/// Most manifest bytes one image may hold in memory, all manifests together.
pub const MAX_IMAGE_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

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

/// The descriptors of `list` not yet fetched, each digest once. A
/// manifest cannot list itself (its digest would have to be in its own
/// bytes), so `root` is left out too.
pub(crate) fn unique(
    list: &[Descriptor],
    fetched: &HashMap<Digest, Manifest>,
    root: &Digest,
) -> Vec<Descriptor> {
    let mut seen = HashSet::new();
    list.iter()
        .filter(|d| &d.digest != root && !fetched.contains_key(&d.digest))
        .filter(|d| seen.insert(d.digest.clone()))
        .cloned()
        .collect()
}

/// The manifests under `root`, each once, every child before each parent
/// that lists it (depth first, children first), whatever levels share them.
pub(crate) fn push_order(
    root: &Manifest,
    fetched: &mut HashMap<Digest, Manifest>,
) -> Vec<Manifest> {
    let mut order = Vec::with_capacity(fetched.len());
    let mut placed = HashSet::new();
    // (manifest, whether its children are already placed)
    let mut stack: Vec<(Digest, bool)> = root
        .children
        .iter()
        .rev()
        .map(|d| (d.digest.clone(), false))
        .collect();
    while let Some((digest, expanded)) = stack.pop() {
        if placed.contains(&digest) {
            continue;
        }
        if expanded {
            if let Some(manifest) = fetched.remove(&digest) {
                placed.insert(digest);
                order.push(manifest);
            }
            continue;
        }
        let Some(manifest) = fetched.get(&digest) else {
            continue;
        };
        let children: Vec<Digest> = manifest.children.iter().map(|d| d.digest.clone()).collect();
        stack.push((digest, true));
        stack.extend(children.into_iter().rev().map(|d| (d, false)));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{OCI_INDEX, OCI_MANIFEST};

    fn manifest(json: serde_json::Value) -> Manifest {
        let bytes = bytes::Bytes::from(json.to_string());
        Manifest::parse(bytes.clone(), &Digest::sha256(&bytes), None).unwrap()
    }

    fn leaf(seed: u8) -> Manifest {
        let config = Digest::sha256(&[seed]);
        manifest(serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 1},
            "layers": []
        }))
    }

    fn index(children: &[&Manifest]) -> Manifest {
        let entries: Vec<serde_json::Value> = children
            .iter()
            .map(|m| serde_json::json!({"mediaType": m.media_type, "digest": m.digest.to_string(), "size": m.bytes.len()}))
            .collect();
        manifest(
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
        )
    }

    /// Shared and repeated children are pushed once, each before every
    /// parent that lists it, whatever level they were found at.
    #[test]
    fn push_order_places_each_manifest_once_children_first() {
        let (a, b) = (leaf(1), leaf(2));
        let inner = index(&[&a, &a, &b]);
        let root = index(&[&a, &inner, &inner, &b]);
        let mut fetched: HashMap<Digest, Manifest> = [&a, &b, &inner]
            .into_iter()
            .map(|m| (m.digest.clone(), m.clone()))
            .collect();
        let order: Vec<Digest> = push_order(&root, &mut fetched)
            .into_iter()
            .map(|m| m.digest)
            .collect();
        assert_eq!(order.len(), 3, "{order:?}");
        let at = |m: &Manifest| order.iter().position(|d| *d == m.digest).unwrap();
        assert!(at(&a) < at(&inner) && at(&b) < at(&inner), "{order:?}");
    }

    #[test]
    fn unique_drops_repeats_the_fetched_and_the_root() {
        let (a, b) = (leaf(1), leaf(2));
        let root = index(&[&a, &a, &a, &b]);
        let mut fetched = HashMap::new();
        assert_eq!(unique(&root.children, &fetched, &root.digest).len(), 2);
        fetched.insert(a.digest.clone(), a.clone());
        let left = unique(&root.children, &fetched, &root.digest);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].digest, b.digest);
    }
}
