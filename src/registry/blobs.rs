//! The blob verbs: HEAD, GET (streamed, checked as it arrives), mount from
//! a sibling repository, and one monolithic upload PUT from the spool.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, RequestBuilder, Response, StatusCode};

use super::body::{Answer, header};
use super::deadline::{self, Watch};
use super::http::resolve_link;
use super::meter::Meter;
use super::retry::{self, Attempt};
use super::{Access, Intent, RegistryClient};
use crate::digest::{Digest, DigestError, Verifier};
use crate::error::{Error, Result};
use crate::manifest::Descriptor;
use crate::reference::Repository;
use crate::text::ShownUrl;

/// The result of a cross-repository mount request.
#[derive(Debug)]
pub enum Mount {
    /// The registry linked the blob; nothing to upload.
    Mounted,
    /// The registry declined (spec: 202) and opened an upload session instead.
    Declined {
        /// The upload session the registry opened instead.
        upload_url: String,
    },
}

/// A part of a blob uploaded in parts: 5 MiB, under the body limits of the
/// registries that need parts (ACR answers 413 above about 20 MB).
const PART_SIZE: u64 = 5 * 1024 * 1024;

impl RegistryClient {
    /// True when the repository has the blob (a HEAD).
    pub async fn blob_exists(
        &self,
        repository: &Repository,
        digest: &Digest,
        intent: Intent,
    ) -> Result<bool> {
        let url = self.url(repository, &["blobs", digest.as_str()], &[])?;
        Ok(self
            .look(repository, intent, Method::HEAD, &url, &|r, _| r)
            .await?
            .is_some())
    }

    /// A blob's bytes as they arrive (each chunk within the idle deadline),
    /// or `None` if the repository does not have it. The caller checks them.
    pub async fn get_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<Option<impl futures::Stream<Item = Result<Bytes>> + Send + use<>>> {
        let url = self.url(repository, &["blobs", digest.as_str()], &[])?;
        Ok(self
            .pull(repository, Method::GET, &url, &|r, _| r)
            .await?
            .map(Answer::chunks))
    }

    /// A blob's bytes from byte `from` on (a `Range` request when `from` is
    /// not 0), as [`Self::get_blob`] gives them, with the offset of the
    /// first byte the answer holds: `from`, or 0 when the registry answered
    /// the whole blob (the caller skips what it has). A part that starts
    /// anywhere else is refused.
    pub async fn get_blob_from(
        &self,
        repository: &Repository,
        digest: &Digest,
        from: u64,
    ) -> Result<
        Option<(
            u64,
            impl futures::Stream<Item = Result<Bytes>> + Send + use<>,
        )>,
    > {
        let url = self.url(repository, &["blobs", digest.as_str()], &[])?;
        let range = (from > 0).then(|| format!("bytes={from}-"));
        let build = |request: RequestBuilder, _: &Arc<Watch>| match &range {
            Some(range) => request.header(reqwest::header::RANGE, range),
            None => request,
        };
        let Some(answer) = self.pull(repository, Method::GET, &url, &build).await? else {
            return Ok(None);
        };
        let start = if answer.response.status() == StatusCode::PARTIAL_CONTENT {
            match content_range_start(&answer.response) {
                Some(start) if start == from && from > 0 => start,
                _ => {
                    return Err(Error::status(
                        "GET",
                        &url,
                        206,
                        &format!(
                            "a part of the blob that does not start at byte {from}, where it was asked to"
                        ),
                    ));
                }
            }
        } else {
            0
        };
        Ok(Some((start, answer.chunks())))
    }

    /// Streams a blob into `path`, checking digest and size as it goes. A
    /// transfer that breaks is taken up where it stopped: the bytes already
    /// in the file (and their hash so far) are kept, and the rest asked for
    /// with `Range` (a registry that answers the whole blob instead is read
    /// from the start).
    pub async fn download_blob(
        &self,
        repository: &Repository,
        blob: &Descriptor,
        path: &Path,
        meter: &Meter,
    ) -> Result<()> {
        let url = self.url(repository, &["blobs", blob.digest.as_str()], &[])?;
        // What a broken attempt kept: the hash of the bytes in the file.
        let kept: tokio::sync::Mutex<Option<Verifier>> = tokio::sync::Mutex::new(None);
        // One request to the host's health, however often its body breaks.
        deadline::one_request(retry::run(|| async {
            let mut kept = kept.lock().await;
            let result = self
                .download_once(repository, blob, &url, path, meter, &mut kept)
                .await;
            match &result {
                // The answer's status was retried where it came; here, a
                // body that broke or stalled is read again from where it
                // stopped.
                Err(error @ (Error::Transport { .. } | Error::Stalled { .. }))
                    if retry::error_is_retryable(error) =>
                {
                    tracing::debug!(url = %ShownUrl::new(&url), %error, "blob download broke; again");
                    Attempt::Transient {
                        result,
                        retry_after: None,
                    }
                }
                _ => Attempt::Final(result),
            }
        }))
        .await
    }

    async fn download_once(
        &self,
        repository: &Repository,
        blob: &Descriptor,
        url: &str,
        path: &Path,
        meter: &Meter,
        kept: &mut Option<Verifier>,
    ) -> Result<()> {
        let from = kept.as_ref().map_or(0, Verifier::seen);
        let (start, chunks) = self
            .get_blob_from(repository, &blob.digest, from)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("{repository}@{}", blob.digest),
            })?;
        let partial = start > 0;
        let (mut writer, mut verifier) = match kept.take() {
            Some(verifier) if partial => {
                tracing::debug!(url = %ShownUrl::new(url), from, "blob download resumed");
                (crate::spool::Writer::append(path).await?, verifier)
            }
            _ => {
                // From the first byte (a first attempt, or a registry
                // that answered the whole blob to a `Range`).
                meter.restart();
                (
                    crate::spool::Writer::create(path).await?,
                    Verifier::new(blob.digest.clone(), Some(blob.size)),
                )
            }
        };
        let mut chunks = std::pin::pin!(chunks);
        let broke = loop {
            let Some(chunk) = chunks.next().await else {
                break None;
            };
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => break Some(error),
            };
            verifier.update(&chunk);
            if verifier.overrun() {
                break None;
            }
            meter.add(chunk.len() as u64);
            writer.write(chunk).await?;
        };
        writer.finish().await?;
        if let Some(error) = broke {
            // Every byte that came is in the file: the next attempt asks
            // for the rest.
            *kept = Some(verifier);
            return Err(error);
        }
        Ok(verifier.finish(&format!("blob {} from {repository}", blob.digest))?)
    }

    /// Asks the registry to link `digest` from `from` (same registry) into `repository`.
    pub async fn mount_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        from: &str,
    ) -> Result<Mount> {
        let url = self.url(
            repository,
            &["blobs", "uploads", ""],
            &[("mount", digest.as_str()), ("from", from)],
        )?;
        let access = Access::Mount {
            to: &repository.path,
            from,
        };
        let answer = self
            .send(
                repository,
                access,
                Method::POST,
                &url,
                &|r, _| r.header(CONTENT_LENGTH, 0),
                true,
            )
            .await?;
        match answer.response.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Declined {
                upload_url: Self::location(&answer.response, &url)?,
            }),
            status => Err(Self::status_error(
                "POST",
                &url,
                status,
                answer.error_text().await,
            )),
        }
    }

    /// An upload session's URL from `Location`, relative ones (GHCR)
    /// resolved against the request. Another origin is followed without
    /// credentials (see `send`); `https` → `http` is refused.
    fn location(response: &Response, url: &str) -> Result<String> {
        let location = header(response, LOCATION.as_str()).ok_or_else(|| {
            Self::status_error(
                "POST",
                url,
                response.status(),
                "no `Location` header".into(),
            )
        })?;
        resolve_link(url, location, "upload `Location`")
    }

    /// Uploads the blob in `path` with one monolithic PUT (GHCR and ECR break
    /// on chunked PATCH uploads); in parts only if that PUT is refused for
    /// its size (413). `session` is an upload URL already opened (a declined
    /// mount). Retries the whole upload on transient failures.
    pub async fn upload_blob(
        &self,
        repository: &Repository,
        blob: &Descriptor,
        path: &Path,
        session: Option<String>,
        meter: &Arc<Meter>,
    ) -> Result<()> {
        let session = Mutex::new(session);
        // Once a PUT is refused for its size (this blob's, or a smaller
        // one's earlier), the blob goes straight to parts instead of being
        // sent whole again.
        let in_parts = AtomicBool::new(!self.takes_whole(repository, blob.size));
        // One request to the host's health, however often it is sent again.
        deadline::one_request(retry::run(|| async {
            let session = session.lock().expect("session lock poisoned").take();
            let mut result = if in_parts.load(Ordering::Relaxed) {
                self.upload_in_parts(repository, blob, path, meter).await
            } else {
                self.upload_once(repository, blob, path, session, meter).await
            };
            if matches!(&result, Err(Error::Status { method, status: 413, .. }) if method == "PUT") {
                // Too large for one request here: in parts, in a new session.
                tracing::debug!(%repository, digest = %blob.digest, "one PUT refused for its size (413); uploading in parts");
                in_parts.store(true, Ordering::Relaxed);
                result = self.upload_in_parts(repository, blob, path, meter).await;
            }
            // The PUT is sent once per attempt (its body is a stream), so its
            // failures are retried here, with a new upload session; the POST
            // that opens a session was already retried where it was sent.
            // A 429 that says how long to wait (GHCR says it in the body)
            // is waited for, within the longest wait a retry takes.
            // A 429 that states no wait is sent again after the back-off
            // (and the pace the registry was found to take).
            let rate_limited = match &result {
                Err(Error::RateLimited { until, .. }) => Some(
                    until
                        .map(|until| until.duration_since(SystemTime::now()).unwrap_or_default()),
                ),
                _ => None,
            };
            let retryable = match &result {
                Err(
                    error @ (Error::Transport { method, .. }
                    | Error::Status { method, .. }
                    | Error::Stalled { method, .. }),
                ) => method == "PUT" && retry::error_is_retryable(error),
                _ => rate_limited.is_some_and(|wait| wait.is_none_or(|wait| wait <= retry::MAX_DELAY)),
            };
            if retryable {
                tracing::debug!(repository = %repository, digest = %blob.digest, "upload failed; retrying from the spool");
                Attempt::Transient {
                    result,
                    retry_after: rate_limited.flatten(),
                }
            } else {
                Attempt::Final(result)
            }
        }))
        .await
    }

    /// Whether the registry may take a blob of `size` in one PUT: none as
    /// big was refused for its size (413) this run.
    pub fn takes_whole(&self, repository: &Repository, size: u64) -> bool {
        size < self
            .host(repository)
            .whole_put_refused
            .load(Ordering::Relaxed)
    }

    /// Uploads `blob` from `body` as it comes (a blob streamed from its
    /// source to its targets without the spool): one session and one PUT
    /// with the blob's size, never sent again (the bytes are gone once
    /// sent). A body that ends in an error aborts the PUT before its last
    /// byte, so the registry commits nothing.
    pub async fn upload_stream(
        &self,
        repository: &Repository,
        blob: &Descriptor,
        body: futures::stream::BoxStream<'static, std::io::Result<Bytes>>,
        meter: &Arc<Meter>,
    ) -> Result<()> {
        let upload_url = self.open_session(repository).await?;
        let url = Self::closing_url(&upload_url, &blob.digest)?;
        let body = Mutex::new(Some(body));
        // Sent once already (a token refreshed after a 401): the stream
        // cannot be replayed, so that request fails.
        let body = move || {
            body.lock()
                .expect("body lock poisoned")
                .take()
                .ok_or_else(|| std::io::Error::other("a streamed blob can be sent once"))
        };
        self.put_blob(repository, &url, blob.size, meter, body)
            .await
    }

    /// Uploads `blob` in parts of [`PART_SIZE`]: a PATCH per part with its
    /// `Content-Range`, each to the `Location` the last answer gave, then a
    /// PUT with the digest and no body. Only for a registry that refused the
    /// whole blob in one PUT for its size (413: ACR, or Harbor behind a
    /// proxy with a body limit); GHCR and ECR break on several PATCHes, so
    /// it is never the first choice.
    async fn upload_in_parts(
        &self,
        repository: &Repository,
        blob: &Descriptor,
        path: &Path,
        meter: &Meter,
    ) -> Result<()> {
        meter.restart();
        let mut location = self.open_session(repository).await?;
        let file = Arc::new(
            std::fs::File::open(path)
                .map_err(|e| Error::io(format!("spool file for `{}`", blob.digest), e))?,
        );
        let mut offset = 0;
        while offset < blob.size {
            let len = PART_SIZE.min(blob.size - offset);
            let part = {
                let file = file.clone();
                tokio::task::spawn_blocking(move || {
                    let mut part = vec![0; len as usize];
                    std::os::unix::fs::FileExt::read_exact_at(&*file, &mut part, offset)
                        .map(|()| Bytes::from(part))
                })
                .await
                .map_err(|e| Error::io("read a part of a spooled blob", std::io::Error::other(e)))?
                .map_err(|e| Error::io(format!("spool file for `{}`", blob.digest), e))?
            };
            let range = format!("{offset}-{}", offset + len - 1);
            let build = move |r: RequestBuilder, _: &Arc<Watch>| {
                r.header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, len)
                    .header("Content-Range", range.clone())
                    .body(part.clone())
            };
            let accepted = |status| status == StatusCode::ACCEPTED || status == StatusCode::CREATED;
            let answer = self
                .push(
                    repository,
                    Method::PATCH,
                    &location,
                    &build,
                    false,
                    accepted,
                )
                .await?;
            location = Self::location(&answer.response, &location)?;
            meter.add(len);
            offset += len;
        }
        let url = Self::closing_url(&location, &blob.digest)?;
        let build = |r: RequestBuilder, _: &Arc<Watch>| r.header(CONTENT_LENGTH, 0);
        let created = |status| status == StatusCode::CREATED;
        self.push(repository, Method::PUT, &url, &build, false, created)
            .await?;
        Ok(())
    }

    /// Opens an upload session (POST); its URL.
    async fn open_session(&self, repository: &Repository) -> Result<String> {
        let url = self.url(repository, &["blobs", "uploads", ""], &[])?;
        let build = |r: RequestBuilder, _: &Arc<Watch>| r.header(CONTENT_LENGTH, 0);
        let accepted = |status| status == StatusCode::ACCEPTED;
        let answer = self
            .push(repository, Method::POST, &url, &build, true, accepted)
            .await?;
        Self::location(&answer.response, &url)
    }

    /// The URL that closes an upload session: its `Location` with the
    /// blob's digest added.
    fn closing_url(location: &str, digest: &Digest) -> Result<String> {
        let mut url = url::Url::parse(location).map_err(|_| Error::Limit {
            what: format!("upload `Location` `{}`", ShownUrl::new(location)),
            reason: "not a URL".into(),
        })?;
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        Ok(url.to_string())
    }

    async fn upload_once(
        &self,
        repository: &Repository,
        blob: &Descriptor,
        path: &Path,
        session: Option<String>,
        meter: &Arc<Meter>,
    ) -> Result<()> {
        meter.restart();
        let upload_url = match session {
            Some(url) => url,
            None => self.open_session(repository).await?,
        };
        let on_disk = tokio::fs::metadata(path)
            .await
            .map_err(|e| Error::io(format!("spool file for `{}`", blob.digest), e))?
            .len();
        if on_disk != blob.size {
            return Err(DigestError::SizeMismatch {
                digest: blob.digest.clone(),
                expected: blob.size,
                actual: on_disk,
            }
            .into());
        }
        let url = Self::closing_url(&upload_url, &blob.digest)?;
        let path = path.to_path_buf();
        // Opened per attempt; `send` builds the request once (not idempotent).
        let body =
            move || std::fs::File::open(&path).map(|file| crate::spool::read_chunks(file).boxed());
        self.put_blob(repository, &url, blob.size, meter, body)
            .await
    }

    /// The PUT that closes an upload at `url` with the blob as its body
    /// (`size` bytes, from what `body` opens when the request is built),
    /// counted into `meter` as it goes. The body reports its progress: a
    /// target that stops reading stalls the upload, a slow one that keeps
    /// reading never does.
    async fn put_blob(
        &self,
        repository: &Repository,
        url: &str,
        size: u64,
        meter: &Arc<Meter>,
        body: impl Fn() -> std::io::Result<futures::stream::BoxStream<'static, std::io::Result<Bytes>>>
        + Send
        + Sync,
    ) -> Result<()> {
        let meter = meter.clone();
        let build = move |r: RequestBuilder, watch: &Arc<Watch>| {
            let body = match body() {
                Ok(chunks) => {
                    let meter = meter.clone();
                    let chunks = chunks.inspect_ok(move |chunk| meter.add(chunk.len() as u64));
                    reqwest::Body::wrap_stream(watch.body(chunks, size))
                }
                // Never an empty body standing in for the blob: the request fails.
                Err(error) => reqwest::Body::wrap_stream(futures::stream::once(async move {
                    Err::<Bytes, _>(error)
                })),
            };
            r.header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, size)
                .body(body)
        };
        let created = |status| status == StatusCode::CREATED;
        let put = self
            .push(repository, Method::PUT, url, &build, false, created)
            .await;
        if let Err(Error::Status { status: 413, .. }) = &put {
            self.host(repository)
                .whole_put_refused
                .fetch_min(size, Ordering::Relaxed);
        }
        put.map(drop)
    }
}

/// Where a `206 Partial Content` answer starts: `Content-Range: bytes
/// START-END/SIZE`.
fn content_range_start(response: &Response) -> Option<u64> {
    let value = header(response, reqwest::header::CONTENT_RANGE.as_str())?;
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}
