//! The audit log, read-only.

use super::common::*;

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

pub(super) async fn audit_log(
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
