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
//! Credentials: where none are configured, `public.ecr.aws` and private ECR
//! hosts (`<account>.dkr.ecr.<region>.amazonaws.com`), or a host with
//! `ecr_login`, get them from GetAuthorizationToken with the same AWS
//! chain, as `aws ecr[-public] get-login-password | docker login` would, so
//! a workflow needs no login step. The token (`AWS:<password>`; Basic at a
//! private registry, exchanged at `/token` on ECR Public) lasts 12 hours;
//! it is asked for again 10 minutes before it expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::OnceCell;

use super::credentials::Credential;
use crate::config::EcrApi;
use crate::error::{Error, Result};
use crate::reference::Repository;

/// The ECR Public registry.
pub const PUBLIC: &str = "public.ecr.aws";

/// A login token is asked for again this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(10 * 60);

/// The region of a private ECR registry host:
/// `123456789012.dkr.ecr.eu-west-1.amazonaws.com` → `eu-west-1` (also the
/// `dkr.ecr-fips` and `.amazonaws.com.cn` forms).
pub fn private_region(registry: &str) -> Option<&str> {
    let host = registry.split(':').next()?;
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let (account, rest) = rest.split_once('.')?;
    let region = rest
        .strip_prefix("dkr.ecr.")
        .or_else(|| rest.strip_prefix("dkr.ecr-fips."))?;
    let word = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    (account.len() == 12 && account.chars().all(|c| c.is_ascii_digit()) && word(region))
        .then_some(region)
}

/// The ECR API that issues `registry`'s credentials, by its name.
pub fn api_for(registry: &str) -> Option<EcrApi> {
    if registry == PUBLIC {
        Some(EcrApi::Public)
    } else {
        private_region(registry).map(|_| EcrApi::Private)
    }
}

/// Creates repositories, each at most once per run, and logs in.
#[derive(Default)]
pub struct Repositories {
    #[cfg(feature = "ecr")]
    client: OnceCell<aws_sdk_ecrpublic::Client>,
    created: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
    /// Logins per registry; one caller asks at a time.
    logins: tokio::sync::Mutex<HashMap<String, Login>>,
}

/// What GetAuthorizationToken gave for a registry this run.
enum Login {
    /// Credentials, until this time.
    Valid(Credential, SystemTime),
    /// A refusal (no AWS credentials, access denied): it would be refused
    /// again, so it is not asked again this run.
    Refused {
        /// The call, as errors name it.
        service: String,
        /// Why it was refused.
        reason: String,
    },
}

impl Login {
    /// The credentials, or the refusal as an error.
    fn answer(&self) -> Result<Credential> {
        match self {
            Login::Valid(credential, _) => Ok(credential.clone()),
            Login::Refused { service, reason } => Err(Error::Api {
                service: service.clone(),
                reason: reason.clone(),
            }),
        }
    }
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

    /// Credentials for `registry` from `api`'s GetAuthorizationToken,
    /// until shortly before they expire.
    pub async fn login(&self, registry: &str, api: EcrApi) -> Result<Credential> {
        let mut logins = self.logins.lock().await;
        match logins.get(registry) {
            Some(Login::Valid(credential, expires))
                if SystemTime::now() + RENEW_BEFORE < *expires =>
            {
                return Ok(credential.clone());
            }
            Some(refused @ Login::Refused { .. }) => return refused.answer(),
            _ => {}
        }
        let service = match api {
            EcrApi::Public => "ECR Public GetAuthorizationToken".to_string(),
            EcrApi::Private => format!("ECR GetAuthorizationToken for `{registry}`"),
        };
        let login = match self.authorization_token(registry, api).await {
            Ok((token, expires)) => match decode(&token) {
                // 12 hours when ECR does not say (its documented lifetime).
                Some(credential) => Login::Valid(
                    credential,
                    expires.unwrap_or_else(|| SystemTime::now() + Duration::from_secs(12 * 3600)),
                ),
                None => Login::Refused {
                    service,
                    reason: "the token is not base64 of `user:password`".into(),
                },
            },
            Err(reason) => Login::Refused { service, reason },
        };
        tracing::debug!("{registry}: asked GetAuthorizationToken for a login");
        let answer = login.answer();
        // Said once: a refusal is kept for the run and not asked again.
        if let Err(error) = &answer {
            tracing::warn!("{registry}: {error}");
        }
        logins.insert(registry.to_string(), login);
        answer
    }

    #[cfg(not(feature = "ecr"))]
    async fn authorization_token(
        &self,
        _registry: &str,
        _api: EcrApi,
    ) -> std::result::Result<(String, Option<SystemTime>), String> {
        Err("this regmirror was built without the `ecr` feature; log in with `aws ecr get-login-password | docker login`".into())
    }

    /// The token (base64 `AWS:<password>`) and when it expires.
    #[cfg(feature = "ecr")]
    async fn authorization_token(
        &self,
        registry: &str,
        api: EcrApi,
    ) -> std::result::Result<(String, Option<SystemTime>), String> {
        let expiry = |at: Option<&aws_sdk_ecr::primitives::DateTime>| {
            at.and_then(|at| SystemTime::try_from(*at).ok())
        };
        match api {
            EcrApi::Public => {
                let answer = self
                    .client()
                    .await
                    .get_authorization_token()
                    .send()
                    .await
                    .map_err(|e| aws_sdk_ecrpublic::error::DisplayErrorContext(&e).to_string())?;
                let data = answer
                    .authorization_data()
                    .ok_or("the answer holds no authorization data")?;
                let token = data
                    .authorization_token()
                    .ok_or("the answer holds no token")?;
                Ok((token.to_string(), expiry(data.expires_at())))
            }
            EcrApi::Private => {
                let mut config = aws_config::defaults(aws_config::BehaviorVersion::latest());
                if let Some(region) = private_region(registry) {
                    config = config.region(aws_config::Region::new(region.to_string()));
                }
                let client = aws_sdk_ecr::Client::new(&config.load().await);
                let answer = client
                    .get_authorization_token()
                    .send()
                    .await
                    .map_err(|e| aws_sdk_ecr::error::DisplayErrorContext(&e).to_string())?;
                let data = answer
                    .authorization_data()
                    .first()
                    .ok_or("the answer holds no authorization data")?;
                let token = data
                    .authorization_token()
                    .ok_or("the answer holds no token")?;
                Ok((token.to_string(), expiry(data.expires_at())))
            }
        }
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

/// `AWS:<password>` from a GetAuthorizationToken token (base64).
fn decode(token: &str) -> Option<Credential> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credential::Basic {
        username: username.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_registries_are_known_by_their_host() {
        for (host, region) in [
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                Some("eu-west-1"),
            ),
            (
                "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com",
                Some("us-east-1"),
            ),
            (
                "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
                Some("cn-north-1"),
            ),
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com:443",
                Some("eu-west-1"),
            ),
            ("12345.dkr.ecr.eu-west-1.amazonaws.com", None),
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example",
                None,
            ),
            ("public.ecr.aws", None),
            ("ghcr.io", None),
        ] {
            assert_eq!(private_region(host), region, "{host}");
        }
        assert_eq!(api_for("public.ecr.aws"), Some(EcrApi::Public));
        assert_eq!(
            api_for("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(EcrApi::Private)
        );
        assert_eq!(api_for("quay.io"), None);
    }

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
