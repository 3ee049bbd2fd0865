//! One function per command: load what it needs, call the library, print.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::render::{self, json};
use anyhow::{Context, anyhow};
use indicatif::MultiProgress;
use regmirror::containerd;
use regmirror::copy::Options;
use regmirror::import;
use regmirror::plan::{self, Plan, Selection};
use regmirror::report::{Status, Summary};
use regmirror::{run as library, shard, verify};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, ConfigArgs, ImportFormat, ReportArgs, SelectionArgs, Verbosity};
use crate::output::{err, errln, out, outln};
use crate::progress::Progress;
use crate::{reports, signals};

/// An error with the exit code it deserves.
pub struct Failure {
    /// 1 for a run's error, 2 for config or usage.
    pub code: u8,
    /// What went wrong, with its causes.
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

/// A config or usage error: exit 2.
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
                .map_err(|error| usage(anyhow::Error::new(error).context("--only/--target")))?;
            Ok(match &args.shard {
                Some(shard) => plan.shard(shard),
                None => plan,
            })
        }
        None => Ok(plan),
    }
}

/// Runs the command `cli` names; its exit code.
pub async fn run(cli: Cli, bars: Option<MultiProgress>) -> Result<u8, Failure> {
    let rows = match cli.verbosity() {
        Verbosity::Quiet => render::Rows::None,
        Verbosity::Normal => render::Rows::Changed,
        Verbosity::Verbose | Verbosity::Headers => render::Rows::All,
    };
    match cli.command {
        Command::Import { from, file, dest } => import(from, &file, dest.as_deref()),
        Command::Schema { report, markdown } => {
            let schema = if report {
                json::schema()
            } else {
                regmirror::config::schema()
            };
            if markdown {
                let (title, generator) = if report {
                    (
                        "The `--json` report",
                        "regmirror schema --report --markdown",
                    )
                } else {
                    ("`mirror.yaml` reference", "regmirror schema --markdown")
                };
                let value: serde_json::Value =
                    serde_json::from_str(&schema).expect("the schema is JSON");
                out!("{}", render::reference::markdown(title, generator, &value));
            } else {
                out!("{schema}");
            }
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
                    outln!(
                        "{}",
                        serde_json::to_string(&matrix).expect("plain data serializes")
                    );
                }
                None => out!("{}", render::plan_table(&plan)),
            }
            Ok(0)
        }
        Command::Audit {
            paths,
            config,
            suggest,
        } => audit(&paths, config, suggest),
        Command::ContainerdHosts {
            config,
            out,
            auth,
            auth_placeholder,
            cri_config,
            dry_run,
        } => {
            let auth = match (auth, auth_placeholder) {
                (_, Some(text)) => containerd::Auth::Placeholder(text),
                (true, None) => containerd::Auth::Credentials,
                (false, None) => containerd::Auth::None,
            };
            containerd_hosts(&config, &out, &auth, cri_config.as_deref(), dry_run)
        }
        Command::Completions { shell } => {
            let mut command = <crate::cli::Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "regmirror", &mut script);
            out!("{}", String::from_utf8_lossy(&script));
            Ok(0)
        }
        Command::Man { out, markdown } => {
            let command = <crate::cli::Cli as clap::CommandFactory>::command();
            if markdown {
                out!("{}", render::reference::cli(&command));
                return Ok(0);
            }
            match out {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .and_then(|()| clap_mangen::generate_to(command, &dir))
                        .with_context(|| format!("write the man pages to `{}`", dir.display()))?;
                    outln!("{}", dir.display());
                }
                None => {
                    let mut page = Vec::new();
                    clap_mangen::Man::new(command)
                        .render(&mut page)
                        .context("render the man page")?;
                    out!("{}", String::from_utf8_lossy(&page));
                }
            }
            Ok(0)
        }
        Command::Check { config } => {
            let plan = load_plan(&config, None)?;
            outln!("{}: ok; {}", config.config.display(), plan.size());
            for note in &plan.notes {
                outln!("note: {note}");
            }
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
            sync("sync", plan, options, bars, rows, &report).await
        }
        Command::Serve { config, service } => {
            crate::serve::serve(&config.config, service, rows).await
        }
        Command::Copy {
            source,
            destinations,
            no_referrers,
            config,
            report,
        } => {
            let mut plan = Plan::for_copy(&source, &destinations, !no_referrers)
                .map_err(|e| usage(e.into()))?;
            if let Some(config) = config {
                let settings = load_plan(&ConfigArgs { config }, None)?;
                plan.registries = settings.registries;
            }
            sync("copy", plan, Options::default(), bars, rows, &report).await
        }
        Command::Verify {
            config,
            selection,
            deep,
            content,
            anonymous,
            report,
        } => {
            let depth = match (deep, content) {
                (_, true) => verify::Depth::Content,
                (true, false) => verify::Depth::Parts,
                (false, false) => verify::Depth::Tag,
            };
            let plan = load_plan(&config, Some(&selection))?;
            let (checks, summary) = library::verify(plan, depth, anonymous).await?;
            out!("{}", render::verify_table(&checks));
            reports::write("verify", &summary, &report);
            Ok(summary.exit_code() as u8)
        }
    }
}

/// `sync` and `copy`: the run, stopped cleanly by a signal; the table on
/// stderr, then the reports.
async fn sync(
    command: &str,
    plan: Plan,
    mut options: Options,
    bars: Option<MultiProgress>,
    rows: render::Rows,
    report: &ReportArgs,
) -> Result<u8, Failure> {
    let cancel = CancellationToken::new();
    options.cancel = cancel.clone();
    let signal = Arc::new(AtomicI32::new(0));
    let signals = signals::on_signal(cancel.clone(), signal.clone());
    let progress = Arc::new(Progress::new(command, bars));
    // The spool is gone when this returns, before the reports are written.
    let mut summary = library::sync(plan, options, progress.clone()).await?;
    progress.finish();
    if cancel.is_cancelled() {
        // Stored before the token was cancelled.
        summary.interrupted = Some(signal.load(Ordering::SeqCst));
    }
    signals.abort();
    finished(command, &summary, rows);
    reports::write(command, &summary, report);
    Ok(summary.exit_code() as u8)
}

/// The end of a run on stderr: the table, or (`--log-format json`) one
/// event with the counts; the failures were events of their own.
pub fn finished(command: &str, summary: &Summary, rows: render::Rows) {
    if crate::output::json() {
        // Log pipelines get the end of the run as one event; the failures
        // were events of their own as they happened.
        let totals = summary.totals();
        tracing::info!(
            command,
            exit_code = summary.exit_code(),
            results = summary.outcomes.len(),
            copied = summary.count(Status::Copied),
            present = summary.count(Status::Present),
            failed = summary.count(Status::Failed),
            deferred = summary.count(Status::Deferred),
            refused = summary.count(Status::Refused),
            cancelled = summary.count(Status::Cancelled),
            blobs_uploaded = totals.blobs_uploaded,
            bytes_uploaded = totals.bytes_uploaded,
            duration_seconds = summary.duration.as_secs_f64(),
            "{command} finished: {}",
            summary.counts()
        );
    } else {
        err!("{}", render::summary_table(summary, rows));
    }
}

/// `import`: another tool's configuration as `mirror.yaml`, on stdout.
fn import(from: ImportFormat, file: &std::path::Path, dest: Option<&str>) -> Result<u8, Failure> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("read `{name}`"))
        .map_err(usage)?;
    let format = match from {
        ImportFormat::Regsync => import::Format::Regsync,
        ImportFormat::Skopeo => import::Format::Skopeo,
    };
    let imported = import::import(format, &name, &text, dest).map_err(|e| usage(e.into()))?;
    for warning in &imported.warnings {
        errln!("warning: {warning}");
    }
    out!("{}", imported.yaml);
    Ok(0)
}

/// `audit`: the images that files pull, against the plan if there is one.
fn audit(paths: &[PathBuf], config: Option<PathBuf>, suggest: bool) -> Result<u8, Failure> {
    let audit = regmirror::audit::scan(paths).context("read the files to audit")?;
    let config = config.or_else(|| {
        let default = PathBuf::from("mirror.yaml");
        default.is_file().then_some(default)
    });
    let plan = match config {
        Some(config) => Some(load_plan(&ConfigArgs { config }, None)?),
        None => None,
    };
    out!(
        "{}",
        regmirror::audit::report(&audit, plan.as_ref(), suggest)
    );
    Ok(0)
}

/// `containerd-hosts`: one `hosts.toml` per upstream under `out`, with the
/// mirrors' credentials when asked (such files 0600); `dry_run` prints them
/// with secrets redacted instead.
fn containerd_hosts(
    config: &ConfigArgs,
    out: &Path,
    auth: &containerd::Auth,
    cri_config: Option<&Path>,
    dry_run: bool,
) -> Result<u8, Failure> {
    let plan = load_plan(config, None)?;
    let generated = containerd::hosts_files(&plan, auth);
    for file in &generated.files {
        let path = out.join(&file.upstream).join("hosts.toml");
        if dry_run {
            outln!("# {}\n{}", path.display(), file.shown);
        } else {
            write_file(&path, &file.toml, file.secret)?;
            outln!("{}", path.display());
        }
    }
    match (cri_config, &generated.cri) {
        (Some(path), Some((_, shown))) if dry_run => outln!("# {}\n{shown}", path.display()),
        (Some(path), Some((real, _))) => {
            write_file(path, real, true)?;
            outln!("{}", path.display());
        }
        (Some(_), None) => errln!("warning: no mirror has credentials; no CRI config written"),
        (None, _) => {}
    }
    for registry in &generated.identity_tokens {
        match cri_config {
            Some(_) => errln!(
                "note: `{registry}`'s credential is an identity token (as `az acr login` stores one): containerd exchanges it through the CRI config's `identitytoken`; its hosts get no `Authorization`"
            ),
            None => errln!(
                "warning: `{registry}`'s credential is an identity token (as `az acr login` stores one), which containerd can use only through its CRI config: add `--cri-config FILE`; its hosts get no `Authorization`"
            ),
        }
    }
    for registry in &generated.without_credentials {
        errln!(
            "warning: no credentials found for `{registry}` (set `{}` or `docker login {registry}`); its hosts get no `Authorization`",
            regmirror::registry::credentials::env_var_name(registry)
        );
    }
    for line in &generated.unmapped {
        errln!("warning: {line}");
    }
    Ok(0)
}

/// Writes `text` to `path` (making its directory), readable by its owner
/// only when it is `secret`: created so, never widened afterwards.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), Failure> {
    use std::io::Write as _;
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
            options.mode(0o600);
            // An existing file keeps its mode on open: narrow it first.
            if path.exists() {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        options.open(path)?.write_all(text.as_bytes())
    };
    write().with_context(|| format!("write `{}`", path.display()))?;
    Ok(())
}
