//! What is worth asking again, and how long to wait first.
//!
//! One place decides:
//! - 429 and 503 wait as long as `Retry-After` says (seconds or HTTP-date),
//!   up to [`MAX_DELAY`], and up to half again (jitter: requests told the
//!   same wait must not return together); a registry asking for longer is
//!   not waited for: the request gives up at once and reports when to come
//!   back. A 429 that states no wait backs off as below, and the request's
//!   kind is paced ([`super::pace`]).
//! - 408, 500, 502, 504 and transport failures (connect, reset, timeout)
//!   retry with jittered exponential backoff.
//! - 401, 403, 404 and digest mismatches never retry (they are `Final`).
//! - A stall (less than 1 KiB moved in a window) and a body cut short
//!   retry, the body from the start: [`error_is_retryable`].
//!
//! Every loop is bounded by [`MAX_ATTEMPTS`], and every loop is [`run`].

use std::future::Future;
use std::time::{Duration, SystemTime};

/// Attempts per request, the first included.
pub const MAX_ATTEMPTS: u32 = 4;

/// Longest we wait between attempts, whatever `Retry-After` says.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// The longest time a registry's header (`Retry-After`, a rate-limit window
/// or reset, a token's `expires_in`) is believed: a year. A registry can
/// send any number; a bound keeps every `now + it` from overflowing.
pub const LONGEST_HINT: Duration = Duration::from_secs(366 * 24 * 3600);

/// What one attempt came to.
pub enum Attempt<T> {
    /// Use this result, good or bad.
    Final(T),
    /// This failed in a way that may pass if asked again; `retry_after` is
    /// the server's `Retry-After`, if any.
    Transient {
        /// The failed result, returned if no attempt is left.
        result: T,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
}

impl<T> Attempt<T> {
    /// `result`, sent again when `again` (it may pass), else final.
    pub fn transient_if(again: bool, result: T) -> Attempt<T> {
        if again {
            Attempt::Transient {
                result,
                retry_after: None,
            }
        } else {
            Attempt::Final(result)
        }
    }
}

/// True for statuses that may succeed if asked again.
pub fn status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// True for transport failures that may succeed if asked again. reqwest
/// reports a response body cut short (a reset mid-download) as a decode
/// error, so that counts too; we never ask reqwest to decode anything else
/// on a retried path.
pub fn transport_is_retryable(error: &reqwest::Error) -> bool {
    error.is_connect()
        || error.is_timeout()
        || error.is_request()
        || error.is_body()
        || error.is_decode()
}

/// True for a request that failed in a way that may pass if it is sent
/// again from the start: a transport failure that may pass, a stall (less
/// than 1 KiB in a window), a status that may pass. The client's own
/// attempt loop asks this of each attempt's outcome; a blob's download or
/// upload, whose body is a stream, asks it of the whole transfer.
pub fn error_is_retryable(error: &crate::error::Error) -> bool {
    use crate::error::Error;
    match error.root() {
        Error::Transport { source, .. } => transport_is_retryable(source),
        Error::Stalled { .. } => true,
        Error::Status { status, .. } => status_is_retryable(*status),
        _ => false,
    }
}

/// `seconds` from a registry's header, at most [`LONGEST_HINT`].
pub fn hint(seconds: u64) -> Duration {
    Duration::from_secs(seconds).min(LONGEST_HINT)
}

/// `Retry-After` in either form: delay-seconds or an HTTP-date (a date in
/// the past means now). `None` for anything else.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(hint(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default().min(LONGEST_HINT))
}

/// The wait a registry states in a 429's body rather than in `Retry-After`:
/// GHCR answers writes with `toomanyrequests: retry-after: 10.3ms, allowed:
/// 2000/minute` (a number with `ms`, `s`, `m` or `h`; seconds without a
/// unit). `None` when the body states none.
pub fn retry_after_in_body(body: &str) -> Option<Duration> {
    let lower = body.to_ascii_lowercase();
    let at = lower.find("retry-after:")? + "retry-after:".len();
    let rest = lower[at..].trim_start();
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let number: f64 = rest[..number_end].parse().ok()?;
    let unit = rest[number_end..].trim_start();
    let seconds = if unit.starts_with("ms") {
        number / 1000.0
    } else if unit.starts_with('m') {
        number * 60.0
    } else if unit.starts_with('h') {
        number * 3600.0
    } else {
        number
    };
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| Duration::from_secs_f64(seconds.min(LONGEST_HINT.as_secs_f64())))
}

/// How long to wait before attempt `attempt + 1` (0-based `attempt` just
/// failed), or `None` to stop: attempts used up, or the server asked for a
/// wait longer than [`MAX_DELAY`].
pub fn delay(attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
    if attempt + 1 >= MAX_ATTEMPTS {
        return None;
    }
    // Jitter of up to half the wait spreads the retries of parallel
    // requests, whatever the registry said: requests told `Retry-After: 1`
    // together would otherwise come back together, into an empty bucket.
    let jitter = |wait: Duration| {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        wait.mul_f64(f64::from(nanos % 1000) / 2000.0)
    };
    if let Some(after) = retry_after {
        return (after <= MAX_DELAY).then(|| (after + jitter(after)).min(MAX_DELAY));
    }
    let base = Duration::from_millis(200) * 2u32.saturating_pow(attempt);
    Some((base + jitter(base)).min(MAX_DELAY))
}

/// Runs `attempt()` until it is final or [`delay`] says stop, sleeping in
/// between. A transient result is dropped before the sleep (it may hold a
/// connection or a host permit).
pub async fn run<T, F, Fut>(mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let mut n = 0;
    loop {
        match attempt().await {
            Attempt::Final(result) => return result,
            Attempt::Transient {
                result,
                retry_after,
            } => {
                let Some(wait) = delay(n, retry_after) else {
                    return result;
                };
                drop(result);
                tracing::debug!(attempt = n, wait_ms = wait.as_millis() as u64, "retrying");
                tokio::time::sleep(wait).await;
                n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::time::Instant;

    use super::*;

    #[test]
    fn a_wait_stated_in_a_429_body_is_read() {
        let ghcr = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"toomanyrequests: retry-after: 10.3ms, allowed: 2000/minute"}]}"#;
        assert_eq!(
            retry_after_in_body(ghcr),
            Some(Duration::from_micros(10_300))
        );
        assert_eq!(
            retry_after_in_body("Retry-After: 2"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after_in_body("retry-after: 1.5m"),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            retry_after_in_body("retry-after: 99999999999999999999h"),
            Some(LONGEST_HINT)
        );
        assert_eq!(retry_after_in_body("slow down"), None);
    }

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
    fn retry_after_in_seconds_and_as_an_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after(" 60 ", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date already past: ask again now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn a_hostile_retry_after_is_bounded_before_any_arithmetic() {
        let now = SystemTime::now();
        for value in ["18446744073709551615", "Fri, 31 Dec 9999 23:59:59 GMT"] {
            let wait = parse_retry_after(value, now).unwrap();
            assert!(wait <= LONGEST_HINT, "{value}: {wait:?}");
            // What the client does with it next: no overflow.
            let _ = now + wait;
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_bounded() {
        assert!(delay(0, None).unwrap() >= Duration::from_millis(200));
        assert!(delay(0, None).unwrap() <= Duration::from_millis(300));
        assert!(delay(2, None).unwrap() >= Duration::from_millis(800));
        // A stated wait is never cut short, and is spread by up to half.
        let told = delay(0, Some(Duration::from_secs(7))).unwrap();
        assert!(
            told >= Duration::from_secs(7) && told <= Duration::from_millis(10_500),
            "{told:?}"
        );
        // Longer than we wait: stop now rather than sleep and fail anyway.
        assert_eq!(delay(0, Some(Duration::from_secs(7200))), None);
        assert_eq!(delay(MAX_ATTEMPTS - 1, None), None);
    }

    /// Runs `run` over a script of attempt results; returns the result,
    /// the attempts made and the (paused, virtual) time spent.
    async fn script(steps: Vec<Option<Option<Duration>>>) -> (usize, u32, Duration) {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let result = run(|| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let step = steps[n as usize];
            async move {
                match step {
                    None => Attempt::Final(n as usize),
                    Some(retry_after) => Attempt::Transient {
                        result: n as usize,
                        retry_after,
                    },
                }
            }
        })
        .await;
        (result, calls.load(Ordering::SeqCst), start.elapsed())
    }

    /// `Retry-After` is waited at least, and spread by up to half again
    /// (requests told the same wait must not come back together).
    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_at_least_and_spread() {
        let (result, calls, elapsed) = script(vec![
            Some(Some(Duration::from_secs(5))),
            Some(Some(Duration::from_secs(20))),
            None,
        ])
        .await;
        assert_eq!((result, calls), (2, 3));
        assert!(
            elapsed >= Duration::from_secs(25) && elapsed <= Duration::from_millis(37_500),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_answer_is_never_retried() {
        let (result, calls, elapsed) = script(vec![None]).await;
        assert_eq!((result, calls, elapsed), (0, 1, Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_back_off_and_stop() {
        let (result, calls, elapsed) = script(vec![Some(None); MAX_ATTEMPTS as usize]).await;
        // The last transient result is what the caller gets.
        assert_eq!((result, calls), (MAX_ATTEMPTS as usize - 1, MAX_ATTEMPTS));
        // 200 + 400 + 800 ms, each with up to half again of jitter.
        assert!(elapsed >= Duration::from_millis(1400), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(2100), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_beyond_the_cap_gives_up_at_once() {
        let (result, calls, elapsed) =
            script(vec![Some(Some(Duration::from_secs(3600))), None]).await;
        assert_eq!((result, calls, elapsed), (0, 1, Duration::ZERO));
    }
}
