//! App passwords of mail accounts: generated, shown once, scoped; revocation.

use anyhow::{bail, Result};
use postern_types::EmailAddress;
use secrecy::ExposeSecret;

use crate::actor::{record, Actor};

/// Creates an app password (shared by the CLI and the API); returns its normalised scope and
/// the secret, which is shown once. Audited as `app_password_created`.
pub async fn create(
    store: &postern_store::Store,
    actor: &Actor,
    a: &EmailAddress,
    name: &str,
    protocols: &[String],
    expires_in: Option<u64>,
    from: &[String],
) -> Result<(Vec<String>, Vec<String>, Option<i64>, secrecy::SecretString)> {
    let info = store.account(a).await?;
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        bail!("invalid app password name {name:?}");
    }
    let mut protos: Vec<String> = Vec::new();
    for p in protocols.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        if !matches!(p, "smtp" | "imap" | "pop3") {
            bail!("unknown protocol {p:?} (use smtp, imap, pop3)");
        }
        if !protos.iter().any(|x| x == p) {
            protos.push(p.to_owned());
        }
    }
    if protos.is_empty() {
        bail!("no protocol given (use smtp, imap, pop3)");
    }
    let nets = crate::ops::applications::check_networks(from)?;
    let expires_at =
        expires_in.map(|e| postern_store::now().saturating_add(e.min(i64::MAX as u64 / 2) as i64));
    let secret = crate::password::generate();
    let digest = postern_auth::app_password_digest(secret.expose_secret());
    // Its SCRAM verifier now, while the secret is known (it never is again).
    let scram = store.scram_verifier_for(info.id, &secret).await?;
    store
        .add_app_password(
            info.id,
            postern_store::apppw::NewAppPassword {
                name,
                digest: &digest,
                protocols: &protos,
                networks: &nets,
                expires_at,
                scram: scram.as_ref(),
            },
        )
        .await?;
    record(
        store,
        actor,
        "app_password_created",
        a.as_str(),
        &format!("name={name} protocols={}", protos.join(",")),
    )
    .await?;
    Ok((protos, nets, expires_at, secret))
}

/// Revokes an app password by name (immediately: the next login with it fails).
pub async fn revoke(
    store: &postern_store::Store,
    actor: &Actor,
    a: &EmailAddress,
    name: &str,
) -> Result<()> {
    let info = store.account(a).await?;
    store.revoke_app_password(info.id, name).await?;
    record(
        store,
        actor,
        "app_password_revoked",
        a.as_str(),
        &format!("name={name}"),
    )
    .await
}
