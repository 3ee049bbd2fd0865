//! Everything the binary writes to stdout and stderr passes through here,
//! made unable to become a GitHub Actions workflow command (tables, errors
//! and log lines carry text from registries): [`out!`], [`outln!`],
//! [`err!`] and [`errln!`] for text, [`command`] for the runner's commands
//! we mean (annotations, groups). The standard print macros are refused by
//! clippy (`clippy.toml`), so no write can go around this module.
//!
//! Log lines: each event is one write; while progress bars are drawn, each
//! line is printed above them: the bars are taken down, the line written,
//! the bars drawn again.

use std::io::Write;

use indicatif::MultiProgress;

use crate::render::github;

/// The writer `tracing` logs through.
#[derive(Clone)]
pub struct NeutralStderr {
    /// The bars on the terminal, if any are drawn.
    pub bars: Option<MultiProgress>,
}

impl Write for NeutralStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let text = github::neutralize(&text);
        let write = || std::io::stderr().write_all(text.as_bytes());
        match &self.bars {
            Some(bars) => bars.suspend(write)?,
            None => write()?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Writes `text` to stdout, neutralized.
#[allow(clippy::disallowed_macros)]
pub fn stdout(text: &str) {
    print!("{}", github::neutralize(text));
}

/// Whether stderr is JSON lines (`--log-format json`).
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes stderr JSON lines (`--log-format json`) or text.
pub fn set_json(on: bool) {
    JSON.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// True when stderr is JSON lines.
pub fn json() -> bool {
    JSON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Writes `text` to stderr, neutralized; with `--log-format json`, each of
/// its lines as a log event of its own (`error: …` an error, `warning: …`
/// a warning, anything else information).
#[allow(clippy::disallowed_macros)]
pub fn stderr(text: &str) {
    if !json() {
        eprint!("{}", github::neutralize(text));
        return;
    }
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (level, message) = if let Some(rest) = line.strip_prefix("error: ") {
            ("ERROR", rest)
        } else if let Some(rest) = line.strip_prefix("warning: ") {
            ("WARN", rest)
        } else {
            ("INFO", line)
        };
        let event = serde_json::json!({
            "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "level": level,
            "message": message,
        });
        eprintln!("{}", github::neutralize(&event.to_string()));
    }
}

/// Writes one workflow command of ours (from [`github::command`],
/// [`github::group`], [`github::END_GROUP`]) to stderr as it is.
#[allow(clippy::disallowed_macros)]
pub fn command(line: &str) {
    eprintln!("{line}");
}

/// `print!`, neutralized.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::stdout(&format!($($arg)*)) };
}

/// `println!`, neutralized.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output::stdout(&format!("{}\n", format_args!($($arg)*))) };
}

/// `eprint!`, neutralized.
macro_rules! err {
    ($($arg:tt)*) => { $crate::output::stderr(&format!($($arg)*)) };
}

/// `eprintln!`, neutralized.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::stderr(&format!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {err, errln, out, outln};
