//! Mail accounts: listing, creation, passwords, status, unlock, second-factor reset.

use super::common::*;

pub(super) async fn user_json(st: &ApiState, a: &postern_store::AccountInfo) -> ApiResult<Value> {
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
        "locked": st.auth.guard().is_locked(&a.address).await,
    }))
}

pub(super) async fn list_users(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
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

pub(super) async fn get_user(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
) -> ApiResult<axum::Json<Value>> {
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

pub(super) async fn add_user(
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

pub(super) async fn remove_user(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
) -> ApiResult<StatusCode> {
    c.may(Perm::ManageUsers)?;
    let (a, _) = scoped_account(&st, &c, &address).await?;
    crate::ops::accounts::remove(&st.store, &c.actor, &a).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn set_password(
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

pub(super) async fn set_disabled(
    st: &ApiState,
    c: &Caller,
    address: &str,
    on: bool,
) -> ApiResult<StatusCode> {
    c.may(Perm::ManageUsers)?;
    let (a, _) = scoped_account(st, c, address).await?;
    crate::ops::accounts::set_disabled(&st.store, &c.actor, &a, on).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn disable_user(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
) -> ApiResult<StatusCode> {
    set_disabled(&st, &c, &address, true).await
}

pub(super) async fn enable_user(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
) -> ApiResult<StatusCode> {
    set_disabled(&st, &c, &address, false).await
}

pub(super) async fn unlock_user(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ResetCredentials)?;
    let (a, _) = scoped_account(&st, &c, &address).await?;
    let was = crate::ops::accounts::unlock(&st.store, st.auth.guard(), &c.actor, &a).await?;
    Ok(axum::Json(
        json!({"address": a.as_str(), "was_locked": was}),
    ))
}

pub(super) async fn reset_2fa(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
) -> ApiResult<StatusCode> {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentLockReq {
    #[serde(default)]
    reason: String,
}

/// Incident response: lock a compromised account at once (helpdesk may).
pub(super) async fn incident_lock(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
    Body(req): Body<IncidentLockReq>,
) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::LockAccounts)?;
    let (a, _) = scoped_account(&st, &c, &address).await?;
    let reason: String = req
        .reason
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let e = crate::ops::incident::lock(&st.store, &c.actor, &a, &reason).await?;
    Ok(axum::Json(json!({
        "address": a.as_str(),
        "app_passwords_revoked": e.app_passwords_revoked,
        "client_certs_removed": e.client_certs_removed,
        "second_factor_removed": e.second_factor_removed,
        "queued_messages_held": e.queued_messages_held,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentUnlockReq {
    password: SecretString,
}

/// Lifts an incident lock with a new password (domain-admin in scope, superadmin).
pub(super) async fn incident_unlock(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
    Body(req): Body<IncidentUnlockReq>,
) -> ApiResult<StatusCode> {
    c.may(Perm::UnlockAccounts)?;
    let (a, _) = scoped_account(&st, &c, &address).await?;
    crate::ops::incident::unlock(&st.cfg, &st.store, &c.actor, &a, &req.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineParams {
    /// Seconds back from now.
    #[serde(default)]
    since_secs: Option<i64>,
}

/// The account's audit events, oldest first.
pub(super) async fn timeline(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
    Params(p): Params<TimelineParams>,
) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadCredentials)?;
    let (a, _) = scoped_account(&st, &c, &address).await?;
    let since = p.since_secs.map(|s| postern_store::now() - s.max(0));
    let rows = crate::ops::incident::timeline(&st.store, &a, since).await?;
    Ok(axum::Json(Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "ts": r.ts, "event": r.event, "protocol": r.protocol, "ip": r.ip,
                    "mechanism": r.mechanism, "tls": r.tls, "result": r.result,
                    "reason": r.reason, "actor": r.actor,
                })
            })
            .collect(),
    )))
}
