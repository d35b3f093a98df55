//! Actions on the outbound queue.

use anyhow::Result;
use postern_store::Store;

use crate::actor::{record, Actor};

/// Attempt delivery now (the running server picks it up within seconds).
pub async fn retry(store: &Store, actor: &Actor, id: i64) -> Result<()> {
    store.retry_now(id).await?;
    record(store, actor, "queue_retry", &id.to_string(), "").await
}

/// Delete a message from the queue without a bounce.
pub async fn remove(store: &Store, actor: &Actor, id: i64) -> Result<()> {
    store.remove_queued(id).await?;
    record(store, actor, "queue_removed", &id.to_string(), "").await
}

/// Stop (or resume) delivery attempts; a release is attempted at once.
pub async fn hold(store: &Store, actor: &Actor, id: i64, held: bool) -> Result<()> {
    store.set_queue_held(id, held).await?;
    if !held {
        store.retry_now(id).await?;
    }
    let event = if held { "queue_held" } else { "queue_released" };
    record(store, actor, event, &id.to_string(), "").await
}
