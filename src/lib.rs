//! regmirror keeps container images mirrored byte for byte from upstream
//! registries to the registries a team controls, and proves that every
//! target serves the same digest.
//!
//! # Layout
//!
//! Pure data and rules (no I/O, no HTTP client):
//!
//! - [`reference`](mod@reference), [`digest`], [`manifest`]: the OCI nouns. A manifest keeps
//!   its exact bytes; digests are checked as bytes stream. The one manifest
//!   regmirror writes itself is an index cut to `platforms`
//!   ([`manifest::platforms`]).
//! - [`config`]: `mirror.yaml` as written, with line and column of each value.
//! - [`plan`]: the file resolved into jobs (image × tag → destinations), or
//!   every problem with its place; `--only`/`--target` selection;
//!   `Plan::for_copy`; [`plan::tags`]: tag selectors (`regex`, `exclude`,
//!   `semver`, `latest`, GitHub releases) applied to a tag list.
//! - [`shard`]: `--shard I/N` and `plan --matrix N`, by a hash of each name.
//! - [`report`]: outcomes, failures and the summary as data; one rule
//!   (`Failure::from`) for what an error means to a run and its exit code.
//! - [`text`]: text on its way to people: registry text made one inert
//!   line, URLs shown without their secrets ([`text::ShownUrl`], the only
//!   form a URL takes in an error).
//!
//! The run, and what it talks to:
//!
//! - [`run`]: the facade both commands use: tag expansion, copy, verify,
//!   failures merged into one [`report::Summary`].
//! - [`copy`]: the engine: HEAD first, read once, write N, children before
//!   parents, tags last; then what refers to each image (`copy::referrers`).
//! - [`verify`]: digest equality across source and targets, optionally deep,
//!   optionally by content.
//! - [`registry`]: the HTTP client every request passes through (options,
//!   auth, deadlines, limits, retries, the manifest and blob verbs, a
//!   meter of each transfer for progress bars, ECR Public repositories).
//! - [`source`], [`layout`]: where images are read from (a registry, or an
//!   OCI layout directory); [`spool`]: blobs on disk while jobs need them,
//!   within a budget (blobs bigger than it stream past it, `copy::write`).
//! - [`github`]: a GitHub project's release tags (octocrab).
//!
//! Other commands: [`import`] (a `mirror.yaml` from regsync or skopeo sync),
//! [`audit`] (image references in manifests, charts, compose files,
//! workflows, Dockerfiles), [`containerd`] (`hosts.toml` files).
//!
//! The library never prints: it returns data and emits `tracing` events.
//! The binary (`src/bin/regmirror/`) parses arguments, renders tables, the
//! `--json` report, step-summary markdown and workflow commands, and maps a
//! run to its exit code.

/// The address of the troubleshooting entry `$anchor` in the manual
/// (`docs/troubleshooting.md`, published by .github/workflows/pages.yml), for
/// an error message to name; a literal, so that it fits in `concat!`. A test
/// checks that every anchor named exists.
#[macro_export]
macro_rules! troubleshooting {
    ($anchor:literal) => {
        concat!(
            "https://acme.github.io/regmirror/troubleshooting/#",
            $anchor
        )
    };
}

pub mod audit;
pub mod config;
pub mod containerd;
pub mod copy;
pub mod digest;
pub mod error;
pub mod github;
pub mod import;
pub mod layout;
pub mod manifest;
pub mod plan;
pub mod reference;
pub mod registry;
pub mod report;
pub mod run;
pub mod shard;
pub mod source;
pub mod spool;
pub mod text;
pub mod verify;

pub use error::{Error, Result};
