//! Mail domains.

use anyhow::Result;
use postern_store::Store;
use postern_types::Domain;

use crate::actor::{record, Actor};

pub async fn add(store: &Store, actor: &Actor, d: &Domain) -> Result<()> {
    store.add_domain(d).await?;
    record(store, actor, "domain_added", d.as_str(), "").await
}

/// Refused while the domain has accounts (mail would be lost silently).
pub async fn remove(store: &Store, actor: &Actor, d: &Domain) -> Result<()> {
    store.remove_domain(d).await?;
    record(store, actor, "domain_removed", d.as_str(), "").await
}
