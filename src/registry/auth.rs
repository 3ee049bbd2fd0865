//! Who we are at each registry, and the tokens that say so.
//!
//! Credentials come, in order, from `REGMIRROR_AUTH_<HOST>` (`user:secret`),
//! `GITHUB_TOKEN` for `ghcr.io`, and the Docker credential chain
//! (`$DOCKER_CONFIG/config.json`: `auths`, `credHelpers`, `credsStore`), as
//! `docker/login-action` leaves it. They are redacted from `Debug` and never
//! put into an error message.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::reference::DOCKER_HUB;

/// A secret that opens a registry.
#[derive(Clone)]
pub enum Credential {
    /// Username and password (or personal access token).
    Basic { username: String, password: String },
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

/// Finds credentials for `registry` (as written: `docker.io`, `ghcr.io`).
/// Blocking: credential helpers are programs; call it on a blocking thread.
pub fn lookup(registry: &str) -> Option<Credential> {
    if let Ok(value) = std::env::var(env_var_name(registry)) {
        let (username, password) = value
            .split_once(':')
            .unwrap_or(("regmirror", value.as_str()));
        return Some(Credential::Basic {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    if registry == "ghcr.io"
        && let Ok(token) = std::env::var("GITHUB_TOKEN")
        && !token.is_empty()
    {
        let username =
            std::env::var("GITHUB_ACTOR").unwrap_or_else(|_| "x-access-token".to_string());
        return Some(Credential::Basic {
            username,
            password: token,
        });
    }
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
    keys.iter()
        .find_map(|key| match docker_credential::get_credential(key) {
            Ok(docker_credential::DockerCredential::UsernamePassword(username, password)) => {
                Some(Credential::Basic { username, password })
            }
            Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
                Some(Credential::IdentityToken(token))
            }
            Err(_) => None,
        })
}

/// How a registry asked us to authenticate (`WWW-Authenticate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// No authentication needed.
    Anonymous,
    /// HTTP Basic on every request.
    Basic,
    /// A bearer token from `realm`, for `service`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header; `None` for schemes we do not speak.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let params = parse_params(rest);
            Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
            })
        }
        _ => None,
    }
}

/// `key="value", key=value` pairs; quoted values may hold commas.
fn parse_params(input: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    params
}

/// Bearer tokens by registry and scope, until shortly before they expire.
#[derive(Default)]
pub struct Tokens {
    entries: Mutex<HashMap<String, (String, Instant)>>,
}

impl Tokens {
    /// A cached token for `key`, if it is still fresh.
    pub fn get(&self, key: &str) -> Option<String> {
        let entries = self.entries.lock().expect("token cache lock poisoned");
        entries
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(token, _)| token.clone())
    }

    /// Remembers `token` for `lifetime`, less a margin for clock and transit.
    pub fn put(&self, key: String, token: String, lifetime: Duration) {
        let margin = Duration::from_secs(10).min(lifetime / 2);
        let until = Instant::now() + lifetime - margin;
        let mut entries = self.entries.lock().expect("token cache lock poisoned");
        entries.insert(key, (token, until));
    }

    /// Forgets `key` (the registry refused the token).
    pub fn forget(&self, key: &str) {
        self.entries
            .lock()
            .expect("token cache lock poisoned")
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let table = [
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/x:pull,push""#,
                Some(Challenge::Bearer {
                    realm: "https://auth.docker.io/token".into(),
                    service: Some("registry.docker.io".into()),
                }),
            ),
            (
                r#"Bearer realm="https://ghcr.io/token""#,
                Some(Challenge::Bearer {
                    realm: "https://ghcr.io/token".into(),
                    service: None,
                }),
            ),
            (r#"Basic realm="Registry Realm""#, Some(Challenge::Basic)),
            ("Negotiate", None),
            ("Bearer service=x", None),
        ];
        for (header, want) in table {
            assert_eq!(parse_challenge(header), want, "{header}");
        }
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

    #[test]
    fn tokens_expire() {
        let tokens = Tokens::default();
        tokens.put("a".into(), "t".into(), Duration::from_secs(300));
        assert_eq!(tokens.get("a").as_deref(), Some("t"));
        tokens.put("b".into(), "t".into(), Duration::ZERO);
        assert_eq!(tokens.get("b"), None);
        tokens.forget("a");
        assert_eq!(tokens.get("a"), None);
    }
}
