//! Mail domains.

use super::common::*;

// ---------------------------------------------------------------------------------------------
// Domains and users

pub(super) async fn list_domains(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
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

pub(super) async fn add_domain(
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

pub(super) async fn remove_domain(
    State(st): St,
    c: Caller,
    Seg(name): Seg,
) -> ApiResult<StatusCode> {
    c.may(Perm::ManageDomains)?;
    let d = parse_domain(&name)?;
    crate::ops::domains::remove(&st.store, &c.actor, &d).await?;
    Ok(StatusCode::NO_CONTENT)
}
