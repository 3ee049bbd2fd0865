//! Content digests: parsing, hashing while streaming, and checking.
//!
//! Every byte regmirror moves is checked against the digest and size it was
//! asked for by; [`Verifier`] is the one place that does it, fed chunk by
//! chunk so a blob is never held whole in memory.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// What can be wrong with a digest, or with bytes checked against one.
/// (The crate's [`Error`](crate::Error) wraps it; this module needs nothing
/// from there.)
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// A digest string that is not `ALGORITHM:HEX` with a supported algorithm.
    #[error("invalid digest `{0}`")]
    Invalid(String),

    /// Bytes whose hash is not the digest they were asked for by.
    #[error("digest mismatch for `{what}`: expected `{expected}`, got `{actual}`")]
    Mismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },

    /// Bytes whose length is not the size their descriptor states.
    #[error("size mismatch for `{digest}`: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
}

type Result<T, E = DigestError> = std::result::Result<T, E>;

/// A validated `algorithm:hex` digest (`sha256` or `sha512`, lowercase hex).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// The algorithm part, e.g. `sha256`.
    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map(|(a, _)| a).unwrap_or_default()
    }

    /// The hex part; safe to use as a file name (validated on parse).
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map(|(_, h)| h).unwrap_or_default()
    }

    /// The full `algorithm:hex` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short form for logs: `sha256:0123456789ab`.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(self.algorithm().len() + 13)]
    }

    /// Checks `bytes` against this digest and an optional size.
    pub fn verify(&self, bytes: &[u8], size: Option<u64>, what: &str) -> Result<()> {
        let mut verifier = Verifier::new(self.clone(), size);
        verifier.update(bytes);
        verifier.finish(what)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || DigestError::Invalid(s.to_string());
        let (algorithm, hex) = s.split_once(':').ok_or_else(bad)?;
        let length = match algorithm {
            "sha256" => 64,
            "sha512" => 128,
            _ => return Err(bad()),
        };
        let lower_hex = hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hex.len() != length || !lower_hex {
            return Err(bad());
        }
        Ok(Digest(s.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// Hashes bytes as they stream past and checks them against an expected
/// digest and size at the end.
pub struct Verifier {
    expected: Digest,
    size: Option<u64>,
    seen: u64,
    hasher: Hasher,
}

impl Verifier {
    /// A verifier for `expected`; `size` is checked too when known.
    pub fn new(expected: Digest, size: Option<u64>) -> Self {
        let hasher = match expected.algorithm() {
            "sha512" => Hasher::Sha512(Sha512::new()),
            _ => Hasher::Sha256(Sha256::new()),
        };
        Verifier {
            expected,
            size,
            seen: 0,
            hasher,
        }
    }

    /// Feeds the next chunk. Callers check [`Verifier::overrun`] after each
    /// chunk and stop reading, so a lying upstream cannot make us spool
    /// without bound.
    pub fn update(&mut self, chunk: &[u8]) {
        self.seen += chunk.len() as u64;
        match &mut self.hasher {
            Hasher::Sha256(h) => h.update(chunk),
            Hasher::Sha512(h) => h.update(chunk),
        }
    }

    /// How many bytes it has been fed.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// True when more bytes than the expected size have arrived.
    pub fn overrun(&self) -> bool {
        self.size.is_some_and(|size| self.seen > size)
    }

    /// Checks size, then digest. `what` names the object in the error.
    pub fn finish(self, what: &str) -> Result<()> {
        if let Some(expected) = self.size
            && expected != self.seen
        {
            return Err(DigestError::SizeMismatch {
                digest: self.expected,
                expected,
                actual: self.seen,
            });
        }
        let actual = match self.hasher {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        };
        if actual != self.expected.0 {
            return Err(DigestError::Mismatch {
                what: what.to_string(),
                expected: self.expected,
                actual: Digest(actual),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_valid_and_rejects_invalid() {
        let table = [
            (EMPTY, true),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                false,
            ),
            ("sha256:e3b0", false),
            ("md5:e3b0c44298fc1c149afbf4c8996fb924", false),
            (
                "sha256:../../../../etc/passwd0000000000000000000000000000000000000000",
                false,
            ),
            (
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                false,
            ),
            ("", false),
        ];
        for (input, ok) in table {
            assert_eq!(input.parse::<Digest>().is_ok(), ok, "{input}");
        }
    }

    #[test]
    fn verifier_checks_digest_and_size() {
        let digest: Digest = EMPTY.parse().unwrap();
        assert_eq!(Digest::sha256(b""), digest);
        assert!(digest.verify(b"", Some(0), "x").is_ok());
        let err = digest.verify(b"a", None, "x").unwrap_err();
        assert!(matches!(err, DigestError::Mismatch { .. }), "{err}");
        let err = digest.verify(b"", Some(3), "x").unwrap_err();
        assert!(matches!(err, DigestError::SizeMismatch { .. }), "{err}");
    }

    #[test]
    fn verifier_is_chunk_independent() {
        let data = b"hello world, in several chunks";
        let digest = Digest::sha256(data);
        let mut verifier = Verifier::new(digest, Some(data.len() as u64));
        for chunk in data.chunks(7) {
            verifier.update(chunk);
        }
        assert!(!verifier.overrun());
        verifier.finish("chunks").unwrap();
    }
}
