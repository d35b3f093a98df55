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
        "locked": st.auth.guard().is_locked(&a.address),
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
