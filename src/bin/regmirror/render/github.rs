//! GitHub Actions workflow commands: `::error::` and `::warning::`
//! annotations for what went wrong, and `::group::` around long logs.
//!
//! They are plain lines; the runner reads them from stdout and stderr alike,
//! and the binary writes them to stderr so they stay in order with the log.
//! Values are escaped as the runner expects (`%`, CR and LF in messages;
//! also `:` and `,` in properties), so a message cannot end the command
//! early or inject another one.

use regmirror::report::{FailureKind, Outcome, Status, Summary};

/// True when running as a GitHub Actions step.
pub fn in_actions() -> bool {
    std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true")
}

fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// Text that is not a workflow command of ours, made unable to become one
/// in either of the runner's grammars: a line that starts with `::` (after
/// any spaces, which the runner skips) gets a `\\` in front, and `##[` (the
/// legacy form, which actions/runner's `ActionCommand.TryParse` finds
/// anywhere in a line) is written `## [`. Log lines, tables and errors carry
/// text from registries (error bodies, header values); only [`command`] and
/// [`group`] write commands.
pub fn neutralize(text: &str) -> std::borrow::Cow<'_, str> {
    // The runner reads lines as .NET does: a lone CR ends one too.
    let is_command = |line: &str| line.trim_start().starts_with("::");
    if !text.contains("##[") && !text.split(['\n', '\r']).any(is_command) {
        return std::borrow::Cow::Borrowed(text);
    }
    let text = regmirror::text::break_legacy_commands(text);
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.split_inclusive(['\n', '\r']) {
        if is_command(line) {
            out.push('\\');
        }
        out.push_str(line);
    }
    std::borrow::Cow::Owned(out)
}

/// One workflow command line: `::NAME title=TITLE::MESSAGE`.
pub fn command(name: &str, title: &str, message: &str) -> String {
    format!(
        "::{name} title={}::{}",
        escape_property(title),
        regmirror::text::break_legacy_commands(&escape_data(message))
    )
}

/// `::group::TITLE`; close it with [`END_GROUP`].
pub fn group(title: &str) -> String {
    format!("::group::{}", escape_data(title))
}

/// Ends the open group.
pub const END_GROUP: &str = "::endgroup::";

fn annotation(o: &Outcome) -> Option<String> {
    let failure = o.failure.as_ref()?;
    let place = format!("{}:{} → {}", o.image, o.tag, o.destination);
    let (level, title) = match failure.kind {
        _ if o.status == Status::Refused => {
            ("warning", "regmirror: referrer refused by the target")
        }
        FailureKind::Refused => ("error", "regmirror: refused by the target"),
        FailureKind::Missing => ("warning", "regmirror: not mirrored"),
        FailureKind::Verification => ("error", "regmirror: digest mismatch"),
        FailureKind::Auth => ("error", "regmirror: authentication failed"),
        FailureKind::Other => ("error", "regmirror: copy failed"),
        FailureKind::RateLimited => ("warning", "regmirror: deferred by a rate limit"),
    };
    Some(command(
        level,
        title,
        &format!("{place}: {}", failure.message()),
    ))
}

/// One annotation per failed image × tag × target: errors for failures and
/// digest mismatches, warnings for tags a target does not have yet.
pub fn annotations(summary: &Summary) -> Vec<String> {
    summary.outcomes.iter().filter_map(annotation).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use regmirror::report::{Status, sample};

    #[test]
    fn messages_cannot_break_out_of_the_command() {
        let line = command("error", "a: b, c", "50% done\n::warning::fake");
        assert_eq!(
            line,
            "::error title=a%3A b%2C c::50%25 done%0A::warning::fake"
        );
        assert_eq!(line.lines().count(), 1);
    }

    #[test]
    fn the_legacy_command_form_is_broken_anywhere_in_a_line() {
        let text = "row ##[warning]pwned and ###[set-env name=A]b\n##[error]x";
        let neutral = neutralize(text);
        assert!(!neutral.contains("##["), "{neutral}");
        assert_eq!(
            neutral,
            "row ## [warning]pwned and ### [set-env name=A]b\n## [error]x"
        );
        let line = command("error", "t", "body ##[warning]x");
        assert!(!line.contains("##["), "{line}");
    }

    #[test]
    fn text_from_registries_never_starts_a_command() {
        let text = "row one\n::error::pwned\n   ::add-mask::x\nok :: fine\n";
        let neutral = neutralize(text);
        assert_eq!(
            neutral,
            "row one\n\\::error::pwned\n\\   ::add-mask::x\nok :: fine\n"
        );
        assert!(neutral.lines().all(|l| !l.trim_start().starts_with("::")));
        assert!(matches!(
            neutralize("plain\n"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn failures_become_errors_and_missing_tags_warnings() {
        let failed =
            |kind, chain: &str| sample("k3s", "v1", Status::Failed, Some((kind, &[chain][..])));
        let summary = Summary {
            outcomes: vec![
                sample("k3s", "v1", Status::Copied, None),
                failed(FailureKind::Other, "upload: reset"),
                failed(FailureKind::Missing, "no such tag"),
                failed(
                    FailureKind::Verification,
                    "`ghcr.io/a/k3s:v1` serves `sha256:1`",
                ),
                sample(
                    "k3s",
                    "v2",
                    Status::Deferred,
                    Some((FailureKind::RateLimited, &["rate limited"][..])),
                ),
            ],
            ..Summary::default()
        };
        let lines = annotations(&summary);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[3].starts_with("::warning title=regmirror%3A deferred by a rate limit::"),
            "{}",
            lines[3]
        );
        assert_eq!(
            lines[0],
            "::error title=regmirror%3A copy failed::k3s:v1 → ghcr.io/a/k3s:v1: upload: reset"
        );
        assert!(lines[1].starts_with("::warning "), "{}", lines[1]);
        assert!(
            lines[2].starts_with("::error title=regmirror%3A digest mismatch::"),
            "{}",
            lines[2]
        );
    }
}

/// Properties over arbitrary text (proptest): log lines and tables carry
/// text from registries.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn no_line_of_neutralized_text_is_a_command_in_either_grammar(text in "([ \\t]{0,2}(::)?\\PC{0,20}(#{0,3}\\[)?[\\r\\n]{0,2}){0,8}") {
            let neutral = neutralize(&text);
            for line in neutral.split(['\n', '\r']) {
                prop_assert!(!line.trim_start().starts_with("::"), "{:?}", line);
                prop_assert!(!line.contains("##["), "{:?}", line);
            }
        }
    }
}
