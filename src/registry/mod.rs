//! The registry client: every request regmirror makes passes through here.
//!
//! It speaks the OCI distribution API over reqwest (oci-client 0.18 hides
//! response headers and mis-handles mounts, monolithic uploads and manifest
//! PUTs by digest, which is most of what a mirror does). Per registry host it
//! holds the limits (a semaphore of `concurrency` permits), the learned
//! authentication challenge, and credentials; bearer tokens are cached per
//! host and scope. Transient failures are retried as [`retry`] decides.

pub mod auth;
pub mod deadline;
pub mod ecr;
pub mod limits;
pub mod retry;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};

use crate::digest::{Digest, Verifier};
use crate::error::{Error, Result};
use crate::manifest::{self, Descriptor, Manifest};
use crate::reference::{Repository, valid_path_component, valid_tag};
use auth::{Challenge, Credential, Tokens};
use deadline::{Fault, Health, Watch};
use limits::{Limits, RateLimit};
use retry::Attempt;

/// Per-registry settings from `mirror.yaml` (`registries.<host>`).
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Allow plain HTTP to this registry.
    pub insecure: bool,
    /// Require TLS even on a loopback host.
    pub tls: bool,
    /// Requests in flight to this registry at once.
    pub concurrency: usize,
    /// Our own quota on metered requests (manifest GETs).
    pub rate_limit: Option<RateLimit>,
    /// Stop starting pulls when the registry says this many are left.
    pub min_remaining: Option<u64>,
    /// A PEM file of CA certificates to trust for this registry, besides
    /// the system's.
    pub ca: Option<PathBuf>,
    /// Create missing repositories through the ECR Public API before pushing.
    pub create_repositories: bool,
    /// Idle window: a request that moves less than 1 KiB in it has stalled
    /// (see [`deadline`]).
    pub timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: false,
            tls: false,
            concurrency: 8,
            rate_limit: None,
            min_remaining: None,
            ca: None,
            create_repositories: false,
            timeout: deadline::DEFAULT_WINDOW,
        }
    }
}

impl RegistryOptions {
    /// `http` or `https` for `api_host`: TLS unless allowed otherwise; a
    /// loopback host speaks plain HTTP unless it has a CA or `tls` is asked for.
    pub fn scheme(&self, api_host: &str) -> &'static str {
        let plain = self.insecure || (is_loopback(api_host) && !self.tls && self.ca.is_none());
        if plain { "http" } else { "https" }
    }
}

/// What a request needs to be allowed to do; becomes the token scope.
#[derive(Clone, Debug)]
enum Access<'a> {
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

/// The result of a cross-repository mount request.
#[derive(Debug)]
pub enum Mount {
    /// The registry linked the blob; nothing to upload.
    Mounted,
    /// The registry declined (spec: 202) and opened an upload session instead.
    Declined { upload_url: String },
}

/// One registry host: its limits and what we learned about its auth.
struct Host {
    /// The registry name as written (`docker.io`): the key for credentials.
    registry: String,
    /// `https://host` or `http://host`.
    base: String,
    /// Every request to this host holds one permit while it runs and while
    /// its body is read; callers never hold one while waiting on another
    /// request, so there is no wait cycle.
    permits: Arc<Semaphore>,
    /// Our quota and the registry's remaining budget.
    limits: Limits,
    /// The HTTP client for this host (its own when it has its own CA).
    http: reqwest::Client,
    /// Learned once from `GET /v2/`, replaced if a later 401 says otherwise.
    /// An async lock: the first requests to a host wait for one ping
    /// instead of each sending their own.
    challenge: tokio::sync::Mutex<Option<Challenge>>,
    /// Looked up once per run (credential helpers are slow programs).
    credential: OnceCell<Option<Credential>>,
    /// Whether the registry serves the OCI referrers API, once asked.
    referrers_api: tokio::sync::Mutex<Option<bool>>,
    /// The idle window of every request and body (`timeout`).
    window: Duration,
    /// Stalls in a row; down for the run after too many.
    health: Health,
}

impl Host {
    /// The error for a request to this host that failed in transport,
    /// counted against the host's health: stalls and failed connects mark
    /// it down after a few in a row.
    fn fault(&self, method: &Method, url: &str, fault: Fault) -> Error {
        let (error, counts) = match fault {
            Fault::Stalled => (
                Error::Stalled {
                    method: method.to_string(),
                    url: url.to_string(),
                    window: self.window,
                },
                true,
            ),
            Fault::Transport(source) if is_certificate_error(&source) => {
                let error = Error::Tls {
                    registry: self.registry.clone(),
                    url: url.to_string(),
                    source,
                };
                (error, false)
            }
            Fault::Transport(source) => {
                let counts = source.is_connect() || source.is_timeout();
                let error = Error::Transport {
                    method: method.to_string(),
                    url: url.to_string(),
                    source,
                };
                (error, counts)
            }
        };
        if counts && self.health.stalled(&cause_of(&error)) {
            tracing::warn!(
                "{}: marked down for this run after {} stalled or refused requests in a row; its remaining work fails at once",
                self.registry,
                deadline::MAX_STALLS
            );
        }
        error
    }

    /// The error every request gets once the host is down.
    fn down(&self) -> Option<Error> {
        self.health.down().map(|reason| Error::Down {
            registry: self.registry.clone(),
            reason,
        })
    }

    /// True when `url` is on this registry's own origin (scheme, host and
    /// port): the only place its credentials are sent.
    fn owns(&self, url: &str) -> bool {
        origin(url).is_some_and(|o| Some(o) == origin(&self.base))
    }

    /// A challenge this registry's own answer stated, checked.
    fn checked(&self, challenge: Challenge) -> Result<Challenge> {
        checked_challenge(&self.registry, &self.base, challenge)
    }
}

/// A bearer realm must be an http(s) URL, and not plain HTTP when the
/// registry itself (at `base`) speaks TLS: the password would travel in the
/// clear.
fn checked_challenge(registry: &str, base: &str, challenge: Challenge) -> Result<Challenge> {
    if let Challenge::Bearer { realm, .. } = &challenge {
        let refuse = |reason: &str| Error::Auth {
            registry: registry.to_string(),
            reason: format!("token realm `{}` {reason}", neutral(realm)),
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

/// The builder of a request: headers and body, given the watch its body
/// reports progress to (only streamed uploads use it).
type Build<'a> = &'a (dyn Fn(RequestBuilder, &Arc<Watch>) -> RequestBuilder + Sync);

/// A response together with the host permit it was made under; its body
/// is read within the host's idle deadline.
struct Answer {
    response: Response,
    permit: OwnedSemaphorePermit,
    host: Arc<Host>,
    method: Method,
    url: String,
}

impl Answer {
    /// The body, chunk by chunk, each within the idle deadline; the permit
    /// is held until the stream is dropped.
    fn chunks(self) -> impl futures::Stream<Item = Result<Bytes>> + Send {
        let Answer {
            response,
            permit,
            host,
            method,
            url,
        } = self;
        deadline::body(response, host.window, permit)
            .map(move |chunk| chunk.map_err(|fault| host.fault(&method, &url, fault)))
    }

    /// The body whole, refused past `limit` bytes.
    async fn capped(self, limit: u64) -> Result<Bytes> {
        let (length, url) = (self.response.content_length(), self.url.clone());
        read_capped(self.chunks(), length, &url, limit).await
    }

    /// The start of an error body, for a message: see [`error_text`].
    async fn error_text(self) -> String {
        error_text(self.chunks()).await
    }
}

/// The registry client. Cheap to share behind an `Arc`.
pub struct RegistryClient {
    http: reqwest::Client,
    /// Clients for registries with their own CA, by registry as written.
    own_ca: HashMap<String, reqwest::Client>,
    options: HashMap<String, RegistryOptions>,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    tokens: Tokens,
    /// Send no credentials (`verify --anonymous`).
    anonymous: bool,
    /// ECR Public repositories created this run.
    ecr: ecr::Repositories,
}

/// True for hosts where plain HTTP is acceptable without asking: the
/// literal loopback addresses (`127.0.0.0/8`, `[::1]`) and `localhost`. A
/// name that merely starts with `127.` (`127.evil.example`) is not one.
pub fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .map(|(address, _)| address)
            .unwrap_or(rest),
        None => host.split_once(':').map(|(name, _)| name).unwrap_or(host),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// `scheme://host:port` of a URL, the unit credentials are bound to.
fn origin(url: &str) -> Option<url::Origin> {
    url::Url::parse(url).ok().map(|u| u.origin())
}

/// `next` (a `Link` or `Location` target, perhaps relative) resolved against
/// the URL it came with; an `https` → `http` step is refused, since what
/// travels next (a tag list's position, an upload) would go in the clear.
fn resolve_link(current: &str, next: &str, what: &str) -> Result<String> {
    let bad = |reason: &str| Error::Limit {
        what: format!("{what} `{}`", neutral(next)),
        reason: reason.to_string(),
    };
    let base = url::Url::parse(current).map_err(|_| bad("the request URL does not parse"))?;
    let resolved = base.join(next).map_err(|_| bad("not a URL"))?;
    match (base.scheme(), resolved.scheme()) {
        ("https", "https") | ("http", "http") | ("http", "https") => Ok(resolved.into()),
        ("https", "http") => Err(bad("refusing to go from https to plain http")),
        _ => Err(bad("not an http or https URL")),
    }
}

/// Most pages of a tag list we follow (1,000 tags each).
pub const MAX_TAG_PAGES: usize = 1000;

/// The target of `rel="next"` in a `Link` header:
/// `</v2/x/tags/list?n=2&last=b>; rel="next"`.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_string())
    })
}

/// Largest JSON body other than a manifest we read (a tag-list page, a
/// referrers list): 4 MiB, as for manifests.
pub const MAX_JSON_SIZE: u64 = manifest::MAX_MANIFEST_SIZE;

/// Largest token response we read.
const MAX_TOKEN_SIZE: u64 = 64 * 1024;

/// How much of an error body we read, and keep in the message.
const MAX_ERROR_BODY: usize = 300;

/// `4 MiB`, `64 KiB`, `100 bytes`.
fn size_text(bytes: u64) -> String {
    match bytes {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// A body read whole into memory (a manifest, a tag-list page, a referrers
/// list, a token), refused once it passes `limit` bytes, whether or not the
/// registry said its length up front.
async fn read_capped(
    chunks: impl futures::Stream<Item = Result<Bytes>>,
    length: Option<u64>,
    url: &str,
    limit: u64,
) -> Result<Bytes> {
    let too_large = || Error::Limit {
        what: url.to_string(),
        reason: format!("larger than {}; refusing to read it", size_text(limit)),
    };
    if length.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    let mut chunks = std::pin::pin!(chunks);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn retry_after(response: &Response) -> Option<Duration> {
    header(response, RETRY_AFTER.as_str())
        .and_then(|v| retry::parse_retry_after(v, SystemTime::now()))
}

/// Text from a registry made safe to print: one line (control characters
/// shown escaped), so it can never start a line of its own, and so never a
/// GitHub Actions workflow command (`::…`).
pub fn neutral(text: &str) -> String {
    text.chars()
        .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
            if c.is_control() {
                Box::new(c.escape_default())
            } else {
                Box::new(std::iter::once(c))
            }
        })
        .collect()
}

/// The start of an error body, for the message: at most
/// [`MAX_ERROR_BODY`] characters read (a registry can send gigabytes),
/// made [`neutral`].
async fn error_text(chunks: impl futures::Stream<Item = Result<Bytes>>) -> String {
    let mut bytes = Vec::new();
    let mut chunks = std::pin::pin!(chunks);
    while let Some(Ok(chunk)) = chunks.next().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_ERROR_BODY * 4 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut text: String = text.trim().chars().take(MAX_ERROR_BODY).collect();
    if text.chars().count() == MAX_ERROR_BODY {
        text.push('…');
    }
    neutral(&text)
}

/// The HTTP client: redirects followed (blob GETs land on storage), no
/// proxy from the environment, and `ca` trusted besides the system's roots.
fn http_client(ca: Option<&Path>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("regmirror/", env!("CARGO_PKG_VERSION")))
        // No read timeout: reqwest's would cover a whole upload body. Each
        // request's idle deadline is `deadline`'s.
        .connect_timeout(Duration::from_secs(30))
        .redirect(redirect_policy())
        .no_proxy();
    if let Some(path) = ca {
        let ca_error = |reason: String| Error::Ca {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ca_error(format!("not a PEM certificate bundle ({e})")))?;
        if certificates.is_empty() {
            return Err(ca_error("holds no PEM certificate".into()));
        }
        builder = builder.tls_certs_merge(certificates);
    }
    builder.build().map_err(|source| match ca {
        Some(path) => Error::Ca {
            path: path.display().to_string(),
            reason: format!("cannot be used ({source})"),
        },
        None => Error::Transport {
            method: "build".into(),
            url: "client".into(),
            source,
        },
    })
}

/// Redirects (blob GETs land on storage, often another host) are followed
/// up to 10 times, never from `https` to `http`. reqwest itself drops
/// `Authorization` when a redirect leaves the host, so credentials stay
/// with their registry.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|url| url.scheme() == "https");
        if downgrade {
            let error = format!(
                "refusing a redirect from https to plain http (`{}`)",
                neutral(attempt.url().as_str())
            );
            attempt.error(error)
        } else if attempt.previous().len() > 10 {
            attempt.error("more than 10 redirects")
        } else {
            attempt.follow()
        }
    })
}

/// An error and its innermost cause, on one line (`… failed: connection refused`).
fn cause_of(error: &Error) -> String {
    let mut innermost: &dyn std::error::Error = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    if std::ptr::addr_eq(innermost, error as &dyn std::error::Error) {
        error.to_string()
    } else {
        format!("{error}: {innermost}")
    }
}

/// True when a transport error is a certificate that did not verify.
fn is_certificate_error(error: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.to_string().to_ascii_lowercase().contains("certificate") {
            return true;
        }
        cause = e.source();
    }
    false
}

impl RegistryClient {
    /// A client with per-registry `options` (keyed by registry as written).
    pub fn new(options: HashMap<String, RegistryOptions>) -> Result<Self> {
        let http = http_client(None)?;
        let mut own_ca = HashMap::new();
        for (registry, options) in &options {
            if let Some(ca) = &options.ca {
                own_ca.insert(registry.clone(), http_client(Some(ca))?);
            }
        }
        Ok(RegistryClient {
            http,
            own_ca,
            options,
            hosts: Mutex::new(HashMap::new()),
            tokens: Tokens::default(),
            anonymous: false,
            ecr: ecr::Repositories::default(),
        })
    }

    /// A client that never sends credentials: what anyone pulling sees.
    pub fn anonymous(options: HashMap<String, RegistryOptions>) -> Result<Self> {
        Ok(RegistryClient {
            anonymous: true,
            ..RegistryClient::new(options)?
        })
    }

    /// True for a client that sends no credentials.
    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    /// Before the first write to `repository`: creates it where the
    /// registry needs that (`create_repositories`, ECR Public).
    pub async fn prepare_push(&self, repository: &Repository) -> Result<()> {
        let create = self
            .options
            .get(&repository.registry)
            .is_some_and(|o| o.create_repositories);
        if create {
            self.ecr.ensure(repository).await?;
        }
        Ok(())
    }

    fn host(&self, repository: &Repository) -> Arc<Host> {
        let api_host = repository.api_host();
        let mut hosts = self.hosts.lock().expect("hosts lock poisoned");
        hosts
            .entry(api_host.to_string())
            .or_insert_with(|| {
                let options = self
                    .options
                    .get(&repository.registry)
                    .cloned()
                    .unwrap_or_default();
                let scheme = options.scheme(api_host);
                Arc::new(Host {
                    registry: repository.registry.clone(),
                    base: format!("{scheme}://{api_host}"),
                    permits: Arc::new(Semaphore::new(options.concurrency.max(1))),
                    limits: Limits::new(options.rate_limit, options.min_remaining),
                    http: self
                        .own_ca
                        .get(&repository.registry)
                        .unwrap_or(&self.http)
                        .clone(),
                    challenge: tokio::sync::Mutex::new(None),
                    credential: OnceCell::new(),
                    referrers_api: tokio::sync::Mutex::new(None),
                    window: options.timeout,
                    health: Health::default(),
                })
            })
            .clone()
    }

    async fn credential(&self, host: &Host) -> Option<Credential> {
        if self.anonymous {
            return None;
        }
        host.credential
            .get_or_init(|| async {
                let registry = host.registry.clone();
                tokio::task::spawn_blocking(move || auth::lookup(&registry))
                    .await
                    .ok()
                    .flatten()
            })
            .await
            .clone()
    }

    /// Learns how `host` wants us to authenticate, by asking `/v2/` once.
    async fn challenge(&self, host: &Arc<Host>) -> Result<Challenge> {
        let mut learned = host.challenge.lock().await;
        if let Some(challenge) = learned.clone() {
            return Ok(challenge);
        }
        let url = format!("{}/v2/", host.base);
        let response = self
            .attempt_loop(host, Method::GET, &url, None, &|r, _| r, true)
            .await?
            .response;
        let challenge = match response.status() {
            // A challenge counts only from the registry itself, not from a
            // host its `/v2/` redirected us to.
            StatusCode::UNAUTHORIZED if host.owns(response.url().as_str()) => {
                let challenge = header(&response, WWW_AUTHENTICATE.as_str())
                    .and_then(auth::parse_challenge)
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
                        neutral(response.url().as_str())
                    ),
                });
            }
            _ => Challenge::Anonymous,
        };
        *learned = Some(challenge.clone());
        Ok(challenge)
    }

    /// The `Authorization` header for `access` at `host`, if any is needed.
    async fn authorization(&self, host: &Arc<Host>, access: &Access<'_>) -> Result<Option<String>> {
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

    fn token_key(host: &Host, access: &Access<'_>) -> String {
        format!("{} {}", host.base, access.scopes().join(" "))
    }

    /// A bearer token for `access`, from the cache or from `realm`.
    async fn token(
        &self,
        host: &Host,
        realm: &str,
        service: Option<&str>,
        access: &Access<'_>,
    ) -> Result<String> {
        let key = Self::token_key(host, access);
        if let Some(token) = self.tokens.get(&key) {
            return Ok(token);
        }
        let auth_error = |reason: String| Error::Auth {
            registry: host.registry.clone(),
            reason,
        };
        let mut url =
            url::Url::parse(realm).map_err(|_| auth_error(format!("bad token realm `{realm}`")))?;
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
        if let Some(down) = host.down() {
            return Err(down);
        }
        let response = deadline::send(request, &Watch::new(), host.window)
            .await
            .map_err(|fault| host.fault(&method, realm, fault))?;
        host.health.answered();
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let identity = if credential.is_some() {
                "with the configured credentials"
            } else {
                "anonymously (no credentials found)"
            };
            return Err(auth_error(format!(
                "token request to `{realm}` {identity} answered {status}"
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let length = response.content_length();
        let chunks = deadline::body(response, host.window, ())
            .map(|chunk| chunk.map_err(|fault| host.fault(&method, realm, fault)));
        let body = read_capped(chunks, length, realm, MAX_TOKEN_SIZE).await?;
        let body: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| auth_error(format!("token response from `{realm}` is not JSON")))?;
        let token = body
            .token
            .or(body.access_token)
            .ok_or_else(|| auth_error(format!("token response from `{realm}` has no token")))?;
        // The spec's default lifetime is 60 s when none is given.
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(60).max(1));
        self.tokens.put(key, token.clone(), lifetime);
        Ok(token)
    }

    /// Sends one request, retrying transient failures when `idempotent`
    /// (as [`retry`] decides), each attempt within the host's idle deadline.
    /// Waits for a host permit only once the auth header is known, so a
    /// token fetch never waits behind the requests it is meant to enable.
    /// Notes the rate-limit budget of every answer; a 429 that retrying did
    /// not cure becomes [`Error::RateLimited`]. A host marked down fails at
    /// once.
    async fn attempt_loop(
        &self,
        host: &Arc<Host>,
        method: Method,
        url: &str,
        authorization: Option<&str>,
        build: Build<'_>,
        idempotent: bool,
    ) -> Result<Answer> {
        let answer = retry::run(|| {
            let method = method.clone();
            async move {
                if let Some(down) = host.down() {
                    return Attempt::Final(Err(down));
                }
                let mut request = host.http.request(method.clone(), url);
                if let Some(value) = authorization {
                    request = request.header(AUTHORIZATION, value);
                }
                let watch = Watch::new();
                let request = build(request, &watch);
                let permit = host
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("host semaphore is never closed");
                match deadline::send(request, &watch, host.window).await {
                    Ok(response) => {
                        host.health.answered();
                        host.limits.observe(response.headers());
                        let status = response.status().as_u16();
                        let retry_after = retry_after(&response);
                        let result = Ok(Answer {
                            response,
                            permit,
                            host: host.clone(),
                            method: method.clone(),
                            url: url.to_string(),
                        });
                        if idempotent && retry::status_is_retryable(status) {
                            tracing::debug!(%url, status, "transient status");
                            Attempt::Transient {
                                result,
                                retry_after,
                            }
                        } else {
                            Attempt::Final(result)
                        }
                    }
                    Err(fault) => {
                        let retryable = idempotent
                            && match &fault {
                                Fault::Stalled => true,
                                Fault::Transport(source) => {
                                    !is_certificate_error(source)
                                        && retry::transport_is_retryable(source)
                                }
                            };
                        let error = host.fault(&method, url, fault);
                        tracing::debug!(%url, %error, retryable, "transport failure");
                        if retryable {
                            Attempt::Transient {
                                result: Err(error),
                                retry_after: None,
                            }
                        } else {
                            Attempt::Final(Err(error))
                        }
                    }
                }
            }
        })
        .await?;
        if answer.response.status() == StatusCode::TOO_MANY_REQUESTS {
            let until = retry_after(&answer.response).map(|wait| SystemTime::now() + wait);
            let body = answer.error_text().await;
            return Err(Error::RateLimited {
                registry: host.registry.clone(),
                until,
                reason: format!("`{method} {url}` answered 429: {body}"),
            });
        }
        Ok(answer)
    }

    /// Sends an authenticated request; on a 401 it refreshes the token (or
    /// learns the challenge again) and tries once more.
    async fn send(
        &self,
        repository: &Repository,
        access: Access<'_>,
        method: Method,
        url: &str,
        build: Build<'_>,
        idempotent: bool,
    ) -> Result<Answer> {
        let host = self.host(repository);
        // Credentials go to the registry's own origin only: a `Link` or a
        // `Location` naming another host is followed without them.
        let own = host.owns(url);
        let mut refreshed = false;
        loop {
            let authorization = if own {
                self.authorization(&host, &access).await?
            } else {
                None
            };
            let answer = self
                .attempt_loop(
                    &host,
                    method.clone(),
                    url,
                    authorization.as_deref(),
                    build,
                    idempotent,
                )
                .await?;
            if answer.response.status() != StatusCode::UNAUTHORIZED {
                return Ok(answer);
            }
            // A 401 from anywhere but the registry itself (another origin we
            // were sent to, or redirected to) teaches nothing and gets nothing.
            let answered_by = answer.response.url().to_string();
            if !own || !host.owns(&answered_by) {
                return Err(Error::Auth {
                    registry: host.registry.clone(),
                    reason: format!(
                        "`{method} {url}` was answered 401 by `{}`, another host than the registry; credentials are not sent there",
                        neutral(&answered_by)
                    ),
                });
            }
            if refreshed {
                let identity = if self.credential(&host).await.is_some() {
                    "the configured credentials were refused"
                } else {
                    "no credentials found"
                };
                return Err(Error::Auth {
                    registry: host.registry.clone(),
                    reason: format!("`{method} {url}` answered 401: {identity}"),
                });
            }
            refreshed = true;
            self.tokens.forget(&Self::token_key(&host, &access));
            if let Some(challenge) =
                header(&answer.response, WWW_AUTHENTICATE.as_str()).and_then(auth::parse_challenge)
            {
                *host.challenge.lock().await = Some(host.checked(challenge)?);
            }
        }
    }

    /// `BASE/v2/<repository>/<segments…>?<query>`, built by path segments.
    /// Every segment must be one the API has: a repository path component
    /// (the spec's grammar), an endpoint word, a tag or a digest. Anything
    /// that could move the request elsewhere (`..`, `%2f`, `?`, `#`) is
    /// refused here, whatever let it through before.
    fn url(
        &self,
        repository: &Repository,
        tail: &[&str],
        query: &[(&str, &str)],
    ) -> Result<String> {
        let refuse = |reason: &str| Error::Reference {
            input: format!("{repository}/{}", neutral(&tail.join("/"))),
            reason: reason.to_string(),
        };
        if !repository.path.split('/').all(valid_path_component) {
            return Err(refuse(
                "not a repository path of the distribution spec's grammar",
            ));
        }
        let last = tail.len().saturating_sub(1);
        for (i, segment) in tail.iter().enumerate() {
            // `blobs/uploads/` ends in an empty segment (the trailing slash).
            let trailing_slash = i == last && segment.is_empty();
            if !(trailing_slash || valid_tag(segment) || segment.parse::<Digest>().is_ok()) {
                return Err(refuse("not a tag or digest"));
            }
        }
        let mut url = url::Url::parse(&self.host(repository).base)
            .map_err(|_| refuse("the registry host does not make a URL"))?;
        url.path_segments_mut()
            .map_err(|_| refuse("the registry host does not make a URL"))?
            .clear()
            .push("v2")
            .extend(repository.path.split('/'))
            .extend(tail);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url.into())
    }

    fn status_error(method: &str, url: &str, status: StatusCode, body: String) -> Error {
        Error::Status {
            method: method.to_string(),
            url: url.to_string(),
            status: status.as_u16(),
            body,
        }
    }

    /// A pull-scoped GET or HEAD, its answer sorted: `Some` for 200, `None`
    /// for 404, an error naming the request (and, for a GET, the registry's
    /// error body) for any other status.
    async fn pull(
        &self,
        repository: &Repository,
        method: Method,
        url: &str,
        build: Build<'_>,
    ) -> Result<Option<Answer>> {
        let answer = self
            .send(
                repository,
                Access::Pull(&repository.path),
                method.clone(),
                url,
                build,
                true,
            )
            .await?;
        match answer.response.status() {
            StatusCode::OK => Ok(Some(answer)),
            StatusCode::NOT_FOUND => Ok(None),
            status => {
                let body = if method == Method::HEAD {
                    String::new()
                } else {
                    answer.error_text().await
                };
                Err(Self::status_error(method.as_str(), url, status, body))
            }
        }
    }

    /// The digest `reference` (tag or digest) resolves to, or `None` if absent.
    /// A HEAD: Docker Hub does not count it as a pull.
    pub async fn head_manifest(
        &self,
        repository: &Repository,
        reference: &str,
    ) -> Result<Option<Digest>> {
        let url = self.url(repository, &["manifests", reference], &[])?;
        let accept = |r: RequestBuilder, _: &Arc<Watch>| r.header(ACCEPT, manifest::ACCEPT);
        let Some(answer) = self.pull(repository, Method::HEAD, &url, &accept).await? else {
            return Ok(None);
        };
        let stated = header(&answer.response, "docker-content-digest")
            .and_then(|d| d.parse::<Digest>().ok());
        // Give back the host permit first: the fallback GET needs one.
        drop(answer);
        match stated {
            Some(digest) => Ok(Some(digest)),
            // A registry that omits the header: the bytes must tell us.
            None => Ok(Some(
                self.get_manifest(repository, reference, None).await?.digest,
            )),
        }
    }

    /// Every tag of `repository`, following the spec's pagination (`n`, and
    /// the `Link: <…>; rel="next"` header). Capped at [`MAX_TAG_PAGES`] pages
    /// so a registry that keeps linking cannot keep us forever.
    pub async fn list_tags(&self, repository: &Repository) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(repository, &["tags", "list"], &[("n", "1000")])?;
        let mut tags = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let answer = self
                .pull(repository, Method::GET, &url, &|r, _| r)
                .await?
                .ok_or_else(|| Error::NotFound {
                    what: repository.to_string(),
                })?;
            let next = header(&answer.response, "link").and_then(next_link);
            let body = answer.capped(MAX_JSON_SIZE).await?;
            let page: TagList = serde_json::from_slice(&body).map_err(|e| Error::Manifest {
                what: url.clone(),
                reason: format!("the tag list is not JSON ({e})"),
            })?;
            // Tags become URL segments and destinations: only the spec's
            // grammar passes (no `..`, `%2f`, `?`, `#`).
            for tag in page.tags.unwrap_or_default() {
                if valid_tag(&tag) {
                    tags.push(tag);
                } else {
                    tracing::warn!(
                        "{repository}: skipping tag {:?}: not a valid tag (`[A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}`)",
                        neutral(&tag)
                    );
                }
            }
            match next {
                // Another origin gets no credentials: `send` only attaches
                // them to the registry's own.
                Some(next) => url = resolve_link(&url, &next, "tag list `Link`")?,
                None => return Ok(tags),
            }
        }
        Err(Error::Limit {
            what: format!("{repository} tags"),
            reason: format!("more than {MAX_TAG_PAGES} pages of tags; refusing to follow more"),
        })
    }

    /// What refers to `digest` (signatures, SBOMs, attestations), by the
    /// OCI referrers API: each entry as the registry lists it. `None` when
    /// the registry has no such API (distribution 2.8 and GHCR answer 404);
    /// that is remembered for the host, so it is asked once per run.
    pub async fn referrers(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<Option<Vec<serde_json::Value>>> {
        let host = self.host(repository);
        // The first call per host holds the lock while it finds out, so
        // concurrent jobs ask a registry without the API once, not N times.
        let mut probing = {
            let known = host.referrers_api.lock().await;
            match *known {
                Some(false) => return Ok(None),
                Some(true) => None,
                None => Some(known),
            }
        };
        let url = self.url(repository, &["referrers", digest.as_str()], &[])?;
        let accept = |r: RequestBuilder, _: &Arc<Watch>| r.header(ACCEPT, manifest::OCI_INDEX);
        let answer = match self.pull(repository, Method::GET, &url, &accept).await {
            Ok(answer) => answer,
            // Registries without the API say so in different ways.
            Err(Error::Status { status, .. }) if [400, 405, 406, 501].contains(&status) => None,
            Err(error) => return Err(error),
        };
        if let Some(known) = probing.as_mut() {
            **known = Some(answer.is_some());
        }
        drop(probing);
        let Some(answer) = answer else {
            return Ok(None);
        };
        let body = answer.capped(MAX_JSON_SIZE).await?;
        let index: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Error::Manifest {
                what: url.clone(),
                reason: format!("the referrers list is not JSON ({e})"),
            })?;
        Ok(Some(
            index["manifests"].as_array().cloned().unwrap_or_default(),
        ))
    }

    /// Fetches a manifest's exact bytes and checks them against `expected`
    /// (or the digest in the reference, or the registry's
    /// `Docker-Content-Digest`).
    pub async fn get_manifest(
        &self,
        repository: &Repository,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Manifest> {
        let url = self.url(repository, &["manifests", reference], &[])?;
        // The one metered request (Docker Hub counts manifest GETs as pulls).
        self.host(repository)
            .limits
            .before_pull(&repository.registry)
            .await?;
        let accept = |r: RequestBuilder, _: &Arc<Watch>| r.header(ACCEPT, manifest::ACCEPT);
        let answer = self
            .pull(repository, Method::GET, &url, &accept)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("{repository}:{reference}"),
            })?;
        let content_type = header(&answer.response, CONTENT_TYPE.as_str()).map(str::to_string);
        let claimed = header(&answer.response, "docker-content-digest")
            .and_then(|d| d.parse::<Digest>().ok());
        let body = answer.capped(manifest::MAX_MANIFEST_SIZE).await?;
        let digest = expected
            .cloned()
            .or_else(|| reference.parse::<Digest>().ok())
            .or(claimed)
            .unwrap_or_else(|| Digest::sha256(&body));
        Manifest::parse(body, &digest, content_type.as_deref())
    }

    /// Pushes a manifest's exact bytes under `reference` (a tag or its digest).
    pub async fn put_manifest(
        &self,
        repository: &Repository,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<()> {
        let url = self.url(repository, &["manifests", reference], &[])?;
        let bytes = manifest.bytes.clone();
        let media_type = manifest.media_type.clone();
        let build = move |r: RequestBuilder, _: &Arc<Watch>| {
            r.header(CONTENT_TYPE, media_type.as_str())
                .body(bytes.clone())
        };
        let answer = self
            .send(
                repository,
                Access::Push(&repository.path),
                Method::PUT,
                &url,
                &build,
                true,
            )
            .await?;
        if !answer.response.status().is_success() {
            let status = answer.response.status();
            return Err(Self::status_error(
                "PUT",
                &url,
                status,
                answer.error_text().await,
            ));
        }
        if let Some(Ok(stored)) =
            header(&answer.response, "docker-content-digest").map(str::parse::<Digest>)
            && stored != manifest.digest
        {
            return Err(Error::DigestMismatch {
                what: format!("manifest stored at {repository}"),
                expected: manifest.digest.clone(),
                actual: stored,
            });
        }
        Ok(())
    }

    /// True when the repository has the blob (a HEAD).
    pub async fn blob_exists(&self, repository: &Repository, digest: &Digest) -> Result<bool> {
        let url = self.url(repository, &["blobs", digest.as_str()], &[])?;
        Ok(self
            .pull(repository, Method::HEAD, &url, &|r, _| r)
            .await?
            .is_some())
    }

    /// A blob's bytes as they arrive (each chunk within the idle deadline),
    /// or `None` if the repository does not have it. The caller checks them.
    pub async fn get_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<Option<impl futures::Stream<Item = Result<Bytes>> + Send + use<>>> {
        let url = self.url(repository, &["blobs", digest.as_str()], &[])?;
        Ok(self
            .pull(repository, Method::GET, &url, &|r, _| r)
            .await?
            .map(Answer::chunks))
    }

    /// Streams a blob into `path`, checking digest and size as it goes.
    /// Retries from the start on a broken transfer.
    pub async fn download_blob(
        &self,
        repository: &Repository,
        blob: &Descriptor,
        path: &Path,
    ) -> Result<()> {
        let url = self.url(repository, &["blobs", blob.digest.as_str()], &[])?;
        retry::run(|| async {
            let result = self.download_once(repository, blob, &url, path).await;
            match &result {
                Err(Error::Transport { source, .. }) if retry::transport_is_retryable(source) => {
                    tracing::debug!(%url, error = %source, "blob download broke");
                    Attempt::Transient {
                        result,
                        retry_after: None,
                    }
                }
                Err(Error::Stalled { .. }) => {
                    tracing::debug!(%url, "blob download stalled");
                    Attempt::Transient {
                        result,
                        retry_after: None,
                    }
                }
                _ => Attempt::Final(result),
            }
        })
        .await
    }

    async fn download_once(
        &self,
        repository: &Repository,
        blob: &Descriptor,
        url: &str,
        path: &Path,
    ) -> Result<()> {
        let answer = self
            .pull(repository, Method::GET, url, &|r, _| r)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("{repository}@{}", blob.digest),
            })?;
        let file = crate::spool::create_file(path).await?;
        let mut writer = tokio::io::BufWriter::with_capacity(256 * 1024, file);
        let mut verifier = Verifier::new(blob.digest.clone(), Some(blob.size));
        let mut chunks = std::pin::pin!(answer.chunks());
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            verifier.update(&chunk);
            if verifier.overrun() {
                break;
            }
            writer
                .write_all(&chunk)
                .await
                .map_err(|e| crate::spool::write_error(path, e))?;
        }
        writer
            .flush()
            .await
            .map_err(|e| crate::spool::write_error(path, e))?;
        verifier.finish(&format!("blob {} from {repository}", blob.digest))
    }

    /// Asks the registry to link `digest` from `from` (same registry) into `repository`.
    pub async fn mount_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        from: &str,
    ) -> Result<Mount> {
        let url = self.url(
            repository,
            &["blobs", "uploads", ""],
            &[("mount", digest.as_str()), ("from", from)],
        )?;
        let access = Access::Mount {
            to: &repository.path,
            from,
        };
        let answer = self
            .send(
                repository,
                access,
                Method::POST,
                &url,
                &|r, _| r.header(CONTENT_LENGTH, 0),
                true,
            )
            .await?;
        match answer.response.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Declined {
                upload_url: Self::location(&answer.response, &url)?,
            }),
            status => Err(Self::status_error(
                "POST",
                &url,
                status,
                answer.error_text().await,
            )),
        }
    }

    /// An upload session's URL from `Location`, relative ones (GHCR)
    /// resolved against the request. Another origin is followed without
    /// credentials (see `send`); `https` → `http` is refused.
    fn location(response: &Response, url: &str) -> Result<String> {
        let location = header(response, LOCATION.as_str()).ok_or_else(|| {
            Self::status_error(
                "POST",
                url,
                response.status(),
                "no `Location` header".into(),
            )
        })?;
        resolve_link(url, location, "upload `Location`")
    }

    /// Uploads the blob in `path` with one monolithic PUT (GHCR and ECR break
    /// on chunked PATCH uploads). `session` is an upload URL already opened
    /// (a declined mount). Retries the whole upload on transient failures.
    pub async fn upload_blob(
        &self,
        repository: &Repository,
        blob: &Descriptor,
        path: &Path,
        session: Option<String>,
    ) -> Result<()> {
        let session = Mutex::new(session);
        retry::run(|| async {
            let session = session.lock().expect("session lock poisoned").take();
            let result = self.upload_once(repository, blob, path, session).await;
            // The PUT is sent once per attempt (its body is a stream), so its
            // failures are retried here, with a new upload session; the POST
            // that opens a session was already retried where it was sent.
            let retryable = match &result {
                Err(Error::Transport { method, source, .. }) => {
                    method == "PUT" && retry::transport_is_retryable(source)
                }
                Err(Error::Status { method, status, .. }) => {
                    method == "PUT" && retry::status_is_retryable(*status)
                }
                _ => false,
            };
            if retryable {
                tracing::debug!(repository = %repository, digest = %blob.digest, "upload failed; retrying from the spool");
                Attempt::Transient {
                    result,
                    retry_after: None,
                }
            } else {
                Attempt::Final(result)
            }
        })
        .await
    }

    async fn upload_once(
        &self,
        repository: &Repository,
        blob: &Descriptor,
        path: &Path,
        session: Option<String>,
    ) -> Result<()> {
        let upload_url = match session {
            Some(url) => url,
            None => {
                let url = self.url(repository, &["blobs", "uploads", ""], &[])?;
                let answer = self
                    .send(
                        repository,
                        Access::Push(&repository.path),
                        Method::POST,
                        &url,
                        &|r, _| r.header(CONTENT_LENGTH, 0),
                        true,
                    )
                    .await?;
                if answer.response.status() != StatusCode::ACCEPTED {
                    let status = answer.response.status();
                    return Err(Self::status_error(
                        "POST",
                        &url,
                        status,
                        answer.error_text().await,
                    ));
                }
                Self::location(&answer.response, &url)?
            }
        };
        let on_disk = tokio::fs::metadata(path)
            .await
            .map_err(|e| Error::io(format!("spool file for `{}`", blob.digest), e))?
            .len();
        if on_disk != blob.size {
            return Err(Error::SizeMismatch {
                digest: blob.digest.clone(),
                expected: blob.size,
                actual: on_disk,
            });
        }
        let mut url = url::Url::parse(&upload_url).map_err(|_| Error::Limit {
            what: format!("upload `Location` `{}`", neutral(&upload_url)),
            reason: "not a URL".into(),
        })?;
        url.query_pairs_mut()
            .append_pair("digest", blob.digest.as_str());
        let url = url.to_string();
        let path = path.to_path_buf();
        let size = blob.size;
        let build = move |r: RequestBuilder, watch: &Arc<Watch>| {
            // Opened per attempt; `send` builds the request once (not idempotent).
            // The body reports its progress: a target that stops reading
            // stalls the upload, a slow one that keeps reading never does.
            let body = match std::fs::File::open(&path) {
                Ok(file) => reqwest::Body::wrap_stream(watch.body(
                    tokio_util::io::ReaderStream::with_capacity(
                        tokio::fs::File::from_std(file),
                        256 * 1024,
                    ),
                )),
                // Never an empty body standing in for the blob: the request fails.
                Err(error) => reqwest::Body::wrap_stream(futures::stream::once(async move {
                    Err::<Bytes, _>(error)
                })),
            };
            r.header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, size)
                .body(body)
        };
        let answer = self
            .send(
                repository,
                Access::Push(&repository.path),
                Method::PUT,
                &url,
                &build,
                false,
            )
            .await?;
        if answer.response.status() != StatusCode::CREATED {
            let status = answer.response.status();
            return Err(Self::status_error(
                "PUT",
                &upload_url,
                status,
                answer.error_text().await,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "ghcr.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "127.evil.example",
            "127.0.0.1.nip.io:5000",
            "[::2]:5000",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn links_resolve_against_their_request_and_never_downgrade() {
        let current = "https://r.example/v2/a/tags/list?n=2";
        assert_eq!(
            resolve_link(current, "/v2/a/tags/list?n=2&last=b", "link").unwrap(),
            "https://r.example/v2/a/tags/list?n=2&last=b"
        );
        assert_eq!(
            resolve_link(current, "https://other.example/x", "link").unwrap(),
            "https://other.example/x"
        );
        assert!(resolve_link(current, "http://r.example/v2/a", "link").is_err());
        assert!(resolve_link(current, "file:///etc/passwd", "link").is_err());
        assert_eq!(
            resolve_link("http://127.0.0.1:5000/v2/", "https://r.example/", "l").unwrap(),
            "https://r.example/"
        );
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
    fn registry_text_is_one_line() {
        let text = neutral("oops\n::error::owned\r\u{1b}[31m");
        assert_eq!(text.lines().count(), 1);
        assert!(!text.contains('\u{1b}'));
        assert_eq!(neutral("plain `text`"), "plain `text`");
    }

    #[test]
    fn next_link_follows_rel_next_only() {
        assert_eq!(
            next_link(r#"</v2/x/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/x/tags/list?n=2&last=b")
        );
        assert_eq!(
            next_link(r#"<https://r/prev>; rel="prev", <https://r/next>; rel=next"#).as_deref(),
            Some("https://r/next")
        );
        assert_eq!(next_link(r#"<https://r/prev>; rel="prev""#), None);
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

/// Properties over arbitrary header text (proptest): `Link`, `Location`
/// and challenges come from registries.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_link_header_parses_without_panic_into_a_part_of_itself(header in "\\PC{0,200}") {
            if let Some(target) = next_link(&header) {
                prop_assert!(header.contains(&target));
            }
        }

        #[test]
        fn links_never_downgrade_from_https(next in "\\PC{0,100}") {
            if let Ok(resolved) = resolve_link("https://r.example/v2/a/tags/list", &next, "link") {
                prop_assert!(resolved.starts_with("https://"), "{}", resolved);
            }
        }

        #[test]
        fn registry_text_is_always_one_printable_line(text in "\\PC{0,50}[\\r\\n\\t\\x00-\\x1f]{0,5}\\PC{0,50}") {
            let neutral = neutral(&text);
            prop_assert!(!neutral.chars().any(char::is_control));
        }

        #[test]
        fn retry_after_of_any_text_never_panics(value in "\\PC{0,60}") {
            let _ = retry::parse_retry_after(&value, SystemTime::now());
        }

        #[test]
        fn challenges_of_any_text_never_panic(header in "\\PC{0,200}") {
            if let Some(challenge) = auth::parse_challenge(&header) {
                let _ = checked_challenge("r", "https://r.example", challenge);
            }
        }
    }
}
