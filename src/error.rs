//! The one library error type.
//!
//! Callers branch on a few variants (authentication, digest mismatch, not
//! found); everything else is carried as a message with its cause attached.
//! Messages are lowercase with values in backticks, and never contain a
//! credential: the registry client builds them from URLs and statuses only,
//! and every URL a variant holds is a [`ShownUrl`] (no query value, no
//! user), a transport error's cause has its URL taken out.

use std::sync::Arc;

use crate::digest::{Digest, DigestError};
use crate::text::ShownUrl;

/// Everything that can go wrong in the library. A variant's fields are
/// the values its message names.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reference string that is not `REGISTRY/REPOSITORY[:TAG][@DIGEST]`.
    #[error("invalid reference `{input}`: {reason}")]
    Reference { input: String, reason: String },

    /// A digest that is not one, or bytes that do not match theirs.
    #[error(transparent)]
    Digest(#[from] DigestError),

    /// The registry refused our identity, or we had none and it wants one.
    #[error("authentication failed at `{registry}`: {reason}")]
    Auth { registry: String, reason: String },

    /// A manifest or blob that the registry does not have.
    #[error("`{what}` not found")]
    NotFound { what: String },

    /// A registry answered with a status we cannot continue from.
    #[error("`{method} {url}` answered {status}{}", body_suffix(.body))]
    Status {
        method: String,
        url: ShownUrl,
        status: u16,
        body: String,
    },

    /// The request never got an answer (connect, reset, timeout).
    #[error("`{method} {url}` failed")]
    Transport {
        method: String,
        url: ShownUrl,
        #[source]
        source: Cause,
    },

    /// The peer went quiet: less than 1 KiB moved in a whole idle window.
    #[error("`{method} {url}` stalled: less than 1 KiB moved in {}", humantime::format_duration(*.window))]
    Stalled {
        method: String,
        url: ShownUrl,
        window: std::time::Duration,
    },

    /// A registry marked down for the rest of the run (it kept stalling
    /// or refusing connections); its remaining work fails at once.
    #[error("`{registry}` is marked down for this run: {reason}")]
    Down { registry: String, reason: String },

    /// The registry's TLS certificate did not verify.
    #[error(
        "TLS to `{url}` failed: the certificate is not trusted (if `{registry}` uses a private CA, set `registries.{registry}.ca` to its PEM file; see {})",
        crate::troubleshooting!("untrusted-certificate")
    )]
    Tls {
        registry: String,
        url: ShownUrl,
        #[source]
        source: Cause,
    },

    /// A CA file from the configuration that cannot be used.
    #[error("CA file `{path}`: {reason}")]
    Ca { path: String, reason: String },

    /// A registry sent more than we accept (pages of tags).
    #[error("`{what}`: {reason}")]
    Limit { what: String, reason: String },

    /// A call to a service API (GitHub releases, ECR Public) that failed.
    #[error("{service}: {reason}")]
    Api { service: String, reason: String },

    /// A manifest we cannot or will not copy.
    #[error("unsupported manifest `{what}`: {reason}")]
    Manifest { what: String, reason: String },

    /// An OCI image layout that is not usable.
    #[error("oci layout `{path}`: {reason}")]
    Layout { path: String, reason: String },

    /// Local file I/O (spool, layouts).
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// After a push, the tag at the target does not name the source's digest.
    #[error(
        "verification failed for `{destination}`: expected `{expected}`, the target has {found}"
    )]
    Verification {
        destination: String,
        expected: Digest,
        found: String,
    },

    /// The registry has no pulls left for us (its budget is down to
    /// `min_remaining`, or it answered 429 for longer than we wait).
    #[error("rate limited at `{registry}`: {reason}{}", until_suffix(.until))]
    RateLimited {
        registry: String,
        until: Option<std::time::SystemTime>,
        reason: String,
    },

    /// A value that cannot be what it must be: a tag pattern, a version
    /// range, a project name, a selection of images or targets.
    #[error("{what} {reason}")]
    Invalid { what: String, reason: String },

    /// The same failure seen by several waiters (one upstream fetch, many targets).
    #[error(transparent)]
    Shared(Arc<Error>),
}

/// An HTTP client error without the URL it was about: reqwest's message
/// names the whole URL, query values included, so the only ways in take it
/// out; the request is named by the variant's [`ShownUrl`], and a redirect
/// target it failed at (a CDN) by its own, shown the same way.
#[derive(Debug)]
pub struct Cause {
    error: reqwest::Error,
    /// Where the request was when it failed, when that is not the URL the
    /// error names (it followed a redirect).
    at: Option<ShownUrl>,
}

impl Cause {
    /// `error` from a request that a redirect had taken to `redirected_to`.
    pub fn new(error: reqwest::Error, redirected_to: Option<&str>) -> Cause {
        Cause {
            error: error.without_url(),
            at: redirected_to.map(ShownUrl::new),
        }
    }

    /// Where the request was redirected to when it failed, if it was.
    pub fn redirected_to(&self) -> Option<&ShownUrl> {
        self.at.as_ref()
    }
}

impl From<reqwest::Error> for Cause {
    fn from(error: reqwest::Error) -> Cause {
        Cause {
            error: error.without_url(),
            at: None,
        }
    }
}

impl std::ops::Deref for Cause {
    type Target = reqwest::Error;

    fn deref(&self) -> &reqwest::Error {
        &self.error
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)?;
        match &self.at {
            Some(at) => write!(f, " (redirected to `{at}`)"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

fn until_suffix(until: &Option<std::time::SystemTime>) -> String {
    match until {
        Some(at) => format!(
            "; try again after {}",
            humantime::format_rfc3339_seconds(*at)
        ),
        None => String::new(),
    }
}

impl Error {
    /// A registry's answer we cannot continue from: the request named
    /// without its secrets, and the body (the start of it, already made
    /// [`neutral`](crate::text::neutral)) without any of the request's
    /// query values it may echo.
    pub fn status(method: &str, url: &str, status: u16, body: &str) -> Self {
        Error::Status {
            method: method.to_string(),
            url: ShownUrl::new(url),
            status,
            body: crate::text::scrubbed(body, url),
        }
    }

    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The same failure for `n` waiters (one source failure, many destinations).
    pub fn share(self, n: usize) -> impl Iterator<Item = Error> {
        let shared = Arc::new(self);
        (0..n).map(move |_| Error::Shared(shared.clone()))
    }

    /// The error behind any number of `Shared` wrappers.
    pub fn root(&self) -> &Error {
        match self {
            Error::Shared(inner) => inner.root(),
            other => other,
        }
    }

    /// True for authentication failures (exit code 3).
    pub fn is_auth(&self) -> bool {
        matches!(self.root(), Error::Auth { .. })
    }

    /// True when a manifest PUT was refused for a blob the registry lacks
    /// (distribution: `MANIFEST_BLOB_UNKNOWN`).
    pub fn is_blob_unknown(&self) -> bool {
        matches!(self.root(), Error::Status { status: 400, body, .. } if body.contains("BLOB_UNKNOWN"))
    }

    /// True when a registry refused a manifest for what it is, not for a
    /// fault: a PUT to `/manifests/` answered 400 `MANIFEST_INVALID` or
    /// `unknown media type`, or 415. Quay does this for config and layer
    /// media types not on its allow-list (`ALLOWED_OCI_ARTIFACT_TYPES`),
    /// GitLab's registry for media types it does not know.
    pub fn refuses_content(&self) -> bool {
        let Error::Status {
            method,
            url,
            status,
            body,
        } = self.root()
        else {
            return false;
        };
        let by_status = match status {
            400 => body.contains("MANIFEST_INVALID") || body.contains("unknown media type"),
            415 => true,
            _ => false,
        };
        method == "PUT" && url.to_string().contains("/manifests/") && by_status
    }

    /// When a rate-limited registry expects us back (`Some(None)`: rate
    /// limited, no time given); `None` for every other error.
    pub fn rate_limited_until(&self) -> Option<Option<std::time::SystemTime>> {
        match self.root() {
            Error::RateLimited { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// True when bytes did not match their digest or size.
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self.root(),
            Error::Digest(DigestError::Mismatch { .. } | DigestError::SizeMismatch { .. })
        )
    }
}

/// Library result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The whole text of an error as the binary prints it (`{:#}` of anyhow):
/// its message and every cause.
#[cfg(test)]
fn chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real transport error (a refused connection) of a request whose URL
    /// holds secrets: reqwest's own message names the URL whole; ours never.
    #[tokio::test]
    async fn a_transport_error_shows_no_secret_of_its_url() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let url = format!(
            "http://user:PlantedPass1@127.0.0.1:{port}/v2/a/blobs/uploads/u?_state=PlantedState2&X-Amz-Signature=PlantedSig3"
        );
        let source = reqwest::Client::new().get(&url).send().await.unwrap_err();
        assert!(source.to_string().contains("PlantedState2"), "{source}");
        for error in [
            Error::Transport {
                method: "GET".into(),
                url: ShownUrl::new(&url),
                source: Cause::new(source, Some(&url)),
            },
            Error::status("PUT", &url, 400, "echo PlantedState2 PlantedSig3"),
        ] {
            let text = chain(&error);
            for secret in ["PlantedPass1", "PlantedState2", "PlantedSig3"] {
                assert!(!text.contains(secret), "{text}");
            }
            assert!(text.contains("_state=…"), "{text}");
        }
    }
}

/// Properties (proptest): no variant that names a URL shows a secret of it,
/// whatever the URL and the body around it.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn no_error_naming_a_url_shows_its_secrets(
            host in "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
            path in "(/[A-Za-z0-9._~%-]{1,10}){0,4}",
            names in proptest::collection::vec("[A-Za-z_-]{1,12}", 1..4),
            user in "[A-Za-z0-9]{1,8}",
            before in "\\PC{0,30}",
            after in "\\PC{0,30}",
        ) {
            let secret = "Q7PlantedSecretValue";
            let query: Vec<String> = names.iter().map(|n| format!("{n}={secret}")).collect();
            let url = format!("https://{user}:{secret}@{host}{path}?{}", query.join("&"));
            let shown = ShownUrl::new(&url);
            let body = format!("{before}{secret}{after}");
            let errors = [
                Error::status("PUT", &url, 400, &body),
                Error::Stalled { method: "PUT".into(), url: shown.clone(), window: std::time::Duration::from_secs(1) },
                Error::Limit { what: shown.to_string(), reason: "larger than 4 MiB".into() },
            ];
            for error in &errors {
                let text = chain(error);
                prop_assert!(!text.contains(secret), "{}", text);
                let shared = Error::Shared(std::sync::Arc::new(Error::status("GET", &url, 500, &body)));
                prop_assert!(!chain(&shared).contains(secret));
            }
        }
    }
}
