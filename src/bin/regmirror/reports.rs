//! What a run leaves behind: the `--json` report, the `--summary`
//! markdown (the GitHub step summary), and, in Actions, annotations.

use regmirror::report::Summary;

use crate::render::{github, json, markdown};

use crate::cli::ReportArgs;
use crate::output::{self, errln};

/// Writes the reports the user asked for and, in GitHub Actions, the
/// annotations. A report that cannot be written is named on stderr; it
/// does not change the run's exit code (the copies happened all the same).
pub fn write(command: &str, summary: &Summary, args: &ReportArgs) {
    let unwritten = |what: &str, path: &std::path::Path, error: std::io::Error| {
        errln!(
            "error: write the {what} `{}`: {error} (the run's result is unchanged)",
            path.display()
        );
    };
    if let Some(path) = &args.json {
        let document = json::Document::new(command, summary);
        if let Err(error) = std::fs::write(path, document.to_json()) {
            unwritten("JSON report", path, error);
        }
    }
    if let Some(path) = &args.summary {
        use std::io::Write as _;
        // GitHub's step summary file is shared by the step's commands: append.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| file.write_all(markdown::markdown(command, summary).as_bytes()));
        if let Err(error) = written {
            unwritten("summary", path, error);
        }
    }
    if github::in_actions() {
        for line in github::annotations(summary) {
            output::command(&line);
        }
    }
}
