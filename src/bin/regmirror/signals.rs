//! SIGINT and SIGTERM (a cancelled CI job): the first cancels the run, so
//! it stops cleanly and reports; a second ends the process at once.
//! SIGHUP asks `serve` to read its configuration again.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::output::errln;
use tokio_util::sync::CancellationToken;

/// Cancels `cancel` on the first SIGINT or SIGTERM and keeps the exit code
/// that signal calls for (130, 143) in `code`; a second signal ends the
/// process at once.
pub fn on_signal(cancel: CancellationToken, code: Arc<AtomicI32>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        code.store(next_signal().await, Ordering::SeqCst);
        tracing::warn!(
            "stopping: no new work starts; work in flight gets {}s to finish, then the reports are written (signal again to stop at once)",
            regmirror::copy::GRACE.as_secs()
        );
        cancel.cancel();
        let again = next_signal().await;
        errln!("error: stopped at once by a second signal");
        std::process::exit(again);
    })
}

/// Waits for SIGINT (130) or SIGTERM (143).
async fn next_signal() -> i32 {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut interrupt), Ok(mut terminate)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = interrupt.recv() => 130,
            _ = terminate.recv() => 143,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        130
    }
}

/// Notified on each SIGHUP (never where there is no such signal).
pub fn hangups() -> Arc<tokio::sync::Notify> {
    let notify = Arc::new(tokio::sync::Notify::new());
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hangup) = signal(SignalKind::hangup()) {
            let notify = notify.clone();
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    notify.notify_one();
                }
            });
        }
    }
    notify
}
