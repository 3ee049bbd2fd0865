//! Refusals a registry explains only in words: a 401, 403 or 404 whose
//! body names a cause we know, and what the user does about it. Each entry
//! has its source; the first whose text the body holds wins.

/// What a known refusal means to the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Meaning {
    /// Who we are may not do this (exit 3).
    Permission,
    /// The registry is set up so that this cannot work (exit 1).
    Setup,
}

/// A refusal we recognise by its text.
#[derive(Debug)]
pub(super) struct Known {
    /// Text the registry's answer holds.
    needle: &'static str,
    /// The registry that answers this way, for the message.
    pub registry: &'static str,
    /// What to do.
    pub hint: &'static str,
    pub meaning: Meaning,
}

const KNOWN: &[Known] = &[
    // GHCR's two refusals of a workflow's push (Snowfork/snowbridge#1272,
    // docker/build-push-action#463, actions/runner#1039).
    Known {
        needle: "write_package",
        registry: "GHCR",
        hint: concat!(
            "the package exists and these credentials may not write to it: in the package's settings on GitHub, under \"Manage Actions access\", add this workflow's repository with the Write role, or push with a token that has `write:packages` (see ",
            crate::troubleshooting!("ghcr-push-refused"),
            ")"
        ),
        meaning: Meaning::Permission,
    },
    Known {
        needle: "installation not allowed to",
        registry: "GHCR",
        hint: concat!(
            "the workflow's `GITHUB_TOKEN` may not write packages: give the job `permissions: packages: write` (see ",
            crate::troubleshooting!("ghcr-push-refused"),
            ")"
        ),
        meaning: Meaning::Permission,
    },
    // Google Artifact Registry: no credentials reached it
    // (GoogleCloudPlatform/generative-ai#693, google-github-actions/auth
    // with a missing `docker login`).
    Known {
        needle: "Unauthenticated requests do not have permission",
        registry: "Artifact Registry",
        hint: "no credentials reached it: run `gcloud auth configure-docker LOCATION-docker.pkg.dev`, or log in with the user `oauth2accesstoken` and `gcloud auth print-access-token`, or `_json_key` and a service account key",
        meaning: Meaning::Permission,
    },
    // Google Artifact Registry: a repository that does not exist (it
    // creates images on push, never repositories) or that the credentials
    // may not use; it cannot say which (google-github-actions/auth#50,
    // GoogleCloudPlatform/cymbal-superstore#4).
    Known {
        needle: "artifactregistry.repositories.",
        registry: "Artifact Registry",
        hint: concat!(
            "the repository must exist (create it: `gcloud artifacts repositories create REPOSITORY --repository-format=docker --location=LOCATION --project=PROJECT`), and these credentials need `roles/artifactregistry.writer` on it (`roles/artifactregistry.reader` to read; see ",
            crate::troubleshooting!("gar-permission-denied"),
            ")"
        ),
        meaning: Meaning::Permission,
    },
    // Harbor: projects are never created on push (goharbor/harbor#20544,
    // goharbor/harbor-helm#849; "project %s not found" in Harbor's
    // manifest handler).
    Known {
        needle: "project",
        registry: "Harbor",
        hint: concat!(
            "the project must exist before a push: create it in Harbor (Projects → New Project, or `POST /api/v2.0/projects`), and give the robot account push permission on it (see ",
            crate::troubleshooting!("harbor-project-not-found"),
            ")"
        ),
        meaning: Meaning::Setup,
    },
];

/// The known refusal `status` with `body` is, if any.
pub(super) fn explain(status: u16, body: &str) -> Option<&'static Known> {
    if !matches!(status, 401 | 403 | 404) {
        return None;
    }
    KNOWN.iter().find(|known| {
        body.contains(known.needle)
            && (known.registry != "Harbor" || (status == 404 && body.contains("not found")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_known_by_their_words() {
        let gar = r#"{"errors":[{"code":"DENIED","message":"Permission \"artifactregistry.repositories.uploadArtifacts\" denied on resource \"projects/p/locations/l/repositories/r\" (or it may not exist)"}]}"#;
        let known = explain(403, gar).expect("GAR's denial");
        assert!(known.hint.contains("gcloud artifacts repositories create"));
        let unauthenticated = r#"{"errors":[{"code":"UNAUTHORIZED","message":"Unauthenticated request. Unauthenticated requests do not have permission \"artifactregistry.repositories.uploadArtifacts\" on resource"}]}"#;
        assert!(
            explain(401, unauthenticated)
                .unwrap()
                .hint
                .contains("configure-docker")
        );
        let harbor = r#"{"errors":[{"code":"NOT_FOUND","message":"project acme not found"}]}"#;
        assert_eq!(explain(404, harbor).unwrap().meaning, Meaning::Setup);
        // A 404 that names no project, or another status, is not Harbor's.
        assert!(explain(404, r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#).is_none());
        assert!(explain(500, gar).is_none());
        assert!(explain(403, "project acme not found").is_none());
    }
}
