//! Bans: added and lifted by hand (the guard adds its own as attacks happen).

use anyhow::Result;
use postern_auth::guard::{Ban, Cidr, Guard};
use postern_config::Config;
use postern_store::Store;

use crate::actor::{record, Actor};
use crate::banpolicy::{self, Asker};

/// A ban, within what `asker` may ban ([`banpolicy::check`]). With `guard` (the running server's),
/// it applies at once; otherwise the server picks it up from the store within 2 seconds.
#[allow(clippy::too_many_arguments)]
pub async fn add(
    cfg: &Config,
    store: &Store,
    guard: Option<&Guard>,
    actor: &Actor,
    asker: Asker,
    target: Cidr,
    secs: u64,
    reason: &str,
    force: bool,
) -> Result<Ban> {
    banpolicy::check(
        &target,
        secs,
        asker,
        force,
        actor.ip,
        &banpolicy::protected(cfg),
    )
    .map_err(anyhow::Error::msg)?;
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let ban = match guard {
        Some(g) => g.ban(target, secs, &reason),
        None => Ban {
            target,
            until: postern_store::now() as u64 + secs,
            reason: reason.clone(),
            offences: 1,
        },
    };
    store.put_ban(&ban).await?;
    record(
        store,
        actor,
        "ban",
        &target.to_string(),
        &format!("for {secs} s: {reason}"),
    )
    .await?;
    Ok(ban)
}

/// Lifts a ban; false if there was none.
pub async fn remove(
    store: &Store,
    guard: Option<&Guard>,
    actor: &Actor,
    target: &Cidr,
) -> Result<bool> {
    let in_store = store.remove_ban(target).await?;
    let in_memory = guard.is_some_and(|g| g.unban(target));
    if !in_store && !in_memory {
        return Ok(false);
    }
    record(store, actor, "unban", &target.to_string(), "").await?;
    Ok(true)
}

/// Lifts every ban; returns how many.
pub async fn clear(store: &Store, actor: &Actor) -> Result<u64> {
    let n = store.clear_bans().await?;
    record(store, actor, "unban", "*", &format!("{n} ban(s) lifted")).await?;
    Ok(n)
}
