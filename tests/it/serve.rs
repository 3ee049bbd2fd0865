//! `regmirror serve`: the service loop against loopback registries, its
//! endpoints, its reloads and its stop; a real Prometheus scraping it.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::check::{TagState, deep_check};
use crate::support::config::MirrorYaml;
use crate::support::images;
use crate::support::lab::{Lab, small};
use crate::support::proxy::{Action, Proxy};
use crate::support::{free_port, regmirror_command, stripped_binary};

/// A `regmirror serve` process, stopped by PID when dropped.
struct Service {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    url: String,
    log: PathBuf,
}

impl Service {
    /// `serve --interval 2s --listen` on a free port, in `lab`'s directory,
    /// with `args` more.
    fn start(lab: &Lab, args: &[&str]) -> Service {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let log = lab.dir.path().join("serve.log");
        let mut all = vec!["serve", "--interval", "2s", "--listen", &listen];
        all.extend_from_slice(args);
        let child = regmirror_command(lab.dir.path(), &all, &[])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start regmirror serve");
        Service {
            child,
            url: format!("http://{listen}"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The status and body of `GET path`; 0 when nothing answers.
    async fn get(&self, path: &str) -> (u16, String) {
        match reqwest::get(format!("{}{path}", self.url)).await {
            Ok(response) => (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    }

    /// Waits (at most `within`) until `GET path` answers `status` with a
    /// body that `ok` accepts; that body.
    async fn until(
        &self,
        path: &str,
        status: u16,
        within: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let (got, body) = self.get(path).await;
            if got == status && ok(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} did not answer {status} as expected within {within:?}; last: {got} {body}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM; the exit code.
    fn terminate(&mut self) -> i32 {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One metric sample's value from OpenMetrics text (`name{labels}`), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    })
}

#[tokio::test]
async fn serve_mirrors_new_tags_says_when_a_target_breaks_and_reloads_its_file() {
    let lab = Lab::new(2, 2).await;
    // t1 behind a proxy that can break it.
    let t1 = Proxy::start(&lab.targets[1].host, vec![]);
    let yaml = |extra: &str| {
        let mut yaml = MirrorYaml::new()
            .target("t0", &format!("{}/m", lab.targets[0].host))
            .target("t1", &format!("{}/m", t1.host));
        for (name, _) in &lab.images {
            yaml = yaml.image(
                name,
                &format!("{}/team/{name}", lab.upstream.host),
                "{ regex: 'v.*' }",
            );
        }
        format!("{}{extra}", yaml.build())
    };
    std::fs::write(lab.dir.path().join("mirror.yaml"), yaml("")).unwrap();
    let mut service = Service::start(&lab, &["--reports", "reports", "--keep-reports", "3"]);

    // The run at start: ready, with copied pairs counted.
    service
        .until("/readyz", 200, Duration::from_secs(30), |_| true)
        .await;
    assert_eq!(service.get("/healthz").await.0, 200);
    let metrics = service.get("/metrics").await.1;
    for series in [
        "regmirror_pairs_total{image=\"app0\",target=\"t0\",status=\"copied\"}",
        "regmirror_pairs_total{image=\"app1\",target=\"t1\",status=\"copied\"}",
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(1.0),
            "{series} in:\n{metrics}"
        );
    }
    assert!(
        sample(
            &metrics,
            "regmirror_image_last_success_timestamp_seconds{image=\"app0\"}"
        )
        .is_some(),
        "{metrics}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&service.get("/runs/latest").await.1).unwrap();
    assert_eq!(report["command"], "sync");
    assert_eq!(report["totals"]["results"], 4, "{report:#}");

    // A new tag upstream arrives within an interval (and a run).
    let pushed = Instant::now();
    let v2 = small("app0", 7);
    images::push(&lab.upstream.url(), "team/app0", "v2", &v2).await;
    loop {
        if deep_check(&lab.targets[0].host, "m/team/app0", "v2").await
            == TagState::Complete(v2.root.0.clone())
        {
            break;
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(20),
            "app0:v2 did not arrive on t0:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // t1 breaks (its credentials revoked: every request denied): readiness
    // and the metrics say which pairs.
    t1.answer_everything(Some(Action::Respond {
        status: 403,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#.to_vec(),
    }));
    let why = service
        .until("/readyz", 503, Duration::from_secs(30), |body| {
            body.contains("→ t1")
        })
        .await;
    assert!(!why.contains("→ t0"), "only t1 broke: {why}");
    let metrics = service.get("/metrics").await.1;
    assert!(
        sample(&metrics, "regmirror_image_failed_pairs{image=\"app0\"}") >= Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "regmirror_runs_total{result=\"failed\"}") >= Some(1.0),
        "{metrics}"
    );

    // Back: ready again.
    t1.answer_everything(None);
    service
        .until("/readyz", 200, Duration::from_secs(30), |_| true)
        .await;

    // A broken file is refused with its place, the old one kept; a valid
    // one takes effect at the next run.
    let path = lab.dir.path().join("mirror.yaml");
    std::fs::write(&path, yaml("  - name: broken\n    source: [\n")).unwrap();
    service
        .until("/metrics", 200, Duration::from_secs(15), |m| {
            sample(m, "regmirror_config_reloads_total{result=\"failed\"}") == Some(1.0)
        })
        .await;
    let place = regex::Regex::new(r"mirror\.yaml:\d+:\d+: ").unwrap();
    assert!(
        place.is_match(&service.log()),
        "the refusal names the file, line and column:\n{}",
        service.log()
    );
    let again = format!(
        "  - name: again\n    source: {}/team/app1\n    tags: [v1]\n    path: again/app1\n",
        lab.upstream.host
    );
    std::fs::write(&path, yaml(&again)).unwrap();
    service
        .until("/runs/latest", 200, Duration::from_secs(20), |body| {
            body.contains("\"again\"")
        })
        .await;
    assert!(matches!(
        deep_check(&lab.targets[0].host, "m/again/app1", "v1").await,
        TagState::Complete(_)
    ));

    // SIGTERM: exit 0, the reports kept, the newest three.
    assert_eq!(service.terminate(), 0, "{}", service.log());
    let reports: Vec<_> = std::fs::read_dir(lab.dir.path().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(reports.len(), 3, "{reports:?}");
    assert!(
        reports
            .iter()
            .all(|n| n.starts_with("sync-") && n.ends_with(".json"))
    );
}

/// A real Prometheus (Debian's package) with its own config and data
/// directory, scraping `target` every second; stopped by PID when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: regmirror\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus is installed (scripts/install-deps)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }

    /// The first sample's value of an instant query, once it has one.
    async fn query(&self, query: &str, within: Duration) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let mut url = url::Url::parse(&format!("{}/api/v1/query", self.url)).unwrap();
            url.query_pairs_mut().append_pair("query", query);
            let answer = reqwest::get(url).await;
            if let Ok(answer) = answer
                && let Ok(body) = answer.json::<serde_json::Value>().await
                && let Some(value) = body["data"]["result"][0]["value"][1].as_str()
            {
                return value.parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus had no sample for `{query}` within {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_what_was_copied_and_when() {
    let lab = Lab::new(1, 1).await;
    lab.config(&lab.upstream.host, &lab.target_hosts(), "");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let service = Service::start(&lab, &[]);
    service
        .until("/readyz", 200, Duration::from_secs(30), |_| true)
        .await;
    let prometheus = Prometheus::start(service.url.trim_start_matches("http://"));
    let copied = prometheus
        .query(
            "regmirror_pairs_total{image=\"app0\",target=\"t0\",status=\"copied\"}",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(copied, 1.0);
    let last_success = prometheus
        .query(
            "regmirror_image_last_success_timestamp_seconds{image=\"app0\"}",
            Duration::from_secs(10),
        )
        .await;
    assert!(last_success >= before.floor(), "{last_success} < {before}");
    // The next runs find it present; the scrape sees them too.
    let present = prometheus
        .query(
            "regmirror_pairs_total{image=\"app0\",status=\"present\"} > 0",
            Duration::from_secs(20),
        )
        .await;
    assert!(present >= 1.0);
}

/// The shipped image (`scripts/image-layout`, as the release builds it)
/// run by a real containerd and runc with host networking, a read-only
/// root filesystem, the image's own unprivileged user, the configuration
/// mounted read-only and the spool on a tmpfs (the Kubernetes manifests'
/// shape): `serve` mirrors the upstream into the target, and SIGTERM ends
/// it with 0. The release binary is static (musl); the one under test is
/// this build's (glibc), so the host's glibc directories are mounted
/// read-only where its loader looks, and nothing else is added.
#[tokio::test]
async fn the_shipped_image_serves_under_containerd_read_only_and_unprivileged() {
    use crate::support::containerd::Containerd;
    let lab = Lab::new(1, 1).await;
    let config = lab.dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    lab.config(&lab.upstream.host, &lab.target_hosts(), "");
    std::fs::rename(
        lab.dir.path().join("mirror.yaml"),
        config.join("mirror.yaml"),
    )
    .unwrap();

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = stripped_binary(lab.dir.path());
    let layout = std::process::Command::new(root.join("scripts/image-layout"))
        .args(["--out", "layout", "--version", "9.9.9"])
        .arg(format!("linux/amd64={}", binary.display()))
        .current_dir(lab.dir.path())
        .output()
        .unwrap();
    assert!(layout.status.success(), "{layout:?}");
    let tar = std::process::Command::new("tar")
        .args(["-C", "layout", "-cf", "image.tar", "."])
        .current_dir(lab.dir.path())
        .status()
        .unwrap();
    assert!(tar.success());

    let containerd = Containerd::start();
    let image = lab.dir.path().join("image.tar").display().to_string();
    let import = containerd.ctr(&["images", "import", "--index-name", "regmirror:test", &image]);
    assert!(import.status.success(), "{import:?}");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mount_config = format!(
        "type=bind,src={},dst=/etc/regmirror/config,options=rbind:ro",
        config.display()
    );
    let log = lab.dir.path().join("container.log");
    let mut run = containerd
        .ctr_command(&[
            "run",
            "--net-host",
            "--read-only",
            "--mount",
            "type=bind,src=/usr/lib64,dst=/lib64,options=rbind:ro",
            "--mount",
            "type=bind,src=/usr/lib/x86_64-linux-gnu,dst=/lib/x86_64-linux-gnu,options=rbind:ro",
            "--mount",
            &mount_config,
            "--mount",
            "type=tmpfs,src=tmpfs,dst=/var/lib/regmirror,options=nosuid:nodev:mode=1777",
            "--env",
            "REGMIRROR_SPOOL=/var/lib/regmirror/spool",
            "regmirror:test",
            "regmirror-serve",
            "/regmirror",
            "serve",
            "--config=/etc/regmirror/config/mirror.yaml",
            "--interval=2s",
            &format!("--listen={listen}"),
        ])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(lab.dir.path().join("ctr.err")).unwrap())
        .spawn()
        .expect("ctr run");
    // Stops the task whatever happens below: a container outlives its
    // containerd (its shim keeps it).
    struct Task<'a>(&'a Containerd);
    impl Drop for Task<'_> {
        fn drop(&mut self) {
            let _ = self
                .0
                .ctr(&["task", "kill", "-s", "SIGKILL", "regmirror-serve"]);
            std::thread::sleep(Duration::from_millis(200));
            let _ = self
                .0
                .ctr(&["task", "delete", "--force", "regmirror-serve"]);
            let _ = self.0.ctr(&["containers", "delete", "regmirror-serve"]);
        }
    }
    let _task = Task(&containerd);
    let said = || {
        format!(
            "{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(lab.dir.path().join("ctr.err")).unwrap_or_default()
        )
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    let (name, image) = &lab.images[0];
    loop {
        if deep_check(&lab.targets[0].host, &format!("m/team/{name}"), "v1").await
            == TagState::Complete(image.root.0.clone())
        {
            break;
        }
        assert!(Instant::now() < deadline, "nothing arrived:\n{}", said());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ready = reqwest::get(format!("http://{listen}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200, "{}", said());

    // The image's user, not root.
    let tasks = containerd.ctr(&["task", "ls"]);
    let tasks = String::from_utf8_lossy(&tasks.stdout);
    let pid = tasks
        .lines()
        .find(|l| l.starts_with("regmirror-serve"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no task in:\n{tasks}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().nth(1), Some("65532"), "{uid}");

    let kill = containerd.ctr(&["task", "kill", "-s", "SIGTERM", "regmirror-serve"]);
    assert!(kill.status.success(), "{kill:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no stop on SIGTERM:\n{}", said());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", said());
}

/// The Kubernetes manifests in `deploy/kubernetes/` pass the Kubernetes
/// schemas offline (`kubernetes-validate --strict`, from PyPI), their
/// `mirror.yaml` passes `check`, and each pod runs as the image's user with
/// a read-only root filesystem, its spool and reports on a volume, the
/// configuration where the arguments say.
#[test]
fn kubernetes_manifests_validate_and_keep_the_service_unprivileged() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("deploy/kubernetes");
    let files: Vec<PathBuf> = ["configmap.yaml", "deployment.yaml", "cronjob.yaml"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    let validate = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .args(&files)
        .output()
        .expect("kubernetes-validate is installed (scripts/install-deps)");
    assert!(
        validate.status.success(),
        "{}{}",
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );

    let documents: Vec<serde_json::Value> = files
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            text.split("\n---\n")
                .map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let of_kind = |kind: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let config = of_kind("ConfigMap")["data"]["mirror.yaml"]
        .as_str()
        .unwrap();
    let checked = tempfile::tempdir().unwrap();
    std::fs::write(checked.path().join("mirror.yaml"), config).unwrap();
    let check = crate::support::regmirror(checked.path(), &["check"], &[]);
    assert_eq!(check.code, 0, "{}", check.all());

    let deployment = &of_kind("Deployment")["spec"]["template"]["spec"];
    let cronjob = &of_kind("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    for (what, pod) in [("Deployment", deployment), ("CronJob", cronjob)] {
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
        assert_eq!(pod["securityContext"]["runAsUser"], 65532, "{what}");
        let container = &pod["containers"][0];
        assert_eq!(
            container["securityContext"]["readOnlyRootFilesystem"], true,
            "{what}"
        );
        let mounts = container["volumeMounts"].as_array().unwrap();
        let mounted = |path: &str, writable: bool| {
            mounts.iter().any(|m| {
                path.starts_with(m["mountPath"].as_str().unwrap())
                    && (!writable || m["readOnly"] != true)
            })
        };
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let config = args
            .iter()
            .find_map(|a| a.strip_prefix("--config="))
            .unwrap();
        assert!(mounted(config, false), "{what}: {config} is not mounted");
        if let Some(reports) = args.iter().find_map(|a| a.strip_prefix("--reports=")) {
            assert!(mounted(reports, true), "{what}: {reports} is not writable");
        }
        let spool = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "REGMIRROR_SPOOL")
            .unwrap()["value"]
            .as_str()
            .unwrap();
        assert!(
            mounted(spool, true),
            "{what}: the spool {spool} is not writable"
        );
    }
    // The probes ask what `serve` answers.
    let container = &deployment["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
}
