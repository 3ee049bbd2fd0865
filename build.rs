//! Names the commit a binary is built from, for `regmirror --version`: the
//! `REGMIRROR_COMMIT` variable when the build sets it (a release built from
//! an archive), else `git rev-parse` in a checkout, else nothing (a build
//! from the published crate).

#![allow(clippy::disallowed_macros)] // Cargo reads its directives from stdout (see clippy.toml)

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=REGMIRROR_COMMIT");
    // A new commit moves the branch's ref (or `packed-refs`), a checkout
    // moves HEAD. Only files that exist are watched: Cargo takes a missing
    // one as changed, and would rebuild the crate on every build.
    let mut watched = vec![".git/HEAD".to_string(), ".git/packed-refs".to_string()];
    if let Ok(head) = std::fs::read_to_string(".git/HEAD")
        && let Some(reference) = head.trim().strip_prefix("ref: ")
    {
        watched.push(format!(".git/{reference}"));
    }
    for path in watched.iter().filter(|p| std::path::Path::new(p).is_file()) {
        println!("cargo:rerun-if-changed={path}");
    }
    let commit = std::env::var("REGMIRROR_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let output = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
        })
        .filter(|c| c.chars().all(|ch| ch.is_ascii_alphanumeric()));
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets it");
    let long = match commit {
        Some(commit) => format!("{version} (commit {commit})"),
        None => version,
    };
    println!("cargo:rustc-env=REGMIRROR_VERSION={long}");
}
