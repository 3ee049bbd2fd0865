//! The `--summary` report: markdown a person reads in the GitHub Actions run
//! page (`$GITHUB_STEP_SUMMARY`). Totals first, then every failure, then one
//! row per image.
//!
//! GitHub caps a step summary at 1 MiB, and a 7,526-image run would pass it,
//! so the tables stop after [`MAX_ROWS`] rows and say how many were left out
//! (the `--json` report has them all).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use regmirror::report::{Outcome, Status, Summary};

use super::{bytes, totals};

/// Rows per table before the rest are counted instead of listed.
pub const MAX_ROWS: usize = 500;

/// A table cell: pipes escaped, one line, code spans where asked.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// A cell of text that may come from a registry (an error, with the body
/// the registry sent): a code span, in which markdown renders no link,
/// image, autolink or HTML.
fn inert(text: &str) -> String {
    code(text)
}

fn code(text: &str) -> String {
    format!("`{}`", cell(text).replace('`', "'"))
}

#[derive(Default)]
struct ImageRow<'a> {
    tags: Vec<&'a str>,
    targets: Vec<&'a str>,
    copied: usize,
    present: usize,
    verified: usize,
    planned: usize,
    failed: usize,
    deferred: usize,
    bytes: u64,
}

fn push_unique<'a>(list: &mut Vec<&'a str>, value: &'a str) {
    if !list.contains(&value) {
        list.push(value);
    }
}

fn more(out: &mut String, left_out: usize, what: &str) {
    if left_out > 0 {
        let _ = writeln!(
            out,
            "\n… and {left_out} more {what} (the `--json` report lists them all)."
        );
    }
}

/// The summary's first line: ✅ all done; ⚠️ done, with work deferred to
/// the next run or referrers refused; ❌ failed, or nothing mirrored at all
/// because everything was deferred (exit 75).
fn headline(command: &str, summary: &Summary) -> String {
    let (deferred, refused) = (
        summary.count(Status::Deferred),
        summary.count(Status::Refused),
    );
    match summary.exit_code() {
        0 if deferred + refused == 0 => format!("✅ regmirror {command}"),
        0 => {
            let mut parts = Vec::new();
            if deferred > 0 {
                parts.push(format!("{deferred} deferred to the next run"));
            }
            if refused > 0 {
                parts.push(format!("{refused} referrers refused"));
            }
            format!("⚠️ regmirror {command}: {}", parts.join(", "))
        }
        regmirror::report::EXIT_DEFERRED => {
            format!("❌ regmirror {command}: nothing mirrored, {deferred} deferred by rate limits")
        }
        _ => format!("❌ regmirror {command}"),
    }
}

/// The markdown for `command`'s run.
pub fn markdown(command: &str, summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {}\n", headline(command, summary));
    let _ = writeln!(out, "**{}** {}\n", summary.counts(), totals(summary, " · "));

    problems(&mut out, summary, Status::Failed, "Failures", "failures");
    problems(
        &mut out,
        summary,
        Status::Deferred,
        "Deferred by rate limits (the next run picks them up)",
        "deferred",
    );
    problems(
        &mut out,
        summary,
        Status::Refused,
        "Referrers the targets refuse (their images are copied)",
        "refused",
    );

    // One row per image, in plan order.
    let mut order = Vec::new();
    let mut images: BTreeMap<&str, ImageRow> = BTreeMap::new();
    for o in &summary.outcomes {
        let row = images.entry(&o.image).or_insert_with(|| {
            order.push(o.image.as_str());
            ImageRow::default()
        });
        push_unique(&mut row.tags, &o.tag);
        push_unique(&mut row.targets, &o.target);
        match o.status {
            Status::Copied => row.copied += 1,
            Status::Present => row.present += 1,
            Status::Verified => row.verified += 1,
            Status::Planned => row.planned += 1,
            Status::Failed => row.failed += 1,
            Status::Deferred => row.deferred += 1,
            // Counted in the totals line; not per image.
            Status::Cancelled | Status::Refused => {}
        }
        row.bytes += o.transfer.bytes_uploaded;
    }
    if !order.is_empty() {
        let _ = writeln!(out, "### Images ({})\n", order.len());
        let _ = writeln!(
            out,
            "| image | tags | targets | copied | present | verified | would copy | failed | deferred | uploaded |"
        );
        let _ = writeln!(out, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|");
        for name in order.iter().take(MAX_ROWS) {
            let row = &images[name];
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(name),
                code(&row.tags.join(", ")),
                cell(&row.targets.join(", ")),
                row.copied,
                row.present,
                row.verified,
                row.planned,
                row.failed,
                row.deferred,
                bytes(row.bytes)
            );
        }
        more(&mut out, order.len().saturating_sub(MAX_ROWS), "images");
    }
    out
}

/// A table of the outcomes with `status`, each with its error.
fn problems(out: &mut String, summary: &Summary, status: Status, title: &str, what: &str) {
    let rows: Vec<&Outcome> = summary
        .outcomes
        .iter()
        .filter(|o| o.status == status)
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "### {title} ({})\n", rows.len());
    let _ = writeln!(out, "| image | tag | target | destination | error |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for o in rows.iter().take(MAX_ROWS) {
        let message = o.failure.as_ref().map(|f| f.message()).unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(&o.image),
            code(&o.tag),
            cell(&o.target),
            code(&o.destination),
            inert(&message)
        );
    }
    more(out, rows.len().saturating_sub(MAX_ROWS), what);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use regmirror::report::{FailureKind, sample};

    fn outcome(image: &str, tag: &str, status: Status) -> Outcome {
        let chain = &["push `x`", "status 500 | oops"][..];
        let failure = (status == Status::Failed).then_some((FailureKind::Other, chain));
        sample(image, tag, status, failure)
    }

    #[test]
    fn totals_then_failures_then_images() {
        let summary = Summary {
            outcomes: vec![
                outcome("k3s", "v1", Status::Copied),
                outcome("k3s", "v2", Status::Failed),
                outcome("pause", "3.9", Status::Present),
            ],
            ..Summary::default()
        };
        let text = markdown("sync", &summary);
        let totals = text.find("1 copied, 1 present, 1 failed").expect(&text);
        let failures = text.find("### Failures (1)").expect(&text);
        let images = text.find("### Images (2)").expect(&text);
        assert!(totals < failures && failures < images, "{text}");
        assert!(text.contains("`push 'x': status 500 \\| oops`"), "{text}");
        assert!(
            text.contains("| k3s | `v1, v2` | ghcr | 1 | 0 | 0 | 0 | 1 | 0 |"),
            "{text}"
        );
    }

    #[test]
    fn deferred_results_have_their_own_table_and_do_not_fail_the_run() {
        let deferred = sample(
            "postgres",
            "17",
            Status::Deferred,
            Some((
                FailureKind::RateLimited,
                &["rate limited at `docker.io`: 10 pulls left"][..],
            )),
        );
        let summary = Summary {
            outcomes: vec![outcome("k3s", "v1", Status::Copied), deferred],
            ..Summary::default()
        };
        assert_eq!(summary.exit_code(), 0);
        let text = markdown("sync", &summary);
        assert!(
            text.starts_with("## ⚠️ regmirror sync: 1 deferred to the next run"),
            "{text}"
        );
        let all_deferred = Summary {
            outcomes: vec![sample(
                "postgres",
                "17",
                Status::Deferred,
                Some((FailureKind::RateLimited, &["rate limited"][..])),
            )],
            ..Summary::default()
        };
        assert!(
            markdown("sync", &all_deferred)
                .starts_with("## ❌ regmirror sync: nothing mirrored, 1 deferred by rate limits")
        );
        assert!(!text.contains("### Failures"), "{text}");
        assert!(
            text.contains("### Deferred by rate limits (the next run picks them up) (1)"),
            "{text}"
        );
        assert!(text.contains("10 pulls left"), "{text}");
        assert!(
            text.contains("1 copied, 0 present, 1 deferred, 0 failed"),
            "{text}"
        );
    }

    #[test]
    fn registry_text_cannot_become_links_images_or_html() {
        let chain = &[
            "`PUT x` answered 400: ![x](http://evil.example/x.png) <img src=x> [click](http://evil.example) `code` http://evil.example",
        ][..];
        let summary = Summary {
            outcomes: vec![sample(
                "k3s",
                "v1",
                Status::Failed,
                Some((FailureKind::Other, chain)),
            )],
            ..Summary::default()
        };
        let text = markdown("sync", &summary);
        let row = text
            .lines()
            .find(|l| l.contains("evil.example"))
            .expect(&text);
        let message = row.rsplit(" | ").next().expect(row);
        // One code span, wholly: nothing inside is rendered as markdown.
        assert!(message.starts_with('`'), "{row}");
        assert_eq!(
            message.trim_end_matches(" |").matches('`').count(),
            2,
            "{row}"
        );
    }

    #[test]
    fn long_runs_are_cut_with_a_count() {
        let outcomes = (0..MAX_ROWS + 7)
            .map(|i| outcome(&format!("image{i}"), "v1", Status::Present))
            .collect();
        let text = markdown(
            "sync",
            &Summary {
                outcomes,
                ..Summary::default()
            },
        );
        assert!(text.contains("… and 7 more images"), "{}", &text[..200]);
        assert_eq!(text.matches("| v1 |").count(), 0);
        assert_eq!(text.matches("| `v1` |").count(), MAX_ROWS);
    }
}
