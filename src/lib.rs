//! regmirror keeps container images mirrored byte for byte from upstream
//! registries to the registries a team controls, and proves that every
//! target serves the same digest.
//!
//! # Layout
//!
//! - [`reference`], [`digest`], [`manifest`]: the OCI nouns, pure data. A
//!   manifest keeps its exact bytes; digests are checked as bytes stream.
//! - [`config`]: `mirror.yaml` as written, with line and column of each value.
//! - [`plan`]: the file resolved into jobs (image × tag → destinations), or
//!   every problem with its place; `--only`/`--target` selection.
//! - [`tags`]: tag selectors (`regex`, `exclude`, `semver`, `latest`)
//!   applied to a source's tag list at run time; [`github`]: a GitHub
//!   project's release tags as candidates (octocrab).
//! - [`shard`]: `--shard I/N` and `plan --matrix N`, splitting a plan across
//!   CI runners by a hash of each image's name.
//! - [`registry`]: the HTTP client every request passes through: auth
//!   (Docker credential chain, bearer tokens), per-registry limits (a
//!   governor quota, the registry's own `ratelimit-remaining`), retries,
//!   the referrers API, and ECR Public repositories (`registry::ecr`).
//! - [`source`], [`layout`]: where images are read from (a registry, or an
//!   OCI layout directory).
//! - [`spool`]: blobs fetched once per run, on disk, for every target.
//! - [`copy`]: the engine: HEAD first, read once, write N, children before
//!   parents, tags last; then what refers to each image (`copy::referrers`).
//! - [`verify`]: digest equality across source and targets, optionally deep.
//! - [`import`]: a `mirror.yaml` from a regsync or skopeo-sync file.
//! - [`audit`]: image references in manifests, charts, compose files,
//!   workflows and Dockerfiles, against the plan.
//! - [`containerd`]: `hosts.toml` files that pull from the mirrors first.
//! - [`report`]: outcomes, the summary, exit codes; rendered as a table, as
//!   the `--json` document, as step-summary markdown, as Actions annotations.
//!
//! The library never prints; it returns a [`report::Summary`] and emits
//! `tracing` events. `main.rs` decides how output looks.

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
pub mod verify;

pub use error::{Error, Result};
