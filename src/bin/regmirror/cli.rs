//! The command line, as clap reads it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use regmirror::shard::Shard;

#[derive(Parser)]
#[command(
    name = "regmirror",
    version = env!("REGMIRROR_VERSION"),
    about = "Mirror container images byte for byte to the registries you control, and prove every target serves the same digest.",
    after_help = "Exit codes: 0 all good; 1 some image/target pairs failed; 2 config or usage error; 3 authentication failure; 4 verification found a mismatch or a missing tag or part; 75 nothing mirrored because every pair was deferred by a rate limit; 130, 143 stopped by SIGINT, SIGTERM."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More output: -v lists every pair and each registry request (method,
    /// URL, status, bytes, time); -vv adds response headers (redacted).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only failures and the final totals line.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Plain log lines instead of a progress bar, even on a terminal.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// `json`: stderr is one JSON object per line (a log event: `timestamp`,
    /// `level`, `message` and its fields), for log pipelines; no bars, and
    /// the run's end is one event instead of the table.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "REGMIRROR_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// How log events are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people, with bars on a terminal.
    Human,
    /// One JSON object per line.
    Json,
}

/// How much a run says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: failures and the totals line.
    Quiet,
    /// One line per change (copied, repaired, failed, deferred) and the
    /// summary; pairs already present are only counted.
    Normal,
    /// `-v`: every pair, and one line per registry request.
    Verbose,
    /// `-vv`: response headers too (redacted).
    Headers,
}

impl Cli {
    /// What `-q` and `-v` ask for.
    pub fn verbosity(&self) -> Verbosity {
        match (self.quiet, self.verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, 1) => Verbosity::Verbose,
            _ => Verbosity::Headers,
        }
    }
}

#[derive(Args)]
pub struct ConfigArgs {
    /// The mirror configuration.
    #[arg(
        short = 'c',
        long = "config",
        default_value = "mirror.yaml",
        env = "REGMIRROR_CONFIG"
    )]
    pub config: PathBuf,
}

#[derive(Args)]
pub struct SelectionArgs {
    /// Only images whose name matches (a name or a glob like `k3s*`); repeatable.
    #[arg(long, value_name = "NAME|GLOB")]
    pub only: Vec<String>,
    /// Only these targets; repeatable.
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
    /// Only the images in shard I of N (by a hash of the image name; see `plan --matrix`).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
}

#[derive(Args, Clone, Default)]
pub struct ReportArgs {
    /// Write a JSON report of the run (shape: `regmirror schema --report`).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Append a markdown summary (default: `$GITHUB_STEP_SUMMARY` when set).
    #[arg(
        long,
        value_name = "FILE",
        env = "GITHUB_STEP_SUMMARY",
        hide_env_values = true
    )]
    pub summary: Option<PathBuf>,
}

/// How `serve` runs.
#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Time between the starts of two runs (`90s`, `15m`, `6h`); each wait
    /// is stretched by up to a tenth at random, so replicas and services
    /// started together do not meet the registries at once.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = humantime::parse_duration, env = "REGMIRROR_INTERVAL")]
    pub interval: std::time::Duration,
    /// Serve `/healthz`, `/readyz`, `/metrics` (Prometheus) and
    /// `/runs/latest` (the last `--json` report) on this address
    /// (`127.0.0.1:9090`; `0.0.0.0:9090` in a container). Off unless given.
    #[arg(long, value_name = "ADDR", env = "REGMIRROR_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Keep each run's JSON report in DIR (`sync-<time>.json`), the newest
    /// `--keep-reports` of them.
    #[arg(long, value_name = "DIR", env = "REGMIRROR_REPORTS")]
    pub reports: Option<PathBuf>,
    /// How many reports `--reports` keeps.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub keep_reports: usize,
    /// Image × tag jobs in flight at once (as `sync --jobs`).
    #[arg(long, default_value_t = regmirror::copy::Options::default().jobs)]
    pub jobs: usize,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Image × tag jobs in flight at once (requests to each registry
        /// are capped by its `concurrency` all the same).
        #[arg(long, default_value_t = regmirror::copy::Options::default().jobs)]
        jobs: usize,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Run `sync` as a service: once at start, then every `--interval`;
    /// reloads `mirror.yaml` when it changes (or on SIGHUP); serves health,
    /// readiness, Prometheus metrics and the last report on `--listen`.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        service: ServeArgs,
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
        /// Use this `mirror.yaml`'s `registries:` settings (a TLS `ca`,
        /// `insecure`, rate limits, `timeout`, `create_repositories`); its
        /// images are not copied.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
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
        /// The schema as a reference page (markdown): every key, its type,
        /// default and meaning (`docs/mirror-yaml.md`, `docs/report.md`).
        #[arg(long)]
        markdown: bool,
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
        /// Give each mirror host an `Authorization` header with its
        /// credentials (the chain `sync` uses); such files are written 0600.
        #[arg(long, conflicts_with = "auth_placeholder")]
        auth: bool,
        /// Like `--auth`, but write this text where base64(`user:password`)
        /// goes (e.g. `${MIRROR_AUTH}`), for a secret or cloud-init to fill.
        #[arg(long, value_name = "TEXT")]
        auth_placeholder: Option<String>,
        /// With `--auth`: also write the CRI plugin's
        /// `registry.configs."<host>".auth` for the mirrors to FILE (0600).
        #[arg(long, value_name = "FILE", requires = "auth")]
        cri_config: Option<PathBuf>,
        /// Print the files (secrets redacted) instead of writing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate the configuration and print the size of the resolved plan.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print the shell completion script for SHELL (from these very
    /// arguments): `regmirror completions bash > /etc/bash_completion.d/regmirror`.
    Completions {
        /// bash, zsh, fish, powershell or elvish.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or with `--out DIR` write `regmirror.1` and
    /// one page per command (`regmirror-sync.1`, …) there.
    Man {
        /// Where to write the pages.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The command line reference as one markdown page instead
        /// (`docs/cli.md`).
        #[arg(long, conflicts_with = "out")]
        markdown: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ImportFormat {
    /// regclient's regsync (`regsync.yml`).
    Regsync,
    /// `skopeo sync --src yaml`.
    Skopeo,
}
