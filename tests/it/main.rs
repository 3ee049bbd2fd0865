//! The integration tests: one binary, the real `regmirror` against real
//! `docker-registry` processes on loopback, started and stopped by the
//! tests (by PID).
//!
//! - `sync`: end to end: copy, verify, selectors, import, reports, schemas.
//! - `faults`: a scripted proxy and hostile servers in front of real
//!   registries: rate limits, resets, tampering, crashes, deadlines,
//!   untrusted names, credentials, output, signals.
//! - `seeds`: the five seed scenarios in `examples/`.
//! - `support`: registries, the token issuer, the fault proxy, the stand-in
//!   server, image generation, the independent deep check.

mod faults;
mod seeds;
mod support;
mod sync;
