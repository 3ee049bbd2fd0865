//! Splitting a plan across CI runners: `--shard I/N` and `plan --matrix N`.
//!
//! An image belongs to a bucket chosen by hashing its name (SHA-256, so the
//! same on every machine and every release), never by its position in the
//! file: adding or removing other images does not move it. `--shard 2/4`
//! runs bucket 2 of 4; every image is in exactly one bucket.
//!
//! `plan --matrix N` balances by tag count as well: it hashes into
//! [`BUCKETS_PER_JOB`]`× N` small buckets and packs them into N jobs by
//! weight (the lightest job takes the heaviest bucket left), then writes
//! each job's share as a bucket list, `--shard 3,11,17/64`. Each matrix job
//! re-reads the same config and computes the same buckets, so together the
//! jobs cover every image exactly once.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::plan::Plan;

/// Small buckets per matrix job: enough to balance, few enough to keep the
/// `--shard` argument short.
pub const BUCKETS_PER_JOB: usize = 16;

/// Most jobs GitHub Actions runs from one matrix.
pub const MAX_MATRIX_JOBS: usize = 256;

/// Which buckets to run, out of how many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 1-based bucket numbers.
    pub buckets: BTreeSet<usize>,
    /// How many buckets there are.
    pub of: usize,
}

/// The 1-based bucket of an image name among `of`.
pub fn bucket(name: &str, of: usize) -> usize {
    let hash = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    (u64::from_be_bytes(first) % of as u64) as usize + 1
}

impl Shard {
    /// True when the image named `name` is in this shard.
    pub fn contains(&self, name: &str) -> bool {
        self.buckets.contains(&bucket(name, self.of))
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `I/N` or `I,J,K/N`, each index in `1..=N`.
    fn from_str(text: &str) -> Result<Shard, String> {
        let bad = |why: &str| format!("`--shard {text}`: {why} (write `I/N`, e.g. `2/4`)");
        let (indexes, of) = text.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let of: usize = of.trim().parse().map_err(|_| bad("N is not a number"))?;
        if of == 0 {
            return Err(bad("N must be at least 1"));
        }
        let mut buckets = BTreeSet::new();
        for index in indexes.split(',') {
            let index: usize = index.trim().parse().map_err(|_| bad("I is not a number"))?;
            if !(1..=of).contains(&index) {
                return Err(bad(&format!("I must be between 1 and {of}")));
            }
            buckets.insert(index);
        }
        Ok(Shard { buckets, of })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let indexes: Vec<String> = self.buckets.iter().map(usize::to_string).collect();
        write!(f, "{}/{}", indexes.join(","), self.of)
    }
}

impl Plan {
    /// Keeps the jobs of images in `shard`.
    pub fn shard(mut self, shard: &Shard) -> Plan {
        self.jobs.retain(|job| shard.contains(&job.image));
        self.queries.retain(|query| shard.contains(&query.image));
        self
    }
}

/// One job of a GitHub Actions matrix.
#[derive(Clone, Debug, Serialize)]
pub struct MatrixJob {
    /// The argument for `--shard`.
    pub shard: String,
    /// Images in this job.
    pub images: usize,
    /// Image × tag jobs in this job (the weight that was balanced).
    pub tags: usize,
    /// Image × tag × target pairs.
    pub pairs: usize,
}

/// `{"include": [...]}`, for `strategy.matrix: ${{ fromJSON(...) }}`.
#[derive(Clone, Debug, Serialize)]
pub struct Matrix {
    /// The jobs; never empty (GitHub rejects an empty matrix).
    pub include: Vec<MatrixJob>,
}

/// Splits `plan` into at most `jobs` shards of about equal tag count.
/// Jobs that would get nothing are left out.
pub fn matrix(plan: &Plan, jobs: usize) -> Matrix {
    let jobs = jobs.clamp(1, MAX_MATRIX_JOBS);
    let of = jobs * BUCKETS_PER_JOB;
    // (tags, pairs, images) per bucket.
    let mut weights = vec![(0usize, 0usize, BTreeSet::new()); of];
    for job in &plan.jobs {
        let weight = &mut weights[bucket(&job.image, of) - 1];
        weight.0 += 1;
        weight.1 += job.destinations.len();
        weight.2.insert(job.image.as_str());
    }
    // A selector's tag count is unknown until run time: count it as one.
    for query in &plan.queries {
        let weight = &mut weights[bucket(&query.image, of) - 1];
        weight.0 += 1;
        weight.1 += query.targets.len();
        weight.2.insert(query.image.as_str());
    }
    let mut order: Vec<usize> = (0..of).filter(|&b| weights[b].0 > 0).collect();
    // Heaviest first; ties by bucket number so the result is deterministic.
    order.sort_by_key(|&b| (std::cmp::Reverse(weights[b].0), b));
    let mut shares: Vec<(usize, BTreeSet<usize>)> = vec![(0, BTreeSet::new()); jobs];
    for b in order {
        let lightest = (0..jobs)
            .min_by_key(|&j| (shares[j].0, j))
            .expect("at least one job");
        shares[lightest].0 += weights[b].0;
        shares[lightest].1.insert(b + 1);
    }
    let mut include: Vec<MatrixJob> = shares
        .into_iter()
        .filter(|(_, buckets)| !buckets.is_empty())
        .map(|(tags, buckets)| MatrixJob {
            pairs: buckets.iter().map(|b| weights[b - 1].1).sum(),
            images: buckets.iter().map(|b| weights[b - 1].2.len()).sum(),
            shard: Shard { buckets, of }.to_string(),
            tags,
        })
        .collect();
    if include.is_empty() {
        include.push(MatrixJob {
            shard: "1/1".into(),
            images: 0,
            tags: 0,
            pairs: 0,
        });
    }
    Matrix { include }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("image-{i}")).collect()
    }

    #[test]
    fn every_image_in_exactly_one_shard() {
        let shards: Vec<Shard> = (1..=4).map(|i| format!("{i}/4").parse().unwrap()).collect();
        for name in names(500) {
            let hits = shards.iter().filter(|s| s.contains(&name)).count();
            assert_eq!(hits, 1, "{name}");
        }
        // Roughly even: no shard of 500 names has fewer than 80.
        for shard in &shards {
            let n = names(500).iter().filter(|n| shard.contains(n)).count();
            assert!(n > 80, "{shard}: {n}");
        }
    }

    fn config(images: &[String]) -> Plan {
        let mut text = String::from(
            "version: 1\ntargets: {t: ghcr.io/acme}\ndefaults: {targets: [t]}\nimages:\n",
        );
        for (i, name) in images.iter().enumerate() {
            let tags: Vec<String> = (0..=i % 5).map(|t| format!("'v{t}'")).collect();
            text += &format!(
                "  - {{name: {name}, source: docker.io/x/{name}, tags: [{}]}}\n",
                tags.join(", ")
            );
        }
        crate::plan::load("m.yaml", &text).unwrap()
    }

    fn shard_of(plan: &Plan, shards: &[Shard], image: &str) -> usize {
        let homes: Vec<usize> = (0..shards.len())
            .filter(|&s| {
                let kept = Plan {
                    jobs: plan.jobs.clone(),
                    ..Plan::default()
                }
                .shard(&shards[s]);
                kept.jobs.iter().any(|j| j.image == image)
            })
            .collect();
        assert_eq!(homes.len(), 1, "{image} is in shards {homes:?}");
        homes[0]
    }

    #[test]
    fn adding_images_moves_no_other_image() {
        let shards: Vec<Shard> = (1..=4).map(|i| format!("{i}/4").parse().unwrap()).collect();
        let old = names(60);
        let mut grown: Vec<String> = (0..40).map(|i| format!("new-{i}")).collect();
        grown.extend(old.iter().cloned());
        let (before, after) = (config(&old), config(&grown));
        for name in &old {
            assert_eq!(
                shard_of(&before, &shards, name),
                shard_of(&after, &shards, name),
                "{name} moved"
            );
        }
        // A change of hash would reshuffle every user's shards: pin it to
        // SHA-256 computed another way.
        for name in ["k3s", "postgres"] {
            assert_eq!(bucket(name, 1000), pinned(name, 1000));
        }
    }

    #[test]
    fn matrix_covers_every_image_once_balanced_by_tags() {
        let plan = config(&names(200));
        let total = plan.jobs.len();
        let matrix = matrix(&plan, 6);
        assert_eq!(matrix.include.len(), 6);
        let mut seen = std::collections::HashMap::new();
        for job in &matrix.include {
            let shard: Shard = job.shard.parse().unwrap();
            let kept = Plan {
                jobs: plan.jobs.clone(),
                ..Plan::default()
            }
            .shard(&shard);
            assert_eq!(kept.jobs.len(), job.tags, "{job:?}");
            for j in &kept.jobs {
                *seen
                    .entry((j.image.clone(), j.reference.clone()))
                    .or_insert(0) += 1;
            }
        }
        assert_eq!(seen.len(), total);
        assert!(seen.values().all(|&n| n == 1));
        let tags: Vec<usize> = matrix.include.iter().map(|j| j.tags).collect();
        let (min, max) = (tags.iter().min().unwrap(), tags.iter().max().unwrap());
        // 600 tags over 6 jobs: within a few percent of 100 each.
        assert!(max - min <= 10, "{tags:?}");
        // An image with a tag selector weighs one job until run time.
        let selector = crate::plan::load(
            "m.yaml",
            "version: 1\ntargets: {t: ghcr.io/a}\nimages:\n  - {source: docker.io/x/y, tags: {latest: 5}, targets: [t]}\n",
        )
        .unwrap();
        let one = super::matrix(&selector, 2);
        assert_eq!(
            (one.include.len(), one.include[0].tags, one.include[0].pairs),
            (1, 1, 1)
        );
        // More jobs than images: the empty ones are left out.
        assert_eq!(super::matrix(&config(&names(3)), 8).include.len(), 3);
        assert_eq!(super::matrix(&Plan::default(), 4).include[0].shard, "1/1");
    }

    /// The bucket computed another way: SHA-256 via the digest module.
    fn pinned(name: &str, of: u64) -> usize {
        let digest = crate::digest::Digest::sha256(name.as_bytes());
        (u64::from_str_radix(&digest.hex()[..16], 16).unwrap() % of) as usize + 1
    }

    #[test]
    fn shard_syntax() {
        let shard: Shard = "3,1/4".parse().unwrap();
        assert_eq!(shard.to_string(), "1,3/4");
        for bad in ["1", "0/4", "5/4", "a/4", "1/0", "1/x"] {
            let error = bad.parse::<Shard>().unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
    }
}
