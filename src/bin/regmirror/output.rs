//! stderr for log lines: each event is one write, and no line of it can be
//! taken for a GitHub Actions workflow command (log lines carry text from
//! registries).

use std::io::Write;

use crate::render::github;

/// The writer `tracing` logs through.
pub struct NeutralStderr;

impl Write for NeutralStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(github::neutralize(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
