//! What every handler of the admin API shares: the state, the errors and how they become
//! replies, the extractors with JSON errors, and the authenticated caller.

pub(crate) use std::net::{IpAddr, SocketAddr};
pub(crate) use std::sync::Arc;
pub(crate) use std::time::Duration;

pub(crate) use axum::extract::rejection::JsonRejection;
pub(crate) use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State,
};
pub(crate) use axum::http::{header, request::Parts, StatusCode};
pub(crate) use axum::response::{IntoResponse, Response};
pub(crate) use base64::Engine as _;
pub(crate) use postern_auth::guard::{Ban, Cidr, Verdict};
pub(crate) use postern_auth::Authenticator;
pub(crate) use postern_config::Config;
pub(crate) use postern_store::audit::{AuditQuery, NewAudit};
pub(crate) use postern_store::{Store, StoreError};
pub(crate) use postern_types::{Domain, EmailAddress};
pub(crate) use secrecy::{ExposeSecret, SecretString};
pub(crate) use serde::Deserialize;
pub(crate) use serde_json::{json, Value};

pub(crate) use crate::actor::{record, Actor};
pub(crate) use crate::roles::{allows, Perm, Role};

pub(crate) use super::listener::TlsListener;

/// The OpenAPI description, checked in and served as is.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

pub struct ApiState {
    pub cfg: Config,
    pub store: Store,
    pub auth: Arc<Authenticator>,
    /// The master key and secret store (TOTP seeds are sealed under it).
    pub keys: Arc<crate::keys::Keys>,
    /// A PHC string of a random password, verified against for unknown administrator names.
    pub dummy_hash: String,
    /// The directory, when administrators come from it too.
    pub ldap: Option<Arc<crate::directory::Ldap>>,
    /// WebAuthn ceremonies (passkeys as a second factor).
    pub passkeys: Arc<crate::passkeys::Passkeys>,
}

pub(crate) type St = State<Arc<ApiState>>;

// ---------------------------------------------------------------------------------------------
// Errors

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(&'static str),
    Forbidden,
    NotFound(String),
    Conflict(String),
    Unprocessable(String),
    TooMany,
    TooLarge,
    Unavailable(&'static str),
    Internal,
}

/// A message for the client: no control characters, every quoted piece of the client's input
/// cut to a short excerpt, and the whole bounded (a 5,000-character address must not come back
/// whole, nor anything a log viewer could be tricked by).
pub(crate) fn client_text(m: &str) -> String {
    const QUOTE_MAX: usize = 40;
    const TOTAL_MAX: usize = 300;
    let mut out = String::with_capacity(m.len().min(TOTAL_MAX + 8));
    let mut in_quote = false;
    let mut quoted = 0usize;
    for c in m.chars() {
        if c.is_control() {
            continue;
        }
        if c == '"' {
            if in_quote && quoted > QUOTE_MAX {
                out.push('…');
            }
            in_quote = !in_quote;
            quoted = 0;
            out.push(c);
            continue;
        }
        if in_quote {
            quoted += 1;
            if quoted > QUOTE_MAX {
                continue;
            }
        }
        out.push(c);
        if out.chars().count() >= TOTAL_MAX {
            out.push('…');
            break;
        }
    }
    out
}

impl ApiError {
    /// The status and the message a client is told (no internals).
    pub(crate) fn client_message(&self) -> (StatusCode, String) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, client_text(m)),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, (*m).to_owned()),
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                "your role does not allow this".to_owned(),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, client_text(m)),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, client_text(m)),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, client_text(m)),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large".to_owned(),
            ),
            ApiError::TooMany => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins from your address; try again later".to_owned(),
            ),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, (*m).to_owned()),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".to_owned(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, msg) = self.client_message();
        let mut r = (code, axum::Json(json!({ "error": msg }))).into_response();
        if code == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        r
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        match e.downcast_ref::<StoreError>() {
            Some(StoreError::NotFound(w)) => ApiError::NotFound(format!("{w} not found")),
            Some(StoreError::Exists(w)) => ApiError::Conflict(format!("{w} already exists")),
            Some(StoreError::Conflict(m)) => ApiError::Conflict(m.clone()),
            Some(other) => {
                tracing::error!(error = %other, "admin API: store error");
                ApiError::Internal
            }
            // Validation failures from the shared operations: their messages are written for
            // the user and name no internals.
            None => ApiError::Unprocessable(e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        anyhow::Error::from(e).into()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// `Json` whose rejections are JSON errors like every other reply.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::TooLarge),
            Err(e) => Err(ApiError::BadRequest(match e {
                JsonRejection::MissingJsonContentType(_) => {
                    "expected Content-Type: application/json".to_owned()
                }
                JsonRejection::JsonSyntaxError(_) => "the body is not valid JSON".to_owned(),
                // serde's own words name the field and what it expected; axum's prefix about
                // "the target type" is dropped.
                JsonRejection::JsonDataError(d) => {
                    let t = d.body_text();
                    let t = t
                        .split_once(": ")
                        .map_or(t.as_str(), |(_, rest)| rest)
                        .to_owned();
                    format!("the JSON body does not fit the request: {t}")
                }
                _ => "the body could not be read".to_owned(),
            })),
        }
    }
}

/// Query parameters with JSON errors.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Params(v))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// One path segment with JSON errors.
pub struct Seg(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Seg {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Seg(v))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// Two path segments with JSON errors.
pub struct Seg2(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for Seg2 {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|Path((a, b))| Seg2(a, b))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

// ---------------------------------------------------------------------------------------------
// Callers

/// The client address of a request (from the TLS listener).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerAddr
{
    fn connect_info(s: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*s.remote_addr())
    }
}

pub(crate) fn peer(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0 .0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// An authenticated caller: an administrator's session or an API key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: Actor,
    pub role: Role,
    pub domains: Vec<String>,
    /// The session token's digest (None for API keys).
    pub(crate) session: Option<[u8; 32]>,
}

impl Caller {
    pub(crate) fn may(&self, p: Perm) -> ApiResult<()> {
        if allows(self.role, p) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// A domain-admin acts only within its domains.
    pub(crate) fn in_scope(&self, domain: &str) -> bool {
        self.role != Role::DomainAdmin
            || self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    pub(crate) fn scope(&self, domain: &str) -> ApiResult<()> {
        if self.in_scope(domain) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

pub(crate) fn digest(token: &str) -> [u8; 32] {
    postern_auth::app_password_digest(token)
}

pub(crate) fn new_token(prefix: &str) -> SecretString {
    let bytes: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(rand::random());
    SecretString::from(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..])
    ))
}

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        st: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        let ip = peer(parts);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized("a bearer token is required"))?;
        caller_for_token(st, token, ip, "api").await
    }
}

/// The caller a token stands for: an administrator's session (its actor's door is `door`:
/// "api" for a bearer token, "console" for the web console's cookie) or an API key.
pub(crate) async fn caller_for_token(
    st: &ApiState,
    token: &str,
    ip: IpAddr,
    door: &'static str,
) -> ApiResult<Caller> {
    {
        let d = digest(token);
        if token.starts_with("psn_") {
            if let Some(a) = st.store.admin_session(&d, "session").await? {
                let role = Role::parse(&a.role).ok_or(ApiError::Forbidden)?;
                return Ok(Caller {
                    actor: Actor {
                        door,
                        name: a.name,
                        ip: Some(ip),
                    },
                    role,
                    domains: a.domains,
                    session: Some(d),
                });
            }
        } else if token.starts_with("pak_") {
            if let Some(k) = st.store.api_key(&d).await? {
                let role = Role::parse(&k.role).ok_or(ApiError::Forbidden)?;
                return Ok(Caller {
                    actor: Actor {
                        door: "apikey",
                        name: k.name,
                        ip: Some(ip),
                    },
                    role,
                    domains: k.domains,
                    session: None,
                });
            }
        }
        Err(ApiError::Unauthorized("invalid or expired token"))
    }
}

pub(crate) fn parse_domain(s: &str) -> ApiResult<Domain> {
    Domain::parse(s).map_err(|_| ApiError::Unprocessable(format!("invalid domain {s:?}")))
}

pub(crate) fn parse_address(s: &str) -> ApiResult<EmailAddress> {
    EmailAddress::parse(s).map_err(|_| ApiError::Unprocessable(format!("invalid address {s:?}")))
}

/// The account at `address`, if the caller may see it (out of scope looks like not found).
pub(crate) async fn scoped_account(
    st: &ApiState,
    c: &Caller,
    address: &str,
) -> ApiResult<(EmailAddress, postern_store::AccountInfo)> {
    let a = parse_address(address)?;
    if !c.in_scope(a.domain()) {
        return Err(ApiError::Forbidden);
    }
    let info = st.store.account(&a).await?;
    Ok((a, info))
}
