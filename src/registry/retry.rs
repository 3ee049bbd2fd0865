//! What is worth asking again, and how long to wait first.
//!
//! One place decides: 408, 429, 500, 502, 503, 504 and transport failures are
//! retried with jittered exponential backoff, honouring `Retry-After`
//! (seconds) up to a cap; 401, 403, 404 and digest mismatches never are.

use std::time::Duration;

/// Attempts per request, the first included.
pub const MAX_ATTEMPTS: u32 = 4;

/// Longest we wait between attempts, whatever `Retry-After` says.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// True for statuses that may succeed if asked again.
pub fn status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// True for transport failures that may succeed if asked again.
pub fn transport_is_retryable(error: &reqwest::Error) -> bool {
    error.is_connect() || error.is_timeout() || error.is_request() || error.is_body()
}

/// Parses `Retry-After` given in seconds.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// How long to wait before attempt `attempt + 1` (0-based `attempt` just failed).
pub fn delay(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(after) = retry_after {
        return after.min(MAX_DELAY);
    }
    let base = Duration::from_millis(200) * 2u32.saturating_pow(attempt);
    // Jitter of up to half the base spreads retries of parallel requests.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let jitter = base.mul_f64(f64::from(nanos % 1000) / 2000.0);
    (base + jitter).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_retryable_statuses() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(status_is_retryable(status), "{status}");
        }
        for status in [200, 201, 400, 401, 403, 404, 405] {
            assert!(!status_is_retryable(status), "{status}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(delay(0, None) >= Duration::from_millis(200));
        assert!(delay(0, None) <= Duration::from_millis(300));
        assert!(delay(3, None) >= Duration::from_millis(1600));
        assert_eq!(
            delay(0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(delay(0, Some(Duration::from_secs(7200))), MAX_DELAY);
        assert_eq!(parse_retry_after(" 60 "), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
