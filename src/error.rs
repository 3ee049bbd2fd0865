//! The one library error type.
//!
//! Callers branch on a few variants (authentication, digest mismatch, not
//! found); everything else is carried as a message with its cause attached.
//! Messages are lowercase with values in backticks, and never contain a
//! credential: the registry client builds them from URLs and statuses only.

use std::sync::Arc;

use crate::digest::Digest;

/// Everything that can go wrong in the library. A variant's fields are
/// the values its message names.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reference string that is not `REGISTRY/REPOSITORY[:TAG][@DIGEST]`.
    #[error("invalid reference `{input}`: {reason}")]
    Reference { input: String, reason: String },

    /// A digest string that is not `ALGORITHM:HEX` with a supported algorithm.
    #[error("invalid digest `{0}`")]
    Digest(String),

    /// Bytes whose hash is not the digest they were asked for by.
    #[error("digest mismatch for `{what}`: expected `{expected}`, got `{actual}`")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },

    /// Bytes whose length is not the size their descriptor states.
    #[error("size mismatch for `{digest}`: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },

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
        url: String,
        status: u16,
        body: String,
    },

    /// The request never got an answer (connect, reset, timeout).
    #[error("`{method} {url}` failed")]
    Transport {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// The peer went quiet: less than 1 KiB moved in a whole idle window.
    #[error("`{method} {url}` stalled: less than 1 KiB moved in {}", humantime::format_duration(*.window))]
    Stalled {
        method: String,
        url: String,
        window: std::time::Duration,
    },

    /// A registry marked down for the rest of the run (it kept stalling
    /// or refusing connections); its remaining work fails at once.
    #[error("`{registry}` is marked down for this run: {reason}")]
    Down { registry: String, reason: String },

    /// The registry's TLS certificate did not verify.
    #[error(
        "TLS to `{url}` failed: the certificate is not trusted (if `{registry}` uses a private CA, set `registries.{registry}.ca` to its PEM file)"
    )]
    Tls {
        registry: String,
        url: String,
        #[source]
        source: reqwest::Error,
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
            Error::DigestMismatch { .. } | Error::SizeMismatch { .. }
        )
    }
}

/// Library result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
