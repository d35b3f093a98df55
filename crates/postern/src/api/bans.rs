//! Bans of source addresses and networks.

use super::common::*;

// ---------------------------------------------------------------------------------------------
// Bans and the audit log

pub(super) fn ban_json(b: &Ban) -> Value {
    json!({"target": b.target.to_string(), "until": b.until, "reason": b.reason, "offences": b.offences})
}

pub(super) async fn list_bans(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
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

pub(super) fn d_ban() -> u64 {
    3600
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiftReq {
    target: String,
}

pub(super) fn cidr(s: &str) -> ApiResult<Cidr> {
    Cidr::parse(s).map_err(ApiError::Unprocessable)
}

pub(super) async fn add_ban(
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

pub(super) async fn lift_ban(
    State(st): St,
    c: Caller,
    Body(req): Body<LiftReq>,
) -> ApiResult<StatusCode> {
    c.may(Perm::ManageBans)?;
    let t = cidr(&req.target)?;
    if !crate::ops::bans::remove(&st.store, Some(st.auth.guard()), &c.actor, &t).await? {
        return Err(ApiError::NotFound(format!("ban on {t} not found")));
    }
    Ok(StatusCode::NO_CONTENT)
}
