//! Image references: `REGISTRY/REPOSITORY[:TAG][@DIGEST]`.
//!
//! Parsing follows Docker's rules (a first component with a `.` or `:`, or
//! `localhost`, is a registry; otherwise the image is on Docker Hub) and
//! [`normalize_docker_hub`] is the one place that knows Docker Hub's names.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Docker Hub as people write it.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's API host.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A repository on a registry: where manifests and blobs live.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository {
    /// Registry as written after normalisation (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Path within the registry (`library/postgres`, `acme/mirror/k3s`).
    pub path: String,
}

impl Repository {
    /// The host the registry API is served from (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)
    }
}

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Where the image lives.
    pub repository: Repository,
    /// The tag, if one was given.
    pub tag: Option<String>,
    /// The digest, if the reference is pinned.
    pub digest: Option<Digest>,
}

impl Reference {
    /// What to ask the registry for: the digest when pinned, else the tag, else `latest`.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Docker Hub's aliases and implicit `library/`: returns the registry and
/// path as regmirror names them (`docker.io`, `library/x`).
///
/// | input | output |
/// |---|---|
/// | `docker.io`, `x` | `docker.io`, `library/x` |
/// | `index.docker.io`, `a/b` | `docker.io`, `a/b` |
/// | `registry-1.docker.io`, `x` | `docker.io`, `library/x` |
/// | `ghcr.io`, `x` | unchanged |
pub fn normalize_docker_hub(registry: &str, path: &str) -> (String, String) {
    let hub = matches!(
        registry,
        DOCKER_HUB | "index.docker.io" | DOCKER_HUB_API | "registry.hub.docker.com"
    );
    if !hub {
        return (registry.to_string(), path.to_string());
    }
    let path = if path.contains('/') {
        path.to_string()
    } else {
        format!("library/{path}")
    };
    (DOCKER_HUB.to_string(), path)
}

/// True when `component` looks like a registry host rather than a path part.
pub fn is_registry(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

/// A registry host as a reference may name it: a DNS name or IPv4 address
/// (`[A-Za-z0-9-]` labels joined by `.`), or an IPv6 address in brackets,
/// with an optional `:PORT`. Nothing a URL would read as a path, query,
/// fragment or user (`/`, `?`, `#`, `@`, spaces) can pass.
pub fn valid_registry(registry: &str) -> bool {
    let (name, port) = match registry.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((address, tail)) => {
                if address.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match tail {
                    "" => return true,
                    _ => match tail.strip_prefix(':') {
                        Some(port) => ("", Some(port)),
                        None => return false,
                    },
                }
            }
            None => return false,
        },
        None => match registry.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (registry, None),
        },
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    });
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let name_ok = registry.starts_with('[')
        || (!name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok));
    port_ok && name_ok
}

/// One path component: `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
pub fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(&bytes[0])
        && bytes.iter().all(|b| word(b) || *b == b'.' || *b == b'-')
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        let fail = |reason: &str| Error::Reference {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (rest, digest) =
            match input.split_once('@') {
                Some((rest, digest)) => (
                    rest,
                    Some(digest.parse::<Digest>().map_err(|e| {
                        fail(&format!("{e} (`sha256:` and 64 lowercase hex digits)"))
                    })?),
                ),
                None => (input, None),
            };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(fail("bad tag"));
        }
        if name.is_empty() {
            return Err(fail("empty name"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if is_registry(first) => (first, path),
            _ => (DOCKER_HUB, name),
        };
        if registry.bytes().any(|b| b.is_ascii_uppercase()) && registry != "localhost" {
            return Err(fail("registry must be lowercase"));
        }
        if !valid_registry(registry) {
            return Err(fail(
                "registry must be a host name or IP address with an optional `:PORT`",
            ));
        }
        if !path.split('/').all(valid_path_component) {
            return Err(fail(
                "repository path must be lowercase components of [a-z0-9] joined by `.`, `_`, `__` or `-`",
            ));
        }
        let (registry, path) = normalize_docker_hub(registry, path);
        if registry.len() + path.len() + 1 > 255 {
            return Err(fail("name longer than 255 characters"));
        }
        Ok(Reference {
            repository: Repository { registry, path },
            tag: tag.map(str::to_string),
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_normalisation_table() {
        let table = [
            (("docker.io", "busybox"), ("docker.io", "library/busybox")),
            (("docker.io", "rancher/k3s"), ("docker.io", "rancher/k3s")),
            (
                ("index.docker.io", "postgres"),
                ("docker.io", "library/postgres"),
            ),
            (
                ("registry-1.docker.io", "library/x"),
                ("docker.io", "library/x"),
            ),
            (
                ("registry.hub.docker.com", "minio/minio"),
                ("docker.io", "minio/minio"),
            ),
            (("ghcr.io", "busybox"), ("ghcr.io", "busybox")),
            (("127.0.0.1:5000", "x"), ("127.0.0.1:5000", "x")),
        ];
        for ((registry, path), (want_registry, want_path)) in table {
            let (r, p) = normalize_docker_hub(registry, path);
            assert_eq!(
                (r.as_str(), p.as_str()),
                (want_registry, want_path),
                "{registry}/{path}"
            );
        }
        let hub = Repository {
            registry: "docker.io".into(),
            path: "library/x".into(),
        };
        assert_eq!(hub.api_host(), "registry-1.docker.io");
    }

    #[test]
    fn parses_references() {
        let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let table: &[(&str, &str, &str, Option<&str>, bool)] = &[
            ("busybox", "docker.io", "library/busybox", None, false),
            (
                "busybox:1.37",
                "docker.io",
                "library/busybox",
                Some("1.37"),
                false,
            ),
            (
                "rancher/k3s:v1.30.4-k3s1",
                "docker.io",
                "rancher/k3s",
                Some("v1.30.4-k3s1"),
                false,
            ),
            (
                "localhost:5000/a/b:c",
                "localhost:5000",
                "a/b",
                Some("c"),
                false,
            ),
            ("127.0.0.1:5000/a", "127.0.0.1:5000", "a", None, false),
            (
                "ghcr.io/acme/mirror/library/postgres:16",
                "ghcr.io",
                "acme/mirror/library/postgres",
                Some("16"),
                false,
            ),
        ];
        for (input, registry, path, tag, pinned) in table {
            let r: Reference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.repository.registry, *registry, "{input}");
            assert_eq!(r.repository.path, *path, "{input}");
            assert_eq!(r.tag.as_deref(), *tag, "{input}");
            assert_eq!(r.digest.is_some(), *pinned, "{input}");
        }
        let pinned: Reference = format!("gcr.io/projectsigstore/fulcio@{digest}")
            .parse()
            .unwrap();
        assert_eq!(pinned.manifest_reference(), digest);
        assert_eq!(
            pinned.to_string(),
            format!("gcr.io/projectsigstore/fulcio@{digest}")
        );
    }

    #[test]
    fn rejects_bad_references() {
        for input in [
            "",
            "UPPER/case",
            "ghcr.io/a//b",
            "ghcr.io/a/b:",
            "ghcr.io/a/b:-bad",
            "ghcr.io/a/b@sha256:123",
            "ghcr.io/a-/b",
            "ghcr.io/a/b:tag with space",
            "ghcr.io/a/b:..",
            "ghcr.io/a/../b",
            "ghcr.io/a/%2e%2e/b",
            "ghcr.io/a/b%2fc",
            "ghcr.io/a?x=1/b",
            "ghcr.io/a#x/b",
            "evil.com#.ghcr.io/a/b",
            "user@evil.com/a/b",
            "ghcr.io:99999/a",
            "ghcr.io:/a",
            "[::1/a",
            "[zz::1]:5000/a",
        ] {
            assert!(
                input.parse::<Reference>().is_err(),
                "{input} should be rejected"
            );
        }
    }

    #[test]
    fn registry_hosts() {
        for host in [
            "ghcr.io",
            "127.0.0.1:5000",
            "localhost",
            "[::1]:5000",
            "[::1]",
            "my-registry.example.com:443",
        ] {
            assert!(valid_registry(host), "{host}");
        }
        for host in [
            "",
            "a b.io",
            "evil.com#x",
            "evil.com/x",
            "u@evil.com",
            "host:",
            "host:port",
            "-a.io",
            "a..io",
            "[::1]x",
            "host:1:2",
        ] {
            assert!(!valid_registry(host), "{host}");
        }
    }

    #[test]
    fn tag_rules() {
        assert!(valid_tag("v1.30.4-k3s1"));
        assert!(valid_tag("_x"));
        assert!(!valid_tag("v1.30.4+k3s1"));
        assert!(!valid_tag(&"a".repeat(129)));
        for hostile in [
            "..", ".", "%2e%2e", "a%2fb", "a/b", "a?b", "a#b", "", "-a", "a b",
        ] {
            assert!(!valid_tag(hostile), "{hostile}");
        }
    }
}

/// Properties over arbitrary input (proptest): references come from
/// configs, imports, audits and registries.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_any_text_never_panics_and_what_parses_is_safe(input in "\\PC{0,80}") {
            if let Ok(reference) = input.parse::<Reference>() {
                prop_assert!(valid_registry(&reference.repository.registry));
                prop_assert!(reference.repository.path.split('/').all(valid_path_component));
                if let Some(tag) = &reference.tag {
                    prop_assert!(valid_tag(tag));
                }
                let again: Reference = reference.to_string().parse().unwrap();
                prop_assert_eq!(again, reference);
            }
        }

        #[test]
        fn reference_shaped_text_round_trips(
            host in "(ghcr\\.io|localhost:5000|127\\.0\\.0\\.1:[0-9]{1,5}|[a-z]{1,8}\\.[a-z]{2,3})",
            path in "[a-z0-9]{1,6}([._-][a-z0-9]{1,6}){0,2}(/[a-z0-9]{1,6}){0,3}",
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9._-]{0,20}"),
        ) {
            let text = match &tag {
                Some(tag) => format!("{host}/{path}:{tag}"),
                None => format!("{host}/{path}"),
            };
            if let Ok(reference) = text.parse::<Reference>() {
                prop_assert_eq!(reference.to_string(), text);
            }
        }

        #[test]
        fn a_valid_tag_can_never_move_a_url(tag in "\\PC{0,140}") {
            if valid_tag(&tag) {
                prop_assert!(tag != "." && tag != "..");
                prop_assert!(!tag.contains(['/', '?', '#', '%', '\\', ' ']));
                prop_assert!(tag.len() <= 128);
            }
        }
    }
}
