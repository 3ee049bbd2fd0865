//! stderr for log lines: each event is one write, and no line of it can be
//! taken for a GitHub Actions workflow command (log lines carry text from
//! registries). While progress bars are drawn, each line is printed above
//! them: the bars are taken down, the line written, the bars drawn again.

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
