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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::reference::Repository;

/// Creates repositories, each at most once per run.
#[derive(Default)]
pub struct Repositories {
    #[cfg(feature = "ecr")]
    client: OnceCell<aws_sdk_ecrpublic::Client>,
    created: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
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
        let client = self
            .client
            .get_or_init(|| async {
                let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new("us-east-1"))
                    .load()
                    .await;
                aws_sdk_ecrpublic::Client::new(&config)
            })
            .await;
        match client
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
