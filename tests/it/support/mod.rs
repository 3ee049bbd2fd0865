//! Real parts for the integration tests: Debian's `docker-registry`
//! (distribution 2.8) processes on loopback, a token issuer for
//! distribution's token auth, a fault-injecting proxy, a generator of
//! multi-arch test images pushed with plain HTTP (not regmirror's client),
//! and a runner for the real `regmirror` binary.

pub mod check;
pub mod config;
pub mod containerd;
pub mod images;
pub mod lab;
pub mod proxy;
pub mod standin;
pub mod token;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a test registry authenticates.
pub enum Auth {
    None,
    /// htpasswd with one user.
    Htpasswd {
        user: String,
        password: String,
    },
    /// distribution token auth, trusting `issuer`.
    Token(token::Issuer),
}

/// One `docker-registry` process with its own port and storage.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Kept alive as long as the registry.
    pub auth: Auth,
    /// Files the registry reads (certificates), kept as long as it runs.
    _keep: Vec<tempfile::TempDir>,
}

/// One line of the registry's access log.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
}

impl Request {
    pub fn is_manifest(&self) -> bool {
        self.path.contains("/manifests/")
    }
    pub fn is_blob(&self) -> bool {
        self.path.contains("/blobs/") && !self.path.contains("/blobs/uploads")
    }
    pub fn is_upload(&self) -> bool {
        self.path.contains("/blobs/uploads")
    }
}

pub fn docker_registry_available() -> bool {
    Command::new("docker-registry")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Registry {
    /// Starts a registry on a free loopback port (the registry binds port 0
    /// and logs which it got, so parallel tests never race for ports).
    pub fn start(auth: Auth) -> Registry {
        Registry::start_with(auth, None)
    }

    /// Starts a registry serving HTTPS with a certificate for 127.0.0.1
    /// signed by a fresh CA; returns it and the CA's PEM.
    pub fn start_tls() -> (Registry, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "regmirror test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let tls = format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert_path.display(),
            key_path.display()
        );
        let mut registry = Registry::start_with(Auth::None, Some(tls));
        registry._keep.push(dir);
        (registry, ca_cert.pem())
    }

    fn start_with(auth: Auth, tls: Option<String>) -> Registry {
        assert!(
            docker_registry_available(),
            "docker-registry is not installed: run scripts/install-deps (see README)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let auth_yaml = match &auth {
            Auth::None => String::new(),
            Auth::Htpasswd { user, password } => {
                let output = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd (apache2-utils) is installed");
                assert!(output.status.success());
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, output.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: regmirror-test\n    path: {}\n",
                    path.display()
                )
            }
            Auth::Token(issuer) => format!(
                "auth:\n  token:\n    realm: {}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                issuer.url,
                token::SERVICE,
                token::ISSUER,
                issuer.cert_path.display()
            ),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nvalidation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\nhttp:\n  addr: 127.0.0.1:0\n  secret: regmirror-test-secret\n{}{auth_yaml}",
            dir.path().join("data").display(),
            tls.unwrap_or_default()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        if let Auth::Token(issuer) = &auth {
            *issuer.storage.lock().unwrap() = Some(dir.path().join("data"));
        }
        let mut registry = Registry {
            child,
            dir,
            host: String::new(),
            auth,
            _keep: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(registry.log_path()).unwrap_or_default();
            if let Some(at) = log.find("listening on 127.0.0.1:") {
                let port: String = log[at + "listening on 127.0.0.1:".len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                registry.host = format!("127.0.0.1:{port}");
                break;
            }
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("docker-registry exited ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    /// The token service this registry trusts, if it uses token auth.
    pub fn issuer(&self) -> Option<&token::Issuer> {
        match &self.auth {
            Auth::Token(issuer) => Some(issuer),
            _ => None,
        }
    }

    /// The credentials, if any, as `user:password`.
    pub fn credentials(&self) -> Option<(String, String)> {
        match &self.auth {
            Auth::None => None,
            Auth::Htpasswd { user, password } => Some((user.clone(), password.clone())),
            Auth::Token(issuer) => Some((issuer.user.clone(), issuer.password.clone())),
        }
    }

    /// Every request the registry has logged so far.
    pub fn requests(&self) -> Vec<Request> {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log.lines()
            .filter_map(|line| {
                // 127.0.0.1 - - [date] "GET /v2/x HTTP/1.1" 200 123 "" "agent"
                let start = line.find("] \"")? + 3;
                let rest = &line[start..];
                let (request, tail) = rest.split_once('"')?;
                let mut parts = request.split(' ');
                let method = parts.next()?.to_string();
                let path = parts.next()?.to_string();
                let mut numbers = tail.split_whitespace();
                let status = numbers.next()?.parse().ok()?;
                let bytes = numbers.next()?.parse().unwrap_or(0);
                Some(Request {
                    method,
                    path,
                    status,
                    bytes,
                })
            })
            .collect()
    }

    /// A mark to count requests from: how many are logged now.
    pub fn mark(&self) -> usize {
        self.requests().len()
    }

    /// Requests with `method` whose kind matches `kind`, logged after `mark`.
    pub fn count_since(&self, mark: usize, method: &str, kind: fn(&Request) -> bool) -> usize {
        self.requests()
            .iter()
            .skip(mark)
            .filter(|r| r.method == method && kind(r))
            .count()
    }

    /// The registry's storage root (distribution's `rootdirectory`).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The storage path of a blob's data file.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // By PID, never by name.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The result of running the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `regmirror` with `args` in `dir`, with a clean credential
/// environment plus `env`.
pub fn regmirror(dir: &Path, args: &[&str], env: &[(String, String)]) -> Run {
    let output = regmirror_command(dir, args, env)
        .output()
        .expect("run regmirror");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The command [`regmirror`] runs, for tests that need the process itself.
pub fn regmirror_command(dir: &Path, args: &[&str], env: &[(String, String)]) -> Command {
    // REGMIRROR_TEST_BIN runs the tests against another build (an older
    // one, to see a new test fail on the code it was written against).
    let binary = std::env::var_os("REGMIRROR_TEST_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_regmirror").into());
    let mut command = Command::new(binary);
    command
        .args(args)
        .current_dir(dir)
        .env("DOCKER_CONFIG", dir.join("no-docker-config"))
        .env_remove("GITHUB_TOKEN")
        .env("NO_COLOR", "1");
    for (key, _) in std::env::vars() {
        if key.starts_with("REGMIRROR_") || key.starts_with("GITHUB_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// The `REGMIRROR_AUTH_<HOST>` variable regmirror reads for `registry`.
pub fn auth_var(registry: &Registry) -> String {
    auth_var_for(&registry.host)
}

/// The `REGMIRROR_AUTH_<HOST>` variable for `host` (a proxy in front of a
/// registry is its own host).
pub fn auth_var_for(host: &str) -> String {
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("REGMIRROR_AUTH_{host}")
}

/// `REGMIRROR_AUTH_<HOST>=user:password` for a registry with credentials.
pub fn auth_env(registry: &Registry) -> Vec<(String, String)> {
    registry
        .credentials()
        .map(|(user, password)| (auth_var(registry), format!("{user}:{password}")))
        .into_iter()
        .collect()
}

/// `examples/<name>/mirror.yaml` with real hosts swapped for loopback
/// ones (`("docker.io", "127.0.0.1:PORT")`), written to `dir/mirror.yaml`.
pub fn example_config(name: &str, dir: &Path, hosts: &[(&str, &str)]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text =
        std::fs::read_to_string(root.join("examples").join(name).join("mirror.yaml")).unwrap();
    for (real, local) in hosts {
        text = text.replace(real, local);
    }
    let path = dir.join("mirror.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The shared fixtures directory, when this checkout has `../shared` beside it.
pub fn shared_fixtures() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/real");
    path.is_dir().then_some(path)
}

/// Validates `instance` (JSON or YAML) against the JSON Schema `schema` with
/// `check-jsonschema` (PyPI; `scripts/install-deps` installs it). `schema`
/// may also be `vendor.…` for one of its built-in schemas. Returns the
/// tool's output on failure.
pub fn check_jsonschema(schema: &str, instance: &Path) -> Result<(), String> {
    let mut command = Command::new("check-jsonschema");
    match schema.strip_prefix("builtin:") {
        Some(builtin) => command.args(["--builtin-schema", builtin]),
        None => command.args(["--schemafile", schema]),
    };
    let output = command
        .arg(instance)
        .output()
        .expect("check-jsonschema is installed (scripts/install-deps)");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A loopback port nothing listens on now (for a server the test starts:
/// it could be taken in between, which loopback tests do not race for).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The regmirror under test, stripped as a release binary is (the debug
/// build is 300 MB), at `dir/regmirror`.
pub fn stripped_binary(dir: &Path) -> PathBuf {
    let binary = dir.join("regmirror");
    let strip = Command::new("strip")
        .arg("-o")
        .arg(&binary)
        .arg(env!("CARGO_BIN_EXE_regmirror"))
        .status()
        .expect("strip (binutils) is installed");
    assert!(strip.success());
    binary
}
