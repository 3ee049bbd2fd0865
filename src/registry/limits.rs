//! Rate limits per registry host: our own quota (governor), and the budget
//! the registry tells us it has left.
//!
//! Docker Hub meters manifest GETs (not HEADs, not blobs) and says what is
//! left on every manifest response: `ratelimit-remaining: 76;w=21600`
//! (76 left in a 6 h window). GHCR says `x-ratelimit-remaining: 76` with
//! `x-ratelimit-reset: <unix seconds>`. When the budget falls to
//! `min_remaining`, we stop starting pulls from that host: the images are
//! deferred to the next run, not failed with 429s.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota};
use reqwest::header::HeaderMap;

use super::options::RateLimit;
use super::retry::hint;
use crate::error::{Error, Result};

/// The governor quota of a [`RateLimit`].
fn quota(limit: RateLimit) -> Quota {
    // `Quota::per_hour(n)` would make the burst n; spread the requests
    // evenly instead and allow the burst asked for.
    let period = limit.per / limit.requests.get();
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .expect("period is not zero")
        .allow_burst(limit.burst.unwrap_or(limit.requests))
}

/// What a registry said it has left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Requests left in the window.
    pub remaining: u64,
    /// When the window ends at the latest.
    pub reset: SystemTime,
}

/// Reads a budget from response headers, if the registry sent one.
/// Malformed values are ignored, never fatal.
pub fn budget(headers: &HeaderMap, now: SystemTime) -> Option<Budget> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(value) = get("ratelimit-remaining") {
        // `N;w=SECONDS`: the window is a bound on when N grows again.
        let mut parts = value.split(';');
        let remaining = parts.next()?.trim().parse().ok()?;
        let window = parts
            .find_map(|p| p.trim().strip_prefix("w="))
            .and_then(|w| w.trim().parse::<u64>().ok())
            .unwrap_or(0);
        return Some(Budget {
            remaining,
            reset: now + hint(window),
        });
    }
    let remaining = get("x-ratelimit-remaining")?.trim().parse().ok()?;
    let reset = get("x-ratelimit-reset")
        .and_then(|r| r.trim().parse::<u64>().ok())
        // A time, not a wait: bounded as a wait from now.
        .map(|unix| {
            let now_unix = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            now + hint(unix.saturating_sub(now_unix))
        })
        .unwrap_or(now);
    Some(Budget { remaining, reset })
}

/// The limits of one registry host.
pub struct Limits {
    quota: Option<DefaultDirectRateLimiter>,
    /// Our own pace of writes (`write_rate_limit`).
    writes: Option<DefaultDirectRateLimiter>,
    min_remaining: Option<u64>,
    budget: Mutex<Option<Budget>>,
}

impl Limits {
    /// Our quotas on pulls and writes (if any) and the budget floor
    /// (`min_remaining`).
    pub fn new(
        rate_limit: Option<RateLimit>,
        write_rate_limit: Option<RateLimit>,
        min_remaining: Option<u64>,
    ) -> Limits {
        Limits {
            quota: rate_limit.map(|r| DefaultDirectRateLimiter::direct(quota(r))),
            writes: write_rate_limit.map(|r| DefaultDirectRateLimiter::direct(quota(r))),
            min_remaining,
            budget: Mutex::new(None),
        }
    }

    /// Before a write (a PUT): waits for our own pace of writes.
    pub async fn before_write(&self) {
        if let Some(writes) = &self.writes {
            writes.until_ready().await;
        }
    }

    /// Before a metered request (a manifest GET): refuses if the registry's
    /// budget is down to `min_remaining`, else waits for our own quota.
    pub async fn before_pull(&self, registry: &str) -> Result<()> {
        let budget = *self.budget.lock().expect("budget lock poisoned");
        if let (Some(min), Some(budget)) = (self.min_remaining, budget)
            && budget.remaining <= min
            && SystemTime::now() < budget.reset
        {
            return Err(Error::RateLimited {
                registry: registry.to_string(),
                until: Some(budget.reset),
                reason: format!(
                    "{} pulls left, and `min_remaining` is {min}",
                    budget.remaining
                ),
            });
        }
        if let Some(quota) = &self.quota {
            quota.until_ready().await;
        }
        Ok(())
    }

    /// Remembers what a response said is left.
    pub fn observe(&self, headers: &HeaderMap) {
        if let Some(budget) = budget(headers, SystemTime::now()) {
            *self.budget.lock().expect("budget lock poisoned") = Some(budget);
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderName, HeaderValue};

    use super::*;

    /// Headers from a saved response: `Name: value` lines, curl's `< `
    /// prefix allowed, status lines and blank lines skipped.
    fn headers_of(text: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in text.lines() {
            let line = line.trim_start_matches("< ").trim_end_matches('\r');
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                map.append(name, value);
            }
        }
        map
    }

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/real/ratelimit")
            .join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("fixture {} is missing: {e}", path.display()))
    }

    #[test]
    fn reads_docker_hub_budgets_from_real_responses() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hours = |h: u64| now + Duration::from_secs(h * 3600);
        for (file, remaining, reset) in [
            (
                "dockerhub-feedback-2464__head-200-remaining0-ipv6-source.http",
                0,
                hours(6),
            ),
            (
                "docker-docs-download-rate-limit__anonymous-headers.txt",
                76,
                hours(6),
            ),
            (
                "docker-docs-usage-pulls-2025__anonymous-headers-1h-window.txt",
                20,
                hours(1),
            ),
            // Capitalised names, behind a proxy's `200 Connection established`.
            (
                "docker-getting-started-101__head-200-via-proxy-capitalized-no-source.http",
                0,
                hours(6),
            ),
            // `RateLimit-Limit: 200=21600` is malformed; remaining is fine.
            (
                "hub-ratelimit-fabianonunes__verbose-curl-authenticated-MALFORMED-limit.txt",
                196,
                hours(6),
            ),
        ] {
            let found = budget(&headers_of(&fixture(file)), now);
            assert_eq!(found, Some(Budget { remaining, reset }), "{file}");
        }
        // The 429 itself carries no budget, and nothing breaks on it.
        let abuse = fixture("dockerhub-feedback-1907__HAP429-abuse-limit-raw-LF-only.http");
        assert_eq!(budget(&headers_of(&abuse), now), None);
    }

    #[test]
    fn reads_ghcr_budgets_and_ignores_garbage() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let found = budget(
            &headers_of("x-ratelimit-remaining: 7\nx-ratelimit-reset: 1600\n"),
            now,
        );
        let reset = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600);
        assert_eq!(
            found,
            Some(Budget {
                remaining: 7,
                reset
            })
        );
        for garbage in [
            "ratelimit-remaining: lots;w=60",
            "ratelimit-remaining: ;w=60",
            "x-ratelimit-remaining: -1",
        ] {
            assert_eq!(budget(&headers_of(garbage), now), None, "{garbage}");
        }
        // A window we cannot read still gives the count, resetting now.
        assert_eq!(
            budget(&headers_of("ratelimit-remaining: 5;w=soon"), now),
            Some(Budget {
                remaining: 5,
                reset: now
            })
        );
    }

    #[tokio::test]
    async fn defers_pulls_once_the_budget_is_at_the_minimum() {
        let limits = Limits::new(None, None, Some(2));
        limits.before_pull("docker.io").await.unwrap();
        limits.observe(&headers_of("ratelimit-remaining: 3;w=3600"));
        limits.before_pull("docker.io").await.unwrap();
        limits.observe(&headers_of("ratelimit-remaining: 2;w=3600"));
        let error = limits.before_pull("docker.io").await.unwrap_err();
        let Error::RateLimited { until, .. } = &error else {
            panic!("{error:?}");
        };
        let wait = until.unwrap().duration_since(SystemTime::now()).unwrap();
        assert!(wait > Duration::from_secs(3590), "{wait:?}");
        assert!(error.to_string().contains("2 pulls left"), "{error}");
        // A window that has passed no longer defers.
        limits.observe(&headers_of("ratelimit-remaining: 0;w=0"));
        limits.before_pull("docker.io").await.unwrap();
    }

    #[test]
    fn hostile_windows_and_resets_do_not_overflow() {
        let now = SystemTime::now();
        for (name, value) in [
            ("ratelimit-remaining", "5;w=18446744073709551615"),
            ("x-ratelimit-remaining", "5"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
            headers.insert(
                HeaderName::from_static("x-ratelimit-reset"),
                HeaderValue::from_static("18446744073709551615"),
            );
            let budget = budget(&headers, now).unwrap();
            assert!(budget.reset <= now + crate::registry::retry::LONGEST_HINT);
        }
    }

    #[test]
    fn quota_spreads_requests_and_allows_the_burst() {
        let limit = RateLimit {
            requests: std::num::NonZeroU32::new(100).unwrap(),
            per: Duration::from_secs(3600),
            burst: Some(std::num::NonZeroU32::new(10).unwrap()),
        };
        let limiter = DefaultDirectRateLimiter::direct(quota(limit));
        for n in 0..10 {
            assert!(limiter.check().is_ok(), "request {n} of the burst");
        }
        assert!(limiter.check().is_err(), "the 11th waits 36 s");
        assert_eq!(quota(limit).replenish_interval(), Duration::from_secs(36));
    }
}
