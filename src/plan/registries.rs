//! `registries.<host>` resolved into client options, with the defaults we
//! keep for Docker Hub.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use crate::config::{EcrApi, EcrLoginEntry, Problem, RateLimitEntry, RegistryEntry, problem_at};
use crate::registry::options::RateLimit;
use crate::registry::options::RegistryOptions;

/// Docker Hub, unless `registries.docker.io` says otherwise: a steady pace
/// of manifest GETs (its anti-abuse limit answers bursts with 429), and
/// deferring pulls while 10 are left, so that a scheduled run never spends
/// the last pulls of the runners' shared address.
pub(crate) fn docker_hub_defaults() -> RegistryOptions {
    RegistryOptions {
        rate_limit: Some(RateLimit {
            requests: NonZeroU32::new(100).expect("not zero"),
            per: Duration::from_secs(60),
            burst: NonZeroU32::new(20),
        }),
        min_remaining: Some(10),
        ..RegistryOptions::default()
    }
}

/// GHCR's defaults: writes paced at its limit, 2000 a minute
/// (`toomanyrequests: … allowed: 2000/minute`, gardenlinux/gardenlinux#2585).
pub(crate) fn ghcr_defaults() -> RegistryOptions {
    RegistryOptions {
        write_rate_limit: Some(RateLimit {
            requests: NonZeroU32::new(2000).expect("not zero"),
            per: Duration::from_secs(60),
            burst: NonZeroU32::new(100),
        }),
        ..RegistryOptions::default()
    }
}

/// ECR Public's defaults: writes paced at 10 a second (CompleteLayerUpload
/// and PutImage, "Amazon ECR Public service quotas"), and a login from the
/// AWS credential chain.
pub(crate) fn ecr_public_defaults() -> RegistryOptions {
    RegistryOptions {
        write_rate_limit: Some(RateLimit {
            requests: NonZeroU32::new(10).expect("not zero"),
            per: Duration::from_secs(1),
            burst: NonZeroU32::new(10),
        }),
        ecr_login: Some(EcrApi::Public),
        ..RegistryOptions::default()
    }
}

/// Most requests in flight to one registry that `concurrency` takes.
const MAX_CONCURRENCY: usize = 1024;

/// Longest `rate_limit.per`.
const MAX_PER: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

/// Shortest and longest idle time-out `registries.<host>.timeout` takes.
const MIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Options for every registry the file names, keyed by registry as the
/// references spell it (`docker.io`), plus Docker Hub's defaults.
pub(crate) fn resolve(
    file_name: &str,
    entries: &std::collections::BTreeMap<String, RegistryEntry>,
    problems: &mut Vec<Problem>,
) -> HashMap<String, RegistryOptions> {
    let mut registries = HashMap::new();
    registries.insert("docker.io".to_string(), docker_hub_defaults());
    registries.insert("ghcr.io".to_string(), ghcr_defaults());
    registries.insert(
        crate::registry::ecr::PUBLIC.to_string(),
        ecr_public_defaults(),
    );
    for (host, entry) in entries {
        if !crate::reference::valid_registry(host) {
            problems.push(Problem {
                line: 0,
                column: 0,
                place: format!("registries.{host}"),
                message: format!(
                    "`{host}` is not a registry host (a host name or IP address with an optional `:PORT`)"
                ),
            });
            continue;
        }
        let (registry, _) = crate::reference::normalize_docker_hub(host, "x");
        let mut options = registries.remove(&registry).unwrap_or_default();
        options.insecure = entry.insecure;
        options.tls = entry.tls;
        options.create_repositories = entry.create_repositories;
        let by_host = crate::registry::ecr::api_for(&registry);
        options.ecr_login = match &entry.ecr_login {
            None => by_host,
            Some(EcrLoginEntry::Flag(true)) => by_host.or(Some(EcrApi::Public)),
            Some(EcrLoginEntry::Flag(false)) => None,
            Some(EcrLoginEntry::Api(api)) => Some(*api),
        };
        let place = |key: &str| format!("registries.{host}.{key}");
        if let Some(concurrency) = &entry.concurrency {
            if concurrency.value == 0 {
                problems.push(problem_at(
                    concurrency,
                    place("concurrency"),
                    "must be at least 1",
                ));
            }
            if concurrency.value > MAX_CONCURRENCY {
                problems.push(problem_at(
                    concurrency,
                    place("concurrency"),
                    format!("must be at most {MAX_CONCURRENCY}"),
                ));
            }
            options.concurrency = concurrency.value.clamp(1, MAX_CONCURRENCY);
        }
        if let Some(entry) = &entry.rate_limit {
            options.rate_limit = rate_limit(entry, &place("rate_limit"), problems);
        }
        if let Some(entry) = &entry.write_rate_limit {
            options.write_rate_limit = rate_limit(entry, &place("write_rate_limit"), problems);
        }
        if let Some(timeout) = &entry.timeout {
            match humantime::parse_duration(&timeout.value) {
                Ok(window) if (MIN_TIMEOUT..=MAX_TIMEOUT).contains(&window) => {
                    options.timeout = window;
                }
                Ok(_) => problems.push(problem_at(
                    timeout,
                    place("timeout"),
                    "must be between 1s and 1h",
                )),
                Err(e) => problems.push(problem_at(
                    timeout,
                    place("timeout"),
                    format!(
                        "`{}` is not a duration like `30s` or `2m` ({e})",
                        timeout.value
                    ),
                )),
            }
        }
        if let Some(min) = &entry.min_remaining {
            options.min_remaining = Some(min.value);
        }
        if let Some(ca) = &entry.ca {
            let base = Path::new(file_name).parent().unwrap_or(Path::new(""));
            let path = base.join(&ca.value);
            if !path.is_file() {
                problems.push(problem_at(
                    ca,
                    place("ca"),
                    format!("no such file `{}`", path.display()),
                ));
            }
            options.ca = Some(path);
        }
        if entry.insecure && (entry.tls || entry.ca.is_some()) {
            let message = "`insecure: true` turns TLS off; it cannot go with `tls` or `ca`";
            problems.push(match &entry.ca {
                Some(ca) => problem_at(ca, place("ca"), message),
                None => Problem {
                    line: 0,
                    column: 0,
                    place: place("tls"),
                    message: message.into(),
                },
            });
        }
        registries.insert(registry, options);
    }
    registries
}

fn rate_limit(
    entry: &RateLimitEntry,
    place: &str,
    problems: &mut Vec<Problem>,
) -> Option<RateLimit> {
    let before = problems.len();
    let requests = NonZeroU32::new(entry.requests.value);
    if requests.is_none() {
        problems.push(problem_at(
            &entry.requests,
            format!("{place}.requests"),
            "must be at least 1",
        ));
    }
    let per = match humantime::parse_duration(&entry.per.value) {
        Ok(per) if per > MAX_PER => {
            problems.push(problem_at(
                &entry.per,
                format!("{place}.per"),
                "must be at most a year",
            ));
            None
        }
        Ok(per) if !per.is_zero() => Some(per),
        Ok(_) => {
            problems.push(problem_at(
                &entry.per,
                format!("{place}.per"),
                "must be longer than 0s",
            ));
            None
        }
        Err(e) => {
            problems.push(problem_at(
                &entry.per,
                format!("{place}.per"),
                format!(
                    "`{}` is not a duration like `1h` or `30s` ({e})",
                    entry.per.value
                ),
            ));
            None
        }
    };
    let burst = entry.burst.as_ref().map(|burst| {
        let value = NonZeroU32::new(burst.value);
        if value.is_none() {
            problems.push(problem_at(
                burst,
                format!("{place}.burst"),
                "must be at least 1",
            ));
        }
        value
    });
    if problems.len() > before {
        return None;
    }
    Some(RateLimit {
        requests: requests?,
        per: per?,
        burst: burst.flatten(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(yaml: &str) -> HashMap<String, RegistryOptions> {
        let text = format!("version: 1\nregistries:\n{yaml}");
        let file = crate::config::parse("mirror.yaml", &text).unwrap();
        let mut problems = Vec::new();
        let options = resolve("mirror.yaml", &file.registries, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        options
    }

    #[test]
    fn ghcr_and_ecr_public_pace_writes_unless_told_otherwise() {
        let all = options("  quay.io: {}\n");
        let per_second = |o: &RegistryOptions| {
            o.write_rate_limit
                .map(|r| r.requests.get() as f64 / r.per.as_secs_f64())
        };
        assert_eq!(
            per_second(&all["ghcr.io"]).map(|r| (r * 60.0).round()),
            Some(2000.0)
        );
        assert_eq!(per_second(&all["public.ecr.aws"]), Some(10.0));
        assert_eq!(all["public.ecr.aws"].ecr_login, Some(EcrApi::Public));
        assert_eq!(per_second(&all["quay.io"]), None);
        let mine = options(
            "  ghcr.io:\n    write_rate_limit: {requests: 100, per: 1m}\n  public.ecr.aws:\n    ecr_login: false\n",
        );
        assert_eq!(
            per_second(&mine["ghcr.io"]).map(|r| (r * 60.0).round()),
            Some(100.0)
        );
        assert_eq!(mine["public.ecr.aws"].ecr_login, None);
        assert_eq!(per_second(&mine["public.ecr.aws"]), Some(10.0));
    }

    #[test]
    fn docker_hub_keeps_the_defaults_it_does_not_override() {
        let hub = &options("  quay.io: {}\n")["docker.io"];
        assert_eq!(hub.min_remaining, Some(10));
        assert_eq!(hub.rate_limit, docker_hub_defaults().rate_limit);

        // Written as its API host, Docker Hub is still `docker.io`.
        let hub = &options("  registry-1.docker.io:\n    concurrency: 2\n    min_remaining: 50\n")
            ["docker.io"];
        assert_eq!((hub.concurrency, hub.min_remaining), (2, Some(50)));
        assert_eq!(hub.rate_limit, docker_hub_defaults().rate_limit);

        let quay = &options("  quay.io:\n    rate_limit: {requests: 10, per: 1h}\n")["quay.io"];
        assert_eq!(quay.min_remaining, None);
        let limit = quay.rate_limit.unwrap();
        assert_eq!(
            (limit.requests.get(), limit.per, limit.burst),
            (10, Duration::from_secs(3600), None)
        );
    }
}
