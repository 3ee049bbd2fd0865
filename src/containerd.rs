//! `regmirror containerd-hosts`: containerd's registry host files
//! (`/etc/containerd/certs.d/<upstream>/hosts.toml`, the `config_path` way),
//! so nodes pull each upstream's images from the mirrors first and fall back
//! to the upstream itself.
//!
//! A target mirrors an upstream when its repositories are the target prefix
//! plus the source path (`docker.io/library/postgres` at
//! `ghcr.io/acme/mirror/library/postgres`): containerd then only needs the
//! prefix, as a host URL ending in `/v2/<prefix>` with `override_path`.
//! Images whose `path:` breaks that mapping cannot be served through a
//! mirror (containerd has no per-image rewrite); they are listed, and
//! containerd keeps pulling them from the upstream.
//!
//! Mirrors that need credentials ([`Auth`]): each mirror host gets a
//! `[host."…".header]` `Authorization` entry (containerd ≥ 1.5 sends it on
//! every request to that host), from the same credential chain `sync` uses,
//! or a placeholder that a Kubernetes secret or cloud-init fills on the
//! node; and, for clusters that configure auth in the CRI plugin, the
//! `registry.configs."<host>".auth` snippet. A file that holds a secret says
//! so at its top; [`HostsFile::shown`] is the text with the secret redacted.

use std::collections::BTreeMap;

use base64::Engine as _;

use crate::plan::Plan;
use crate::reference::Repository;
use crate::registry::credentials::{self, Credential};

/// Whether, and how, the files carry credentials for the mirrors.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    /// No credentials: the mirrors are pulled anonymously.
    #[default]
    None,
    /// Each mirror's credentials from the environment or the Docker
    /// credential chain, written into the files (which become secrets).
    Credentials,
    /// This text where the base64 `user:password` goes
    /// (`${MIRROR_AUTH}`), for a secret or cloud-init to fill on the node.
    Placeholder(String),
}

/// What a secret looks like in what regmirror prints.
const REDACTED: &str = "<redacted>";

/// One upstream's file: its directory name and contents.
#[derive(Debug)]
pub struct HostsFile {
    /// The upstream registry as containerd names it (`docker.io`).
    pub upstream: String,
    /// `hosts.toml`.
    pub toml: String,
    /// `hosts.toml` as it may be shown: any secret redacted.
    pub shown: String,
    /// True when `toml` holds a credential (write it readable by its owner only).
    pub secret: bool,
}

/// What [`hosts_files`] made, and the images it could not map.
#[derive(Debug, Default)]
pub struct Generated {
    /// One file per upstream registry.
    pub files: Vec<HostsFile>,
    /// `image → target: why`.
    pub unmapped: Vec<String>,
    /// The CRI plugin's `registry.configs` auth for each mirror host with
    /// credentials (real, and redacted), when there is any.
    pub cri: Option<(String, String)>,
    /// Mirror registries for which no credentials were found.
    pub without_credentials: Vec<String>,
    /// Mirror registries whose credential is an identity token (as `az acr
    /// login` stores): containerd can use it only through the CRI config
    /// (`identitytoken`, which it exchanges), never as a static header.
    pub identity_tokens: Vec<String>,
}

/// What a mirror's `Authorization` carries.
enum Secret {
    /// Found credentials: written into the file, and the CRI snippet.
    Credential { username: String, password: String },
    /// Text a secret or cloud-init replaces on the node.
    Placeholder(String),
    /// An OAuth2 refresh token: the CRI snippet only.
    IdentityToken(String),
}

/// What to write for a mirror registry, or `None` when there is nothing.
fn secret_for(auth: &Auth, registry: &str) -> Option<Secret> {
    match auth {
        Auth::None => None,
        Auth::Placeholder(text) => Some(Secret::Placeholder(text.clone())),
        Auth::Credentials => match credentials::lookup(registry).credential()?.clone() {
            Credential::Basic { username, password } => {
                Some(Secret::Credential { username, password })
            }
            // An identity token works only through a token exchange, which a
            // static header cannot do, and containerd's CRI plugin does.
            Credential::IdentityToken(token) => Some(Secret::IdentityToken(token)),
        },
    }
}

/// Every (source repository, target name, target repository) in the plan.
fn placements(plan: &Plan) -> Vec<(Repository, String, Repository)> {
    let mut placed = Vec::new();
    for job in &plan.jobs {
        if let crate::source::Source::Registry(source) = job.source.as_ref() {
            for d in &job.destinations {
                placed.push((source.clone(), d.name.clone(), d.repository.clone()));
            }
        }
    }
    for query in &plan.queries {
        for (name, repository) in &query.targets {
            placed.push((query.repository.clone(), name.clone(), repository.clone()));
        }
    }
    placed.sort_by_key(|(s, n, r)| (s.to_string(), n.clone(), r.to_string()));
    placed.dedup_by_key(|(s, n, r)| (s.to_string(), n.clone(), r.to_string()));
    placed
}

/// The `hosts.toml` for each upstream the plan reads from; with `auth`,
/// each mirror host's credentials (blocking: credential helpers are
/// programs).
pub fn hosts_files(plan: &Plan, auth: &Auth) -> Generated {
    // upstream → (its API host, the mirror base URLs and registries, in order)
    let mut mirrors: BTreeMap<String, (String, Vec<(String, String)>)> = BTreeMap::new();
    let mut unmapped = Vec::new();
    for (source, target, repository) in placements(plan) {
        let prefix = repository
            .path
            .strip_suffix(source.path.as_str())
            .filter(|p| p.is_empty() || p.ends_with('/'))
            .map(|p| p.trim_end_matches('/'));
        let Some(prefix) = prefix else {
            unmapped.push(format!(
                "{source} → {target}: stored as `{repository}`, not under the target prefix by its source path; containerd pulls it from {}",
                source.registry
            ));
            continue;
        };
        // The client's own rule.
        let scheme = plan
            .registries
            .get(&repository.registry)
            .cloned()
            .unwrap_or_default()
            .scheme(repository.api_host());
        let url = if prefix.is_empty() {
            format!("{scheme}://{}/v2", repository.api_host())
        } else {
            format!("{scheme}://{}/v2/{prefix}", repository.api_host())
        };
        let (_, urls) = mirrors
            .entry(source.registry.clone())
            .or_insert_with(|| (source.api_host().to_string(), Vec::new()));
        if !urls.iter().any(|(u, _)| *u == url) {
            urls.push((url, repository.registry.clone()));
        }
    }
    // One lookup per mirror registry: its `Authorization`, real and shown.
    let mut found: BTreeMap<String, Option<(String, String)>> = BTreeMap::new();
    let mut cri = (String::new(), String::new());
    let mut without_credentials = Vec::new();
    let mut identity_tokens = Vec::new();
    for (_, urls) in mirrors.values() {
        for (url, registry) in urls {
            if found.contains_key(registry) {
                continue;
            }
            let host = url
                .split("://")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .unwrap_or(registry);
            let table = format!(
                "\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"{host}\".auth]\n"
            );
            let secret = secret_for(auth, registry);
            let header = match secret {
                Some(Secret::Credential { username, password }) => {
                    let encoded = base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"));
                    cri.0.push_str(&format!(
                        "{table}  username = \"{}\"\n  password = \"{}\"\n",
                        toml_escape(&username),
                        toml_escape(&password)
                    ));
                    cri.1.push_str(&format!(
                        "{table}  username = \"{}\"\n  password = \"{REDACTED}\"\n",
                        toml_escape(&username)
                    ));
                    Some((format!("Basic {encoded}"), format!("Basic {REDACTED}")))
                }
                Some(Secret::Placeholder(text)) => {
                    let value = format!("Basic {text}");
                    Some((value.clone(), value))
                }
                Some(Secret::IdentityToken(token)) => {
                    cri.0.push_str(&format!(
                        "{table}  identitytoken = \"{}\"\n",
                        toml_escape(&token)
                    ));
                    cri.1
                        .push_str(&format!("{table}  identitytoken = \"{REDACTED}\"\n"));
                    identity_tokens.push(registry.clone());
                    None
                }
                None => {
                    if !matches!(auth, Auth::None) {
                        without_credentials.push(registry.clone());
                    }
                    None
                }
            };
            found.insert(registry.clone(), header);
        }
    }
    let secret_written = matches!(auth, Auth::Credentials);
    let files = mirrors
        .into_iter()
        .map(|(upstream, (api_host, urls))| {
            // Docker Hub's API is registry-1.docker.io, as the client knows.
            let server = format!("https://{api_host}");
            let with_header = urls
                .iter()
                .any(|(_, registry)| found.get(registry).is_some_and(Option::is_some));
            let secret = secret_written && with_header;
            let mut head = format!(
                "# Generated by `regmirror containerd-hosts`: pull {upstream} images from\n# the mirrors first, then from {upstream} itself.\n"
            );
            if secret {
                head.push_str("# This file holds registry credentials: keep it readable by root only (0600).\n");
            } else if with_header {
                head.push_str("# Fill the placeholder in each `Authorization` with base64(`user:password`)\n# of that mirror (a Kubernetes secret or cloud-init) before containerd reads it.\n");
            }
            let (mut toml, mut shown) = (head.clone(), head);
            for text in [&mut toml, &mut shown] {
                text.push_str(&format!("server = \"{server}\"\n"));
            }
            for (url, registry) in &urls {
                let host = format!(
                    "\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
                );
                let plain = if url.starts_with("http://") {
                    "  # plain HTTP: a loopback or `insecure` registry\n"
                } else {
                    ""
                };
                toml.push_str(&format!("{host}{plain}"));
                shown.push_str(&format!("{host}{plain}"));
                if let Some(Some((real, redacted))) = found.get(registry) {
                    toml.push_str(&format!("  [host.\"{url}\".header]\n    Authorization = \"{}\"\n", toml_escape(real)));
                    shown.push_str(&format!("  [host.\"{url}\".header]\n    Authorization = \"{}\"\n", toml_escape(redacted)));
                }
            }
            HostsFile {
                upstream,
                toml,
                shown,
                secret,
            }
        })
        .collect();
    let cri = (!cri.0.is_empty()).then(|| {
        let head = "# containerd's CRI plugin (config.toml, version 2): auth for the mirrors.\n# This holds registry credentials: keep it readable by root only (0600).\n";
        (format!("{head}{}", cri.0), format!("{head}{}", cri.1))
    });
    Generated {
        files,
        unmapped,
        cri,
        without_credentials,
        identity_tokens,
    }
}

/// A TOML basic string's contents: `\\` and `"` escaped.
fn toml_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_is_served_from_its_api_host() {
        let plan = crate::plan::load(
            "mirror.yaml",
            "version: 1\ntargets: {m: mirror.example/acme}\ndefaults: {targets: [m]}\nimages:\n  - {source: docker.io/library/busybox, tags: ['1.37']}\n  - {source: quay.io/coreos/etcd, tags: [v3.5.0]}\n",
        )
        .unwrap();
        let generated = hosts_files(&plan, &Auth::None);
        let files: Vec<(&str, &str)> = generated
            .files
            .iter()
            .map(|f| (f.upstream.as_str(), f.toml.as_str()))
            .collect();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].0, "docker.io");
        assert!(
            files[0]
                .1
                .contains("server = \"https://registry-1.docker.io\"\n")
        );
        assert!(
            files[0]
                .1
                .contains("[host.\"https://mirror.example/v2/acme\"]")
        );
        assert!(files[1].1.contains("server = \"https://quay.io\"\n"));
        assert!(generated.unmapped.is_empty());
    }

    #[test]
    fn a_placeholder_goes_where_the_secret_would_and_the_file_says_so() {
        let plan = crate::plan::load(
            "mirror.yaml",
            "version: 1\ntargets: {m: mirror.example/acme}\ndefaults: {targets: [m]}\nimages:\n  - {source: docker.io/library/busybox, tags: ['1.37']}\n",
        )
        .unwrap();
        let generated = hosts_files(&plan, &Auth::Placeholder("${MIRROR_AUTH}".into()));
        let file = &generated.files[0];
        assert!(!file.secret);
        assert_eq!(file.toml, file.shown);
        assert!(
            file.toml.contains(
                "  [host.\"https://mirror.example/v2/acme\".header]\n    Authorization = \"Basic ${MIRROR_AUTH}\"\n"
            ),
            "{}",
            file.toml
        );
        assert!(file.toml.contains("Fill the placeholder"), "{}", file.toml);
        assert!(generated.cri.is_none());
        // Without auth: no header at all.
        let plain = hosts_files(&plan, &Auth::None);
        assert!(
            !plain.files[0].toml.contains("header"),
            "{}",
            plain.files[0].toml
        );
    }
}
