//! Jobs with `platforms:`: what their targets should hold is the index cut
//! from the source's ([`crate::manifest::platforms`]), not the source's own.
//! An up-to-date target is known from the cut index's annotations, read at
//! the target, so the source is asked no more than without the filter.

use super::Engine;
use crate::digest::Digest;
use crate::error::Result;
use crate::manifest::{Manifest, platforms};
use crate::plan::Job;

/// What a job with `platforms` should write.
pub(super) enum Cut {
    /// Every destination holds the index cut from the source's current one.
    Current,
    /// This index (the source's own, if nothing was cut away).
    Index(Box<Manifest>),
}

impl Engine {
    /// The index `job`'s destinations should hold, cut from the source's
    /// `source` (`root`, if already read), or [`Cut::Current`] when each
    /// destination's tag (`befores`) already names it. An OCI index this
    /// filter wrote says what it was cut from; anything else, or `--deep`,
    /// makes the source's index be read and cut again.
    pub(super) async fn cut(
        &self,
        job: &Job,
        source: &Digest,
        root: Option<Manifest>,
        befores: &[Result<Option<Digest>>],
    ) -> Result<Cut> {
        if !self.options.deep && self.cut_everywhere(job, source, befores).await {
            return Ok(Cut::Current);
        }
        let root = match root {
            Some(root) => root,
            None => job.source.manifest(&self.client, source, None).await?,
        };
        Ok(Cut::Index(Box::new(platforms::select(
            &root,
            &job.platforms,
        )?)))
    }

    /// True if every destination's tag names the source's index (nothing
    /// to cut) or an index cut from it for these platforms. A target that
    /// cannot be read says no: the index is cut and written again.
    async fn cut_everywhere(
        &self,
        job: &Job,
        source: &Digest,
        befores: &[Result<Option<Digest>>],
    ) -> bool {
        for (destination, before) in job.destinations.iter().zip(befores) {
            let held = match before {
                Ok(Some(held)) => held,
                _ => return false,
            };
            if held == source {
                continue;
            }
            let repository = &destination.repository;
            let made_here = match self
                .client
                .get_manifest(repository, held.as_str(), Some(held))
                .await
            {
                Ok(index) => platforms::made_from(&index, source, &job.platforms),
                Err(error) => {
                    tracing::debug!(%repository, "could not read the index the tag names: {error}");
                    false
                }
            };
            if !made_here {
                return false;
            }
        }
        true
    }
}
