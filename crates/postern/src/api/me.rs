//! The mail users' JSON API (`/api/v1/me/…`): what the self-service portal does, for scripts and
//! apps, through the same operations (every change audited with the user as its actor,
//! `web:ADDRESS`).
//!
//! A user signs in with `POST /api/v1/me/session` (address, password and, with a second factor
//! on, its code: the same sign-in as the portal's, so the same guard, lockout and audit) and gets
//! a session token (`pwa_…`, 30 minutes, stored as its digest) to send as a bearer token. The
//! portal's session cookie works too, but then a change needs the session's CSRF token in the
//! `X-CSRF-Token` header (a bearer token is never sent by a browser on its own, a cookie is).
//! Creating an app password or changing the password asks for the current password again.

use axum::extract::FromRequestParts;
use postern_store::web::WebSession;

use super::common::*;
use super::portal::{self, SignInFailed};

/// The signed-in mail user of a request.
pub struct MailUser {
    s: WebSession,
    /// The token's digest (to end the session).
    digest: [u8; 32],
    ip: IpAddr,
}

impl FromRequestParts<Arc<ApiState>> for MailUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<ApiState>) -> ApiResult<MailUser> {
        const NONE: ApiError = ApiError::Unauthorized("sign in first (POST /api/v1/me/session)");
        let ip = peer(parts);
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let (token, from_cookie) = match bearer {
            Some(t) => (t.to_owned(), false),
            None => (
                super::html::cookie(&parts.headers, portal::COOKIE).ok_or(NONE)?,
                true,
            ),
        };
        if !token.starts_with("pwa_") {
            return Err(NONE);
        }
        let digest = digest(&token);
        let s = st.store.web_session(&digest).await?.ok_or(NONE)?;
        let safe = matches!(
            parts.method,
            axum::http::Method::GET | axum::http::Method::HEAD
        );
        if from_cookie && !safe {
            let given = parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !portal::csrf_ok(&s, given) {
                return Err(ApiError::Forbidden);
            }
        }
        Ok(MailUser { s, digest, ip })
    }
}

impl MailUser {
    fn address(&self) -> ApiResult<EmailAddress> {
        EmailAddress::parse(&self.s.address).map_err(|_| ApiError::Internal)
    }

    fn actor(&self) -> Actor {
        portal::actor(&self.s, self.ip)
    }

    async fn reauthenticate(&self, st: &ApiState, password: &SecretString) -> ApiResult<()> {
        if portal::reauthenticated(st, &self.s, password, self.ip).await {
            Ok(())
        } else {
            Err(ApiError::Unprocessable(
                "the current password is not right".into(),
            ))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionReq {
    address: String,
    password: SecretString,
    #[serde(default)]
    code: Option<SecretString>,
}

pub(super) async fn create_session(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    Body(req): Body<SessionReq>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let ip = addr.ip();
    match portal::sign_in(
        &st,
        ip,
        &req.address,
        &req.password,
        req.code.as_ref(),
        None,
    )
    .await?
    {
        Ok(id) => {
            let (token, csrf) = portal::new_session(&st, id, ip).await?;
            Ok((
                StatusCode::CREATED,
                axum::Json(json!({
                    "token": token.expose_secret(),
                    "csrf": csrf.expose_secret(),
                    "expires_in": portal::SESSION_SECS,
                })),
            ))
        }
        Err(SignInFailed(_, StatusCode::TOO_MANY_REQUESTS)) => Err(ApiError::TooMany),
        Err(SignInFailed(m, StatusCode::SERVICE_UNAVAILABLE)) => Err(ApiError::Unavailable(m)),
        Err(SignInFailed(m, _)) => Err(ApiError::Unauthorized(m)),
    }
}

pub(super) async fn end_session(State(st): St, u: MailUser) -> ApiResult<StatusCode> {
    st.store.end_web_session(&u.digest).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn account(State(st): St, u: MailUser) -> ApiResult<axum::Json<Value>> {
    let owner = postern_store::totp::account_owner(u.s.account_id);
    let two_factor = st.store.second_factor_confirmed(&owner).await?;
    let left = if two_factor {
        st.store.recovery_codes_left(&owner).await?
    } else {
        0
    };
    Ok(axum::Json(json!({
        "address": u.s.address,
        "two_factor": two_factor,
        "recovery_codes_left": left,
        "session_expires_at": u.s.expires_at,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnPasswordReq {
    current: SecretString,
    new: SecretString,
}

pub(super) async fn change_password(
    State(st): St,
    u: MailUser,
    Body(req): Body<OwnPasswordReq>,
) -> ApiResult<StatusCode> {
    u.reauthenticate(&st, &req.current).await?;
    crate::ops::accounts::set_password(&st.cfg, &st.store, &u.actor(), &u.address()?, &req.new)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckReq {
    password: SecretString,
}

/// The server's password policy's verdict on a candidate (nothing stored or logged).
pub(super) async fn check_password(
    State(st): St,
    u: MailUser,
    Body(req): Body<CheckReq>,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(portal::verdict(
        &st,
        &u.s.address,
        &req.password,
    )?))
}

pub(super) async fn list_app_passwords(State(st): St, u: MailUser) -> ApiResult<axum::Json<Value>> {
    let list: Vec<Value> = st
        .store
        .list_app_passwords(u.s.account_id)
        .await?
        .into_iter()
        .map(super::app_passwords::app_password_json)
        .collect();
    Ok(axum::Json(Value::Array(list)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAppPasswordReq {
    #[serde(flatten)]
    app_password: super::app_passwords::AppPasswordReq,
    /// The account password, asked again before a new credential is made.
    password: SecretString,
}

pub(super) async fn create_app_password(
    State(st): St,
    u: MailUser,
    Body(req): Body<NewAppPasswordReq>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    u.reauthenticate(&st, &req.password).await?;
    super::app_passwords::create_for(&st, &u.actor(), &u.address()?, &req.app_password).await
}

pub(super) async fn revoke_app_password(
    State(st): St,
    u: MailUser,
    Seg(name): Seg,
) -> ApiResult<StatusCode> {
    crate::ops::app_passwords::revoke(&st.store, &u.actor(), &u.address()?, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The account's sign-ins of the last 30 days, newest first (failures included).
pub(super) async fn signins(State(st): St, u: MailUser) -> ApiResult<axum::Json<Value>> {
    let since = postern_store::now() - 30 * 86400;
    let rows = crate::ops::incident::timeline(&st.store, &u.address()?, Some(since)).await?;
    Ok(axum::Json(Value::Array(
        rows.iter()
            .rev()
            .filter(|r| r.event == "auth")
            .take(200)
            .map(|r| {
                json!({
                    "ts": r.ts, "protocol": r.protocol, "ip": r.ip, "mechanism": r.mechanism,
                    "result": r.result,
                })
            })
            .collect(),
    )))
}

/// "This wasn't me": the account's own incident lock (this session ends with the others).
pub(super) async fn lock(State(st): St, u: MailUser) -> ApiResult<axum::Json<Value>> {
    let e = crate::ops::incident::lock(
        &st.store,
        &u.actor(),
        &u.address()?,
        "locked by its owner through /api/v1/me (a sign-in was not theirs)",
    )
    .await?;
    Ok(axum::Json(json!({
        "address": u.s.address,
        "app_passwords_revoked": e.app_passwords_revoked,
        "client_certs_removed": e.client_certs_removed,
        "second_factor_removed": e.second_factor_removed,
        "queued_messages_held": e.queued_messages_held,
    })))
}
