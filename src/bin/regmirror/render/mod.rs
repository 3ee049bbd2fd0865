//! How results look: the library returns data ([`Summary`], checks, plans);
//! this module makes text of it. Tables for the terminal here; `json` (the
//! `--json` report and its schema), `markdown` (the step summary) and
//! `github` (workflow commands, and output no registry text can turn into
//! one) beside it.

pub mod github;
pub mod json;
pub mod markdown;
pub mod reference;

use std::fmt::Write as _;

use regmirror::digest::Digest;
use regmirror::plan::Plan;
use regmirror::report::{FailureKind, Outcome, Status, Summary};
use regmirror::verify::{Check, State};

/// Human sizes: `512 B`, `4.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Left-aligned columns separated by two spaces.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for cells in std::iter::once(&header).chain(rows) {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    }
    out
}

/// `in 1.2s; blobs: 3 uploaded (4.0 MiB), 1 mounted, 2 skipped; 5 manifests
/// pushed`, the parts joined by `separator`: what follows the counts in the
/// table and the step summary.
pub fn totals(summary: &Summary, separator: &str) -> String {
    let totals = summary.totals();
    let mut text = format!(
        "in {:.1}s{separator}blobs: {} uploaded ({}), {} mounted, {} skipped{separator}{} manifests pushed",
        summary.duration.as_secs_f64(),
        totals.blobs_uploaded,
        bytes(totals.bytes_uploaded),
        totals.blobs_mounted,
        totals.blobs_skipped,
        totals.manifests_pushed,
    );
    // Said only when it happened: the spool's budget held jobs back.
    if summary.spool_waited >= std::time::Duration::from_millis(100) {
        text.push_str(&format!(
            "{separator}jobs waited {:.1}s for room in the spool (`REGMIRROR_SPOOL_MAX`)",
            summary.spool_waited.as_secs_f64()
        ));
    }
    text
}

/// Which outcomes get a row in the table on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// None: the totals line and the failures (`-q`).
    None,
    /// What changed, failed or was left to do; pairs already present are
    /// only counted (the default).
    Changed,
    /// Every pair (`-v`).
    All,
}

/// Column widths at most, so that a row fits 100 columns; full values are
/// in `--json`.
const IMAGE_WIDTH: usize = 24;
const TAG_WIDTH: usize = 20;
const TARGET_WIDTH: usize = 10;

/// `text` in at most `width` characters: the start and the end kept, the
/// middle given up for `…` (tags and names differ most at their ends).
pub fn fit(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_string();
    }
    let head = (width - 1) / 2;
    let tail = width - 1 - head;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(count - tail).collect();
    format!("{start}…{end}")
}

/// The table for stderr: a row per outcome `rows` asks for, the totals,
/// then every failure.
pub fn summary_table(summary: &Summary, rows: Rows) -> String {
    let header = [
        "IMAGE",
        "TAG",
        "TARGET",
        "STATUS",
        "UP/MOUNT/SKIP",
        "BYTES",
        "TIME",
    ];
    let shown = |o: &&Outcome| match rows {
        Rows::None => false,
        Rows::Changed => o.status != Status::Present,
        Rows::All => true,
    };
    let rows: Vec<Vec<String>> = summary
        .outcomes
        .iter()
        .filter(shown)
        .map(|o| {
            vec![
                fit(&o.image, IMAGE_WIDTH),
                fit(&o.tag, TAG_WIDTH),
                fit(&o.target, TARGET_WIDTH),
                o.status.as_str().to_string(),
                format!(
                    "{}/{}/{}",
                    o.transfer.blobs_uploaded, o.transfer.blobs_mounted, o.transfer.blobs_skipped
                ),
                bytes(o.transfer.bytes_uploaded),
                format!("{:.1}s", o.duration.as_secs_f64()),
            ]
        })
        .collect();
    let mut out = if rows.is_empty() {
        String::new()
    } else {
        render_table(&header, &rows) + "\n"
    };
    let _ = writeln!(out, "{} {}", summary.counts(), totals(summary, "; "));
    if summary.exit_code() == regmirror::report::EXIT_DEFERRED {
        let _ = writeln!(
            out,
            "nothing was mirrored: every pair was deferred by a rate limit (exit {}); the next run picks them up",
            regmirror::report::EXIT_DEFERRED
        );
    }
    // Deferred results and refused referrers are not failures: listed
    // apart, as in the step summary.
    for (heading, status) in [
        ("failures", Status::Failed),
        ("deferred by rate limits", Status::Deferred),
        ("referrers the targets refuse", Status::Refused),
    ] {
        let listed: Vec<&Outcome> = summary
            .outcomes
            .iter()
            .filter(|o| o.failure.is_some() && o.status == status)
            .collect();
        if listed.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{heading}:");
        for o in listed {
            let failure = o.failure.as_ref().expect("filtered on failure");
            let _ = writeln!(
                out,
                "  {}:{} → {} ({}): {}",
                o.image,
                o.tag,
                o.destination,
                o.target,
                failure.message()
            );
        }
    }
    out
}

/// One row per image × tag: the source reference (with the pinned
/// digest when the file gives one) and every `target=repository:tag`.
pub fn plan_table(plan: &Plan) -> String {
    let rows: Vec<Vec<String>> = plan
        .jobs
        .iter()
        .map(|job| {
            let source = match &job.pinned {
                Some(digest) => format!("{}@{digest}", job.source),
                None => format!("{}:{}", job.source, job.reference),
            };
            let destinations: Vec<String> = job
                .destinations
                .iter()
                .map(|d| format!("{}={}", d.name, d.reference()))
                .collect();
            let tag = job.destinations.first().map(|d| d.tag.clone());
            vec![
                job.image.clone(),
                tag.unwrap_or_else(|| job.reference.clone()),
                source,
                destinations.join(" "),
            ]
        })
        .collect();
    let mut rows = rows;
    for query in &plan.queries {
        let destinations: Vec<String> = query
            .targets
            .iter()
            .map(|(name, repository)| format!("{name}={repository}"))
            .collect();
        rows.push(vec![
            query.image.clone(),
            query.filter.text.clone(),
            query.repository.to_string(),
            destinations.join(" "),
        ]);
    }
    let mut out = render_table(&["IMAGE", "TAG", "SOURCE", "TARGETS"], &rows);
    out.push_str(&format!("\n{}\n", plan.size()));
    out
}

/// The side-by-side table, then the details of every problem.
pub fn verify_table(checks: &[Check]) -> String {
    let short = |d: &Option<Digest>| {
        d.as_ref()
            .map(|d| d.short().to_string())
            .unwrap_or_else(|| "-".into())
    };
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            let state = match &c.state {
                State::Match if c.cut.is_some() => "ok (platforms)".to_string(),
                State::Match => "ok".to_string(),
                State::Mismatch => "MISMATCH".to_string(),
                State::Missing => "MISSING".to_string(),
                State::Incomplete(parts) => format!("INCOMPLETE ({} missing)", parts.len()),
                State::Corrupt { corrupt, missing } if missing.is_empty() => {
                    format!("CORRUPT ({})", corrupt.len())
                }
                State::Corrupt { corrupt, missing } => {
                    format!("CORRUPT ({}; {} missing)", corrupt.len(), missing.len())
                }
                State::Error(failure) if failure.kind == FailureKind::RateLimited => {
                    "DEFERRED".to_string()
                }
                State::Error(_) => "ERROR".to_string(),
                State::Private(_) => "PRIVATE".to_string(),
            };
            vec![
                c.image.clone(),
                c.tag.clone(),
                c.target.clone(),
                short(&c.source),
                short(&c.found),
                state,
            ]
        })
        .collect();
    let mut out = render_table(
        &["IMAGE", "TAG", "TARGET", "SOURCE", "TARGET DIGEST", "STATE"],
        &rows,
    );
    for c in checks {
        match &c.state {
            State::Incomplete(parts) => {
                for part in parts {
                    out.push_str(&format!("  {} lacks {part}\n", c.destination));
                }
            }
            State::Corrupt { corrupt, missing } => {
                for part in corrupt {
                    out.push_str(&format!("  {}: {part}\n", c.destination));
                }
                for part in missing {
                    out.push_str(&format!("  {} lacks {part}\n", c.destination));
                }
            }
            State::Error(failure) => {
                out.push_str(&format!("  {}: {}\n", c.destination, failure.message()))
            }
            State::Private(_) => out.push_str(&format!(
                "  {} cannot be pulled without credentials: make the package public (GHCR: package settings → Change visibility, or the organization's default)\n",
                c.destination
            )),
            State::Mismatch => out.push_str(&format!(
                "  {} has {} but the source has {}{}\n",
                c.destination,
                c.found.as_ref().map(Digest::as_str).unwrap_or("-"),
                c.source.as_ref().map(Digest::as_str).unwrap_or("-"),
                c.cut
                    .as_ref()
                    .map(|cut| format!(", cut by `platforms` to {cut}"))
                    .unwrap_or_default()
            )),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use regmirror::report::{FailureKind, sample};

    fn outcome(status: Status, failure: Option<FailureKind>) -> Outcome {
        sample(
            "k3s",
            "v1",
            status,
            failure.map(|kind| (kind, &["boom"][..])),
        )
    }

    #[test]
    fn table_lists_failures_with_cause() {
        let summary = Summary {
            outcomes: vec![outcome(Status::Failed, Some(FailureKind::Other))],
            ..Summary::default()
        };
        let table = summary_table(&summary, Rows::Changed);
        assert!(table.contains("FAILED"), "{table}");
        assert!(
            table.contains("k3s:v1 → ghcr.io/a/k3s:v1 (ghcr): boom"),
            "{table}"
        );
        assert_eq!(bytes(4 * 1024 * 1024), "4.0 MiB");
    }

    #[test]
    fn present_pairs_are_only_counted_unless_asked_and_rows_fit_100_columns() {
        let long = "a-very-long-image-name-from-a-generated-config";
        let summary = Summary {
            outcomes: vec![
                sample(
                    long,
                    "v1.30.4-k3s1-with-a-long-suffix",
                    Status::Copied,
                    None,
                ),
                sample("pg", "16", Status::Present, None),
            ],
            ..Summary::default()
        };
        let changed = summary_table(&summary, Rows::Changed);
        assert!(!changed.contains("pg "), "{changed}");
        assert!(changed.contains("1 copied, 1 present"), "{changed}");
        let all = summary_table(&summary, Rows::All);
        assert!(all.contains("pg "), "{all}");
        let rows = all.split("\n\n").next().unwrap();
        assert!(rows.lines().all(|l| l.chars().count() <= 100), "{all}");
        assert!(all.contains("a-very-long…rated-config"), "{all}");
        let quiet = summary_table(&summary, Rows::None);
        assert_eq!(quiet.lines().count(), 1, "{quiet}");
        assert_eq!(fit("abcdef", 5), "ab…ef");
        assert_eq!(fit("abc", 5), "abc");
    }

    #[test]
    fn table_lists_deferred_apart_from_failures() {
        let summary = Summary {
            outcomes: vec![
                sample(
                    "k3s",
                    "v1",
                    Status::Failed,
                    Some((FailureKind::Other, &["boom"])),
                ),
                sample(
                    "pg",
                    "16",
                    Status::Deferred,
                    Some((FailureKind::RateLimited, &["rate limited"])),
                ),
            ],
            ..Summary::default()
        };
        let table = summary_table(&summary, Rows::Changed);
        let (failures, deferred) = table
            .split_once("deferred by rate limits:")
            .expect("a deferred section");
        assert!(failures.contains("failures:\n  k3s:v1"), "{table}");
        assert!(!failures.contains("pg:16 →"), "{table}");
        assert!(deferred.contains("pg:16 → ghcr.io/a/pg:16"), "{table}");
    }
}
