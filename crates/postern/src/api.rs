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
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

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

// ---------------------------------------------------------------------------------------------
// Login

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginReq {
    name: String,
    password: SecretString,
    #[serde(default)]
    totp: Option<SecretString>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollReq {
    enrollment_token: SecretString,
    code: SecretString,
}

async fn audit_login(st: &ApiState, name: &str, ip: IpAddr, ok: bool, reason: &str) {
    let r = st
        .store
        .append_audit(&[NewAudit {
            ts: postern_store::now(),
            event: "auth".into(),
            protocol: Some("admin-api".into()),
            ip: Some(ip.to_string()),
            username: Some(postern_auth::loggable_username(name)),
            mechanism: Some("password+totp".into()),
            tls: Some("TLS".into()),
            result: if ok { "ok" } else { "failed" }.into(),
            reason: (!reason.is_empty()).then(|| reason.to_owned()),
            ..Default::default()
        }])
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "admin API: could not write the audit log");
    }
}

async fn login(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    Body(req): Body<LoginReq>,
) -> ApiResult<Response> {
    let ip = addr.ip();
    let key = st.keys.clone();
    let guard = st.auth.guard().clone();
    let login = format!("admin:{}", req.name.trim().to_lowercase());
    match guard.check(ip, &login) {
        Verdict::Banned => return Err(ApiError::TooMany),
        Verdict::Locked => {
            audit_login(&st, &req.name, ip, false, "locked").await;
            // The source pays for attempts on a locked account too.
            let effect = guard.locked_attempt(ip, &login, &req.password).await;
            tokio::time::sleep(Duration::from_millis(effect.delay_ms)).await;
            if effect.banned.is_some() {
                return Err(ApiError::TooMany);
            }
            return Err(ApiError::Unauthorized("invalid credentials"));
        }
        Verdict::Allow => {}
    }
    let found = st.store.admin_login(req.name.trim()).await?;
    let phc = found
        .as_ref()
        .map_or(st.dummy_hash.clone(), |(_, h)| h.clone());
    let matched = st
        .auth
        .pool()
        .verify(&req.password, phc)
        .await
        .map_err(|_| ApiError::Unavailable("busy; try again"))?;
    let fail = |reason: &'static str| {
        let (st, guard, login, name, pw) = (
            st.clone(),
            guard.clone(),
            login.clone(),
            req.name.clone(),
            req.password.clone(),
        );
        async move {
            audit_login(&st, &name, ip, false, reason).await;
            let effect = guard.failure(ip, &login, &pw).await;
            if effect.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(effect.delay_ms)).await;
            }
            if effect.banned.is_some() {
                ApiError::TooMany
            } else {
                ApiError::Unauthorized("invalid credentials")
            }
        }
    };
    let admin = match found {
        Some((a, _)) if matched && !a.disabled => a,
        Some((a, _)) if matched && a.disabled => return Err(fail("disabled").await),
        Some(_) => return Err(fail("bad_password").await),
        None => return Err(fail("unknown_user").await),
    };
    let owner = postern_store::totp::admin_owner(admin.id);
    let enrolled = st.store.second_factor_confirmed(&owner).await?;
    if !enrolled {
        // First login (or after a 2FA reset): the password alone only buys a TOTP enrolment.
        let e = crate::twofactor::begin(
            &st.store,
            &key,
            &owner,
            &st.cfg.server.hostname,
            &admin.name,
        )
        .await
        .map_err(|_| ApiError::Internal)?;
        let token = new_token("pen_");
        st.store
            .create_admin_session(
                &digest(token.expose_secret()),
                admin.id,
                "enroll",
                postern_store::now() + 600,
                &ip.to_string(),
            )
            .await?;
        audit_login(&st, &admin.name, ip, false, "totp_enrollment_required").await;
        return Ok((
            StatusCode::OK,
            axum::Json(json!({
                "status": "enrollment_required",
                "enrollment_token": token.expose_secret(),
                "otpauth_uri": e.uri.as_str(),
                "secret": e.secret_base32.as_str(),
            })),
        )
            .into_response());
    }
    // The second factor. Its failures are failures: every wrong or missing code counts
    // against the source and the account (never deduplicated by the password, which is the same
    // each time), a few lock the second factor for unknown sources, and the reply is the one a
    // wrong password gets, so the password step is no oracle.
    let code_fail = |reason: &'static str| {
        let (st, guard, login, name) =
            (st.clone(), guard.clone(), login.clone(), admin.name.clone());
        async move {
            audit_login(&st, &name, ip, false, reason).await;
            let effect = guard.code_failure(ip, &login).await;
            if effect.locked {
                second_factor_locked(&st, &name, ip).await;
            }
            if effect.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(effect.delay_ms)).await;
            }
            if effect.banned.is_some() {
                ApiError::TooMany
            } else {
                ApiError::Unauthorized("invalid credentials")
            }
        }
    };
    match guard.check_code(ip, &login) {
        Verdict::Banned => return Err(ApiError::TooMany),
        Verdict::Locked => return Err(code_fail("second_factor_locked").await),
        Verdict::Allow => {}
    }
    let Some(code) = req.totp.as_ref() else {
        return Err(code_fail("totp_missing").await);
    };
    let proof = crate::twofactor::verify(&st.store, &key, &owner, code.expose_secret())
        .await
        .map_err(|_| ApiError::Internal)?;
    if proof.is_none() {
        return Err(code_fail("bad_totp").await);
    }
    guard.success(ip, &login);
    let detail = match proof {
        Some(crate::twofactor::Proof::RecoveryCode) => "recovery code used",
        _ => "",
    };
    audit_login(&st, &admin.name, ip, true, detail).await;
    session_reply(&st, admin.id, &admin.role, ip, None).await
}

/// A second factor was just locked by wrong codes: whoever sent them knew the password. An audit
/// event, an alert in the log, and a mail to the postmaster of each local domain.
async fn second_factor_locked(st: &ApiState, name: &str, ip: IpAddr) {
    let system = Actor::system("guard");
    let detail = format!(
        "second factor locked for unknown sources after wrong codes from {ip}: the password is known to someone"
    );
    tracing::error!(target: "postern::alert", event = "second_factor_locked", admin = %postern_auth::loggable_username(name), ip = %ip, "wrong second-factor codes after the right password: the password is known; change it");
    if let Err(e) = record(
        &st.store,
        &system,
        "second_factor_locked",
        &format!("admin:{name}"),
        &detail,
    )
    .await
    {
        tracing::error!(error = %e, "admin API: could not write the audit log");
    }
    // Administrators have no mailbox of their own: the notice goes to the postmaster of each
    // local domain (RFC 2142), the operators' address.
    let mut accounts: Vec<i64> = Vec::new();
    for d in st.store.list_domains().await.unwrap_or_default() {
        let Ok(a) = EmailAddress::parse(&format!("postmaster@{}", d.name)) else {
            continue;
        };
        if let Ok(Some(id)) = st.store.resolve_recipient(&a).await {
            if !accounts.contains(&id) {
                accounts.push(id);
            }
        }
    }
    if accounts.is_empty() {
        return;
    }
    let now = chrono::Utc::now();
    let msg = format!(
        "From: Postern <postmaster@{host}>\r\n\
         To: undisclosed-recipients:;\r\n\
         Subject: Someone knows your administrator password\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}@{host}>\r\n\
         Auto-Submitted: auto-generated\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Wrong two-factor codes were sent for the administrator {name} together with the\r\n\
         right password, from {ip}, at {date}.\r\n\
         \r\n\
         The second factor of {name} is now locked for addresses it has not logged in from.\r\n\
         If this was not {name}, the password is known to someone: change it now\r\n\
         (postern admin passwd {name}).\r\n",
        host = st.cfg.server.hostname,
        date = now.to_rfc2822(),
        id = hex::encode(rand::random::<[u8; 12]>()),
    );
    if let Err(e) = st
        .store
        .deliver_local(vec![msg.into_bytes()], &accounts, now.timestamp())
        .await
    {
        tracing::error!(error = %e, "could not deliver the second-factor notice");
    }
}

async fn session_reply(
    st: &ApiState,
    admin_id: i64,
    role: &str,
    ip: IpAddr,
    recovery: Option<Vec<String>>,
) -> ApiResult<Response> {
    let token = new_token("psn_");
    let expires_at = postern_store::now() + st.cfg.admin.session_secs as i64;
    st.store
        .create_admin_session(
            &digest(token.expose_secret()),
            admin_id,
            "session",
            expires_at,
            &ip.to_string(),
        )
        .await?;
    let mut body = json!({
        "status": "ok",
        "token": token.expose_secret(),
        "expires_at": expires_at,
        "role": role,
    });
    if let Some(r) = recovery {
        body["recovery_codes"] = json!(r);
    }
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

async fn login_enroll(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    Body(req): Body<EnrollReq>,
) -> ApiResult<Response> {
    let key = st.keys.clone();
    let d = digest(req.enrollment_token.expose_secret());
    let Some(admin) = st.store.admin_session(&d, "enroll").await? else {
        return Err(ApiError::Unauthorized(
            "invalid or expired enrollment token",
        ));
    };
    let owner = postern_store::totp::admin_owner(admin.id);
    let codes = crate::twofactor::confirm(&st.store, &key, &owner, req.code.expose_secret())
        .await
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    st.store.end_admin_session(&d).await?;
    let actor = Actor {
        door: "api",
        name: admin.name.clone(),
        ip: Some(addr.ip()),
    };
    record(
        &st.store,
        &actor,
        "2fa_enabled",
        &format!("admin:{}", admin.name),
        "",
    )
    .await?;
    audit_login(&st, &admin.name, addr.ip(), true, "totp enrolled").await;
    // Password and a code from the new authenticator: a full login, so the source becomes a
    // known client (a second-factor lock does not shut it out).
    st.auth
        .guard()
        .success(addr.ip(), &format!("admin:{}", admin.name.to_lowercase()));
    session_reply(&st, admin.id, &admin.role, addr.ip(), Some(codes)).await
}

async fn logout(State(st): St, c: Caller) -> ApiResult<StatusCode> {
    if let Some(d) = c.session {
        st.store.end_admin_session(&d).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnPasswordReq {
    old_password: SecretString,
    totp: SecretString,
    new_password: SecretString,
}

/// An administrator changes its own password: the old one and a second-factor code prove it is
/// the owner (both throttled like a login); the new one must pass the password policy. Every
/// session of the administrator ends, this one too: log in again with the new password.
async fn change_own_password(
    State(st): St,
    c: Caller,
    Body(req): Body<OwnPasswordReq>,
) -> ApiResult<StatusCode> {
    if c.session.is_none() {
        return Err(ApiError::Unprocessable(
            "an API key has no password; log in as the administrator".into(),
        ));
    }
    let ip = c.actor.ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let guard = st.auth.guard().clone();
    let login = format!("admin:{}", c.actor.name.to_lowercase());
    match guard.check(ip, &login) {
        Verdict::Banned => return Err(ApiError::TooMany),
        Verdict::Locked => return Err(ApiError::Unauthorized("invalid credentials")),
        Verdict::Allow => {}
    }
    let Some((admin, phc)) = st.store.admin_login(&c.actor.name).await? else {
        return Err(ApiError::Unauthorized("invalid credentials"));
    };
    let matched = st
        .auth
        .pool()
        .verify(&req.old_password, phc)
        .await
        .map_err(|_| ApiError::Unavailable("busy; try again"))?;
    if !matched {
        audit_login(
            &st,
            &admin.name,
            ip,
            false,
            "bad_password (password change)",
        )
        .await;
        let e = guard.failure(ip, &login, &req.old_password).await;
        tokio::time::sleep(Duration::from_millis(e.delay_ms)).await;
        return Err(if e.banned.is_some() {
            ApiError::TooMany
        } else {
            ApiError::Unauthorized("invalid credentials")
        });
    }
    // The new password is checked before the code, so that a refused choice does not use up
    // the code the administrator typed.
    if req.new_password.expose_secret() == req.old_password.expose_secret() {
        return Err(ApiError::Unprocessable(
            "the new password must differ from the old one".into(),
        ));
    }
    let hash = crate::password::check_and_hash(&st.cfg, &req.new_password, &admin.name)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    if guard.check_code(ip, &login) != Verdict::Allow {
        return Err(ApiError::Unauthorized("invalid credentials"));
    }
    let owner = postern_store::totp::admin_owner(admin.id);
    let proof = crate::twofactor::verify(&st.store, &st.keys, &owner, req.totp.expose_secret())
        .await
        .map_err(|_| ApiError::Internal)?;
    if proof.is_none() {
        audit_login(&st, &admin.name, ip, false, "bad_totp (password change)").await;
        let e = guard.code_failure(ip, &login).await;
        if e.locked {
            second_factor_locked(&st, &admin.name, ip).await;
        }
        tokio::time::sleep(Duration::from_millis(e.delay_ms)).await;
        return Err(if e.banned.is_some() {
            ApiError::TooMany
        } else {
            ApiError::Unauthorized("invalid credentials")
        });
    }
    st.store.set_admin_password(&admin.name, &hash).await?;
    record(
        &st.store,
        &c.actor,
        "admin_password_changed",
        &format!("admin:{}", admin.name),
        "by the administrator; every session ended",
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(c: Caller) -> axum::Json<Value> {
    axum::Json(json!({
        "name": c.actor.name,
        "via": c.actor.door,
        "role": c.role.as_str(),
        "domains": c.domains,
    }))
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI.to_owned(),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Domains and users

fn parse_domain(s: &str) -> ApiResult<Domain> {
    Domain::parse(s).map_err(|_| ApiError::Unprocessable(format!("invalid domain {s:?}")))
}

fn parse_address(s: &str) -> ApiResult<EmailAddress> {
    EmailAddress::parse(s).map_err(|_| ApiError::Unprocessable(format!("invalid address {s:?}")))
}

async fn list_domains(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadDirectory)?;
    let list: Vec<Value> = st
        .store
        .list_domains()
        .await?
        .into_iter()
        .filter(|d| c.in_scope(&d.name))
        .map(|d| json!({"name": d.name, "accounts": d.accounts}))
        .collect();
    Ok(axum::Json(Value::Array(list)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainReq {
    name: String,
}

async fn add_domain(
    State(st): St,
    c: Caller,
    Body(req): Body<DomainReq>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    c.may(Perm::ManageDomains)?;
    let d = parse_domain(&req.name)?;
    if st.store.is_local_domain(d.as_str()).await? {
        return Err(ApiError::Conflict(format!("domain {d} already exists")));
    }
    crate::ops::domains::add(&st.store, &c.actor, &d).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"name": d.as_str(), "accounts": 0})),
    ))
}

async fn remove_domain(State(st): St, c: Caller, Seg(name): Seg) -> ApiResult<StatusCode> {
    c.may(Perm::ManageDomains)?;
    let d = parse_domain(&name)?;
    crate::ops::domains::remove(&st.store, &c.actor, &d).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn user_json(st: &ApiState, a: &postern_store::AccountInfo) -> ApiResult<Value> {
    let two_factor = st
        .store
        .second_factor_confirmed(&postern_store::totp::account_owner(a.id))
        .await?;
    Ok(json!({
        "address": a.address,
        "disabled": a.disabled,
        "created_at": a.created_at,
        "password_changed_at": a.password_changed_at,
        "two_factor": two_factor,
        "locked": st.auth.guard().is_locked(&a.address),
    }))
}

async fn list_users(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadDirectory)?;
    let mut out = Vec::new();
    for a in st.store.list_accounts().await? {
        let domain = a.address.rsplit_once('@').map_or("", |(_, d)| d);
        if c.in_scope(domain) {
            out.push(user_json(&st, &a).await?);
        }
    }
    Ok(axum::Json(Value::Array(out)))
}

/// The account at `address`, if the caller may see it (out of scope looks like not found).
async fn scoped_account(
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

async fn get_user(State(st): St, c: Caller, Seg(address): Seg) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadDirectory)?;
    let (_, info) = scoped_account(&st, &c, &address).await?;
    Ok(axum::Json(user_json(&st, &info).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUserReq {
    address: String,
    #[serde(default)]
    password: Option<SecretString>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordReq {
    #[serde(default)]
    password: Option<SecretString>,
}

async fn add_user(
    State(st): St,
    c: Caller,
    Body(req): Body<NewUserReq>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    c.may(Perm::ManageUsers)?;
    let a = parse_address(&req.address)?;
    c.scope(a.domain())?;
    let generated = req.password.is_none();
    let pw = req.password.unwrap_or_else(crate::password::generate);
    crate::ops::accounts::create(&st.cfg, &st.store, &c.actor, &a, &pw).await?;
    let mut body = user_json(&st, &st.store.account(&a).await?).await?;
    if generated {
        body["password"] = json!(pw.expose_secret());
    }
    Ok((StatusCode::CREATED, axum::Json(body)))
}

async fn remove_user(State(st): St, c: Caller, Seg(address): Seg) -> ApiResult<StatusCode> {
    c.may(Perm::ManageUsers)?;
    let (a, _) = scoped_account(&st, &c, &address).await?;
    crate::ops::accounts::remove(&st.store, &c.actor, &a).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_password(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
    Body(req): Body<PasswordReq>,
) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ResetCredentials)?;
    let (a, _) = scoped_account(&st, &c, &address).await?;
    let generated = req.password.is_none();
    let pw = req.password.unwrap_or_else(crate::password::generate);
    crate::ops::accounts::set_password(&st.cfg, &st.store, &c.actor, &a, &pw).await?;
    Ok(axum::Json(if generated {
        json!({"address": a.as_str(), "password": pw.expose_secret()})
    } else {
        json!({"address": a.as_str()})
    }))
}

async fn set_disabled(st: &ApiState, c: &Caller, address: &str, on: bool) -> ApiResult<StatusCode> {
    c.may(Perm::ManageUsers)?;
    let (a, _) = scoped_account(st, c, address).await?;
    crate::ops::accounts::set_disabled(&st.store, &c.actor, &a, on).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn disable_user(State(st): St, c: Caller, Seg(address): Seg) -> ApiResult<StatusCode> {
    set_disabled(&st, &c, &address, true).await
}

async fn enable_user(State(st): St, c: Caller, Seg(address): Seg) -> ApiResult<StatusCode> {
    set_disabled(&st, &c, &address, false).await
}

async fn unlock_user(State(st): St, c: Caller, Seg(address): Seg) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ResetCredentials)?;
    let (a, _) = scoped_account(&st, &c, &address).await?;
    let was = crate::ops::accounts::unlock(&st.store, st.auth.guard(), &c.actor, &a).await?;
    Ok(axum::Json(
        json!({"address": a.as_str(), "was_locked": was}),
    ))
}

async fn reset_2fa(State(st): St, c: Caller, Seg(address): Seg) -> ApiResult<StatusCode> {
    c.may(Perm::ResetCredentials)?;
    let (a, _) = scoped_account(&st, &c, &address).await?;
    if !crate::ops::accounts::reset_2fa(&st.store, &c.actor, &a, "reset through the admin API")
        .await?
    {
        return Err(ApiError::NotFound(format!(
            "two-factor authentication of {a} not found"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// App passwords and applications

async fn list_app_passwords(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadCredentials)?;
    let (_, info) = scoped_account(&st, &c, &address).await?;
    let list: Vec<Value> = st
        .store
        .list_app_passwords(info.id)
        .await?
        .into_iter()
        .map(|p| {
            json!({
                "name": p.name, "protocols": p.protocols, "networks": p.networks,
                "expires_at": p.expires_at, "created_at": p.created_at,
                "last_used_at": p.last_used_at, "last_used_ip": p.last_used_ip,
            })
        })
        .collect();
    Ok(axum::Json(Value::Array(list)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppPasswordReq {
    name: String,
    #[serde(default = "all_protocols")]
    protocols: Vec<String>,
    #[serde(default)]
    networks: Vec<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

fn all_protocols() -> Vec<String> {
    vec!["smtp".into(), "imap".into(), "pop3".into()]
}

async fn create_app_password(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
    Body(req): Body<AppPasswordReq>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    c.may(Perm::IssueSecrets)?;
    let (a, _) = scoped_account(&st, &c, &address).await?;
    let (protocols, networks, expires_at, secret) = crate::admin::create_app_password(
        &st.store,
        &c.actor,
        &a,
        &req.name,
        &req.protocols,
        req.expires_in,
        &req.networks,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "address": a.as_str(), "name": req.name, "protocols": protocols,
            "networks": networks, "expires_at": expires_at, "secret": secret.expose_secret(),
        })),
    ))
}

async fn revoke_app_password(
    State(st): St,
    c: Caller,
    Seg2(address, name): Seg2,
) -> ApiResult<StatusCode> {
    c.may(Perm::RevokeAppPasswords)?;
    let (a, info) = scoped_account(&st, &c, &address).await?;
    st.store.revoke_app_password(info.id, &name).await?;
    record(
        &st.store,
        &c.actor,
        "app_password_revoked",
        a.as_str(),
        &format!("name={name}"),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn app_in_scope(c: &Caller, app: &postern_store::apps::ApplicationInfo) -> bool {
    app.allow_from.iter().all(|e| {
        let d = e.rsplit_once('@').map_or(e.as_str(), |(_, d)| d);
        c.in_scope(d)
    })
}

async fn list_applications(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadCredentials)?;
    let list: Vec<_> = st
        .store
        .list_applications()
        .await?
        .into_iter()
        .filter(|a| app_in_scope(&c, a))
        .collect();
    Ok(axum::Json(json!(list)))
}

async fn scoped_app(
    st: &ApiState,
    c: &Caller,
    name: &str,
) -> ApiResult<postern_store::apps::ApplicationInfo> {
    let app = st.store.application(name).await?;
    if !app_in_scope(c, &app) {
        return Err(ApiError::Forbidden);
    }
    Ok(app)
}

async fn get_application(State(st): St, c: Caller, Seg(name): Seg) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadCredentials)?;
    Ok(axum::Json(json!(scoped_app(&st, &c, &name).await?)))
}

fn with_secret(info: &postern_store::apps::ApplicationInfo, secret: &SecretString) -> Value {
    let mut v = json!(info);
    v["secret"] = json!(secret.expose_secret());
    v
}

async fn create_application(
    State(st): St,
    c: Caller,
    Body(req): Body<crate::apps::CreateRequest>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    c.may(Perm::IssueSecrets)?;
    for e in &req.allow_from {
        let d = e.rsplit_once('@').map_or(e.as_str(), |(_, d)| d);
        c.scope(d)?;
    }
    let (info, secret) = crate::apps::create(&st.store, &c.actor, &req).await?;
    Ok((StatusCode::CREATED, axum::Json(with_secret(&info, &secret))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateReq {
    #[serde(default = "d_grace")]
    grace_secs: u64,
}

fn d_grace() -> u64 {
    86400
}

async fn rotate_application(
    State(st): St,
    c: Caller,
    Seg(name): Seg,
    Body(req): Body<RotateReq>,
) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::IssueSecrets)?;
    scoped_app(&st, &c, &name).await?;
    let (info, secret) = crate::apps::rotate(&st.store, &c.actor, &name, req.grace_secs).await?;
    Ok(axum::Json(with_secret(&info, &secret)))
}

async fn remove_application(State(st): St, c: Caller, Seg(name): Seg) -> ApiResult<StatusCode> {
    c.may(Perm::IssueSecrets)?;
    scoped_app(&st, &c, &name).await?;
    crate::apps::remove(&st.store, &c.actor, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Bans and the audit log

fn ban_json(b: &Ban) -> Value {
    json!({"target": b.target.to_string(), "until": b.until, "reason": b.reason, "offences": b.offences})
}

async fn list_bans(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadBans)?;
    let list: Vec<Value> = st.store.list_bans().await?.iter().map(ban_json).collect();
    Ok(axum::Json(Value::Array(list)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanReq {
    target: String,
    #[serde(default = "d_ban")]
    duration_secs: u64,
    #[serde(default)]
    reason: Option<String>,
    /// Needed (with the superadmin role) for a network wider than /16 or /48.
    #[serde(default)]
    force: bool,
}

fn d_ban() -> u64 {
    3600
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiftReq {
    target: String,
}

fn cidr(s: &str) -> ApiResult<Cidr> {
    Cidr::parse(s).map_err(ApiError::Unprocessable)
}

async fn add_ban(
    State(st): St,
    c: Caller,
    Body(req): Body<BanReq>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    c.may(Perm::ManageBans)?;
    let t = cidr(&req.target)?;
    let reason = req
        .reason
        .unwrap_or_else(|| format!("banned by {}", c.actor.label()));
    let ban = crate::ops::bans::add(
        &st.cfg,
        &st.store,
        Some(st.auth.guard()),
        &c.actor,
        crate::banpolicy::Asker::Api(c.role),
        t,
        req.duration_secs,
        &reason,
        req.force,
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(ban_json(&ban))))
}

async fn lift_ban(State(st): St, c: Caller, Body(req): Body<LiftReq>) -> ApiResult<StatusCode> {
    c.may(Perm::ManageBans)?;
    let t = cidr(&req.target)?;
    if !crate::ops::bans::remove(&st.store, Some(st.auth.guard()), &c.actor, &t).await? {
        return Err(ApiError::NotFound(format!("ban on {t} not found")));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    #[serde(default)]
    account: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    since: Option<i64>,
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

async fn audit_log(
    State(st): St,
    c: Caller,
    Params(p): Params<AuditParams>,
) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadAudit)?;
    let (failed_only, success_only) = match p.result.as_deref() {
        None => (false, false),
        Some("failed") => (true, false),
        Some("ok") => (false, true),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "result must be ok or failed, not {other:?}"
            )))
        }
    };
    let rows = st
        .store
        .query_audit(&AuditQuery {
            account: p.account,
            ip: p.ip,
            since: p.since,
            failed_only,
            success_only,
            limit: p.limit.unwrap_or(100).clamp(1, 1000),
        })
        .await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id, "ts": r.ts, "event": r.event, "protocol": r.protocol, "ip": r.ip,
                "username": r.username, "mechanism": r.mechanism, "tls": r.tls, "actor": r.actor,
                "result": r.result, "reason": r.reason,
            })
        })
        .collect();
    Ok(axum::Json(Value::Array(list)))
}

// ---------------------------------------------------------------------------------------------
// Administrators and API keys

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminReq {
    name: String,
    role: Role,
    #[serde(default)]
    domains: Vec<String>,
}

/// Checks a role's domain list: a domain-admin needs at least one local domain; other roles none.
pub async fn check_role_domains(
    store: &Store,
    role: Role,
    domains: &[String],
) -> anyhow::Result<Vec<String>> {
    if role != Role::DomainAdmin {
        if !domains.is_empty() {
            anyhow::bail!("only a domain-admin has domains");
        }
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for d in domains {
        let d = Domain::parse(d).map_err(|_| anyhow::anyhow!("invalid domain {d:?}"))?;
        if !store.is_local_domain(d.as_str()).await? {
            anyhow::bail!("{d} is not a local domain");
        }
        out.push(d.as_str().to_owned());
    }
    if out.is_empty() {
        anyhow::bail!("a domain-admin needs at least one domain");
    }
    Ok(out)
}

pub fn valid_admin_name(n: &str) -> bool {
    crate::apps::valid_name(n)
}

async fn list_admins(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ManageAdmins)?;
    Ok(axum::Json(json!(st.store.list_admins().await?)))
}

async fn add_admin(
    State(st): St,
    c: Caller,
    Body(req): Body<AdminReq>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    c.may(Perm::ManageAdmins)?;
    if !valid_admin_name(&req.name) {
        return Err(ApiError::Unprocessable(format!(
            "invalid administrator name {:?}",
            req.name
        )));
    }
    let domains = check_role_domains(&st.store, req.role, &req.domains).await?;
    let pw = crate::password::generate();
    let cfg = st.cfg.clone();
    let pw2 = pw.clone();
    let hash = tokio::task::spawn_blocking(move || crate::password::hash(&cfg, &pw2))
        .await
        .map_err(|_| ApiError::Internal)??;
    st.store
        .create_admin(
            &req.name,
            &hash,
            req.role.as_str(),
            &domains,
            &c.actor.label(),
        )
        .await?;
    record(
        &st.store,
        &c.actor,
        "admin_created",
        &format!("admin:{}", req.name),
        &format!("role={} domains={}", req.role.as_str(), domains.join(",")),
    )
    .await?;
    let mut v = json!(st.store.admin(&req.name).await?);
    v["password"] = json!(pw.expose_secret());
    Ok((StatusCode::CREATED, axum::Json(v)))
}

async fn remove_admin(State(st): St, c: Caller, Seg(name): Seg) -> ApiResult<StatusCode> {
    c.may(Perm::ManageAdmins)?;
    if c.actor.door == "api" && c.actor.name == name {
        return Err(ApiError::Conflict(
            "an administrator cannot remove itself".into(),
        ));
    }
    let a = st.store.admin(&name).await?;
    st.store.remove_admin(&name).await?;
    st.store
        .remove_second_factor(&postern_store::totp::admin_owner(a.id))
        .await?;
    record(
        &st.store,
        &c.actor,
        "admin_removed",
        &format!("admin:{name}"),
        "",
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyReq {
    name: String,
    role: Role,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default = "d_key_life")]
    expires_in: u64,
}

fn d_key_life() -> u64 {
    90 * 86400
}

async fn list_api_keys(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ManageAdmins)?;
    Ok(axum::Json(json!(st.store.list_api_keys().await?)))
}

async fn add_api_key(
    State(st): St,
    c: Caller,
    Body(req): Body<ApiKeyReq>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    c.may(Perm::ManageAdmins)?;
    if !valid_admin_name(&req.name) {
        return Err(ApiError::Unprocessable(format!(
            "invalid API key name {:?}",
            req.name
        )));
    }
    if req.expires_in == 0 || req.expires_in > 2 * 365 * 86400 {
        return Err(ApiError::Unprocessable(
            "expires_in must be between 1 and 63072000 seconds (API keys always expire)".into(),
        ));
    }
    let domains = check_role_domains(&st.store, req.role, &req.domains).await?;
    let key = new_token("pak_");
    let expires_at = postern_store::now() + req.expires_in as i64;
    st.store
        .create_api_key(
            &req.name,
            &digest(key.expose_secret()),
            req.role.as_str(),
            &domains,
            Some(expires_at),
            &c.actor.label(),
        )
        .await?;
    record(
        &st.store,
        &c.actor,
        "api_key_created",
        &format!("apikey:{}", req.name),
        &format!("role={} expires_at={expires_at}", req.role.as_str()),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "name": req.name, "role": req.role.as_str(), "domains": domains,
            "expires_at": expires_at, "key": key.expose_secret(),
        })),
    ))
}

async fn revoke_api_key(State(st): St, c: Caller, Seg(name): Seg) -> ApiResult<StatusCode> {
    c.may(Perm::ManageAdmins)?;
    st.store.revoke_api_key(&name).await?;
    record(
        &st.store,
        &c.actor,
        "api_key_revoked",
        &format!("apikey:{name}"),
        "",
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

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
