//! An independent deep check of a target: plain HTTP, no regmirror code.
//! Every manifest under a tag and every blob they name is fetched and
//! hashed, so a tag pointing at an incomplete or wrong image is caught.

use futures::StreamExt;
use serde_json::Value;
use sha2::Digest as _;

use super::images::sha256;

pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// What a tag at a target is.
#[derive(Debug, PartialEq, Eq)]
pub enum TagState {
    /// No such tag.
    Absent,
    /// Every manifest and blob is there and matches its digest; the root digest.
    Complete(String),
    /// The tag exists but something under it is missing or wrong.
    Broken(String),
}

/// Checks `host/repo:tag` all the way down.
pub async fn deep_check(host: &str, repo: &str, tag: &str) -> TagState {
    let http = reqwest::Client::new();
    let base = format!("http://{host}/v2/{repo}");
    let response = http
        .get(format!("{base}/manifests/{tag}"))
        .header("accept", ACCEPT)
        .send()
        .await
        .unwrap();
    if response.status() == 404 {
        return TagState::Absent;
    }
    let bytes = response.bytes().await.unwrap();
    let root = sha256(&bytes);
    let mut pending = vec![(root.clone(), bytes.to_vec())];
    let mut visited = std::collections::HashSet::from([root.clone()]);
    while let Some((digest, bytes)) = pending.pop() {
        if sha256(&bytes) != digest {
            return TagState::Broken(format!("manifest {digest} has other bytes"));
        }
        let manifest: Value = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => return TagState::Broken(format!("manifest {digest}: {e}")),
        };
        for child in manifest["manifests"].as_array().into_iter().flatten() {
            let child_digest = child["digest"].as_str().unwrap_or_default();
            // Each manifest once, however often indexes repeat it.
            if !visited.insert(child_digest.to_string()) {
                continue;
            }
            let response = http
                .get(format!("{base}/manifests/{child_digest}"))
                .header("accept", ACCEPT)
                .send()
                .await
                .unwrap();
            if !response.status().is_success() {
                return TagState::Broken(format!(
                    "child manifest {child_digest}: {}",
                    response.status()
                ));
            }
            pending.push((
                child_digest.to_string(),
                response.bytes().await.unwrap().to_vec(),
            ));
        }
        let blobs = manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(manifest.get("config"));
        // Foreign layers live at their `urls`, not in the registry.
        for blob in blobs.filter(|b| b.get("urls").is_none()) {
            let blob_digest = blob["digest"].as_str().unwrap_or_default();
            let response = http
                .get(format!("{base}/blobs/{blob_digest}"))
                .send()
                .await
                .unwrap();
            if !response.status().is_success() {
                return TagState::Broken(format!("blob {blob_digest}: {}", response.status()));
            }
            // Streamed: a test blob may be a gigabyte.
            let (mut hasher, mut size) = (sha2::Sha256::new(), 0u64);
            let mut body = response.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.unwrap();
                hasher.update(&chunk);
                size += chunk.len() as u64;
            }
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if actual != blob_digest || Some(size) != blob["size"].as_u64() {
                return TagState::Broken(format!("blob {blob_digest} has other bytes"));
            }
        }
    }
    TagState::Complete(root)
}
