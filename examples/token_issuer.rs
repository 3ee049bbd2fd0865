//! A token issuer for distribution's token auth, run as a process for
//! `bench/run`'s token-auth target: the tests' issuer
//! (`tests/it/support/token.rs`: checks Basic credentials, signs ES256 JWTs
//! for the scopes asked).
//!
//! cargo run --release --example token_issuer -- USER PASSWORD COUNT_FILE
//!
//! Prints `URL CERT_PATH SERVICE ISSUER` on one line, then keeps the number
//! of token requests answered so far in COUNT_FILE (rewritten every 100 ms)
//! until it is killed.

#![allow(clippy::disallowed_macros)] // a program of its own, with its own output (see clippy.toml)

#[allow(dead_code)]
#[path = "../tests/it/support/standin.rs"]
mod standin;
#[allow(dead_code)]
#[path = "../tests/it/support/token.rs"]
mod token;

use token::{ISSUER, Issuer, SERVICE};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [user, password, count_file] = args.as_slice() else {
        panic!("usage: token_issuer USER PASSWORD COUNT_FILE");
    };
    let issuer = Issuer::start(user, password);
    println!(
        "{} {} {SERVICE} {ISSUER}",
        issuer.url,
        issuer.cert_path.display()
    );
    loop {
        let count = issuer.scopes_requested().len();
        let staged = format!("{count_file}.new");
        std::fs::write(&staged, format!("{count}\n")).unwrap();
        std::fs::rename(&staged, count_file).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
