//! The HTTP client and the URLs registries hand us: redirects (never from
//! https to http), `Link` pagination and `Location` upload sessions
//! resolved against the request they came with.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::text::ShownUrl;

/// `scheme://host:port` of a URL, the unit credentials are bound to.
pub(super) fn origin(url: &str) -> Option<url::Origin> {
    url::Url::parse(url).ok().map(|u| u.origin())
}

/// `next` (a `Link` or `Location` target, perhaps relative) resolved against
/// the URL it came with; an `https` → `http` step is refused, since what
/// travels next (a tag list's position, an upload) would go in the clear.
pub(super) fn resolve_link(current: &str, next: &str, what: &str) -> Result<String> {
    let bad = |reason: &str| Error::Limit {
        what: format!("{what} `{}`", ShownUrl::new(next)),
        reason: reason.to_string(),
    };
    let base = url::Url::parse(current).map_err(|_| bad("the request URL does not parse"))?;
    let resolved = base.join(next).map_err(|_| bad("not a URL"))?;
    match (base.scheme(), resolved.scheme()) {
        ("https", "https") | ("http", "http") | ("http", "https") => Ok(resolved.into()),
        ("https", "http") => Err(bad("refusing to go from https to plain http")),
        _ => Err(bad("not an http or https URL")),
    }
}

/// Most pages of a tag list we follow (1,000 tags each).
pub const MAX_TAG_PAGES: usize = 1000;

/// The target of `rel="next"` in a `Link` header:
/// `</v2/x/tags/list?n=2&last=b>; rel="next"`.
pub(super) fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_string())
    })
}

/// The HTTP client: redirects followed (blob GETs land on storage), no
/// proxy from the environment, and `ca` trusted besides the system's roots.
pub(super) fn http_client(ca: Option<&Path>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("regmirror/", env!("CARGO_PKG_VERSION")))
        // No read timeout: reqwest's would cover a whole upload body. Each
        // request's idle deadline is `deadline`'s.
        .connect_timeout(Duration::from_secs(30))
        .redirect(redirect_policy())
        .no_proxy();
    if let Some(path) = ca {
        let ca_error = |reason: String| Error::Ca {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ca_error(format!("not a PEM certificate bundle ({e})")))?;
        if certificates.is_empty() {
            return Err(ca_error("holds no PEM certificate".into()));
        }
        builder = builder.tls_certs_merge(certificates);
    }
    builder.build().map_err(|source| match ca {
        Some(path) => Error::Ca {
            path: path.display().to_string(),
            reason: format!("cannot be used ({source})"),
        },
        None => Error::Transport {
            method: "build".into(),
            url: ShownUrl::new("client"),
            source: source.into(),
        },
    })
}

tokio::task_local! {
    /// Where the request being sent in this task was last redirected to:
    /// set by the redirect policy, read by [`following`].
    static REDIRECTED: std::cell::RefCell<Option<String>>;
}

/// Runs `send` (one request) and returns, with its result, the last URL a
/// redirect took it to: a failure there is the redirect target's (a blob
/// storage CDN's), not the registry's, and is named as such.
pub(super) async fn following<T>(send: impl Future<Output = T>) -> (T, Option<String>) {
    REDIRECTED
        .scope(std::cell::RefCell::new(None), async {
            let result = send.await;
            (result, REDIRECTED.with(|last| last.borrow_mut().take()))
        })
        .await
}

/// Redirects (blob GETs land on storage, often another host) are followed
/// up to 10 times, never from `https` to `http`. reqwest itself drops
/// `Authorization` when a redirect leaves the host, so credentials stay
/// with their registry.
pub(super) fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|url| url.scheme() == "https");
        if downgrade {
            let error = format!(
                "refusing a redirect from https to plain http (`{}`)",
                ShownUrl::from(attempt.url())
            );
            attempt.error(error)
        } else if attempt.previous().len() > 10 {
            attempt.error("more than 10 redirects")
        } else {
            // Outside `following` (no scope), nothing is noted.
            let _ =
                REDIRECTED.try_with(|last| *last.borrow_mut() = Some(attempt.url().to_string()));
            attempt.follow()
        }
    })
}

/// An error and its innermost cause, on one line (`… failed: connection refused`).
pub(super) fn cause_of(error: &Error) -> String {
    let mut innermost: &dyn std::error::Error = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    if std::ptr::addr_eq(innermost, error as &dyn std::error::Error) {
        error.to_string()
    } else {
        format!("{error}: {innermost}")
    }
}

/// True when a transport error is a certificate that did not verify.
pub(super) fn is_certificate_error(error: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.to_string().to_ascii_lowercase().contains("certificate") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Response headers whose values are never logged.
const SECRET_HEADERS: [&str; 3] = ["set-cookie", "authorization", "proxy-authenticate"];

/// One line per registry request at debug (`-v`): method, URL (redacted),
/// status, size and time; the response headers at trace (`-vv`), secrets
/// and URLs redacted.
pub(crate) fn log_response(
    method: &reqwest::Method,
    url: &str,
    response: &reqwest::Response,
    elapsed: std::time::Duration,
) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    // A HEAD has no body, whatever its `Content-Length` says.
    let size = response
        .content_length()
        .filter(|_| method != reqwest::Method::HEAD)
        .map(|n| format!("{n} B"))
        .unwrap_or_else(|| "-".into());
    let mut line = format!(
        "{method} {} → {} ({size}, {} ms)",
        ShownUrl::new(url),
        response.status().as_u16(),
        elapsed.as_millis()
    );
    if response.url().as_str() != url {
        line.push_str(&format!(" from {}", ShownUrl::from(response.url())));
    }
    tracing::debug!("{line}");
    if tracing::enabled!(tracing::Level::TRACE) {
        for (name, value) in response.headers() {
            let value = value.to_str().unwrap_or("<not text>");
            let shown = if SECRET_HEADERS.contains(&name.as_str()) {
                "<redacted>".to_string()
            } else if name == reqwest::header::LOCATION || name.as_str() == "link" {
                ShownUrl::new(value).to_string()
            } else {
                super::body::neutral(value)
            };
            tracing::trace!("  {name}: {shown}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every relative form an upload `Location` takes, resolved as RFC 3986
    /// §5.4 resolves it against the request URL (GHCR sends absolute paths;
    /// the spec allows any relative reference: distribution-spec#80).
    #[test]
    fn upload_locations_resolve_in_every_relative_form() {
        let post = "https://r.example/v2/acme/app/blobs/uploads/";
        for (location, resolved) in [
            (
                "/v2/acme/app/blobs/uploads/u1?_state=s",
                "https://r.example/v2/acme/app/blobs/uploads/u1?_state=s",
            ),
            ("u1", "https://r.example/v2/acme/app/blobs/uploads/u1"),
            (
                "./u1?x=1",
                "https://r.example/v2/acme/app/blobs/uploads/u1?x=1",
            ),
            (
                "../uploads/u1",
                "https://r.example/v2/acme/app/blobs/uploads/u1",
            ),
            (
                "?_state=s",
                "https://r.example/v2/acme/app/blobs/uploads/?_state=s",
            ),
            ("//storage.example/up/u1", "https://storage.example/up/u1"),
            (
                "https://storage.example/up/u1",
                "https://storage.example/up/u1",
            ),
        ] {
            assert_eq!(
                resolve_link(post, location, "upload").unwrap(),
                resolved,
                "{location}"
            );
        }
    }

    #[test]
    fn links_resolve_against_their_request_and_never_downgrade() {
        let current = "https://r.example/v2/a/tags/list?n=2";
        assert_eq!(
            resolve_link(current, "/v2/a/tags/list?n=2&last=b", "link").unwrap(),
            "https://r.example/v2/a/tags/list?n=2&last=b"
        );
        assert_eq!(
            resolve_link(current, "https://other.example/x", "link").unwrap(),
            "https://other.example/x"
        );
        assert!(resolve_link(current, "http://r.example/v2/a", "link").is_err());
        assert!(resolve_link(current, "file:///etc/passwd", "link").is_err());
        assert_eq!(
            resolve_link("http://127.0.0.1:5000/v2/", "https://r.example/", "l").unwrap(),
            "https://r.example/"
        );
    }

    #[test]
    fn next_link_follows_rel_next_only() {
        assert_eq!(
            next_link(r#"</v2/x/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/x/tags/list?n=2&last=b")
        );
        assert_eq!(
            next_link(r#"<https://r/prev>; rel="prev", <https://r/next>; rel=next"#).as_deref(),
            Some("https://r/next")
        );
        assert_eq!(next_link(r#"<https://r/prev>; rel="prev""#), None);
    }
}

/// Properties over arbitrary header text (proptest): `Link` and `Location` come from registries.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_link_header_parses_without_panic_into_a_part_of_itself(header in "\\PC{0,200}") {
            if let Some(target) = next_link(&header) {
                prop_assert!(header.contains(&target));
            }
        }

        #[test]
        fn links_never_downgrade_from_https(next in "\\PC{0,100}") {
            if let Ok(resolved) = resolve_link("https://r.example/v2/a/tags/list", &next, "link") {
                prop_assert!(resolved.starts_with("https://"), "{}", resolved);
            }
        }

        #[test]
        fn retry_after_of_any_text_never_panics(value in "\\PC{0,60}") {
            let _ = crate::registry::retry::parse_retry_after(&value, std::time::SystemTime::now());
        }
    }
}
