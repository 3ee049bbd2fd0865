//! A token issuer for distribution's token auth: checks Basic credentials
//! and signs ES256 JWTs granting the requested scopes, with the signing
//! certificate in `x5c` (the registry trusts it through `rootcertbundle`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine as _;

use super::standin::StandIn;

/// Which registry's token service to play.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// distribution's token auth as its documentation describes it: Basic
    /// credentials on a GET.
    Plain,
    /// Docker Hub's (see [`Issuer::start_docker_hub`]).
    DockerHub,
    /// Azure Container Registry's `/oauth2/token` (see [`Issuer::start_acr`]).
    Acr,
}

/// The user name ACR takes with a refresh token as the password.
pub const ACR_USER: &str = "00000000-0000-0000-0000-000000000000";

pub const SERVICE: &str = "regmirror-test-registry";
pub const ISSUER: &str = "regmirror-test-issuer";

pub struct Issuer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub cert_path: PathBuf,
    pub user: String,
    pub password: String,
    /// Every token issued, to check none leaks into output.
    pub issued: Arc<Mutex<Vec<String>>>,
    /// The storage root of the registry trusting this issuer, set when it
    /// starts: Docker Hub mode grants pull-only scopes on repositories that
    /// exist there.
    pub storage: Arc<Mutex<Option<PathBuf>>>,
    /// How many of the next token requests to answer `429 Too Many
    /// Requests` (with no `Retry-After`), as ACR's token endpoint does when
    /// it throttles (Azure/azure-cli#24886).
    pub throttle: Arc<std::sync::atomic::AtomicUsize>,
    _dir: tempfile::TempDir,
    server: StandIn,
}

#[derive(serde::Serialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

#[derive(serde::Serialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Access>,
}

impl Issuer {
    pub fn start(user: &str, password: &str) -> Issuer {
        Issuer::start_with(user, password, Kind::Plain, 300)
    }

    /// Azure Container Registry's token endpoint (`/oauth2/token`), which
    /// takes an ACR refresh token (what `az acr login` stores in the Docker
    /// config as `identitytoken`, and `az acr login --expose-token` prints):
    /// - as an OAuth2 `POST` with `grant_type=refresh_token`, `service`,
    ///   `scope` (space-separated) and `refresh_token`, as docker and oras
    ///   send an identity token (Azure/acr `docs/AAD-OAuth.md`;
    ///   devcontainers/cli#444);
    /// - or as the password of the user `00000000-0000-0000-0000-000000000000`
    ///   in Basic credentials on a GET (`docker login -u 0000… -p TOKEN`);
    ///
    /// anything else is 401 `UNAUTHORIZED`. Refresh tokens from `az acr
    /// login` last 3 hours.
    pub fn start_acr(refresh_token: &str) -> Issuer {
        Issuer::start_with(ACR_USER, refresh_token, Kind::Acr, 300)
    }

    /// Docker Hub's token service (`auth.docker.io`), as its users meet it:
    /// - a pull-only scope grants nothing on a repository that does not
    ///   exist yet, so the registry answers 401 where distribution alone
    ///   would say 404 (jupyterhub/binderhub#1664, distribution#1291), and
    ///   pull on one that does; a push scope is granted (the repository is
    ///   created on push);
    /// - a name of more than two components is refused with 400
    ///   `{"details":"invalid repository name"}`
    ///   (google/go-containerregistry#1687);
    /// - tokens expire: `expires_in` 300 there; `expires_in` seconds here, so
    ///   a test run outlives its tokens.
    pub fn start_docker_hub(user: &str, password: &str, expires_in: u64) -> Issuer {
        Issuer::start_with(user, password, Kind::DockerHub, expires_in)
    }

    fn start_with(user: &str, password: &str, personality: Kind, expires_in: u64) -> Issuer {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![ISSUER.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.path().join("issuer.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
        let encoding =
            jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();

        let issued = Arc::new(Mutex::new(Vec::new()));
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let issued_in = issued.clone();
        let storage: Arc<Mutex<Option<PathBuf>>> = Arc::default();
        let storage_in = storage.clone();
        let count = std::sync::atomic::AtomicUsize::new(0);
        let json = |status: u16, body: String| {
            (
                status,
                vec![("Content-Type".to_string(), "application/json".to_string())],
                body.into_bytes(),
            )
        };
        let refresh_token = password.to_string();
        let throttle = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let throttle_in = throttle.clone();
        let server = StandIn::start(move |request, _base| {
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let throttled = throttle_in.fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |left| left.checked_sub(1),
            );
            if throttled.is_ok() {
                return json(
                    429,
                    r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"too many requests"}]}"#
                        .to_string(),
                );
            }
            let requested = scopes(request);
            let basic = request.method == "GET"
                && request.header("authorization") == Some(expected.as_str());
            let refreshed = personality == Kind::Acr
                && request.method == "POST"
                && form(request)
                    .iter()
                    .any(|(k, v)| k == "grant_type" && v == "refresh_token")
                && form(request)
                    .iter()
                    .any(|(k, v)| k == "refresh_token" && *v == refresh_token)
                && form(request).iter().any(|(k, _)| k == "service");
            if !(basic || refreshed) {
                return match personality {
                    Kind::Acr => json(
                        401,
                        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required, visit https://aka.ms/acr/authorization for more information."}]}"#.to_string(),
                    ),
                    _ => json(401, r#"{"details":"bad credentials"}"#.to_string()),
                };
            }
            let too_deep = requested
                .iter()
                .flat_map(|scope| scope.split(' '))
                .filter_map(|scope| scope.split(':').nth(1))
                .any(|name| name.split('/').count() > 2);
            if personality == Kind::DockerHub && too_deep {
                return json(400, r#"{"details":"invalid repository name"}"#.to_string());
            }
            let exists = |name: &str| {
                storage_in.lock().unwrap().as_ref().is_some_and(|root| {
                    root.join("docker/registry/v2/repositories")
                        .join(name)
                        .join("_manifests")
                        .exists()
                })
            };
            let access = requested
                .iter()
                .flat_map(|scope| scope.split(' '))
                .filter_map(|scope| {
                    let mut parts = scope.splitn(3, ':');
                    let kind = parts.next()?.to_string();
                    let name = parts.next()?.to_string();
                    let actions: Vec<String> =
                        parts.next()?.split(',').map(str::to_string).collect();
                    let grants_nothing = personality == Kind::DockerHub && !exists(&name);
                    if grants_nothing && actions == ["pull"] {
                        return None;
                    }
                    Some(Access {
                        kind,
                        name,
                        actions,
                    })
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let claims = Claims {
                iss: ISSUER.into(),
                sub: "tester".into(),
                aud: SERVICE.into(),
                exp: now + expires_in,
                nbf: now - 10,
                iat: now,
                jti: format!("token-{n}"),
                access,
            };
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            header.x5c = Some(vec![x5c.clone()]);
            let token = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();
            issued_in.lock().unwrap().push(token.clone());
            json(
                200,
                format!(r#"{{"token":"{token}","expires_in":{expires_in}}}"#),
            )
        });
        let url = server.url.clone();
        Issuer {
            url,
            cert_path,
            user: user.into(),
            password: password.into(),
            issued,
            storage,
            throttle,
            _dir: dir,
            server,
        }
    }

    /// The scopes of each token request, in order (one string per request,
    /// its `scope` parameters joined by spaces).
    pub fn scopes_requested(&self) -> Vec<String> {
        self.server
            .requests()
            .iter()
            .map(|request| scopes(request).join(" "))
            .collect()
    }

    /// Every token request, as received.
    pub fn requests(&self) -> Vec<super::standin::Recorded> {
        self.server.requests()
    }
}

/// The `scope` parameters of a token request: in the query of a GET, in
/// the form of a POST.
fn scopes(request: &super::standin::Recorded) -> Vec<String> {
    let url = url::Url::parse(&format!("http://x{}", request.target)).unwrap();
    url.query_pairs()
        .chain(url::form_urlencoded::parse(&request.body))
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// The fields of a form-encoded body.
fn form(request: &super::standin::Recorded) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&request.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}
