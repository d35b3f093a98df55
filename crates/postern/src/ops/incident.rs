//! Incident response for a compromised account, in one operation each:
//! - **lock**: logins off, the password must be replaced, every app password and the second
//!   factor removed (re-enrolment required), queued outbound mail held, and every live SMTP, IMAP
//!   (IDLE included) and POP3 session of the account ended by the running server within a
//!   second;
//! - **timeline**: what the audit log knows about the account, oldest first;
//! - **unlock**: a new password (policy-checked) and logins back on; held mail stays held for an
//!   administrator to review (`postern queue release`).

use anyhow::{bail, Result};
use postern_config::Config;
use postern_store::audit::{AuditQuery, AuditRow};
use postern_store::incident::LockEffect;
use postern_store::Store;
use postern_types::EmailAddress;
use secrecy::SecretString;

use crate::actor::{record, Actor};

pub async fn lock(
    store: &Store,
    actor: &Actor,
    a: &EmailAddress,
    reason: &str,
) -> Result<LockEffect> {
    let account = store.account(a).await?;
    let effect = store
        .incident_lock(account.id, postern_store::now())
        .await?;
    let detail = format!(
        "{}{}app passwords revoked: {}, client certificates removed: {}, second factor removed: {}, queued messages held: {}",
        reason,
        if reason.is_empty() { "" } else { "; " },
        effect.app_passwords_revoked,
        effect.client_certs_removed,
        effect.second_factor_removed,
        effect.queued_messages_held
    );
    record(store, actor, "incident_locked", a.as_str(), &detail).await?;
    tracing::warn!(target: "postern::alert", account = %a, actor = %actor.label(), "account locked for an incident: {detail}");
    Ok(effect)
}

pub async fn unlock(
    cfg: &Config,
    store: &Store,
    actor: &Actor,
    a: &EmailAddress,
    new_password: &SecretString,
) -> Result<()> {
    let account = store.account(a).await?;
    if store.incident_locked_at(account.id).await?.is_none() {
        bail!("{a} is not locked by an incident");
    }
    // the new password first: an unlocked account never has the old one back
    crate::password::change_account_password(cfg, store, a, new_password).await?;
    store.incident_unlock(account.id).await?;
    record(
        store,
        actor,
        "incident_unlocked",
        a.as_str(),
        "new password set",
    )
    .await
}

/// The account's audit events since `since` (Unix time), oldest first.
pub async fn timeline(
    store: &Store,
    a: &EmailAddress,
    since: Option<i64>,
) -> Result<Vec<AuditRow>> {
    Ok(store
        .query_audit(&AuditQuery {
            account: Some(a.as_str().to_owned()),
            ip: None,
            since,
            failed_only: false,
            success_only: false,
            limit: 10_000,
        })
        .await?)
}

/// One line of a timeline, for people.
pub fn describe(r: &AuditRow) -> String {
    let when = chrono::DateTime::from_timestamp(r.ts, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default();
    let mut line = format!("{when}  {:<24}", r.event);
    if let Some(ip) = &r.ip {
        line.push_str(&format!(" from {ip}"));
    }
    match (&r.protocol, &r.mechanism) {
        (Some(p), Some(m)) => line.push_str(&format!(" over {p} ({m})")),
        (Some(p), None) => line.push_str(&format!(" via {p}")),
        _ => {}
    }
    if r.result != "ok" {
        line.push_str(&format!("  FAILED: {}", r.result));
    }
    if let Some(reason) = &r.reason {
        line.push_str(&format!("  {reason}"));
    }
    if let Some(actor) = &r.actor {
        line.push_str(&format!("  [by {actor}]"));
    }
    line
}
