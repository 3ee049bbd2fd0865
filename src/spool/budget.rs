//! How much disk the spool may use.
//!
//! Before a job fetches anything, it reserves room for every blob it will
//! fetch into the spool; while the budget holds no such room, it waits
//! (backpressure: never a failure), and the run reports how long jobs
//! waited. Room is taken whole or not at all (tokio's semaphore is fair and
//! takes many permits at once), so two jobs can never each hold half of
//! what both need: no job waits for room while holding some. A job that
//! needs more than the whole budget (an image bigger than it) waits for an
//! empty spool and runs alone, warned about, and may still fill the disk.
//!
//! The budget is `REGMIRROR_SPOOL_MAX` (`20GiB`, `512MiB`, `unlimited`),
//! or three quarters of the space free where the spool lives, measured
//! when the run starts.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Room is counted in these: a budget of up to 256 TiB fits the semaphore's
/// 32-bit counts.
const UNIT: u64 = 64 * 1024;

/// The variable that sets the budget.
pub const VARIABLE: &str = "REGMIRROR_SPOOL_MAX";

/// The disk the spool may use, and who waits for it.
pub struct Budget {
    /// Bytes; `None`: no limit.
    limit: Option<u64>,
    room: Arc<Semaphore>,
    units: u32,
    waited: Mutex<Duration>,
}

/// A job's room in the spool, given back when dropped.
pub struct Room {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Budget {
    /// A budget of `limit` bytes (`None`: unlimited).
    pub fn new(limit: Option<u64>) -> Budget {
        let units = limit.map_or(0, |limit| {
            u32::try_from(limit.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX)
        });
        Budget {
            limit,
            room: Arc::new(Semaphore::new(units as usize)),
            units,
            waited: Mutex::new(Duration::ZERO),
        }
    }

    /// The budget for a spool in `base`: `REGMIRROR_SPOOL_MAX`, else three
    /// quarters of the space free there now (none where that cannot be
    /// measured).
    pub fn for_spool_in(base: &Path) -> Result<Budget> {
        let limit = match std::env::var(VARIABLE) {
            Ok(text) => parse(&text).map_err(|reason| Error::Invalid {
                what: VARIABLE.to_string(),
                reason,
            })?,
            Err(_) => free_space(base).map(|free| free / 4 * 3),
        };
        Ok(Budget::new(limit))
    }

    /// The limit in bytes, if there is one.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Room for `bytes`, waiting until there is (all of the budget when
    /// `bytes` is more than all of it).
    pub async fn reserve(&self, bytes: u64) -> Room {
        if self.limit.is_none() || bytes == 0 {
            return Room { _permit: None };
        }
        let wanted = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.units);
        if let Ok(permit) = self.room.clone().try_acquire_many_owned(wanted) {
            return Room {
                _permit: Some(permit),
            };
        }
        let since = Instant::now();
        let permit = self
            .room
            .clone()
            .acquire_many_owned(wanted)
            .await
            .expect("the budget's semaphore is never closed");
        *self.waited.lock().expect("budget lock poisoned") += since.elapsed();
        Room {
            _permit: Some(permit),
        }
    }

    /// Whether `bytes` is more than the whole budget.
    pub fn exceeded_by(&self, bytes: u64) -> bool {
        self.limit.is_some_and(|limit| bytes > limit)
    }

    /// How long jobs waited for room, in all.
    pub fn waited(&self) -> Duration {
        *self.waited.lock().expect("budget lock poisoned")
    }
}

/// A size: bytes, or a number with `K`, `M`, `G`, `T` (powers of 1024, as
/// `KiB`… and as Docker reads sizes) or `KB`, `MB`, `GB`, `TB` (powers of
/// 1000); `unlimited` for none.
pub fn parse(text: &str) -> std::result::Result<Option<u64>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let digits = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. `20GiB`, `512MiB`, `unlimited`)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "`{other}` in `{text}` is not a unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is not a size the spool can have"));
    }
    Ok(Some(bytes as u64))
}

/// Bytes free for this user on the file system holding `path`.
#[cfg(target_os = "linux")]
fn free_space(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(not(target_os = "linux"))]
fn free_space(_path: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse("64MiB"), Ok(Some(64 << 20)));
        assert_eq!(parse("64M"), Ok(Some(64 << 20)));
        assert_eq!(parse("1.5GiB"), Ok(Some(3 << 29)));
        assert_eq!(parse("20 GB"), Ok(Some(20_000_000_000)));
        assert_eq!(parse("4096"), Ok(Some(4096)));
        assert_eq!(parse("Unlimited"), Ok(None));
        assert!(parse("lots").unwrap_err().contains("not a size"));
        assert!(parse("5 parsecs").unwrap_err().contains("not a unit"));
        assert!(parse("0").is_err());
    }

    /// Room is taken whole: the second job waits until the first gives
    /// its back, and the wait is counted; a job wanting more than the
    /// budget gets all of it.
    #[tokio::test]
    async fn a_job_waits_for_room_and_the_wait_is_counted() {
        let budget = Arc::new(Budget::new(Some(10 * UNIT)));
        let first = budget.reserve(8 * UNIT).await;
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let _room = budget.reserve(4 * UNIT).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "it did not wait for room");
        drop(first);
        waiting.await.unwrap();
        assert!(budget.waited() >= Duration::from_millis(40));
        let all = budget.reserve(1000 * UNIT).await;
        assert!(budget.exceeded_by(1000 * UNIT));
        assert!(budget.room.available_permits() == 0);
        drop(all);
        let unlimited = Budget::new(None);
        let _room = unlimited.reserve(u64::MAX).await;
        assert_eq!(unlimited.waited(), Duration::ZERO);
    }
}
