//! The manifest verbs: HEAD (free at Docker Hub), GET (the metered pull,
//! checked against its digest), PUT of exact bytes; tag lists and the OCI
//! referrers API.

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder};
use std::sync::Arc;

use super::body::{MAX_JSON_SIZE, header, neutral};
use super::deadline::Watch;
use super::http::{MAX_TAG_PAGES, next_link, resolve_link};
use super::{Intent, RegistryClient};
use crate::digest::{Digest, DigestError};
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest};
use crate::reference::{Repository, valid_tag};

impl RegistryClient {
    /// The digest `reference` (tag or digest) resolves to, or `None` if absent.
    /// A HEAD: Docker Hub does not count it as a pull.
    pub async fn head_manifest(
        &self,
        repository: &Repository,
        reference: &str,
        intent: Intent,
    ) -> Result<Option<Digest>> {
        let url = self.url(repository, &["manifests", reference], &[])?;
        let accept = |r: RequestBuilder, _: &Arc<Watch>| r.header(ACCEPT, manifest::ACCEPT);
        let looked = self.look(repository, intent, Method::HEAD, &url, &accept);
        let Some(answer) = looked.await? else {
            return Ok(None);
        };
        let stated = header(&answer.response, "docker-content-digest")
            .and_then(|d| d.parse::<Digest>().ok());
        // Give back the host permit first: the fallback GET needs one.
        drop(answer);
        match stated {
            Some(digest) => Ok(Some(digest)),
            // A registry that omits the header: the bytes must tell us.
            None => Ok(Some(
                self.get_manifest(repository, reference, None).await?.digest,
            )),
        }
    }

    /// Every tag of `repository`, following the spec's pagination (`n`, and
    /// the `Link: <…>; rel="next"` header). Capped at [`MAX_TAG_PAGES`] pages
    /// so a registry that keeps linking cannot keep us forever.
    pub async fn list_tags(&self, repository: &Repository) -> Result<Vec<String>> {
        self.list_tags_within(repository, MAX_TAG_PAGES)
            .await?
            .ok_or_else(|| Error::Limit {
                what: format!("{repository} tags"),
                reason: format!("more than {MAX_TAG_PAGES} pages of tags; refusing to follow more"),
            })
    }

    /// Every tag of `repository` if the list ends within `pages` pages (each
    /// one request); `None` when it goes on.
    pub async fn list_tags_within(
        &self,
        repository: &Repository,
        pages: usize,
    ) -> Result<Option<Vec<String>>> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(repository, &["tags", "list"], &[("n", "1000")])?;
        let mut tags = Vec::new();
        // Pages that repeat a tag (a registry whose `last` does not move on
        // exactly) must not make one tag two jobs of the same image.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..pages {
            let answer = self
                .pull(repository, Method::GET, &url, &|r, _| r)
                .await?
                .ok_or_else(|| Error::NotFound {
                    what: repository.to_string(),
                })?;
            let next = header(&answer.response, "link").and_then(next_link);
            let body = answer.capped(MAX_JSON_SIZE).await?;
            let page: TagList = serde_json::from_slice(&body).map_err(|e| Error::Manifest {
                what: crate::text::ShownUrl::new(&url).to_string(),
                reason: format!("the tag list is not JSON ({e})"),
            })?;
            // Tags become URL segments and destinations: only the spec's
            // grammar passes (no `..`, `%2f`, `?`, `#`).
            for tag in page.tags.unwrap_or_default() {
                if valid_tag(&tag) {
                    if seen.insert(tag.clone()) {
                        tags.push(tag);
                    }
                } else {
                    tracing::warn!(
                        "{repository}: skipping tag {:?}: not a valid tag (`[A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}`)",
                        neutral(&tag)
                    );
                }
            }
            match next {
                // Another origin gets no credentials: `send` only attaches
                // them to the registry's own.
                Some(next) => url = resolve_link(&url, &next, "tag list `Link`")?,
                None => return Ok(Some(tags)),
            }
        }
        Ok(None)
    }

    /// What refers to `digest` (signatures, SBOMs, attestations), by the
    /// OCI referrers API: each entry as the registry lists it. `None` when
    /// the registry has no such API (distribution 2.8 and GHCR answer 404);
    /// that is remembered for the host, so it is asked once per run.
    pub async fn referrers(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<Option<Vec<serde_json::Value>>> {
        let host = self.host(repository);
        // The first call per host holds the lock while it finds out, so
        // concurrent jobs ask a registry without the API once, not N times.
        let mut probing = {
            let known = host.referrers_api.lock().await;
            match *known {
                Some(false) => return Ok(None),
                Some(true) => None,
                None => Some(known),
            }
        };
        let url = self.url(repository, &["referrers", digest.as_str()], &[])?;
        let accept = |r: RequestBuilder, _: &Arc<Watch>| r.header(ACCEPT, manifest::OCI_INDEX);
        let answer = match self.pull(repository, Method::GET, &url, &accept).await {
            Ok(answer) => answer,
            // Registries without the API say so in different ways.
            Err(Error::Status { status, .. }) if [400, 405, 406, 501].contains(&status) => None,
            Err(error) => return Err(error),
        };
        if let Some(known) = probing.as_mut() {
            **known = Some(answer.is_some());
        }
        drop(probing);
        let Some(answer) = answer else {
            return Ok(None);
        };
        let body = answer.capped(MAX_JSON_SIZE).await?;
        let index: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Error::Manifest {
                what: url.clone(),
                reason: format!("the referrers list is not JSON ({e})"),
            })?;
        Ok(Some(
            index["manifests"].as_array().cloned().unwrap_or_default(),
        ))
    }

    /// Fetches a manifest's exact bytes and checks them against `expected`
    /// (or the digest in the reference, or the registry's
    /// `Docker-Content-Digest`).
    pub async fn get_manifest(
        &self,
        repository: &Repository,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Manifest> {
        let url = self.url(repository, &["manifests", reference], &[])?;
        // The one metered request (Docker Hub counts manifest GETs as pulls).
        self.host(repository)
            .limits
            .before_pull(&repository.registry)
            .await?;
        let accept = |r: RequestBuilder, _: &Arc<Watch>| r.header(ACCEPT, manifest::ACCEPT);
        let answer = self
            .pull(repository, Method::GET, &url, &accept)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("{repository}:{reference}"),
            })?;
        let content_type = header(&answer.response, CONTENT_TYPE.as_str()).map(str::to_string);
        let claimed = header(&answer.response, "docker-content-digest")
            .and_then(|d| d.parse::<Digest>().ok());
        let body = answer.capped(manifest::MAX_MANIFEST_SIZE).await?;
        let digest = expected
            .cloned()
            .or_else(|| reference.parse::<Digest>().ok())
            .or(claimed)
            .unwrap_or_else(|| Digest::sha256(&body));
        Manifest::parse(body, &digest, content_type.as_deref())
    }

    /// Pushes a manifest's exact bytes under `reference` (a tag or its digest).
    pub async fn put_manifest(
        &self,
        repository: &Repository,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<()> {
        let url = self.url(repository, &["manifests", reference], &[])?;
        let bytes = manifest.bytes.clone();
        let media_type = manifest.media_type.clone();
        let build = move |r: RequestBuilder, _: &Arc<Watch>| {
            r.header(CONTENT_TYPE, media_type.as_str())
                .body(bytes.clone())
        };
        let answer = self
            .push(repository, Method::PUT, &url, &build, true, |s| {
                s.is_success()
            })
            .await?;
        if let Some(Ok(stored)) =
            header(&answer.response, "docker-content-digest").map(str::parse::<Digest>)
            && stored != manifest.digest
        {
            return Err(DigestError::Mismatch {
                what: format!("manifest stored at {repository}"),
                expected: manifest.digest.clone(),
                actual: stored,
            }
            .into());
        }
        Ok(())
    }
}
