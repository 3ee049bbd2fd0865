//! What a user sees on a real terminal: the binary runs on a pseudo-terminal
//! (`script` from util-linux, which records everything the terminal
//! receives) and the recording is replayed through a terminal emulator
//! (`vt100`), frame by frame.

use std::process::{Command, Stdio};

use crate::support::config::MirrorYaml;
use crate::support::images::{self, Spec};
use crate::support::proxy::{Action, Proxy, Rule};
use crate::support::{Auth, Registry, regmirror_command};

/// Rows and columns of the recorded terminal.
const ROWS: u16 = 60;
const COLUMNS: u16 = 100;

/// Runs `regmirror args` in `dir` on a pseudo-terminal; what the terminal
/// received, and the exit code.
fn on_a_terminal(dir: &std::path::Path, args: &[&str]) -> (Vec<u8>, i32) {
    let inner = regmirror_command(dir, args, &[]);
    // One shell line for `script`: every word quoted, so no path or
    // argument is split or expanded.
    let quoted =
        |word: &std::ffi::OsStr| format!("'{}'", word.to_string_lossy().replace('\'', "'\\''"));
    let mut line = format!(
        "stty rows {ROWS} cols {COLUMNS}; exec {}",
        quoted(inner.get_program())
    );
    for arg in inner.get_args() {
        line.push(' ');
        line.push_str(&quoted(arg));
    }
    let mut command = Command::new("script");
    command
        .args([
            "--quiet",
            "--flush",
            "--return",
            "--command",
            &line,
            "/dev/null",
        ])
        .current_dir(dir)
        .env("TERM", "xterm-256color")
        // A terminal in CI gets no bars: this one is a user's.
        .env_remove("CI")
        .env_remove("GITHUB_ACTIONS")
        .stdin(Stdio::null());
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let output = command.output().expect("run script(1)");
    (output.stdout, output.status.code().unwrap_or(-1))
}

/// Every frame the terminal showed: the screen's rows after each write the
/// recording holds, in order (a write is at most 4 KiB, as `script` relays).
fn frames(recording: &[u8]) -> Vec<Vec<String>> {
    let mut terminal = vt100::Parser::new(ROWS, COLUMNS, 0);
    recording
        .chunks(512)
        .map(|chunk| {
            terminal.process(chunk);
            terminal
                .screen()
                .rows(0, COLUMNS)
                .map(|row| row.trim_end().to_string())
                .collect()
        })
        .collect()
}

/// While a slow layer downloads, the terminal shows one overall bar (pairs,
/// bytes, rate, time left) and a line for the transfer with its bytes; an
/// error logged meanwhile prints whole above the bars, never mixed into
/// them; no frame holds a stale copy of a bar; and when the run ends the
/// bars are gone, leaving the log line and the table.
#[tokio::test]
async fn a_terminal_shows_live_progress_and_is_left_clean() {
    let upstream = Registry::start(Auth::None);
    let big = images::generate(&Spec {
        platforms: vec![("amd64", None)],
        layer_size: 3 << 20,
        attestations: false,
        base: 301,
        ..Spec::new("team/big", "v1", false)
    });
    let small = images::generate(&Spec {
        platforms: vec![("amd64", None)],
        attestations: false,
        base: 302,
        ..Spec::new("team/small", "v1", false)
    });
    images::push(&upstream.url(), "team/big", "v1", &big).await;
    images::push(&upstream.url(), "team/small", "v1", &small).await;
    // A slow link to the source: the big layer takes about three seconds.
    let slow = Proxy::start(
        &upstream.host,
        vec![
            Rule::new(
                "GET",
                "/blobs/sha256:",
                usize::MAX,
                Action::Throttle(1 << 20),
            )
            .larger_than(0),
        ],
    );
    // The target refuses the small image's tag at once: an error is logged
    // while the big layer is still moving.
    let target = Registry::start(Auth::None);
    let refusing = Proxy::start(
        &target.host,
        vec![Rule::new(
            "PUT",
            "/m/team/small/manifests/v1",
            usize::MAX,
            Action::Respond {
                status: 400,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: br#"{"errors":[{"code":"DENIED","message":"tag refused by policy"}]}"#
                    .to_vec(),
            },
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    MirrorYaml::new()
        .target("t0", &format!("{}/m", refusing.host))
        .image("big", &format!("{}/team/big", slow.host), "[v1]")
        .image("small", &format!("{}/team/small", slow.host), "[v1]")
        .write(dir.path());

    let (recording, code) = on_a_terminal(dir.path(), &["sync", "--jobs", "2"]);
    let frames = frames(&recording);
    let text = String::from_utf8_lossy(&recording);
    assert_eq!(code, 1, "{text}");
    let error = "ERROR small:v1 → ";
    let is_bar = |row: &str| row.contains(" pairs · ") || row.contains("big:v1 from");

    // Live: the overall bar with its numbers, and the transfer's line.
    assert!(
        frames.iter().any(|rows| rows
            .iter()
            .any(|r| { r.contains("/2 pairs · ") && r.contains("MiB/s") && r.contains("ETA") })),
        "no overall bar with bytes and rate was drawn:\n{text}"
    );
    assert!(
        frames.iter().any(|rows| rows.iter().any(|r| {
            r.contains(" MiB / 3.00 MiB") && r.contains(&format!("↓ big:v1 from {}", slow.host))
        })),
        "no line for the layer in flight:\n{text}"
    );
    // The error showed while the bars were up, on its own row.
    assert!(
        frames.iter().any(|rows| {
            rows.iter().any(|r| r.contains(error)) && rows.iter().any(|r| is_bar(r))
        }),
        "the error did not print while the bars were drawn:\n{text}"
    );
    for rows in &frames {
        for row in rows.iter().filter(|r| r.contains("ERROR")) {
            assert!(
                row.starts_with(error) && !is_bar(row),
                "a log line mixed with a bar: {row:?}"
            );
        }
        // One overall bar, and one line per blob (named by its short digest).
        let overall = rows.iter().filter(|r| r.contains(" pairs · ")).count();
        let mut blobs: Vec<&str> = rows
            .iter()
            .filter(|r| r.contains("big:v1 from"))
            .filter_map(|r| r.rsplit_once('(').map(|(_, digest)| digest))
            .collect();
        let lines = blobs.len();
        blobs.sort();
        blobs.dedup();
        assert!(
            overall <= 1 && blobs.len() == lines,
            "a stale bar:\n{}",
            rows.join("\n")
        );
    }

    // At the end: the log line once, the table, and no bar.
    let last = frames.last().expect("the terminal received something");
    assert!(
        !last.iter().any(|r| is_bar(r)),
        "a bar was left behind:\n{}",
        last.join("\n")
    );
    assert_eq!(
        last.iter().filter(|r| r.contains(error)).count(),
        1,
        "{}",
        last.join("\n")
    );
    assert!(
        last.iter()
            .any(|r| r.starts_with("1 copied, 0 present, 1 failed")),
        "{}",
        last.join("\n")
    );
}
