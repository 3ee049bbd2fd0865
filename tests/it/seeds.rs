//! Issue 6's features, each shown by one of the five seed scenarios in
//! `examples/<name>/mirror.yaml`, run on loopback registries standing in for
//! the real hosts (and local stand-ins for GitHub's and AWS's APIs).

use crate::support::check::{TagState, deep_check};
use crate::support::images::{self, Spec};
use crate::support::standin::{Recorded, Reply, StandIn};
use crate::support::{Auth, Registry, example_config, regmirror};

fn json_reply(status: u16, value: &serde_json::Value, headers: Vec<(String, String)>) -> Reply {
    let mut headers = headers;
    headers.push(("Content-Type".into(), "application/json".into()));
    (status, headers, value.to_string().into_bytes())
}

/// A GitHub API stand-in serving `owner/repo`'s releases, two to a page,
/// linked with `Link: rel="next"` as GitHub does; 401 without `token`.
fn github(
    project: &'static str,
    token: &'static str,
    releases: Vec<(&'static str, bool, bool)>,
) -> StandIn {
    StandIn::start(move |request: &Recorded, base: &str| {
        if request.header("authorization") != Some(&format!("Bearer {token}")) {
            return json_reply(
                401,
                &serde_json::json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}),
                vec![],
            );
        }
        if request.path() != format!("/repos/{project}/releases") {
            return json_reply(404, &serde_json::json!({"message": "Not Found"}), vec![]);
        }
        let page: usize = request
            .target
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix("page="))
            .and_then(|p| p.parse().ok())
            .unwrap_or(1);
        let per_page = 2;
        let items: Vec<serde_json::Value> = releases
            .iter()
            .enumerate()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|(i, (tag, draft, prerelease))| {
                let url = format!("{base}/repos/{project}/releases/{i}");
                serde_json::json!({
                    "url": url, "html_url": url, "assets_url": format!("{url}/assets"),
                    "upload_url": url, "tarball_url": null, "zipball_url": null,
                    "id": i + 1, "node_id": format!("RE_{i}"), "tag_name": tag,
                    "target_commitish": "master", "name": tag, "body": "",
                    "draft": draft, "prerelease": prerelease,
                    "created_at": "2026-11-01T00:00:00Z", "published_at": "2026-11-01T00:00:00Z",
                    "author": null, "assets": []
                })
            })
            .collect();
        let mut headers = Vec::new();
        if page * per_page < releases.len() {
            headers.push((
                "Link".into(),
                format!(
                    "<{base}/repos/{project}/releases?per_page=100&page={}>; rel=\"next\"",
                    page + 1
                ),
            ));
        }
        json_reply(200, &serde_json::Value::Array(items), headers)
    })
}

/// Seed 1, kubeflex: `sync --only k3s` takes the tags of k3s's GitHub
/// releases (`+` → `-`), drafts, pre-releases and releases without an
/// image left out, the semver range and `latest` applied; every platform
/// lands on both targets; `verify --only k3s` agrees. A bad token fails
/// the image naming GitHub and the fix.
#[tokio::test]
async fn kubeflex_k3s_tags_from_github_releases() {
    let docker_hub = Registry::start(Auth::None);
    let (ghcr, quay) = (Registry::start(Auth::None), Registry::start(Auth::None));
    let dir = tempfile::tempdir().unwrap();
    let mut digests = std::collections::HashMap::new();
    for (seed, tag) in [
        "v1.29.9-k3s1",
        "v1.30.4-k3s1",
        "v1.31.1-k3s1",
        "v1.31.2-k3s1",
        "v1.32.0-rc1-k3s1",
        "latest",
    ]
    .into_iter()
    .enumerate()
    {
        let spec = Spec {
            base: seed as u64 + 10,
            ..Spec::new("rancher/k3s", tag, false)
        };
        let image = images::generate(&spec);
        images::push(&docker_hub.url(), "rancher/k3s", tag, &image).await;
        digests.insert(tag, image.root.0.clone());
    }
    let releases = vec![
        ("v1.33.0+k3s1", false, false), // released, image not pushed yet
        ("v1.32.0-rc1+k3s1", false, true),
        ("v1.31.2+k3s1", true, false), // a draft
        ("v1.31.1+k3s1", false, false),
        ("v1.30.4+k3s1", false, false),
        ("v1.29.9+k3s1", false, false), // below the semver range
    ];
    let api = github("k3s-io/k3s", "ghp_test-token-K9", releases);
    example_config(
        "kubeflex",
        dir.path(),
        &[
            ("docker.io", &docker_hub.host),
            ("ghcr.io", &ghcr.host),
            ("quay.io", &quay.host),
        ],
    );
    let env = |token: &str| {
        vec![
            ("GITHUB_API_URL".to_string(), api.url.clone()),
            ("GITHUB_TOKEN".to_string(), token.to_string()),
        ]
    };
    let mark = docker_hub.mark();
    let run = regmirror(
        dir.path(),
        &["sync", "--only", "k3s", "--json", "report.json"],
        &env("ghp_test-token-K9"),
    );
    assert_eq!(run.code, 0, "{}", run.all());
    // Three pages of releases, each with the token.
    assert_eq!(api.requests().len(), 3, "{:#?}", api.requests());
    // `--only k3s`: postgres was not touched.
    assert_eq!(
        docker_hub.count_since(mark, "GET", |r| r.path.contains("postgres"))
            + docker_hub.count_since(mark, "HEAD", |r| r.path.contains("postgres")),
        0
    );
    for (registry, repo) in [
        (&ghcr, "kubestellar/kubeflex/k3s"),
        (&quay, "kubestellar/k3s"),
    ] {
        for tag in ["v1.31.1-k3s1", "v1.30.4-k3s1"] {
            assert_eq!(
                deep_check(&registry.host, repo, tag).await,
                TagState::Complete(digests[tag].clone()),
                "{repo}:{tag}"
            );
        }
        for tag in ["v1.29.9-k3s1", "v1.31.2-k3s1", "v1.32.0-rc1-k3s1", "latest"] {
            assert_eq!(
                deep_check(&registry.host, repo, tag).await,
                TagState::Absent,
                "{repo}:{tag}"
            );
        }
    }
    let verify = regmirror(
        dir.path(),
        &["verify", "--only", "k3s"],
        &env("ghp_test-token-K9"),
    );
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains("v1.31.1-k3s1"), "{}", verify.all());

    let bad = regmirror(dir.path(), &["sync", "--only", "k3s"], &env("ghp_wrong"));
    assert_eq!(bad.code, 1, "{}", bad.all());
    assert!(
        bad.stderr.contains("GitHub releases of `k3s-io/k3s`")
            && bad.stderr.contains("check `GITHUB_TOKEN`"),
        "{}",
        bad.stderr
    );
    assert!(!bad.all().contains("ghp_wrong"), "{}", bad.all());
}

fn fixture_layout(name: &str) -> std::path::PathBuf {
    crate::support::shared_fixtures()
        .expect("../shared/fixtures/real is missing: CI runs with ../shared beside the checkout")
        .join("oci-layouts")
        .join(name)
}

/// The digests a fallback index (`sha256-<hex>` tag) at a target lists, sorted.
async fn listed(host: &str, repo: &str, subject: &str) -> Vec<String> {
    let tag = subject.replace(':', "-");
    let response = reqwest::Client::new()
        .get(format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .header("accept", "application/vnd.oci.image.index.v1+json")
        .send()
        .await
        .unwrap();
    if response.status() == 404 {
        return Vec::new();
    }
    let index: serde_json::Value = response.json().await.unwrap();
    let mut digests: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    digests.sort();
    digests
}

/// Referrers, from the real layouts: regclient's testrepo (a fallback index
/// copied byte for byte; untagged SBOMs known only by their subject, for
/// which the target, distribution 2.8 without a referrers API, gets a new
/// fallback index; a referrer cycle) and oras's artifacts (a chain of
/// referrers; an index with a subject). `--no-referrers` copies none.
#[tokio::test]
async fn referrers_from_real_layouts_reach_a_registry_without_the_api() {
    let target = Registry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let testrepo = fixture_layout("regclient-testrepo");
    let artifacts = fixture_layout("oras-e2e-artifacts");
    let copy = |layout: &std::path::Path, tag: &str, repo: &str, extra: &[&str]| {
        let source = format!("oci:{}:{tag}", layout.display());
        let destination = format!("{}/{repo}:{tag}", target.host);
        let mut args = vec!["copy", source.as_str(), destination.as_str()];
        args.extend(extra);
        let run = regmirror(dir.path(), &args, &[]);
        assert_eq!(run.code, 0, "{tag}: {}", run.all());
        run
    };
    let h = &target.host;
    let sha = |hex: &str| {
        let path = std::fs::read_dir(testrepo.join("blobs/sha256"))
            .unwrap()
            .chain(std::fs::read_dir(artifacts.join("blobs/sha256")).unwrap())
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|name| name.starts_with(hex))
            .unwrap_or_else(|| panic!("no blob {hex}"));
        format!("sha256:{path}")
    };

    // v2: a1 (SBOM) and a2 (signature) refer to it; the layout keeps a
    // fallback index, which is copied as it is.
    copy(&testrepo, "v2", "t/testrepo", &[]);
    let v2 = sha("dfae8f425735");
    let fallback = v2.replace(':', "-");
    assert_eq!(
        deep_check(h, "t/testrepo", &fallback).await,
        TagState::Complete(sha("955b8a891713"))
    );
    for referrer in [sha("0484e93c23cd"), sha("741132f956e1")] {
        assert_eq!(
            deep_check(h, "t/testrepo", &referrer).await,
            TagState::Complete(referrer.clone())
        );
    }
    assert_eq!(
        listed(h, "t/testrepo", &v2).await,
        [sha("0484e93c23cd"), sha("741132f956e1")]
    );

    // v3: two SBOMs known only by their subject: a new fallback index.
    copy(&testrepo, "v3", "t/testrepo", &[]);
    let v3 = sha("6fe828b32b9b");
    let mut sboms = vec![sha("819ff4564a5d"), sha("ad460bc30198")];
    sboms.sort();
    assert_eq!(listed(h, "t/testrepo", &v3).await, sboms);
    for sbom in &sboms {
        assert_eq!(
            deep_check(h, "t/testrepo", sbom).await,
            TagState::Complete(sbom.clone())
        );
    }
    // Again: nothing changes, no new index is written.
    let mark = target.mark();
    copy(&testrepo, "v3", "t/testrepo", &[]);
    assert_eq!(target.count_since(mark, "PUT", |r| r.is_manifest()), 0);

    // `child` is the subject of `loop`, an index holding `child`: a cycle.
    copy(&testrepo, "child", "t/testrepo", &[]);
    let looped = sha("d69399e05204");
    assert_eq!(
        deep_check(h, "t/testrepo", &looped).await,
        TagState::Complete(looped.clone())
    );

    // oras: foobar ← e2c6633 ← 0cb8c4, a chain; multi ← 7679bc (an index
    // with a subject) and d37baf.
    copy(&artifacts, "foobar", "t/artifacts", &[]);
    assert_eq!(
        listed(h, "t/artifacts", &sha("fd6ed2f36b54")).await,
        [sha("e2c6633a7998")]
    );
    assert_eq!(
        listed(h, "t/artifacts", &sha("e2c6633a7998")).await,
        [sha("0cb8c4da7e9f")]
    );
    copy(&artifacts, "multi", "t/artifacts", &[]);
    let mut on_multi = vec![sha("7679bc22c33b"), sha("d37baf66300b")];
    on_multi.sort();
    assert_eq!(
        listed(h, "t/artifacts", &sha("e2bfc9cc6a84")).await,
        on_multi
    );
    assert_eq!(
        deep_check(h, "t/artifacts", &sha("7679bc22c33b")).await,
        TagState::Complete(sha("7679bc22c33b"))
    );

    // Turned off: the image only.
    copy(&testrepo, "v2", "t/plain", &["--no-referrers"]);
    assert_eq!(
        deep_check(h, "t/plain", "v2").await,
        TagState::Complete(v2.clone())
    );
    assert_eq!(deep_check(h, "t/plain", &fallback).await, TagState::Absent);
    assert_eq!(
        deep_check(h, "t/plain", &sha("0484e93c23cd")).await,
        TagState::Absent
    );
}

/// A cosign-style signature of `subject`: a manifest whose layer is a
/// simple-signing payload, with cosign's signature annotation.
pub(crate) fn cosign_signature(subject: &str) -> images::Generated {
    let payload = serde_json::json!({
        "critical": {"identity": {"docker-reference": "registry/image"},
                     "image": {"docker-manifest-digest": subject},
                     "type": "cosign container image signature"},
        "optional": null
    })
    .to_string()
    .into_bytes();
    let config = br#"{"architecture":"","config":{},"created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": images::sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "digest": images::sha256(&payload), "size": payload.len(),
                    "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQDtest"}}]
    })
    .to_string()
    .into_bytes();
    images::Generated {
        blobs: vec![
            (images::sha256(&config), config),
            (images::sha256(&payload), payload),
        ],
        children: vec![],
        root: (
            images::sha256(&manifest),
            "application/vnd.oci.image.manifest.v1+json".into(),
            manifest,
        ),
    }
}

/// An ECR Public API stand-in (AWS JSON 1.1, as the SDK speaks it):
/// CreateRepository succeeds, says a repository in `existing` exists, and
/// denies those in `denied`.
/// The password GetAuthorizationToken gives (user `AWS`).
pub(crate) const ECR_PASSWORD: &str = "ecr-login-Vq4";

pub(crate) fn ecr_public(
    existing: &'static [&'static str],
    denied: &'static [&'static str],
) -> StandIn {
    ecr_api(existing, denied, 12 * 3600)
}

/// The ECR APIs' stand-in, whose logins last `lifetime` seconds.
pub(crate) fn ecr_api(
    existing: &'static [&'static str],
    denied: &'static [&'static str],
    lifetime: u64,
) -> StandIn {
    StandIn::start(move |request: &Recorded, _base: &str| {
        let headers = vec![(
            "Content-Type".to_string(),
            "application/x-amz-json-1.1".to_string(),
        )];
        let action = request.header("x-amz-target").unwrap_or_default();
        // GetAuthorizationToken: ECR Public's answers one authorization,
        // private ECR's a list of them.
        let login = || {
            use base64::Engine as _;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("AWS:{ECR_PASSWORD}"));
            let expires = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + lifetime;
            serde_json::json!({"authorizationToken": token, "expiresAt": expires})
        };
        let login_denied = denied.contains(&"GetAuthorizationToken");
        if action.ends_with(".GetAuthorizationToken") && login_denied {
            let body = serde_json::json!({"__type": "AccessDeniedException",
                "message": "User is not authorized to perform: ecr-public:GetAuthorizationToken"});
            return (400, headers, body.to_string().into_bytes());
        }
        if action == "SpencerFrontendService.GetAuthorizationToken" {
            let body = serde_json::json!({"authorizationData": login()});
            return (200, headers, body.to_string().into_bytes());
        }
        if action == "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken" {
            let body = serde_json::json!({"authorizationData": [login()]});
            return (200, headers, body.to_string().into_bytes());
        }
        if action != "SpencerFrontendService.CreateRepository" {
            let body = serde_json::json!({"__type": "UnknownOperationException"});
            return (400, headers, body.to_string().into_bytes());
        }
        let asked: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        let name = asked["repositoryName"].as_str().unwrap().to_string();
        let (status, body) = if existing.contains(&name.as_str()) {
            (
                400,
                serde_json::json!({"__type": "RepositoryAlreadyExistsException",
                                      "message": format!("The repository with name '{name}' already exists")}),
            )
        } else if denied.contains(&name.as_str()) {
            (
                400,
                serde_json::json!({"__type": "AccessDeniedException",
                                      "message": "User is not authorized to perform: ecr-public:CreateRepository"}),
            )
        } else {
            (
                200,
                serde_json::json!({"repository": {
                "repositoryArn": format!("arn:aws:ecr-public::123456789012:repository/{name}"),
                "registryId": "123456789012", "repositoryName": name,
                "repositoryUri": format!("public.ecr.aws/acme/{name}"), "createdAt": 1.7e9}}),
            )
        };
        (status, headers, body.to_string().into_bytes())
    })
}

/// Seed 4, a Public ECR migration: twelve images, four of them pinned by
/// digest and signed (cosign `.sig` tags), to an ECR stand-in: each
/// repository created through the real AWS SDK before its first upload
/// (an existing one is fine, a denied one fails alone, naming the call),
/// manifests accepted though the registry leaves `Location` off, signatures
/// copied with their images, and a second run creates nothing.
#[tokio::test]
async fn public_ecr_migration_creates_repositories_first() {
    use crate::support::proxy::{Action, Proxy, Rule};
    let upstream = Registry::start(Auth::None);
    let ecr = Registry::start(Auth::None);
    // ECR answers manifest PUTs without `Location`.
    let proxy = Proxy::start(
        &ecr.host,
        vec![Rule::new(
            "PUT",
            "/manifests/",
            usize::MAX,
            Action::StripHeader("location"),
        )],
    );
    let api = ecr_public(&["library/nginx"], &["library/redis"]);
    let dir = tempfile::tempdir().unwrap();
    let tagged = [
        ("library/nginx", "1.27.2"),
        ("library/redis", "7.4.1"),
        ("library/postgres", "17.11"),
        ("library/busybox", "1.37.0"),
        ("library/alpine", "3.20.3"),
        ("library/traefik", "v3.2.0"),
        ("grafana/grafana", "11.3.0"),
        ("prom/prometheus", "v2.55.0"),
    ];
    let pinned = [
        ("projectsigstore/fulcio", "1111"),
        ("projectsigstore/rekor-server", "2222"),
        ("sigstore/cosign/cosign", "3333"),
        ("sigstore/timestamp-authority/server", "4444"),
    ];
    let small = |repo: &str, tag: &str, seed: u64| Spec {
        platforms: vec![("amd64", None)],
        attestations: false,
        layer_size: 4096,
        base: seed,
        ..Spec::new(repo, tag, false)
    };
    let mut expected = Vec::new();
    for (i, (repo, tag)) in tagged.iter().enumerate() {
        let image = images::generate(&small(repo, tag, 100 + i as u64));
        images::push(&upstream.url(), repo, tag, &image).await;
        expected.push((repo.to_string(), tag.to_string(), image.root.0.clone()));
    }
    let mut hosts: Vec<(String, String)> = vec![
        ("docker.io".into(), upstream.host.clone()),
        ("gcr.io".into(), upstream.host.clone()),
        ("ghcr.io".into(), upstream.host.clone()),
        ("public.ecr.aws".into(), proxy.host.clone()),
    ];
    let mut signatures = Vec::new();
    for (i, (repo, placeholder)) in pinned.iter().enumerate() {
        let image = images::generate(&small(repo, "signed", 200 + i as u64));
        images::push(&upstream.url(), repo, "signed", &image).await;
        let digest = image.root.0.clone();
        let signature = cosign_signature(&digest);
        let sig_tag = format!("{}.sig", digest.replace(':', "-"));
        images::push(&upstream.url(), repo, &sig_tag, &signature).await;
        signatures.push((repo.to_string(), sig_tag, signature.root.0.clone()));
        hosts.push((format!("sha256:{}", placeholder.repeat(16)), digest.clone()));
        let tag = ["v1.6.5", "v1.3.6", "v2.4.1", "v1.2.3"][i];
        expected.push((repo.to_string(), tag.to_string(), digest));
    }
    let hosts: Vec<(&str, &str)> = hosts
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    example_config("public-ecr-migration", dir.path(), &hosts);
    let env = vec![
        ("AWS_ENDPOINT_URL_ECR_PUBLIC".to_string(), api.url.clone()),
        (
            "AWS_ACCESS_KEY_ID".to_string(),
            "AKIDTESTREGMIRROR".to_string(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            "test-secret-Zq8".to_string(),
        ),
        ("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string()),
    ];
    let run = regmirror(dir.path(), &["sync"], &env);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains("ECR Public CreateRepository `library/redis`")
            && run.stderr.contains("AccessDenied"),
        "{}",
        run.stderr
    );
    assert!(!run.all().contains("test-secret-Zq8"));
    let created: Vec<Recorded> = api.requests();
    let names: Vec<String> = created
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            body["repositoryName"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(names.len(), 12, "one call per repository: {names:?}");
    for request in &created {
        assert!(
            request.header("authorization").is_some_and(|a| a
                .starts_with("AWS4-HMAC-SHA256 Credential=AKIDTESTREGMIRROR/")
                && a.contains("/us-east-1/ecr-public/")),
            "{:?}",
            request.header("authorization")
        );
    }
    assert!(
        proxy.applied(0) >= 11,
        "manifest PUTs answered without `Location`"
    );
    let seen = proxy.seen();
    for (request, name) in created.iter().zip(&names) {
        let first_write = seen.iter().find(|s| {
            s.method != "GET"
                && s.method != "HEAD"
                && s.path.starts_with(&format!("/v2/acme/{name}/"))
        });
        match first_write {
            Some(write) => assert!(
                request.at < write.at,
                "{name}: written before it was created"
            ),
            // Only the repository ECR refused to create saw no write.
            None => assert_eq!(name, "library/redis", "{name}: never written"),
        }
    }
    for (repo, tag, digest) in &expected {
        let state = deep_check(&ecr.host, &format!("acme/{repo}"), tag).await;
        if repo == "library/redis" {
            assert_eq!(state, TagState::Absent, "{repo}");
        } else {
            assert_eq!(state, TagState::Complete(digest.clone()), "{repo}:{tag}");
        }
    }
    for (repo, sig_tag, digest) in &signatures {
        assert_eq!(
            deep_check(&ecr.host, &format!("acme/{repo}"), sig_tag).await,
            TagState::Complete(digest.clone()),
            "{repo}:{sig_tag}"
        );
    }

    // Everything that could be written is there: no CreateRepository calls
    // for repositories that need no writes (redis still fails, and is asked again).
    let before = api.requests().len();
    let again = regmirror(dir.path(), &["sync"], &env);
    assert_eq!(again.code, 1, "{}", again.all());
    let asked: Vec<String> = api.requests()[before..]
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].contains("library/redis"), "{asked:?}");
}

/// Seed 3, DevOps-in-a-Box: a release pushes one OCI layout to Docker Hub
/// and GHCR with `copy oci:DIR`; both serve the layout's digest, byte for
/// byte; `verify` agrees; `verify --anonymous` finds GHCR private (it wants
/// credentials, as new GHCR packages do) and says how to fix it, exit 4.
#[tokio::test]
async fn devops_in_a_box_release_dual_push_and_anonymous_pulls() {
    let docker_hub = Registry::start(Auth::None);
    let issuer = crate::support::token::Issuer::start("release-bot", "ghcr-pass-T5m");
    let ghcr = Registry::start(Auth::Token(issuer));
    let dir = tempfile::tempdir().unwrap();
    let image = images::generate(&Spec::new("devops-in-a-box", "v1.4.0", false));
    let layout = dir.path().join("out");
    images::write_layout(&layout, "v1.4.0", &image);
    let env = crate::support::auth_env(&ghcr);
    let copy = regmirror(
        dir.path(),
        &[
            "copy",
            &format!("oci:{}:v1.4.0", layout.display()),
            &format!("{}/devopsinabox/devops-in-a-box:v1.4.0", docker_hub.host),
            &format!("{}/devops-in-a-box/devops-in-a-box:v1.4.0", ghcr.host),
        ],
        &env,
    );
    assert_eq!(copy.code, 0, "{}", copy.all());
    assert_eq!(
        deep_check(&docker_hub.host, "devopsinabox/devops-in-a-box", "v1.4.0").await,
        TagState::Complete(image.root.0.clone())
    );
    let raw = images::skopeo_raw(
        &ghcr.host,
        "devops-in-a-box/devops-in-a-box",
        "v1.4.0",
        ghcr.credentials(),
    )
    .expect("on GHCR");
    assert_eq!(raw, image.root.2, "GHCR serves the layout's bytes");

    example_config(
        "devops-in-a-box",
        dir.path(),
        &[("docker.io", &docker_hub.host), ("ghcr.io", &ghcr.host)],
    );
    let verify = regmirror(dir.path(), &["verify"], &env);
    assert_eq!(verify.code, 0, "{}", verify.all());
    let anonymous = regmirror(
        dir.path(),
        &["verify", "--anonymous", "--json", "report.json"],
        &env,
    );
    assert_eq!(anonymous.code, 4, "{}", anonymous.all());
    assert!(anonymous.stdout.contains("PRIVATE"), "{}", anonymous.all());
    assert!(
        anonymous.all().contains("Change visibility"),
        "{}",
        anonymous.all()
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    let message = report["results"][0]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("cannot be pulled without credentials"),
        "{report}"
    );
    // Made public (here: a registry without auth), the same check passes.
    let public = Registry::start(Auth::None);
    let copy = regmirror(
        dir.path(),
        &[
            "copy",
            &format!("oci:{}:v1.4.0", layout.display()),
            &format!("{}/devops-in-a-box/devops-in-a-box:v1.4.0", public.host),
        ],
        &[],
    );
    assert_eq!(copy.code, 0, "{}", copy.all());
    example_config(
        "devops-in-a-box",
        dir.path(),
        &[("docker.io", &docker_hub.host), ("ghcr.io", &public.host)],
    );
    let anonymous = regmirror(dir.path(), &["verify", "--anonymous"], &env);
    assert_eq!(anonymous.code, 0, "{}", anonymous.all());
}

/// Where containerd would fetch `repo:tag` from, following `hosts.toml` as
/// it does: each `[host]` URL in order (with `override_path`, the URL is the
/// `/v2` base), then `server`. The first that answers 200, and its digest.
async fn containerd_pull(hosts: &toml::Table, repo: &str, tag: &str) -> Option<(String, String)> {
    let http = reqwest::Client::new();
    let mut bases: Vec<String> = hosts
        .get("host")
        .and_then(|h| h.as_table())
        .map(|table| {
            table
                .iter()
                .map(|(url, host)| {
                    assert_eq!(host["override_path"].as_bool(), Some(true), "{url}");
                    url.clone()
                })
                .collect()
        })
        .unwrap_or_default();
    bases.push(format!("{}/v2", hosts["server"].as_str().unwrap()));
    for base in bases {
        let url = format!("{base}/{repo}/manifests/{tag}");
        let Ok(response) = http
            .head(&url)
            .header(
                "accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
        else {
            continue;
        };
        if response.status() == 200 {
            let digest = response.headers()["docker-content-digest"]
                .to_str()
                .unwrap();
            return Some((base, digest.to_string()));
        }
    }
    None
}

/// Seed 5, Giant Swarm: images from Docker Hub and quay.io mirrored into one
/// registry; `containerd-hosts` writes `docker.io/hosts.toml` and
/// `quay.io/hosts.toml` whose mirror host serves every image, with the
/// digest of the upstream, before containerd would fall back to the
/// upstream. The files use only the keys the real ones in the fixtures use.
/// An image whose `path:` breaks the mapping is named.
#[tokio::test]
async fn giantswarm_containerd_hosts_map_every_image_to_the_mirror() {
    let docker_hub = Registry::start(Auth::None);
    let quay = Registry::start(Auth::None);
    let gsoci = Registry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let images_of = [
        (&docker_hub, "alpine/socat", "1.7.4.4"),
        (&docker_hub, "fluxcd/flux-cli", "v2.6.4"),
        (&docker_hub, "fluxcd/flux-cli", "v2.7.5"),
        (&docker_hub, "ghostunnel/ghostunnel", "v1.10.0"),
        (&docker_hub, "library/busybox", "1.37.0"),
        (&quay, "coreos/etcd-operator", "v0.3.2"),
        (&quay, "prometheus/haproxy-exporter", "v0.9.0"),
        (&quay, "pusher/oauth2_proxy", "v5.1.0"),
    ];
    let mut digests = Vec::new();
    for (i, (registry, repo, tag)) in images_of.iter().enumerate() {
        let spec = Spec {
            base: 300 + i as u64,
            layer_size: 4096,
            ..Spec::new(repo, tag, i % 2 == 0)
        };
        let image = images::generate(&spec);
        images::push(&registry.url(), repo, tag, &image).await;
        digests.push(image.root.0.clone());
    }
    let config = example_config(
        "giantswarm",
        dir.path(),
        &[
            ("docker.io", &docker_hub.host),
            ("quay.io", &quay.host),
            ("gsoci.azurecr.io", &gsoci.host),
        ],
    );
    let sync = regmirror(dir.path(), &["sync"], &[]);
    assert_eq!(sync.code, 0, "{}", sync.all());
    let run = regmirror(dir.path(), &["containerd-hosts", "--out", "certs.d"], &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);

    let mut files: Vec<String> = std::fs::read_dir(dir.path().join("certs.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut expected = vec![docker_hub.host.clone(), quay.host.clone()];
    expected.sort();
    assert_eq!(files, expected);
    let mirror = format!("http://{}/v2/giantswarm", gsoci.host);
    for ((registry, repo, tag), digest) in images_of.iter().zip(&digests) {
        let path = dir
            .path()
            .join("certs.d")
            .join(&registry.host)
            .join("hosts.toml");
        let hosts: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        let (base, served) = containerd_pull(&hosts, repo, tag)
            .await
            .unwrap_or_else(|| panic!("{repo}:{tag} not found through {}", path.display()));
        assert_eq!(base, mirror, "{repo}:{tag} comes from the mirror");
        assert_eq!(&served, digest, "{repo}:{tag}");
        let capabilities = hosts["host"][&mirror]["capabilities"].as_array().unwrap();
        assert_eq!(capabilities.len(), 2);
    }

    // The same keys as real hosts.toml files (containerd's docs, k3s's output).
    let real = crate::support::shared_fixtures()
        .unwrap()
        .join("containerd-hosts");
    let mut known = std::collections::BTreeSet::new();
    let mut stack = vec![real];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "hosts.toml")
                && let Ok(table) = std::fs::read_to_string(&path)
                    .unwrap()
                    .parse::<toml::Table>()
            {
                known.extend(table.keys().cloned());
                for host in table
                    .get("host")
                    .and_then(|h| h.as_table())
                    .into_iter()
                    .flat_map(|t| t.values())
                {
                    known.extend(
                        host.as_table()
                            .into_iter()
                            .flat_map(|t| t.keys())
                            .map(|k| format!("host.{k}")),
                    );
                }
            }
        }
    }
    for file in &files {
        let hosts: toml::Table =
            std::fs::read_to_string(dir.path().join("certs.d").join(file).join("hosts.toml"))
                .unwrap()
                .parse()
                .unwrap();
        for key in hosts.keys().filter(|k| *k != "host") {
            assert!(
                known.contains(key),
                "`{key}` is not in any real hosts.toml: {known:?}"
            );
        }
        for host in hosts["host"].as_table().unwrap().values() {
            for key in host.as_table().unwrap().keys() {
                assert!(
                    known.contains(&format!("host.{key}")),
                    "host.{key}: {known:?}"
                );
            }
        }
    }

    // `path:` that drops the source path cannot be mapped: named, not silent.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("tags: [1.7.4.4]}", "tags: [1.7.4.4], path: socat}");
    std::fs::write(&config, text).unwrap();
    let run = regmirror(dir.path(), &["containerd-hosts", "--out", "certs2.d"], &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains("alpine/socat") && run.stderr.contains("not under the target prefix"),
        "{}",
        run.stderr
    );
}

/// `audit` on real workflows from the fixtures: `uses: docker://…` and
/// CircleCI `docker` images count, a workflow's `matrix` values and a
/// CircleCI `machine` image do not, `${CIRCLE_TAG}` references are
/// unresolved, `curlimages/curl` is implicit Docker Hub. (Counted by hand
/// from the files: ezapt ×3 and rclone ×5 and regsync ×1 in syncthing's
/// workflow; skopeo, curl and 4 templated retagger images in retagger's.)
#[test]
fn audit_counts_real_workflows_by_registry() {
    let fixtures = crate::support::shared_fixtures().expect("../shared/fixtures/real");
    let dir = tempfile::tempdir().unwrap();
    let run = regmirror(
        dir.path(),
        &["audit", fixtures.join("workflows").to_str().unwrap()],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains(
            "11 image references in 14 files (4 templated or unparsable, not counted)\nby registry: explicit docker.io 6, ghcr.io 3, gsoci.azurecr.io 1, implicit docker.io 1\n"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("curlimages/curl:latest  "),
        "{}",
        run.stdout
    );
    // syncthing's `matrix.include[].image` values (syncthing, relaysrv,
    // discosrv) would be listed as implicit Docker Hub references.
    for matrix_value in ["syncthing", "relaysrv", "discosrv"] {
        assert!(
            !run.stdout
                .lines()
                .any(|line| line.trim_start().starts_with(&format!("{matrix_value}  "))),
            "matrix values: {}",
            run.stdout
        );
    }
    assert!(
        !run.stdout.contains("ubuntu-2204"),
        "machine images: {}",
        run.stdout
    );
    // Without a mirror.yaml, no coverage section.
    assert!(!run.stdout.contains("not mirrored"), "{}", run.stdout);
}

/// Seed 2, raqeem: `audit` of its deploy files (Kubernetes, compose, Helm
/// values, a Dockerfile) flags the implicit Docker Hub references with
/// their lines, names what `mirror.yaml` does not mirror (postgres and
/// minio it does, under either spelling), and `--suggest` prints entries
/// that, added to the file, make a valid configuration covering them all.
/// Then the mirror runs and verifies on loopback registries.
#[tokio::test]
async fn raqeem_audit_then_mirror_and_verify() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/raqeem");
    let dir = tempfile::tempdir().unwrap();
    let deploy = root.join("deploy");
    let config = root.join("mirror.yaml");
    let audit = regmirror(
        dir.path(),
        &[
            "audit",
            deploy.to_str().unwrap(),
            "-c",
            config.to_str().unwrap(),
            "--suggest",
        ],
        &[],
    );
    assert_eq!(audit.code, 0, "{}", audit.all());
    let out = &audit.stdout;
    assert!(
        out.contains(
            "by registry: explicit docker.io 4, ghcr.io 3, implicit docker.io 3, gcr.io 1"
        ),
        "{out}"
    );
    for flagged in [
        "postgres:16.4  ",
        "redis:7.4  ",
        "minio/minio:RELEASE.2024-10-13T13-34-11Z  ",
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(flagged))
            .unwrap_or_else(|| panic!("{flagged}: {out}"));
        assert!(!line.ends_with(":0"), "{line}");
    }
    assert!(
        out.contains("k8s/api.yaml:36"),
        "the StatefulSet's line: {out}"
    );
    let section = out
        .split("not mirrored by the configuration (5):")
        .nth(1)
        .expect(out);
    for missing in [
        "docker.io/library/python:3.12-slim",
        "docker.io/library/redis:7.4",
        "ghcr.io/raqeem/api:v0.3.1",
    ] {
        assert!(section.contains(missing), "{missing}: {out}");
    }
    let listed = section.split("\n# mirror.yaml").next().unwrap();
    assert!(
        !listed.contains("postgres") && !listed.contains("minio"),
        "{out}"
    );
    // The suggestions complete the file.
    let suggested = out.split("would mirror them:\n").nth(1).expect(out);
    let text = std::fs::read_to_string(&config).unwrap() + suggested;
    std::fs::write(dir.path().join("completed.yaml"), text).unwrap();
    let check = regmirror(dir.path(), &["check", "-c", "completed.yaml"], &[]);
    assert_eq!(check.code, 0, "{}\n{suggested}", check.all());
    let again = regmirror(
        dir.path(),
        &["audit", deploy.to_str().unwrap(), "-c", "completed.yaml"],
        &[],
    );
    assert!(
        again
            .stdout
            .contains("not mirrored by the configuration (0):"),
        "{}",
        again.stdout
    );

    // Mirror and verify, Docker Hub and GHCR stood in for by loopback registries.
    let docker_hub = Registry::start(Auth::None);
    let ghcr = Registry::start(Auth::None);
    for (repo, tag) in [
        ("library/postgres", "16.4"),
        ("minio/minio", "RELEASE.2024-10-13T13-34-11Z"),
    ] {
        let image = images::generate(&Spec {
            layer_size: 4096,
            ..Spec::new(repo, tag, false)
        });
        images::push(&docker_hub.url(), repo, tag, &image).await;
    }
    example_config(
        "raqeem",
        dir.path(),
        &[("docker.io", &docker_hub.host), ("ghcr.io", &ghcr.host)],
    );
    let sync = regmirror(dir.path(), &["sync"], &[]);
    assert_eq!(sync.code, 0, "{}", sync.all());
    assert!(sync.stderr.contains("2 copied"), "{}", sync.stderr);
    let verify = regmirror(dir.path(), &["verify", "--deep"], &[]);
    assert_eq!(verify.code, 0, "{}", verify.all());
}
