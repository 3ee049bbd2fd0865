//! A registry behind a write limit nobody published, run as a process for
//! `bench/ratelimit`: the tests' fault proxy (`tests/it/support/proxy.rs`)
//! in front of UPSTREAM, answering PUTs beyond PER_SECOND a second (a token
//! bucket of BURST) with `429 Too Many Requests` and no `Retry-After`, as
//! `an_unpublished_write_limit_is_found_and_kept_to` does.
//!
//! cargo run --release --example limit_proxy -- UPSTREAM PER_SECOND BURST COUNT_FILE [METHODS]
//!
//! METHODS (default `PUT`) names the requests the bucket counts, comma
//! separated: `POST,PATCH,PUT` is a limit that counts every push request
//! (the upload session's POST and PATCHes too) in one bucket.
//!
//! Prints its `HOST:PORT` on one line, then keeps `REFUSED PASSED` (counted
//! requests answered 429, and let through) in COUNT_FILE (rewritten every
//! 100 ms) until it is killed.

#![allow(clippy::disallowed_macros)] // a program of its own, with its own output (see clippy.toml)

#[allow(dead_code)]
#[path = "../tests/it/support/proxy.rs"]
mod proxy;
#[allow(dead_code)]
#[path = "../tests/it/support/standin.rs"]
mod standin;

use std::sync::atomic::Ordering;

use proxy::{Action, Bucket, Proxy, Rule};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (args, methods) = match args.as_slice() {
        [args @ .., methods] if args.len() == 4 => (args, methods.as_str()),
        args => (args, "PUT"),
    };
    let [upstream, per_second, burst, count_file] = args else {
        panic!("usage: limit_proxy UPSTREAM PER_SECOND BURST COUNT_FILE [METHODS]");
    };
    let bucket = Bucket::new(
        per_second.parse().expect("PER_SECOND is a number"),
        burst.parse().expect("BURST is a whole number"),
        None,
    );
    // The proxy's rules name their method for the life of the program.
    let methods: &'static str = methods.to_string().leak();
    let rules = methods
        .split(',')
        .map(|method| Rule::new(method, "", usize::MAX, Action::Limit(bucket.clone())))
        .collect();
    let proxy = Proxy::start(upstream, rules);
    println!("{}", proxy.host);
    loop {
        let counts = format!(
            "{} {}\n",
            bucket.refused.load(Ordering::SeqCst),
            bucket.passed.load(Ordering::SeqCst)
        );
        std::fs::write(count_file, counts).expect("COUNT_FILE is writable");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
