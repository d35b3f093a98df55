//! Who made an administrative change, and the audit event that records it. The host shell
//! (`cli:USER`) and the admin API (`api:ADMIN` or `apikey:NAME`) both go through [`record`], so
//! every change carries the identity of the one who made it.

use std::net::IpAddr;

use postern_store::audit::NewAudit;
use postern_store::Store;

#[derive(Debug, Clone)]
pub struct Actor {
    /// "cli", "api" or "apikey".
    pub door: &'static str,
    pub name: String,
    pub ip: Option<IpAddr>,
}

impl Actor {
    /// The host shell's user (from $USER or $LOGNAME; "unknown" if neither is set).
    pub fn cli() -> Actor {
        let name = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Actor {
            door: "cli",
            name: postern_auth::loggable_username(&name),
            ip: None,
        }
    }

    /// The server itself (rotation sweeps, configuration look-ups, TOTP checks).
    pub fn system(what: &str) -> Actor {
        Actor {
            door: "server",
            name: what.to_owned(),
            ip: None,
        }
    }

    /// "cli:root", "api:alice", "apikey:deploy".
    pub fn label(&self) -> String {
        format!("{}:{}", self.door, self.name)
    }
}

/// Appends an admin event to the audit log: `event` (e.g. "app_created"), the subject it
/// concerns (an address, an application, an admin) and a detail that never holds a secret.
/// Stored with protocol = the door, mechanism = the actor, result = "ok".
pub async fn record(
    store: &Store,
    actor: &Actor,
    event: &str,
    subject: &str,
    detail: &str,
) -> anyhow::Result<()> {
    store
        .append_audit(&[NewAudit {
            ts: postern_store::now(),
            event: event.to_owned(),
            protocol: Some(actor.door.to_owned()),
            ip: actor.ip.map(|i| i.to_string()),
            username: Some(postern_auth::loggable_username(subject)),
            mechanism: Some(actor.label()),
            result: "ok".into(),
            reason: (!detail.is_empty()).then(|| detail.to_owned()),
            ..Default::default()
        }])
        .await?;
    Ok(())
}
