//! Registry personalities: what Docker Hub, GHCR, ECR, Quay, Azure
//! Container Registry, Google Artifact Registry and Harbor do that CNCF
//! distribution 2.8 does not, played by the fault proxy (and the test token
//! service) in front of a real `docker-registry`, each behaviour with its
//! source. One end-to-end test per registry: a fresh target, a multi-arch
//! image with shared layers and its referrers, sync, sync again (nothing to
//! do), verify; and that registry's failures, each ending with the outcome
//! a user should see.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::seeds::cosign_signature;
use crate::support::check::{TagState, deep_check};
use crate::support::config::MirrorYaml;
use crate::support::images::{self, Generated, Spec, skopeo_raw};
use crate::support::proxy::{Action, Proxy, Rule};
use crate::support::token::Issuer;
use crate::support::{Auth, Registry, Run, auth_var_for, regmirror};

/// The image every personality gets: three platforms sharing a base layer,
/// and a cosign signature tag (`sha256-<hex>.sig`).
struct Signed {
    image: Generated,
    signature: Generated,
    sig_tag: String,
}

async fn signed_image(registry: &Registry, repo: &str, docker: bool) -> Signed {
    let image = images::generate(&Spec::new(repo, "v1", docker));
    images::push(&registry.url(), repo, "v1", &image).await;
    let signature = cosign_signature(&image.root.0);
    let sig_tag = format!("{}.sig", image.root.0.replace(':', "-"));
    images::push(&registry.url(), repo, &sig_tag, &signature).await;
    Signed {
        image,
        signature,
        sig_tag,
    }
}

impl Signed {
    /// `repo` at `host` serves the image and its signature byte for byte.
    fn served_by(&self, host: &str, repo: &str, credentials: &Option<(String, String)>) {
        for (reference, bytes) in [
            ("v1", &self.image.root.2),
            (self.sig_tag.as_str(), &self.signature.root.2),
        ] {
            assert_eq!(
                skopeo_raw(host, repo, reference, credentials.clone()).as_deref(),
                Some(bytes.as_slice()),
                "{host}/{repo}:{reference}"
            );
        }
    }
}

/// Answers `GET /v2/<name>/referrers/<digest>` for `registry` from its
/// own storage, as a registry with the OCI referrers API does (Docker Hub,
/// ECR, ACR; distribution 2.8 behind has none).
fn referrers_api(registry: &Registry) -> Rule {
    Rule::new(
        "GET",
        "/referrers/",
        usize::MAX,
        Action::Referrers(registry.storage()),
    )
}

/// `REGMIRROR_AUTH_<HOST>` for each (host, registry) pair.
fn auth_for(pairs: &[(&str, &Registry)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(host, registry)| {
            let (user, password) = registry.credentials().expect("a registry with credentials");
            (auth_var_for(host), format!("{user}:{password}"))
        })
        .collect()
}

fn sync(dir: &Path, args: &[&str], env: &[(String, String)]) -> (Run, Value) {
    let mut all = vec!["sync", "--json", "report.json"];
    all.extend_from_slice(args);
    let run = regmirror(dir, &all, env);
    let report = std::fs::read(dir.join("report.json"))
        .unwrap_or_else(|e| panic!("no report ({e}):\n{}", run.all()));
    (run, serde_json::from_slice(&report).unwrap())
}

/// Syncs again with `args` (`--only …`): every row present, no write at
/// any of `targets`.
fn nothing_left_to_do(dir: &Path, args: &[&str], env: &[(String, String)], targets: &[&Registry]) {
    let marks: Vec<usize> = targets.iter().map(|t| t.mark()).collect();
    let (again, report) = sync(dir, args, env);
    assert_eq!(again.code, 0, "{}", again.all());
    for result in report["results"].as_array().unwrap() {
        assert_eq!(result["outcome"], "present", "{result:#}");
    }
    for (target, mark) in targets.iter().zip(marks) {
        for method in ["PUT", "POST", "PATCH"] {
            assert_eq!(target.count_since(mark, method, |_| true), 0, "{method}");
        }
    }
}

/// `verify --deep` with `args` passes.
fn verified(dir: &Path, args: &[&str], env: &[(String, String)]) {
    let mut verify = vec!["verify", "--deep"];
    verify.extend_from_slice(args);
    let run = regmirror(dir, &verify, env);
    assert_eq!(run.code, 0, "{}", run.all());
}

/// AWS credentials for the SDK, pointed at the API stand-in at `api`; no
/// configuration file or instance metadata of the machine is read.
fn aws_env(api: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL_ECR_PUBLIC", api),
        ("AWS_ENDPOINT_URL_ECR", api),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDECRTEST"),
        ("AWS_SECRET_ACCESS_KEY", "ecr-secret-Hk2"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec()
}

/// The row of `tag` at `target`.
fn row_at<'a>(report: &'a Value, target: &str, tag: &str) -> &'a Value {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["target"] == target && r["tag"] == tag)
        .unwrap_or_else(|| panic!("no row {target} {tag}: {report:#}"))
}

/// The outcome and error message of `image`'s row for `tag`.
fn row(report: &Value, image: &str, tag: &str) -> (String, String) {
    let row = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["image"] == image && r["tag"] == tag)
        .unwrap_or_else(|| panic!("no row {image}:{tag}: {report:#}"));
    (
        row["outcome"].as_str().unwrap().to_string(),
        row["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Docker Hub, as a source and as a target:
/// - a token service at a separate realm (`auth.docker.io`), whose tokens
///   expire (300 s there, 1 s here: the run outlives them);
/// - a pull-only scope on a repository that does not exist yet grants
///   nothing, so a HEAD there is 401, not 404 (jupyterhub/binderhub#1664,
///   distribution#1291);
/// - a name of more than two components is refused by the token service
///   with 400 `invalid repository name` (google/go-containerregistry#1687);
/// - `ratelimit-limit` / `ratelimit-remaining: N;w=21600` on manifest GETs
///   and HEADs (Docker's "Docker Hub rate limit" documentation; the
///   fixtures' real responses);
/// - blob GETs redirected (307) to a CDN on another host with a signed
///   query (`production.cloudflare.docker.com`), which must get no
///   credentials;
/// - upload `Location`s absolute with a `_state` query (distribution, which
///   Docker Hub runs, does this itself).
#[tokio::test]
async fn docker_hub() {
    let staging = Registry::start(Auth::None);
    let signed = signed_image(&staging, "library/app", true).await;
    let hub = Registry::start(Auth::Token(Issuer::start_docker_hub(
        "hubuser",
        "hub-pass-Z1k",
        1,
    )));
    let cdn_store = Registry::start(Auth::None);
    let cdn_copy = signed_image(&cdn_store, "library/app", true).await;
    assert_eq!(cdn_copy.image.root.0, signed.image.root.0);
    // A slow CDN: the run outlives the target's one-second tokens.
    let cdn = Proxy::start(
        &cdn_store.host,
        vec![Rule::new(
            "GET",
            "/blobs/",
            usize::MAX,
            Action::Delay(Duration::from_millis(400)),
        )],
    );
    let ratelimit: crate::support::proxy::HeaderFn = Arc::new(|n| {
        vec![
            ("ratelimit-limit".into(), "100;w=21600".into()),
            (
                "ratelimit-remaining".into(),
                format!("{};w=21600", 90usize.saturating_sub(n)),
            ),
            ("docker-ratelimit-source".into(), "203.0.113.7".into()),
        ]
    });
    let hub_front = Proxy::start(
        &hub.host,
        vec![
            Rule::new(
                "GET",
                "/blobs/sha256:",
                usize::MAX,
                Action::RedirectTo {
                    host: cdn.host.clone(),
                    query: "expires=1767225600&signature=cdn-signed".into(),
                },
            ),
            Rule::new("", "/manifests/", usize::MAX, Action::Headers(ratelimit)),
        ],
    );
    let target = Registry::start(Auth::Token(Issuer::start_docker_hub(
        "pusher",
        "push-pass-Y2m",
        1,
    )));
    let dir = tempfile::tempdir().unwrap();
    // Seed the source: Docker Hub holds the image and its signature.
    let seed_env = auth_for(&[(&hub.host, &hub)]);
    for reference in ["v1", signed.sig_tag.as_str()] {
        let seeded = regmirror(
            dir.path(),
            &[
                "copy",
                "--no-referrers",
                &format!("{}/library/app:{reference}", staging.host),
                &format!("{}/library/app:{reference}", hub.host),
            ],
            &seed_env,
        );
        assert_eq!(seeded.code, 0, "{}", seeded.all());
    }

    let source = format!("{}/library/app", hub_front.host);
    MirrorYaml::new()
        .target("hub", &format!("{}/acmemirror", target.host))
        .image_with("app", &source, "[v1]", "    path: app\n")
        // Three components on Docker Hub: the token service refuses it.
        .image_with("deep", &source, "[v1]", "    path: library/app\n")
        .write(dir.path());
    let env = auth_for(&[(&hub_front.host, &hub), (&target.host, &target)]);
    let hub_blob_gets = || {
        hub.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.is_blob())
            .count()
    };
    let before = hub_blob_gets();

    let (run, report) = sync(dir.path(), &[], &env);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(row(&report, "app", "v1").0, "copied", "{}", run.all());
    let (outcome, message) = row(&report, "deep", "v1");
    assert_eq!(outcome, "failed");
    assert!(
        message.contains("answered 400: {\"details\":\"invalid repository name\"}")
            && message.contains("set `path:`"),
        "{message}"
    );
    // The signature came along, by tag.
    signed.served_by(&target.host, "acmemirror/app", &target.credentials());
    // Every blob came from the CDN, each once; the registry served none.
    assert_eq!(hub_blob_gets(), before, "blob GETs reached the registry");
    let cdn_gets = cdn.seen().iter().filter(|s| s.method == "GET").count();
    let unique = signed.image.blobs.len() + signed.signature.blobs.len();
    assert_eq!(cdn_gets, unique, "each blob from the CDN once");

    // Tokens lasting a second were fetched again as they expired, and the
    // run did not notice.
    let scopes = target.issuer().unwrap().scopes_requested();
    let push = "repository:acmemirror/app:pull,push";
    assert!(
        scopes.iter().filter(|s| s.contains(push)).count() >= 2,
        "{scopes:#?}"
    );

    // Up to date: nothing written, and no metered GET at Docker Hub.
    let mark = hub.mark();
    nothing_left_to_do(dir.path(), &["--only", "app"], &env, &[&target]);
    assert_eq!(hub.count_since(mark, "GET", |r| r.is_manifest()), 0);
    verified(dir.path(), &["--only", "app"], &env);
}

/// A config mirroring `<source>/upstream/app:v1` to `target`, an ECR Public
/// stand-in (`ecr_login: public`), once per name in `names` (as `path:`).
fn ecr_login_config(target: &Registry, source: &str, names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut config = MirrorYaml::new()
        .registries(&format!("  {}:\n    ecr_login: public\n", target.host))
        .target("ecr", &format!("{}/acme", target.host));
    for name in names {
        config = config.image_with(
            name,
            &format!("{source}/upstream/app"),
            "[v1]",
            &format!("    path: {name}\n"),
        );
    }
    config.write(dir.path());
    dir
}

/// An ECR login about to expire is asked for again: with logins that last
/// a minute (less than the 10 minutes of margin) and registry tokens that
/// last a second, the run logs in more than once and notices nothing. (The
/// `ecr` test shows a 12-hour login asked for once.)
#[tokio::test]
async fn an_ecr_login_about_to_expire_is_renewed() {
    use crate::seeds::{ECR_PASSWORD, ecr_api};
    let staging = Registry::start(Auth::None);
    signed_image(&staging, "upstream/app", false).await;
    let slow = Proxy::start(
        &staging.host,
        vec![Rule::new(
            "GET",
            "/blobs/",
            usize::MAX,
            Action::Delay(Duration::from_millis(300)),
        )],
    );
    let target = Registry::start(Auth::Token(Issuer::start_docker_hub(
        "AWS",
        ECR_PASSWORD,
        1,
    )));
    let api = ecr_api(&[], &[], 60);
    let dir = ecr_login_config(&target, &slow.host, &["app"]);
    let (run, report) = sync(dir.path(), &[], &aws_env(&api.url));
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(row(&report, "app", "v1").0, "copied");
    assert!(api.requests().len() >= 2, "{} logins", api.requests().len());
}

/// A refused ECR login (the role may not call GetAuthorizationToken) is
/// asked for once a run and said once, not again before every token; the
/// registry's refusal is an authentication failure (exit 3).
#[tokio::test]
async fn a_refused_ecr_login_is_asked_for_once() {
    use crate::seeds::{ECR_PASSWORD, ecr_api};
    let staging = Registry::start(Auth::None);
    signed_image(&staging, "upstream/app", false).await;
    let target = Registry::start(Auth::Token(Issuer::start("AWS", ECR_PASSWORD)));
    let api = ecr_api(&[], &["GetAuthorizationToken"], 3600);
    let dir = ecr_login_config(&target, &staging.host, &["app", "other"]);
    let (run, _) = sync(dir.path(), &[], &aws_env(&api.url));
    assert_eq!(run.code, 3, "{}", run.all());
    assert_eq!(api.requests().len(), 1, "logins asked for");
    let warned = run
        .stderr
        .lines()
        .filter(|l| l.starts_with(" WARN") && l.contains("AccessDeniedException"))
        .count();
    assert_eq!(warned, 1, "{}", run.stderr);
}

/// An error body in the registry's JSON form.
fn refusal(status: u16, code: &str, message: &str) -> Action {
    Action::Respond {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: format!(r#"{{"errors":[{{"code":"{code}","message":"{message}"}}]}}"#).into_bytes(),
    }
}

/// GHCR, as a source and as a target:
/// - blob GETs redirected to another host (`pkg-containers.githubusercontent.com`,
///   which Trivy's documentation lists beside ghcr.io for firewalls);
/// - a relative upload `Location` (`/v2/…/blobs/upload/…`:
///   hpc/charliecloud#1501, apple/swift-container-plugin#44);
/// - 429 on writes with the wait in the body, not in `Retry-After`
///   (gardenlinux/gardenlinux#2585);
/// - 403 `DENIED` `permission_denied: write_package` for a package that has
///   not granted the workflow's repository write access
///   (Snowfork/snowbridge#1272);
/// - 403 "You have exceeded a secondary rate limit" on a push
///   (markrussinovich/refchecker#67);
/// - no referrers API (404, as distribution 2.8 answers itself): cosign's
///   tags carry the signature.
#[tokio::test]
async fn ghcr() {
    let staging = Registry::start(Auth::None);
    let signed = signed_image(&staging, "upstream/app", false).await;
    let cdn = Proxy::start(&staging.host, Vec::new());
    let source = Proxy::start(
        &staging.host,
        vec![Rule::new(
            "GET",
            "/blobs/sha256:",
            usize::MAX,
            Action::RedirectTo {
                host: cdn.host.clone(),
                query: "jwt=signed-by-ghcr".into(),
            },
        )],
    );
    let target = Registry::start(Auth::Token(Issuer::start("ghcr-bot", "ghcr-pass-W3n")));
    let ghcr = Proxy::start(
        &target.host,
        vec![
            Rule::new(
                "POST",
                "/acme/denied/blobs/uploads/",
                usize::MAX,
                refusal(403, "DENIED", "permission_denied: write_package"),
            ),
            Rule::new(
                "POST",
                "/blobs/uploads/",
                usize::MAX,
                Action::RelativeLocation,
            ),
            Rule::new(
                "PUT",
                "/acme/busy/manifests/",
                usize::MAX,
                refusal(
                    403,
                    "DENIED",
                    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                ),
            ),
            Rule::new(
                "PUT",
                "/blobs/uploads/",
                1,
                refusal(
                    429,
                    "TOOMANYREQUESTS",
                    "toomanyrequests: retry-after: 10.3ms, allowed: 2000/minute",
                ),
            ),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let from = format!("{}/upstream/app", source.host);
    MirrorYaml::new()
        .target("ghcr", &format!("{}/acme", ghcr.host))
        .image_with("app", &from, "[v1]", "    path: app\n")
        .image_with("denied", &from, "[v1]", "    path: denied\n")
        .image_with("busy", &from, "[v1]", "    path: busy\n")
        .write(dir.path());
    let env = auth_for(&[(&ghcr.host, &target)]);

    let (run, report) = sync(dir.path(), &[], &env);
    // A permission problem is an authentication failure (exit 3).
    assert_eq!(run.code, 3, "{}", run.all());
    assert_eq!(row(&report, "app", "v1").0, "copied", "{}", run.all());
    assert_eq!(row(&report, "app", &signed.sig_tag).0, "copied");
    let (outcome, message) = row(&report, "denied", "v1");
    assert_eq!(outcome, "failed");
    assert!(message.contains("\"Manage Actions access\""), "{message}");
    let (outcome, message) = row(&report, "busy", "v1");
    assert_eq!(outcome, "deferred", "{message}");
    assert!(message.contains("secondary rate limit"), "{message}");
    // The 429 was waited out and the upload sent again; every upload went
    // to the relative `Location` it was given.
    assert_eq!(ghcr.applied(3), 1, "the 429");
    assert!(ghcr.applied(1) >= 1, "relative upload locations");
    let creds = target.credentials();
    signed.served_by(&target.host, "acme/app", &creds);
    assert!(skopeo_raw(&target.host, "acme/busy", "v1", creds.clone()).is_none());
    assert!(skopeo_raw(&target.host, "acme/denied", "v1", creds).is_none());
    // Blobs came from the other host, each once.
    assert!(source.applied(0) >= 1);
    let cdn_gets = cdn.seen().iter().filter(|s| s.method == "GET").count();
    assert_eq!(
        cdn_gets,
        signed.image.blobs.len() + signed.signature.blobs.len()
    );

    // Up to date: nothing written.
    nothing_left_to_do(dir.path(), &["--only", "app"], &env, &[&target]);
    verified(dir.path(), &["--only", "app"], &env);
}

/// Amazon ECR Public (and private ECR), as a source and as a target:
/// - manifest GETs without `Docker-Content-Digest` (HEADs have it):
///   aws/containers-roadmap#1931, distribution/distribution#3792,
///   oras-project/oras-java#522;
/// - manifest PUTs answered without `Location` (rust-oci-client's ECR fix);
/// - 429 `Rate exceeded` on manifest PUTs, with no `Retry-After` (ECR's
///   API throttling; "ThrottlingException: Rate exceeded" in AWS's error
///   reference);
/// - credentials: `AWS` and a password from GetAuthorizationToken, sent as
///   Basic to the registry's `/token` (what `aws ecr-public
///   get-login-password | docker login --username AWS` does), here from the
///   AWS API stand-in, with no login step; a repository must exist before
///   a push (CreateRepository, the same stand-in);
/// - private ECR: the same login from the `ecr` API (in the registry's
///   region), sent as Basic on every request.
#[tokio::test]
async fn ecr() {
    use crate::seeds::{ECR_PASSWORD, ecr_public};
    let staging = Registry::start(Auth::None);
    let signed = signed_image(&staging, "upstream/app", false).await;
    // An SBOM known only by its subject, as `oras attach` leaves one.
    let sbom = images::sbom_of(&signed.image);
    images::push(&staging.url(), "upstream/app", &sbom.root.0, &sbom).await;
    // ECR has the OCI referrers API (distribution 2.8 behind does not).
    let no_digest_on_get = || {
        Rule::new(
            "GET",
            "/manifests/",
            usize::MAX,
            Action::StripHeader("docker-content-digest"),
        )
    };
    let source = Proxy::start(
        &staging.host,
        vec![referrers_api(&staging), no_digest_on_get()],
    );
    let target = Registry::start(Auth::Token(Issuer::start("AWS", ECR_PASSWORD)));
    let ecr = Proxy::start(
        &target.host,
        vec![
            Rule::new(
                "PUT",
                "/manifests/",
                2,
                refusal(429, "TOOMANYREQUESTS", "Rate exceeded"),
            ),
            Rule::new(
                "PUT",
                "/manifests/",
                usize::MAX,
                Action::StripHeader("location"),
            ),
            no_digest_on_get(),
            referrers_api(&target),
        ],
    );
    // Private ECR takes the login as Basic credentials on every request.
    let private = Registry::start(Auth::Htpasswd {
        user: "AWS".into(),
        password: ECR_PASSWORD.into(),
    });
    let api = ecr_public(&[], &[]);
    let dir = tempfile::tempdir().unwrap();
    MirrorYaml::new()
        .registries(&format!(
            "  {}:\n    create_repositories: true\n    ecr_login: true\n  {}:\n    ecr_login: private\n",
            ecr.host, private.host
        ))
        .target("ecr", &format!("{}/acme", ecr.host))
        .target("private", &format!("{}/mirror", private.host))
        .image_with(
            "app",
            &format!("{}/upstream/app", source.host),
            "[v1]",
            "    path: app\n",
        )
        .write(dir.path());
    let env = aws_env(&api.url);
    let calls = || -> Vec<String> {
        api.requests()
            .iter()
            .map(|r| r.header("x-amz-target").unwrap_or_default().to_string())
            .collect()
    };

    let (run, report) = sync(dir.path(), &[], &env);
    assert_eq!(run.code, 0, "{}", run.all());
    let results = report["results"].as_array().unwrap();
    // App, signature and SBOM to both, and a fallback index where there
    // is no referrers API.
    assert_eq!(results.len(), 7, "{report:#}");
    for result in results {
        assert_eq!(result["outcome"], "copied", "{result:#}");
    }
    assert!(!run.all().contains(ECR_PASSWORD) && !run.all().contains("ecr-secret-Hk2"));
    // One login per registry, one repository created (ECR Public's); the
    // throttled PUTs were retried.
    let mut made = calls();
    made.sort();
    assert_eq!(
        made,
        [
            "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken",
            "SpencerFrontendService.CreateRepository",
            "SpencerFrontendService.GetAuthorizationToken",
        ]
    );
    assert_eq!(ecr.applied(0), 2, "the throttled PUTs");
    let creds = Some(("AWS".to_string(), ECR_PASSWORD.to_string()));
    signed.served_by(&target.host, "acme/app", &creds);
    signed.served_by(&private.host, "mirror/app", &creds);
    // The SBOM was found through the source's referrers API and pushed by
    // digest; ECR lists it by its subject, so no fallback tag is written
    // there, while the registry without the API gets one.
    assert!(
        source.applied(0) >= 1,
        "the source's referrers API was not asked"
    );
    let fallback = signed.image.root.0.replace(':', "-");
    for (registry, repo, has_fallback) in
        [(&target, "acme/app", false), (&private, "mirror/app", true)]
    {
        assert_eq!(
            skopeo_raw(&registry.host, repo, &sbom.root.0, creds.clone()).as_deref(),
            Some(sbom.root.2.as_slice()),
            "{repo}"
        );
        assert_eq!(
            skopeo_raw(&registry.host, repo, &fallback, creds.clone()).is_some(),
            has_fallback,
            "{repo}: fallback tag"
        );
    }

    // Up to date: nothing written, nothing created.
    nothing_left_to_do(dir.path(), &[], &env, &[&target, &private]);
    verified(dir.path(), &[], &env);
    assert!(
        !calls()
            .iter()
            .skip(3)
            .any(|c| c.ends_with("CreateRepository"))
    );

    // No AWS credentials at all: the login fails, says so once, and the
    // registry's refusal is an authentication failure (exit 3).
    let mut bare = env.clone();
    bare.retain(|(key, _)| key != "AWS_ACCESS_KEY_ID" && key != "AWS_SECRET_ACCESS_KEY");
    let (failed, _) = sync(dir.path(), &[], &bare);
    assert_eq!(failed.code, 3, "{}", failed.all());
    assert_eq!(
        failed
            .stderr
            .matches("ECR Public GetAuthorizationToken")
            .count(),
        1,
        "{}",
        failed.stderr
    );
    let private_login = format!("ECR GetAuthorizationToken for `{}`", private.host);
    assert_eq!(
        failed.stderr.matches(&private_login).count(),
        1,
        "{}",
        failed.stderr
    );
}

/// Registries behind a body limit, and Harbor's mounts:
/// - a whole layer in one PUT refused with 413 above about 20 MB (ACR, or
///   Harbor behind a proxy with a body limit): the blob goes up in 5 MiB
///   parts instead (here the limit is 5 MiB);
/// - each PATCH answered 201, not the spec's 202 (ECR does: jdx/mise#11376,
///   openai/tart#273);
/// - a cross-repository mount refused with 401 when the credentials cannot
///   see the source project (goharbor/harbor#17097): the blob is uploaded.
#[tokio::test]
async fn body_limits_and_refused_mounts() {
    let staging = Registry::start(Auth::None);
    let image = images::generate(&Spec {
        platforms: vec![("amd64", None), ("arm64", None)],
        layer_size: 6 << 20,
        base: 501,
        ..Spec::new("upstream/big", "v1", false)
    });
    images::push(&staging.url(), "upstream/big", "v1", &image).await;
    let signature = cosign_signature(&image.root.0);
    let sig_tag = format!("{}.sig", image.root.0.replace(':', "-"));
    images::push(&staging.url(), "upstream/big", &sig_tag, &signature).await;
    // Another image, with layers of its own, synced after the first.
    let later = images::generate(&Spec {
        platforms: vec![("amd64", None)],
        layer_size: 6 << 20,
        base: 502,
        attestations: false,
        ..Spec::new("upstream/later", "v1", false)
    });
    images::push(&staging.url(), "upstream/later", "v1", &later).await;
    let target = Registry::start(Auth::None);
    let limited = Proxy::start(
        &target.host,
        vec![
            Rule::new(
                "POST",
                "mount=",
                usize::MAX,
                refusal(401, "UNAUTHORIZED", "project upstream not found"),
            ),
            Rule::new(
                "PUT",
                "/blobs/uploads/",
                usize::MAX,
                refusal(413, "SIZE_INVALID", "request entity too large"),
            )
            .larger_than(5 << 20),
            Rule::new(
                "PATCH",
                "/blobs/uploads/",
                usize::MAX,
                Action::ReplaceStatus(201),
            ),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let from = format!("{}/upstream/big", staging.host);
    // Two repositories of one registry: the second would mount from the first.
    MirrorYaml::new()
        .target("acr", &format!("{}/mirror", limited.host))
        .image_with("one", &from, "[v1]", "    path: one/big\n")
        .image_with("two", &from, "[v1]", "    path: two/big\n")
        .image("later", &format!("{}/upstream/later", staging.host), "[v1]")
        .write(dir.path());

    let mark = staging.mark();
    let (run, report) = sync(dir.path(), &["--jobs", "1"], &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    for result in report["results"].as_array().unwrap() {
        assert_eq!(result["outcome"], "copied", "{result:#}");
    }
    assert!(limited.applied(0) >= 1, "no mount was refused");
    assert!(limited.applied(1) >= 1, "no PUT was refused for its size");
    assert!(limited.applied(2) >= 2, "no blob went up in parts");
    // Once refused for its size, a blob as big goes up in parts at once:
    // no more than the first image's four 6 MiB layers (sent at the same
    // time) are refused, and none of the later image's blobs is read from
    // the source twice (a streamed PUT refused reads it again).
    assert!(limited.applied(1) <= 4, "{} refused", limited.applied(1));
    for (digest, _) in &later.blobs {
        let reads = staging
            .requests()
            .iter()
            .skip(mark)
            .filter(|r| r.method == "GET" && r.path.ends_with(digest.as_str()))
            .count();
        assert_eq!(reads, 1, "{digest} read {reads} times");
    }
    for repo in ["mirror/one/big", "mirror/two/big"] {
        assert_eq!(
            deep_check(&target.host, repo, "v1").await,
            TagState::Complete(image.root.0.clone()),
            "{repo}"
        );
        assert_eq!(
            skopeo_raw(&target.host, repo, &sig_tag, None).as_deref(),
            Some(signature.root.2.as_slice())
        );
    }

    // Up to date: nothing written.
    nothing_left_to_do(dir.path(), &[], &[], &[&target]);
    verified(dir.path(), &[], &[]);
}

/// A Docker `config.json` in `dir` holding `auths` (host → entry, as
/// `docker login` or `az acr login` writes them); the `DOCKER_CONFIG`
/// variable that points at it.
fn docker_config(dir: &Path, auths: serde_json::Value) -> (String, String) {
    let config = dir.join("docker");
    std::fs::create_dir_all(&config).unwrap();
    let body = serde_json::json!({ "auths": auths });
    std::fs::write(config.join("config.json"), body.to_string()).unwrap();
    ("DOCKER_CONFIG".into(), config.display().to_string())
}

/// `auth` of a Docker config entry: base64 of `user:password`.
fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// What Quay says when a manifest's config or layer media type is not on
/// its allow-list: the OCI manifest fails the JSON schema that Quay builds
/// from `ALLOWED_OCI_ARTIFACT_TYPES`, and the push is answered 400
/// `MANIFEST_INVALID` with the schema error as detail (quay/quay
/// `image/oci/__init__.py` `register_artifact_type`, `endpoints/v2/manifest.py`
/// `_parse_manifest`; the answer cosign met on quay.io in
/// tektoncd/chains#252).
fn quay_refusal(media_type: &str) -> Action {
    Action::Respond {
        status: 400,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: format!(
            r#"{{"errors":[{{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":{{"message":"failed to parse manifest: manifest data does not match schema: '{media_type}' is not one of ['application/vnd.oci.image.config.v1+json', 'application/vnd.cncf.helm.config.v1+json']"}}}}]}}"#
        )
        .into_bytes(),
    }
}

/// Quay (quay.io and Project Quay), as a target:
/// - token auth with a robot account: the user name is `org+robot`
///   (Quay's robot accounts documentation), the token from `docker login`'s
///   config, with the `+` taken as it is;
/// - a manifest whose media types are not on the registry's allow-list is
///   refused with 400 `MANIFEST_INVALID` (see [`quay_refusal`]); here a
///   Notary Project signature (config `application/vnd.cncf.notary.signature`,
///   not in Quay's default list), while cosign signatures and SPDX SBOMs are
///   accepted. The refused referrer must not fail the image: the image and
///   the other referrers are copied, the refusal is reported as `refused`
///   with Quay's reason and the setting that allows it, the fallback index
///   lists only what the target holds, and the run succeeds;
/// - no referrers API (quay.io answers 404 unless `FEATURE_REFERRERS_API`):
///   referrers are listed in a fallback tag;
/// - repositories are created on first push.
#[tokio::test]
async fn quay() {
    const NOTARY: &str = "application/vnd.cncf.notary.signature";
    let staging = Registry::start(Auth::None);
    let signed = signed_image(&staging, "upstream/app", false).await;
    let sbom = images::sbom_of(&signed.image);
    images::push(&staging.url(), "upstream/app", &sbom.root.0, &sbom).await;
    let notation = images::notation_signature_of(&signed.image);
    images::push(&staging.url(), "upstream/app", &notation.root.0, &notation).await;
    // The source has the referrers API (as Docker Hub, ECR and ACR do).
    let source = Proxy::start(&staging.host, vec![referrers_api(&staging)]);
    let target = Registry::start(Auth::Token(Issuer::start(
        "acme+mirror",
        "R0BOT-T0KEN-QUAY-77",
    )));
    let quay = Proxy::start(
        &target.host,
        vec![
            Rule::new("PUT", "/manifests/", usize::MAX, quay_refusal(NOTARY)).body_contains(NOTARY),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    MirrorYaml::new()
        .target("quay", &format!("{}/acme", quay.host))
        .image_with(
            "app",
            &format!("{}/upstream/app", source.host),
            "[v1]",
            "    path: app\n",
        )
        .write(dir.path());
    let (user, password) = target.credentials().unwrap();
    let env = vec![docker_config(
        dir.path(),
        serde_json::json!({ quay.host.clone(): { "auth": basic_auth(&user, &password) } }),
    )];

    let (run, report) = sync(dir.path(), &[], &env);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(row(&report, "app", "v1").0, "copied", "{}", run.all());
    assert_eq!(row(&report, "app", &signed.sig_tag).0, "copied");
    assert_eq!(row(&report, "app", &sbom.root.0).0, "copied");
    let (outcome, message) = row(&report, "app", &notation.root.0);
    assert_eq!(outcome, "refused", "{}", run.all());
    assert!(
        message.contains("MANIFEST_INVALID") && message.contains(NOTARY),
        "the registry's reason: {message}"
    );
    assert!(
        message.contains("ALLOWED_OCI_ARTIFACT_TYPES") && message.contains("referrers: false"),
        "the setting that allows it: {message}"
    );
    assert_eq!(report["totals"]["refused"], 1, "{report:#}");
    assert!(
        run.all().contains("referrers the targets refuse:"),
        "{}",
        run.all()
    );
    assert!(!run.stderr.contains("ERROR"), "{}", run.stderr);
    let creds = target.credentials();
    signed.served_by(&target.host, "acme/app", &creds);
    // The fallback index lists the SBOM, not the signature Quay refused.
    let fallback = signed.image.root.0.replace(':', "-");
    let index =
        skopeo_raw(&target.host, "acme/app", &fallback, creds.clone()).expect("a fallback index");
    let index: Value = serde_json::from_slice(&index).unwrap();
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [sbom.root.0.as_str()]);
    assert!(skopeo_raw(&target.host, "acme/app", &notation.root.0, creds).is_none());

    // Again: present, the refusal said again, nothing written but the one
    // manifest Quay refuses.
    let mark = target.mark();
    let (again, report) = sync(dir.path(), &[], &env);
    assert_eq!(again.code, 0, "{}", again.all());
    for result in report["results"].as_array().unwrap() {
        let expected = if result["tag"] == notation.root.0.as_str() {
            "refused"
        } else {
            "present"
        };
        assert_eq!(result["outcome"], expected, "{result:#}");
    }
    assert_eq!(target.count_since(mark, "PUT", |r| r.is_manifest()), 0);
    let refused_puts = quay.applied(0);
    assert_eq!(refused_puts, 2, "one refused PUT a run");
    verified(dir.path(), &[], &env);
}

/// Azure Container Registry, as a target:
/// - `az acr login` leaves an ACR refresh token in the Docker config as
///   `identitytoken`, beside an `auth` of the user
///   `00000000-0000-0000-0000-000000000000` with no password
///   (devcontainers/cli#444); it is sent to `/oauth2/token` as an OAuth2
///   POST with `grant_type=refresh_token` (Azure/acr `docs/AAD-OAuth.md`);
/// - `docker login -u 00000000-0000-0000-0000-000000000000 -p TOKEN` with
///   the token `az acr login --expose-token` prints: Basic on the GET;
/// - the token endpoint throttles like the registry: 429 from
///   `/oauth2/token` (`CONNECTIVITY_REFRESH_TOKEN_ERROR … Response code:
///   429`, Azure/azure-cli#24886) is waited out, not an authentication
///   failure;
/// - 429 with a plain-text body from Azure's front door (`Ref A: … Ref B:
///   … Ref C: …`, Azure/acr#754) on blob requests: slowed down and retried;
/// - the OCI referrers API: an SBOM known only by its subject is pushed by
///   digest, and no fallback tag is written;
/// - a refresh token that has expired (they last 3 hours) is 401
///   `UNAUTHORIZED`: exit 3, and the message says to run `az acr login`.
#[tokio::test]
async fn acr() {
    use crate::support::token::ACR_USER;
    const REFRESH: &str = "eyJhbGciOiJSUzI1NiJ9.acr-refresh-Q7x";
    let staging = Registry::start(Auth::None);
    let signed = signed_image(&staging, "upstream/app", false).await;
    let sbom = images::sbom_of(&signed.image);
    images::push(&staging.url(), "upstream/app", &sbom.root.0, &sbom).await;
    let source = Proxy::start(&staging.host, vec![referrers_api(&staging)]);
    let front_door = || {
        Action::Respond {
        status: 429,
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: b"Ref A: 9E31E74CD9834672839D9F06B9E41573 Ref B: DM2EDGE0520 Ref C: 2024-05-08T12:36:23Z"
            .to_vec(),
    }
    };
    let mut proxies = Vec::new();
    let mut targets = Vec::new();
    for _ in 0..2 {
        let target = Registry::start(Auth::Token(Issuer::start_acr(REFRESH)));
        let acr = Proxy::start(
            &target.host,
            vec![
                Rule::new("HEAD", "/blobs/sha256:", 2, front_door()),
                referrers_api(&target),
            ],
        );
        target
            .issuer()
            .unwrap()
            .throttle
            .store(2, std::sync::atomic::Ordering::SeqCst);
        proxies.push(acr);
        targets.push(target);
    }
    let (login, exposed) = (&proxies[0], &proxies[1]);
    let dir = tempfile::tempdir().unwrap();
    MirrorYaml::new()
        .target("login", &format!("{}/mirror", login.host))
        .target("exposed", &format!("{}/mirror", exposed.host))
        .image_with(
            "app",
            &format!("{}/upstream/app", source.host),
            "[v1]",
            "    path: app\n",
        )
        .write(dir.path());
    let config = |refresh: &str| {
        vec![docker_config(
            dir.path(),
            serde_json::json!({
                login.host.clone(): { "auth": basic_auth(ACR_USER, ""), "identitytoken": refresh },
                exposed.host.clone(): { "auth": basic_auth(ACR_USER, REFRESH) },
            }),
        )]
    };
    let env = config(REFRESH);

    let (run, report) = sync(dir.path(), &[], &env);
    assert_eq!(run.code, 0, "{}", run.all());
    for target in ["login", "exposed"] {
        for tag in ["v1", signed.sig_tag.as_str(), sbom.root.0.as_str()] {
            let result = row_at(&report, target, tag);
            assert_eq!(result["outcome"], "copied", "{result:#}");
        }
    }
    // The identity token went as an OAuth2 refresh grant; the exposed
    // token as Basic on a GET. Each endpoint throttled twice first.
    let methods = |target: &Registry| -> Vec<String> {
        let issuer = target.issuer().unwrap();
        issuer.requests().iter().map(|r| r.method.clone()).collect()
    };
    let (posts, gets) = (methods(&targets[0]), methods(&targets[1]));
    assert!(
        posts.len() > 2 && posts.iter().all(|m| m == "POST"),
        "{posts:?}"
    );
    assert!(
        gets.len() > 2 && gets.iter().all(|m| m == "GET"),
        "{gets:?}"
    );
    for (proxy, target) in proxies.iter().zip(&targets) {
        assert_eq!(proxy.applied(0), 2, "front-door 429s");
        signed.served_by(&target.host, "mirror/app", &target.credentials());
        // The referrers API lists the SBOM: no fallback tag.
        let fallback = signed.image.root.0.replace(':', "-");
        assert!(skopeo_raw(&target.host, "mirror/app", &fallback, target.credentials()).is_none());
    }

    nothing_left_to_do(dir.path(), &[], &env, &[&targets[0], &targets[1]]);
    verified(dir.path(), &[], &env);

    // containerd nodes pulling through ACR with credentials: the identity
    // token cannot be a static header (it must be exchanged), so it goes
    // into the CRI plugin's `registry.configs` as `identitytoken`, which
    // containerd exchanges itself; the exposed token is a user and password.
    // (Images kept under the target prefix by their source path, as a
    // containerd mirror needs.)
    let nodes = tempfile::tempdir().unwrap();
    MirrorYaml::new()
        .target("login", &format!("{}/mirror", login.host))
        .target("exposed", &format!("{}/mirror", exposed.host))
        .image("app", &format!("{}/upstream/app", source.host), "[v1]")
        .write(nodes.path());
    let hosts = regmirror(
        nodes.path(),
        &[
            "containerd-hosts",
            "--out",
            "certs.d",
            "--auth",
            "--cri-config",
            "cri.toml",
        ],
        &env,
    );
    assert_eq!(hosts.code, 0, "{}", hosts.all());
    assert!(
        !hosts.stderr.contains("no credentials found"),
        "{}",
        hosts.stderr
    );
    assert!(
        !hosts.all().contains(REFRESH),
        "printed a secret: {}",
        hosts.all()
    );
    let cri = std::fs::read_to_string(nodes.path().join("cri.toml"))
        .unwrap_or_else(|e| panic!("cri.toml: {e}: {}", hosts.all()));
    let section = |host: &str| {
        let table = format!("registry.configs.\"{host}\".auth]");
        let at = cri
            .find(&table)
            .unwrap_or_else(|| panic!("no {table}: {cri}"));
        cri[at..].split("\n[").next().unwrap().to_string()
    };
    assert!(
        section(&login.host).contains(&format!("identitytoken = \"{REFRESH}\"")),
        "{cri}"
    );
    assert!(
        section(&exposed.host).contains(&format!("username = \"{ACR_USER}\"")),
        "{cri}"
    );
    let hosts_file = std::fs::read_to_string(
        nodes
            .path()
            .join("certs.d")
            .join(&source.host)
            .join("hosts.toml"),
    )
    .unwrap();
    assert_eq!(
        hosts_file.matches("Authorization").count(),
        1,
        "a header for the exposed token only: {hosts_file}"
    );

    // Three hours later: the refresh token has expired.
    let expired = config("eyJhbGciOiJSUzI1NiJ9.stale-Zq9");
    let (run, report) = sync(dir.path(), &["--target", "login"], &expired);
    assert_eq!(run.code, 3, "{}", run.all());
    let (outcome, message) = row(&report, "app", "v1");
    assert_eq!(outcome, "failed");
    assert!(
        message.contains("answered 401") && message.contains("az acr login"),
        "{message}"
    );
    assert!(
        !run.all().contains("stale-Zq9"),
        "the token was printed: {}",
        run.all()
    );
}

/// Google Artifact Registry's 403 for a repository the credentials may not
/// use, or that does not exist (it cannot tell them apart, and says so):
/// google-github-actions/auth#50 (downloadArtifacts, on the reads a push
/// starts with), GoogleCloudPlatform/cymbal-superstore#4 (uploadArtifacts).
fn gar_denied(permission: &str, resource: &str) -> Action {
    refusal(
        403,
        "DENIED",
        &format!(
            "Permission \\\"artifactregistry.repositories.{permission}\\\" denied on resource \\\"{resource}\\\" (or it may not exist)"
        ),
    )
}

/// Google Artifact Registry, as a target:
/// - a service account key as the password of the user `_json_key` (a JSON
///   document with quotes, colons and escaped newlines), from `docker
///   login`'s config (`docker login -u _json_key --password-stdin <
///   key.json`, Artifact Registry's authentication documentation);
/// - repository paths of the form `PROJECT/REPOSITORY/IMAGE` (four
///   components here: `my-project/containers/team/app`);
/// - no chunked uploads ("Artifact Registry does not support Docker chunked
///   uploads … You must use monolithic uploads", its Docker API reference;
///   dotnet/sdk-container-builds#287, kitops-ml/kitops#780): every blob
///   goes up in one PUT, and a PATCH would be refused;
/// - a repository that does not exist (GAR creates images on push, never
///   repositories) or that the credentials may not write: 403 `DENIED` on
///   the reads a push starts with and on the upload, "(or it may not
///   exist)". The failure is an authentication failure (exit 3), and says
///   what to create and which role to grant; a HEAD, which has no body, is
///   asked again as a GET to learn the reason.
#[tokio::test]
async fn google_artifact_registry() {
    const KEY: &str = "{\n  \"type\": \"service_account\",\n  \"project_id\": \"my-project\",\n  \"private_key_id\": \"4f1c\",\n  \"private_key\": \"-----BEGIN PRIVATE KEY-----\\nMIIEvQ-gar-Kx8\\n-----END PRIVATE KEY-----\\n\",\n  \"client_email\": \"mirror@my-project.iam.gserviceaccount.com\"\n}";
    let staging = Registry::start(Auth::None);
    let signed = signed_image(&staging, "upstream/app", false).await;
    let target = Registry::start(Auth::Token(Issuer::start("_json_key", KEY)));
    let absent = "projects/my-project/locations/europe-west1/repositories/absent";
    let gar = Proxy::start(
        &target.host,
        vec![
            Rule::new(
                "PATCH",
                "/blobs/uploads/",
                usize::MAX,
                refusal(400, "UNSUPPORTED", "chunked uploads are not supported"),
            ),
            Rule::new(
                "HEAD",
                "/v2/my-project/absent/",
                usize::MAX,
                gar_denied("downloadArtifacts", absent),
            ),
            Rule::new(
                "GET",
                "/v2/my-project/absent/",
                usize::MAX,
                gar_denied("downloadArtifacts", absent),
            ),
            Rule::new(
                "POST",
                "/v2/my-project/absent/",
                usize::MAX,
                gar_denied("uploadArtifacts", absent),
            ),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    MirrorYaml::new()
        .target("gar", &format!("{}/my-project/containers", gar.host))
        .target("absent", &format!("{}/my-project/absent", gar.host))
        .image_with(
            "app",
            &format!("{}/upstream/app", staging.host),
            "[v1]",
            "    path: team/app\n",
        )
        .write(dir.path());
    let env = vec![docker_config(
        dir.path(),
        serde_json::json!({ gar.host.clone(): { "auth": basic_auth("_json_key", KEY) } }),
    )];

    let (run, report) = sync(dir.path(), &[], &env);
    assert_eq!(run.code, 3, "{}", run.all());
    assert_eq!(
        row_at(&report, "gar", "v1")["outcome"],
        "copied",
        "{}",
        run.all()
    );
    assert_eq!(row_at(&report, "gar", &signed.sig_tag)["outcome"], "copied");
    let denied = row_at(&report, "absent", "v1");
    assert_eq!(denied["outcome"], "failed");
    assert_eq!(denied["error"]["kind"], "auth", "{denied:#}");
    let message = denied["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("artifactregistry.repositories.downloadArtifacts")
            && message.contains("gcloud artifacts repositories create")
            && message.contains("roles/artifactregistry.writer"),
        "{message}"
    );
    assert_eq!(gar.applied(0), 0, "a chunked upload was tried");
    signed.served_by(
        &target.host,
        "my-project/containers/team/app",
        &target.credentials(),
    );
    assert!(!run.all().contains("MIIEvQ-gar-Kx8"), "the key was printed");

    nothing_left_to_do(dir.path(), &["--target", "gar"], &env, &[&target]);
    verified(dir.path(), &["--target", "gar"], &env);
}

/// Harbor, as a source and as a target:
/// - robot accounts named `robot$PROJECT+NAME` (Harbor 2.2 and later): the
///   `$` and `+` pass through `REGMIRROR_AUTH_<HOST>` as they are (no
///   shell or `$VAR` expansion of our own) and reach the token service in
///   Basic credentials;
/// - a project must exist before a push (goharbor/harbor#20544,
///   goharbor/harbor-helm#849): the manifest PUT to a project that does not
///   is 404 `NOT_FOUND` "project … not found" (Harbor's manifest handler);
///   the failure says to create the project;
/// - a proxy-cache project as the source: its tag list holds only the tags
///   pulled through it so far, while any tag asked for by name is fetched
///   from upstream (Harbor's proxy cache documentation): tags named in
///   `mirror.yaml` are all copied, whatever the list says.
/// (A mount refused across projects is `body_limits_and_refused_mounts`.)
#[tokio::test]
async fn harbor() {
    let upstream = Registry::start(Auth::None);
    let repo = "dockerhub-proxy/library/app";
    let v1 = images::generate(&Spec::new(repo, "v1", true));
    let v2 = images::generate(&Spec {
        base: 77,
        ..Spec::new(repo, "v2", true)
    });
    images::push(&upstream.url(), repo, "v1", &v1).await;
    images::push(&upstream.url(), repo, "v2", &v2).await;
    // Only v1 was pulled through the cache so far.
    let proxy_cache = Proxy::start(
        &upstream.host,
        vec![Rule::new(
            "GET",
            "/tags/list",
            usize::MAX,
            Action::Respond {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: format!(r#"{{"name":"{repo}","tags":["v1"]}}"#).into_bytes(),
            },
        )],
    );
    let robot = "robot$acme+mirror";
    let target = Registry::start(Auth::Token(Issuer::start(robot, "Hrb0r-R0bot-S3cret")));
    let harbor = Proxy::start(
        &target.host,
        vec![Rule::new(
            "PUT",
            "/v2/newproj/",
            usize::MAX,
            refusal(404, "NOT_FOUND", "project newproj not found"),
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    MirrorYaml::new()
        .target("acme", &format!("{}/acme", harbor.host))
        .target("newproj", &format!("{}/newproj", harbor.host))
        .image_with(
            "app",
            &format!("{}/{repo}", proxy_cache.host),
            "[v1, v2]",
            "    path: app\n",
        )
        .write(dir.path());
    let env = vec![(
        auth_var_for(&harbor.host),
        format!("{robot}:Hrb0r-R0bot-S3cret"),
    )];

    let (run, report) = sync(dir.path(), &["--target", "acme"], &env);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(row(&report, "app", "v1").0, "copied");
    assert_eq!(
        row(&report, "app", "v2").0,
        "copied",
        "a tag the cache had not listed"
    );
    let creds = target.credentials();
    for (tag, image) in [("v1", &v1), ("v2", &v2)] {
        assert_eq!(
            skopeo_raw(&target.host, "acme/app", tag, creds.clone()).as_deref(),
            Some(image.root.2.as_slice())
        );
    }

    nothing_left_to_do(dir.path(), &["--target", "acme"], &env, &[&target]);
    verified(dir.path(), &["--target", "acme"], &env);

    // Last: the failing run writes to the same registry (its upload
    // sessions pass, only the PUTs are refused), and the no-writes check
    // above once counted a POST logged after that run had exited.
    let (run, report) = sync(dir.path(), &["--target", "newproj"], &env);
    assert_eq!(run.code, 1, "{}", run.all());
    let (outcome, message) = row(&report, "app", "v1");
    assert_eq!(outcome, "failed");
    assert!(
        message.contains("project newproj not found")
            && message.contains("Harbor: the project must exist"),
        "{message}"
    );
}
