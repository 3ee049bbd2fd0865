//! Who we are at each registry: credentials, found where the ecosystem
//! keeps them. In order: `REGMIRROR_AUTH_<HOST>` (`user:secret`), the
//! Docker credential chain (`$DOCKER_CONFIG/config.json`: `auths`,
//! `credHelpers`, `credsStore`) as `docker login` and `docker/login-action`
//! leave it, and for `ghcr.io` the job's `GITHUB_TOKEN` as a fallback. A
//! lookup says where it looked, or which helper failed. Credentials are
//! redacted from `Debug` and never put into an error message. What they
//! are exchanged for (bearer tokens) is `auth`'s business.

use std::fmt;

use crate::reference::DOCKER_HUB;

/// A secret that opens a registry.
#[derive(Clone)]
pub enum Credential {
    /// Username and password (or personal access token).
    Basic {
        /// The user name.
        username: String,
        /// The password or token.
        password: String,
    },
    /// An OAuth2 refresh token, as `docker login` stores for some registries.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => {
                write!(
                    f,
                    "Basic {{ username: {username:?}, password: <redacted> }}"
                )
            }
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// The environment variable that overrides credentials for `registry`:
/// `ghcr.io` → `REGMIRROR_AUTH_GHCR_IO`, `127.0.0.1:5000` → `REGMIRROR_AUTH_127_0_0_1_5000`.
pub fn env_var_name(registry: &str) -> String {
    let host: String = registry
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("REGMIRROR_AUTH_{host}")
}

/// What the credential lookup found for a registry.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// A credential, and where it came from.
    Found(Credential, String),
    /// None: where it looked.
    Missing(Vec<String>),
    /// A credential helper failed (not the same as none configured).
    Failed(String),
}

impl Lookup {
    /// The credential, if one was found.
    pub fn credential(&self) -> Option<&Credential> {
        match self {
            Lookup::Found(credential, _) => Some(credential),
            _ => None,
        }
    }

    /// Why requests to `registry` went without credentials, and how to add
    /// them; for an error that a registry refused them.
    pub fn explain(&self, registry: &str) -> String {
        match self {
            Lookup::Found(_, from) => format!("the credentials from {from} were refused"),
            Lookup::Missing(looked) => format!(
                "no credentials found (looked at {}): run `docker login {registry}`, or set `{}=user:token` (see {})",
                looked.join(", "),
                env_var_name(registry),
                crate::troubleshooting!("no-credentials")
            ),
            Lookup::Failed(why) => format!("{why}, so no credentials were sent"),
        }
    }
}

/// Finds credentials for `registry` (as written: `docker.io`, `ghcr.io`).
/// Blocking: credential helpers are programs; call it on a blocking thread.
pub fn lookup(registry: &str) -> Lookup {
    lookup_in(registry, &|name| std::env::var(name).ok(), &|key| {
        docker_credential::get_credential(key)
    })
}

/// [`lookup`], with the environment and the Docker credential chain given.
/// The order is the ecosystem's: `REGMIRROR_AUTH_<HOST>`, then what
/// `docker login` (or `docker/login-action`) stored, then for `ghcr.io`
/// the job's `GITHUB_TOKEN` as a fallback only.
fn lookup_in(
    registry: &str,
    env: &dyn Fn(&str) -> Option<String>,
    docker: &dyn Fn(
        &str,
    ) -> Result<
        docker_credential::DockerCredential,
        docker_credential::CredentialRetrievalError,
    >,
) -> Lookup {
    let variable = env_var_name(registry);
    if let Some(value) = env(&variable) {
        let (username, password) = value
            .split_once(':')
            .unwrap_or(("regmirror", value.as_str()));
        let credential = Credential::Basic {
            username: username.to_string(),
            password: password.to_string(),
        };
        return Lookup::Found(credential, format!("`{variable}`"));
    }
    let config = match (env("DOCKER_CONFIG"), env("HOME")) {
        (Some(dir), _) => format!("{dir}/config.json"),
        (None, Some(home)) => format!("{home}/.docker/config.json"),
        (None, None) => "~/.docker/config.json".to_string(),
    };
    // Docker stores Docker Hub under its v1 index URL, never under `docker.io`
    // (with `credsStore` only the URL form is found).
    let keys: &[&str] = if registry == DOCKER_HUB {
        &[
            "https://index.docker.io/v1/",
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
        ]
    } else {
        &[registry]
    };
    let mut failed = None;
    for key in keys {
        use docker_credential::{CredentialRetrievalError as Why, DockerCredential};
        let from = || format!("the Docker config (`{config}`)");
        match docker(key) {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                return Lookup::Found(Credential::Basic { username, password }, from());
            }
            Ok(DockerCredential::IdentityToken(token)) => {
                return Lookup::Found(Credential::IdentityToken(token), from());
            }
            // Helpers answer "credentials not found in native keychain" for
            // a server they hold nothing for (docker/docker-credential-helpers):
            // that is none, not a failure.
            Err(Why::HelperFailure {
                helper,
                stdout,
                stderr,
            }) => {
                let said = if stdout.trim().is_empty() {
                    stderr
                } else {
                    stdout
                };
                if !said.contains("credentials not found") {
                    let said = said.lines().next().unwrap_or_default().trim().to_string();
                    failed.get_or_insert(format!(
                        "the credential helper `{helper}` named in `{config}` failed: {}",
                        super::body::neutral(&said)
                    ));
                }
            }
            // A config file that is not there is no credentials; one that
            // is there and cannot be read is a failure to say.
            Err(Why::ConfigReadError) if !std::path::Path::new(&config).exists() => {}
            Err(
                why @ (Why::HelperCommunicationError
                | Why::MalformedHelperResponse
                | Why::ConfigReadError),
            ) => {
                failed.get_or_insert(format!(
                    "reading credentials for `{registry}` from `{config}` failed: {why}"
                ));
            }
            Err(_) => {}
        }
    }
    if registry == "ghcr.io"
        && let Some(token) = env("GITHUB_TOKEN").filter(|token| !token.is_empty())
    {
        let username = env("GITHUB_ACTOR").unwrap_or_else(|| "x-access-token".to_string());
        let credential = Credential::Basic {
            username,
            password: token,
        };
        return Lookup::Found(credential, "`GITHUB_TOKEN`".into());
    }
    if let Some(failed) = failed {
        return Lookup::Failed(failed);
    }
    let mut looked = vec![format!("`{variable}`"), format!("`{config}`")];
    if registry == "ghcr.io" {
        looked.push("`GITHUB_TOKEN`".into());
    }
    Lookup::Missing(looked)
}

#[cfg(test)]
mod tests {
    use super::*;

    use docker_credential::{CredentialRetrievalError as Why, DockerCredential};

    /// An environment of `vars`.
    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    fn source(lookup: &Lookup) -> String {
        match lookup {
            Lookup::Found(_, from) => from.clone(),
            other => format!("{other:?}"),
        }
    }

    /// `REGMIRROR_AUTH_<HOST>`, then `docker login`'s, then (ghcr.io only)
    /// `GITHUB_TOKEN`: a token in the job's environment does not shadow a
    /// login the workflow made on purpose.
    #[test]
    fn credentials_are_looked_up_in_the_ecosystem_order() {
        let logged_in = |_: &str| Ok(DockerCredential::UsernamePassword("u".into(), "p".into()));
        let none = |_: &str| Err(Why::NoCredentialConfigured);
        let all = env(&[
            ("REGMIRROR_AUTH_GHCR_IO", "a:b"),
            ("GITHUB_TOKEN", "t"),
            ("HOME", "/home/me"),
        ]);
        let token_only = env(&[("GITHUB_TOKEN", "t"), ("HOME", "/home/me")]);
        assert_eq!(
            source(&lookup_in("ghcr.io", &all, &logged_in)),
            "`REGMIRROR_AUTH_GHCR_IO`"
        );
        assert_eq!(
            source(&lookup_in("ghcr.io", &token_only, &logged_in)),
            "the Docker config (`/home/me/.docker/config.json`)"
        );
        assert_eq!(
            source(&lookup_in("ghcr.io", &token_only, &none)),
            "`GITHUB_TOKEN`"
        );
        // GITHUB_TOKEN is for GHCR only.
        assert!(matches!(
            lookup_in("quay.io", &token_only, &none),
            Lookup::Missing(_)
        ));
    }

    /// None found: the error says where it looked and how to add them. A
    /// helper that fails says so; one that holds nothing for the server is
    /// none (docker-credential-helpers' "credentials not found").
    #[test]
    fn a_missing_credential_names_where_it_looked_and_a_failed_helper_says_so() {
        let config = env(&[("DOCKER_CONFIG", "/ci/docker")]);
        let none = |_: &str| Err(Why::ConfigNotFound);
        let missing = lookup_in("ghcr.io", &config, &none).explain("ghcr.io");
        assert_eq!(
            missing,
            "no credentials found (looked at `REGMIRROR_AUTH_GHCR_IO`, `/ci/docker/config.json`, `GITHUB_TOKEN`): run `docker login ghcr.io`, or set `REGMIRROR_AUTH_GHCR_IO=user:token` (see https://acme.github.io/regmirror/troubleshooting/#no-credentials)"
        );
        let failing = |_: &str| {
            Err(Why::HelperFailure {
                helper: "docker-credential-pass".into(),
                stdout: String::new(),
                stderr: "gpg: decryption failed: No secret key\nmore".into(),
            })
        };
        let failed = lookup_in("quay.io", &config, &failing);
        assert!(matches!(failed, Lookup::Failed(_)));
        assert_eq!(
            failed.explain("quay.io"),
            "the credential helper `docker-credential-pass` named in `/ci/docker/config.json` failed: gpg: decryption failed: No secret key, so no credentials were sent"
        );
        let holds_nothing = |_: &str| {
            Err(Why::HelperFailure {
                helper: "docker-credential-desktop".into(),
                stdout: "credentials not found in native keychain\n".into(),
                stderr: String::new(),
            })
        };
        assert!(matches!(
            lookup_in("quay.io", &config, &holds_nothing),
            Lookup::Missing(_)
        ));
    }

    #[test]
    fn env_names_and_redaction() {
        assert_eq!(env_var_name("ghcr.io"), "REGMIRROR_AUTH_GHCR_IO");
        assert_eq!(
            env_var_name("127.0.0.1:5000"),
            "REGMIRROR_AUTH_127_0_0_1_5000"
        );
        let basic = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        let token = Credential::IdentityToken("tok-secret".into());
        assert!(!format!("{basic:?}").contains("hunter2"));
        assert!(!format!("{token:?}").contains("tok-secret"));
    }
}
