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
    let anchor = lock_anchor(cfg);
    let what = COMMAND.get().map_or("cli", String::as_str);
    match postern_store::lock::DataLock::exclusive(&anchor, what) {
        Ok(lock) => Ok(open_database(cfg, true).await?.with_lock(lock)),
        Err(postern_store::lock::LockError::Held { .. }) => open_database(cfg, false).await,
        Err(e) => Err(e.into()),
    }
}

/// The path this node's data directory lock is named after: the SQLite file, or (on
/// PostgreSQL, where the database is shared and only the bodies are this node's) the blob
/// directory.
pub fn lock_anchor(cfg: &Config) -> std::path::PathBuf {
    match cfg.storage.postgres_url() {
        Some(_) => cfg.path(&cfg.storage.blobs),
        None => cfg.path(&cfg.storage.database),
    }
}

/// Opens the configured database, SQLite or PostgreSQL; `may_migrate` when this process holds
/// the data directory's lock.
pub async fn open_database(cfg: &Config, may_migrate: bool) -> Result<Store> {
    let blobs = cfg.path(&cfg.storage.blobs);
    if let Some(url) = cfg.storage.postgres_url() {
        let password = match &cfg.storage.database_password {
            Some(r) => {
                Some(crate::keys::resolve_before_store(cfg, r, "storage.database_password").await?)
            }
            None => None,
        };
        return Store::open_postgres(
            url,
            password.as_deref().map(String::as_str),
            cfg.storage.pool_size,
            &blobs,
            cfg.storage.bodies_in_database(),
            may_migrate,
        )
        .await
        .with_context(|| format!("opening the database {}", redact_url(url)));
    }
    let db = cfg.path(&cfg.storage.database);
    let ctx = || format!("opening the database {}", db.display());
    if may_migrate {
        Store::open(&db, &blobs).await.with_context(ctx)
    } else {
        Store::open_beside_server(&db, &blobs)
            .await
            .with_context(ctx)
    }
}

/// A database URL for messages: the user and host, never a password.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(a database URL that does not parse)".into(),
    }
}
