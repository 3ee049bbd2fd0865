//! The `regmirror` command: parse arguments, set up logging, run a command,
//! and map its outcome to an exit code (DESIGN §2): 0 all good, 1 some
//! image/target pairs failed, 2 config or usage error, 3 authentication
//! failure, 4 verification found a digest mismatch, 75 nothing mirrored
//! because every pair was deferred by a rate limit, 130/143 stopped by
//! SIGINT/SIGTERM.
//!
//! # Layout
//!
//! - `cli`: the arguments (clap).
//! - `commands`: one function per command; each loads a plan, calls the
//!   library's `run` facade (or a pure function), and prints.
//! - `progress`: the terminal's progress bars and the Actions log group.
//! - `reports`: `--json`, `--summary` and annotations, after a run.
//! - `signals`: SIGINT/SIGTERM cancel the run; SIGHUP reloads `serve`'s
//!   configuration.
//! - `serve`: `sync` on a schedule, with health, metrics and reports.
//! - `output`: stderr that no registry text can turn into a workflow command.
//! - `render`: tables, the `--json` report, step-summary markdown, workflow
//!   commands: how the library's data looks.
//!
//! Only this side of the crate prints or reads the CI environment.

mod cli;
mod commands;
mod output;
mod progress;
mod render;
mod reports;
mod serve;
mod signals;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use cli::Verbosity;
use output::errln;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let verbosity = cli.verbosity();
    let terminal = std::io::stderr().is_terminal();
    let json = cli.log_format == cli::LogFormat::Json;
    output::set_json(json);
    let show_progress = terminal
        && !json
        && !cli.no_progress
        && verbosity != Verbosity::Quiet
        && std::env::var_os("CI").is_none();
    let level = match verbosity {
        // Failures are listed after the run.
        Verbosity::Quiet => "off",
        // One line per change; on a terminal they print above the bars.
        Verbosity::Normal => "info",
        Verbosity::Verbose => "debug",
        Verbosity::Headers => "trace",
    };
    // The bars, drawn on stderr; log lines are written through them.
    let bars = show_progress.then(indicatif::MultiProgress::new);
    let stderr = output::NeutralStderr { bars: bars.clone() };
    let filter = tracing_subscriber::EnvFilter::try_from_env("REGMIRROR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("regmirror={level}")));
    if json {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(move || stderr.clone())
            .with_target(false)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(move || stderr.clone())
            .with_target(false)
            .without_time()
            .with_ansi(terminal && std::env::var_os("NO_COLOR").is_none())
            .init();
    }
    // The command's own future runs on this thread (`block_on`): it reads
    // the downloads, hashes them and hands them to the uploads, which the
    // workers send. One worker fewer than the cores keeps a thread per
    // core: on `bench/cpu` (2 cores) the client's CPU fell by 8%,
    // with fewer wake-ups across threads (docs/benchmark.md).
    let workers =
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            errln!("error: start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli, bars)) {
        Ok(code) => ExitCode::from(code),
        Err(commands::Failure { code, error }) => {
            errln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}
