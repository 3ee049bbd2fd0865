//! Bytes of one blob as they move, for a live view: the engine makes a
//! [`Meter`] per download or upload and hands it to the reporter; the verbs
//! count into it as chunks pass. Nothing here decides anything: a meter is
//! only read by whoever draws progress.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::Digest;

/// Which way a blob moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the source into the spool.
    Download,
    /// From the spool to a target repository.
    Upload,
}

/// One blob's transfer in flight.
#[derive(Debug)]
pub struct Meter {
    /// Download or upload.
    pub direction: Direction,
    /// The job's image, as the config names it (`nginx`).
    pub image: String,
    /// The job's tag, or the digest it pins.
    pub reference: String,
    /// Where the bytes come from (download) or go (upload): a repository.
    pub peer: String,
    /// The blob.
    pub digest: Digest,
    /// Its size, from its descriptor.
    pub size: u64,
    /// Bytes moved in the current attempt.
    moved: AtomicU64,
}

impl Meter {
    /// A meter at zero.
    pub fn new(
        direction: Direction,
        (image, reference): (&str, &str),
        peer: &str,
        digest: &Digest,
        size: u64,
    ) -> Meter {
        Meter {
            direction,
            image: image.to_string(),
            reference: reference.to_string(),
            peer: peer.to_string(),
            digest: digest.clone(),
            size,
            moved: AtomicU64::new(0),
        }
    }

    /// Bytes moved so far in this attempt.
    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// `bytes` more moved.
    pub fn add(&self, bytes: u64) {
        self.moved.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A new attempt starts from the first byte.
    pub fn restart(&self) {
        self.moved.store(0, Ordering::Relaxed);
    }
}
