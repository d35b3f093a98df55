//! Mail accounts: creation, password, status, login restrictions, limits, removal.

use anyhow::Result;
use postern_auth::guard::{Cidr, Guard};
use postern_config::Config;
use postern_store::Store;
use postern_types::EmailAddress;
use secrecy::SecretString;

use crate::actor::{record, Actor};

/// A new account; the password must pass the policy.
pub async fn create(
    cfg: &Config,
    store: &Store,
    actor: &Actor,
    a: &EmailAddress,
    pw: &SecretString,
) -> Result<i64> {
    let id = crate::password::create_account(cfg, store, a, pw).await?;
    record(store, actor, "user_created", a.as_str(), "").await?;
    Ok(id)
}

/// A new password (policy, no reuse of the last N); a forced change is over.
pub async fn set_password(
    cfg: &Config,
    store: &Store,
    actor: &Actor,
    a: &EmailAddress,
    pw: &SecretString,
) -> Result<()> {
    use postern_auth::CredentialStore;
    if store
        .credential(a.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .is_some_and(|c| c.directory)
    {
        anyhow::bail!("{a}'s password is the directory's (LDAP); change it there");
    }
    crate::password::change_account_password(cfg, store, a, pw).await?;
    record(store, actor, "password_reset", a.as_str(), "").await
}

/// Stops (or allows again) the account's logins; mail is still delivered.
pub async fn set_disabled(store: &Store, actor: &Actor, a: &EmailAddress, off: bool) -> Result<()> {
    store.set_disabled(a, off).await?;
    let event = if off { "user_disabled" } else { "user_enabled" };
    record(store, actor, event, a.as_str(), "").await
}

/// Deletes the account with its mailboxes and messages.
pub async fn remove(store: &Store, actor: &Actor, a: &EmailAddress) -> Result<()> {
    store.remove_account(a).await?;
    record(store, actor, "user_removed", a.as_str(), "").await
}

pub async fn set_received_details(
    store: &Store,
    actor: &Actor,
    a: &EmailAddress,
    on: bool,
) -> Result<()> {
    store.set_received_details(a, on).await?;
    let detail = if on { "on" } else { "off" };
    record(store, actor, "received_details_set", a.as_str(), detail).await
}

/// Where the account may log in from (none: anywhere). Returns the networks as stored.
pub async fn set_networks(
    store: &Store,
    actor: &Actor,
    a: &EmailAddress,
    networks: &[String],
) -> Result<Vec<String>> {
    let mut nets = Vec::new();
    for n in networks {
        nets.push(Cidr::parse(n).map_err(anyhow::Error::msg)?.to_string());
    }
    store.set_allowed_networks(a, &nets).await?;
    let detail = if nets.is_empty() {
        "anywhere".to_owned()
    } else {
        nets.join(",")
    };
    record(store, actor, "networks_set", a.as_str(), &detail).await?;
    Ok(nets)
}

pub async fn set_send_limits(
    store: &Store,
    actor: &Actor,
    a: &EmailAddress,
    messages: Option<u32>,
    recipients: Option<u32>,
) -> Result<()> {
    store.set_send_limits(a, messages, recipients).await?;
    let show = |v: Option<u32>| v.map_or("default".to_owned(), |n| n.to_string());
    let detail = format!(
        "messages_per_hour={} recipients_per_hour={}",
        show(messages),
        show(recipients)
    );
    record(store, actor, "send_limits_set", a.as_str(), &detail).await
}

/// Forces a password change: the password stops working until a new one is set.
pub async fn expire_password(store: &Store, actor: &Actor, a: &EmailAddress) -> Result<()> {
    store.expire_password(a).await?;
    record(
        store,
        actor,
        "password_expired",
        a.as_str(),
        "forced change",
    )
    .await
}

pub async fn set_pop3(store: &Store, actor: &Actor, a: &EmailAddress, on: bool) -> Result<()> {
    store.set_pop3_enabled(a, on).await?;
    let detail = if on { "on" } else { "off" };
    record(store, actor, "pop3_set", a.as_str(), detail).await
}

/// Sets an account's storage quota: "none", "default" ([storage] default_quota_mb), or a size
/// (`500M`, `2G`, `100K`, bytes). Audited as `quota_set`.
pub async fn set_quota(store: &Store, actor: &Actor, a: &EmailAddress, size: &str) -> Result<()> {
    let bytes = match size.trim().to_ascii_lowercase().as_str() {
        "default" => None,
        "none" | "0" => Some(0),
        s => {
            let (num, mult) = match s.char_indices().last() {
                Some((i, 'k')) => (&s[..i], 1u64 << 10),
                Some((i, 'm')) => (&s[..i], 1 << 20),
                Some((i, 'g')) => (&s[..i], 1 << 30),
                Some((i, 't')) => (&s[..i], 1 << 40),
                _ => (s, 1),
            };
            let n: u64 = num.trim().parse().map_err(|_| {
                anyhow::anyhow!("invalid size {size:?} (use 500M, 2G, none, default)")
            })?;
            Some(n.saturating_mul(mult))
        }
    };
    let info = store.account(a).await?;
    store.set_quota(info.id, bytes).await?;
    let detail = match bytes {
        None => "default".to_owned(),
        Some(0) => "none".to_owned(),
        Some(b) => format!("{b} bytes"),
    };
    record(store, actor, "quota_set", a.as_str(), &detail).await
}

/// Lifts a lockout (and forgets the failure counts) in the running server's guard.
pub async fn unlock(store: &Store, guard: &Guard, actor: &Actor, a: &EmailAddress) -> Result<bool> {
    let was = guard.unlock(a.as_str()).await;
    record(store, actor, "user_unlocked", a.as_str(), "").await?;
    Ok(was)
}

/// Removes the account's second factor (lost device); false if it had none.
pub async fn reset_2fa(
    store: &Store,
    actor: &Actor,
    a: &EmailAddress,
    detail: &str,
) -> Result<bool> {
    let info = store.account(a).await?;
    if !store
        .remove_second_factor(&postern_store::totp::account_owner(info.id))
        .await?
    {
        return Ok(false);
    }
    record(store, actor, "2fa_disabled", a.as_str(), detail).await?;
    Ok(true)
}
