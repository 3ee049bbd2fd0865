//! How a run looks while it goes: a progress bar on a terminal, and in
//! GitHub Actions the per-image log lines folded into a `::group::`.

use indicatif::{ProgressBar, ProgressStyle};
use regmirror::copy::Reporter;
use regmirror::report::{Outcome, Status};

use crate::render::github;

/// A run's reporter: a bar of jobs (or none when output is not a
/// terminal), and the Actions group.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// `sync` or `copy`, for the group's title.
    command: String,
    /// True in GitHub Actions: the run's log lines go into a group.
    actions: bool,
}

impl Progress {
    /// A reporter for `command`; a bar only if `bar`.
    pub fn new(command: &str, bar: bool) -> Progress {
        let bar = bar.then(|| {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .expect("static template is valid");
            bar.set_style(style);
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            command: command.to_string(),
            actions: github::in_actions(),
        }
    }

    /// The run is over: the group closes, the bar goes.
    pub fn finish(&self) {
        if self.actions {
            eprintln!("{}", github::END_GROUP);
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Reporter for Progress {
    fn started(&self, jobs: usize) {
        if self.actions {
            let title = format!("regmirror {}: {jobs} image×tag jobs", self.command);
            eprintln!("{}", github::group(&title));
        }
        if let Some(bar) = &self.bar {
            bar.set_length(jobs as u64);
        }
    }

    fn job_finished(&self, outcomes: &[Outcome]) {
        if let (Some(bar), Some(first)) = (&self.bar, outcomes.first()) {
            bar.inc(1);
            let failed = outcomes
                .iter()
                .filter(|o| o.status == Status::Failed)
                .count();
            let note = if failed > 0 {
                format!(" ({failed} failed)")
            } else {
                String::new()
            };
            bar.set_message(format!("{}:{}{note}", first.image, first.tag));
        }
    }
}
