//! Amazon ECR Public: a repository must exist before anything is pushed to
//! it (the registry answers a push to a missing one with an error, where
//! other registries create it). With `registries.<host>.create_repositories`
//! each target repository is created once per run, before its first write,
//! through the AWS SDK: CreateRepository in us-east-1 (ECR Public's only
//! region), credentials from the standard AWS chain (environment, profile,
//! web identity as `aws-actions/configure-aws-credentials` leaves it). The
//! endpoint follows the SDK's own settings (`AWS_ENDPOINT_URL_ECR_PUBLIC`).
//!
//! ECR Public names repositories without the registry alias: the target
//! `public.ecr.aws/acme/sigstore/fulcio` is repository `sigstore/fulcio` of
//! the registry aliased `acme`.
//!
//! Credentials: where none are configured, `public.ecr.aws` (or a host with
//! `ecr_login: true`) gets them from GetAuthorizationToken with the same
//! AWS chain, as `aws ecr-public get-login-password | docker login` would,
//! so a workflow needs no login step. The token (`AWS:<password>`, Basic,
//! exchanged at the registry's `/token`) lasts 12 hours; it is asked for
//! again 10 minutes before it expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::OnceCell;

use super::auth::Credential;
use crate::error::{Error, Result};
use crate::reference::Repository;

/// The ECR Public registry.
pub const PUBLIC: &str = "public.ecr.aws";

/// A login token is asked for again this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(10 * 60);

/// Creates repositories, each at most once per run, and logs in.
#[derive(Default)]
pub struct Repositories {
    #[cfg(feature = "ecr")]
    client: OnceCell<aws_sdk_ecrpublic::Client>,
    created: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
    /// The login and when it expires; one caller asks at a time.
    login: tokio::sync::Mutex<Option<(Credential, SystemTime)>>,
}

/// The repository name ECR Public knows `repository` by: its path without
/// the registry alias.
pub fn repository_name(repository: &Repository) -> Option<&str> {
    repository
        .path
        .split_once('/')
        .map(|(_, name)| name)
        .filter(|name| !name.is_empty())
}

impl Repositories {
    /// Makes sure `repository` exists; an existing one is left as it is.
    pub async fn ensure(&self, repository: &Repository) -> Result<()> {
        let name = repository_name(repository).ok_or_else(|| Error::Api {
            service: format!("ECR Public repository for `{repository}`"),
            reason: "the target must be `public.ecr.aws/<alias>/<name>`".into(),
        })?;
        let cell = self
            .created
            .lock()
            .expect("created lock poisoned")
            .entry(name.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.create(name)).await?;
        Ok(())
    }

    /// Registry credentials from GetAuthorizationToken, until shortly
    /// before they expire.
    pub async fn login(&self) -> Result<Credential> {
        let mut login = self.login.lock().await;
        if let Some((credential, expires)) = login.as_ref()
            && SystemTime::now() + RENEW_BEFORE < *expires
        {
            return Ok(credential.clone());
        }
        let (credential, expires) = self.authorization_token().await?;
        *login = Some((credential.clone(), expires));
        Ok(credential)
    }

    #[cfg(not(feature = "ecr"))]
    async fn authorization_token(&self) -> Result<(Credential, SystemTime)> {
        Err(Error::Api {
            service: "ECR Public GetAuthorizationToken".into(),
            reason: "this regmirror was built without the `ecr` feature; log in with `aws ecr-public get-login-password | docker login`".into(),
        })
    }

    #[cfg(feature = "ecr")]
    async fn authorization_token(&self) -> Result<(Credential, SystemTime)> {
        use base64::Engine as _;
        let api = |reason: String| Error::Api {
            service: "ECR Public GetAuthorizationToken".into(),
            reason,
        };
        let answer = self
            .client()
            .await
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| api(aws_sdk_ecrpublic::error::DisplayErrorContext(&e).to_string()))?;
        let data = answer
            .authorization_data()
            .ok_or_else(|| api("the answer holds no authorization data".into()))?;
        let decoded = data
            .authorization_token()
            .and_then(|token| base64::engine::general_purpose::STANDARD.decode(token).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| api("the token is not base64 text".into()))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| api("the token is not `user:password`".into()))?;
        // 12 hours when ECR does not say (its documented lifetime).
        let expires = data
            .expires_at()
            .and_then(|at| SystemTime::try_from(*at).ok())
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(12 * 3600));
        tracing::debug!("ECR Public: logged in through GetAuthorizationToken");
        Ok((
            Credential::Basic {
                username: username.to_string(),
                password: password.to_string(),
            },
            expires,
        ))
    }

    /// The SDK client, made once (region us-east-1, ECR Public's only one).
    #[cfg(feature = "ecr")]
    async fn client(&self) -> &aws_sdk_ecrpublic::Client {
        self.client
            .get_or_init(|| async {
                let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new("us-east-1"))
                    .load()
                    .await;
                aws_sdk_ecrpublic::Client::new(&config)
            })
            .await
    }

    /// Without the `ecr` feature there is no AWS SDK to create with.
    #[cfg(not(feature = "ecr"))]
    async fn create(&self, name: &str) -> Result<()> {
        Err(Error::Api {
            service: format!("ECR Public CreateRepository `{name}`"),
            reason: "this regmirror was built without the `ecr` feature; create the repository beforehand, or use a release binary (or `cargo install --features ecr`)".into(),
        })
    }

    #[cfg(feature = "ecr")]
    async fn create(&self, name: &str) -> Result<()> {
        match self
            .client()
            .await
            .create_repository()
            .repository_name(name)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!("ECR Public: created repository `{name}`");
                Ok(())
            }
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_repository_already_exists_exception()) =>
            {
                tracing::debug!("ECR Public: repository `{name}` exists");
                Ok(())
            }
            Err(error) => Err(Error::Api {
                service: format!("ECR Public CreateRepository `{name}`"),
                reason: aws_sdk_ecrpublic::error::DisplayErrorContext(&error).to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alias_is_not_part_of_the_name() {
        let repository = |s: &str| s.parse::<crate::reference::Reference>().unwrap().repository;
        assert_eq!(
            repository_name(&repository("public.ecr.aws/acme/sigstore/fulcio")),
            Some("sigstore/fulcio")
        );
        assert_eq!(repository_name(&repository("public.ecr.aws/acme")), None);
    }
}
