//! Generates the benchmark workload W into a registry and writes the configs
//! that mirror it (`bench/run` drives this; see docs/benchmark.md).
//!
//! W: `--repos` multi-arch repositories × `--tags` tags × 3 platforms
//! (amd64, arm64, arm/v7) × 3 gzip layers of `--layer-mib` incompressible
//! data, plus `--singles` single-arch repositories. Layer 0 comes from a pool
//! of `--base-pool` bases shared across repositories, layer 1 is shared by a
//! repository's tags, layer 2 is per tag. Even repositories use OCI media
//! types, odd ones Docker's. Pushed with plain HTTP, not regmirror's client.
//!
//! cargo run --release --example workload -- --registry HOST:PORT --out DIR
//!     --targets HOST:PORT,HOST:PORT,... [--repos 20 --tags 2 --singles 4
//!     --layer-mib 4 --layer-kib 0 --base-pool 4 --big-gib 0 --big-images 1
//!     --namespace bench]
//!
//! `--layer-kib N` (N > 0) makes layers N KiB instead (the scale workload:
//! many small single-arch images); `--namespace` is the repositories'
//! first path component. `--big-gib N` (N > 0) pushes `--big-images`
//! single-layer images instead (`bench/big0`, `bench/big1`, …), each with a
//! layer of N GiB of its own (`bench/bigblob`).
//!
//! Writes DIR/mirror.yaml (regmirror), DIR/skopeo.yaml (skopeo sync
//! --src yaml), DIR/ocync.yaml (`ocync sync -c`, plain HTTP, its cache in
//! DIR/ocync-cache) and prints `unique_blobs unique_bytes` on stdout.

#![allow(clippy::disallowed_macros)] // a program of its own, with its own output (see clippy.toml)

use std::collections::BTreeMap;
use std::io::Write as _;

use futures::StreamExt;
use serde_json::json;
use sha2::Digest as _;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const PLATFORMS: [(&str, Option<&str>); 3] =
    [("amd64", None), ("arm64", None), ("arm", Some("v7"))];

struct Args {
    registry: String,
    out: std::path::PathBuf,
    targets: Vec<String>,
    repos: usize,
    tags: usize,
    singles: usize,
    layer_mib: usize,
    layer_kib: usize,
    base_pool: usize,
    namespace: String,
    big_gib: u64,
    big_images: usize,
}

fn args() -> Args {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(key) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{key} needs a value"));
        map.insert(key.trim_start_matches("--").to_string(), value);
    }
    let number = |key: &str, default: usize| {
        map.get(key)
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("--{key}: not a number"))
            })
            .unwrap_or(default)
    };
    Args {
        registry: map.get("registry").expect("--registry HOST:PORT").clone(),
        out: map.get("out").expect("--out DIR").into(),
        targets: map
            .get("targets")
            .expect("--targets HOST:PORT,...")
            .split(',')
            .map(str::to_string)
            .collect(),
        repos: number("repos", 20),
        tags: number("tags", 2),
        singles: number("singles", 4),
        layer_mib: number("layer-mib", 4),
        layer_kib: number("layer-kib", 0),
        base_pool: number("base-pool", 4),
        namespace: map
            .get("namespace")
            .cloned()
            .unwrap_or_else(|| "bench".into()),
        big_gib: number("big-gib", 0) as u64,
        big_images: number("big-images", 1),
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Incompressible bytes from a seed (xorshift64*), gzip-wrapped.
fn gzip_layer(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut raw = Vec::with_capacity(len + 8);
    while raw.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        raw.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    raw.truncate(len);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

fn seed(parts: &[&str]) -> u64 {
    parts
        .join("/")
        .bytes()
        .fold(1469598103934665603u64, |h, b| {
            (h ^ b as u64).wrapping_mul(1099511628211)
        })
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": sha256(bytes), "size": bytes.len()})
}

/// One repository's content: blobs, then manifests in push order (children
/// first, tags last).
#[derive(Default)]
struct Repo {
    name: String,
    tags: Vec<String>,
    blobs: BTreeMap<String, Vec<u8>>,
    manifests: Vec<(String, String, Vec<u8>)>,
}

fn image_manifest(
    repo: &mut Repo,
    docker: bool,
    layers: Vec<Vec<u8>>,
    platform: (&str, Option<&str>),
    tag: &str,
) -> Vec<u8> {
    let (manifest_type, config_type, layer_type) = if docker {
        (
            DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    } else {
        (
            OCI_MANIFEST,
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    };
    let config = serde_json::to_vec(&json!({
        "architecture": platform.0, "os": "linux", "variant": platform.1,
        "config": {"Labels": {"repo": repo.name, "tag": tag}},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256(l)).collect::<Vec<_>>()}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": descriptor(config_type, &config),
        "layers": layers.iter().map(|l| descriptor(layer_type, l)).collect::<Vec<_>>()
    }))
    .unwrap();
    repo.blobs.insert(sha256(&config), config);
    for layer in layers {
        repo.blobs.insert(sha256(&layer), layer);
    }
    manifest
}

fn build(args: &Args) -> Vec<Repo> {
    let size = if args.layer_kib > 0 {
        args.layer_kib << 10
    } else {
        args.layer_mib << 20
    };
    let namespace = &args.namespace;
    let mut repos = Vec::new();
    for r in 0..args.repos + args.singles {
        let single = r >= args.repos;
        let docker = r % 2 == 1;
        let mut repo = Repo {
            name: if single {
                format!("{namespace}/single{}", r - args.repos)
            } else {
                format!("{namespace}/repo{r}")
            },
            ..Repo::default()
        };
        let platforms: &[(&str, Option<&str>)] = if single { &PLATFORMS[..1] } else { &PLATFORMS };
        for t in 0..args.tags {
            let tag = format!("v{}", t + 1);
            let mut entries = Vec::new();
            for &(arch, variant) in platforms {
                let key = format!("{arch}{}", variant.unwrap_or(""));
                let base = (r % args.base_pool.max(1)).to_string();
                let layers = vec![
                    gzip_layer(seed(&["base", &base, &key]), size),
                    gzip_layer(seed(&[&repo.name, &key]), size),
                    gzip_layer(seed(&[&repo.name, &tag, &key]), size),
                ];
                let manifest = image_manifest(&mut repo, docker, layers, (arch, variant), &tag);
                let manifest_type = if docker {
                    DOCKER_MANIFEST
                } else {
                    OCI_MANIFEST
                };
                let mut entry = descriptor(manifest_type, &manifest);
                entry["platform"] = json!({"architecture": arch, "os": "linux"});
                if let Some(variant) = variant {
                    entry["platform"]["variant"] = json!(variant);
                }
                entries.push(entry);
                if single {
                    repo.manifests
                        .push((tag.clone(), manifest_type.into(), manifest));
                } else {
                    repo.manifests
                        .push((sha256(&manifest), manifest_type.into(), manifest));
                }
            }
            if !single {
                let index_type = if docker { DOCKER_LIST } else { OCI_INDEX };
                let index = serde_json::to_vec(
                    &json!({"schemaVersion": 2, "mediaType": index_type, "manifests": entries}),
                )
                .unwrap();
                repo.manifests.push((tag.clone(), index_type.into(), index));
            }
            repo.tags.push(tag);
        }
        repos.push(repo);
    }
    repos
}

async fn push_blob(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    digest: &str,
    body: reqwest::Body,
) {
    let response = http
        .post(format!("http://{registry}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "start upload to {repo}");
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("http://{registry}{location}")
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let response = http
        .put(format!("{location}{separator}digest={digest}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "upload {digest} to {repo}");
}

async fn push_manifest(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) {
    let response = http
        .put(format!("http://{registry}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "manifest {repo}:{reference}");
}

/// A single-platform image `bench/big:v1` with one layer of `gib` GiB,
/// streamed (never in memory): hashed in one pass, pushed in a second.
async fn push_big(http: &reqwest::Client, registry: &str, repo: &str, seed: u64, gib: u64) -> u64 {
    let len = gib << 30;
    let piece = 1usize << 20;
    let chunk = move |i: u64| {
        let mut state = (i + 7 + (seed << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(piece);
        while out.len() < piece {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        bytes::Bytes::from(out)
    };
    let pieces = len / piece as u64;
    let mut hasher = sha2::Sha256::new();
    for i in 0..pieces {
        hasher.update(chunk(i));
    }
    let layer = format!("sha256:{}", hex::encode(hasher.finalize()));
    let stream = futures::stream::iter((0..pieces).map(move |i| Ok::<_, std::io::Error>(chunk(i))));
    push_blob(
        http,
        registry,
        repo,
        &layer,
        reqwest::Body::wrap_stream(stream),
    )
    .await;
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer]}})).unwrap();
    push_blob(
        http,
        registry,
        repo,
        &sha256(&config),
        config.clone().into(),
    )
    .await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": len}]
    }))
    .unwrap();
    push_manifest(http, registry, repo, "v1", OCI_MANIFEST, &manifest).await;
    len + config.len() as u64
}

/// The targets' names in every configuration written: `t1` … `tN`.
fn target_names(args: &Args) -> Vec<String> {
    (1..=args.targets.len()).map(|i| format!("t{i}")).collect()
}

/// `mirror.yaml`'s targets, each under `m/`, and the defaults sending
/// every image to all of them.
fn mirror_targets(args: &Args) -> String {
    let names = target_names(args);
    let mut section = String::from("version: 1\ntargets:\n");
    for (name, target) in names.iter().zip(&args.targets) {
        section.push_str(&format!("  {name}: {target}/m\n"));
    }
    section.push_str(&format!("defaults:\n  targets: [{}]\n", names.join(", ")));
    section
}

/// The same mirror for ocync (its configuration reference,
/// docs/src/content/configuration.md): every tag of each repository, to
/// each target under `m/`, over plain HTTP (an `http://` URL keeps its
/// scheme), with its cache where a run can remove it.
fn ocync_config(args: &Args, repositories: &[String]) -> String {
    let mut config = format!(
        "global:\n  cache_dir: {}\nregistries:\n  upstream:\n    url: http://{}\n    auth_type: anonymous\n",
        args.out.join("ocync-cache").display(),
        args.registry
    );
    let names = target_names(args);
    for (name, target) in names.iter().zip(&args.targets) {
        config.push_str(&format!(
            "  {name}:\n    url: http://{target}\n    auth_type: anonymous\n"
        ));
    }
    config.push_str(&format!(
        "target_groups:\n  all: [{}]\ndefaults:\n  source: upstream\n  targets: all\n  tags:\n    glob: \"*\"\nmappings:\n",
        names.join(", ")
    ));
    for repository in repositories {
        config.push_str(&format!("  - from: {repository}\n    to: m/{repository}\n"));
    }
    config
}

#[tokio::main]
async fn main() {
    let args = args();
    std::fs::create_dir_all(&args.out).unwrap();
    let http = reqwest::Client::new();
    if args.big_gib > 0 {
        let mut bytes = 0;
        let mut images = String::new();
        let mut skopeo = String::new();
        let mut repositories = Vec::new();
        for i in 0..args.big_images {
            let repo = format!("bench/big{i}");
            repositories.push(repo.clone());
            bytes += push_big(&http, &args.registry, &repo, i as u64, args.big_gib).await;
            images.push_str(&format!(
                "  - name: big{i}\n    source: {}/{repo}\n    tags: [v1]\n",
                args.registry
            ));
            skopeo.push_str(&format!("    {repo}: [v1]\n"));
        }
        let config = format!("{}images:\n{images}", mirror_targets(&args));
        std::fs::write(args.out.join("mirror.yaml"), config).unwrap();
        std::fs::write(
            args.out.join("ocync.yaml"),
            ocync_config(&args, &repositories),
        )
        .unwrap();
        std::fs::write(
            args.out.join("skopeo.yaml"),
            format!(
                "{}:\n  tls-verify: false\n  images:\n{skopeo}",
                args.registry
            ),
        )
        .unwrap();
        println!("{} {bytes}", 2 * args.big_images);
        return;
    }
    let repos = build(&args);
    let mut unique: BTreeMap<&str, usize> = BTreeMap::new();
    for repo in &repos {
        for (digest, bytes) in &repo.blobs {
            unique.insert(digest, bytes.len());
        }
    }
    let registry = args.registry.as_str();
    futures::stream::iter(
        repos
            .iter()
            .flat_map(|repo| repo.blobs.iter().map(move |(d, b)| (repo, d, b))),
    )
    .for_each_concurrent(4, |(repo, digest, bytes)| {
        let http = http.clone();
        async move { push_blob(&http, registry, &repo.name, digest, bytes.clone().into()).await }
    })
    .await;
    for repo in &repos {
        for (reference, media_type, bytes) in &repo.manifests {
            push_manifest(&http, registry, &repo.name, reference, media_type, bytes).await;
        }
    }

    let mut config = format!(
        "# The benchmark workload (examples/workload.rs).\n{}images:\n",
        mirror_targets(&args)
    );
    let mut skopeo = format!("{registry}:\n  tls-verify: false\n  images:\n");
    for repo in &repos {
        let tags = repo.tags.join(", ");
        config.push_str(&format!(
            "  - source: {registry}/{}\n    tags: [{tags}]\n",
            repo.name
        ));
        skopeo.push_str(&format!("    {}: [{tags}]\n", repo.name));
    }
    std::fs::write(args.out.join("mirror.yaml"), config).unwrap();
    std::fs::write(args.out.join("skopeo.yaml"), skopeo).unwrap();
    let names: Vec<String> = repos.iter().map(|repo| repo.name.clone()).collect();
    std::fs::write(args.out.join("ocync.yaml"), ocync_config(&args, &names)).unwrap();
    println!("{} {}", unique.len(), unique.values().sum::<usize>());
}
