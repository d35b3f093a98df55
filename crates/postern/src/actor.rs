//! Who made an administrative change, and the audit event that records it. The host shell
//! (`cli:USER`), the admin API (`api:ADMIN` or `apikey:NAME`), the console (`console:ADMIN`) and
//! the users' portal (`web:ADDRESS`) all go through [`record`], so every change carries the
//! identity of the one who made it.

use std::net::IpAddr;

use postern_store::audit::NewAudit;
use postern_store::Store;

#[derive(Debug, Clone)]
pub struct Actor {
    /// "cli", "api", "apikey", "console" (the admin web console), "web" (a mail user in the
    /// portal) or "server".
    pub door: &'static str,
    pub name: String,
    pub ip: Option<IpAddr>,
}

impl Actor {
    /// The host shell's user: $USER or $LOGNAME, else the name of the effective user (from
    /// /etc/passwd), else `uid:N`. Never "unknown".
    pub fn cli() -> Actor {
        let name = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(effective_user);
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

/// The name of the user this process runs as. /proc/self belongs to the process's effective uid;
/// its name comes from /etc/passwd (no libc call: the crate forbids unsafe code).
fn effective_user() -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "uid:?".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id = f.nth(1)?.parse::<u32>().ok()?;
                (id == uid).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid:{uid}"))
}

/// Appends an admin event to the audit log: `event` (e.g. "app_created"), the subject it
/// concerns (an address, an application, an admin) and a detail that never holds a secret.
/// Stored with protocol = the door, actor = `door:name`, result = "ok".
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
            actor: Some(actor.label()),
            result: "ok".into(),
            reason: (!detail.is_empty()).then(|| detail.to_owned()),
            ..Default::default()
        }])
        .await?;
    Ok(())
}
