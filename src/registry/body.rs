//! Reading what a registry answers: every body within the idle deadline
//! and a size cap, error bodies cut short, and registry text made safe to
//! print.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::RETRY_AFTER;
use reqwest::{Method, RequestBuilder, Response};
use tokio::sync::OwnedSemaphorePermit;

use super::deadline::{self, Watch};
use super::{Host, retry};
use crate::error::{Error, Result};
use crate::manifest;
use crate::text::{ShownUrl, scrubbed};

/// The builder of a request: headers and body, given the watch its body
/// reports progress to (only streamed uploads use it).
pub(super) type Build<'a> = &'a (dyn Fn(RequestBuilder, &Arc<Watch>) -> RequestBuilder + Sync);

/// A response together with the host permit it was made under; its body
/// is read within the host's idle deadline.
pub(super) struct Answer {
    pub(super) response: Response,
    pub(super) permit: OwnedSemaphorePermit,
    pub(super) host: Arc<Host>,
    pub(super) method: Method,
    pub(super) url: String,
}

impl Answer {
    /// The body, chunk by chunk, each within the idle deadline; the permit
    /// is held until the stream is dropped.
    pub(super) fn chunks(self) -> impl futures::Stream<Item = Result<Bytes>> + Send {
        let Answer {
            response,
            permit,
            host,
            method,
            url,
        } = self;
        // A body from a redirect target (a CDN) fails there, not at the registry.
        let at = Some(response.url().to_string()).filter(|at| *at != url);
        deadline::body(response, host.window, permit).map(move |chunk| {
            chunk.map_err(|fault| host.fault(&method, &url, fault, at.as_deref()))
        })
    }

    /// The body whole, refused past `limit` bytes.
    pub(super) async fn capped(self, limit: u64) -> Result<Bytes> {
        let (length, url) = (self.response.content_length(), self.url.clone());
        read_capped(self.chunks(), length, &url, limit).await
    }

    /// The start of an error body, for a message: see [`error_text`]. A
    /// body may echo the request (an S3 error names the signed URL it
    /// refused): the query values of the URL asked for, and of the one that
    /// answered after redirects, are taken out.
    pub(super) async fn error_text(self) -> String {
        let (asked, answered) = (self.url.clone(), self.response.url().to_string());
        let text = error_text(self.chunks()).await;
        scrubbed(&scrubbed(&text, &asked), &answered)
    }
}

/// Largest JSON body other than a manifest we read (a tag-list page, a
/// referrers list): 4 MiB, as for manifests.
pub const MAX_JSON_SIZE: u64 = manifest::MAX_MANIFEST_SIZE;

/// Largest token response we read.
pub(super) const MAX_TOKEN_SIZE: u64 = 64 * 1024;

/// How much of an error body we read, and keep in the message.
pub(super) const MAX_ERROR_BODY: usize = 300;

/// `4 MiB`, `64 KiB`, `100 bytes`.
pub(super) fn size_text(bytes: u64) -> String {
    match bytes {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// A body read whole into memory (a manifest, a tag-list page, a referrers
/// list, a token), refused once it passes `limit` bytes, whether or not the
/// registry said its length up front.
pub(super) async fn read_capped(
    chunks: impl futures::Stream<Item = Result<Bytes>>,
    length: Option<u64>,
    url: &str,
    limit: u64,
) -> Result<Bytes> {
    let too_large = || Error::Limit {
        what: ShownUrl::new(url).to_string(),
        reason: format!("larger than {}; refusing to read it", size_text(limit)),
    };
    if length.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    let mut chunks = std::pin::pin!(chunks);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

pub(super) fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

pub(super) fn retry_after(response: &Response) -> Option<Duration> {
    header(response, RETRY_AFTER.as_str())
        .and_then(|v| retry::parse_retry_after(v, SystemTime::now()))
}

pub(crate) use crate::text::neutral;

/// The start of an error body, for the message: at most
/// [`MAX_ERROR_BODY`] characters read (a registry can send gigabytes),
/// made [`neutral`].
pub(super) async fn error_text(chunks: impl futures::Stream<Item = Result<Bytes>>) -> String {
    let mut bytes = Vec::new();
    let mut chunks = std::pin::pin!(chunks);
    while let Some(Ok(chunk)) = chunks.next().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_ERROR_BODY * 4 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut text: String = text.trim().chars().take(MAX_ERROR_BODY).collect();
    if text.chars().count() == MAX_ERROR_BODY {
        text.push('…');
    }
    neutral(&text)
}
