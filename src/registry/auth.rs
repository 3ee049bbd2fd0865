//! The token exchange: how a registry asks us to authenticate (its
//! challenge), the credentials it gets for it (from [`super::credentials`],
//! or an ECR login), and the bearer tokens they are exchanged for, cached
//! per registry and scope.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::sync::Arc;

use base64::Engine as _;
use futures::StreamExt;
use reqwest::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use super::body::{MAX_TOKEN_SIZE, header, read_capped};
use super::credentials::{Credential, Lookup, lookup};
use super::deadline::{self, Watch};
use super::{Host, RegistryClient};
use crate::error::{Error, Result};
use crate::text::ShownUrl;

/// Where an ECR Public login comes from, for messages.
const ECR_LOGIN: &str = "ECR GetAuthorizationToken (the AWS credential chain)";

/// How a registry asked us to authenticate (`WWW-Authenticate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// No authentication needed.
    Anonymous,
    /// HTTP Basic on every request.
    Basic,
    /// A bearer token from `realm`, for `service`.
    Bearer {
        /// Where tokens are issued.
        realm: String,
        /// The `service` the token is for, if named.
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
    /// One lock per key: the first caller asks the token service, and
    /// concurrent callers for that key wait and take its token (single
    /// flight), instead of all asking at the same moment.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Tokens {
    /// Waits for the right to fetch `key`'s token.
    async fn flight(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .flights
            .lock()
            .expect("token flights lock poisoned")
            .entry(key.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

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
        let lifetime = lifetime.min(super::retry::LONGEST_HINT);
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

// --- The token exchange: challenge, credentials, bearer tokens. ---

/// What a request needs to be allowed to do; becomes the token scope.
#[derive(Clone, Debug)]
pub(super) enum Access<'a> {
    Pull(&'a str),
    Push(&'a str),
    Mount { to: &'a str, from: &'a str },
}

impl Access<'_> {
    fn scopes(&self) -> Vec<String> {
        match self {
            Access::Pull(path) => vec![format!("repository:{path}:pull")],
            Access::Push(path) => vec![format!("repository:{path}:pull,push")],
            Access::Mount { to, from } => vec![
                format!("repository:{to}:pull,push"),
                format!("repository:{from}:pull"),
            ],
        }
    }
}

/// A bearer realm must be an http(s) URL, and not plain HTTP when the
/// registry itself (at `base`) speaks TLS: the password would travel in the
/// clear.
pub(super) fn checked_challenge(
    registry: &str,
    base: &str,
    challenge: Challenge,
) -> Result<Challenge> {
    if let Challenge::Bearer { realm, .. } = &challenge {
        let refuse = |reason: &str| Error::Auth {
            registry: registry.to_string(),
            reason: format!("token realm `{}` {reason}", ShownUrl::new(realm)),
        };
        let url = url::Url::parse(realm).map_err(|_| refuse("is not a URL"))?;
        match url.scheme() {
            "https" => {}
            "http" if base.starts_with("http://") => {}
            "http" => {
                return Err(refuse(
                    "is plain HTTP for a TLS registry; credentials are not sent there",
                ));
            }
            _ => return Err(refuse("is not an http or https URL")),
        }
    }
    Ok(challenge)
}

impl RegistryClient {
    pub(super) async fn credential(&self, host: &Host) -> Option<Credential> {
        if let Some(found) = self.lookup(host).await.credential() {
            return Some(found.clone());
        }
        // Amazon ECR: a login from the AWS credential chain.
        let api = match self.options.get(&host.registry) {
            Some(options) => options.ecr_login,
            None => super::ecr::api_for(&host.registry),
        };
        let api = api.filter(|_| !self.anonymous)?;
        // A refusal was warned about where it was first met (`ecr.rs`).
        self.ecr.login(&host.registry, api).await.ok()
    }

    /// Why `host` refused us: the credentials it was sent and where they
    /// came from, or why there were none and how to add them.
    pub(super) async fn refused_identity(&self, host: &Host) -> String {
        let lookup = self.lookup(host).await;
        match (lookup, self.credential(host).await) {
            (Lookup::Found(..), _) | (_, None) => lookup.explain(&host.registry),
            (_, Some(_)) => format!("the credentials from {ECR_LOGIN} were refused"),
        }
    }

    /// What the credential lookup found for `host`, once per run; a
    /// failing credential helper is warned about then.
    pub(super) async fn lookup<'a>(&self, host: &'a Host) -> &'a Lookup {
        host.credential
            .get_or_init(|| async {
                if self.anonymous {
                    return Lookup::Missing(vec!["nothing (`--anonymous`)".into()]);
                }
                let registry = host.registry.clone();
                let found = tokio::task::spawn_blocking(move || lookup(&registry))
                    .await
                    .unwrap_or_else(|e| {
                        Lookup::Failed(format!("the credential lookup failed: {e}"))
                    });
                if let Lookup::Failed(why) = &found {
                    tracing::warn!("{}: {why}", host.registry);
                }
                found
            })
            .await
    }

    /// Learns how `host` wants us to authenticate, by asking `/v2/` once.
    /// Who waits: every request to the host, for the one ping in flight;
    /// for at most one idle window: a request that waited that long for
    /// the host's first answer is a stalled request to it (so a silent
    /// host is marked down after one window, not after one ping's retries
    /// per waiting job).
    async fn challenge(&self, host: &Arc<Host>) -> Result<Challenge> {
        let url = format!("{}/v2/", host.base);
        let Ok(mut learned) = tokio::time::timeout(host.window, host.challenge.lock()).await else {
            return Err(match host.down() {
                Some(down) => down,
                None => host.fault(&Method::GET, &url, deadline::Fault::Stalled, None),
            });
        };
        if let Some(challenge) = learned.clone() {
            return Ok(challenge);
        }
        if let Some(down) = host.down() {
            return Err(down);
        }
        let response = self
            .attempt_loop(host, Method::GET, &url, None, &|r, _| r, true)
            .await?
            .response;
        let challenge = match response.status() {
            // A challenge counts only from the registry itself, not from a
            // host its `/v2/` redirected us to.
            StatusCode::UNAUTHORIZED if host.owns(response.url().as_str()) => {
                let challenge = header(&response, WWW_AUTHENTICATE.as_str())
                    .and_then(parse_challenge)
                    .ok_or_else(|| Error::Auth {
                        registry: host.registry.clone(),
                        reason: "401 without a usable `WWW-Authenticate` challenge".into(),
                    })?;
                host.checked(challenge)?
            }
            StatusCode::UNAUTHORIZED => {
                return Err(Error::Auth {
                    registry: host.registry.clone(),
                    reason: format!(
                        "`GET {url}` was redirected to `{}`, which asked for credentials; they are not sent there",
                        ShownUrl::from(response.url())
                    ),
                });
            }
            _ => Challenge::Anonymous,
        };
        *learned = Some(challenge.clone());
        Ok(challenge)
    }

    /// The `Authorization` header for `access` at `host`, if any is needed.
    pub(super) async fn authorization(
        &self,
        host: &Arc<Host>,
        access: &Access<'_>,
    ) -> Result<Option<String>> {
        match self.challenge(host).await? {
            Challenge::Anonymous => Ok(None),
            Challenge::Basic => Ok(match self.credential(host).await {
                Some(Credential::Basic { username, password }) => {
                    let encoded = base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"));
                    Some(format!("Basic {encoded}"))
                }
                _ => None,
            }),
            Challenge::Bearer { realm, service } => {
                let token = self.token(host, &realm, service.as_deref(), access).await?;
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    pub(super) fn token_key(host: &Host, access: &Access<'_>) -> String {
        format!("{} {}", host.base, access.scopes().join(" "))
    }

    /// The keys whose token serves `access`, best first: a pull is also
    /// served by the push token of the same repository.
    fn serving_keys(host: &Host, access: &Access<'_>) -> Vec<String> {
        let mut keys = Vec::new();
        if let Access::Pull(path) = access {
            keys.push(Self::token_key(host, &Access::Push(path)));
        }
        keys.push(Self::token_key(host, access));
        keys
    }

    /// A fresh cached token that serves `access`.
    fn cached_token(&self, host: &Host, access: &Access<'_>) -> Option<String> {
        Self::serving_keys(host, access)
            .iter()
            .find_map(|key| self.tokens.get(key))
    }

    /// Forgets every token that could serve `access` (the registry refused
    /// the one sent).
    pub(super) fn forget_tokens(&self, host: &Host, access: &Access<'_>) {
        for key in Self::serving_keys(host, access) {
            self.tokens.forget(&key);
        }
    }

    /// A bearer token for `access`, from the cache or from `realm`.
    async fn token(
        &self,
        host: &Host,
        realm: &str,
        service: Option<&str>,
        access: &Access<'_>,
    ) -> Result<String> {
        if let Some(token) = self.cached_token(host, access) {
            return Ok(token);
        }
        let key = Self::token_key(host, access);
        let _flight = self.tokens.flight(&key).await;
        // Whoever held the flight before us has most likely fetched it.
        if let Some(token) = self.cached_token(host, access) {
            return Ok(token);
        }
        let auth_error = |reason: String| Error::Auth {
            registry: host.registry.clone(),
            reason,
        };
        let mut url = url::Url::parse(realm)
            .map_err(|_| auth_error(format!("bad token realm `{}`", ShownUrl::new(realm))))?;
        let credential = self.credential(host).await;
        let request = match &credential {
            Some(Credential::IdentityToken(refresh)) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("client_id", "regmirror")
                    .append_pair("refresh_token", refresh);
                if let Some(service) = service {
                    form.append_pair("service", service);
                }
                form.append_pair("scope", &access.scopes().join(" "));
                host.http
                    .post(url.clone())
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.finish())
            }
            other => {
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = service {
                        query.append_pair("service", service);
                    }
                    for scope in access.scopes() {
                        query.append_pair("scope", &scope);
                    }
                }
                let request = host.http.get(url.clone());
                match other {
                    Some(Credential::Basic { username, password }) => {
                        request.basic_auth(username, Some(password))
                    }
                    _ => request,
                }
            }
        };
        let method = if matches!(credential, Some(Credential::IdentityToken(_))) {
            Method::POST
        } else {
            Method::GET
        };
        let response = self
            .send_token_request(host, &method, realm, request)
            .await?;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            // The token service throttles like the registry (ACR's
            // `/oauth2/token`): a rate limit, not a refusal of who we are.
            let wait = super::body::retry_after(&response);
            let body = token_error_text(host, &method, realm, response).await;
            return Err(Error::RateLimited {
                registry: host.registry.clone(),
                until: wait.map(|wait| std::time::SystemTime::now() + wait),
                reason: format!(
                    "token request to `{}` answered 429: {body}",
                    ShownUrl::new(realm)
                ),
            });
        }
        if response.status() == StatusCode::BAD_REQUEST {
            // Not the credentials: the request. Docker Hub's token service
            // refuses a name of more than two components this way
            // (google/go-containerregistry#1687).
            let mut body = token_error_text(host, &method, realm, response).await;
            if body.contains("invalid repository name") {
                body.push_str(
                    " (Docker Hub takes repositories of two components, namespace/name: set `path:` on the image)",
                );
            }
            body.push_str(&format!(" (token for {})", access.scopes().join(" ")));
            return Err(Error::status(method.as_str(), realm, 400, &body));
        }
        let status = response.status().as_u16();
        if matches!(status, 401 | 403) {
            let identity = match (self.lookup(host).await, &credential) {
                (Lookup::Found(_, from), _) => format!("with the credentials from {from}"),
                (_, Some(_)) => format!("with the credentials from {ECR_LOGIN}"),
                (other, None) => format!("without credentials: {}", other.explain(&host.registry)),
            };
            let renew = match credential {
                // What `az acr login` stores: an ACR refresh token, which
                // lasts 3 hours.
                Some(Credential::IdentityToken(_)) => {
                    concat!(
                        " (an identity token, as `az acr login` stores one; they expire: log in again, `az acr login --name REGISTRY`; see ",
                        crate::troubleshooting!("acr-token-expired"),
                        ")"
                    )
                }
                _ => "",
            };
            return Err(auth_error(format!(
                "token request to `{}` answered {status} {identity}{renew}",
                ShownUrl::new(realm)
            )));
        }
        if !response.status().is_success() {
            // The token service failing (5xx after retries): not who we are.
            let body = token_error_text(host, &method, realm, response).await;
            return Err(Error::status(method.as_str(), realm, status, &body));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let length = response.content_length();
        let chunks = deadline::body(response, host.window, ())
            .map(|chunk| chunk.map_err(|fault| host.fault(&method, realm, fault, None)));
        let body = read_capped(chunks, length, realm, MAX_TOKEN_SIZE).await?;
        let body: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            auth_error(format!(
                "token response from `{}` is not JSON",
                ShownUrl::new(realm)
            ))
        })?;
        let token = body.token.or(body.access_token).ok_or_else(|| {
            auth_error(format!(
                "token response from `{}` has no token",
                ShownUrl::new(realm)
            ))
        })?;
        // The spec's default lifetime is 60 s when none is given.
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(60).max(1));
        self.tokens.put(key, token.clone(), lifetime);
        Ok(token)
    }

    /// Sends a token request, again while the answer is transient (429,
    /// 5xx, a dropped connection) as [`retry`](super::retry) decides, each
    /// attempt within the host's idle window; all of it is one request to
    /// the host's health.
    async fn send_token_request(
        &self,
        host: &Host,
        method: &Method,
        realm: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        use super::retry::{self, Attempt};
        deadline::one_request(retry::run(|| async {
            if let Some(down) = host.down() {
                return Attempt::Final(Err(down));
            }
            let attempt = request
                .try_clone()
                .expect("a token request's body is in memory");
            match deadline::send(attempt, &Watch::new(), host.window).await {
                Ok(response) => {
                    host.health.answered();
                    let status = response.status().as_u16();
                    if retry::status_is_retryable(status) {
                        let retry_after = super::body::retry_after(&response);
                        Attempt::Transient {
                            result: Ok(response),
                            retry_after,
                        }
                    } else {
                        Attempt::Final(Ok(response))
                    }
                }
                Err(fault) => {
                    let retryable = super::fault_may_pass(&fault);
                    Attempt::transient_if(retryable, Err(host.fault(method, realm, fault, None)))
                }
            }
        }))
        .await
    }
}

/// The start of a token service's error body, for a message: bounded, made
/// neutral, and without the query values of the realm asked (as every
/// registry error body is; see [`crate::text::scrubbed`]).
async fn token_error_text(
    host: &Host,
    method: &Method,
    realm: &str,
    response: reqwest::Response,
) -> String {
    let chunks = deadline::body(response, host.window, ())
        .map(|chunk| chunk.map_err(|fault| host.fault(method, realm, fault, None)));
    crate::text::scrubbed(&super::body::error_text(chunks).await, realm)
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
    fn tokens_expire() {
        let tokens = Tokens::default();
        tokens.put("a".into(), "t".into(), Duration::from_secs(300));
        assert_eq!(tokens.get("a").as_deref(), Some("t"));
        tokens.put("b".into(), "t".into(), Duration::ZERO);
        assert_eq!(tokens.get("b"), None);
        tokens.forget("a");
        assert_eq!(tokens.get("a"), None);
    }

    #[test]
    fn a_token_that_claims_to_live_forever_is_kept_a_bounded_time() {
        let tokens = Tokens::default();
        // `expires_in: 18446744073709551615` from a token service.
        tokens.put("a".into(), "t".into(), Duration::from_secs(u64::MAX));
        assert_eq!(tokens.get("a").as_deref(), Some("t"));
    }

    #[test]
    fn a_tls_registry_cannot_name_a_plain_http_realm() {
        let bearer = |realm: &str| Challenge::Bearer {
            realm: realm.to_string(),
            service: None,
        };
        let tls = "https://ghcr.io";
        assert!(checked_challenge("ghcr.io", tls, bearer("https://ghcr.io/token")).is_ok());
        assert!(checked_challenge("ghcr.io", tls, bearer("https://auth.example/t")).is_ok());
        let error = checked_challenge("ghcr.io", tls, bearer("http://ghcr.io/token")).unwrap_err();
        assert!(error.to_string().contains("plain HTTP"), "{error}");
        assert!(checked_challenge("ghcr.io", tls, bearer("file:///etc/passwd")).is_err());
        assert!(checked_challenge("ghcr.io", tls, bearer("not a url")).is_err());
        let plain = "http://127.0.0.1:5000";
        assert!(checked_challenge("x", plain, bearer("http://127.0.0.1:5001/token")).is_ok());
        assert!(checked_challenge("ghcr.io", tls, Challenge::Basic).is_ok());
    }

    #[test]
    fn scopes_for_mounts_name_both_repositories() {
        let scopes = Access::Mount {
            to: "a/b",
            from: "c/d",
        }
        .scopes();
        assert_eq!(
            scopes,
            vec!["repository:a/b:pull,push", "repository:c/d:pull"]
        );
    }
}

/// Properties over arbitrary header text (proptest): challenges come from registries.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn challenges_of_any_text_never_panic(header in "\\PC{0,200}") {
            if let Some(challenge) = parse_challenge(&header) {
                let _ = checked_challenge("r", "https://r.example", challenge);
            }
        }
    }
}
