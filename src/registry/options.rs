//! Per-registry settings (`registries.<host>` in `mirror.yaml`), resolved.
//!
//! Pure data and the plain-HTTP rule: the one part of the registry client
//! that [`crate::plan`] imports, with no HTTP client behind it.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use super::deadline;

/// `registries.<host>.rate_limit`: at most `requests` metered requests per
/// `per`, with bursts of up to `burst` (default: `requests`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Metered requests (manifest GETs) per `per`.
    pub requests: NonZeroU32,
    /// The window `requests` are spread over.
    pub per: Duration,
    /// How many may go at once (default: `requests`).
    pub burst: Option<NonZeroU32>,
}

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
    /// Our own pace of writes (PUTs).
    pub write_rate_limit: Option<RateLimit>,
    /// Stop starting pulls when the registry says this many are left.
    pub min_remaining: Option<u64>,
    /// A PEM file of CA certificates to trust for this registry, besides
    /// the system's.
    pub ca: Option<PathBuf>,
    /// Create missing repositories through the ECR Public API before pushing.
    pub create_repositories: bool,
    /// Without configured credentials, log in through this ECR API
    /// (GetAuthorizationToken).
    pub ecr_login: Option<crate::config::EcrApi>,
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
            write_rate_limit: None,
            min_remaining: None,
            ca: None,
            create_repositories: false,
            ecr_login: None,
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
}
