//! The admin HTTP API: JSON over HTTPS (the mail listeners' certificate), on loopback by default,
//! described by `docs/openapi.json` (served at `/api/v1/openapi.json`).
//!
//! Who may call: administrators, who log in with password + TOTP (the first login of an
//! administrator without TOTP must enrol first) and get a short-lived session token; and API
//! keys for automation, each with a role and an expiry. Both are bearer tokens stored only as
//! SHA-256 digests. Every handler checks the caller's role ([`crate::roles::allows`]) and, for a
//! domain-admin, its domains; every change is an audit event naming the caller.
//!
//! Replies never reveal internals: store and I/O errors become `500 {"error":"internal error"}`
//! (and a log line); a failed login is the same `401` whether the name exists or not.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use base64::Engine as _;
use postern_auth::guard::{Ban, Cidr, Verdict};
use postern_auth::Authenticator;
use postern_config::Config;
use postern_store::audit::{AuditQuery, NewAudit};
use postern_store::{Store, StoreError};
use postern_types::{Domain, EmailAddress};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::actor::{record, Actor};
use crate::roles::{allows, Perm, Role};

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
}

type St = State<Arc<ApiState>>;

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
fn client_text(m: &str) -> String {
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, msg) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, client_text(&m)),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.to_owned()),
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                "your role does not allow this".to_owned(),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, client_text(&m)),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, client_text(&m)),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, client_text(&m)),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large".to_owned(),
            ),
            ApiError::TooMany => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins from your address; try again later".to_owned(),
            ),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m.to_owned()),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".to_owned(),
            ),
        };
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

type ApiResult<T> = Result<T, ApiError>;

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

fn peer(parts: &Parts) -> IpAddr {
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
    session: Option<[u8; 32]>,
}

impl Caller {
    fn may(&self, p: Perm) -> ApiResult<()> {
        if allows(self.role, p) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// A domain-admin acts only within its domains.
    fn in_scope(&self, domain: &str) -> bool {
        self.role != Role::DomainAdmin
            || self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    fn scope(&self, domain: &str) -> ApiResult<()> {
        if self.in_scope(domain) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    postern_auth::app_password_digest(token)
}

fn new_token(prefix: &str) -> SecretString {
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
        let d = digest(token);
        if token.starts_with("psn_") {
            if let Some(a) = st.store.admin_session(&d, "session").await? {
                let role = Role::parse(&a.role).ok_or(ApiError::Forbidden)?;
                return Ok(Caller {
                    actor: Actor {
                        door: "api",
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

mod admins;
mod app_passwords;
mod applications;
mod audit;
mod bans;
mod domains;
mod session;
mod users;

use admins::*;
use app_passwords::*;
use applications::*;
use audit::*;
use bans::*;
use domains::*;
use session::*;
use users::*;

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

// ---------------------------------------------------------------------------------------------
// Router and server

pub fn router(state: Arc<ApiState>) -> Router {
    let max_body = state.cfg.admin.max_body_bytes;
    let v1 = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/login", post(login))
        .route("/login/enroll", post(login_enroll))
        .route("/logout", post(logout))
        .route("/me", get(me))
        .route("/me/password", post(change_own_password))
        .route("/domains", get(list_domains).post(add_domain))
        .route("/domains/{name}", delete(remove_domain))
        .route("/users", get(list_users).post(add_user))
        .route("/users/{address}", get(get_user).delete(remove_user))
        .route("/users/{address}/password", post(set_password))
        .route("/users/{address}/disable", post(disable_user))
        .route("/users/{address}/enable", post(enable_user))
        .route("/users/{address}/unlock", post(unlock_user))
        .route("/users/{address}/2fa", delete(reset_2fa))
        .route(
            "/users/{address}/app-passwords",
            get(list_app_passwords).post(create_app_password),
        )
        .route(
            "/users/{address}/app-passwords/{name}",
            delete(revoke_app_password),
        )
        .route(
            "/applications",
            get(list_applications).post(create_application),
        )
        .route(
            "/applications/{name}",
            get(get_application).delete(remove_application),
        )
        .route("/applications/{name}/rotate", post(rotate_application))
        .route("/bans", get(list_bans).post(add_ban))
        .route("/bans/lift", post(lift_ban))
        .route("/audit-log", get(audit_log))
        .route("/admins", get(list_admins).post(add_admin))
        .route("/admins/{name}", delete(remove_admin))
        .route("/api-keys", get(list_api_keys).post(add_api_key))
        .route("/api-keys/{name}", delete(revoke_api_key));
    Router::new()
        .nest("/api/v1", v1)
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        "nosniff".parse().expect("static"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000; includeSubDomains"
            .parse()
            .expect("static"),
    );
    // JSON only: nothing in a reply may run, load or be framed, should a browser render it.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'"
            .parse()
            .expect("static"),
    );
    h.insert(
        header::REFERRER_POLICY,
        "no-referrer".parse().expect("static"),
    );
    r
}

/// TLS connections handed to axum by a background accept task: handshakes run concurrently
/// (each with a 10 s limit), so a client that never finishes one delays nobody.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task ended (shutdown): wait for axum's own shutdown.
            None => std::future::pending().await,
        }
    }
    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Binds the API listener and serves it until `shutdown` resolves.
pub async fn serve(
    state: Arc<ApiState>,
    addr: SocketAddr,
    tls: tokio_rustls::TlsAcceptor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the admin API: {e}"))?;
    let local = tcp.local_addr()?;
    let allow: Vec<Cidr> = state
        .cfg
        .admin
        .allow
        .iter()
        .filter_map(|a| Cidr::parse(a).ok())
        .collect();
    let guard = state.auth.guard().clone();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let inflight = Arc::new(tokio::sync::Semaphore::new(256));
    let accept = tokio::spawn(async move {
        loop {
            let Ok((sock, peer)) = tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let ip = peer.ip();
            if (!allow.is_empty() && !allow.iter().any(|c| c.contains(ip))) || guard.is_banned(ip) {
                continue; // dropped before TLS
            }
            let Ok(permit) = inflight.clone().try_acquire_owned() else {
                continue;
            };
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if let Ok(Ok(s)) =
                    tokio::time::timeout(Duration::from_secs(10), tls.accept(sock)).await
                {
                    let _ = tx.send((s, peer)).await;
                }
            });
        }
    });
    let listener = TlsListener { rx, local };
    let app = router(state).into_make_service_with_connect_info::<PeerAddr>();
    tracing::info!(address = %local, "admin API listening (HTTPS)");
    Ok(tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        accept.abort();
        if let Err(e) = r {
            tracing::error!(error = %e, "admin API stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_text_quotes_only_an_excerpt() {
        let long = "a".repeat(5000);
        let m = super::client_text(&format!("invalid address \"{long}@x.test\"\n"));
        assert!(m.len() < 120, "{m}");
        assert!(
            m.starts_with("invalid address \"aaaa") && m.ends_with("…\""),
            "{m}"
        );
        assert_eq!(super::client_text("plain"), "plain");
        assert!(super::client_text(&"b".repeat(1000)).chars().count() <= 301);
    }
}
