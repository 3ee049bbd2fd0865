//! Test images: multi-arch (OCI index or Docker manifest list), shared base
//! layers across repositories, buildkit-style attestation entries. Pushed
//! with plain HTTP requests or written as OCI layouts, never through
//! regmirror's own client.

use std::path::Path;

use serde_json::json;
use sha2::Digest as _;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Incompressible bytes from a seed (xorshift64*).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn seed_of(text: &str) -> u64 {
    text.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    })
}

/// What to generate.
#[derive(Clone)]
pub struct Spec {
    pub repo: String,
    pub tag: String,
    /// Docker media types instead of OCI.
    pub docker: bool,
    /// (architecture, variant).
    pub platforms: Vec<(&'static str, Option<&'static str>)>,
    /// Seed of the base layer shared across repositories.
    pub base: u64,
    pub layer_size: usize,
    /// Add an `unknown/unknown` attestation manifest per platform (OCI only).
    pub attestations: bool,
}

impl Spec {
    pub fn new(repo: &str, tag: &str, docker: bool) -> Spec {
        Spec {
            repo: repo.into(),
            tag: tag.into(),
            docker,
            platforms: vec![("amd64", None), ("arm64", None), ("arm", Some("v7"))],
            base: 1,
            layer_size: 64 * 1024,
            attestations: !docker,
        }
    }
}

/// A generated image: blobs, child manifests (children first), the root.
pub struct Generated {
    pub blobs: Vec<(String, Vec<u8>)>,
    /// (digest, media type, bytes).
    pub children: Vec<(String, String, Vec<u8>)>,
    pub root: (String, String, Vec<u8>),
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": sha256(bytes), "size": bytes.len()})
}

pub fn generate(spec: &Spec) -> Generated {
    let (manifest_type, config_type, layer_type, index_type) = if spec.docker {
        (
            DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            DOCKER_LIST,
        )
    } else {
        (
            OCI_MANIFEST,
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            OCI_INDEX,
        )
    };
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    let mut entries = Vec::new();
    for (arch, variant) in &spec.platforms {
        let platform_key = format!("{arch}{}", variant.unwrap_or(""));
        let base = random_bytes(
            spec.base * 1000 + seed_of(&platform_key) % 1000,
            spec.layer_size,
        );
        let repo_layer = random_bytes(
            seed_of(&format!("{}/{platform_key}", spec.repo)),
            spec.layer_size,
        );
        let tag_layer = random_bytes(
            seed_of(&format!("{}:{}/{platform_key}", spec.repo, spec.tag)),
            spec.layer_size / 4 + 17,
        );
        let config = serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux", "variant": variant,
            "config": {"Labels": {"repo": spec.repo, "tag": spec.tag}},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&base), sha256(&repo_layer), sha256(&tag_layer)]}
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": manifest_type,
            "config": descriptor(config_type, &config),
            "layers": [descriptor(layer_type, &base), descriptor(layer_type, &repo_layer), descriptor(layer_type, &tag_layer)]
        }))
        .unwrap();
        let mut platform = json!({"architecture": arch, "os": "linux"});
        if let Some(variant) = variant {
            platform["variant"] = json!(variant);
        }
        let mut entry = descriptor(manifest_type, &manifest);
        entry["platform"] = platform;
        entries.push(entry);
        let manifest_digest = sha256(&manifest);
        for blob in [config, base, repo_layer, tag_layer] {
            blobs.push((sha256(&blob), blob));
        }
        children.push((manifest_digest.clone(), manifest_type.to_string(), manifest));

        if spec.attestations {
            let statement = serde_json::to_vec(&json!({"_type": "https://in-toto.io/Statement/v0.1", "subject": [{"digest": {"sha256": manifest_digest.trim_start_matches("sha256:")}}]})).unwrap();
            let att_config = serde_json::to_vec(&json!({"architecture": "unknown", "os": "unknown", "rootfs": {"type": "layers", "diff_ids": [sha256(&statement)]}})).unwrap();
            let mut layer = descriptor("application/vnd.in-toto+json", &statement);
            layer["annotations"] =
                json!({"in-toto.io/predicate-type": "https://spdx.dev/Document"});
            let attestation = serde_json::to_vec(&json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": descriptor("application/vnd.oci.image.config.v1+json", &att_config),
                "layers": [layer]
            }))
            .unwrap();
            let mut entry = descriptor(OCI_MANIFEST, &attestation);
            entry["platform"] = json!({"architecture": "unknown", "os": "unknown"});
            entry["annotations"] = json!({"vnd.docker.reference.digest": manifest_digest, "vnd.docker.reference.type": "attestation-manifest"});
            entries.push(entry);
            blobs.push((sha256(&att_config), att_config));
            blobs.push((sha256(&statement), statement));
            children.push((sha256(&attestation), OCI_MANIFEST.to_string(), attestation));
        }
    }
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": index_type, "manifests": entries}),
    )
    .unwrap();
    Generated {
        blobs,
        children,
        root: (sha256(&index), index_type.to_string(), index),
    }
}

/// Pushes blobs and manifests with plain HTTP (monolithic uploads), no auth.
pub async fn push(registry_url: &str, repo: &str, tag: &str, image: &Generated) {
    let http = reqwest::Client::new();
    let mut pushed = std::collections::HashSet::new();
    for (digest, bytes) in &image.blobs {
        if pushed.insert(digest.clone()) {
            let size = bytes.len() as u64;
            push_blob(
                &http,
                registry_url,
                repo,
                digest,
                bytes.clone().into(),
                size,
            )
            .await;
        }
    }
    for (digest, media_type, bytes) in &image.children {
        put_manifest(&http, registry_url, repo, digest, media_type, bytes).await;
    }
    let (_, media_type, bytes) = &image.root;
    put_manifest(&http, registry_url, repo, tag, media_type, bytes).await;
}

/// An SBOM attached to `subject` the OCI 1.1 way (`subject`, an
/// `artifactType`, the empty config), as `oras attach` writes one: known
/// only by its digest, never tagged.
pub fn sbom_of(subject: &Generated) -> Generated {
    let (digest, media_type, bytes) = &subject.root;
    let empty = b"{}".to_vec();
    let document =
        format!(r#"{{"spdxVersion":"SPDX-2.3","name":"sbom of {digest}"}}"#).into_bytes();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/spdx+json",
        "config": descriptor("application/vnd.oci.empty.v1+json", &empty),
        "layers": [descriptor("application/spdx+json", &document)],
        "subject": {"mediaType": media_type, "digest": digest, "size": bytes.len()},
        "annotations": {"org.opencontainers.image.created": "2026-11-27T00:00:00Z"},
    })
    .to_string()
    .into_bytes();
    referrer(manifest, vec![empty, document])
}

/// A Notary Project signature of `subject` as `notation sign` 1.0 pushes
/// one: an image manifest whose config media type is
/// `application/vnd.cncf.notary.signature` (config `{}`), one JWS envelope
/// layer, and the `subject`; known only by its digest.
pub fn notation_signature_of(subject: &Generated) -> Generated {
    let (digest, media_type, bytes) = &subject.root;
    let empty = b"{}".to_vec();
    let envelope = format!(r#"{{"payload":"{digest}","signatures":[]}}"#).into_bytes();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.cncf.notary.signature", &empty),
        "layers": [descriptor("application/jose+json", &envelope)],
        "subject": {"mediaType": media_type, "digest": digest, "size": bytes.len()},
        "annotations": {"io.cncf.notary.x509chain.thumbprint#S256": "[\"ab12\"]"},
    })
    .to_string()
    .into_bytes();
    referrer(manifest, vec![empty, envelope])
}

/// A referrer's manifest and its blobs.
fn referrer(manifest: Vec<u8>, blobs: Vec<Vec<u8>>) -> Generated {
    Generated {
        blobs: blobs.into_iter().map(|b| (sha256(&b), b)).collect(),
        children: Vec::new(),
        root: (
            sha256(&manifest),
            "application/vnd.oci.image.manifest.v1+json".into(),
            manifest,
        ),
    }
}

/// Uploads one blob (`body`, `size` bytes) as `digest`: a POST for the
/// session, one monolithic PUT, over plain HTTP (not regmirror's client).
pub async fn push_blob(
    http: &reqwest::Client,
    registry_url: &str,
    repo: &str,
    digest: &str,
    body: reqwest::Body,
    size: u64,
) {
    let response = http
        .post(format!("{registry_url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "start upload");
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("{registry_url}{location}")
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let response = http
        .put(format!("{location}{separator}digest={digest}"))
        .header("content-length", size)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "upload {digest}");
}

pub async fn put_manifest(
    http: &reqwest::Client,
    registry_url: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) {
    let response = http
        .put(format!("{registry_url}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        201,
        "put manifest {repo}:{reference}: {}",
        response.text().await.unwrap_or_default()
    );
}

/// Writes the image as an OCI layout under `dir`, tagged `tag`.
pub fn write_layout(dir: &Path, tag: &str, image: &Generated) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let all = image
        .blobs
        .iter()
        .map(|(d, b)| (d, b))
        .chain(image.children.iter().map(|(d, _, b)| (d, b)))
        .chain(std::iter::once((&image.root.0, &image.root.2)));
    for (digest, bytes) in all {
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).unwrap();
    }
    std::fs::write(
        dir.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": image.root.1, "digest": image.root.0, "size": image.root.2.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag}
    }]});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
}

/// The raw manifest bytes at `host/repo:reference`, read by skopeo (the peer).
pub fn skopeo_raw(
    host: &str,
    repo: &str,
    reference: &str,
    credentials: Option<(String, String)>,
) -> Option<Vec<u8>> {
    let separator = if reference.starts_with("sha256:") {
        '@'
    } else {
        ':'
    };
    let mut command = std::process::Command::new("skopeo");
    command.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some((user, password)) = credentials {
        command.arg(format!("--creds={user}:{password}"));
    }
    command.arg(format!("docker://{host}/{repo}{separator}{reference}"));
    let output = command.output().expect("skopeo is installed");
    output.status.success().then_some(output.stdout)
}
