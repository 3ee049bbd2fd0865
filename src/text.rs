//! Text on its way to people: every error, log line and report that
//! carries something a registry sent, or a URL we requested, passes through
//! here first.
//!
//! - [`neutral`]: registry text made one inert line: no control character
//!   (so it cannot start a line of its own, and so never a `::` workflow
//!   command) and no `##[` (the runner's legacy command form, obeyed
//!   anywhere in a line).
//! - [`ShownUrl`]: a URL as it may be shown: scheme, host, path and the
//!   names of its query parameters; never a query value (an upload's
//!   `_state`, a CDN's `X-Amz-Signature`) nor a user or password. Error
//!   variants hold their URLs as this type, so a secret in a URL cannot
//!   reach a message by construction.

use std::fmt;

/// Text from a registry made safe to print: one line (control characters
/// shown escaped), and no GitHub Actions workflow command in either of the
/// runner's grammars (`::name::` at a line's start, `##[name]` anywhere).
pub fn neutral(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    break_legacy_commands(&out)
}

/// `##[` (actions/runner `ActionCommand.TryParse`: the legacy form, found
/// anywhere in a line) written `## [`, which the runner does not read as a
/// command. A replacement ends in `[` after a space, so none can form anew.
pub fn break_legacy_commands(text: &str) -> String {
    text.replace("##[", "## [")
}

/// A URL as it may appear in any text: scheme, host, port, path and the
/// query's parameter names, each value shown as `…`; user information
/// dropped. Relative URLs (a `Location` header) keep their form. Built only
/// from a URL string, shown only redacted: there is no way back to the
/// secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct ShownUrl(String);

impl ShownUrl {
    /// `url` (absolute or relative, parsed or not) without its secrets.
    pub fn new(url: &str) -> ShownUrl {
        let url = url.split('#').next().unwrap_or_default();
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (url, None),
        };
        let mut out = without_user(base);
        if let Some(query) = query {
            let names: Vec<String> = query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let name = pair.split_once('=').map_or(pair, |(name, _)| name);
                    format!("{name}=…")
                })
                .collect();
            out.push('?');
            out.push_str(&names.join("&"));
        }
        ShownUrl(neutral(&out))
    }

    /// The redacted text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `scheme://host/path` without `user:password@`, however the URL is
/// written (a parser's view and a plain search for `@` in the authority
/// both apply, so an unparsable URL loses its user information too).
fn without_user(base: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(base)
        && parsed.has_host()
    {
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        let text = parsed.to_string();
        // `Url` adds a `/` to an empty path; keep the text as given.
        return match text.strip_suffix('/') {
            Some(trimmed) if !base.ends_with('/') => trimmed.to_string(),
            _ => text,
        };
    }
    // Unparsable (or without a host): wherever user information could
    // stand, in any `/`-separated part, everything up to its last `@` goes.
    base.split('/')
        .map(|part| part.rsplit_once('@').map_or(part, |(_, rest)| rest))
        .collect::<Vec<_>>()
        .join("/")
}

impl fmt::Display for ShownUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ShownUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<&str> for ShownUrl {
    fn from(url: &str) -> ShownUrl {
        ShownUrl::new(url)
    }
}

impl From<&String> for ShownUrl {
    fn from(url: &String) -> ShownUrl {
        ShownUrl::new(url)
    }
}

impl From<&url::Url> for ShownUrl {
    fn from(url: &url::Url) -> ShownUrl {
        ShownUrl::new(url.as_str())
    }
}

/// `text` (a registry's error body, which may echo the request) with every
/// query value of `url` of more than a few characters, and its password,
/// replaced by `…`: an S3 error names the signed request it refused. A
/// digest (`sha256:…`) is a name, not a secret, and often what the error
/// is about: it stays.
pub fn scrubbed(text: &str, url: &str) -> String {
    let is_digest = |value: &str| {
        value.split_once(':').is_some_and(|(algorithm, hex)| {
            matches!(algorithm, "sha256" | "sha512")
                && !hex.is_empty()
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        })
    };
    let mut secrets: Vec<String> = Vec::new();
    if let Ok(parsed) = url::Url::parse(url) {
        secrets.extend(parsed.query_pairs().map(|(_, value)| value.into_owned()));
        secrets.extend(parsed.password().map(str::to_string));
    }
    if let Some((_, query)) = url.split_once('?') {
        secrets.extend(
            query
                .split('&')
                .filter_map(|pair| pair.split_once('=').map(|(_, value)| value.to_string())),
        );
    }
    // Longest first, so a value inside another is not left in pieces.
    secrets.retain(|secret| secret.len() >= 6 && !is_digest(secret));
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    let mut out = text.to_string();
    for secret in secrets {
        out = out.replace(&secret, "…");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_text_is_one_line_without_commands() {
        let text =
            neutral("oops\n::error::owned\r\u{1b}[31m and ##[warning]x ###[set-env name=A]b");
        assert_eq!(text.lines().count(), 1);
        assert!(!text.contains('\u{1b}'));
        assert!(!text.contains("##["), "{text}");
        assert!(text.contains("## [warning]x"), "{text}");
        assert_eq!(neutral("plain `text` # [x] #"), "plain `text` # [x] #");
    }

    #[test]
    fn shown_urls_keep_names_and_drop_every_value_and_user() {
        for (url, shown) in [
            (
                "https://u:p@r.example/v2/a/blobs/uploads/x?_state=SECRET&digest=sha256:ab",
                "https://r.example/v2/a/blobs/uploads/x?_state=…&digest=…",
            ),
            (
                "/v2/a/blobs/uploads/x?_state=SECRET",
                "/v2/a/blobs/uploads/x?_state=…",
            ),
            (
                "https://cdn.example/blob?X-Amz-Signature=abc&n=2",
                "https://cdn.example/blob?X-Amz-Signature=…&n=…",
            ),
            ("http://127.0.0.1:5000/v2/", "http://127.0.0.1:5000/v2/"),
            ("https://r.example", "https://r.example"),
            ("https://tok@r.example/x#frag=SECRET", "https://r.example/x"),
            ("not a url://u:p@x/y?k=v", "not a url://x/y?k=…"),
            (
                "https://r.example/x?flag&k=v",
                "https://r.example/x?flag=…&k=…",
            ),
        ] {
            assert_eq!(ShownUrl::new(url).as_str(), shown, "{url}");
        }
    }

    #[test]
    fn error_bodies_lose_the_request_url_secrets() {
        let url = "https://cdn.example/b?X-Amz-Signature=SIGNATURE1&X-Amz-Date=20260101&digest=sha256:abcdef";
        let body = "<Error><StringToSign>SIGNATURE1 20260101</StringToSign> sha256:abcdef</Error>";
        assert_eq!(
            scrubbed(body, url),
            "<Error><StringToSign>… …</StringToSign> sha256:abcdef</Error>"
        );
    }
}

/// Properties (proptest): no planted secret survives, whatever surrounds it.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn registry_text_is_always_one_printable_line_without_legacy_commands(
            text in "(\\PC{0,20}[\\r\\n\\t\\x00-\\x1f]{0,3}#{0,3}\\[?){0,6}"
        ) {
            let neutral = neutral(&text);
            prop_assert!(!neutral.chars().any(char::is_control));
            prop_assert!(!neutral.contains("##["), "{:?}", neutral);
        }

        #[test]
        fn a_shown_url_holds_no_query_value_and_no_user(
            scheme in "(https?|ftp|)",
            user in "[A-Za-z0-9]{0,8}",
            host in "[a-z0-9.:-]{0,20}",
            path in "(/[A-Za-z0-9._~%-]{0,10}){0,4}",
            names in proptest::collection::vec("[A-Za-z_-]{1,12}", 0..4),
        ) {
            let secret = "Zx9PlantedSecret";
            let query: Vec<String> = names.iter().map(|n| format!("{n}={secret}")).collect();
            let userinfo = if user.is_empty() { String::new() } else { format!("{user}:{secret}@") };
            let prefix = if scheme.is_empty() { String::new() } else { format!("{scheme}://") };
            let url = format!("{prefix}{userinfo}{host}{path}?{}", query.join("&"));
            let shown = ShownUrl::new(&url);
            prop_assert!(!shown.as_str().contains(secret), "{} → {}", url, shown);
            for name in &names {
                prop_assert!(shown.as_str().contains(name.as_str()), "{} → {}", url, shown);
            }
        }
    }

    /// Every `troubleshooting!("anchor")` in the code names an entry of
    /// docs/troubleshooting.md (`<a id="anchor">`), and there is at least one.
    #[test]
    fn troubleshooting_links_in_messages_name_entries_that_exist() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let page = std::fs::read_to_string(root.join("docs/troubleshooting.md")).unwrap();
        let mut named = Vec::new();
        let mut dirs = vec![root.join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let code = std::fs::read_to_string(&path).unwrap();
                    for (at, _) in code.match_indices("troubleshooting!(\"") {
                        let rest = &code[at + "troubleshooting!(\"".len()..];
                        let anchor = &rest[..rest.find('"').unwrap()];
                        named.push((path.clone(), anchor.to_string()));
                    }
                }
            }
        }
        assert!(named.len() >= 8, "{named:?}");
        for (file, anchor) in named {
            if anchor == "anchor" || anchor == "x" {
                continue; // this test's own text
            }
            assert!(
                page.contains(&format!("<a id=\"{anchor}\"></a>")),
                "{}: no troubleshooting entry `{anchor}`",
                file.display()
            );
        }
        assert!(crate::troubleshooting!("x").starts_with("https://"));
    }
}
