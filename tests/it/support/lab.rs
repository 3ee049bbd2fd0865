//! The one test fixture: an upstream registry and empty targets in a
//! working directory, with the `mirror.yaml` that joins them, and the
//! checks a test ends with.
//!
//! - [`Lab::new`]: `count` small images upstream and `targets` plain
//!   targets (`t0`, `t1`, …): the fault and hostile-registry tests;
//! - [`Lab::auth`]: no images yet and three targets that authenticate
//!   differently (`plain`, `basic` with htpasswd, `token` with
//!   distribution's token auth): the end-to-end tests.

use serde_json::Value;

use super::check::{TagState, deep_check};
use super::config::MirrorYaml;
use super::images::{self, Generated, Spec};
use super::proxy::{Proxy, Rule};
use super::{Auth, Registry, auth_env, regmirror, token};
use base64::Engine as _;

/// A small single-platform image `team/<name>:v1` (two manifest GETs).
pub fn small(name: &str, seed: u64) -> Generated {
    images::generate(&Spec {
        platforms: vec![("amd64", None)],
        base: 100 + seed,
        attestations: false,
        ..Spec::new(&format!("team/{name}"), "v1", seed.is_multiple_of(2))
    })
}

/// An upstream, its images, and the targets, each with its name in the
/// configurations the lab writes.
pub struct Lab {
    pub upstream: Registry,
    pub targets: Vec<Registry>,
    /// Each target's name, in the order of `targets`.
    pub names: Vec<String>,
    /// The images [`Lab::new`] pushed upstream (`team/<name>:v1`).
    pub images: Vec<(String, Generated)>,
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// An upstream with `count` small images (`app0`, `app1`, …) and
    /// `targets` empty plain targets (`t0`, `t1`, …).
    pub async fn new(count: usize, targets: usize) -> Lab {
        let upstream = Registry::start(Auth::None);
        let mut images = Vec::new();
        for i in 0..count {
            let name = format!("app{i}");
            let image = small(&name, i as u64);
            images::push(&upstream.url(), &format!("team/{name}"), "v1", &image).await;
            images.push((name, image));
        }
        Lab {
            upstream,
            targets: (0..targets).map(|_| Registry::start(Auth::None)).collect(),
            names: (0..targets).map(|i| format!("t{i}")).collect(),
            images,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// An empty upstream and three targets: plain, htpasswd, and token auth.
    pub fn auth() -> Lab {
        let issuer = token::Issuer::start("robot", "token-pass-Q7x");
        Lab {
            upstream: Registry::start(Auth::None),
            targets: vec![
                Registry::start(Auth::None),
                Registry::start(Auth::Htpasswd {
                    user: "alice".into(),
                    password: "basic-pass-W3z".into(),
                }),
                Registry::start(Auth::Token(issuer)),
            ],
            names: ["plain", "basic", "token"].map(String::from).to_vec(),
            images: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// [`Lab::auth`] whose upstream holds one multi-arch image,
    /// `team/app:v1`, configured as image `app` to every target.
    pub async fn with_app() -> (Lab, Generated) {
        let lab = Lab::auth();
        let spec = Spec::new("team/app", "v1", false);
        let image = images::generate(&spec);
        images::push(&lab.upstream.url(), &spec.repo, &spec.tag, &image).await;
        lab.write_config(&format!(
            "  - name: app\n    source: {}/team/app\n    tags: [v1]\n",
            lab.upstream.host
        ));
        (lab, image)
    }

    /// The target named `name`.
    pub fn target(&self, name: &str) -> &Registry {
        let at = self.names.iter().position(|n| n == name).unwrap();
        &self.targets[at]
    }

    /// Each target with its name.
    pub fn named_targets(&self) -> impl Iterator<Item = (&str, &Registry)> {
        self.names.iter().map(String::as_str).zip(&self.targets)
    }

    pub fn target_hosts(&self) -> Vec<&str> {
        self.targets.iter().map(|t| t.host.as_str()).collect()
    }

    /// `mirror.yaml` reading the images from `source` (the upstream or a
    /// proxy in front of it) into `targets` (hosts, named t0, t1, …), plus
    /// `registries` YAML.
    pub fn config(&self, source: &str, targets: &[&str], registries: &str) {
        let mut yaml = MirrorYaml::new().registries(registries);
        for (i, host) in targets.iter().enumerate() {
            yaml = yaml.target(&format!("t{i}"), &format!("{host}/m"));
        }
        for (name, _) in &self.images {
            yaml = yaml.image(name, &format!("{source}/team/{name}"), "[v1]");
        }
        yaml.write(self.dir.path());
    }

    /// A proxy in front of the upstream playing `rules`, and `mirror.yaml`
    /// reading through it into every target.
    pub fn upstream_behind(&self, rules: Vec<Rule>) -> Proxy {
        let proxy = Proxy::start(&self.upstream.host, rules);
        self.config(&proxy.host, &self.target_hosts(), "");
        proxy
    }

    /// `mirror.yaml` with `images` (YAML list entries) to every target, by
    /// name, under `mirror`.
    pub fn write_config(&self, images: &str) -> String {
        let mut config = String::from("version: 1\ntargets:\n");
        for (name, target) in self.named_targets() {
            config.push_str(&format!("  {name}: {}/mirror\n", target.host));
        }
        config.push_str(&format!(
            "defaults:\n  targets: [{}]\nimages:\n{images}",
            self.names.join(", ")
        ));
        std::fs::write(self.dir.path().join("mirror.yaml"), &config).unwrap();
        config
    }

    /// `sync --json report.json` with `args`: the run and its report.
    pub fn sync(&self, args: &[&str]) -> (super::Run, Value) {
        let mut all = vec!["sync", "--json", "report.json"];
        all.extend_from_slice(args);
        let run = regmirror(self.dir.path(), &all, &[]);
        let report = std::fs::read(self.dir.path().join("report.json"))
            .unwrap_or_else(|e| panic!("no report ({e}):\n{}", run.all()));
        (run, serde_json::from_slice(&report).unwrap())
    }

    /// Credentials: `basic` through `REGMIRROR_AUTH_*`, `token` through a
    /// Docker `config.json` (`auths` with base64 `auth`), as docker login
    /// leaves it.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = auth_env(self.target("basic"));
        let token = self.target("token");
        let (user, password) = token.credentials().unwrap();
        let config_dir = self.dir.path().join("docker");
        std::fs::create_dir_all(&config_dir).unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let config = serde_json::json!({"auths": {token.host.clone(): {"auth": auth}}});
        std::fs::write(config_dir.join("config.json"), config.to_string()).unwrap();
        env.push(("DOCKER_CONFIG".into(), config_dir.display().to_string()));
        env
    }

    /// Every password of the targets and every token issued: none may show
    /// in any output.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = self
            .targets
            .iter()
            .filter_map(Registry::credentials)
            .map(|(_, p)| p)
            .collect();
        if let Auth::Token(issuer) = &self.target("token").auth {
            secrets.extend(issuer.issued.lock().unwrap().iter().cloned());
        }
        secrets
    }

    /// `regmirror` with `args` and the lab's credentials; no secret in
    /// what it prints.
    pub fn run(&self, args: &[&str]) -> super::Run {
        let run = regmirror(self.dir.path(), args, &self.env());
        let output = run.all();
        for secret in self.secrets() {
            assert!(
                !output.contains(&secret),
                "a credential leaked into the output of {args:?}:\n{output}"
            );
        }
        run
    }

    /// The deep check: every image on every target is complete with the
    /// source's digest when the report says copied or present, and absent
    /// otherwise. Returns the outcomes seen, per image, for more asserts.
    pub async fn check_targets(&self, report: &Value) -> Vec<(String, String)> {
        let mut outcomes = Vec::new();
        for (t, target) in self.named_targets() {
            for (name, image) in &self.images {
                let outcome = outcome(report, name, t);
                let state = deep_check(&target.host, &format!("m/team/{name}"), "v1").await;
                match outcome.as_str() {
                    "copied" | "present" => assert_eq!(
                        state,
                        TagState::Complete(image.root.0.clone()),
                        "{name} on {t} is reported {outcome}"
                    ),
                    _ => assert_eq!(state, TagState::Absent, "{name} on {t} is {outcome}"),
                }
                outcomes.push((name.clone(), outcome));
            }
        }
        outcomes
    }
}

/// The outcome of `image` at `target` in a `--json` report.
pub fn outcome(report: &Value, image: &str, target: &str) -> String {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["image"] == image && r["target"] == target)
        .unwrap_or_else(|| panic!("no result for {image} → {target}: {report:#}"))["outcome"]
        .as_str()
        .unwrap()
        .to_string()
}
