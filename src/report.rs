//! What a run did, per image × tag × target, as data.
//!
//! The library returns a [`Summary`]; the binary renders it (a table on
//! stderr, the `--json` report, step-summary markdown, workflow-command
//! annotations). [`Failure::from`] is the one rule for what an error means
//! to a run: deferred by a rate limit, authentication (exit 3), digest
//! mismatch (exit 4), or anything else (exit 1).

use std::time::{Duration, SystemTime};

use crate::digest::Digest;

/// How one image × tag × target ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The target now has the image; something was written.
    Copied,
    /// The target already had it; nothing was written.
    Present,
    /// `--dry-run`: the target differs and would be written.
    Planned,
    /// `verify`: the target serves the source's digest.
    Verified,
    /// It did not work; see the failure.
    Failed,
    /// Not attempted: the source registry's rate limit is spent; the next
    /// run picks it up (see the failure for when).
    Deferred,
    /// Not finished: the run was stopped (SIGINT, SIGTERM) before or while
    /// it ran. The target has the image whole, or not at all.
    Cancelled,
    /// A referrer (a signature, an SBOM) the target will not take: its
    /// media types are not allowed there (Quay's allow-list). The image it
    /// refers to is not failed by it; the failure says why and what allows it.
    Refused,
}

impl Status {
    /// Lowercase name for tables and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Copied => "copied",
            Status::Present => "present",
            Status::Planned => "would copy",
            Status::Verified => "verified",
            Status::Failed => "FAILED",
            Status::Deferred => "deferred",
            Status::Cancelled => "cancelled",
            Status::Refused => "refused",
        }
    }

    /// The name the `--json` report and metrics use (`failed`, `planned`).
    pub fn key(self) -> &'static str {
        match self {
            Status::Planned => "planned",
            Status::Failed => "failed",
            other => other.as_str(),
        }
    }
}

/// Why something failed, as far as the exit code cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// A registry refused our identity (exit 3).
    Auth,
    /// After copying, or on `verify`, a target's digest differs, or parts
    /// of the image are missing (exit 4).
    Verification,
    /// On `verify`, the target does not have the tag at all (exit 4).
    Missing,
    /// The source's rate limit is spent (exit 0: deferred, not failed).
    RateLimited,
    /// The target refuses the manifest for its media types (a registry
    /// setting): exit 1 for an image, a warning for a referrer.
    Refused,
    /// Anything else (exit 1).
    Other,
}

impl FailureKind {
    /// Lowercase name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Auth => "auth",
            FailureKind::Verification => "verification",
            FailureKind::Missing => "missing",
            FailureKind::RateLimited => "rate-limited",
            FailureKind::Refused => "refused",
            FailureKind::Other => "other",
        }
    }
}

/// Why one image × tag × target failed: the kind, and the error with every
/// cause, outermost first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What the exit code makes of it.
    pub kind: FailureKind,
    /// The error and its causes, outermost first.
    pub chain: Vec<String>,
    /// For a rate limit: when the registry expects us back, if it said.
    pub retry_at: Option<SystemTime>,
}

impl Failure {
    /// A failure of `kind` from an error.
    pub fn of(kind: FailureKind, error: &(dyn std::error::Error + 'static)) -> Failure {
        Failure {
            kind,
            chain: error_chain_parts(error),
            retry_at: None,
        }
    }

    /// A failure of `kind` described by one line.
    pub fn text(kind: FailureKind, text: String) -> Failure {
        Failure {
            kind,
            chain: vec![text],
            retry_at: None,
        }
    }

    /// The chain on one line: `error: cause: cause`.
    pub fn message(&self) -> String {
        self.chain.join(": ")
    }
}

/// The one rule for what an error means to a run, wherever it happened
/// (listing tags, copying, verifying): a spent rate limit defers the work to
/// the next run (exit code unchanged); authentication is exit 3; a digest
/// that does not match is exit 4; anything else exit 1.
impl From<&crate::Error> for Failure {
    fn from(error: &crate::Error) -> Failure {
        if let Some(until) = error.rate_limited_until() {
            // Deferred only when the registry asks us back later than a run
            // waits (a long `Retry-After`, a spent pull budget); throttling
            // that outlasted every retry without such a wait is a failure.
            let later = until.is_some_and(|at| {
                at.duration_since(SystemTime::now())
                    .is_ok_and(|wait| wait > crate::registry::retry::MAX_DELAY)
            });
            if !later {
                let mut failure = Failure::of(FailureKind::Other, error);
                failure.chain.push(
                    concat!(
                        "the registry kept throttling through every retry without asking for a longer wait; set `write_rate_limit` or `rate_limit` for it below the paces the run found (see ",
                        crate::troubleshooting!("rate-limited"),
                        ")"
                    )
                    .into(),
                );
                return failure;
            }
            return Failure {
                retry_at: until,
                ..Failure::of(FailureKind::RateLimited, error)
            };
        }
        if error.refuses_content() {
            let mut failure = Failure::of(FailureKind::Refused, error);
            failure.chain.push(REFUSED_HINT.to_string());
            return failure;
        }
        let kind = if error.is_auth() {
            FailureKind::Auth
        } else if matches!(error.root(), crate::Error::Verification { .. }) {
            FailureKind::Verification
        } else {
            FailureKind::Other
        };
        Failure::of(kind, error)
    }
}

/// The exit code of a run that deferred work and mirrored nothing: 75,
/// `EX_TEMPFAIL` of `sysexits.h` ("a temporary failure … the user is
/// invited to retry later").
pub const EXIT_DEFERRED: i32 = 75;

/// What allows a manifest a registry refused for its media types.
const REFUSED_HINT: &str = concat!(
    "the target does not accept these media types (a registry setting, not a fault of the image): on Quay, an administrator allows them with `FEATURE_GENERAL_OCI_SUPPORT: true` and `ALLOWED_OCI_ARTIFACT_TYPES` (or `IGNORE_UNKNOWN_MEDIATYPES: true`) in Quay's config.yaml (see ",
    crate::troubleshooting!("referrer-refused"),
    ")"
);

/// Blobs and bytes moved for one target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Blobs uploaded from the spool.
    pub blobs_uploaded: usize,
    /// Blobs mounted from another repository of the same registry.
    pub blobs_mounted: usize,
    /// Blobs the target already had.
    pub blobs_skipped: usize,
    /// Manifests written (children and the tagged one).
    pub manifests_pushed: usize,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
}

/// One image × tag × target.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The image entry's name.
    pub image: String,
    /// The tag set on the target.
    pub tag: String,
    /// The target's name.
    pub target: String,
    /// `repository:tag` at the target.
    pub destination: String,
    /// The digest the source has for this tag, when known.
    pub source_digest: Option<Digest>,
    /// The digest the target had before, when it had one.
    pub before: Option<Digest>,
    /// The digest the target has now, when known (checked after writing).
    pub after: Option<Digest>,
    /// How it ended.
    pub status: Status,
    /// Why it failed, with the whole cause chain.
    pub failure: Option<Failure>,
    /// What was moved.
    pub transfer: Transfer,
    /// Wall time for the image (shared by its targets).
    pub duration: Duration,
}

/// A whole run.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Every outcome, in plan order.
    pub outcomes: Vec<Outcome>,
    /// Wall time of the run.
    pub duration: Duration,
    /// When the run started.
    pub started: Option<SystemTime>,
    /// The exit code of the signal that stopped the run (130 for SIGINT,
    /// 143 for SIGTERM), if one did.
    pub interrupted: Option<i32>,
    /// Per registry that throttled: how often, and the paces found.
    pub throttled: Vec<(String, crate::registry::pace::Settled)>,
    /// Requests sent per registry (every attempt, token requests aside).
    pub requests: Vec<(String, u64)>,
    /// How long jobs waited for room in the spool, in all.
    pub spool_waited: Duration,
    /// Bytes read from sources into the spool.
    pub spooled: u64,
    /// Bytes read from sources and streamed to targets, past the spool.
    pub streamed: u64,
}

impl Outcome {
    /// Nothing happened yet for `image:tag` at `target` (`destination`):
    /// the base the other constructors fill in.
    pub fn new(
        image: &str,
        tag: &str,
        target: &str,
        destination: String,
        status: Status,
    ) -> Outcome {
        Outcome {
            image: image.to_string(),
            tag: tag.to_string(),
            target: target.to_string(),
            destination,
            source_digest: None,
            before: None,
            after: None,
            status,
            failure: None,
            transfer: Transfer::default(),
            duration: Duration::ZERO,
        }
    }

    /// `failure` happened: `deferred` for a spent rate limit, else `failed`
    /// (the rule of [`Failure::from`]).
    pub fn failed(self, failure: Failure) -> Outcome {
        let status = if failure.kind == FailureKind::RateLimited {
            Status::Deferred
        } else {
            Status::Failed
        };
        Outcome {
            status,
            failure: Some(failure),
            ..self
        }
    }
}

/// The error and each cause, outermost first; a cause whose text the
/// message already includes is left out.
pub fn error_chain_parts(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&cause_text)) {
            parts.push(cause_text);
        }
        source = cause.source();
    }
    parts
}

/// `error: cause: cause`, one line, like `anyhow`'s `{:#}`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    error_chain_parts(error).join(": ")
}

impl Summary {
    /// Outcomes with this status.
    pub fn count(&self, status: Status) -> usize {
        self.outcomes.iter().filter(|o| o.status == status).count()
    }

    /// The exit code the run deserves: 3 for auth, 4 for a verification
    /// mismatch, 1 for any other failure; else 0, or [`EXIT_DEFERRED`] when
    /// work was deferred and nothing at all was mirrored. Deferred work is
    /// not a failure (the next run does it), but a run that deferred
    /// everything is not a success either; a refused referrer is a warning.
    pub fn exit_code(&self) -> i32 {
        if let Some(code) = self.interrupted {
            return code;
        }
        let code = self.failure_code();
        let deferred = self.count(Status::Deferred) > 0;
        let mirrored = self.outcomes.iter().any(|o| {
            matches!(
                o.status,
                Status::Copied | Status::Present | Status::Verified | Status::Planned
            )
        });
        if code == 0 && deferred && !mirrored {
            EXIT_DEFERRED
        } else {
            code
        }
    }

    /// The exit code of the failures alone.
    fn failure_code(&self) -> i32 {
        let kinds: Vec<FailureKind> = self
            .outcomes
            .iter()
            .filter(|o| o.status != Status::Refused)
            .filter_map(|o| o.failure.as_ref().map(|f| f.kind))
            .filter(|k| *k != FailureKind::RateLimited)
            .collect();
        if kinds.contains(&FailureKind::Auth) {
            3
        } else if kinds
            .iter()
            .any(|k| matches!(k, FailureKind::Verification | FailureKind::Missing))
        {
            4
        } else if kinds.is_empty() {
            0
        } else {
            1
        }
    }

    /// Totals over all outcomes.
    pub fn totals(&self) -> Transfer {
        self.outcomes
            .iter()
            .fold(Transfer::default(), |mut total, o| {
                total.blobs_uploaded += o.transfer.blobs_uploaded;
                total.blobs_mounted += o.transfer.blobs_mounted;
                total.blobs_skipped += o.transfer.blobs_skipped;
                total.manifests_pushed += o.transfer.manifests_pushed;
                total.bytes_uploaded += o.transfer.bytes_uploaded;
                total
            })
    }

    /// `3 copied, 5 present, 1 failed`: the statuses that occur, in a fixed
    /// order (copied, present, failed always; the others when non-zero).
    pub fn counts(&self) -> String {
        let mut parts = Vec::new();
        for status in [
            Status::Copied,
            Status::Present,
            Status::Verified,
            Status::Planned,
            Status::Deferred,
            Status::Cancelled,
            Status::Refused,
            Status::Failed,
        ] {
            let n = self.count(status);
            let always = matches!(status, Status::Copied | Status::Present | Status::Failed);
            if n > 0 || always {
                parts.push(format!("{n} {}", status.as_str().to_lowercase()));
            }
        }
        parts.join(", ")
    }
}

/// An outcome for the report tests: `image:tag` to target `ghcr`
/// (`ghcr.io/a/IMAGE:TAG`), with `status` and, when given, a failure of
/// `kind` whose chain is `chain`.
#[doc(hidden)]
pub fn sample(
    image: &str,
    tag: &str,
    status: Status,
    failure: Option<(FailureKind, &[&str])>,
) -> Outcome {
    Outcome {
        image: image.into(),
        tag: tag.into(),
        target: "ghcr".into(),
        destination: format!("ghcr.io/a/{image}:{tag}"),
        source_digest: None,
        before: None,
        after: None,
        status,
        failure: failure.map(|(kind, chain)| Failure {
            kind,
            chain: chain.iter().map(|c| c.to_string()).collect(),
            retry_at: None,
        }),
        transfer: Transfer::default(),
        duration: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Status, failure: Option<FailureKind>) -> Outcome {
        sample(
            "k3s",
            "v1",
            status,
            failure.map(|kind| (kind, &["boom"][..])),
        )
    }

    #[test]
    fn exit_codes_follow_the_worst_failure() {
        let summary = |o: Vec<Outcome>| Summary {
            outcomes: o,
            ..Summary::default()
        };
        assert_eq!(summary(vec![outcome(Status::Copied, None)]).exit_code(), 0);
        assert_eq!(
            summary(vec![
                outcome(Status::Copied, None),
                outcome(Status::Failed, Some(FailureKind::Other))
            ])
            .exit_code(),
            1
        );
        assert_eq!(
            summary(vec![
                outcome(Status::Failed, Some(FailureKind::Other)),
                outcome(Status::Failed, Some(FailureKind::Auth))
            ])
            .exit_code(),
            3
        );
        assert_eq!(
            summary(vec![outcome(
                Status::Failed,
                Some(FailureKind::Verification)
            )])
            .exit_code(),
            4
        );
        // All deferred, nothing mirrored: not a success (EX_TEMPFAIL);
        // deferred beside work done: the next run does the rest.
        let deferred = || outcome(Status::Deferred, Some(FailureKind::RateLimited));
        assert_eq!(summary(vec![deferred(), deferred()]).exit_code(), 75);
        assert_eq!(
            summary(vec![deferred(), outcome(Status::Present, None)]).exit_code(),
            0
        );
        assert_eq!(
            summary(vec![
                deferred(),
                outcome(Status::Failed, Some(FailureKind::Auth))
            ])
            .exit_code(),
            3
        );
        // A referrer the target refuses is a warning; an image it refuses
        // fails the run.
        assert_eq!(
            summary(vec![
                outcome(Status::Copied, None),
                outcome(Status::Refused, Some(FailureKind::Refused))
            ])
            .exit_code(),
            0
        );
        assert_eq!(
            summary(vec![outcome(Status::Failed, Some(FailureKind::Refused))]).exit_code(),
            1
        );
    }
}
