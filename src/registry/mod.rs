//! The registry client: every request regmirror makes passes through here.
//!
//! It speaks the OCI distribution API over reqwest (oci-client 0.18 hides
//! response headers and mis-handles mounts, monolithic uploads and manifest
//! PUTs by digest, which is most of what a mirror does). This file holds the
//! client, its hosts and the one send loop; per concept:
//!
//! - [`options`]: `registries.<host>` settings, pure data (what `plan` imports);
//! - `http`: the reqwest client, redirects, `Link` and `Location` URLs;
//! - `body`: reading answers within deadlines and size caps;
//! - [`auth`]: credentials, challenges, the token exchange;
//! - `manifests`, `blobs`: the verbs; [`meter`]: a blob's bytes as they
//!   move, for a live view;
//! - [`limits`], [`pace`], [`retry`], [`deadline`]: what every request
//!   passes through (concurrency and quotas, the paces found by trying,
//!   what is retried, idle time-outs); `unacked`:
//!   what the kernel still holds to send, so a draining upload is not
//!   called stalled;
//! - [`ecr`]: ECR Public repositories.
//!
//! Per registry host the client holds the limits (a semaphore of
//! `concurrency` permits), the learned authentication challenge, and
//! credentials; bearer tokens are cached per host and scope.

pub mod auth;
mod blobs;
mod body;
pub mod credentials;
pub mod deadline;
pub mod ecr;
mod http;
pub mod limits;
mod manifests;
pub mod meter;
pub mod options;
pub mod pace;
mod refusals;
pub mod retry;
mod unacked;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use tokio::sync::{OnceCell, Semaphore};

use crate::digest::Digest;
use crate::error::{Cause, Error, Result};
use crate::reference::{Repository, valid_path_component, valid_tag};
use crate::text::ShownUrl;
use auth::{Access, Challenge, Tokens, checked_challenge};
use body::{Answer, Build, header, neutral, retry_after};
use deadline::{Fault, Health, Watch};
use http::{cause_of, http_client, is_certificate_error, origin};
use limits::Limits;
use retry::Attempt;

pub use blobs::Mount;
pub use body::MAX_JSON_SIZE;
pub use http::MAX_TAG_PAGES;
pub use options::{RegistryOptions, is_loopback};

/// How long a secondary rate limit (GitHub) defers a write: longer than
/// any wait within a run ([`retry::MAX_DELAY`]), as GitHub asks.
const SECONDARY_PAUSE: Duration = Duration::from_secs(5 * 60);

/// One registry host: its limits and what we learned about its auth.
struct Host {
    /// The registry name as written (`docker.io`): the key for credentials.
    registry: String,
    /// `https://host` or `http://host`.
    base: String,
    /// `base` as an origin: where credentials may go (parsed once, not per request).
    origin: Option<url::Origin>,
    /// Every request to this host holds one permit while it runs and while
    /// its body is read; callers never hold one while waiting on another
    /// request, so there is no wait cycle.
    permits: Arc<Semaphore>,
    /// Our quota and the registry's remaining budget.
    limits: Limits,
    /// The paces found by trying, per kind of request (`pace`).
    pace: pace::Pace,
    /// The HTTP client for this host (its own when it has its own CA).
    http: reqwest::Client,
    /// Learned once from `GET /v2/`, replaced if a later 401 says otherwise.
    /// An async lock: the first requests to a host wait for one ping
    /// instead of each sending their own.
    challenge: tokio::sync::Mutex<Option<Challenge>>,
    /// Looked up once per run (credential helpers are slow programs).
    credential: OnceCell<credentials::Lookup>,
    /// Whether the registry serves the OCI referrers API, once asked.
    referrers_api: tokio::sync::Mutex<Option<bool>>,
    /// The idle window of every request and body (`timeout`).
    window: Duration,
    /// Stalls in a row; down for the run after too many.
    health: Health,
    /// Requests sent (each attempt), for reports and metrics.
    sent: std::sync::atomic::AtomicU64,
    /// The smallest blob this run sent in one PUT and the registry refused
    /// for its size (413; `u64::MAX` until then): blobs as big go up in
    /// parts from the start.
    whole_put_refused: std::sync::atomic::AtomicU64,
}

impl Host {
    /// The error for a request to this host that failed in transport
    /// (at `redirected_to`, when a redirect had taken it elsewhere),
    /// counted against the host's health: stalls and failed connects mark
    /// it down after a few in a row. Only the registry's own failures
    /// count: a redirect target (a blob's CDN) that fails is not the
    /// registry down.
    fn fault(
        &self,
        method: &Method,
        url: &str,
        fault: Fault,
        redirected_to: Option<&str>,
    ) -> Error {
        let own = redirected_to.is_none_or(|at| self.owns(at));
        let (error, counts) = match fault {
            Fault::Stalled => (
                Error::Stalled {
                    method: method.to_string(),
                    url: url.into(),
                    window: self.window,
                },
                own,
            ),
            Fault::Transport(source) if is_certificate_error(&source) => {
                let error = Error::Tls {
                    registry: self.registry.clone(),
                    url: url.into(),
                    source: Cause::new(source, redirected_to),
                };
                (error, false)
            }
            Fault::Transport(source) => {
                let counts = own && (source.is_connect() || source.is_timeout());
                let error = Error::Transport {
                    method: method.to_string(),
                    url: url.into(),
                    source: Cause::new(source, redirected_to),
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
        self.origin.is_some() && origin(url) == self.origin
    }

    /// A challenge this registry's own answer stated, checked.
    fn checked(&self, challenge: Challenge) -> Result<Challenge> {
        checked_challenge(&self.registry, &self.base, challenge)
    }
}

/// Why a repository is looked at (a HEAD), which sets the token scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Reading it: a source, or `verify`.
    Read,
    /// Checking a destination before or after writing it. Docker Hub
    /// answers a pull-only token for a repository that does not exist yet
    /// with 401, not 404 (jupyterhub/binderhub#1664, distribution#1291), so
    /// destination checks ask for the push scope they need anyway, as
    /// containers/image and containerd do.
    Write,
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

    /// How many requests `repository`'s registry may have in flight at
    /// once (`concurrency`).
    pub fn concurrency(&self, repository: &Repository) -> usize {
        self.options
            .get(&repository.registry)
            .map_or(RegistryOptions::default().concurrency, |o| o.concurrency)
            .max(1)
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

    /// Per registry that throttled this run: how often, and the paces
    /// found (requests a second per kind), by registry name.
    pub fn paces(&self) -> Vec<(String, pace::Settled)> {
        let hosts = self.hosts.lock().expect("hosts lock poisoned");
        let mut found: Vec<(String, pace::Settled)> = hosts
            .values()
            .filter_map(|host| host.pace.settled().map(|s| (host.registry.clone(), s)))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Requests sent so far (every attempt, token requests aside), per
    /// registry name, sorted by name.
    pub fn requests(&self) -> Vec<(String, u64)> {
        let hosts = self.hosts.lock().expect("hosts lock poisoned");
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        for host in hosts.values() {
            *counts.entry(host.registry.clone()).or_default() +=
                host.sent.load(std::sync::atomic::Ordering::Relaxed);
        }
        counts.into_iter().collect()
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
                    origin: origin(&format!("{scheme}://{api_host}")),
                    permits: Arc::new(Semaphore::new(options.concurrency.max(1))),
                    limits: Limits::new(
                        options.rate_limit,
                        options.write_rate_limit,
                        options.min_remaining,
                    ),
                    pace: pace::Pace::default(),
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
                    sent: Default::default(),
                    whole_put_refused: std::sync::atomic::AtomicU64::new(u64::MAX),
                })
            })
            .clone()
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
        // All attempts are one request to the host's health.
        let kind = pace::Kind::of(&method, url);
        let answer = deadline::one_request(retry::run(|| {
            let method = method.clone();
            async move {
                if let Some(down) = host.down() {
                    return Attempt::Final(Err(down));
                }
                // The pace this registry was found to take (no wait until
                // it throttled); before the permit, so a paced request
                // holds no connection.
                let paced = host.pace.takes_slot(kind, &method);
                if paced {
                    host.pace.before(kind).await;
                }
                // `write_rate_limit` last: the pace found above never
                // bunches up the writes it spaced.
                if method == Method::PUT {
                    host.limits.before_write().await;
                }
                let started = tokio::time::Instant::now();
                host.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                // Requests that took their slots in turn but then waited
                // for a connection together (every one busy) would go out
                // together, the burst the pace is there to prevent: they
                // leave an interval apart.
                if paced {
                    host.pace.spaced(kind).await;
                }
                let sent = std::time::Instant::now();
                let (sent_result, redirected_to) =
                    http::following(deadline::send(request, &watch, host.window)).await;
                match sent_result {
                    Ok(response) => {
                        http::log_response(&method, url, &response, sent.elapsed());
                        host.health.answered();
                        host.limits.observe(response.headers());
                        let status = response.status().as_u16();
                        let retry_after = retry_after(&response);
                        // 429, and 503 (S3's SlowDown, ECR's throttling),
                        // slow this kind of request down; anything else
                        // answered lets it speed up.
                        if status == 429 || status == 503 {
                            host.pace.throttled(kind, &method, started);
                        } else {
                            host.pace.clean(kind, paced);
                        }
                        let answer = Answer {
                            response,
                            permit,
                            host: host.clone(),
                            method: method.clone(),
                            url: url.to_string(),
                        };
                        if status == StatusCode::TOO_MANY_REQUESTS.as_u16() {
                            // The wait is in `Retry-After`, or (GHCR, on
                            // writes) in the body.
                            let body = answer.error_text().await;
                            let wait = retry_after.or_else(|| retry::retry_after_in_body(&body));
                            let error = Error::RateLimited {
                                registry: host.registry.clone(),
                                until: wait.map(|wait| SystemTime::now() + wait),
                                reason: format!(
                                    "`{method} {}` answered 429: {body}",
                                    ShownUrl::new(url)
                                ),
                            };
                            // A write is sent again by its caller (an upload
                            // from the spool, with a new session).
                            return if idempotent {
                                Attempt::Transient {
                                    result: Err(error),
                                    retry_after: wait,
                                }
                            } else {
                                Attempt::Final(Err(error))
                            };
                        }
                        let result = Ok(answer);
                        if idempotent && retry::status_is_retryable(status) {
                            tracing::debug!(url = %ShownUrl::new(url), status, "transient status");
                            Attempt::Transient {
                                result,
                                retry_after,
                            }
                        } else {
                            Attempt::Final(result)
                        }
                    }
                    Err(fault) => {
                        let retryable = idempotent && fault_may_pass(&fault);
                        let error = host.fault(&method, url, fault, redirected_to.as_deref());
                        tracing::debug!(url = %ShownUrl::new(url), %error, retryable, "transport failure");
                        Attempt::transient_if(retryable, Err(error))
                    }
                }
            }
        }))
        .await?;
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
                        "`{method} {}` was answered 401 by `{}`, another host than the registry; credentials are not sent there",
                        ShownUrl::new(url),
                        ShownUrl::new(&answered_by)
                    ),
                });
            }
            if refreshed {
                let identity = self.refused_identity(&host).await;
                return Err(Error::Auth {
                    registry: host.registry.clone(),
                    reason: format!("`{method} {}` answered 401: {identity}", ShownUrl::new(url)),
                });
            }
            refreshed = true;
            self.forget_tokens(&host, &access);
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
        Error::status(method, url, status.as_u16(), &body)
    }

    /// A push-scoped request (a manifest PUT, an upload's POST and PUT) whose
    /// answer must have a status `expected` accepts; any other is an error
    /// naming the request, with the registry's error body.
    async fn push(
        &self,
        repository: &Repository,
        method: Method,
        url: &str,
        build: Build<'_>,
        idempotent: bool,
        expected: fn(StatusCode) -> bool,
    ) -> Result<Answer> {
        let access = Access::Push(&repository.path);
        let answer = self
            .send(repository, access, method.clone(), url, build, idempotent)
            .await?;
        let status = answer.response.status();
        if expected(status) {
            return Ok(answer);
        }
        let body = answer.error_text().await;
        // GitHub's secondary rate limit, on GHCR pushes too: a 403 that
        // asks for a pause of at least a minute, and may ban a client that
        // keeps asking (markrussinovich/refchecker#67; GitHub's REST
        // documentation, "secondary rate limits"). Not waited for in this
        // run: the image is deferred to the next one.
        if status == StatusCode::FORBIDDEN && body.contains("secondary rate limit") {
            self.host(repository).pace.throttled(
                pace::Kind::of(&method, url),
                &method,
                tokio::time::Instant::now(),
            );
            return Err(Error::RateLimited {
                registry: self.host(repository).registry.clone(),
                until: Some(SystemTime::now() + SECONDARY_PAUSE),
                reason: format!("`{method} {}` answered 403: {body}", ShownUrl::new(url)),
            });
        }
        Err(self.refused(repository, &method, url, status, body))
    }

    /// The error for a request `status` refused: a refusal we know by its
    /// words ([`refusals`]) says what to do, and a permission is an
    /// authentication failure; any other names the request and the body.
    fn refused(
        &self,
        repository: &Repository,
        method: &Method,
        url: &str,
        status: StatusCode,
        body: String,
    ) -> Error {
        let Some(known) = refusals::explain(status.as_u16(), &body) else {
            return Self::status_error(method.as_str(), url, status, body);
        };
        let explained = format!("{body}. {}: {}", known.registry, known.hint);
        match known.meaning {
            refusals::Meaning::Permission => Error::Auth {
                registry: self.host(repository).registry.clone(),
                reason: format!(
                    "`{method} {}` answered {}: {explained}",
                    ShownUrl::new(url),
                    status.as_u16()
                ),
            },
            refusals::Meaning::Setup => Self::status_error(method.as_str(), url, status, explained),
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
        self.look(repository, Intent::Read, method, url, build)
            .await
    }

    /// A GET or HEAD made for `intent`, its answer sorted as [`Self::pull`]
    /// does.
    async fn look(
        &self,
        repository: &Repository,
        intent: Intent,
        method: Method,
        url: &str,
        build: Build<'_>,
    ) -> Result<Option<Answer>> {
        let access = match intent {
            Intent::Read => Access::Pull(&repository.path),
            Intent::Write => Access::Push(&repository.path),
        };
        let answer = self
            .send(repository, access, method.clone(), url, build, true)
            .await?;
        match answer.response.status() {
            // 206: the part of a blob asked for with `Range`.
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => Ok(Some(answer)),
            StatusCode::NOT_FOUND => Ok(None),
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                if method == Method::HEAD =>
            {
                // A HEAD's refusal has no body to say why; the same GET's
                // does (Artifact Registry's 403s name the permission, and
                // say the repository may not exist). Only on a refusal.
                drop(answer);
                let access = match intent {
                    Intent::Read => Access::Pull(&repository.path),
                    Intent::Write => Access::Push(&repository.path),
                };
                let again = self
                    .send(repository, access, Method::GET, url, build, true)
                    .await?;
                let body = match again.response.status() {
                    refused if refused == status => again.error_text().await,
                    _ => String::new(),
                };
                Err(self.refused(repository, &method, url, status, body))
            }
            status => {
                let body = if method == Method::HEAD {
                    String::new()
                } else {
                    answer.error_text().await
                };
                Err(self.refused(repository, &method, url, status, body))
            }
        }
    }
}

/// True for a request that got no answer in a way that may pass if it is
/// sent again: a stall, or a transport failure other than an untrusted
/// certificate.
pub(super) fn fault_may_pass(fault: &Fault) -> bool {
    match fault {
        Fault::Stalled => true,
        Fault::Transport(source) => {
            !is_certificate_error(source) && retry::transport_is_retryable(source)
        }
    }
}
