//! containerd mirrors that need credentials, proven with a real containerd:
//! `containerd-hosts --auth` writes hosts files that containerd follows to
//! an htpasswd-protected mirror while the upstream is down; without
//! `--auth` the mirror refuses (401) and containerd falls back to the
//! (stopped) upstream and fails, as containerd does. The mirror's user is a
//! Harbor robot account (`robot$PROJECT+NAME`): its `$` and `+` reach
//! containerd's header and the CRI config as they are.

use crate::support::config::MirrorYaml;
use crate::support::containerd::Containerd;
use crate::support::images::{self, Generated, Spec};
use crate::support::{Auth, Registry, auth_env, regmirror};

/// Every digest `ctr content ls` lists.
fn content(containerd: &Containerd) -> String {
    let listed = containerd.ctr(&["content", "ls", "-q"]);
    String::from_utf8_lossy(&listed.stdout).into_owned()
}

fn digests(image: &Generated) -> Vec<String> {
    let mut all = vec![image.root.0.clone()];
    all.extend(image.children.iter().map(|c| c.0.clone()));
    all.extend(image.blobs.iter().map(|b| b.0.clone()));
    all
}

#[tokio::test]
async fn containerd_pulls_every_platform_from_an_authenticated_mirror() {
    let upstream = Registry::start(Auth::None);
    let mirror = Registry::start(Auth::Htpasswd {
        user: "robot$mirror+pull".into(),
        password: "mirror-pass-K8q".into(),
    });
    let app = images::generate(&Spec::new("team/app", "v1", false));
    let tool = images::generate(&Spec {
        base: 7,
        ..Spec::new("team/tool", "v1", true)
    });
    images::push(&upstream.url(), "team/app", "v1", &app).await;
    images::push(&upstream.url(), "team/tool", "v1", &tool).await;
    let dir = tempfile::tempdir().unwrap();
    MirrorYaml::new()
        .target("mirror", &mirror.host)
        .image("app", &format!("{}/team/app", upstream.host), "[v1]")
        .image("tool", &format!("{}/team/tool", upstream.host), "[v1]")
        .write(dir.path());
    let env = auth_env(&mirror);
    let sync = regmirror(dir.path(), &["sync"], &env);
    assert_eq!(sync.code, 0, "{}", sync.all());

    // With --auth: the file holds the credential, 0600, said at its top;
    // nothing printed shows it.
    let (with, without) = (dir.path().join("with"), dir.path().join("without"));
    let secret_b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "robot$mirror+pull:mirror-pass-K8q",
    );
    let run = regmirror(
        dir.path(),
        &[
            "containerd-hosts",
            "--out",
            "with",
            "--auth",
            "--cri-config",
            "cri.toml",
        ],
        &env,
    );
    assert_eq!(run.code, 0, "{}", run.all());
    for leak in ["mirror-pass-K8q", secret_b64.as_str()] {
        assert!(
            !run.all().contains(leak),
            "printed a secret:\n{}",
            run.all()
        );
    }
    let file = with.join(&upstream.host).join("hosts.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("holds registry credentials"), "{text}");
    assert!(
        text.contains(&format!("Authorization = \"Basic {secret_b64}\"")),
        "{text}"
    );
    let cri = std::fs::read_to_string(dir.path().join("cri.toml")).unwrap();
    assert!(
        cri.contains(&format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"{}\".auth]",
            mirror.host
        )) && cri.contains("username = \"robot$mirror+pull\"")
            && cri.contains("password = \"mirror-pass-K8q\""),
        "{cri}"
    );
    #[cfg(unix)]
    for path in [&file, &dir.path().join("cri.toml")] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    // --dry-run shows the files with the secret redacted, and writes nothing.
    let dry = regmirror(
        dir.path(),
        &["containerd-hosts", "--out", "dry", "--auth", "--dry-run"],
        &env,
    );
    assert_eq!(dry.code, 0, "{}", dry.all());
    assert!(
        dry.stdout.contains("Authorization = \"Basic <redacted>\""),
        "{}",
        dry.stdout
    );
    assert!(!dry.all().contains(&secret_b64));
    assert!(!dir.path().join("dry").exists());
    // Without --auth, the same files but no header.
    let plain = regmirror(dir.path(), &["containerd-hosts", "--out", "without"], &env);
    assert_eq!(plain.code, 0, "{}", plain.all());

    // The upstream goes down; containerd pulls through the files.
    let upstream_host = upstream.host.clone();
    drop(upstream);
    let containerd = Containerd::start();
    let mark = mirror.mark();
    let fetched = containerd.fetch_all_platforms(&with, &format!("{upstream_host}/team/app:v1"));
    assert!(
        fetched.status.success(),
        "{}{}",
        String::from_utf8_lossy(&fetched.stdout),
        String::from_utf8_lossy(&fetched.stderr)
    );
    let have = content(&containerd);
    for digest in digests(&app) {
        assert!(have.contains(&digest), "{digest} not fetched:\n{have}");
    }
    // The mirror saw authenticated requests only: none refused.
    let requests = mirror.requests();
    let seen: Vec<_> = requests.iter().skip(mark).collect();
    assert!(
        seen.iter().any(|r| r.is_blob() && r.status == 200),
        "{seen:#?}"
    );
    assert!(seen.iter().all(|r| r.status != 401), "{seen:#?}");

    // Without credentials: the mirror refuses, containerd falls back to the
    // stopped upstream, and the fetch fails.
    let mark = mirror.mark();
    let refused =
        containerd.fetch_all_platforms(&without, &format!("{upstream_host}/team/tool:v1"));
    assert!(!refused.status.success(), "fetched without credentials");
    let requests = mirror.requests();
    assert!(
        requests.iter().skip(mark).any(|r| r.status == 401),
        "the mirror did not refuse: {:#?}",
        &requests[mark..]
    );
    let have = content(&containerd);
    assert!(!have.contains(&tool.root.0), "tool came from somewhere");
}
