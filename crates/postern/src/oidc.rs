//! Bearer tokens from OpenID Connect providers (`[[oidc]]`), for SASL OAUTHBEARER and XOAUTH2:
//! the provider is found by the token's `iss`; its keys come from the discovery document's
//! `jwks_uri` over HTTPS (certificate verified), cached for an hour and fetched again when a
//! token names a key not seen yet (key rotation; at most every 10 s). A token must be signed
//! with an allowed asymmetric algorithm (never `none`, never HS*: a public key used as an HMAC
//! secret is refused because the algorithm is), by a key of the provider whose type fits the
//! algorithm, and carry the configured issuer and audience, a current `exp` and `nbf` (with the
//! allowed skew) and the required scope. The configured claim names the account.
//!
//! Opaque (non-JWT) tokens are checked at the provider's introspection endpoint (RFC 7662) when
//! introspection credentials are configured: active, issuer, audience, lifetime, scope, claim;
//! answers are kept 30 s per token digest.
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
use std::collections::HashMap;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

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
    /// RFC 7662 client credentials, for opaque tokens.
    introspection: Option<(String, Zeroizing<String>)>,
    /// Recent introspection answers by token digest: a client that reconnects does not cost
    /// a request each time; a revoked token stops working within `INTROSPECTION_TTL`.
    introspected: std::sync::Mutex<HashMap<[u8; 32], Introspected>>,
}

#[derive(Default)]
struct Keys {
    set: Option<Arc<JwkSet>>,
    fetched: Option<Instant>,
    introspection_endpoint: Option<String>,
}

const INTROSPECTION_TTL: Duration = Duration::from_secs(30);

/// When a token was introspected, and the answer.
type Introspected = (Instant, Result<String, TokenError>);

impl Oidc {
    pub async fn new(
        cfgs: &[OidcConfig],
        base: &postern_config::Config,
        resolver: postern_dns::TokioResolver,
        keys: &crate::keys::Keys,
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
            let introspection = match (&c.introspection_client_id, &c.introspection_client_secret) {
                (Some(id), Some(secret)) => Some((
                    id.clone(),
                    keys.resolve(secret, "OIDC introspection client").await?,
                )),
                _ => None,
            };
            providers.push(Provider {
                cfg: c.clone(),
                algorithms,
                connector,
                keys: Mutex::new(Keys::default()),
                introspection,
                introspected: Default::default(),
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
            Ok((set, introspection)) => {
                k.set = Some(set.clone());
                k.fetched = Some(Instant::now());
                k.introspection_endpoint = introspection;
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

    /// The keys of the discovery document's `jwks_uri`, and its `introspection_endpoint`.
    async fn fetch_keys(&self, p: &Provider) -> Result<(Arc<JwkSet>, Option<String>), TokenError> {
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
        let introspection = doc
            .get("introspection_endpoint")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let set: JwkSet = serde_json::from_value(self.get_json(p, &jwks_uri).await?)
            .map_err(|_| TokenError::Unavailable)?;
        Ok((Arc::new(set), introspection))
    }

    /// An opaque token, asked of each provider that has introspection credentials (RFC 7662):
    /// it must be active, for our audience, from that issuer, within its lifetime, with the
    /// scope, and name an account in the configured claim.
    async fn introspect(&self, token: &str) -> Result<String, TokenError> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let mut last = Err(TokenError::Invalid);
        for p in self.providers.iter().filter(|p| p.introspection.is_some()) {
            if let Some((at, r)) = p
                .introspected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&digest)
            {
                if at.elapsed() < INTROSPECTION_TTL {
                    if r.is_ok() {
                        return r.clone();
                    }
                    last = r.clone();
                    continue;
                }
            }
            let r = self.introspect_at(p, token).await;
            if r != Err(TokenError::Unavailable) {
                let mut cache = p.introspected.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= 10_000 {
                    cache.retain(|_, (at, _)| at.elapsed() < INTROSPECTION_TTL);
                }
                cache.insert(digest, (Instant::now(), r.clone()));
            }
            match r {
                Ok(a) => return Ok(a),
                Err(e) => last = Err(e),
            }
        }
        last
    }

    async fn introspect_at(&self, p: &Provider, token: &str) -> Result<String, TokenError> {
        let (id, secret) = p.introspection.as_ref().ok_or(TokenError::Invalid)?;
        if p.keys.lock().await.introspection_endpoint.is_none() {
            self.keys(p, None).await?;
        }
        let endpoint = p
            .keys
            .lock()
            .await
            .introspection_endpoint
            .clone()
            .filter(|e| e.starts_with("https://"))
            .ok_or(TokenError::Unavailable)?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        // RFC 6749 2.3.1: client id and secret form-encoded, then HTTP Basic
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(id),
            enc(secret)
        ));
        let (status, body) = postern_queue::mta_sts::http_post_form(
            &endpoint,
            &[("authorization", format!("Basic {basic}"))],
            form.into_bytes(),
            MAX_DOC,
            &self.resolver,
            &p.connector,
        )
        .await
        .map_err(|e| {
            tracing::warn!(issuer = %p.cfg.issuer, error = %e, "OIDC: introspection failed");
            TokenError::Unavailable
        })?;
        if status != 200 {
            tracing::warn!(issuer = %p.cfg.issuer, status, "OIDC: introspection failed");
            return Err(TokenError::Unavailable);
        }
        let claims: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| TokenError::Unavailable)?;
        if claims.get("active").and_then(|a| a.as_bool()) != Some(true) {
            return Err(TokenError::Invalid);
        }
        if claims
            .get("iss")
            .and_then(|v| v.as_str())
            .is_some_and(|iss| iss != p.cfg.issuer)
        {
            return Err(TokenError::Invalid);
        }
        let aud_ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => *a == p.cfg.audience,
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .any(|x| x.as_str() == Some(p.cfg.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(TokenError::Invalid);
        }
        let now = postern_store::now();
        let leeway = p.cfg.leeway_secs.min(300) as i64;
        let time = |k: &str| claims.get(k).and_then(|v| v.as_i64());
        if time("exp").is_some_and(|e| e + leeway < now)
            || time("nbf").is_some_and(|n| n - leeway > now)
        {
            return Err(TokenError::Expired);
        }
        Self::account_of(&p.cfg, &claims)
    }

    /// The required scope, then the account the configured claim names.
    fn account_of(cfg: &OidcConfig, claims: &serde_json::Value) -> Result<String, TokenError> {
        if let Some(scope) = &cfg.scope {
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
            .get(&cfg.claim)
            .and_then(|v| v.as_str())
            .filter(|a| a.contains('@'))
            .ok_or(TokenError::Invalid)?;
        Ok(account.trim().to_lowercase())
    }

    async fn check(&self, token: &str) -> Result<String, TokenError> {
        // A JWT has three parts and a header; anything else is opaque: introspection decides.
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) if token.split('.').count() == 3 => h,
            _ => return self.introspect(token).await,
        };
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
        Self::account_of(&p.cfg, &data.claims)
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
