//! The integration tests: one binary, the real `regmirror` against real
//! `docker-registry` processes on loopback, started and stopped by the
//! tests (by PID).
//!
//! - `sync`: end to end: copy, verify, selectors, import, reports, schemas.
//! - `faults`: a scripted proxy in front of real registries: rate limits,
//!   resets, 5xx, tampering, crashes, TLS, malformed manifests.
//! - `hostile`: hostile registries and bad networks: untrusted names,
//!   credentials, output, fan-out, deadlines, spool, overlapping runs,
//!   signals, stored corruption.
//! - `registries`: Docker Hub, GHCR, ECR, Quay, ACR, GAR and Harbor as they
//!   behave, played in front of real registries; one end-to-end test each.
//! - `seeds`: the five seed scenarios in `examples/`.
//! - `serve`: `regmirror serve` on a schedule, its endpoints, reloads and
//!   stop, and a real Prometheus scraping it.
//! - `terminal`: what a user sees on a terminal (a pseudo-terminal, replayed
//!   through a terminal emulator).
//! - `support`: registries, the token issuer, the fault proxy, the stand-in
//!   server, image generation, the independent deep check.

#![allow(clippy::disallowed_macros)] // tests print their own diagnostics (see clippy.toml)

mod containerd;
mod faults;
mod hostile;
mod registries;
mod seeds;
mod serve;
mod support;
mod sync;
mod terminal;
