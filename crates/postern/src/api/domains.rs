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

/// The DNS records to publish for a local domain (MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT), and
/// notes on what is still missing; the same list as `postern dns DOMAIN`.
pub(super) async fn dns_records(
    State(st): St,
    c: Caller,
    Seg(name): Seg,
) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadDirectory)?;
    let d = parse_domain(&name)?;
    c.scope(d.as_str())?;
    if !st.store.is_local_domain(d.as_str()).await? {
        return Err(ApiError::NotFound(format!("domain {d} not found")));
    }
    let (records, notes) = crate::dkim::records(&st.store, &st.cfg, d.as_str()).await?;
    let records: Vec<Value> = records
        .into_iter()
        .map(|(name, kind, value)| json!({"name": name, "type": kind, "value": value}))
        .collect();
    Ok(axum::Json(json!({"records": records, "notes": notes})))
}
