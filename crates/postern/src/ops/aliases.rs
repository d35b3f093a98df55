//! Aliases: extra addresses of an account (receive and send as).

use anyhow::Result;
use postern_store::Store;
use postern_types::EmailAddress;

use crate::actor::{record, Actor};

pub async fn add(
    store: &Store,
    actor: &Actor,
    alias: &EmailAddress,
    account: &EmailAddress,
) -> Result<()> {
    store.add_alias(alias, account).await?;
    record(
        store,
        actor,
        "alias_added",
        alias.as_str(),
        &format!("account={account}"),
    )
    .await
}

pub async fn remove(store: &Store, actor: &Actor, alias: &EmailAddress) -> Result<()> {
    store.remove_alias(alias).await?;
    record(store, actor, "alias_removed", alias.as_str(), "").await
}
