//! Hostile registries and bad networks (DESIGN §5b): what a registry sends
//! is untrusted. Small scripted servers and the fault proxy in front of real
//! registries, one test per class, each asserting the bad thing cannot
//! happen: writes outside the prefix, credentials to another host,
//! workflow commands from registry text, fan-out manifests, dead and
//! trickling peers, an unbounded spool, overlapping runs, signals, stored
//! corruption that HEADs cannot see.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::check::{TagState, deep_check};
use crate::support::config::MirrorYaml;
use crate::support::images::{self, Spec};
use crate::support::lab::{Lab, outcome, small};
use crate::support::proxy::{Action, Proxy, Rule};
use crate::support::{Auth, Registry, regmirror, regmirror_command};

/// `mirror.yaml` with one target `t0` (`HOST/m`).
fn one_target(target: &str) -> MirrorYaml {
    MirrorYaml::new().target("t0", &format!("{target}/m"))
}

/// `mirror.yaml` copying every tag of `SOURCE/team/app0` to `t0`.
fn every_tag_of_app0(target: &str, source: &str) -> MirrorYaml {
    one_target(target).image("app0", &format!("{source}/team/app0"), "{ regex: '.*' }")
}

fn json_reply(body: String, headers: &[(&str, String)]) -> Action {
    let mut all = vec![("Content-Type".to_string(), "application/json".to_string())];
    all.extend(headers.iter().map(|(n, v)| (n.to_string(), v.clone())));
    Action::Respond {
        status: 200,
        headers: all,
        body: body.into_bytes(),
    }
}

/// A source's tag list is untrusted: tags outside the spec's grammar (`..`,
/// `%2e%2e`, `a%2fb`, `?`, `#`, a path) are skipped with a warning naming
/// them, and no request leaves the target prefix: a victim repository on
/// the target keeps its digest.
#[tokio::test]
async fn hostile_tags_never_leave_the_target_prefix() {
    let setup = Lab::new(1, 1).await;
    let target = &setup.targets[0];
    let victim = small("victim", 7);
    images::push(&target.url(), "victim", "v1", &victim).await;
    let hostile = [
        "..",
        "../../../../victim/manifests/v1",
        "%2e%2e",
        "%2E%2E%2F%2E%2E",
        "a%2fb",
        "x?y=1",
        "x#y",
        "v1/../../../../victim",
    ];
    let mut tags = vec!["v1"];
    tags.extend(hostile);
    let proxy = Proxy::start(
        &setup.upstream.host,
        vec![Rule::new(
            "GET",
            "/tags/list",
            usize::MAX,
            json_reply(serde_json::json!({ "tags": tags }).to_string(), &[]),
        )],
    );
    every_tag_of_app0(&target.host, &proxy.host).write(setup.dir.path());
    let mark = target.mark();
    let (run, report) = setup.sync(&[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(outcome(&report, "app0", "t0"), "copied");
    assert_eq!(report["results"].as_array().unwrap().len(), 1, "{report:#}");
    for tag in hostile {
        assert!(
            run.stderr.contains(&format!("skipping tag {tag:?}")),
            "{tag} not named:\n{}",
            run.stderr
        );
    }
    let outside: Vec<String> = target
        .requests()
        .iter()
        .skip(mark)
        .filter(|r| r.path != "/v2/" && !r.path.starts_with("/v2/m/team/app0/"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        outside.is_empty(),
        "requests outside the prefix: {outside:#?}"
    );
    assert_eq!(
        deep_check(&target.host, "victim", "v1").await,
        TagState::Complete(victim.root.0.clone())
    );
}

/// Credentials stay with their registry: a tag list `Link`, a blob
/// redirect and an upload `Location` that point at another host are
/// followed without them; the other host's 401 and its realm teach
/// regmirror nothing, and that host never sees an `Authorization` header.
#[tokio::test]
async fn credentials_never_reach_another_host() {
    let foreign = crate::support::standin::StandIn::start(|request, base| {
        let json = vec![("Content-Type".to_string(), "application/json".to_string())];
        match request.path() {
            p if p.ends_with("/tags/list") => (200, json, br#"{"tags":[]}"#.to_vec()),
            "/token" => (200, json, br#"{"token":"stolen"}"#.to_vec()),
            _ => (
                401,
                vec![(
                    "WWW-Authenticate".to_string(),
                    format!(r#"Bearer realm="{base}/token",service="evil""#),
                )],
                b"{}".to_vec(),
            ),
        }
    });
    let setup = Lab::new(2, 1).await;
    // Both ends ask for Basic credentials, so regmirror holds a password for each.
    let basic = || {
        Rule::new(
            "GET",
            "/v2/",
            1,
            Action::Respond {
                status: 401,
                headers: vec![("WWW-Authenticate".into(), r#"Basic realm="r""#.into())],
                body: Vec::new(),
            },
        )
    };
    let source = Proxy::start(
        &setup.upstream.host,
        vec![
            basic(),
            // app0's tag list goes on at the foreign host.
            Rule::new(
                "GET",
                "/team/app0/tags/list",
                usize::MAX,
                json_reply(
                    r#"{"tags":["v1"]}"#.into(),
                    &[(
                        "Link",
                        format!(
                            r#"<{}/v2/team/app0/tags/list?last=v1>; rel="next""#,
                            foreign.url
                        ),
                    )],
                ),
            ),
            // app0's blobs are "on a CDN": the foreign host.
            Rule::new(
                "GET",
                "/team/app0/blobs/sha256:",
                usize::MAX,
                Action::Respond {
                    status: 307,
                    headers: vec![("Location".into(), format!("{}/cdn/blob", foreign.url))],
                    body: Vec::new(),
                },
            ),
        ],
    );
    let target = Proxy::start(
        &setup.targets[0].host,
        vec![
            basic(),
            // app1's uploads are sent to the foreign host.
            Rule::new(
                "POST",
                "/m/team/app1/blobs/uploads/",
                usize::MAX,
                Action::Respond {
                    status: 202,
                    headers: vec![("Location".into(), format!("{}/upload/1", foreign.url))],
                    body: Vec::new(),
                },
            ),
        ],
    );
    one_target(&target.host)
        .image(
            "app0",
            &format!("{}/team/app0", source.host),
            "{ regex: '.*' }",
        )
        .image("app1", &format!("{}/team/app1", source.host), "[v1]")
        .write(setup.dir.path());
    let secret = |host: &str| {
        let name: String = host
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        (
            format!("REGMIRROR_AUTH_{name}"),
            format!("alice:secret-for-{host}"),
        )
    };
    let run = regmirror(
        setup.dir.path(),
        &["sync", "--json", "report.json"],
        &[secret(&source.host), secret(&target.host)],
    );
    assert_ne!(run.code, 0, "{}", run.all());
    let seen = foreign.requests();
    let paths: Vec<&str> = seen.iter().map(|r| r.path()).collect();
    // Every way to the foreign host was taken …
    for path in ["/v2/team/app0/tags/list", "/cdn/blob", "/upload/1"] {
        assert!(
            paths.contains(&path),
            "{path} not reached: {paths:?}\n{}",
            run.all()
        );
    }
    // … and it never saw a credential, nor a token request.
    for request in &seen {
        assert_eq!(request.header("authorization"), None, "{request:?}");
    }
    assert!(!paths.contains(&"/token"), "{paths:?}");
    assert!(
        seen.iter()
            .any(|r| r.method == "PUT" && r.path() == "/upload/1"),
        "the upload went there as a PUT"
    );
    assert!(
        run.stderr.contains("credentials are not sent there"),
        "{}",
        run.stderr
    );
    assert!(!run.all().contains("secret-for"), "{}", run.all());
}

/// Text from a registry (an error body) never reaches stderr or stdout as a
/// GitHub Actions workflow command: no line that starts with `::`, and no
/// `##[` anywhere (the legacy form); and it is inert in the step summary (no
/// link, image or HTML).
#[tokio::test]
async fn registry_text_cannot_command_the_runner_or_the_summary() {
    let setup = Lab::new(1, 1).await;
    // Both of the runner's grammars: `::name::` at a line's start, and the
    // legacy `##[name]`, which actions/runner's ActionCommand.TryParse finds
    // anywhere in a line.
    let body = "oops\n::error::pwned\n  ::add-mask::secret\nsee ##[warning]legacy-pwned and ##[set-env name=X]y\n![x](http://evil.example/x.png) <img src=x onerror=alert(1)> [click](http://evil.example)";
    let target = Proxy::start(
        &setup.targets[0].host,
        vec![Rule::new(
            "PUT",
            "/manifests/",
            usize::MAX,
            Action::Respond {
                status: 400,
                headers: vec![("Content-Type".into(), "text/plain".into())],
                body: body.as_bytes().to_vec(),
            },
        )],
    );
    setup.config(&setup.upstream.host, &[&target.host], "");
    let run = regmirror(
        setup.dir.path(),
        &["sync", "--summary", "summary.md"],
        &[("GITHUB_ACTIONS".into(), "true".into())],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("pwned"), "{}", run.stderr);
    let ours = [
        "::error title=regmirror",
        "::warning title=regmirror",
        "::group::",
        "::endgroup::",
    ];
    assert!(run.stderr.contains("legacy-pwned"), "{}", run.stderr);
    assert!(
        !run.all().contains("##["),
        "a legacy workflow command:\n{}",
        run.all()
    );
    for line in run.all().lines() {
        let line = line.trim_start();
        if line.starts_with("::") {
            assert!(
                ours.iter().any(|o| line.starts_with(o)),
                "a workflow command from registry text: {line}"
            );
        }
    }
    let summary = std::fs::read_to_string(setup.dir.path().join("summary.md")).unwrap();
    let row = summary
        .lines()
        .find(|l| l.contains("pwned"))
        .expect(&summary);
    let message = row.trim_end_matches(" |").rsplit(" | ").next().unwrap();
    assert!(
        message.starts_with('`') && message.ends_with('`') && message.matches('`').count() == 2,
        "the registry's text is not one code span: {row}"
    );
}

/// An index that repeats a child a thousand times, listed a thousand times
/// by another index (a million entries in 300 KB), costs one GET per
/// distinct manifest, and the image copies complete.
#[tokio::test]
async fn a_manifest_tree_fetches_each_digest_once() {
    let setup = Lab::new(1, 1).await;
    let (child, child_type, child_bytes) = setup.images[0].1.root.clone();
    let entries = |digest: &str, media_type: &str, size: usize| {
        let entry = serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size });
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": images::OCI_INDEX,
            "manifests": vec![entry; 1000],
        })
        .to_string()
        .into_bytes()
    };
    let inner = entries(&child, &child_type, child_bytes.len());
    let inner_digest = images::sha256(&inner);
    let outer = entries(&inner_digest, images::OCI_INDEX, inner.len());
    let http = reqwest::Client::new();
    let upstream = setup.upstream.url();
    images::put_manifest(
        &http,
        &upstream,
        "team/app0",
        &inner_digest,
        images::OCI_INDEX,
        &inner,
    )
    .await;
    images::put_manifest(
        &http,
        &upstream,
        "team/app0",
        "fan",
        images::OCI_INDEX,
        &outer,
    )
    .await;
    one_target(&setup.targets[0].host)
        .image(
            "app0",
            &format!("{}/team/app0", setup.upstream.host),
            "[fan]",
        )
        .write(setup.dir.path());
    let mark = setup.upstream.mark();
    let (run, report) = setup.sync(&[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(outcome(&report, "app0", "t0"), "copied");
    let gets: Vec<String> = setup
        .upstream
        .requests()
        .iter()
        .skip(mark)
        .filter(|r| r.method == "GET" && r.is_manifest())
        .map(|r| r.path.clone())
        .collect();
    // The root is read by its tag (the target lacked it: one GET gives
    // digest and bytes), and each manifest under it by digest, once.
    let outer_digest = images::sha256(&outer);
    for reference in ["fan", inner_digest.as_str(), child.as_str()] {
        let n = gets
            .iter()
            .filter(|p| p.ends_with(&format!("/manifests/{reference}")))
            .count();
        assert_eq!(n, 1, "{reference} fetched {n} times: {gets:#?}");
    }
    assert_eq!(
        deep_check(&setup.targets[0].host, "m/team/app0", "fan").await,
        TagState::Complete(outer_digest)
    );
}

/// A TCP server that accepts connections and never answers; returns its
/// address and how many connections it took.
fn black_hole() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (host, accepted)
}

/// A target that accepts connections and never answers stalls its first
/// requests, is marked down after three in a row, and its remaining work
/// fails at once with that cause; the healthy target gets every image and
/// the run ends within seconds, not after minutes of time-outs.
#[tokio::test]
async fn a_dead_target_is_marked_down_and_the_healthy_one_goes_on() {
    let setup = Lab::new(6, 1).await;
    let (dead, accepted) = black_hole();
    setup.config(
        &setup.upstream.host,
        &[&dead, &setup.targets[0].host],
        &format!("  {dead}:\n    timeout: 1s\n"),
    );
    let started = Instant::now();
    let (run, report) = setup.sync(&[]);
    let took = started.elapsed();
    assert_eq!(run.code, 1, "{}", run.all());
    for (name, _) in &setup.images {
        assert_eq!(outcome(&report, name, "t1"), "copied", "{report:#}");
        assert_eq!(outcome(&report, name, "t0"), "failed", "{report:#}");
    }
    let messages: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"] == "t0")
        .map(|r| r["error"]["message"].as_str().unwrap())
        .collect();
    // The first requests fail with their own stall (each retried), the
    // rest at once with the host marked down.
    let down = messages
        .iter()
        .filter(|m| m.contains("is marked down for this run"))
        .count();
    assert!(
        messages
            .iter()
            .all(|m| m.contains("is marked down for this run") || m.contains("stalled")),
        "{messages:#?}"
    );
    assert!(down >= 3, "{messages:#?}");
    assert!(
        run.stderr.contains("stalled: less than 1 KiB moved in 1s"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("marked down for this run after 3"),
        "{}",
        run.stderr
    );
    // Three stalls and the attempt after them, not a connection per request.
    let connections = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        connections <= 8,
        "{connections} connections to the dead target"
    );
    // Generous for a loaded CI machine; without the deadline this run takes
    // minutes (each request waits out its time-out, four times).
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// A blob that trickles (a byte every 300 ms, so never idle by the second)
/// is a stall: retried a bounded number of times, then the image fails
/// naming it, while the run ends within seconds.
#[tokio::test]
async fn a_trickling_body_is_a_stall() {
    let setup = Lab::new(1, 1).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let trickle = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
                while stream.write_all(b"x").is_ok() {
                    std::thread::sleep(Duration::from_millis(300));
                }
            });
        }
    });
    let source = Proxy::start(
        &setup.upstream.host,
        vec![Rule::new(
            "GET",
            "/blobs/sha256:",
            usize::MAX,
            Action::Respond {
                status: 307,
                headers: vec![("Location".into(), format!("http://{trickle}/blob"))],
                body: Vec::new(),
            },
        )],
    );
    setup.config(
        &source.host,
        &setup.target_hosts(),
        &format!("  {}:\n    timeout: 1s\n", source.host),
    );
    let started = Instant::now();
    let (run, report) = setup.sync(&[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(outcome(&report, "app0", "t0"), "failed");
    let message = report["results"][0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("stalled") || message.contains("marked down"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        deep_check(&setup.targets[0].host, "m/team/app0", "v1").await,
        TagState::Absent
    );
}

/// A slow upload link: an image of one platform with layers of
/// `layer_size` in a fresh upstream, a target behind a proxy that forwards
/// uploads larger than 1 MiB at `rate` bytes a second, and a `mirror.yaml`
/// (image `big`, target `t0`) with `timeout` for that target.
struct SlowUpload {
    image: images::Generated,
    target: Registry,
    slow: Proxy,
    dir: tempfile::TempDir,
    _upstream: Registry,
}

impl SlowUpload {
    async fn new(layer_size: usize, base: u64, rate: usize, timeout: &str) -> SlowUpload {
        let upstream = Registry::start(Auth::None);
        let image = images::generate(&Spec {
            platforms: vec![("amd64", None)],
            layer_size,
            attestations: false,
            base,
            ..Spec::new("team/big", "v1", false)
        });
        images::push(&upstream.url(), "team/big", "v1", &image).await;
        let target = Registry::start(Auth::None);
        let rule = Rule::new("PUT", "/blobs/uploads/", usize::MAX, Action::Throttle(rate))
            .larger_than(1 << 20);
        let slow = Proxy::start(&target.host, vec![rule]);
        let dir = tempfile::tempdir().unwrap();
        MirrorYaml::new()
            .registries(&format!("  {}:\n    timeout: {timeout}\n", slow.host))
            .target("t0", &format!("{}/m", slow.host))
            .image("big", &format!("{}/team/big", upstream.host), "[v1]")
            .write(dir.path());
        SlowUpload {
            image,
            target,
            slow,
            dir,
            _upstream: upstream,
        }
    }

    /// Blob upload PUTs the proxy saw.
    fn puts(&self) -> usize {
        self.slow
            .seen()
            .iter()
            .filter(|s| s.method == "PUT" && s.path.contains("/blobs/uploads/"))
            .count()
    }
}

/// A layer whose upload takes several times the idle time-out, over a slow
/// link that keeps moving, lands (issue 14: with reqwest's `read_timeout`,
/// which runs from the request to the response head, reqwest#2784, a
/// 48 MiB layer over a 320 KiB/s uplink never arrived). Here a 6 MiB layer
/// goes at 1.5 MiB/s against a 1 s time-out: more than the kernel buffers,
/// so the body is still being written long after the time-out has passed.
#[tokio::test]
async fn an_upload_longer_than_the_time_out_that_keeps_moving_lands() {
    let link = SlowUpload::new(6 << 20, 401, 3 << 19, "1s").await;
    let started = Instant::now();
    let run = regmirror(link.dir.path(), &["sync"], &[]);
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{}", run.all());
    // Each blob was PUT once: no slow upload was cut and retried.
    assert_eq!(link.puts(), link.image.blobs.len(), "{}", run.all());
    let large = link
        .image
        .blobs
        .iter()
        .filter(|(_, b)| b.len() > 1 << 20)
        .count();
    assert!(
        large >= 2 && link.slow.applied(0) == large,
        "{large} large blobs"
    );
    // Several time-outs long: a total time-out of 1 s would have cut it.
    assert!(took > Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        deep_check(&link.target.host, "m/team/big", "v1").await,
        TagState::Complete(link.image.root.0.clone())
    );
}

/// A report file that cannot be written is named on stderr and leaves the
/// run's exit code as the copies made it.
#[tokio::test]
async fn an_unwritable_report_does_not_change_the_exit_code() {
    let setup = Lab::new(1, 1).await;
    setup.config(&setup.upstream.host, &setup.target_hosts(), "");
    let run = regmirror(
        setup.dir.path(),
        &[
            "sync",
            "--json",
            "no-such-dir/report.json",
            "--summary",
            "no-such-dir/summary.md",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr
            .contains("write the JSON report `no-such-dir/report.json`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("write the summary `no-such-dir/summary.md`"),
        "{}",
        run.stderr
    );
    assert_eq!(
        deep_check(&setup.targets[0].host, "m/team/app0", "v1").await,
        TagState::Complete(setup.images[0].1.root.0.clone())
    );
}

/// Disk use is bounded by what is in flight: with one job at a time, the
/// spool never holds more than one image's blobs, and nothing is left.
#[tokio::test]
async fn the_spool_holds_only_what_is_in_flight() {
    let setup = Lab::new(10, 1).await;
    setup.config(&setup.upstream.host, &setup.target_hosts(), "");
    let spool = setup.dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let largest: u64 = setup
        .images
        .iter()
        .map(|(_, image)| image.blobs.iter().map(|(_, b)| b.len() as u64).sum::<u64>())
        .max()
        .unwrap();
    let total: u64 = setup
        .images
        .iter()
        .flat_map(|(_, image)| image.blobs.iter().map(|(_, b)| b.len() as u64))
        .sum();
    let mut child = regmirror_command(
        setup.dir.path(),
        &["sync", "--jobs", "1"],
        &[("REGMIRROR_SPOOL".into(), spool.display().to_string())],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let bytes_in = |dir: &Path| -> u64 {
        walk(dir)
            .iter()
            .filter(|p| !p.ends_with(".lock"))
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    };
    let mut peak = 0;
    let status = loop {
        peak = peak.max(bytes_in(&spool));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(status.success());
    assert!(peak > 0, "never saw the spool in use");
    assert!(
        peak <= largest,
        "the spool held {peak} bytes; one image is at most {largest} (all: {total})"
    );
    assert!(
        walk(&spool).is_empty(),
        "left in the spool: {:?}",
        walk(&spool)
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Two runs against the same targets at once (a nightly run and a manual
/// backfill) both succeed, round after round: a manifest PUT that the
/// registry answers `MANIFEST_BLOB_UNKNOWN` (distribution rewrites a blob's
/// link file by truncating it while the other run writes the same blob)
/// re-checks what it names and tries again.
#[tokio::test]
async fn overlapping_runs_both_succeed() {
    let upstream = Registry::start(Auth::None);
    let mut generated = Vec::new();
    for (i, name) in ["web", "api", "worker"].iter().enumerate() {
        let image = images::generate(&Spec {
            base: 1, // one base layer shared by all three
            layer_size: 16 * 1024,
            ..Spec::new(&format!("team/{name}"), "v1", i == 1)
        });
        images::push(&upstream.url(), &format!("team/{name}"), "v1", &image).await;
        generated.push((name.to_string(), image));
    }
    let mut failures = Vec::new();
    for round in 0..8 {
        let target = Registry::start(Auth::None);
        let dir = tempfile::tempdir().unwrap();
        let mut yaml = MirrorYaml::new()
            .target("t", &format!("{}/m", target.host))
            .referrers(false);
        for (name, _) in &generated {
            yaml = yaml.image(name, &format!("{}/team/{name}", upstream.host), "[v1]");
        }
        yaml.write(dir.path());
        let spawn = || {
            regmirror_command(dir.path(), &["sync"], &[])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        for run in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
            if !run.status.success() {
                failures.push(format!(
                    "round {round}: {}",
                    String::from_utf8_lossy(&run.stderr)
                ));
            }
        }
        for (name, image) in &generated {
            assert_eq!(
                deep_check(&target.host, &format!("m/team/{name}"), "v1").await,
                TagState::Complete(image.root.0.clone()),
                "round {round}: {name}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed runs:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A proxy in front of `upstream` that holds every blob GET for `delay`.
fn slow_blobs(upstream: &Registry, delay: Duration) -> Proxy {
    let rule = Rule::new("GET", "/blobs/sha256:", usize::MAX, Action::Delay(delay));
    Proxy::start(&upstream.host, vec![rule])
}

/// Sends SIGTERM to the process `pid` (by PID, never by name).
fn sigterm(pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// SIGTERM (a cancelled CI job) stops the run within seconds: no new work
/// starts, the reports are written with the unfinished pairs `cancelled`,
/// the spool is removed, the exit code is 143, and every tag on the target
/// names a complete image or is absent.
#[tokio::test]
async fn sigterm_stops_cleanly_and_reports_the_unfinished() {
    let setup = Lab::new(12, 1).await;
    let slow = slow_blobs(&setup.upstream, Duration::from_millis(400));
    setup.config(&slow.host, &setup.target_hosts(), "");
    let spool = setup.dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let child = regmirror_command(
        setup.dir.path(),
        &[
            "sync",
            "--jobs",
            "2",
            "--json",
            "report.json",
            "--summary",
            "summary.md",
        ],
        &[("REGMIRROR_SPOOL".into(), spool.display().to_string())],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let signalled = Instant::now();
    sigterm(child.id());
    let output = child.wait_with_output().unwrap();
    let stopped = signalled.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(
        stopped < Duration::from_secs(10),
        "took {stopped:?} to stop"
    );
    assert!(stderr.contains("stopping: no new work starts"), "{stderr}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(setup.dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["exit_code"], 143);
    let cancelled = report["totals"]["cancelled"].as_u64().unwrap();
    assert!(cancelled > 0, "{report:#}");
    assert_eq!(
        report["results"].as_array().unwrap().len(),
        12,
        "every pair is reported"
    );
    let summary = std::fs::read_to_string(setup.dir.path().join("summary.md")).unwrap();
    assert!(
        summary.contains(&format!("{cancelled} cancelled")),
        "{summary}"
    );
    for (name, image) in &setup.images {
        let state = deep_check(&setup.targets[0].host, &format!("m/team/{name}"), "v1").await;
        match outcome(&report, name, "t0").as_str() {
            "copied" | "present" => {
                assert_eq!(state, TagState::Complete(image.root.0.clone()), "{name}")
            }
            "cancelled" => assert!(
                state == TagState::Absent || state == TagState::Complete(image.root.0.clone()),
                "{name}: {state:?}"
            ),
            other => panic!("{name}: {other}"),
        }
    }
    assert!(
        walk(&spool).is_empty(),
        "left in the spool: {:?}",
        walk(&spool)
    );
}

/// A target whose stored layer was corrupted (same size, flipped bytes) is
/// called healthy by `verify --deep` (HEADs), and found by
/// `verify --deep --content`, which reads each blob once and names it.
#[tokio::test]
async fn verify_content_finds_a_corrupted_layer_that_heads_call_present() {
    let setup = Lab::new(1, 1).await;
    setup.config(&setup.upstream.host, &setup.target_hosts(), "");
    let (run, _) = setup.sync(&[]);
    assert_eq!(run.code, 0, "{}", run.all());
    let target = &setup.targets[0];
    let image = &setup.images[0].1;
    let (victim, _) = image.blobs.iter().max_by_key(|(_, b)| b.len()).unwrap();
    let path = target.blob_data(victim);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let heads = regmirror(setup.dir.path(), &["verify", "--deep"], &[]);
    assert_eq!(heads.code, 0, "HEADs cannot see it:\n{}", heads.all());

    let mark = target.mark();
    let content = regmirror(setup.dir.path(), &["verify", "--deep", "--content"], &[]);
    assert_eq!(content.code, 4, "{}", content.all());
    // Called corrupt, not missing: the blob, what it should hash to and
    // what the target's bytes hash to.
    let served = images::sha256(&bytes);
    let text = content.all();
    assert!(text.contains("CORRUPT"), "{text}");
    assert!(
        !text.contains("INCOMPLETE") && !text.contains("missing"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "blob {victim} is corrupt: the target serves bytes of digest {served}"
        )),
        "{text}"
    );
    let unique: std::collections::HashSet<&String> = image.blobs.iter().map(|(d, _)| d).collect();
    // The registry logs a request after answering it: give the last line a moment.
    let mut blob_gets = 0;
    for _ in 0..100 {
        blob_gets = target.count_since(mark, "GET", crate::support::Request::is_blob);
        if blob_gets >= unique.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(blob_gets, unique.len(), "each blob read once");
}

/// The first sync into a repository that does not exist yet, on a registry
/// whose token service grants nothing to a pull-only scope there (Docker
/// Hub), copies: destination checks ask for the push scope. Before, it
/// failed as "authentication failed" (exit 3).
#[tokio::test]
async fn destination_checks_use_the_push_scope_docker_hub_needs() {
    let setup = Lab::new(1, 0).await;
    let issuer = crate::support::token::Issuer::start_docker_hub("robot", "hub-pass-R2d", 300);
    let hub = Registry::start(Auth::Token(issuer));
    one_target(&hub.host)
        // Two components, as Docker Hub takes them.
        .image_with(
            "app0",
            &format!("{}/team/app0", setup.upstream.host),
            "[v1]",
            "    path: app0\n",
        )
        .write(setup.dir.path());
    let run = regmirror(
        setup.dir.path(),
        &["sync", "--json", "report.json"],
        &crate::support::auth_env(&hub),
    );
    assert_eq!(run.code, 0, "{}", run.all());
    let report: Value =
        serde_json::from_slice(&std::fs::read(setup.dir.path().join("report.json")).unwrap())
            .unwrap();
    // `copied` is reported only after the tag was HEADed back with the source's digest.
    assert_eq!(outcome(&report, "app0", "t0"), "copied");
}

/// A second signal stops the run at once, without waiting out the grace
/// period that the first one gave the jobs in flight.
#[tokio::test]
async fn a_second_signal_stops_at_once() {
    let setup = Lab::new(2, 1).await;
    // Every blob takes 20 s: the jobs are in flight when the signals come.
    let stuck = slow_blobs(&setup.upstream, Duration::from_secs(20));
    setup.config(&stuck.host, &setup.target_hosts(), "");
    let child = regmirror_command(setup.dir.path(), &["sync"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    sigterm(child.id());
    std::thread::sleep(Duration::from_millis(500));
    let second = Instant::now();
    sigterm(child.id());
    let output = child.wait_with_output().unwrap();
    let stopped = second.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("stopped at once by a second signal"),
        "{stderr}"
    );
    // The grace period (5 s) was not waited out.
    assert!(stopped < Duration::from_secs(3), "took {stopped:?}");
}

/// No secret of a URL reaches any text a run leaves, whichever request
/// failed: an upload PUT cut mid-body (a transport error), an upload PUT
/// refused with 400 (a status error; its answer sets a cookie), and a blob
/// GET redirected to a CDN's presigned URL that refuses connections. The
/// upload sessions' `_state` values, the CDN's signature and token, and the
/// cookie appear nowhere: not in the error lines, the failures list, the
/// `::error` annotations, the `--json` report or the step summary.
#[tokio::test]
async fn no_url_secret_reaches_any_output_when_a_request_fails() {
    let setup = Lab::new(3, 1).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_host = dead.local_addr().unwrap().to_string();
    drop(dead);
    let signature = "PlantedSignature0a1b2c3d4e5f";
    let session_token = "PlantedSessionTokenQ9z";
    let cookie = "PlantedCookieW7k";
    // A presigned S3-style URL, as Docker Hub's and ECR's blob GETs
    // redirect to.
    let source = Proxy::start(
        &setup.upstream.host,
        vec![Rule::new(
            "GET",
            "/team/app1/blobs/sha256:",
            usize::MAX,
            Action::RedirectTo {
                host: dead_host,
                query: format!(
                    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Security-Token={session_token}&X-Amz-Signature={signature}"
                ),
            },
        )],
    );
    let target = Proxy::start(
        &setup.targets[0].host,
        vec![
            Rule::new(
                "PUT",
                "/m/team/app0/blobs/uploads/",
                usize::MAX,
                Action::CutRequestAfter(100),
            ),
            Rule::new(
                "PUT",
                "/m/team/app2/blobs/uploads/",
                usize::MAX,
                Action::Respond {
                    status: 400,
                    headers: vec![("Set-Cookie".into(), format!("session={cookie}; HttpOnly"))],
                    body: b"{\"errors\":[{\"code\":\"BLOB_UPLOAD_INVALID\"}]}".to_vec(),
                },
            ),
        ],
    );
    setup.config(&source.host, &[&target.host], "");
    let run = regmirror(
        setup.dir.path(),
        &["sync", "--json", "report.json", "--summary", "summary.md"],
        &[("GITHUB_ACTIONS".into(), "true".into())],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    let report = std::fs::read_to_string(setup.dir.path().join("report.json")).unwrap();
    let summary = std::fs::read_to_string(setup.dir.path().join("summary.md")).unwrap();
    for (name, outcome) in [("app0", "failed"), ("app1", "failed"), ("app2", "failed")] {
        let report: Value = serde_json::from_str(&report).unwrap();
        assert_eq!(crate::support::lab::outcome(&report, name, "t0"), outcome);
    }
    // Every upload session the target opened, and its secret state.
    let states: Vec<String> = target
        .seen()
        .iter()
        .filter_map(|s| {
            s.path
                .split_once("_state=")
                .map(|(_, rest)| rest.to_string())
        })
        .map(|rest| rest.split('&').next().unwrap().to_string())
        .filter(|state| state.len() > 8)
        .collect();
    assert!(states.len() >= 2, "{:?}", target.seen());
    let texts = [
        ("output", run.all()),
        ("report", report),
        ("summary", summary),
    ];
    // No secret appears …
    for (what, text) in &texts {
        for secret in states
            .iter()
            .map(String::as_str)
            .chain([signature, session_token, cookie])
        {
            assert!(!text.contains(secret), "{what} holds `{secret}`:\n{text}");
        }
    }
    // … and the failures are named (request, status, where it failed).
    assert!(
        texts[0].1.contains("::error title=regmirror"),
        "{}",
        texts[0].1
    );
    for needle in [
        "/m/team/app0/blobs/uploads/",
        "/m/team/app2/blobs/uploads/",
        "answered 400",
    ] {
        assert!(texts[0].1.contains(needle), "{needle}: {}", texts[0].1);
    }
    assert!(texts[0].1.contains("X-Amz-Signature="), "{}", texts[0].1);
}

/// A tag list whose pages repeat tags (`last` that does not move on
/// exactly) makes each tag one job: no image is warned to collide with
/// itself, and each tag is copied once.
#[tokio::test]
async fn a_tag_list_that_repeats_tags_copies_each_once_without_a_collision() {
    let setup = Lab::new(1, 1).await;
    let target = &setup.targets[0];
    let page = |tags: &[&str], next: Option<&str>| {
        let headers: Vec<(&str, String)> = next
            .map(|n| vec![("Link", format!("<{n}>; rel=\"next\""))])
            .unwrap_or_default();
        json_reply(serde_json::json!({ "tags": tags }).to_string(), &headers)
    };
    let proxy = Proxy::start(
        &setup.upstream.host,
        vec![
            Rule::new(
                "GET",
                "/tags/list?n=1000&last=v1",
                usize::MAX,
                page(&["v1", "v1"], None),
            ),
            Rule::new(
                "GET",
                "/tags/list",
                usize::MAX,
                page(
                    &["v1", "v1"],
                    Some("/v2/team/app0/tags/list?n=1000&last=v1"),
                ),
            ),
        ],
    );
    every_tag_of_app0(&target.host, &proxy.host).write(setup.dir.path());
    let (run, report) = setup.sync(&[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        proxy.seen().iter().any(|s| s.path.contains("last=v1")),
        "the second page was read: {:?}",
        proxy.seen()
    );
    assert!(!run.all().contains("also written by"), "{}", run.all());
    assert_eq!(report["results"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(outcome(&report, "app0", "t0"), "copied");
}

/// SIGTERM after a tag was written, while the job still looks for what
/// refers to the image (the source's referrer lookups held past the grace
/// period): the pair is reported `copied` with the target's digest, not
/// `cancelled`.
#[tokio::test]
async fn sigterm_after_the_tag_was_written_reports_the_pair_copied() {
    let setup = Lab::new(1, 1).await;
    let hold = Action::Delay(Duration::from_secs(30));
    let source = Proxy::start(
        &setup.upstream.host,
        vec![
            Rule::new("", "/referrers/", usize::MAX, hold.clone()),
            Rule::new("", "/tags/list", usize::MAX, hold.clone()),
            Rule::new("", "/manifests/sha256-", usize::MAX, hold),
        ],
    );
    setup.config(&source.host, &setup.target_hosts(), "");
    let mut child = regmirror_command(setup.dir.path(), &["sync", "--json", "report.json"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let root = setup.images[0].1.root.0.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while deep_check(&setup.targets[0].host, "m/team/app0", "v1").await
        != TagState::Complete(root.clone())
    {
        assert!(Instant::now() < deadline, "the tag never arrived");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its referrers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sigterm(child.id());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(setup.dir.path().join("report.json")).unwrap())
            .unwrap();
    let row = &report["results"][0];
    assert_eq!(row["outcome"], "copied", "{report:#}");
    assert_eq!(row["target_digest_after"], root.as_str(), "{report:#}");
    assert_eq!(row["source_digest"], root.as_str(), "{report:#}");
    assert!(row["blobs"]["uploaded"].as_u64().unwrap() > 0, "{report:#}");
}

/// The tags of `setup`'s images that `host` has (a HEAD of each).
async fn tags_present(host: &str, setup: &Lab) -> usize {
    let http = reqwest::Client::new();
    let mut present = 0;
    for (name, _) in &setup.images {
        let url = format!("http://{host}/v2/m/team/{name}/manifests/v1");
        let head = http
            .head(&url)
            .header("Accept", images::OCI_INDEX)
            .header("Accept", images::OCI_MANIFEST)
            .header("Accept", images::DOCKER_LIST)
            .header("Accept", images::DOCKER_MANIFEST)
            .send()
            .await;
        if head.is_ok_and(|r| r.status().is_success()) {
            present += 1;
        }
    }
    present
}

/// With default settings, a target that accepts connections and never
/// answers does not hold up a healthy one: the healthy target has every
/// tag within 5 s of what it takes alone (before, the first window of 30 s
/// passed first), and the run still ends by itself, exit 1, the silent
/// target's pairs failed with the cause named.
#[tokio::test]
async fn a_silent_target_does_not_hold_up_a_healthy_one() {
    let setup = Lab::new(12, 2).await;
    let (alone_target, healthy) = (&setup.targets[0], &setup.targets[1]);
    setup.config(&setup.upstream.host, &[&alone_target.host], "");
    let started = Instant::now();
    let (run, _) = setup.sync(&[]);
    let alone = started.elapsed();
    assert_eq!(run.code, 0, "{}", run.all());

    let (dead, _) = black_hole();
    setup.config(&setup.upstream.host, &[&dead, &healthy.host], "");
    let mut child = regmirror_command(setup.dir.path(), &["sync", "--json", "report.json"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut all_there = None;
    while child.try_wait().unwrap().is_none() {
        if all_there.is_none() && tags_present(&healthy.host, &setup).await == setup.images.len() {
            all_there = Some(started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the run did not end by itself"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let all_there = all_there.unwrap_or_else(|| started.elapsed());
    assert!(
        all_there <= alone + Duration::from_secs(5),
        "the healthy target had its tags after {all_there:?}; alone it takes {alone:?}\n{stderr}"
    );
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(setup.dir.path().join("report.json")).unwrap())
            .unwrap();
    for (name, _) in &setup.images {
        assert_eq!(outcome(&report, name, "t1"), "copied", "{report:#}");
        assert_eq!(outcome(&report, name, "t0"), "failed", "{report:#}");
    }
    for row in report["results"].as_array().unwrap() {
        if row["target"] == "t0" {
            let message = row["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("stalled") || message.contains("marked down"),
                "{message}"
            );
        }
    }
}

/// A target whose first three requests stall (one request's attempts) and
/// which then answers is not given up: a request is retried up to 4 times
/// as the docs say, and a host is marked down only on the evidence of
/// distinct requests, not of one request's own retries.
#[tokio::test]
async fn one_requests_retries_never_mark_a_host_down() {
    let setup = Lab::new(1, 1).await;
    let target = Proxy::start(
        &setup.targets[0].host,
        vec![Rule::new("", "", 3, Action::Delay(Duration::from_secs(4)))],
    );
    setup.config(
        &setup.upstream.host,
        &[&target.host],
        &format!("  {}:\n    timeout: 1s\n", target.host),
    );
    let (run, report) = setup.sync(&[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(outcome(&report, "app0", "t0"), "copied", "{report:#}");
    assert!(!run.stderr.contains("marked down"), "{}", run.stderr);
    assert_eq!(target.applied(0), 3, "three attempts stalled");
}

/// Slow is not stalled: through a proxy that forwards uploads at 200 KiB/s,
/// an image with 8 MiB layers and `timeout: 2s` arrives with each blob PUT
/// once. The body leaves regmirror into socket buffers within seconds; the
/// kernel's count of bytes not yet acknowledged shows it still moving.
/// Before, the wait for the answer ran out after 10 windows with megabytes
/// still in flight (`stalled`), and the PUT was not retried.
#[tokio::test]
async fn an_upload_draining_slowly_from_socket_buffers_is_not_stalled() {
    let link = SlowUpload::new(8 << 20, 409, 200 << 10, "2s").await;
    let run = regmirror(link.dir.path(), &["sync"], &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        link.puts(),
        link.image.blobs.len(),
        "each blob PUT once\n{}",
        run.all()
    );
    assert_eq!(
        deep_check(&link.target.host, "m/team/big", "v1").await,
        TagState::Complete(link.image.root.0.clone())
    );
}

/// The spool's budget (issue 28): six images of about 2 MiB each (blobs
/// under 1 MiB, which go through the spool rather than stream), synced six
/// at a time to two targets, with `REGMIRROR_SPOOL_MAX=4MiB`: the spool
/// never holds more than 4 MiB (polled while it runs), every image arrives
/// whole, and the report says jobs waited for room. The same run without
/// the budget holds more than 4 MiB at once, so it is the budget that kept
/// it down.
#[tokio::test]
async fn the_spool_stays_within_its_budget_and_jobs_wait_for_room() {
    const BUDGET: u64 = 4 << 20;
    let mut lab = Lab::new(0, 2).await;
    for i in 0..6u64 {
        single_platform(&mut lab, &format!("big{i}"), 500 + i, 900 << 10).await;
    }
    let run = |lab: &Lab, max: &str| sync_watching_the_spool(lab, &["--jobs", "6"], max);

    lab.config(&lab.upstream.host, &lab.target_hosts(), "");
    let (code, peak, report, stderr) = run(&lab, "4MiB");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(peak <= BUDGET, "the spool held {peak} bytes, over {BUDGET}");
    assert!(peak > 0, "the spool was never seen in use");
    assert!(
        report["totals"]["spool_wait_seconds"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );
    let outcomes = lab.check_targets(&report).await;
    assert!(outcomes.iter().all(|(_, o)| o == "copied"), "{outcomes:?}");

    // Without a budget (two fresh targets), all six fetch at once.
    lab.targets = vec![Registry::start(Auth::None), Registry::start(Auth::None)];
    lab.config(&lab.upstream.host, &lab.target_hosts(), "");
    let (code, peak, _, stderr) = run(&lab, "unlimited");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        peak > BUDGET,
        "without a budget the spool held only {peak} bytes"
    );
}

/// `team/<name>:v1` pushed to `lab`'s upstream and added to its images:
/// one platform, layers of `layer_size` (a base from `base`, a repository
/// layer, and a quarter-size tag layer).
async fn single_platform(lab: &mut Lab, name: &str, base: u64, layer_size: usize) {
    let repo = format!("team/{name}");
    let image = images::generate(&Spec {
        platforms: vec![("amd64", None)],
        base,
        layer_size,
        attestations: false,
        ..Spec::new(&repo, "v1", false)
    });
    images::push(&lab.upstream.url(), &repo, "v1", &image).await;
    lab.images.push((name.to_string(), image));
}

/// `team/<name>:v1` pushed to `lab`'s upstream: one platform, two 20 MiB
/// layers and a 5 MiB one, from `seed`.
async fn huge_image(lab: &Lab, name: &str, seed: u64) -> images::Generated {
    let repo = format!("team/{name}");
    let image = images::generate(&Spec {
        platforms: vec![("amd64", None)],
        base: seed,
        layer_size: 20 << 20,
        attestations: false,
        ..Spec::new(&repo, "v1", false)
    });
    images::push(&lab.upstream.url(), &repo, "v1", &image).await;
    image
}

/// `sync --json report.json ARGS` in `lab` with its spool in `lab/spool`
/// and `REGMIRROR_SPOOL_MAX=max`: the exit code, the most bytes the spool
/// held (polled every 2 ms), the report and stderr.
fn sync_watching_the_spool(
    lab: &Lab,
    args: &[&str],
    max: &str,
) -> (Option<i32>, u64, Value, String) {
    let spool = lab.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let env = [
        ("REGMIRROR_SPOOL".to_string(), spool.display().to_string()),
        ("REGMIRROR_SPOOL_MAX".to_string(), max.to_string()),
    ];
    let mut all = vec!["sync", "--json", "report.json"];
    all.extend_from_slice(args);
    let mut child = regmirror_command(lab.dir.path(), &all, &env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0u64;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(tree_size(&spool));
        std::thread::sleep(Duration::from_millis(2));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report: Value =
        serde_json::from_slice(&std::fs::read(lab.dir.path().join("report.json")).unwrap())
            .unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (output.status.code(), peak, report, stderr)
}

/// Bytes in the files under `dir` now (files may vanish while it looks).
fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => tree_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Blobs bigger than the spool's budget stream (issue 28): two images,
/// each with two 20 MiB layers, synced at once with an 8 MiB budget, reach
/// two targets byte for byte (`verify --deep --content`), each big layer
/// read from the upstream once and never in the spool (polled: it stays
/// under the budget). When the upstream serves a big layer with a byte
/// flipped, the streams are cut before their last byte: neither target
/// has that layer, nothing of that image is tagged, it fails naming the
/// digest, and the other image is copied all the same.
#[tokio::test]
async fn a_blob_bigger_than_the_spool_streams_to_every_target_and_a_bad_one_commits_nothing() {
    const BUDGET: u64 = 8 << 20;
    let mut lab = Lab::new(0, 2).await;
    let image = huge_image(&lab, "huge", 900).await;
    let big: Vec<String> = image
        .blobs
        .iter()
        .filter(|(_, bytes)| bytes.len() as u64 > BUDGET)
        .map(|(digest, _)| digest.clone())
        .collect();
    assert_eq!(big.len(), 2);
    lab.images.push(("huge".into(), image));
    // A second such image, synced at the same time.
    let second = huge_image(&lab, "huge2", 901).await;
    lab.images.push(("huge2".into(), second));
    let sync = |lab: &Lab| sync_watching_the_spool(lab, &[], "8MiB");
    lab.config(&lab.upstream.host, &lab.target_hosts(), "");
    let mark = lab.upstream.mark();
    let (code, peak, report, stderr) = sync(&lab);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(peak <= BUDGET, "the spool held {peak} bytes");
    let outcomes = lab.check_targets(&report).await;
    assert!(outcomes.iter().all(|(_, o)| o == "copied"), "{outcomes:?}");
    for digest in &big {
        let fetched = lab
            .upstream
            .requests()
            .iter()
            .skip(mark)
            .filter(|r| r.method == "GET" && r.path.ends_with(digest.as_str()))
            .count();
        assert_eq!(
            fetched, 1,
            "{digest} was read from the upstream {fetched} times"
        );
    }
    assert_eq!(report["totals"]["blobs_uploaded"], 16, "{report:#}");
    let verify = regmirror(lab.dir.path(), &["verify", "--deep", "--content"], &[]);
    assert_eq!(verify.code, 0, "{}", verify.all());

    // A layer tampered with on the way, to two fresh targets.
    lab.targets = vec![Registry::start(Auth::None), Registry::start(Auth::None)];
    let _proxy = lab.upstream_behind(vec![Rule::new(
        "GET",
        &format!("/blobs/{}", big[0]),
        usize::MAX,
        Action::Corrupt,
    )]);
    let (code, peak, report, stderr) = sync(&lab);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(peak <= BUDGET, "the spool held {peak} bytes");
    let failed = &report["results"][0];
    assert_eq!(failed["outcome"], "failed", "{report:#}");
    // The other image is not held back by the one that failed.
    assert_eq!(outcome(&report, "huge2", "t0"), "copied", "{report:#}");
    assert_eq!(outcome(&report, "huge2", "t1"), "copied", "{report:#}");
    assert!(
        failed["error"].to_string().contains(&big[0]),
        "the failure names the layer: {failed:#}"
    );
    for target in &lab.targets {
        let has = reqwest::Client::new()
            .head(format!("{}/v2/m/team/huge/blobs/{}", target.url(), big[0]))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(has.as_u16(), 404, "a tampered layer was committed");
        assert_eq!(
            deep_check(&target.host, "m/team/huge", "v1").await,
            TagState::Absent
        );
    }
}

/// Streaming when it pays (issue 28): a blob of 1 MiB or more that no
/// earlier job put into the spool goes from the download straight to every
/// target lacking it, with no disk. Two images sharing a 4 MiB base layer,
/// synced at once to two targets with no spool budget: the spool never
/// holds a big blob (polled), each distinct blob is read from the upstream
/// once (the second image mounts the shared layer the first streamed),
/// `totals.streamed_bytes` counts the big blobs and `spooled_bytes` only
/// the small ones, and `verify --deep --content` is clean.
///
/// Then, to fresh targets: a source connection cut in the middle of a big
/// layer is taken up with `Range` where it stopped (the stream goes on;
/// nothing is read twice); and a target that drops one streamed upload
/// gets that blob through the spool (read once more), the other target
/// keeps its stream.
#[tokio::test]
async fn blobs_every_target_lacks_stream_past_the_spool_and_recover_from_cuts() {
    const BIG: usize = 1 << 20;
    let mut lab = Lab::new(0, 2).await;
    for name in ["a", "b"] {
        single_platform(&mut lab, name, 950, 4 << 20).await;
    }
    let mut sizes: std::collections::HashMap<String, usize> = Default::default();
    for (_, image) in &lab.images {
        for (digest, bytes) in &image.blobs {
            sizes.insert(digest.clone(), bytes.len());
        }
    }
    let big: u64 = sizes
        .values()
        .filter(|s| **s >= BIG)
        .map(|s| *s as u64)
        .sum();
    let small: u64 = sizes
        .values()
        .filter(|s| **s < BIG)
        .map(|s| *s as u64)
        .sum();
    assert_eq!(sizes.values().filter(|s| **s >= BIG).count(), 5);
    let reads = |lab: &Lab, mark: usize, digest: &str| {
        lab.upstream
            .requests()
            .iter()
            .skip(mark)
            .filter(|r| r.method == "GET" && r.path.ends_with(digest))
            .count()
    };

    lab.config(&lab.upstream.host, &lab.target_hosts(), "");
    let mark = lab.upstream.mark();
    let (code, peak, report, stderr) = sync_watching_the_spool(&lab, &[], "unlimited");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(peak < BIG as u64, "the spool held {peak} bytes");
    let outcomes = lab.check_targets(&report).await;
    assert!(outcomes.iter().all(|(_, o)| o == "copied"), "{outcomes:?}");
    for digest in sizes.keys() {
        assert_eq!(reads(&lab, mark, digest), 1, "{digest} read again");
    }
    assert_eq!(report["totals"]["streamed_bytes"], big, "{report:#}");
    assert_eq!(report["totals"]["spooled_bytes"], small, "{report:#}");
    let verify = regmirror(lab.dir.path(), &["verify", "--deep", "--content"], &[]);
    assert_eq!(verify.code, 0, "{}", verify.all());

    // A source connection cut 1.5 MiB into the shared base layer.
    let (base, _) = lab.images[0].1.blobs[1].clone();
    assert!(sizes[&base] >= BIG);
    lab.targets = vec![Registry::start(Auth::None), Registry::start(Auth::None)];
    let cut = lab.upstream_behind(vec![Rule::new(
        "GET",
        &format!("/blobs/{base}"),
        1,
        Action::CutResponseAfter(3 << 19),
    )]);
    let (code, peak, report, stderr) = sync_watching_the_spool(&lab, &[], "unlimited");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(cut.applied(0), 1, "the cut never came");
    assert!(peak < BIG as u64, "the spool held {peak} bytes");
    let ranges: Vec<String> = cut
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.ends_with(&base))
        .map(|s| {
            s.headers
                .iter()
                .find(|h| h.to_ascii_lowercase().starts_with("range:"))
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], "", "{ranges:?}");
    let from: u64 = ranges[1]
        .split_once("bytes=")
        .and_then(|(_, r)| r.trim_end_matches('-').trim().parse().ok())
        .unwrap_or_else(|| panic!("no `Range` after the cut: {ranges:?}"));
    assert!(from > 0, "{ranges:?}");
    assert_eq!(report["totals"]["streamed_bytes"], big, "{report:#}");
    let outcomes = lab.check_targets(&report).await;
    assert!(outcomes.iter().all(|(_, o)| o == "copied"), "{outcomes:?}");
    drop(cut);

    // t0 drops one streamed upload of a 4 MiB layer.
    lab.targets = vec![Registry::start(Auth::None), Registry::start(Auth::None)];
    let dropping = Proxy::start(
        &lab.targets[0].host,
        vec![
            Rule::new(
                "PUT",
                "/blobs/uploads/",
                1,
                Action::CutRequestAfter(3 << 19),
            )
            .larger_than((4 << 20) - 1),
        ],
    );
    lab.config(
        &lab.upstream.host,
        &[&dropping.host, &lab.targets[1].host],
        "",
    );
    let mark = lab.upstream.mark();
    let (code, _, report, stderr) = sync_watching_the_spool(&lab, &[], "unlimited");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(dropping.applied(0), 1, "no upload was dropped");
    let big_reads: usize = sizes
        .iter()
        .filter(|(_, s)| **s >= BIG)
        .map(|(d, _)| reads(&lab, mark, d))
        .sum();
    assert_eq!(big_reads, 6, "one stream each, then the spool for t0's");
    assert_eq!(
        report["totals"]["spooled_bytes"],
        small + (4 << 20),
        "{report:#}"
    );
    let outcomes = lab.check_targets(&report).await;
    assert!(outcomes.iter().all(|(_, o)| o == "copied"), "{outcomes:?}");
}

/// Streams cannot deadlock on the registries' request permits: a stream's
/// download holds a permit of the source while its targets take each
/// chunk, and each upload holds a permit of its target while it waits for
/// the source, so with every permit of each registry held by streams
/// waiting on each other, nothing moved (found by `bench/cpu`: every PUT
/// "stalled", targets marked down). Eight images with 4 MiB layers, to
/// two targets, with `concurrency: 2` everywhere and `--jobs 8`: every
/// image arrives, nothing stalls.
#[tokio::test]
async fn streams_never_wait_on_each_other_for_request_permits() {
    let mut lab = Lab::new(0, 2).await;
    for i in 0..8u64 {
        single_platform(&mut lab, &format!("s{i}"), 960 + i, 4 << 20).await;
    }
    let mut registries = String::new();
    for host in std::iter::once(lab.upstream.host.as_str()).chain(lab.target_hosts()) {
        registries.push_str(&format!("  {host}:\n    concurrency: 2\n    timeout: 3s\n"));
    }
    lab.config(&lab.upstream.host, &lab.target_hosts(), &registries);
    let (run, report) = lab.sync(&["--jobs", "8"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(!run.stderr.contains("stalled"), "{}", run.stderr);
    assert_eq!(
        report["totals"]["spooled_bytes"].as_u64(),
        Some(
            lab.images
                .iter()
                .map(|(_, i)| i
                    .blobs
                    .iter()
                    .filter(|(_, b)| b.len() < 1 << 20)
                    .map(|(_, b)| b.len() as u64)
                    .sum::<u64>())
                .sum()
        ),
        "{report:#}"
    );
    let outcomes = lab.check_targets(&report).await;
    assert!(outcomes.iter().all(|(_, o)| o == "copied"), "{outcomes:?}");
}
