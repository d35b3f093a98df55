//! Application credentials (`postern app ...` and the admin API): programs that may only submit
//! mail, as listed sender addresses or domains, from listed networks, with their own quotas and
//! expiry. The operations here are shared by the CLI and the API; each change is audited.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use postern_store::apps::{ApplicationInfo, NewApplication};
use postern_store::Store;
use postern_types::{Domain, EmailAddress};
use secrecy::{ExposeSecret, SecretString};

use crate::actor::{record, Actor};

/// A new application secret: 256 random bits, base64url, with a recognisable prefix (so secret
/// scanners can find leaked ones).
pub fn generate_secret() -> SecretString {
    let bytes: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(rand::random());
    SecretString::from(format!(
        "pst_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..])
    ))
}

/// Application names: 1 to 64 of a-z 0-9 . _ - , starting with a letter or digit, no '@'
/// (account logins always have one, so the two can never collide).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// What a create request asks for (CLI flags or API body).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: String,
    pub allow_from: Vec<String>,
    #[serde(default)]
    pub networks: Vec<String>,
    /// Seconds from now.
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub messages_per_hour: Option<u32>,
    #[serde(default)]
    pub recipients_per_hour: Option<u32>,
}

/// Normalises the allow-from list: each entry an address or "@domain" of a local domain.
pub async fn check_allow_from(store: &Store, entries: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let (norm, domain) = match e.strip_prefix('@') {
            Some(d) => {
                let d = Domain::parse(d).with_context(|| format!("invalid domain in {e:?}"))?;
                (format!("@{}", d.as_str()), d.as_str().to_owned())
            }
            None => {
                let a = EmailAddress::parse(e)
                    .with_context(|| format!("invalid sender address {e:?}"))?;
                (a.as_str().to_owned(), a.domain().to_owned())
            }
        };
        if !store.is_local_domain(&domain).await? {
            bail!("{domain} is not a local domain: an application may only send as local domains");
        }
        if !out.contains(&norm) {
            out.push(norm);
        }
    }
    if out.is_empty() {
        bail!("at least one allowed sender (--allow-from ADDRESS or @DOMAIN) is required");
    }
    Ok(out)
}

pub fn check_networks(nets: &[String]) -> Result<Vec<String>> {
    nets.iter()
        .map(|n| {
            postern_auth::guard::Cidr::parse(n)
                .map(|c| c.to_string())
                .map_err(anyhow::Error::msg)
        })
        .collect()
}

/// Creates an application; returns it and its secret (shown once).
pub async fn create(
    store: &Store,
    actor: &Actor,
    req: &CreateRequest,
) -> Result<(ApplicationInfo, SecretString)> {
    if !valid_name(&req.name) {
        bail!(
            "invalid application name {:?}: use 1-64 of a-z 0-9 . _ - (no '@')",
            req.name
        );
    }
    let new = NewApplication {
        allow_from: check_allow_from(store, &req.allow_from).await?,
        networks: check_networks(&req.networks)?,
        expires_at: req
            .expires_in
            .map(|s| postern_store::now().saturating_add(s.min(i64::MAX as u64 / 2) as i64)),
        send_messages_per_hour: req.messages_per_hour,
        send_recipients_per_hour: req.recipients_per_hour,
    };
    let secret = generate_secret();
    let digest = postern_auth::app_password_digest(secret.expose_secret());
    store.create_application(&req.name, &digest, &new).await?;
    let info = store.application(&req.name).await?;
    record(
        store,
        actor,
        "app_created",
        &req.name,
        &format!(
            "allow_from={} networks={} expires_at={}",
            info.allow_from.join(","),
            if info.networks.is_empty() {
                "any".into()
            } else {
                info.networks.join(",")
            },
            info.expires_at.map_or("never".into(), |e| e.to_string())
        ),
    )
    .await?;
    Ok((info, secret))
}

/// Issues a new secret; the old one works for `grace_secs` more, then stops (audited then too,
/// as `app_secret_retired`, by the running server).
pub async fn rotate(
    store: &Store,
    actor: &Actor,
    name: &str,
    grace_secs: u64,
) -> Result<(ApplicationInfo, SecretString)> {
    let secret = generate_secret();
    let digest = postern_auth::app_password_digest(secret.expose_secret());
    let until = postern_store::now().saturating_add(grace_secs.min(10 * 365 * 86400) as i64);
    store.rotate_application(name, &digest, until).await?;
    record(
        store,
        actor,
        "app_rotated",
        name,
        &format!("previous secret valid until {until}"),
    )
    .await?;
    Ok((store.application(name).await?, secret))
}

pub async fn set_disabled(store: &Store, actor: &Actor, name: &str, disabled: bool) -> Result<()> {
    store.set_application_disabled(name, disabled).await?;
    let event = if disabled {
        "app_disabled"
    } else {
        "app_enabled"
    };
    record(store, actor, event, name, "").await
}

pub async fn remove(store: &Store, actor: &Actor, name: &str) -> Result<()> {
    store.remove_application(name).await?;
    record(store, actor, "app_removed", name, "").await
}

/// Ends the previous secrets whose grace period is over and audits each; run periodically by
/// the server (and harmless to run from anywhere).
pub async fn retire_previous_secrets(store: &Store) -> Result<()> {
    let system = Actor {
        door: "server",
        name: "rotation".into(),
        ip: None,
    };
    for name in store.retire_previous_secrets(postern_store::now()).await? {
        record(
            store,
            &system,
            "app_secret_retired",
            &name,
            "grace period over: the previous secret no longer works",
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("billing"));
        assert!(valid_name("crm.prod-2"));
        assert!(!valid_name("billing@x.test"));
        assert!(!valid_name("Billing"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(65)));
    }

    #[test]
    fn secrets_are_long_and_distinct() {
        let a = generate_secret();
        let b = generate_secret();
        assert_eq!(a.expose_secret().len(), 4 + 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
