//! App passwords and TLS client certificates of mail accounts.

use super::common::*;

// ---------------------------------------------------------------------------------------------
// App passwords and applications

/// An app password as the API shows it (never its secret).
pub(super) fn app_password_json(p: postern_store::apppw::AppPasswordInfo) -> Value {
    json!({
        "name": p.name, "protocols": p.protocols, "networks": p.networks,
        "expires_at": p.expires_at, "created_at": p.created_at,
        "last_used_at": p.last_used_at, "last_used_ip": p.last_used_ip,
    })
}

pub(super) async fn list_app_passwords(
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
        .map(app_password_json)
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

pub(super) fn all_protocols() -> Vec<String> {
    vec!["smtp".into(), "imap".into(), "pop3".into()]
}

pub(super) async fn create_app_password(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
    Body(req): Body<AppPasswordReq>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    c.may(Perm::IssueSecrets)?;
    let (a, _) = scoped_account(&st, &c, &address).await?;
    create_for(&st, &c.actor, &a, &req).await
}

/// Creates an app password for `a` (the admin API's and the mail user's own call alike): the
/// reply carries the secret, once.
pub(super) async fn create_for(
    st: &ApiState,
    actor: &Actor,
    a: &EmailAddress,
    req: &AppPasswordReq,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let (protocols, networks, expires_at, secret) = crate::ops::app_passwords::create(
        &st.store,
        actor,
        a,
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

pub(super) async fn revoke_app_password(
    State(st): St,
    c: Caller,
    Seg2(address, name): Seg2,
) -> ApiResult<StatusCode> {
    c.may(Perm::RevokeAppPasswords)?;
    let (a, _) = scoped_account(&st, &c, &address).await?;
    crate::ops::app_passwords::revoke(&st.store, &c.actor, &a, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// TLS client certificates (SASL EXTERNAL)

fn cert_json(c: postern_store::certs::ClientCertInfo) -> Value {
    json!({
        "name": c.name, "key_sha256": c.fingerprint, "not_after": c.not_after,
        "created_at": c.created_at, "last_used_at": c.last_used_at, "last_used_ip": c.last_used_ip,
    })
}

pub(super) async fn list_client_certs(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadCredentials)?;
    let (_, info) = scoped_account(&st, &c, &address).await?;
    let list = st.store.list_client_certs(info.id).await?;
    Ok(axum::Json(Value::Array(
        list.into_iter().map(cert_json).collect(),
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertReq {
    name: String,
    pem: String,
}

pub(super) async fn add_client_cert(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
    Body(req): Body<ClientCertReq>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    c.may(Perm::IssueSecrets)?;
    let (a, info) = scoped_account(&st, &c, &address).await?;
    let cert = crate::ops::client_certs::parse_pem(&req.pem)?;
    crate::ops::client_certs::add(&st.store, &c.actor, &a, &req.name, &cert).await?;
    let added = st
        .store
        .list_client_certs(info.id)
        .await?
        .into_iter()
        .find(|x| x.name == req.name)
        .map(cert_json)
        .unwrap_or_default();
    Ok((StatusCode::CREATED, axum::Json(added)))
}

pub(super) async fn remove_client_cert(
    State(st): St,
    c: Caller,
    Seg2(address, name): Seg2,
) -> ApiResult<StatusCode> {
    c.may(Perm::RevokeAppPasswords)?;
    let (a, _) = scoped_account(&st, &c, &address).await?;
    crate::ops::client_certs::remove(&st.store, &c.actor, &a, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Where an account signs in from (new-sign-in notices)

pub(super) async fn list_signins(
    State(st): St,
    c: Caller,
    Seg(address): Seg,
) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadCredentials)?;
    let (_, info) = scoped_account(&st, &c, &address).await?;
    let list = st.store.signin_sources(info.id).await?;
    Ok(axum::Json(Value::Array(
        list.into_iter()
            .map(|(network, client, first, last)| {
                json!({"network": network, "client": client, "first_seen": first, "last_seen": last})
            })
            .collect(),
    )))
}
