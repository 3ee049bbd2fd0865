//! The `--json` report: one document per run, for machines.
//!
//! The shape is these types; `regmirror schema --report` prints their JSON
//! Schema and `docs/report.schema.json` is that output, checked by a test
//! against both the types and a real run's report.

use schemars::JsonSchema;
use serde::Serialize;

use regmirror::report::{Outcome, Status, Summary};

/// The whole report.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// The regmirror version that wrote it.
    pub regmirror: String,
    /// `sync`, `copy` or `verify`.
    pub command: String,
    /// When the run started, RFC 3339 in UTC.
    pub started_at: Option<String>,
    /// Wall time of the run.
    pub duration_seconds: f64,
    /// The process's exit code (0 all good, 1 failures, 3 auth, 4 mismatch,
    /// 75 nothing mirrored because everything was deferred, 130/143 stopped).
    pub exit_code: i32,
    /// Counts over all results.
    pub totals: Totals,
    /// One per image × tag × target, in plan order.
    pub results: Vec<Row>,
    /// The registries that throttled this run (429, or 503 or 403 that
    /// throttle), with the pace regmirror found for each kind of request:
    /// what to write into `registries.<host>` next time.
    pub registries: Vec<Throttled>,
    /// Requests sent to each registry, by its name in `mirror.yaml`
    /// (every attempt, retries included; token requests aside): what a
    /// run cost each registry.
    pub requests: std::collections::BTreeMap<String, u64>,
}

/// A registry that throttled.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Throttled {
    /// The registry, as `mirror.yaml` names it.
    pub registry: String,
    /// Throttling answers in all.
    pub throttled: u64,
    /// Requests a second settled on at the end of the run, per kind of
    /// request that had to be paced: `manifest_reads`, `blob_reads`,
    /// `uploads`, `manifest_writes`.
    pub pace: std::collections::BTreeMap<String, f64>,
}

/// Counts over all results.
#[derive(Debug, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    /// Results in the report.
    pub results: usize,
    /// Targets written in this run.
    pub copied: usize,
    /// Targets that already had the image.
    pub present: usize,
    /// `--dry-run`: targets that would be written.
    pub planned: usize,
    /// `verify`: targets that serve the source's digest.
    pub verified: usize,
    /// Results that failed.
    pub failed: usize,
    /// Results deferred because the source's rate limit was spent.
    pub deferred: usize,
    /// Results not finished because the run was stopped (SIGINT, SIGTERM).
    pub cancelled: usize,
    /// Referrers the targets will not take (their media types).
    pub refused: usize,
    /// Blobs uploaded.
    pub blobs_uploaded: usize,
    /// Blobs mounted from another repository of the same registry.
    pub blobs_mounted: usize,
    /// Blobs the targets already had.
    pub blobs_skipped: usize,
    /// Manifests written.
    pub manifests_pushed: usize,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Seconds jobs waited, in all, for room in the spool
    /// (`REGMIRROR_SPOOL_MAX`, or three quarters of the free disk).
    pub spool_wait_seconds: f64,
    /// Bytes read from sources into the spool (then uploaded from there).
    pub spooled_bytes: u64,
    /// Bytes read from sources and streamed to every target lacking them
    /// at once, past the spool (blobs of 1 MiB or more that no other image
    /// had put into the spool, and blobs bigger than the spool may hold).
    pub streamed_bytes: u64,
}

/// How one image × tag × target ended.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeName {
    /// Written in this run.
    Copied,
    /// Already there; nothing written.
    Present,
    /// `--dry-run`: would be written.
    Planned,
    /// `verify`: the target serves the source's digest.
    Verified,
    /// See `error`.
    Failed,
    /// Not attempted: the source's rate limit is spent; `error.retry_at`
    /// says when it resets, if the registry said.
    Deferred,
    /// Not finished: the run was stopped by a signal.
    Cancelled,
    /// A referrer the target will not take for its media types; `error`
    /// says why and what allows it. A warning: the run does not fail.
    Refused,
}

/// One image × tag × target.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// The image entry's name (the handle for `--only`).
    pub image: String,
    /// The tag at the target.
    pub tag: String,
    /// The target's name.
    pub target: String,
    /// `REGISTRY/REPOSITORY:TAG` at the target.
    pub destination: String,
    /// The source's digest for the tag, when it could be read.
    pub source_digest: Option<String>,
    /// The target's digest before the run (null: no such tag, or unknown).
    pub target_digest_before: Option<String>,
    /// The target's digest after the run (null: unknown, e.g. after a failure).
    pub target_digest_after: Option<String>,
    /// How it ended.
    pub outcome: OutcomeName,
    /// Blobs moved for this target.
    pub blobs: Blobs,
    /// Manifests written for this target.
    pub manifests_pushed: usize,
    /// Bytes uploaded to this target.
    pub bytes_uploaded: u64,
    /// Wall time of the image × tag (shared by its targets).
    pub duration_seconds: f64,
    /// Why it failed or was deferred; null otherwise.
    pub error: Option<ErrorReport>,
}

/// Blob counts for one target.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Blobs {
    /// Uploaded from the spool.
    pub uploaded: usize,
    /// Mounted from another repository of the same registry.
    pub mounted: usize,
    /// Already present.
    pub skipped: usize,
}

/// A failure.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorReport {
    /// `auth` (exit 3), `verification` or `missing` (exit 4), `other`
    /// (exit 1), `rate-limited` (a deferred result; exit 0), or `refused`
    /// (media types the target does not accept: exit 1 for an image, a
    /// `refused` referrer does not fail the run).
    pub kind: String,
    /// The whole chain on one line.
    pub message: String,
    /// The error, then each cause.
    pub chain: Vec<String>,
    /// `rate-limited`: when the registry's window resets (RFC 3339, UTC),
    /// if it said.
    pub retry_at: Option<String>,
}

fn row(o: &Outcome) -> Row {
    let digest = |d: &Option<regmirror::digest::Digest>| d.as_ref().map(|d| d.to_string());
    Row {
        image: o.image.clone(),
        tag: o.tag.clone(),
        target: o.target.clone(),
        destination: o.destination.clone(),
        source_digest: digest(&o.source_digest),
        target_digest_before: digest(&o.before),
        target_digest_after: digest(&o.after),
        outcome: match o.status {
            Status::Copied => OutcomeName::Copied,
            Status::Present => OutcomeName::Present,
            Status::Planned => OutcomeName::Planned,
            Status::Verified => OutcomeName::Verified,
            Status::Failed => OutcomeName::Failed,
            Status::Deferred => OutcomeName::Deferred,
            Status::Cancelled => OutcomeName::Cancelled,
            Status::Refused => OutcomeName::Refused,
        },
        blobs: Blobs {
            uploaded: o.transfer.blobs_uploaded,
            mounted: o.transfer.blobs_mounted,
            skipped: o.transfer.blobs_skipped,
        },
        manifests_pushed: o.transfer.manifests_pushed,
        bytes_uploaded: o.transfer.bytes_uploaded,
        duration_seconds: o.duration.as_secs_f64(),
        error: o.failure.as_ref().map(|f| ErrorReport {
            kind: f.kind.as_str().to_string(),
            message: f.message(),
            chain: f.chain.clone(),
            retry_at: f
                .retry_at
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        }),
    }
}

impl Document {
    /// The report of `command`'s run.
    pub fn new(command: &str, summary: &Summary) -> Document {
        let totals = summary.totals();
        Document {
            regmirror: env!("CARGO_PKG_VERSION").to_string(),
            command: command.to_string(),
            started_at: summary
                .started
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            duration_seconds: summary.duration.as_secs_f64(),
            exit_code: summary.exit_code(),
            totals: Totals {
                results: summary.outcomes.len(),
                copied: summary.count(Status::Copied),
                present: summary.count(Status::Present),
                planned: summary.count(Status::Planned),
                verified: summary.count(Status::Verified),
                failed: summary.count(Status::Failed),
                deferred: summary.count(Status::Deferred),
                cancelled: summary.count(Status::Cancelled),
                refused: summary.count(Status::Refused),
                blobs_uploaded: totals.blobs_uploaded,
                blobs_mounted: totals.blobs_mounted,
                blobs_skipped: totals.blobs_skipped,
                manifests_pushed: totals.manifests_pushed,
                bytes_uploaded: totals.bytes_uploaded,
                spool_wait_seconds: summary.spool_waited.as_secs_f64(),
                spooled_bytes: summary.spooled,
                streamed_bytes: summary.streamed,
            },
            results: summary.outcomes.iter().map(row).collect(),
            requests: summary.requests.iter().cloned().collect(),
            registries: summary
                .throttled
                .iter()
                .map(|(registry, settled)| Throttled {
                    registry: registry.clone(),
                    throttled: settled.throttled,
                    pace: settled
                        .pace
                        .iter()
                        .map(|(kind, rate)| {
                            (kind.as_str().to_string(), (rate * 100.0).round() / 100.0)
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Pretty-printed JSON, with a final newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("plain data always serializes");
        text.push('\n');
        text
    }
}

/// The JSON Schema of [`Document`], pretty-printed.
pub fn schema() -> String {
    let schema = schemars::schema_for!(Document);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
    text.push('\n');
    text
}
