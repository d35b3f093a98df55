//! Opening a data directory: its lock (one server per directory), the store, and the audit
//! chain's key, for CLI commands; `serve` takes the lock exclusively (see `serve.rs`).

use anyhow::{Context, Result};
use postern_config::Config;
use postern_store::Store;

/// What this process is, for the data directory's lock file ("serve", "user add" …); set once
/// by the command line.
pub static COMMAND: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Opens the store for a CLI command. If no server runs on this data directory, the command holds
/// its lock while it runs (and may bring the schema up to date); beside a running server it works
/// through the database as before, but never migrates.
pub async fn open_store(cfg: &Config) -> Result<Store> {
    let store = open_store_plain(cfg)
        .await?
        .with_scram_iterations(cfg.auth.scram_iterations)
        .with_default_quota(cfg.storage.default_quota_mb.saturating_mul(1 << 20));
    // The audit chain's key, so that what this command records is chained like the server's
    // rows. Without the master key, reading still works; recording fails closed.
    let keyed = match crate::keys::Keys::load(cfg, &store).await {
        Ok(k) => {
            // in a cluster, a ban added or lifted here is shared with every node
            if let Err(e) = crate::cluster::attach(cfg, &store, &k).await {
                eprintln!("postern: warning: [cluster] redis: {e:#}");
            }
            k.load_audit_key().await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = keyed {
        eprintln!(
            "postern: warning: the master key could not be opened ({e:#}); nothing can be recorded in the audit log, so changes will fail \
             (a master key that was changed in the configuration must be rotated to: `postern secret rotate-master-key --to REF`)"
        );
    }
    Ok(store)
}

/// [`open_store`] without opening the master key (for `check-config`, which says what it finds
/// instead of creating anything).
pub async fn open_store_plain(cfg: &Config) -> Result<Store> {
    let db = cfg.path(&cfg.storage.database);
    let blobs = cfg.path(&cfg.storage.blobs);
    let what = COMMAND.get().map_or("cli", String::as_str);
    let ctx = || format!("opening the database {}", db.display());
    match postern_store::lock::DataLock::exclusive(&db, what) {
        Ok(lock) => Ok(Store::open(&db, &blobs)
            .await
            .with_context(ctx)?
            .with_lock(lock)),
        Err(postern_store::lock::LockError::Held { .. }) => Store::open_beside_server(&db, &blobs)
            .await
            .with_context(ctx),
        Err(e) => Err(e.into()),
    }
}
