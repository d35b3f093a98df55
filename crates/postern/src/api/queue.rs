//! The outbound queue (what `postern queue` does) and the secret store's metadata (names,
//! descriptions, dates and the sealing key's id; never a value).

use super::common::*;

fn entry_json(e: &postern_store::QueueEntry) -> Value {
    json!({
        "id": e.id, "sender": e.sender, "recipients": e.recipients, "size": e.size,
        "created_at": e.created_at, "status": e.status, "attempts": e.attempts,
    })
}

pub(super) async fn list_queue(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadQueue)?;
    let list: Vec<Value> = st
        .store
        .queue_list()
        .await?
        .iter()
        .map(entry_json)
        .collect();
    Ok(axum::Json(Value::Array(list)))
}

fn queue_id(s: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::NotFound("queued message not found".into()))
}

/// One action on a queued message, through the same operation as the CLI.
pub(super) async fn queue_action(
    st: &ApiState,
    c: &Caller,
    id: &str,
    action: &str,
) -> ApiResult<()> {
    c.may(Perm::ManageQueue)?;
    let id = queue_id(id)?;
    match action {
        "retry" => crate::ops::queue::retry(&st.store, &c.actor, id).await?,
        "hold" => crate::ops::queue::hold(&st.store, &c.actor, id, true).await?,
        "release" => crate::ops::queue::hold(&st.store, &c.actor, id, false).await?,
        "remove" => crate::ops::queue::remove(&st.store, &c.actor, id).await?,
        _ => return Err(ApiError::BadRequest("unknown queue action".into())),
    }
    Ok(())
}

pub(super) async fn retry_queued(State(st): St, c: Caller, Seg(id): Seg) -> ApiResult<StatusCode> {
    queue_action(&st, &c, &id, "retry").await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn hold_queued(State(st): St, c: Caller, Seg(id): Seg) -> ApiResult<StatusCode> {
    queue_action(&st, &c, &id, "hold").await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn release_queued(
    State(st): St,
    c: Caller,
    Seg(id): Seg,
) -> ApiResult<StatusCode> {
    queue_action(&st, &c, &id, "release").await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn remove_queued(State(st): St, c: Caller, Seg(id): Seg) -> ApiResult<StatusCode> {
    queue_action(&st, &c, &id, "remove").await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_secrets(State(st): St, c: Caller) -> ApiResult<axum::Json<Value>> {
    c.may(Perm::ReadSecrets)?;
    // names with a colon are the server's own (relay passwords, DKIM keys) and are listed with
    // what owns them; their metadata is as safe to show as an operator's own secrets'
    let list: Vec<Value> = st
        .store
        .list_secrets()
        .await?
        .iter()
        .map(|s| {
            json!({
                "name": s.name, "description": s.description, "key_id": s.key_id,
                "created_at": s.created_at, "updated_at": s.updated_at,
            })
        })
        .collect();
    Ok(axum::Json(Value::Array(list)))
}
