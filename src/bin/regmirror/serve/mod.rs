//! `regmirror serve`: `sync` as a long-running service, for teams that do
//! not schedule it from CI (as regsync's `server` and ocync's watch mode).
//!
//! One run at start, then one every `--interval` (stretched by up to a
//! tenth at random); runs never overlap, so no image is ever synced twice
//! at once. A run that fails is tried again sooner, after a back-off (30 s,
//! doubling, never longer than the interval); a run deferred by a rate
//! limit waits the whole interval. The configuration is read again when
//! the file changes (looked at every [`WATCH_EVERY`], which also sees a
//! Kubernetes ConfigMap swapped in) or on SIGHUP: a valid file takes effect
//! at the next run, an invalid one is logged with its line and column and
//! the last valid one kept. SIGTERM or SIGINT lets the run in flight finish
//! within its grace period, keeps its report, and ends the process with 0.
//!
//! - [`metrics`]: what Prometheus scrapes;
//! - [`http`]: the endpoints of `--listen`.

mod http;
pub mod metrics;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use regmirror::copy::Options;
use regmirror::plan::{self, Plan};
use regmirror::report::{Status, Summary};
use regmirror::run as library;
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::commands::{Failure, finished};
use crate::progress::Progress;
use crate::render::{self, json};
use crate::signals;
use metrics::Metrics;

/// How often the configuration file is looked at for a change.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The first wait after a failed run; it doubles with each failure in a
/// row, up to the interval.
const FIRST_BACKOFF: Duration = Duration::from_secs(30);

/// What the loop and the endpoints share.
pub struct Shared {
    /// The service's metrics.
    pub metrics: Metrics,
    /// The last run that ended, if one has.
    last: Mutex<Option<Last>>,
}

/// What the endpoints tell of the last run.
struct Last {
    /// Its `--json` report.
    report: String,
    /// `image:tag → target: reason`, for each pair that failed.
    failing: Vec<String>,
    /// When it ended.
    ended: SystemTime,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            metrics: Metrics::new(),
            last: Mutex::new(None),
        }
    }

    /// Ready (what the last run did) or not (why), as text for `/readyz`.
    pub fn readiness(&self) -> Result<String, String> {
        let last = self.last.lock().expect("last-run lock poisoned");
        let Some(last) = last.as_ref() else {
            return Err("not ready: no run has ended yet\n".to_string());
        };
        let when = humantime::format_rfc3339_seconds(last.ended);
        if last.failing.is_empty() {
            Ok(format!(
                "ready: the last run (ended {when}) failed no pair\n"
            ))
        } else {
            Err(format!(
                "not ready: the last run (ended {when}) failed {} pair(s):\n{}\n",
                last.failing.len(),
                last.failing.join("\n")
            ))
        }
    }

    /// The last run's `--json` report.
    pub fn latest_report(&self) -> Option<String> {
        let last = self.last.lock().expect("last-run lock poisoned");
        last.as_ref().map(|last| last.report.clone())
    }

    fn keep(&self, summary: &Summary, report: String, ended: SystemTime) {
        let failing = summary
            .outcomes
            .iter()
            .filter(|o| o.status == Status::Failed)
            .map(|o| {
                let reason = o
                    .failure
                    .as_ref()
                    .map_or_else(String::new, |f| format!(": {}", f.chain.join(": ")));
                format!("{}:{} → {}{reason}", o.image, o.tag, o.target)
            })
            .collect();
        *self.last.lock().expect("last-run lock poisoned") = Some(Last {
            report,
            failing,
            ended,
        });
    }
}

/// The configuration file as last read, valid.
struct Config {
    path: PathBuf,
    name: String,
    text: String,
    /// A changed text that was refused, so that it is reported once.
    refused: Option<String>,
}

impl Config {
    /// Reads and checks the file: an error is a usage error (exit 2).
    fn load(path: &Path) -> Result<Config, Failure> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read `{name}`"))
            .map_err(|error| Failure { code: 2, error })?;
        plan::load(&name, &text).map_err(|problems| Failure {
            code: 2,
            error: anyhow!(problems),
        })?;
        Ok(Config {
            path: path.to_path_buf(),
            name,
            text,
            refused: None,
        })
    }

    /// The plan of the text last taken.
    fn plan(&self) -> Result<Plan, String> {
        plan::load(&self.name, &self.text).map_err(|problems| problems.to_string())
    }

    /// Reads the file again: a valid change is taken (from the next run
    /// on), an invalid one is logged with its place and the text in use
    /// kept. `again` logs a refused text again (SIGHUP asked).
    fn reload(&mut self, metrics: &Metrics, again: bool) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) => {
                if again {
                    tracing::error!(
                        "cannot read `{}` ({error}); the configuration in use is kept",
                        self.name
                    );
                }
                return;
            }
        };
        if text == self.text || (!again && self.refused.as_ref() == Some(&text)) {
            return;
        }
        match plan::load(&self.name, &text) {
            Ok(plan) => {
                tracing::info!(
                    "`{}` changed: {}; it takes effect at the next run",
                    self.name,
                    plan.size()
                );
                self.text = text;
                self.refused = None;
                metrics.reloaded(true);
            }
            Err(problems) => {
                tracing::error!(
                    "`{}` changed but is not valid; the configuration in use is kept:\n{problems}",
                    self.name
                );
                self.refused = Some(text);
                metrics.reloaded(false);
            }
        }
    }
}

/// Runs `sync` on a schedule until SIGTERM or SIGINT; 0 then.
pub async fn serve(config: &Path, args: ServeArgs, rows: render::Rows) -> Result<u8, Failure> {
    let mut config = Config::load(config)?;
    if args.interval.is_zero() {
        return Err(Failure {
            code: 2,
            error: anyhow!("--interval must be longer than 0s"),
        });
    }
    let cancel = CancellationToken::new();
    let signal = Arc::new(AtomicI32::new(0));
    let _stopping = signals::on_signal(cancel.clone(), signal.clone());
    let hangups = signals::hangups();
    let shared = Arc::new(Shared::new());
    let endpoints = match args.listen {
        Some(address) => Some(
            http::start(address, shared.clone(), cancel.clone())
                .await
                .map_err(|error| Failure { code: 2, error })?,
        ),
        None => None,
    };
    tracing::info!(
        "serving `{}`: a run now, then every {}{}",
        config.name,
        humantime::format_duration(args.interval),
        args.listen
            .map(|a| format!("; /healthz, /readyz, /metrics and /runs/latest on http://{a}"))
            .unwrap_or_default()
    );
    let mut failed_in_a_row = 0u32;
    loop {
        config.reload(&shared.metrics, false);
        let started = tokio::time::Instant::now();
        let code = run(&config, &args, &cancel, &signal, rows, &shared).await;
        if cancel.is_cancelled() {
            break;
        }
        let wait = if matches!(code, 1..=4) {
            failed_in_a_row += 1;
            let backoff = FIRST_BACKOFF.saturating_mul(1 << (failed_in_a_row - 1).min(16));
            backoff.min(args.interval)
        } else {
            failed_in_a_row = 0;
            args.interval
        };
        let next = started + wait + wait.mul_f64(fastrand::f64() / 10.0);
        tracing::info!(
            "next run in {}",
            humantime::format_duration(Duration::from_secs(
                next.saturating_duration_since(tokio::time::Instant::now())
                    .as_secs()
            ))
        );
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => break,
                () = cancel.cancelled() => break,
                () = hangups.notified() => config.reload(&shared.metrics, true),
                () = tokio::time::sleep(WATCH_EVERY) => config.reload(&shared.metrics, false),
            }
        }
        if cancel.is_cancelled() {
            break;
        }
    }
    if let Some(endpoints) = endpoints {
        // Stopped by the same token; a scrape in flight gets a moment.
        let _ = tokio::time::timeout(Duration::from_secs(5), endpoints).await;
    }
    tracing::info!("stopped");
    Ok(0)
}

/// One `sync` of the whole configuration: logged as `sync` logs it,
/// counted, kept for the endpoints and `--reports`. Its exit code.
async fn run(
    config: &Config,
    args: &ServeArgs,
    cancel: &CancellationToken,
    signal: &AtomicI32,
    rows: render::Rows,
    shared: &Shared,
) -> i32 {
    let plan = match config.plan() {
        Ok(plan) => plan,
        Err(problems) => {
            // Checked when it was taken; only a bug gets here.
            tracing::error!("the configuration in use no longer loads: {problems}");
            shared.metrics.failed_to_start();
            return 1;
        }
    };
    let options = Options {
        jobs: args.jobs,
        cancel: cancel.clone(),
        ..Options::default()
    };
    let progress = Arc::new(Progress::new("sync", None));
    let summary = library::sync(plan, options, progress.clone()).await;
    progress.finish();
    let mut summary = match summary {
        Ok(summary) => summary,
        Err(error) => {
            let error = anyhow::Error::new(error);
            tracing::error!("the run could not start: {error:#}");
            shared.metrics.failed_to_start();
            return 1;
        }
    };
    if cancel.is_cancelled() {
        summary.interrupted = Some(signal.load(Ordering::SeqCst));
    }
    finished("sync", &summary, rows);
    let ended = SystemTime::now();
    shared.metrics.record(&summary, ended);
    let report = json::Document::new("sync", &summary).to_json();
    if let Some(dir) = &args.reports
        && let Err(error) = keep_report(dir, args.keep_reports, &report, summary.started)
    {
        tracing::error!(
            "cannot keep the report in `{}`: {error} (the run's result is unchanged)",
            dir.display()
        );
    }
    shared.keep(&summary, report, ended);
    summary.exit_code()
}

/// Writes `report` as `DIR/sync-<start time>.json` (whole or not at all)
/// and removes all but the newest `keep`.
fn keep_report(
    dir: &Path,
    keep: usize,
    report: &str,
    started: Option<SystemTime>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let stamp: String = humantime::format_rfc3339_millis(started.unwrap_or_else(SystemTime::now))
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let name = format!("sync-{stamp}.json");
    let partial = dir.join(format!(".{name}.partial"));
    std::fs::write(&partial, report)?;
    std::fs::rename(&partial, dir.join(&name))?;
    let mut kept: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("sync-") && n.ends_with(".json"))
        })
        .collect();
    // The stamps sort as the times do.
    kept.sort();
    let surplus = kept.len().saturating_sub(keep);
    for old in &kept[..surplus] {
        std::fs::remove_file(old)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_kept_whole_and_the_oldest_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let at = |s: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s));
        for s in 0..5 {
            keep_report(dir.path(), 3, &format!("{{\"run\":{s}}}"), at(s)).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "sync-20270115T080002.000Z.json",
                "sync-20270115T080003.000Z.json",
                "sync-20270115T080004.000Z.json"
            ]
        );
        let newest = std::fs::read_to_string(dir.path().join(&names[2])).unwrap();
        assert_eq!(newest, "{\"run\":4}");
    }

    #[test]
    fn readiness_waits_for_a_run_and_names_what_failed() {
        let shared = Shared::new();
        assert!(shared.readiness().unwrap_err().contains("no run has ended"));
        let failed = regmirror::report::Outcome::new(
            "k3s",
            "v1.31",
            "quay",
            "quay.io/acme/k3s:v1.31".into(),
            Status::Failed,
        );
        let summary = Summary {
            outcomes: vec![failed],
            ..Summary::default()
        };
        shared.keep(&summary, "{}".into(), SystemTime::UNIX_EPOCH);
        let why = shared.readiness().unwrap_err();
        assert!(why.contains("k3s:v1.31 → quay"), "{why}");
        shared.keep(&Summary::default(), "{}".into(), SystemTime::UNIX_EPOCH);
        assert!(shared.readiness().is_ok());
        assert_eq!(shared.latest_report().as_deref(), Some("{}"));
    }
}
