//! Administrators and API keys.

use super::common::*;

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

pub(super) async fn list_admins(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ManageAdmins)?;
    Ok(axum::Json(json!(st.store.list_admins().await?)))
}

pub(super) async fn add_admin(
    State(st): St,
    c: Caller,
    Body(req): Body<AdminReq>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    c.may(Perm::ManageAdmins)?;
    if !crate::roles::valid_admin_name(&req.name) {
        return Err(ApiError::Unprocessable(format!(
            "invalid administrator name {:?}",
            req.name
        )));
    }
    let domains = crate::roles::check_role_domains(&st.store, req.role, &req.domains).await?;
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

pub(super) async fn remove_admin(
    State(st): St,
    c: Caller,
    Seg(name): Seg,
) -> ApiResult<StatusCode> {
    c.may(Perm::ManageAdmins)?;
    if c.session.is_some() && c.actor.name == name {
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

pub(super) fn d_key_life() -> u64 {
    90 * 86400
}

pub(super) async fn list_api_keys(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ManageAdmins)?;
    Ok(axum::Json(json!(st.store.list_api_keys().await?)))
}

pub(super) async fn add_api_key(
    State(st): St,
    c: Caller,
    Body(req): Body<ApiKeyReq>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    c.may(Perm::ManageAdmins)?;
    if !crate::roles::valid_admin_name(&req.name) {
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
    let domains = crate::roles::check_role_domains(&st.store, req.role, &req.domains).await?;
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

pub(super) async fn revoke_api_key(
    State(st): St,
    c: Caller,
    Seg(name): Seg,
) -> ApiResult<StatusCode> {
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
