//! How a run looks while it goes. On a terminal: one overall bar (pairs
//! done of all, bytes moved, rate, time left) and below it a line per blob
//! in flight (which image, to or from where, bytes), redrawn in place; log
//! lines print above the bars (`output::Stderr` writes through the same
//! [`MultiProgress`]), and nothing is left on the screen at the end. In
//! GitHub Actions: the per-image log lines folded into a `::group::`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressState, ProgressStyle};
use regmirror::copy::Reporter;
use regmirror::plan::Job;
use regmirror::registry::meter::{Direction, Meter};
use regmirror::report::{Outcome, Status};

use crate::output;
use crate::render::github;

/// Lines of transfers shown at once; the others are counted.
const MAX_LINES: usize = 6;

/// A transfer gets a line only once it has been in flight this long, so
/// that configs and small layers do not flicker.
const SHOW_AFTER: Duration = Duration::from_millis(300);

/// How often the lines are brought up to date.
const TICK: Duration = Duration::from_millis(100);

/// The window the rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// A run's reporter: the bars (or none when output is not a terminal),
/// and the Actions group.
pub struct Progress {
    view: Option<Arc<View>>,
    /// The thread that redraws the view, joined at the end.
    redraw: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// `sync` or `copy`, for the group's title.
    command: String,
    /// True in GitHub Actions: the run's log lines go into a group.
    actions: bool,
}

/// The bars and what they show; shared with the thread that redraws.
struct View {
    multi: MultiProgress,
    overall: ProgressBar,
    /// Transfers in flight, oldest first, each with its line once it has one.
    live: Mutex<Vec<Live>>,
    /// Bytes of transfers that ended.
    ended_bytes: AtomicU64,
    /// Bytes moved in all, and per second lately: what the overall bar's
    /// `{moved}` and `{rate}` keys print (set by the redraw thread).
    moved: Arc<AtomicU64>,
    rate: Arc<AtomicU64>,
    /// Failed pairs so far.
    failed: AtomicU64,
    /// Set when the run is over: the redraw thread stops.
    done: AtomicBool,
}

/// One transfer in flight.
struct Live {
    meter: Arc<Meter>,
    since: Instant,
    line: Option<ProgressBar>,
}

impl Progress {
    /// A reporter for `command`, drawing into `multi` if given.
    pub fn new(command: &str, multi: Option<MultiProgress>) -> Progress {
        let mut redraw = None;
        let view = multi.map(|multi| {
            let moved = Arc::new(AtomicU64::new(0));
            let rate = Arc::new(AtomicU64::new(0));
            let overall = multi.add(ProgressBar::new(0));
            overall.set_style(overall_style(moved.clone(), rate.clone()));
            let view = Arc::new(View {
                multi,
                overall,
                live: Mutex::default(),
                ended_bytes: AtomicU64::new(0),
                moved,
                rate,
                failed: AtomicU64::new(0),
                done: AtomicBool::new(false),
            });
            let drawn = view.clone();
            // The only thread that draws the transfer lines; reporter calls
            // only add to and remove from `live`.
            redraw = Some(std::thread::spawn(move || drawn.run()));
            view
        });
        Progress {
            view,
            redraw: Mutex::new(redraw),
            command: command.to_string(),
            actions: github::in_actions(),
        }
    }

    /// The run is over: the group closes, the bars go.
    pub fn finish(&self) {
        if self.actions {
            output::command(github::END_GROUP);
        }
        if let Some(view) = &self.view {
            view.done.store(true, Ordering::Relaxed);
            if let Some(redraw) = self.redraw.lock().expect("redraw lock poisoned").take() {
                let _ = redraw.join();
            }
            for live in view.live.lock().expect("live lock poisoned").drain(..) {
                if let Some(line) = live.line {
                    line.finish_and_clear();
                }
            }
            view.overall.finish_and_clear();
            let _ = view.multi.clear();
        }
    }
}

impl Reporter for Progress {
    fn started(&self, jobs: usize, pairs: usize) {
        if self.actions {
            let title = format!("regmirror {}: {jobs} image×tag jobs", self.command);
            output::command(&github::group(&title));
        }
        if let Some(view) = &self.view {
            view.overall.set_length(pairs as u64);
            view.overall.reset_eta();
        }
    }

    fn job_finished(&self, job: &Job, outcomes: &[Outcome]) {
        let Some(view) = &self.view else { return };
        let failed = outcomes
            .iter()
            .filter(|o| o.status == Status::Failed)
            .count() as u64;
        view.failed.fetch_add(failed, Ordering::Relaxed);
        view.overall.inc(job.destinations.len() as u64);
    }

    fn transfer_started(&self, meter: &Arc<Meter>) {
        if let Some(view) = &self.view {
            view.live.lock().expect("live lock poisoned").push(Live {
                meter: meter.clone(),
                since: Instant::now(),
                line: None,
            });
        }
    }

    fn transfer_finished(&self, meter: &Arc<Meter>) {
        let Some(view) = &self.view else { return };
        let mut live = view.live.lock().expect("live lock poisoned");
        if let Some(i) = live.iter().position(|l| Arc::ptr_eq(&l.meter, meter)) {
            let ended = live.remove(i);
            view.ended_bytes.fetch_add(meter.moved(), Ordering::Relaxed);
            if let Some(line) = ended.line {
                line.finish_and_clear();
                view.multi.remove(&line);
            }
        }
    }
}

impl View {
    /// Redraws every [`TICK`] until the run is over: lines for transfers
    /// in flight long enough, their bytes, the totals.
    fn run(&self) {
        let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
        while !self.done.load(Ordering::Relaxed) {
            let in_flight = {
                let mut live = self.live.lock().expect("live lock poisoned");
                let mut shown = live.iter().filter(|l| l.line.is_some()).count();
                let mut in_flight = 0;
                for transfer in live.iter_mut() {
                    let moved = transfer.meter.moved();
                    in_flight += moved;
                    if transfer.line.is_none()
                        && shown < MAX_LINES
                        && transfer.since.elapsed() >= SHOW_AFTER
                    {
                        transfer.line = Some(self.line_for(&transfer.meter));
                        shown += 1;
                    }
                    if let Some(line) = &transfer.line {
                        line.set_position(moved);
                    }
                }
                let hidden = live.len() - shown;
                let more = if hidden > 0 {
                    format!(" · {hidden} more in flight")
                } else {
                    String::new()
                };
                let failed = self.failed.load(Ordering::Relaxed);
                let failed = if failed > 0 {
                    format!(" · {failed} failed")
                } else {
                    String::new()
                };
                self.overall.set_message(format!("{failed}{more}"));
                in_flight
            };
            let moved = self.ended_bytes.load(Ordering::Relaxed) + in_flight;
            self.moved.store(moved, Ordering::Relaxed);
            let now = Instant::now();
            samples.push_back((now, moved));
            while samples
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
            {
                samples.pop_front();
            }
            if let Some((at, then)) = samples.front() {
                let seconds = now.duration_since(*at).as_secs_f64();
                if seconds > 0.0 {
                    let rate = moved.saturating_sub(*then) as f64 / seconds;
                    self.rate.store(rate as u64, Ordering::Relaxed);
                }
            }
            std::thread::sleep(TICK);
        }
    }

    /// A line under the overall bar for one transfer.
    fn line_for(&self, meter: &Meter) -> ProgressBar {
        let line = self.multi.add(ProgressBar::new(meter.size));
        line.set_style(
            ProgressStyle::with_template("  {bytes:>10} / {total_bytes:<10} {wide_msg}")
                .expect("static template is valid"),
        );
        let (arrow, way) = match meter.direction {
            Direction::Download => ("↓", "from"),
            Direction::Upload => ("↑", "to"),
        };
        let short = meter.digest.as_str().get(7..19).unwrap_or_default();
        line.set_message(format!(
            "{arrow} {} {way} {} ({short})",
            image_tag(&meter.image, &meter.reference),
            meter.peer
        ));
        line
    }
}

/// `image:tag`, or `image@sha256:0123456789ab` for a pinned digest.
fn image_tag(image: &str, reference: &str) -> String {
    match reference.split_once(':') {
        Some((algorithm, hex)) => {
            format!("{image}@{algorithm}:{}", hex.get(..12).unwrap_or(hex))
        }
        None => format!("{image}:{reference}"),
    }
}

/// The overall bar: pairs done of all, bytes moved, rate, time left.
fn overall_style(moved: Arc<AtomicU64>, rate: Arc<AtomicU64>) -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {elapsed:>4} [{bar:24}] {pos}/{len} pairs · {moved} · {rate} · ETA {eta}{msg}",
    )
    .expect("static template is valid")
    .progress_chars("=> ")
    .with_key(
        "moved",
        move |_: &ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = write!(out, "{}", HumanBytes(moved.load(Ordering::Relaxed)));
        },
    )
    .with_key(
        "rate",
        move |_: &ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = write!(out, "{}/s", HumanBytes(rate.load(Ordering::Relaxed)));
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_named_by_tag_or_by_a_short_digest() {
        assert_eq!(image_tag("nginx", "1.27"), "nginx:1.27");
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(image_tag("nginx", &digest), "nginx@sha256:abababababab");
    }
}
