//! Application credentials (submission-only programs) and their rotation.

use super::common::*;

pub(super) fn app_in_scope(c: &Caller, app: &postern_store::apps::ApplicationInfo) -> bool {
    app.allow_from.iter().all(|e| {
        let d = e.rsplit_once('@').map_or(e.as_str(), |(_, d)| d);
        c.in_scope(d)
    })
}

pub(super) async fn list_applications(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
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

pub(super) async fn scoped_app(
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

pub(super) async fn get_application(
    State(st): St,
    c: Caller,
    Seg(name): Seg,
) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadCredentials)?;
    Ok(axum::Json(json!(scoped_app(&st, &c, &name).await?)))
}

pub(super) fn with_secret(
    info: &postern_store::apps::ApplicationInfo,
    secret: &SecretString,
) -> Value {
    let mut v = json!(info);
    v["secret"] = json!(secret.expose_secret());
    v
}

pub(super) async fn create_application(
    State(st): St,
    c: Caller,
    Body(req): Body<crate::ops::applications::CreateRequest>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    c.may(Perm::IssueSecrets)?;
    for e in &req.allow_from {
        let d = e.rsplit_once('@').map_or(e.as_str(), |(_, d)| d);
        c.scope(d)?;
    }
    let (info, secret) = crate::ops::applications::create(&st.store, &c.actor, &req).await?;
    Ok((StatusCode::CREATED, axum::Json(with_secret(&info, &secret))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateReq {
    #[serde(default = "d_grace")]
    grace_secs: u64,
}

pub(super) fn d_grace() -> u64 {
    86400
}

pub(super) async fn rotate_application(
    State(st): St,
    c: Caller,
    Seg(name): Seg,
    Body(req): Body<RotateReq>,
) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::IssueSecrets)?;
    scoped_app(&st, &c, &name).await?;
    let (info, secret) =
        crate::ops::applications::rotate(&st.store, &c.actor, &name, req.grace_secs).await?;
    Ok(axum::Json(with_secret(&info, &secret)))
}

pub(super) async fn remove_application(
    State(st): St,
    c: Caller,
    Seg(name): Seg,
) -> ApiResult<StatusCode> {
    c.may(Perm::IssueSecrets)?;
    scoped_app(&st, &c, &name).await?;
    crate::ops::applications::remove(&st.store, &c.actor, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
