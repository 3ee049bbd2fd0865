//! End-to-end tests: the real `regmirror` binary against real
//! `docker-registry` processes on loopback (plain, htpasswd, token auth),
//! with images generated here and checked by skopeo, an independent reader.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::support::config::MirrorYaml;
use crate::support::images::{self, Generated, Spec, skopeo_raw};
use crate::support::lab::Lab;
use crate::support::{Auth, Registry, Request, auth_env, auth_var, regmirror};
use base64::Engine as _;

fn unique_blobs<'a>(images: impl IntoIterator<Item = &'a Generated>) -> HashMap<String, u64> {
    images
        .into_iter()
        .flat_map(|g| g.blobs.iter())
        .map(|(d, b)| (d.clone(), b.len() as u64))
        .collect()
}

fn non_v2(request: &Request) -> bool {
    request.path != "/v2/"
}

/// The whole story: a full multi-arch sync to three targets with different
/// auth, byte-exact everywhere; the upstream read once; mounts for shared
/// layers; one upload per blob per repository; then a no-op run of HEADs only.
#[tokio::test]
async fn sync_mirrors_byte_for_byte_reads_once_and_noop_is_head_only() {
    let lab = Lab::auth();
    let specs = [
        (Spec::new("library/app-oci", "v1", false), "app-oci"),
        (Spec::new("library/app-oci", "v2", false), "app-oci"),
        (Spec::new("team/app-docker", "v1", true), "app-docker"),
        (Spec::new("team/tool", "1.0", false), "tool"),
    ];
    let mut generated = Vec::new();
    for (spec, _) in &specs {
        let image = images::generate(spec);
        images::push(&lab.upstream.url(), &spec.repo, &spec.tag, &image).await;
        generated.push(image);
    }
    let up = &lab.upstream.host;
    lab.write_config(&format!(
        "  - name: app-oci\n    source: {up}/library/app-oci\n    tags: [v1, v2]\n  - name: app-docker\n    source: {up}/team/app-docker\n    tags: [v1]\n  - name: tool\n    source: {up}/team/tool\n    tags: ['1.0']\n"
    ));
    let check = lab.run(&["check"]);
    assert_eq!(check.code, 0, "{}", check.all());

    let up_mark = lab.upstream.mark();
    let sync = lab.run(&["sync"]);
    assert_eq!(sync.code, 0, "{}", sync.all());
    assert!(sync.stderr.contains("12 copied"), "{}", sync.stderr);

    // Each token once (before skopeo reads the targets below): concurrent jobs wait for the one request of a scope
    // set instead of asking the token service for it at the same moment.
    if let Auth::Token(issuer) = &lab.target("token").auth {
        let requested = issuer.scopes_requested();
        let distinct: HashSet<&String> = requested.iter().collect();
        assert_eq!(requested.len(), distinct.len(), "{requested:#?}");
    }

    // Byte-exact on every target, read back by skopeo.
    for ((spec, _), image) in specs.iter().zip(&generated) {
        for (name, target) in lab.named_targets() {
            let raw = skopeo_raw(
                &target.host,
                &format!("mirror/{}", spec.repo),
                &spec.tag,
                target.credentials(),
            );
            assert_eq!(
                raw.as_deref(),
                Some(image.root.2.as_slice()),
                "{name}: {}:{}",
                spec.repo,
                spec.tag
            );
            for (digest, _, bytes) in &image.children {
                let child = skopeo_raw(
                    &target.host,
                    &format!("mirror/{}", spec.repo),
                    digest,
                    target.credentials(),
                );
                assert_eq!(
                    child.as_deref(),
                    Some(bytes.as_slice()),
                    "{name}: child {digest}"
                );
            }
        }
    }

    // Read once, write N: each unique blob fetched once, bytes ≈ unique bytes.
    let unique = unique_blobs(&generated);
    let requests: Vec<Request> = lab.upstream.requests().into_iter().skip(up_mark).collect();
    let blob_gets: Vec<&Request> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.is_blob())
        .collect();
    assert_eq!(blob_gets.len(), unique.len(), "upstream blob GETs");
    let served: u64 = blob_gets.iter().map(|r| r.bytes).sum();
    assert_eq!(
        served,
        unique.values().sum::<u64>(),
        "upstream blob bytes equal unique bytes"
    );
    let manifests: usize = generated.iter().map(|g| 1 + g.children.len()).sum();
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.method == "GET" && r.is_manifest())
            .count(),
        manifests
    );
    // Into empty targets, each root is read by a GET of its tag (digest and
    // bytes at once): no HEAD of a tag, and, as the tag list shows no
    // referrer tags, no HEAD of one either.
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.method == "HEAD" && r.is_manifest())
            .count(),
        0
    );

    for (name, target) in lab.named_targets() {
        let requests = target.requests();
        // Shared base layers are mounted across repositories, not uploaded again.
        let mounts = requests
            .iter()
            .filter(|r| r.method == "POST" && r.path.contains("mount=") && r.status == 201)
            .count();
        assert!(mounts > 0, "{name}: no cross-repository mounts");
        // One PUT per blob, never chunked PATCHes (GHCR breaks on several).
        assert!(
            !requests.iter().any(|r| r.method == "PATCH"),
            "{name}: a PATCH upload"
        );
        // Fresh tags: children are put without a HEAD first; the only manifest
        // HEADs are by tag (before writing, and the check after).
        let child_heads: Vec<&Request> = requests
            .iter()
            .filter(|r| r.method == "HEAD" && r.path.contains("/manifests/sha256:"))
            .collect();
        assert!(child_heads.is_empty(), "{name}: {child_heads:#?}");
        // One writer per blob per repository.
        let mut uploads = HashSet::new();
        for r in requests
            .iter()
            .filter(|r| r.method == "PUT" && r.is_upload())
        {
            let repo = r.path.split("/blobs/").next().unwrap().to_string();
            let digest = r
                .path
                .split("digest=")
                .nth(1)
                .unwrap_or_default()
                .to_string();
            assert!(
                uploads.insert((repo, digest)),
                "{name}: blob uploaded twice into one repository: {}",
                r.path
            );
        }
    }

    // Up to date: HEADs only, nothing counted as a pull, nothing written.
    let up_mark = lab.upstream.mark();
    let marks: Vec<usize> = lab.named_targets().map(|(_, t)| t.mark()).collect();
    let noop = lab.run(&["sync"]);
    assert_eq!(noop.code, 0, "{}", noop.all());
    assert!(
        noop.stderr.contains("0 copied, 12 present"),
        "{}",
        noop.stderr
    );
    assert_eq!(
        lab.upstream.count_since(up_mark, "GET", |r| non_v2(r)
            && !r.path.contains("/referrers/")
            && !r.path.contains("/tags/list")),
        0,
        "upstream GETs in a no-op run"
    );
    // Referrers: the API is probed once per run; distribution 2.8 has none
    // (404). Each source repository's tag list is read once (one page), and
    // shows that no fallback or cosign tag exists, so none is HEADed: one
    // HEAD per image × tag (README's cost of an up-to-date run).
    assert_eq!(
        lab.upstream
            .count_since(up_mark, "GET", |r| r.path.contains("/referrers/")),
        1
    );
    assert_eq!(
        lab.upstream
            .count_since(up_mark, "GET", |r| r.path.contains("/tags/list")),
        3,
        "one tag list per source repository"
    );
    assert_eq!(
        lab.upstream
            .count_since(up_mark, "HEAD", Request::is_manifest),
        4
    );
    for ((name, target), mark) in lab.named_targets().zip(marks) {
        // One HEAD per tag; nothing refers to these images.
        assert_eq!(
            target.count_since(mark, "HEAD", Request::is_manifest),
            4,
            "{name}"
        );
        for method in ["GET", "PUT", "POST", "PATCH", "DELETE"] {
            assert_eq!(
                target.count_since(mark, method, non_v2),
                0,
                "{name}: {method} in a no-op run"
            );
        }
    }

    let verify = lab.run(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
}

/// A blob this run already put into another repository of the registry is
/// mounted from there without a HEAD first (the mount answers whether it
/// is there), and a blob another repository is being asked about or
/// written into is waited for and mounted, not asked about again: each
/// target is asked about each distinct blob once, and the base layers the
/// three repositories share are mounted into the second and third. Both
/// with one job at a time and with the three jobs at once (the source's
/// blobs slowed, so that every job has asked before any upload ends).
#[tokio::test]
async fn a_blob_another_repository_holds_is_mounted_without_a_head() {
    for jobs in ["1", "3"] {
        let lab = Lab::auth();
        let slow = crate::support::proxy::Proxy::start(
            &lab.upstream.host,
            vec![crate::support::proxy::Rule::new(
                "GET",
                "/blobs/",
                usize::MAX,
                crate::support::proxy::Action::Delay(std::time::Duration::from_millis(300)),
            )],
        );
        let mut generated = Vec::new();
        let mut images_yaml = String::new();
        for repo in ["team/one", "team/two", "team/three"] {
            let spec = Spec::new(repo, "v1", false);
            let image = images::generate(&spec);
            images::push(&lab.upstream.url(), repo, "v1", &image).await;
            generated.push(image);
            let name = repo.trim_start_matches("team/");
            images_yaml.push_str(&format!(
                "  - name: {name}\n    source: {}/{repo}\n    tags: [v1]\n    referrers: false\n",
                slow.host
            ));
        }
        lab.write_config(&images_yaml);
        let sync = lab.run(&["sync", "--jobs", jobs]);
        assert_eq!(sync.code, 0, "{}", sync.all());
        let unique = unique_blobs(&generated).len();
        // The base layer of each of the three platforms.
        let shared = 3;
        for (name, target) in lab.named_targets() {
            let requests = target.requests();
            let heads = requests
                .iter()
                .filter(|r| r.method == "HEAD" && r.is_blob())
                .count();
            assert_eq!(heads, unique, "{name}, --jobs {jobs}: blob HEADs");
            let mounts = requests
                .iter()
                .filter(|r| r.method == "POST" && r.path.contains("mount=") && r.status == 201)
                .count();
            assert_eq!(mounts, 2 * shared, "{name}, --jobs {jobs}: mounts");
            let uploads = requests
                .iter()
                .filter(|r| r.method == "PUT" && r.is_upload())
                .count();
            assert_eq!(uploads, unique, "{name}, --jobs {jobs}: uploads");
        }
    }
}

/// Verbosity: an up-to-date run says a handful of lines by default (pairs
/// already present are counted, not listed); `-q` says only the totals;
/// `-v` lists every pair and each registry request; `-vv` adds response
/// headers, with nothing secret in them (the lab checks no password or
/// token leaks into any output).
#[tokio::test]
async fn verbosity_flags_change_what_a_run_says() {
    let (lab, _) = Lab::with_app().await;
    let first = lab.run(&["sync"]);
    assert_eq!(first.code, 0, "{}", first.all());
    assert!(
        first.stderr.contains("IMAGE"),
        "changes get rows: {}",
        first.stderr
    );

    let quiet = lab.run(&["sync", "-q"]);
    assert_eq!(quiet.code, 0, "{}", quiet.all());
    assert_eq!(quiet.stderr.lines().count(), 1, "{}", quiet.stderr);
    assert!(
        quiet.stderr.starts_with("0 copied, 3 present"),
        "{}",
        quiet.stderr
    );

    let normal = lab.run(&["sync"]);
    assert_eq!(normal.code, 0, "{}", normal.all());
    assert!(!normal.stderr.contains("IMAGE"), "{}", normal.stderr);
    assert!(!normal.stderr.contains("present ("), "{}", normal.stderr);
    assert!(normal.stderr.lines().count() <= 2, "{}", normal.stderr);

    let verbose = lab.run(&["sync", "-v"]);
    assert_eq!(verbose.code, 0, "{}", verbose.all());
    let request = format!(
        "HEAD http://{}/v2/team/app/manifests/v1 → 200",
        lab.upstream.host
    );
    assert!(verbose.stderr.contains(&request), "{}", verbose.stderr);
    assert!(verbose.stderr.contains("IMAGE"), "{}", verbose.stderr);
    assert!(verbose.stderr.contains(": present"), "{}", verbose.stderr);
    assert!(!verbose.stderr.contains("docker-content-digest:"));

    let headers = lab.run(&["sync", "-vv"]);
    assert_eq!(headers.code, 0, "{}", headers.all());
    assert!(
        headers.stderr.contains("docker-content-digest: sha256:"),
        "{}",
        headers.stderr
    );
}

/// A blob lost on one target: shallow verify cannot see it, `verify --deep`
/// names it (exit 4), `sync --deep` repairs it, and the rest is untouched.
#[tokio::test]
async fn deep_verify_finds_a_lost_blob_and_deep_sync_repairs_it() {
    let (lab, image) = Lab::with_app().await;
    assert_eq!(lab.run(&["sync"]).code, 0);

    let (lost, _) = &image.blobs[1];
    std::fs::remove_file(lab.target("basic").blob_data(lost)).unwrap();

    let shallow = lab.run(&["verify"]);
    assert_eq!(shallow.code, 0, "{}", shallow.all());
    let deep = lab.run(&["verify", "--deep"]);
    assert_eq!(deep.code, 4, "{}", deep.all());
    assert!(
        deep.stdout.contains(&format!("lacks blob {lost}")),
        "{}",
        deep.stdout
    );
    assert_eq!(
        deep.stdout.matches("INCOMPLETE").count(),
        1,
        "{}",
        deep.stdout
    );

    let basic_mark = lab.target("basic").mark();
    let repair = lab.run(&["sync", "--deep"]);
    assert_eq!(repair.code, 0, "{}", repair.all());
    assert!(
        repair.stderr.contains("1 copied, 2 present"),
        "{}",
        repair.stderr
    );
    // The tag was current and is not rewritten: one HEAD for it, no PUT.
    let tag_requests: Vec<String> = (lab.target("basic").requests().iter().skip(basic_mark))
        .filter(|r| r.path.ends_with("/manifests/v1"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        tag_requests,
        vec!["HEAD /v2/mirror/team/app/manifests/v1".to_string()]
    );
    assert!(lab.target("basic").blob_data(lost).exists());
    assert_eq!(lab.run(&["verify", "--deep"]).code, 0);
}

/// A Docker schema2 manifest with non-canonical whitespace keeps its digest:
/// pushed as fetched, never re-serialized.
#[tokio::test]
async fn non_canonical_manifest_keeps_its_digest() {
    let upstream = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let layer = images::random_bytes(42, 10_000);
    let manifest = format!(
        "{{\n   \"schemaVersion\" : 2,\n   \"mediaType\" : \"{}\",\n   \"config\" : {{ \"mediaType\" : \"application/vnd.docker.container.image.v1+json\", \"size\" : {}, \"digest\" : \"{}\" }},\n   \"layers\" : [\n      {{ \"mediaType\" : \"application/vnd.docker.image.rootfs.diff.tar.gzip\", \"size\" : {}, \"digest\" : \"{}\" }}\n   ]\n}}\n",
        images::DOCKER_MANIFEST,
        config.len(),
        images::sha256(&config),
        layer.len(),
        images::sha256(&layer)
    );
    let image = Generated {
        blobs: vec![
            (images::sha256(&config), config),
            (images::sha256(&layer), layer),
        ],
        children: vec![],
        root: (
            images::sha256(manifest.as_bytes()),
            images::DOCKER_MANIFEST.into(),
            manifest.into_bytes(),
        ),
    };
    images::push(&upstream.url(), "odd/spacing", "1", &image).await;
    let run = regmirror(
        dir.path(),
        &[
            "copy",
            &format!("{}/odd/spacing:1", upstream.host),
            &format!("{}/odd/spacing", target.host),
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    let raw = skopeo_raw(&target.host, "odd/spacing", "1", None).unwrap();
    assert_eq!(raw, image.root.2, "bytes changed");
    assert_eq!(images::sha256(&raw), image.root.0);
}

/// The release image (issue 15): `scripts/image-layout` turns a regmirror
/// binary into a two-platform OCI layout, the same bytes every time; skopeo
/// reads it; `regmirror copy` pushes it to a registry byte for byte; and its
/// layer, unpacked, holds the CA bundle and a binary that runs.
#[tokio::test]
async fn release_image_layout_is_deterministic_and_runs_once_pushed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let binary = crate::support::stripped_binary(dir.path());
    // The completions and man pages, as the release makes them.
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join("completions")).unwrap();
    let completion = regmirror(dir.path(), &["completions", "bash"], &[]);
    std::fs::write(share.join("completions/regmirror.bash"), completion.stdout).unwrap();
    let man = regmirror(
        dir.path(),
        &["man", "--out", share.join("man/man1").to_str().unwrap()],
        &[],
    );
    assert_eq!(man.code, 0, "{}", man.all());
    let binary = binary.display();
    let build = |out: &str| {
        let output = std::process::Command::new(root.join("scripts/image-layout"))
            .args(["--out", out, "--version", "9.9.9"])
            .args(["--source", "https://github.com/acme/regmirror"])
            .args(["--share", "share"])
            .arg(format!("linux/amd64={binary}"))
            .arg(format!("linux/arm64={binary}"))
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let digest = build("a");
    assert_eq!(build("b"), digest, "the same inputs made another image");
    let layout = dir.path().join("a");
    let blob = |digest: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let inspect = std::process::Command::new("skopeo")
        .args(["inspect", &format!("oci:{}:9.9.9", layout.display())])
        .output()
        .unwrap();
    assert!(inspect.status.success(), "{inspect:?}");
    let labels = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        labels.contains(r#""org.opencontainers.image.version": "9.9.9""#),
        "{labels}"
    );

    let registry = Registry::start(Auth::None);
    let run = regmirror(
        dir.path(),
        &[
            "copy",
            "oci:a:9.9.9",
            &format!("{}/acme/regmirror:9.9.9", registry.host),
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    let served = skopeo_raw(&registry.host, "acme/regmirror", "9.9.9", None).unwrap();
    assert_eq!(served, blob(&digest), "the index changed on the way");

    // The amd64 image's one layer, from the registry, unpacked and run.
    let index: serde_json::Value = serde_json::from_slice(&served).unwrap();
    let manifest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(manifest)).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let url = format!("{}/v2/acme/regmirror/blobs/{layer}", registry.url());
    let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(images::sha256(&bytes), layer);
    let unpacked = dir.path().join("rootfs");
    std::fs::create_dir_all(&unpacked).unwrap();
    std::fs::write(dir.path().join("layer.tar.gz"), &bytes).unwrap();
    let untar = std::process::Command::new("tar")
        .args(["-xzf", "layer.tar.gz", "-C", "rootfs"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(untar.success());
    assert!(unpacked.join("etc/ssl/certs/ca-certificates.crt").is_file());
    let shipped = unpacked.join("usr/share/regmirror");
    assert!(shipped.join("man/man1/regmirror-sync.1").is_file());
    let bash = std::fs::read_to_string(shipped.join("completions/regmirror.bash")).unwrap();
    assert!(bash.contains("regmirror"), "{bash}");
    let version = std::process::Command::new(unpacked.join("regmirror"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.starts_with("regmirror "), "{version}");
}

/// The release-time dual push: `copy oci:DIR:TAG` to two registries, from a
/// generated layout whose index.json holds a Docker manifest list.
#[tokio::test]
async fn copy_from_an_oci_layout_to_two_targets() {
    let first = Registry::start(Auth::None);
    let second = Registry::start(Auth::Htpasswd {
        user: "rel".into(),
        password: "release-pass-K9".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let image = images::generate(&Spec::new("x", "1.2.3", true));
    images::write_layout(&dir.path().join("out"), "1.2.3", &image);
    let env = auth_env(&second);
    let run = regmirror(
        dir.path(),
        &[
            "copy",
            "oci:out:1.2.3",
            &format!("{}/acme/app", first.host),
            &format!("{}/acme/app:release", second.host),
        ],
        &env,
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        skopeo_raw(&first.host, "acme/app", "1.2.3", None).as_deref(),
        Some(image.root.2.as_slice())
    );
    assert_eq!(
        skopeo_raw(&second.host, "acme/app", "release", second.credentials()).as_deref(),
        Some(image.root.2.as_slice())
    );
    // A tag the layout does not have is a usage error naming the tags it has.
    let missing = regmirror(
        dir.path(),
        &["copy", "oci:out:nope", &format!("{}/acme/app", first.host)],
        &[],
    );
    assert_eq!(missing.code, 2, "{}", missing.all());
    assert!(missing.stderr.contains("1.2.3"), "{}", missing.stderr);
}

/// Real layouts from public projects (regclient's testrepo with
/// `unknown/unknown` entries and arm variants, oras's e2e images), when the
/// shared fixtures are beside this checkout.
#[tokio::test]
async fn copy_real_oci_layouts_from_shared_fixtures() {
    let Some(fixtures) = crate::support::shared_fixtures() else {
        panic!("../shared/fixtures/real is missing: CI runs with ../shared beside the checkout");
    };
    let target = Registry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    for (layout, tag) in [
        ("regclient-testrepo", "v1"),
        ("regclient-testrepo", "v3"),
        ("regclient-testrepo", "b2"),
        ("oras-e2e-images", "multi"),
        ("oras-e2e-images", "foobar"),
        ("ggcr-test_index", "4"),
    ] {
        let path = fixtures.join("oci-layouts").join(layout);
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path.join("index.json")).unwrap()).unwrap();
        let expected = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("{layout} has no tag {tag}"))["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let repo = format!("real/{}", layout.to_lowercase());
        let run = regmirror(
            dir.path(),
            &[
                "copy",
                &format!("oci:{}:{tag}", path.display()),
                &format!("{}/{repo}:{tag}", target.host),
            ],
            &[],
        );
        assert_eq!(run.code, 0, "{layout}:{tag}\n{}", run.all());
        let raw = skopeo_raw(&target.host, &repo, tag, None)
            .unwrap_or_else(|| panic!("{layout}:{tag} not on target"));
        assert_eq!(images::sha256(&raw), expected, "{layout}:{tag}");
        let bytes = std::fs::read(
            path.join("blobs/sha256")
                .join(expected.trim_start_matches("sha256:")),
        )
        .unwrap();
        assert_eq!(raw, bytes, "{layout}:{tag} bytes");
    }
}

/// `--only` with a glob selects by image name; a glob matching nothing is a usage error.
#[tokio::test]
async fn only_with_a_glob_selects_images() {
    let upstream = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    for repo in ["k3s-io/k3s", "k3s-io/k3s-upgrade", "library/busybox"] {
        let spec = Spec {
            platforms: vec![("amd64", None)],
            attestations: false,
            ..Spec::new(repo, "v1", false)
        };
        images::push(&upstream.url(), repo, "v1", &images::generate(&spec)).await;
    }
    let (up, t) = (&upstream.host, &target.host);
    MirrorYaml::new()
        .target("t", &format!("{t}/m"))
        .image("k3s", &format!("{up}/k3s-io/k3s"), "[v1]")
        .image("k3s-upgrade", &format!("{up}/k3s-io/k3s-upgrade"), "[v1]")
        .image("busybox", &format!("{up}/library/busybox"), "[v1]")
        .write(dir.path());
    let run = regmirror(dir.path(), &["sync", "--only", "k3s*"], &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(skopeo_raw(t, "m/k3s-io/k3s", "v1", None).is_some());
    assert!(skopeo_raw(t, "m/k3s-io/k3s-upgrade", "v1", None).is_some());
    assert!(
        skopeo_raw(t, "m/library/busybox", "v1", None).is_none(),
        "busybox was not selected"
    );
    let none = regmirror(dir.path(), &["sync", "--only", "nginx*"], &[]);
    assert_eq!(none.code, 2, "{}", none.all());
    assert!(none.stderr.contains("matches no image"), "{}", none.stderr);
}

/// Tag selectors pick from the source's tag list at run time: regex with
/// exclude, and a semver range with `latest`; `plan` shows them as written.
#[tokio::test]
async fn tag_selectors_pick_from_the_source_tag_list() {
    let upstream = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        platforms: vec![("amd64", None)],
        attestations: false,
        ..Spec::new("rancher/k3s", "v1.30.4-k3s1", false)
    };
    let image = images::generate(&spec);
    images::push(&upstream.url(), "rancher/k3s", "v1.30.4-k3s1", &image).await;
    let http = reqwest::Client::new();
    let (_, media_type, bytes) = &image.root;
    for (repo, tag) in [
        ("rancher/k3s", "v1.29.9-k3s1"),
        ("rancher/k3s", "v1.31.1-k3s1"),
        ("rancher/k3s", "v1.31.2-rc1-k3s1"),
        ("rancher/k3s", "latest"),
    ] {
        images::put_manifest(&http, &upstream.url(), repo, tag, media_type, bytes).await;
    }
    images::push(&upstream.url(), "library/postgres", "15.8", &image).await;
    for tag in [
        "16.3",
        "16.4",
        "17.1",
        "17.2",
        "18.0",
        "17-alpine",
        "latest",
    ] {
        images::put_manifest(
            &http,
            &upstream.url(),
            "library/postgres",
            tag,
            media_type,
            bytes,
        )
        .await;
    }
    let (up, t) = (&upstream.host, &target.host);
    let config = format!(
        "version: 1
targets: {{t: {t}/m}}
defaults: {{targets: [t]}}
images:
  - name: k3s
    source: {up}/rancher/k3s
    tags: {{regex: 'v1\\.(30|31)\\..*', exclude: '.*-rc.*'}}
  - name: postgres
    source: {up}/library/postgres
    tags: {{semver: '>=16 <18', latest: 3}}
  - name: postgres-15
    source: {up}/library/postgres
    tags: {{semver: '~15'}}
"
    );
    std::fs::write(dir.path().join("mirror.yaml"), config).unwrap();
    let plan = regmirror(dir.path(), &["plan"], &[]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stdout.contains("{semver: >=16 <18, latest: 3}"),
        "{}",
        plan.stdout
    );

    let mark = upstream.mark();
    let run = regmirror(dir.path(), &["sync", "--json", "report.json"], &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    // Two selectors on postgres, one tag list read per repository.
    let lists = upstream.count_since(mark, "GET", |r| r.path.contains("/tags/list"));
    assert_eq!(lists, 2, "{:#?}", upstream.requests());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    let mut copied: Vec<String> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["image"].as_str().unwrap(),
                r["tag"].as_str().unwrap()
            )
        })
        .collect();
    copied.sort();
    assert_eq!(
        copied,
        [
            "k3s:v1.30.4-k3s1",
            "k3s:v1.31.1-k3s1",
            "postgres-15:15.8",
            "postgres:16.4",
            "postgres:17.1",
            "postgres:17.2"
        ]
    );
    for (repo, tag) in [
        ("m/rancher/k3s", "v1.31.1-k3s1"),
        ("m/library/postgres", "16.4"),
    ] {
        assert_eq!(
            skopeo_raw(t, repo, tag, None).as_deref(),
            Some(bytes.as_slice()),
            "{repo}:{tag}"
        );
    }
    assert!(skopeo_raw(t, "m/library/postgres", "16.3", None).is_none());
}

/// Bad configurations: exit 2, every problem listed with its line.
#[test]
fn bad_configs_exit_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let table: &[(&str, &[&str])] = &[
        (
            "version: 1\ntargets:\n  a: ghcr.io/x\nimages:\n  - source: docker.io/a/b\n    tags: [v1]\n    targets: [a]\n    platform: all\n",
            &["bad.yaml:8:5: unknown field `platform`"],
        ),
        (
            "version: 1\nimages:\n  - source: [unclosed\n",
            &["bad.yaml:3:"],
        ),
        (
            "version: 1\ntargets:\n  a: ghcr.io/x\nimages:\n  - source: docker.io/a/b\n    tags: [v1]\n    targets: [b]\n  - source: docker.io/c/d:latest\n    targets: [a]\n",
            &[
                "bad.yaml:7:15: images[0].targets[0]: unknown target `b`",
                "bad.yaml:8:13: images[1].source: write the source without a tag",
            ],
        ),
        (
            "version: 1\nimages:\n  - source: docker.io/a/b\n    tags: [v1]\n",
            &["bad.yaml:3:", "no targets: define some under `targets:`"],
        ),
        (
            "version: 1\ntargets: {a: ghcr.io/x}\ndefaults: {targets: [a]}\nimages:\n  - source: docker.io/a/b\n    tags:\n      regex: 'v1.(('\n      semver: '>= banana'\n      latest: 0\n  - source: docker.io/c/d\n    tags: {}\n",
            &[
                "bad.yaml:7:14: images[0].tags.regex: ",
                "bad.yaml:8:15: images[0].tags.semver: `>= banana` is not a version range",
                "bad.yaml:9:15: images[0].tags.latest: must be at least 1",
                "images[1].tags: an empty selector",
            ],
        ),
        (
            "version: 1\ntargets: {a: ghcr.io/x}\ndefaults: {targets: [a]}\nimages:\n  - source: docker.io/e/f\n    tags: {semver: '>=1', limit: 3}\n",
            &["bad.yaml:6:27: unknown field `limit`"],
        ),
        (
            "version: 1\ntargets: {a: ghcr.io/x}\ndefaults: {targets: [a]}\nregistries:\n  docker.io:\n    rate_limit: {requests: 0, per: soon, burst: 0}\nimages:\n  - source: docker.io/a/b\n    tags: [v1]\n",
            &[
                "bad.yaml:6:28: registries.docker.io.rate_limit.requests: must be at least 1",
                "bad.yaml:6:36: registries.docker.io.rate_limit.per: `soon` is not a duration like `1h` or `30s`",
                "bad.yaml:6:49: registries.docker.io.rate_limit.burst: must be at least 1",
            ],
        ),
        (
            "version: 1\ntargets: {a: ghcr.io/x}\ndefaults: {targets: [a]}\nregistries:\n  docker.io:\n    min_remaining: -1\nimages:\n  - source: docker.io/a/b\n    tags: [v1]\n",
            &["bad.yaml:6:20: "],
        ),
        (
            "version: 1\ntargets: {a: ghcr.io/x}\ndefaults: {targets: [a]}\nregistries:\n  ghcr.io:\n    insecure: true\n    ca: ca.pem\nimages:\n  - source: docker.io/a/b\n    tags: [v1]\n",
            &[
                "bad.yaml:7:9: registries.ghcr.io.ca: no such file",
                "bad.yaml:7:9: registries.ghcr.io.ca: `insecure: true` turns TLS off; it cannot go with `tls` or `ca`",
            ],
        ),
        (
            "version: 1\ntargets: {a: ghcr.io/x}\ndefaults: {targets: [a]}\nimages:\n  - source: docker.io/rancher/k3s\n    tags: {github_releases: k3s}\n  - source: docker.io/c/d\n    tags: {regex: '.*', replace: {'+': '-'}}\n",
            &[
                "bad.yaml:6:29: images[0].tags.github_releases: `k3s` is not a GitHub project; write `owner/repo`",
                "bad.yaml:8:34: images[1].tags.replace: `replace` rewrites release tags: it needs `github_releases`",
            ],
        ),
    ];
    for (i, (config, needles)) in table.iter().enumerate() {
        std::fs::write(dir.path().join("bad.yaml"), config).unwrap();
        let run = regmirror(dir.path(), &["check", "-c", "bad.yaml"], &[]);
        assert_eq!(run.code, 2, "case {i}: {}", run.all());
        for needle in *needles {
            assert!(
                run.stderr.contains(needle),
                "case {i}: `{needle}` missing from:\n{}",
                run.stderr
            );
        }
    }
    let missing = regmirror(dir.path(), &["check", "-c", "nope.yaml"], &[]);
    assert_eq!(missing.code, 2, "{}", missing.all());
}

/// The shipped production example validates.
/// Every `mirror.yaml` in the repository.
fn shipped_configs() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs = vec![root.join("mirror.yaml")];
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let config = entry.unwrap().path().join("mirror.yaml");
        if config.is_file() {
            configs.push(config);
        }
    }
    configs
}

#[test]
fn shipped_mirror_yaml_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for config in shipped_configs() {
        let run = regmirror(root, &["check", "-c", config.to_str().unwrap()], &[]);
        assert_eq!(run.code, 0, "{}: {}", config.display(), run.all());
    }
}

/// `--version` names the version and the commit the binary was built from
/// (this checkout's HEAD, as `git rev-parse` says).
#[test]
fn version_names_the_commit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = regmirror(root, &["--version"], &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .expect("git is installed");
    assert!(head.status.success(), "not a git checkout");
    let commit = String::from_utf8(head.stdout).unwrap();
    assert_eq!(
        run.stdout.trim(),
        format!(
            "regmirror {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            commit.trim()
        )
    );
}

/// The `mirror.yaml` texts in README and `docs/` (```yaml blocks, not the
/// Kubernetes or workflow ones): a whole file passes `check` as it is; a fragment (an
/// `images` entry, a `registries` block) passes inside a minimal file. Files
/// a snippet names (a CA) are made beside it.
#[test]
fn yaml_snippets_in_the_docs_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documents = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            documents.push(path);
        }
    }
    let mut checked = 0;
    for document in documents {
        let text = std::fs::read_to_string(&document).unwrap();
        for (i, block) in text.split("```yaml\n").skip(1).enumerate() {
            let snippet = block.split("\n```").next().unwrap();
            if snippet.contains("apiVersion:") || snippet.contains("uses:") {
                continue; // Kubernetes or a workflow, not mirror.yaml.
            }
            let minimal = "version: 1\ntargets:\n  t: ghcr.io/acme\ndefaults:\n  targets: [t]\n";
            let file = if snippet.starts_with("version:") {
                snippet.to_string()
            } else if snippet.trim_start().starts_with("- ") {
                format!("{minimal}images:\n{snippet}\n")
            } else {
                format!(
                    "{minimal}{snippet}\nimages:\n  - source: docker.io/library/busybox\n    tags: [latest]\n"
                )
            };
            let dir = tempfile::tempdir().unwrap();
            for word in snippet.split_whitespace() {
                if word.ends_with(".pem") {
                    let path = dir.path().join(word);
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    let key = rcgen::KeyPair::generate().unwrap();
                    let params = rcgen::CertificateParams::new(vec!["ca".into()]).unwrap();
                    std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
                }
            }
            std::fs::write(dir.path().join("mirror.yaml"), &file).unwrap();
            let run = regmirror(dir.path(), &["check"], &[]);
            assert_eq!(
                run.code,
                0,
                "{} yaml block {i}:\n{file}\n{}",
                document.display(),
                run.all()
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} snippets found");
}

/// The schemas and references in `docs/` are what the code generates, and
/// every shipped config names the schema for editors and passes it.
#[test]
fn shipped_schemas_match_the_code_and_the_configs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (args, file) in [
        (&["schema"][..], "docs/mirror.schema.json"),
        (&["schema", "--report"][..], "docs/report.schema.json"),
        (&["schema", "--markdown"][..], "docs/mirror-yaml.md"),
        (&["schema", "--report", "--markdown"][..], "docs/report.md"),
        (&["man", "--markdown"][..], "docs/cli.md"),
    ] {
        let run = regmirror(root, args, &[]);
        assert_eq!(run.code, 0, "{}", run.all());
        let shipped = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            run.stdout == shipped,
            "{file} is stale: run `regmirror {} > {file}`",
            args.join(" ")
        );
    }
    let schema = root.join("docs/mirror.schema.json");
    for config in shipped_configs() {
        let text = std::fs::read_to_string(&config).unwrap();
        let first = text.lines().next().unwrap_or_default();
        let named = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{}: no yaml-language-server line", config.display()));
        let named = config.parent().unwrap().join(named);
        assert_eq!(
            named.canonicalize().unwrap(),
            schema.canonicalize().unwrap(),
            "{}",
            config.display()
        );
        crate::support::check_jsonschema(schema.to_str().unwrap(), &config).unwrap();
    }
}

/// A blob whose stored bytes no longer match its digest is refused: that
/// image fails naming both digests, nothing of it is pushed; the others
/// complete; a dead target fails alone.
#[tokio::test]
async fn tampered_blob_and_dead_target_fail_alone() {
    let upstream = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let good = images::generate(&Spec {
        base: 7,
        ..Spec::new("team/good", "v1", false)
    });
    let bad = images::generate(&Spec {
        base: 8,
        ..Spec::new("team/bad", "v1", true)
    });
    images::push(&upstream.url(), "team/good", "v1", &good).await;
    images::push(&upstream.url(), "team/bad", "v1", &bad).await;
    let (tampered, bytes) = &bad.blobs[1];
    let mut corrupt = bytes.clone();
    corrupt[100] ^= 0xff;
    std::fs::write(upstream.blob_data(tampered), &corrupt).unwrap();

    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (up, t) = (&upstream.host, &target.host);
    MirrorYaml::new()
        .target("live", &format!("{t}/m"))
        .target("dead", &format!("{dead}/m"))
        .image("good", &format!("{up}/team/good"), "[v1]")
        .image_with(
            "bad",
            &format!("{up}/team/bad"),
            "[v1]",
            "    targets: [live]\n",
        )
        .write(dir.path());
    let mark = target.mark();
    let summary_file = dir.path().join("step-summary.md");
    std::fs::write(&summary_file, "earlier step\n").unwrap();
    let actions = [
        ("GITHUB_ACTIONS".to_string(), "true".to_string()),
        (
            "GITHUB_STEP_SUMMARY".to_string(),
            summary_file.display().to_string(),
        ),
    ];
    let run = regmirror(dir.path(), &["sync", "--json", "report.json"], &actions);
    assert_eq!(run.code, 1, "{}", run.all());
    let writes_to_bad: Vec<String> = (target.requests().iter().skip(mark))
        .filter(|r| {
            r.path.contains("/m/team/bad/") && ["PUT", "POST", "PATCH"].contains(&r.method.as_str())
        })
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        writes_to_bad.is_empty(),
        "something of the tampered image was pushed: {writes_to_bad:#?}"
    );
    assert!(
        run.stderr.contains(&format!(
            "expected `{tampered}`, got `{}`",
            images::sha256(&corrupt)
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("good:v1 → {dead}/m/team/good:v1 (dead)")),
        "{}",
        run.stderr
    );
    assert_eq!(
        skopeo_raw(t, "m/team/good", "v1", None).as_deref(),
        Some(good.root.2.as_slice())
    );
    assert!(skopeo_raw(t, "m/team/bad", "v1", None).is_none());

    // The reports say the same, in their documented shapes.
    let report = dir.path().join("report.json");
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.schema.json");
    crate::support::check_jsonschema(&schema.display().to_string(), &report).unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["command"], "sync");
    assert_eq!(report["exit_code"], 1);
    assert_eq!(report["totals"]["copied"], 1);
    assert_eq!(report["totals"]["failed"], 2);
    let results = report["results"].as_array().unwrap();
    let result = |image: &str, target: &str| {
        results
            .iter()
            .find(|r| r["image"] == image && r["target"] == target)
            .unwrap_or_else(|| panic!("no result for {image} → {target}: {report:#}"))
    };
    let copied = result("good", "live");
    assert_eq!(copied["outcome"], "copied");
    assert_eq!(copied["source_digest"], good.root.0.as_str());
    assert_eq!(copied["target_digest_before"], serde_json::Value::Null);
    assert_eq!(copied["target_digest_after"], good.root.0.as_str());
    assert!(copied["blobs"]["uploaded"].as_u64().unwrap() > 0);
    let tampered_result = result("bad", "live");
    assert_eq!(tampered_result["outcome"], "failed");
    assert_eq!(tampered_result["error"]["kind"], "other");
    let chain = tampered_result["error"]["chain"].as_array().unwrap();
    assert!(
        chain
            .iter()
            .any(|c| c.as_str().unwrap().contains(tampered.as_str())),
        "{chain:#?}"
    );
    assert_eq!(result("good", "dead")["outcome"], "failed");

    let summary = std::fs::read_to_string(&summary_file).unwrap();
    assert!(summary.starts_with("earlier step\n"), "appended: {summary}");
    let (totals, failures, images) = (
        summary.find("**1 copied, 0 present, 2 failed**"),
        summary.find("### Failures (2)"),
        summary.find("### Images (2)"),
    );
    assert!(
        totals < failures && failures < images && totals.is_some(),
        "{summary}"
    );
    for (image, destination) in [
        ("good", format!("{dead}/m/team/good:v1")),
        ("bad", format!("{t}/m/team/bad:v1")),
    ] {
        let line = format!("::error title=regmirror%3A copy failed::{image}:v1 → {destination}: ");
        assert!(
            run.stderr.contains(&line),
            "no `{line}` in:\n{}",
            run.stderr
        );
    }
    let group = run.stderr.find("::group::regmirror sync: 2 image×tag jobs");
    let end = run.stderr.find("::endgroup::");
    assert!(group.is_some() && group < end, "{}", run.stderr);
}

/// A target connection that breaks in the middle of a blob upload is retried
/// from the spool: the upstream still serves each blob once.
#[tokio::test]
async fn upload_broken_mid_blob_is_retried_from_the_spool() {
    let upstream = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let other = Registry::start(Auth::None);
    let proxy = crate::support::proxy::Proxy::start(
        &target.host,
        vec![crate::support::proxy::Rule::new(
            "PUT",
            "/blobs/uploads/",
            3,
            crate::support::proxy::Action::CutRequestAfter(20_000),
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let image = images::generate(&Spec::new("team/app", "v1", false));
    images::push(&upstream.url(), "team/app", "v1", &image).await;
    MirrorYaml::new()
        .target("flaky", &format!("{}/m", proxy.host))
        .target("steady", &format!("{}/m", other.host))
        .image("app", &format!("{}/team/app", upstream.host), "[v1]")
        .write(dir.path());
    let run = regmirror(dir.path(), &["sync"], &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(proxy.applied(0), 3, "the fault never fired");
    assert_eq!(
        skopeo_raw(&target.host, "m/team/app", "v1", None).as_deref(),
        Some(image.root.2.as_slice())
    );
    assert_eq!(
        skopeo_raw(&other.host, "m/team/app", "v1", None).as_deref(),
        Some(image.root.2.as_slice())
    );
    let unique = unique_blobs([&image]);
    assert_eq!(
        upstream
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.is_blob())
            .count(),
        unique.len(),
        "a blob was fetched upstream twice"
    );
}

/// Wrong credentials: exit 3, the registry named, and neither the password
/// nor any token in any output, even at trace level.
#[tokio::test]
async fn authentication_failure_exits_3_without_leaking_secrets() {
    let (lab, _) = Lab::with_app().await;
    let basic = lab.target("basic");
    let wrong = "wrong-pass-Z1y";
    let mut env = lab.env();
    env.retain(|(k, _)| !k.starts_with("REGMIRROR_AUTH_"));
    env.push((crate::support::auth_var(basic), format!("alice:{wrong}")));
    let run = regmirror(
        lab.dir.path(),
        &[
            "-vv",
            "sync",
            "--json",
            "report.json",
            "--summary",
            "summary.md",
        ],
        &env,
    );
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(
        run.stderr
            .contains(&format!("authentication failed at `{}`", basic.host)),
        "{}",
        run.stderr
    );
    // Every output: the log at trace level, the JSON report, the summary.
    let mut output = run.all();
    for file in ["report.json", "summary.md"] {
        output.push_str(&std::fs::read_to_string(lab.dir.path().join(file)).unwrap());
    }
    assert!(output.contains("\"kind\": \"auth\""), "{output}");
    let mut secrets = lab.secrets();
    assert!(
        secrets.len() >= 3,
        "no bearer token was issued, so none could leak: {}",
        secrets.len()
    );
    secrets.push(wrong.to_string());
    secrets.push(base64::engine::general_purpose::STANDARD.encode(format!("alice:{wrong}")));
    for secret in secrets {
        assert!(!output.contains(&secret), "secret leaked:\n{output}");
    }
    // The other targets were still written.
    assert!(skopeo_raw(&lab.target("plain").host, "mirror/team/app", "v1", None).is_some());
    let token = lab.target("token");
    assert!(skopeo_raw(&token.host, "mirror/team/app", "v1", token.credentials()).is_some());
}

/// Credentials from a Docker credential helper (`credsStore`), the way
/// `docker login` with a desktop keychain leaves them: the helper is a
/// program on PATH, asked with the registry on stdin.
#[tokio::test]
async fn credentials_from_a_docker_credential_helper() {
    let upstream = Registry::start(Auth::None);
    let target = Registry::start(Auth::Htpasswd {
        user: "helper-user".into(),
        password: "helper-pass-P4v".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let (bin, docker) = credential_helper(
        dir.path(),
        "regtest",
        "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" >> \"$(dirname \"$0\")/asked\"\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"helper-user\",\"Secret\":\"helper-pass-P4v\"}' \"$server\"\n",
    );

    let spec = Spec {
        platforms: vec![("amd64", None)],
        ..Spec::new("team/app", "v1", false)
    };
    let image = images::generate(&spec);
    images::push(&upstream.url(), "team/app", "v1", &image).await;
    let env = [
        ("DOCKER_CONFIG".to_string(), docker.display().to_string()),
        (
            "PATH".to_string(),
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        ),
    ];
    let run = regmirror(
        dir.path(),
        &[
            "-vv",
            "copy",
            &format!("{}/team/app:v1", upstream.host),
            &format!("{}/team/app", target.host),
        ],
        &env,
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        !run.all().contains("helper-pass-P4v"),
        "the helper's secret leaked"
    );
    let asked = std::fs::read_to_string(bin.join("asked")).unwrap();
    assert!(
        asked.lines().any(|l| l == target.host),
        "helper not asked for {}: {asked}",
        target.host
    );
    assert_eq!(
        skopeo_raw(&target.host, "team/app", "v1", target.credentials()).as_deref(),
        Some(image.root.2.as_slice())
    );
}

/// A Docker credential helper `docker-credential-<name>` running `script`,
/// in `<dir>/bin`, and a Docker config dir `<dir>/<name>` whose
/// `credsStore` names it: (the bin dir for PATH, the config dir).
fn credential_helper(dir: &Path, name: &str, script: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join(format!("docker-credential-{name}"));
    std::fs::write(&helper, script).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let docker = dir.join(name);
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"credsStore": "{name}"}}"#),
    )
    .unwrap();
    (bin, docker)
}

/// A credential helper that fails (a locked keychain, `pass` without its
/// GPG key) is named with its error, as a warning and in the failure (exit
/// 3), instead of being taken for "no credentials"; with none at all, the
/// failure says where they were looked for and how to add them.
#[tokio::test]
async fn a_failing_helper_is_named_and_missing_credentials_say_where_they_were_looked_for() {
    let upstream = Registry::start(Auth::None);
    let target = Registry::start(Auth::Htpasswd {
        user: "someone".into(),
        password: "s3cret-Qx".into(),
    });
    let image = images::generate(&Spec {
        platforms: vec![("amd64", None)],
        ..Spec::new("team/app", "v1", false)
    });
    images::push(&upstream.url(), "team/app", "v1", &image).await;
    let dir = tempfile::tempdir().unwrap();
    let (bin, broken) = credential_helper(
        dir.path(),
        "broken",
        // As helpers do: read the server asked for, then fail.
        "#!/bin/sh\nread server\necho 'gpg: decryption failed: No secret key' >&2\nexit 1\n",
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let copy = |docker: &std::path::Path| {
        let env = [
            ("DOCKER_CONFIG".to_string(), docker.display().to_string()),
            ("PATH".to_string(), path.clone()),
        ];
        let source = format!("{}/team/app:v1", upstream.host);
        let destination = format!("{}/team/app", target.host);
        regmirror(dir.path(), &["copy", &source, &destination], &env)
    };

    let run = copy(&broken);
    assert_eq!(run.code, 3, "{}", run.all());
    let failed = format!(
        "the credential helper `docker-credential-broken` named in `{}/config.json` failed: gpg: decryption failed: No secret key",
        broken.display()
    );
    assert_eq!(
        run.stderr.matches(&failed).count(),
        3,
        "warned once, then in the log line and the table's failure:\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("no credentials found"),
        "{}",
        run.stderr
    );

    let run = copy(&empty);
    assert_eq!(run.code, 3, "{}", run.all());
    let missing = format!(
        "no credentials found (looked at `{}`, `{}/config.json`): run `docker login {}`, or set `{}=user:token`",
        auth_var(&target),
        empty.display(),
        target.host,
        auth_var(&target)
    );
    assert!(run.stderr.contains(&missing), "{}", run.stderr);
}

/// `plan --matrix N` feeds `--shard`: the matrix's shards, run as `plan
/// --shard`, list every image × tag of the whole plan exactly once.
#[test]
fn matrix_shards_cover_the_plan_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = String::from(
        "version: 1\ntargets: {a: ghcr.io/acme, b: quay.io/acme}\ndefaults: {targets: [a, b]}\nimages:\n",
    );
    for i in 0..40 {
        config += &format!("  - {{name: img{i}, source: docker.io/x/img{i}, tags: [v1, v2]}}\n");
    }
    std::fs::write(dir.path().join("mirror.yaml"), config).unwrap();
    let rows = |run: &crate::support::Run| -> Vec<String> {
        assert_eq!(run.code, 0, "{}", run.all());
        run.stdout
            .lines()
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(":"))
            .collect()
    };
    let mut whole = rows(&regmirror(dir.path(), &["plan"], &[]));
    assert_eq!(whole.len(), 80);
    let matrix = regmirror(dir.path(), &["plan", "--matrix", "3"], &[]);
    assert_eq!(matrix.code, 0, "{}", matrix.all());
    let matrix: serde_json::Value = serde_json::from_str(&matrix.stdout).unwrap();
    let include = matrix["include"].as_array().unwrap();
    assert_eq!(include.len(), 3);
    let mut union = Vec::new();
    for job in include {
        let shard = job["shard"].as_str().unwrap();
        let part = rows(&regmirror(dir.path(), &["plan", "--shard", shard], &[]));
        assert_eq!(part.len() as u64, job["tags"].as_u64().unwrap(), "{shard}");
        union.extend(part);
    }
    union.sort();
    whole.sort();
    assert_eq!(union, whole);
}

/// Every regsync and skopeo-sync configuration in the shared fixtures
/// converts, and `check` passes on what `import` prints. For the 7,526-pair
/// rancher file, the plan holds exactly the source → target pairs the
/// regsync file lists.
#[test]
fn import_converts_every_real_regsync_and_skopeo_config() {
    let fixtures = crate::support::shared_fixtures()
        .expect("../shared/fixtures/real is beside the repository")
        .join("mirror-configs");
    let dir = tempfile::tempdir().unwrap();
    let mut converted = 0;
    for (from, folder) in [("regsync", "regsync"), ("skopeo", "skopeo-sync")] {
        for entry in std::fs::read_dir(fixtures.join(folder)).unwrap() {
            let file = entry.unwrap().path();
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            // retagger's own format, not skopeo's.
            if name.contains("renamed-images") {
                continue;
            }
            let run = regmirror(
                dir.path(),
                &["import", "--from", from, file.to_str().unwrap()],
                &[],
            );
            assert_eq!(run.code, 0, "{name}: {}", run.all());
            let out = dir.path().join(format!("{name}.mirror.yaml"));
            std::fs::write(&out, &run.stdout).unwrap();
            let check = regmirror(dir.path(), &["check", "-c", out.to_str().unwrap()], &[]);
            assert_eq!(check.code, 0, "{name}: {}\n{}", check.all(), run.stdout);
            converted += 1;
        }
    }
    assert_eq!(converted, 21);

    let rancher = fixtures.join("regsync/rancher-image-mirror__regsync.yaml");
    let regsync: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&rancher).unwrap()).unwrap();
    let normal = |reference: &str| -> String {
        let (first, _) = reference.split_once('/').unwrap_or(("", reference));
        let hosted = first.contains('.') || first.contains(':');
        match (hosted, reference.contains('/')) {
            (true, _) => reference.to_string(),
            (false, true) => format!("docker.io/{reference}"),
            (false, false) => format!("docker.io/library/{reference}"),
        }
    };
    let mut expected: Vec<String> = regsync["sync"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                normal(e["source"].as_str().unwrap()),
                normal(e["target"].as_str().unwrap())
            )
        })
        .collect();
    let run = regmirror(
        dir.path(),
        &["import", "--from", "regsync", rancher.to_str().unwrap()],
        &[],
    );
    std::fs::write(dir.path().join("rancher.yaml"), &run.stdout).unwrap();
    let plan = regmirror(dir.path(), &["plan", "-c", "rancher.yaml"], &[]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    let mut planned: Vec<String> = Vec::new();
    for line in plan.stdout.lines().skip(1).take_while(|l| !l.is_empty()) {
        let columns: Vec<&str> = line.split_whitespace().collect();
        for destination in &columns[3..] {
            let (_, repository) = destination.split_once('=').unwrap();
            planned.push(format!("{} {repository}", columns[2]));
        }
    }
    expected.sort();
    planned.sort();
    assert_eq!(expected.len(), 7526);
    assert!(
        planned == expected,
        "the imported plan differs from the regsync pairs"
    );
}

/// The Action's two steps, run as a runner runs them (bash, inputs in the
/// environment). Install: the release binary for this runner comes from a
/// stand-in release server, is checked against the release's SHA256SUMS
/// (a binary that does not match fails the step and is not kept) and is
/// kept in the tool cache. Run: `only: 'ap*'` reaches regmirror as written
/// even beside a file named `apple`, and `copy` is made of `source` and
/// `destinations`.
#[test]
fn action_installs_a_checked_release_binary_and_passes_inputs_as_written() {
    use crate::support::standin::StandIn;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let action: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(root.join("action.yml")).unwrap()).unwrap();
    let step = |i: usize| {
        action["runs"]["steps"][i]["run"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (install, run) = (step(0), step(1));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A stand-in regmirror that writes down its arguments.
    let fake = "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$ARGS_FILE\"\n";
    let asset = "regmirror-x86_64-unknown-linux-musl";
    let sums = format!(
        "{}  {asset}\n",
        images::sha256(fake.as_bytes()).trim_start_matches("sha256:")
    );
    let server = StandIn::start(move |request, _| {
        let body = match request.path() {
            "/v0.9.0/regmirror-x86_64-unknown-linux-musl" => fake.as_bytes().to_vec(),
            "/v0.9.0/SHA256SUMS" => sums.clone().into_bytes(),
            // A release whose binary was swapped after the sums were made.
            "/v0.9.1/regmirror-x86_64-unknown-linux-musl" => b"#!/bin/sh\necho evil\n".to_vec(),
            "/v0.9.1/SHA256SUMS" => sums.clone().into_bytes(),
            _ => return (404, Vec::new(), Vec::new()),
        };
        (200, Vec::new(), body)
    });
    let bash = |script: &str, env: &[(&str, String)]| {
        let mut command = std::process::Command::new("bash");
        command.arg("-c").arg(script).current_dir(d);
        command
            .env("RUNNER_TEMP", d)
            .env("GITHUB_OUTPUT", d.join("output"));
        command
            .env("GITHUB_PATH", d.join("path"))
            .env("RUNNER_TOOL_CACHE", d.join("cache"));
        command.env("RUNNER_OS", "Linux").env("RUNNER_ARCH", "X64");
        command.env("ACTION_REPOSITORY", "acme/regmirror");
        command.env("REGMIRROR_RELEASES_URL", &server.url);
        command.env("ARGS_FILE", d.join("args"));
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };

    let tampered = bash(&install, &[("VERSION", "v0.9.1".into())]);
    assert!(!tampered.status.success(), "{tampered:?}");
    assert!(
        !d.join("cache/regmirror/v0.9.1")
            .join("x86_64-unknown-linux-musl/regmirror")
            .exists()
    );
    let installed = bash(&install, &[("VERSION", "v0.9.0".into())]);
    assert!(installed.status.success(), "{installed:?}");
    let bin = d.join("cache/regmirror/v0.9.0/x86_64-unknown-linux-musl/regmirror");
    // The binary's path is the step's output; the job's PATH is untouched.
    let output = std::fs::read_to_string(d.join("output")).unwrap();
    assert_eq!(output.trim(), format!("binary={}", bin.display()));
    assert!(!d.join("path").exists(), "the Action wrote GITHUB_PATH");
    // A second install finds it in the tool cache and says so the same way.
    std::fs::remove_file(d.join("output")).unwrap();
    let cached = bash(&install, &[("VERSION", "v0.9.0".into())]);
    assert!(cached.status.success(), "{cached:?}");
    let output = std::fs::read_to_string(d.join("output")).unwrap();
    assert_eq!(output.trim(), format!("binary={}", bin.display()));

    std::fs::write(d.join("apple"), "a file the glob would match").unwrap();
    let input = |command: &str, rest: &[(&str, &str)]| {
        let mut env = vec![
            ("REGMIRROR", bin.display().to_string()),
            ("COMMAND", command.to_string()),
        ];
        for key in ["ONLY", "TARGETS", "SHARD", "SOURCE", "DESTINATIONS", "ARGS"] {
            let value = rest.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
            env.push((key, value.unwrap_or_default().to_string()));
        }
        env.push(("CONFIG", "mirror.yaml".to_string()));
        let out = bash(&run, &env);
        assert!(out.status.success(), "{out:?}");
        std::fs::read_to_string(d.join("args")).unwrap()
    };
    let sync = input("sync", &[("ONLY", "ap*, web"), ("ARGS", "--dry-run")]);
    let report = d.join("regmirror-sync.json").display().to_string();
    assert_eq!(
        sync.lines().collect::<Vec<_>>(),
        [
            "sync",
            "-c",
            "mirror.yaml",
            "--only",
            "ap*",
            "--only",
            "web",
            "--json",
            &report,
            "--dry-run"
        ]
    );
    let copy = input(
        "copy",
        &[
            ("SOURCE", "oci:out:1.0"),
            ("DESTINATIONS", "ghcr.io/a/b:1.0,\ndocker.io/a/b:1.0"),
        ],
    );
    let report = d.join("regmirror-copy.json").display().to_string();
    assert_eq!(
        copy.lines().collect::<Vec<_>>(),
        [
            "copy",
            "--json",
            &report,
            "oci:out:1.0",
            "ghcr.io/a/b:1.0",
            "docker.io/a/b:1.0"
        ]
    );
}

/// The GitHub workflows and the composite action are valid by GitHub's
/// schemas (check-jsonschema's vendored copies, offline), and every
/// `inputs.X` they use is an input they define.
#[test]
fn workflows_and_action_are_valid_and_use_only_defined_inputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<(std::path::PathBuf, &str)> =
        std::fs::read_dir(root.join(".github/workflows"))
            .unwrap()
            .map(|e| (e.unwrap().path(), "builtin:vendor.github-workflows"))
            .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["ci.yml", "mirror.yml", "pages.yml", "release.yml"]);
    files.push((root.join("action.yml"), "builtin:vendor.github-actions"));
    let reference = regex::Regex::new(r"inputs\.([A-Za-z0-9_-]+)").unwrap();
    for (file, schema) in &files {
        crate::support::check_jsonschema(schema, file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let text = std::fs::read_to_string(file).unwrap();
        let document: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let mut defined: Vec<String> = Vec::new();
        for inputs in [
            &document["inputs"],
            &document["on"]["workflow_dispatch"]["inputs"],
            &document["on"]["workflow_call"]["inputs"],
        ] {
            defined.extend(
                inputs
                    .as_object()
                    .into_iter()
                    .flat_map(|o| o.keys().cloned()),
            );
        }
        for capture in reference.captures_iter(&text) {
            let name = &capture[1];
            assert!(
                defined.iter().any(|d| d == name),
                "{}: `inputs.{name}` is not defined (defined: {defined:?})",
                file.display()
            );
        }
    }
    // The scheduled mirror has what the design asks of it.
    let mirror = std::fs::read_to_string(root.join(".github/workflows/mirror.yml")).unwrap();
    for needle in [
        "schedule:",
        "workflow_dispatch:",
        "concurrency:",
        "plan --matrix",
        "fromJSON(needs.plan.outputs.matrix)",
        "uses: acme/regmirror@v1",
        "shard: ${{ matrix.shard }}",
        "set -o noglob",
        "docker/login-action",
        "aws-actions/amazon-ecr-login",
        "registry-type: public",
        "command: verify",
    ] {
        assert!(mirror.contains(needle), "mirror.yml lacks `{needle}`");
    }
    // The site is built as CI builds it: strict.
    let pages = std::fs::read_to_string(root.join(".github/workflows/pages.yml")).unwrap();
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    for text in [&pages, &ci] {
        assert!(text.contains("mkdocs build --strict"));
    }
    assert!(pages.contains("actions/deploy-pages@"));
}

/// Shell completions and man pages are generated from the arguments clap
/// reads, so they name every command and flag there is: bash's script is
/// valid bash, zsh's and fish's are what those shells load, and `man --out`
/// writes a page per command.
#[test]
fn completions_and_man_pages_come_from_the_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let text = |args: &[&str]| {
        let run = regmirror(dir.path(), args, &[]);
        assert_eq!(run.code, 0, "{args:?}: {}", run.all());
        run.stdout
    };
    let bash = text(&["completions", "bash"]);
    for word in ["containerd-hosts", "--log-format", "--only", "verify"] {
        assert!(bash.contains(word), "bash lacks {word}");
    }
    std::fs::write(dir.path().join("regmirror.bash"), &bash).unwrap();
    let syntax = std::process::Command::new("bash")
        .args(["-n", "regmirror.bash"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    assert!(text(&["completions", "zsh"]).starts_with("#compdef regmirror"));
    assert!(text(&["completions", "fish"]).contains("complete -c regmirror"));
    let page = text(&["man"]);
    assert!(page.contains(".TH regmirror 1"), "{page}");
    assert!(
        page.contains("containerd\\-hosts") && page.contains("Exit codes"),
        "{page}"
    );
    text(&["man", "--out", "man"]);
    let sync = std::fs::read_to_string(dir.path().join("man/regmirror-sync.1")).unwrap();
    assert!(sync.contains("\\-\\-deep"), "{sync}");
}

/// Every relative link in README.md and docs/ names a file that exists
/// (an anchor after it is not checked here).
#[test]
fn relative_links_in_the_docs_resolve() {
    const REPOSITORY: [&str; 2] = [
        "https://github.com/acme/regmirror/blob/main/",
        "https://github.com/acme/regmirror/tree/main/",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut checked = 0;
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            // The site links to files beside `docs/` by their address on
            // GitHub (mkdocs takes a relative link out of `docs/` for a
            // broken one): those must name files here.
            let target = REPOSITORY
                .iter()
                .find_map(|prefix| target.strip_prefix(prefix))
                .map(|path| format!("/{path}"))
                .unwrap_or_else(|| target.to_string());
            let target = target.as_str();
            if target.is_empty()
                || target.starts_with('#')
                || target.contains("://")
                || target.starts_with("mailto:")
                || target.contains(' ')
            {
                continue;
            }
            let file = target.split('#').next().unwrap();
            checked += 1;
            let path = match file.strip_prefix('/') {
                Some(in_repository) => root.join(in_repository),
                None => page.parent().unwrap().join(file),
            };
            if !path.exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked >= 10, "only {checked} relative links found");
}
