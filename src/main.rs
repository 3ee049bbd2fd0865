//! The `regmirror` command: parse arguments, set up logging and progress,
//! run the library, and map the outcome to an exit code (DESIGN §2):
//! 0 all good, 1 some image/target pairs failed, 2 config or usage error,
//! 3 authentication failure, 4 verification found a digest mismatch.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use regmirror::copy::{Engine, Options, Reporter};
use regmirror::import;
use regmirror::layout::{self, Layout};
use regmirror::plan::{self, Destination, Job, Plan, Selection};
use regmirror::reference::Reference;
use regmirror::registry::RegistryClient;
use regmirror::report::{Outcome, Status, Summary, github, json, markdown};
use regmirror::shard::{self, Shard};
use regmirror::source::Source;
use regmirror::tags;
use regmirror::verify;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "regmirror",
    version,
    about = "Mirror container images byte for byte to the registries you control, and prove every target serves the same digest."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Plain log lines instead of a progress bar, even on a terminal.
    #[arg(long, global = true)]
    no_progress: bool,
}

#[derive(Args)]
struct ConfigArgs {
    /// The mirror configuration.
    #[arg(
        short = 'c',
        long = "config",
        default_value = "mirror.yaml",
        env = "REGMIRROR_CONFIG"
    )]
    config: PathBuf,
}

#[derive(Args)]
struct SelectionArgs {
    /// Only images whose name matches (a name or a glob like `k3s*`); repeatable.
    #[arg(long, value_name = "NAME|GLOB")]
    only: Vec<String>,
    /// Only these targets; repeatable.
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// Only the images in shard I of N (by a hash of the image name; see `plan --matrix`).
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
}

#[derive(Args, Clone, Default)]
struct ReportArgs {
    /// Write a JSON report of the run (shape: `regmirror schema --report`).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Append a markdown summary (default: `$GITHUB_STEP_SUMMARY` when set).
    #[arg(
        long,
        value_name = "FILE",
        env = "GITHUB_STEP_SUMMARY",
        hide_env_values = true
    )]
    summary: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Bring every selected image × tag × target up to date, then verify what was written.
    Sync {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        selection: SelectionArgs,
        /// Only compare digests (HEAD requests) and report what would be copied.
        #[arg(long)]
        dry_run: bool,
        /// Also check every child manifest and blob on targets that have the tag, and repair what is missing.
        #[arg(long)]
        deep: bool,
        /// Image × tag jobs in flight at once.
        #[arg(long, default_value_t = 8)]
        jobs: usize,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Compare the digest at the source and at every target; exit 4 on any difference.
    Verify {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        selection: SelectionArgs,
        /// Also check that every child manifest and blob is present on each target.
        #[arg(long)]
        deep: bool,
        /// With `--deep`: GET every manifest and blob on each target and hash
        /// it, instead of a HEAD (finds stored bytes that were corrupted;
        /// costs a download of every image from every target).
        #[arg(long, requires = "deep")]
        content: bool,
        /// Read the targets without credentials, as anyone pulling would, and
        /// name those that are private (GHCR makes new packages private).
        #[arg(long)]
        anonymous: bool,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Copy one image (all platforms) to one or more destinations.
    Copy {
        /// `REGISTRY/REPOSITORY[:TAG|@DIGEST]` or `oci:DIR[:TAG]`.
        source: String,
        /// `REGISTRY/REPOSITORY[:TAG]`; the tag defaults to the source's.
        #[arg(required = true)]
        destinations: Vec<String>,
        /// Leave out what refers to the image (signatures, SBOMs, attestations).
        #[arg(long)]
        no_referrers: bool,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Print a `mirror.yaml` equivalent to another tool's configuration; what cannot be carried over is listed on stderr.
    Import {
        /// The tool that reads FILE.
        #[arg(long, value_enum)]
        from: ImportFormat,
        /// The other tool's configuration.
        file: PathBuf,
        /// skopeo only: the destination prefix (what `skopeo sync` takes on its command line).
        #[arg(long, value_name = "REGISTRY/PREFIX")]
        dest: Option<String>,
    },
    /// Print the JSON Schema of `mirror.yaml` (or, with `--report`, of the `--json` report).
    Schema {
        /// The `--json` report's schema instead.
        #[arg(long)]
        report: bool,
    },
    /// Print the resolved work (images, tags, targets, pinned digests) without contacting any registry.
    Plan {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        selection: SelectionArgs,
        /// Print a GitHub Actions matrix of at most N shards, balanced by tag count, as JSON.
        #[arg(long, value_name = "N")]
        matrix: Option<usize>,
    },
    /// List the images that Kubernetes manifests, Helm values, compose files, workflows and Dockerfiles under PATH pull, by registry, and which `mirror.yaml` does not mirror.
    Audit {
        /// Files or directories to read.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The mirror configuration to compare with (skipped when the default is absent).
        #[arg(short = 'c', long = "config", env = "REGMIRROR_CONFIG")]
        config: Option<PathBuf>,
        /// Also print the `images:` entries that would mirror what is not mirrored.
        #[arg(long)]
        suggest: bool,
    },
    /// Write containerd registry host files (`DIR/<upstream>/hosts.toml`) that pull from the mirrors first.
    ContainerdHosts {
        #[command(flatten)]
        config: ConfigArgs,
        /// Where to write them (containerd's `config_path`, e.g. `/etc/containerd/certs.d`).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Validate the configuration and print the size of the resolved plan.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ImportFormat {
    /// regclient's regsync (`regsync.yml`).
    Regsync,
    /// `skopeo sync --src yaml`.
    Skopeo,
}

/// An error with the exit code it deserves.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

fn usage(error: anyhow::Error) -> Failure {
    Failure { code: 2, error }
}

fn load_plan(args: &ConfigArgs, selection: Option<&SelectionArgs>) -> Result<Plan, Failure> {
    let name = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read `{name}`"))
        .map_err(usage)?;
    let plan = plan::load(&name, &text).map_err(|problems| usage(anyhow!(problems)))?;
    match selection {
        Some(args) => {
            let plan = plan
                .select(&Selection {
                    only: args.only.clone(),
                    targets: args.targets.clone(),
                })
                .map_err(|message| usage(anyhow!(message)))?;
            Ok(match &args.shard {
                Some(shard) => plan.shard(shard),
                None => plan,
            })
        }
        None => Ok(plan),
    }
}

/// A progress bar of jobs, or nothing when output is not a terminal.
struct Progress(Option<ProgressBar>);

impl Reporter for Progress {
    fn job_finished(&self, outcomes: &[Outcome]) {
        if let (Some(bar), Some(first)) = (&self.0, outcomes.first()) {
            bar.inc(1);
            let failed = outcomes
                .iter()
                .filter(|o| o.status == Status::Failed)
                .count();
            let note = if failed > 0 {
                format!(" ({failed} failed)")
            } else {
                String::new()
            };
            bar.set_message(format!("{}:{}{note}", first.image, first.tag));
        }
    }
}

fn progress(enabled: bool, jobs: usize) -> Progress {
    if !enabled {
        return Progress(None);
    }
    let bar = ProgressBar::new(jobs as u64);
    let style =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("static template is valid");
    bar.set_style(style);
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    Progress(Some(bar))
}

fn copy_job(source: &str, destinations: &[String], referrers: bool) -> Result<Job, Failure> {
    let (source, reference, pinned, default_tag) = match layout::parse_source(source) {
        Some((dir, tag)) => {
            let layout = Layout::open(&dir).map_err(|e| usage(e.into()))?;
            let descriptor = layout
                .resolve(tag.as_deref())
                .map_err(|e| usage(e.into()))?;
            let digest = descriptor.digest.clone();
            (
                Source::Layout(layout),
                digest.to_string(),
                Some(digest),
                tag,
            )
        }
        None => {
            let reference: Reference = source
                .parse()
                .map_err(|e: regmirror::Error| usage(e.into()))?;
            let pinned = reference.digest.clone();
            (
                Source::Registry(reference.repository.clone()),
                reference.manifest_reference(),
                pinned,
                reference.tag.clone(),
            )
        }
    };
    let mut resolved = Vec::new();
    for destination in destinations {
        let reference: Reference = destination
            .parse()
            .map_err(|e: regmirror::Error| usage(e.into()))?;
        if reference.digest.is_some() {
            return Err(usage(anyhow!(
                "destination `{destination}`: give a tag, not a digest (the digest is the source's)"
            )));
        }
        let tag = reference
            .tag
            .or_else(|| default_tag.clone())
            .unwrap_or_else(|| "latest".to_string());
        resolved.push(Destination {
            name: destination.clone(),
            repository: reference.repository,
            tag,
        });
    }
    Ok(Job {
        image: source.to_string(),
        source: Arc::new(source),
        reference,
        pinned,
        destinations: resolved,
        referrers,
    })
}

/// Writes the reports the user asked for and, in GitHub Actions, the
/// annotations. A report that cannot be written is named on stderr; it
/// does not change the run's exit code (the copies happened all the same).
fn report(command: &str, summary: &Summary, args: &ReportArgs) {
    let unwritten = |what: &str, path: &std::path::Path, error: std::io::Error| {
        eprintln!(
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
            eprintln!("{line}");
        }
    }
}

/// In GitHub Actions, folds what `body` logs into a collapsed group.
async fn grouped<T>(title: &str, body: impl Future<Output = T>) -> T {
    let actions = github::in_actions();
    if actions {
        eprintln!("{}", github::group(title));
    }
    let value = body.await;
    if actions {
        eprintln!("{}", github::END_GROUP);
    }
    value
}

/// The plan's jobs, plus those of its tag selectors (the source tag lists
/// are read now), and a failed outcome for each source that could not be listed.
async fn jobs_of(client: &RegistryClient, plan: Plan) -> (Vec<Job>, Vec<Outcome>) {
    let (mut selected, failures) = tags::expand(client, &plan.queries).await;
    let mut jobs = plan.jobs;
    jobs.append(&mut selected);
    plan::drop_repeated_destinations(&mut jobs);
    jobs.retain(|job| !job.destinations.is_empty());
    (jobs, failures)
}

/// Cancels `cancel` on the first SIGINT or SIGTERM and keeps the exit code
/// that signal calls for (130, 143) in `code`; a second signal ends the
/// process at once.
fn on_signal(cancel: CancellationToken, code: Arc<AtomicI32>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        code.store(next_signal().await, Ordering::SeqCst);
        tracing::warn!(
            "stopping: no new work starts; work in flight gets {}s to finish, then the reports are written (signal again to stop at once)",
            regmirror::copy::GRACE.as_secs()
        );
        cancel.cancel();
        let again = next_signal().await;
        eprintln!("error: stopped at once by a second signal");
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

async fn sync(
    command: &str,
    plan: Plan,
    mut options: Options,
    show_progress: bool,
    reports: &ReportArgs,
) -> Result<u8, Failure> {
    let client = Arc::new(RegistryClient::new(plan.registries.clone())?);
    let cancel = CancellationToken::new();
    options.cancel = cancel.clone();
    let signal = Arc::new(AtomicI32::new(0));
    let signals = on_signal(cancel.clone(), signal.clone());
    let (jobs, failures) = jobs_of(&client, plan).await;
    let engine = Engine::new(client, options)?;
    let reporter = progress(show_progress, jobs.len());
    let title = format!("regmirror {command}: {} image×tag jobs", jobs.len());
    let mut summary = grouped(&title, engine.run(&jobs, &reporter)).await;
    summary.outcomes.splice(0..0, failures);
    if cancel.is_cancelled() {
        // Stored before the token was cancelled.
        summary.interrupted = Some(signal.load(Ordering::SeqCst));
    }
    signals.abort();
    drop(engine); // removes the spool before the reports are written
    if let Some(bar) = &reporter.0 {
        bar.finish_and_clear();
    }
    eprint!("{}", github::neutralize(&summary.table()));
    report(command, &summary, reports);
    Ok(summary.exit_code() as u8)
}

async fn run(cli: Cli, show_progress: bool) -> Result<u8, Failure> {
    match cli.command {
        Command::Import { from, file, dest } => {
            let name = file.display().to_string();
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("read `{name}`"))
                .map_err(usage)?;
            let format = match from {
                ImportFormat::Regsync => import::Format::Regsync,
                ImportFormat::Skopeo => import::Format::Skopeo,
            };
            let imported = import::import(format, &name, &text, dest.as_deref())
                .map_err(|message| usage(anyhow!(message)))?;
            for warning in &imported.warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", imported.yaml);
            Ok(0)
        }
        Command::Schema { report } => {
            print!(
                "{}",
                if report {
                    json::schema()
                } else {
                    regmirror::config::schema()
                }
            );
            Ok(0)
        }
        Command::Plan {
            config,
            selection,
            matrix,
        } => {
            let plan = load_plan(&config, Some(&selection))?;
            match matrix {
                Some(jobs) => {
                    let matrix = shard::matrix(&plan, jobs);
                    println!(
                        "{}",
                        serde_json::to_string(&matrix).expect("plain data serializes")
                    );
                }
                None => print!("{}", plan.table()),
            }
            Ok(0)
        }
        Command::Audit {
            paths,
            config,
            suggest,
        } => {
            let audit = regmirror::audit::scan(&paths).context("read the files to audit")?;
            let config = config.or_else(|| {
                let default = PathBuf::from("mirror.yaml");
                default.is_file().then_some(default)
            });
            let plan = match config {
                Some(config) => Some(load_plan(&ConfigArgs { config }, None)?),
                None => None,
            };
            print!(
                "{}",
                regmirror::audit::report(&audit, plan.as_ref(), suggest)
            );
            Ok(0)
        }
        Command::ContainerdHosts { config, out } => {
            let plan = load_plan(&config, None)?;
            let generated = regmirror::containerd::hosts_files(&plan);
            for file in &generated.files {
                let dir = out.join(&file.upstream);
                let path = dir.join("hosts.toml");
                std::fs::create_dir_all(&dir)
                    .and_then(|_| std::fs::write(&path, &file.toml))
                    .with_context(|| format!("write `{}`", path.display()))?;
                println!("{}", path.display());
            }
            for line in &generated.unmapped {
                eprintln!("warning: {line}");
            }
            Ok(0)
        }
        Command::Check { config } => {
            let plan = load_plan(&config, None)?;
            println!("{}: ok; {}", config.config.display(), plan.size());
            Ok(0)
        }
        Command::Sync {
            config,
            selection,
            dry_run,
            deep,
            jobs,
            report,
        } => {
            let plan = load_plan(&config, Some(&selection))?;
            let options = Options {
                dry_run,
                deep,
                jobs,
                ..Options::default()
            };
            sync("sync", plan, options, show_progress, &report).await
        }
        Command::Copy {
            source,
            destinations,
            no_referrers,
            report,
        } => {
            let job = copy_job(&source, &destinations, !no_referrers)?;
            let plan = Plan {
                jobs: vec![job],
                ..Plan::default()
            };
            sync("copy", plan, Options::default(), false, &report).await
        }
        Command::Verify {
            config,
            selection,
            deep,
            content,
            anonymous,
            report: reports,
        } => {
            let depth = match (deep, content) {
                (_, true) => verify::Depth::Content,
                (true, false) => verify::Depth::Parts,
                (false, false) => verify::Depth::Tag,
            };
            let plan = load_plan(&config, Some(&selection))?;
            let client = RegistryClient::new(plan.registries.clone())?;
            let anonymous_client = if anonymous {
                Some(RegistryClient::anonymous(plan.registries.clone())?)
            } else {
                None
            };
            let targets = anonymous_client.as_ref().unwrap_or(&client);
            let started = std::time::Instant::now();
            let started_at = std::time::SystemTime::now();
            let (jobs, failures) = jobs_of(&client, plan).await;
            let title = format!("regmirror verify: {} image×tag jobs", jobs.len());
            let checks = grouped(&title, verify::verify(&client, targets, &jobs, depth, 8)).await;
            print!("{}", github::neutralize(&verify::table(&checks)));
            let mut summary = verify::summary(&checks, started.elapsed());
            summary.outcomes.splice(0..0, failures);
            summary.started = Some(started_at);
            report("verify", &summary, &reports);
            Ok(summary.exit_code() as u8)
        }
    }
}

/// stderr for log lines: each event is one write, and no line of it can
/// be taken for a GitHub Actions workflow command (log lines carry text
/// from registries).
struct NeutralStderr;

impl std::io::Write for NeutralStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(github::neutralize(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let terminal = std::io::stderr().is_terminal();
    let show_progress = terminal && !cli.no_progress && std::env::var_os("CI").is_none();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        // A progress bar says what the info lines would.
        (false, 0) if show_progress => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("REGMIRROR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("regmirror={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| NeutralStderr)
        .with_target(false)
        .without_time()
        .with_ansi(terminal && std::env::var_os("NO_COLOR").is_none())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli, show_progress)) {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, error }) => {
            eprintln!("{}", github::neutralize(&format!("error: {error:#}")));
            ExitCode::from(code)
        }
    }
}
