//! What `serve` tells Prometheus, in the OpenMetrics text format
//! (prometheus-client). Every label value comes from `mirror.yaml` (image
//! entry names, target names, registry names) or is one of a fixed few
//! words (a run's result, a pair's status): never a tag or a digest a
//! registry sent, so the series stay as many as the file has entries.

use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use regmirror::report::{Status, Summary};
use std::sync::atomic::AtomicU64;

/// A run's result, by its exit code.
pub fn result_of(exit_code: i32) -> &'static str {
    match exit_code {
        0 => "success",
        regmirror::report::EXIT_DEFERRED => "deferred",
        130 | 143 => "cancelled",
        _ => "failed",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    image: String,
    target: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ImageLabels {
    image: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabels {
    registry: String,
}

type Seconds = Gauge<f64, AtomicU64>;

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    run_duration: Histogram,
    last_run: Seconds,
    pairs: Family<PairLabels, Counter>,
    failing: Family<ImageLabels, Gauge>,
    last_success: Family<ImageLabels, Seconds>,
    blobs_uploaded: Family<TargetLabels, Counter>,
    blobs_mounted: Family<TargetLabels, Counter>,
    bytes_uploaded: Family<TargetLabels, Counter>,
    manifests_pushed: Family<TargetLabels, Counter>,
    requests: Family<RegistryLabels, Counter>,
    throttled: Family<RegistryLabels, Counter>,
    reloads: Family<RunLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric, registered under `regmirror_`.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("regmirror");
        let metrics = Metrics {
            runs: Family::default(),
            // 1 s to about 68 min.
            run_duration: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            last_run: Seconds::default(),
            pairs: Family::default(),
            failing: Family::default(),
            last_success: Family::default(),
            blobs_uploaded: Family::default(),
            blobs_mounted: Family::default(),
            bytes_uploaded: Family::default(),
            manifests_pushed: Family::default(),
            requests: Family::default(),
            throttled: Family::default(),
            reloads: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "runs",
            "Sync runs, by result (success, failed, deferred, cancelled)",
            metrics.runs.clone(),
        );
        registry.register_with_unit(
            "run_duration",
            "Wall time of each sync run",
            Unit::Seconds,
            metrics.run_duration.clone(),
        );
        registry.register_with_unit(
            "last_run_timestamp",
            "When the last run ended (Unix time)",
            Unit::Seconds,
            metrics.last_run.clone(),
        );
        registry.register(
            "pairs",
            "Image × tag × target results of every run, by image, target and status (copied, present, failed, deferred, refused, cancelled)",
            metrics.pairs.clone(),
        );
        registry.register(
            "image_failed_pairs",
            "Failed image × tag × target pairs of the image in the last run",
            metrics.failing.clone(),
        );
        registry.register_with_unit(
            "image_last_success_timestamp",
            "When a run last brought every tag of the image up to date on every target (Unix time)",
            Unit::Seconds,
            metrics.last_success.clone(),
        );
        registry.register(
            "blobs_uploaded",
            "Blobs uploaded, by target",
            metrics.blobs_uploaded.clone(),
        );
        registry.register(
            "blobs_mounted",
            "Blobs mounted from another repository of the target's registry, by target",
            metrics.blobs_mounted.clone(),
        );
        registry.register_with_unit(
            "uploaded",
            "Bytes uploaded, by target",
            Unit::Bytes,
            metrics.bytes_uploaded.clone(),
        );
        registry.register(
            "manifests_pushed",
            "Manifests written, by target",
            metrics.manifests_pushed.clone(),
        );
        registry.register(
            "registry_requests",
            "Requests sent to each registry (every attempt; token requests aside)",
            metrics.requests.clone(),
        );
        registry.register(
            "registry_throttled",
            "Throttling answers (429, and 503 or 403 that throttle) from each registry",
            metrics.throttled.clone(),
        );
        registry.register(
            "config_reloads",
            "Changes of the configuration file seen, by result (success, failed)",
            metrics.reloads.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts a finished run.
    pub fn record(&self, summary: &Summary, ended: SystemTime) {
        let result = result_of(summary.exit_code());
        self.runs.get_or_create(&RunLabels { result }).inc();
        self.run_duration.observe(summary.duration.as_secs_f64());
        let ended = unix_seconds(ended);
        self.last_run.set(ended);
        let mut images: Vec<&str> = Vec::new();
        for outcome in &summary.outcomes {
            self.pairs
                .get_or_create(&PairLabels {
                    image: outcome.image.clone(),
                    target: outcome.target.clone(),
                    status: outcome.status.key(),
                })
                .inc();
            let target = TargetLabels {
                target: outcome.target.clone(),
            };
            let moved = &outcome.transfer;
            self.blobs_uploaded
                .get_or_create(&target)
                .inc_by(moved.blobs_uploaded as u64);
            self.blobs_mounted
                .get_or_create(&target)
                .inc_by(moved.blobs_mounted as u64);
            self.bytes_uploaded
                .get_or_create(&target)
                .inc_by(moved.bytes_uploaded);
            self.manifests_pushed
                .get_or_create(&target)
                .inc_by(moved.manifests_pushed as u64);
            if !images.contains(&outcome.image.as_str()) {
                images.push(&outcome.image);
            }
        }
        for image in images {
            let of_image = || summary.outcomes.iter().filter(|o| o.image == image);
            let failed = of_image().filter(|o| o.status == Status::Failed).count();
            let labels = ImageLabels {
                image: image.to_string(),
            };
            self.failing.get_or_create(&labels).set(failed as i64);
            let up_to_date = of_image()
                .all(|o| matches!(o.status, Status::Copied | Status::Present | Status::Refused));
            if up_to_date {
                self.last_success.get_or_create(&labels).set(ended);
            }
        }
        for (registry, requests) in &summary.requests {
            self.requests
                .get_or_create(&RegistryLabels {
                    registry: registry.clone(),
                })
                .inc_by(*requests);
        }
        for (registry, settled) in &summary.throttled {
            self.throttled
                .get_or_create(&RegistryLabels {
                    registry: registry.clone(),
                })
                .inc_by(settled.throttled);
        }
    }

    /// Counts a change of the configuration file: taken, or refused.
    pub fn reloaded(&self, taken: bool) {
        let result = if taken { "success" } else { "failed" };
        self.reloads.get_or_create(&RunLabels { result }).inc();
    }

    /// A run that could not start (its registry client did not build):
    /// counted as failed.
    pub fn failed_to_start(&self) {
        self.runs
            .get_or_create(&RunLabels { result: "failed" })
            .inc();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use regmirror::report::{Outcome, Transfer};

    fn outcome(image: &str, target: &str, status: Status) -> Outcome {
        Outcome {
            transfer: Transfer {
                blobs_uploaded: 2,
                bytes_uploaded: 100,
                ..Transfer::default()
            },
            ..Outcome::new(image, "v1", target, format!("{target}/{image}:v1"), status)
        }
    }

    #[test]
    fn a_run_becomes_series_labelled_by_what_the_file_names() {
        let metrics = Metrics::new();
        let summary = Summary {
            outcomes: vec![
                outcome("k3s", "ghcr", Status::Copied),
                outcome("k3s", "quay", Status::Present),
                outcome("nginx", "ghcr", Status::Failed),
            ],
            requests: vec![("docker.io".into(), 7)],
            ..Summary::default()
        };
        metrics.record(
            &summary,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000),
        );
        let text = metrics.encode();
        for line in [
            "regmirror_pairs_total{image=\"k3s\",target=\"ghcr\",status=\"copied\"} 1",
            "regmirror_pairs_total{image=\"nginx\",target=\"ghcr\",status=\"failed\"} 1",
            "regmirror_image_failed_pairs{image=\"nginx\"} 1",
            "regmirror_image_failed_pairs{image=\"k3s\"} 0",
            "regmirror_image_last_success_timestamp_seconds{image=\"k3s\"} 1000.0",
            "regmirror_blobs_uploaded_total{target=\"ghcr\"} 4",
            "regmirror_uploaded_bytes_total{target=\"quay\"} 100",
            "regmirror_registry_requests_total{registry=\"docker.io\"} 7",
            "# EOF",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
        // nginx never succeeded: no last-success series (an alert on
        // `absent()` or on its age both work).
        assert!(!text.contains("last_success_timestamp_seconds{image=\"nginx\"}"));
    }

    /// docs/service.md's table names every metric, and no other.
    #[test]
    fn the_metrics_reference_names_every_metric() {
        // A family shows once it has a series.
        let metrics = Metrics::new();
        metrics.record(
            &Summary {
                outcomes: vec![outcome("k3s", "ghcr", Status::Copied)],
                requests: vec![("docker.io".into(), 7)],
                throttled: vec![(
                    "docker.io".into(),
                    regmirror::registry::pace::Settled {
                        throttled: 2,
                        pace: Vec::new(),
                    },
                )],
                ..Summary::default()
            },
            SystemTime::now(),
        );
        metrics.reloaded(true);
        let text = metrics.encode();
        let mut served: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (name, kind) = l.split_once(' ').unwrap();
                match kind {
                    "counter" => format!("{name}_total"),
                    _ => name.to_string(),
                }
            })
            .collect();
        let page = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/service.md"),
        )
        .unwrap();
        let mut documented: Vec<String> = page
            .lines()
            .filter_map(|l| l.strip_prefix("| `regmirror_"))
            .map(|l| format!("regmirror_{}", l.split('`').next().unwrap()))
            .collect();
        served.sort();
        documented.sort();
        assert_eq!(served, documented);
    }
}
