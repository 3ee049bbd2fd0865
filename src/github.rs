//! Tags from a GitHub project's releases (`tags: {github_releases: owner/repo}`).
//!
//! Projects like k3s publish an image per release, but release tags may
//! hold characters an image tag cannot (`v1.30.4+k3s1` is pushed as
//! `v1.30.4-k3s1`), so each release tag goes through `replace` first.
//!
//! GitHub is reached through octocrab at `$GITHUB_API_URL` (what Actions
//! sets, and GitHub Enterprise uses), else `https://api.github.com`, with
//! `$GITHUB_TOKEN` when set: unauthenticated callers get 60 requests an hour.

use crate::error::{Error, Result};
use crate::plan::tags::Releases;

/// Releases are read 100 to a page; at most this many pages (newest first).
#[cfg(feature = "github")]
const MAX_PAGES: u32 = 10;

impl Releases {
    /// The project's published releases (drafts and pre-releases left
    /// out) as (release tag, image tag), newest release first.
    #[cfg(feature = "github")]
    pub async fn image_tags(&self) -> Result<Vec<(String, String)>> {
        let releases = self.list().await.map_err(|error| Error::Api {
            service: format!("GitHub releases of `{}/{}`", self.owner, self.repo),
            reason: describe(&error),
        })?;
        let mut tags = Vec::new();
        for release in releases {
            if release.draft || release.prerelease {
                continue;
            }
            match self.image_tag(&release.tag_name) {
                Some(tag) => tags.push((release.tag_name, tag)),
                None => tracing::warn!(
                    "{}/{}: release `{}` does not make a valid image tag; skipped",
                    self.owner,
                    self.repo,
                    release.tag_name
                ),
            }
        }
        Ok(tags)
    }

    /// Without the `github` feature there is no GitHub client.
    #[cfg(not(feature = "github"))]
    pub async fn image_tags(&self) -> Result<Vec<(String, String)>> {
        Err(Error::Api {
            service: format!("GitHub releases of `{}/{}`", self.owner, self.repo),
            reason: "this regmirror was built without the `github` feature; use a release binary (or `cargo install --features github`)".into(),
        })
    }

    #[cfg(feature = "github")]
    async fn list(&self) -> octocrab::Result<Vec<octocrab::models::repos::Release>> {
        let github = client()?;
        let mut page = github
            .repos(&self.owner, &self.repo)
            .releases()
            .list()
            .per_page(100)
            .send()
            .await?;
        let mut releases = page.take_items();
        for _ in 1..MAX_PAGES {
            match github
                .get_page::<octocrab::models::repos::Release>(&page.next)
                .await?
            {
                Some(mut next) => {
                    releases.extend(next.take_items());
                    page = next;
                }
                None => break,
            }
        }
        Ok(releases)
    }
}

/// An octocrab client for `$GITHUB_API_URL`, with `$GITHUB_TOKEN` if set.
#[cfg(feature = "github")]
fn client() -> octocrab::Result<octocrab::Octocrab> {
    let mut builder = octocrab::Octocrab::builder();
    if let Some(url) = std::env::var("GITHUB_API_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        builder = builder.base_uri(url)?;
    }
    if let Some(token) = std::env::var("GITHUB_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.personal_token(token);
    }
    builder.build()
}

/// octocrab's error with GitHub's own message, when there is one; never the token.
#[cfg(feature = "github")]
fn describe(error: &octocrab::Error) -> String {
    match error {
        octocrab::Error::GitHub { source, .. } => {
            let hint = match source.status_code.as_u16() {
                401 => " (check `GITHUB_TOKEN`)",
                403 | 429 => {
                    " (rate limited? set `GITHUB_TOKEN`: anonymous callers get 60 requests an hour)"
                }
                404 => " (no such project, or it is private and `GITHUB_TOKEN` cannot see it)",
                _ => "",
            };
            format!("{} {}{hint}", source.status_code, source.message)
        }
        other => crate::report::error_chain_parts(other).join(": "),
    }
}
