//! Bearer tokens from OpenID Connect providers (`[[oidc]]`), for SASL OAUTHBEARER and XOAUTH2:
//! the provider is found by the token's `iss`; its keys come from the discovery document's
//! `jwks_uri` over HTTPS (certificate verified), cached for an hour and fetched again when a
//! token names a key not seen yet (key rotation; at most every 10 s). A token must be signed
//! with an allowed asymmetric algorithm (never `none`, never HS*: a public key used as an HMAC
//! secret is refused because the algorithm is), by a key of the provider whose type fits the
//! algorithm, and carry the configured issuer and audience, a current `exp` and `nbf` (with the
//! allowed skew) and the required scope. The configured claim names the account.
//!
//! Tokens are never logged: only why they were refused, as an audit reason.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{jwk::JwkSet, Algorithm, DecodingKey, Validation};
use postern_auth::{TokenError, TokenVerifier};
use postern_config::OidcConfig;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

const JWKS_TTL: Duration = Duration::from_secs(3600);
const REFRESH_MIN: Duration = Duration::from_secs(10);
const MAX_DOC: usize = 256 * 1024;

pub struct Oidc {
    providers: Vec<Provider>,
    resolver: postern_dns::TokioResolver,
}

struct Provider {
    cfg: OidcConfig,
    algorithms: Vec<Algorithm>,
    connector: tokio_rustls::TlsConnector,
    keys: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    set: Option<Arc<JwkSet>>,
    fetched: Option<Instant>,
}

impl Oidc {
    pub fn new(
        cfgs: &[OidcConfig],
        base: &postern_config::Config,
        resolver: postern_dns::TokioResolver,
    ) -> anyhow::Result<Oidc> {
        let mut providers = Vec::new();
        for c in cfgs {
            let ca = c.ca_file.as_ref().map(|p| base.path(p));
            let connector = postern_queue::mta_sts::connector(ca.as_deref())
                .map_err(|e| anyhow::anyhow!("oidc {}: {e}", c.issuer))?;
            let algorithms = c
                .algorithms
                .iter()
                .map(|a| Algorithm::from_str(a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("oidc {}: {e}", c.issuer))?;
            providers.push(Provider {
                cfg: c.clone(),
                algorithms,
                connector,
                keys: Mutex::new(Keys::default()),
            });
        }
        Ok(Oidc {
            providers,
            resolver,
        })
    }

    async fn get_json(&self, p: &Provider, url: &str) -> Result<serde_json::Value, TokenError> {
        if !url.starts_with("https://") {
            tracing::warn!(issuer = %p.cfg.issuer, url, "OIDC: not an https URL");
            return Err(TokenError::Unavailable);
        }
        let (status, body) =
            postern_queue::mta_sts::http_get(url, MAX_DOC, &self.resolver, &p.connector)
                .await
                .map_err(|e| {
                    tracing::warn!(issuer = %p.cfg.issuer, url, error = %e, "OIDC: fetch failed");
                    TokenError::Unavailable
                })?;
        if status != 200 {
            tracing::warn!(issuer = %p.cfg.issuer, url, status, "OIDC: fetch failed");
            return Err(TokenError::Unavailable);
        }
        serde_json::from_slice(&body).map_err(|_| TokenError::Unavailable)
    }

    /// The provider's keys: the cached set, or a fresh one when the cache is old or `kid` is
    /// not in it (not more often than every 10 s).
    async fn keys(&self, p: &Provider, kid: Option<&str>) -> Result<Arc<JwkSet>, TokenError> {
        let mut k = p.keys.lock().await;
        let fresh = k.fetched.is_some_and(|t| t.elapsed() < JWKS_TTL);
        let has_kid = |s: &JwkSet| kid.is_none_or(|kid| s.find(kid).is_some());
        if let Some(set) = &k.set {
            if fresh && has_kid(set) {
                return Ok(set.clone());
            }
            if k.fetched.is_some_and(|t| t.elapsed() < REFRESH_MIN) {
                return Ok(set.clone());
            }
        }
        match self.fetch_keys(p).await {
            Ok(set) => {
                k.set = Some(set.clone());
                k.fetched = Some(Instant::now());
                tracing::info!(issuer = %p.cfg.issuer, keys = set.keys.len(), "OIDC: signing keys fetched");
                Ok(set)
            }
            // The provider unreachable: keys already known keep working; a key never seen
            // cannot be decided now (a temporary failure, not a failed login).
            Err(e) => match &k.set {
                Some(set) if has_kid(set) => Ok(set.clone()),
                _ => Err(e),
            },
        }
    }

    async fn fetch_keys(&self, p: &Provider) -> Result<Arc<JwkSet>, TokenError> {
        let issuer = p.cfg.issuer.trim_end_matches('/');
        let doc = self
            .get_json(p, &format!("{issuer}/.well-known/openid-configuration"))
            .await?;
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(p.cfg.issuer.as_str()) {
            tracing::warn!(issuer = %p.cfg.issuer, "OIDC: the discovery document names another issuer");
            return Err(TokenError::Unavailable);
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or(TokenError::Unavailable)?
            .to_owned();
        let set: JwkSet = serde_json::from_value(self.get_json(p, &jwks_uri).await?)
            .map_err(|_| TokenError::Unavailable)?;
        Ok(Arc::new(set))
    }

    async fn check(&self, token: &str) -> Result<String, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        // Which provider: the unverified `iss`, matched exactly against the configuration;
        // everything is verified against that provider's keys below.
        let payload = token.split('.').nth(1).ok_or(TokenError::Invalid)?;
        let claims: serde_json::Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Invalid)?;
        let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or("");
        let p = self
            .providers
            .iter()
            .find(|p| p.cfg.issuer == iss)
            .ok_or(TokenError::Invalid)?;
        if !p.algorithms.contains(&header.alg) {
            return Err(TokenError::Invalid);
        }
        let set = self.keys(p, header.kid.as_deref()).await?;
        let jwk = match header.kid.as_deref() {
            Some(kid) => set.find(kid).ok_or(TokenError::Invalid)?,
            // Without a kid, only a provider with a single key is unambiguous.
            None if set.keys.len() == 1 => &set.keys[0],
            None => return Err(TokenError::Invalid),
        };
        if jwk
            .common
            .key_algorithm
            .is_some_and(|ka| ka.to_string() != format!("{:?}", header.alg))
        {
            return Err(TokenError::Invalid);
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|_| TokenError::Invalid)?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = p.cfg.leeway_secs.min(300);
        v.validate_nbf = true;
        v.set_issuer(&[p.cfg.issuer.as_str()]);
        v.set_audience(&[p.cfg.audience.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature
                    | jsonwebtoken::errors::ErrorKind::ImmatureSignature => TokenError::Expired,
                    _ => TokenError::Invalid,
                }
            })?;
        let claims = data.claims;
        if let Some(scope) = &p.cfg.scope {
            let in_scope = claims
                .get("scope")
                .and_then(|s| s.as_str())
                .is_some_and(|s| s.split(' ').any(|x| x == scope))
                || claims
                    .get("scp")
                    .and_then(|s| s.as_array())
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(scope)));
            if !in_scope {
                return Err(TokenError::Invalid);
            }
        }
        let account = claims
            .get(&p.cfg.claim)
            .and_then(|v| v.as_str())
            .filter(|a| a.contains('@'))
            .ok_or(TokenError::Invalid)?;
        Ok(account.trim().to_lowercase())
    }
}

#[async_trait::async_trait]
impl TokenVerifier for Oidc {
    async fn verify(&self, token: &SecretString) -> Result<String, TokenError> {
        let r = self.check(token.expose_secret()).await;
        if let Err(e) = &r {
            tracing::debug!(error = ?e, "bearer token refused");
        }
        r
    }
}
