//! `postern admin ...`: administrators of the admin API, from the host shell. There is no
//! built-in administrator: `bootstrap` creates the first one, with a generated password.

use anyhow::{bail, Result};
use postern_config::Config;
use secrecy::ExposeSecret;

use super::args::AdminCmd;
use crate::actor::{record, Actor};
use crate::datadir::open_store;
use crate::roles::Role;

/// Creates an administrator with a generated password; returns the password (shown once).
async fn create(
    cfg: &Config,
    store: &postern_store::Store,
    actor: &Actor,
    name: &str,
    role: Role,
    domains: &[String],
) -> Result<secrecy::SecretString> {
    if !crate::roles::valid_admin_name(name) {
        bail!("invalid administrator name {name:?}: use 1-64 of a-z 0-9 . _ -");
    }
    let domains = crate::roles::check_role_domains(store, role, domains).await?;
    let pw = crate::password::generate();
    let hash = crate::password::hash(cfg, &pw)?;
    store
        .create_admin(name, &hash, role.as_str(), &domains, &actor.label())
        .await?;
    record(
        store,
        actor,
        "admin_created",
        &format!("admin:{name}"),
        &format!("role={} domains={}", role.as_str(), domains.join(",")),
    )
    .await?;
    Ok(pw)
}

fn print_created(cfg: &Config, name: &str, role: Role, pw: &secrecy::SecretString, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"name": name, "role": role.as_str(), "password": pw.expose_secret()})
        );
        return;
    }
    println!("administrator {name:?} ({}) created", role.as_str());
    println!("password (shown once): {}", pw.expose_secret());
    match cfg.admin.listen {
        Some(a) => println!(
            "log in at https://{a}/api/v1/login; the first login enrols a TOTP authenticator"
        ),
        None => println!("the admin API is off: set [admin] listen in the configuration"),
    }
}

pub async fn run(cfg: &Config, cmd: &AdminCmd) -> Result<()> {
    let store = open_store(cfg).await?;
    let actor = Actor::cli();
    match cmd {
        AdminCmd::Bootstrap { name, json } => {
            if store.count_admins().await? > 0 {
                bail!("an administrator already exists; bootstrap only creates the first one");
            }
            let pw = create(cfg, &store, &actor, name, Role::Superadmin, &[]).await?;
            print_created(cfg, name, Role::Superadmin, &pw, *json);
        }
        AdminCmd::Add {
            name,
            role,
            domains,
            json,
        } => {
            let Some(r) = Role::parse(role) else {
                bail!("unknown role {role:?} (superadmin, domain-admin, helpdesk, auditor)");
            };
            let pw = create(cfg, &store, &actor, name, r, domains).await?;
            print_created(cfg, name, r, &pw, *json);
        }
        AdminCmd::List => {
            for a in store.list_admins().await? {
                let tfa = store
                    .second_factor_confirmed(&postern_store::totp::admin_owner(a.id))
                    .await?;
                println!(
                    "{:<20} {:<13} {:<24} 2fa {}",
                    a.name,
                    a.role,
                    a.domains.join(","),
                    if tfa { "on" } else { "not enrolled" }
                );
            }
        }
        AdminCmd::Remove { name } => {
            let a = store.admin(name).await?;
            store.remove_admin(name).await?;
            store
                .remove_second_factor(&postern_store::totp::admin_owner(a.id))
                .await?;
            record(
                &store,
                &actor,
                "admin_removed",
                &format!("admin:{name}"),
                "",
            )
            .await?;
            println!("administrator {name:?} removed");
        }
        AdminCmd::Passwd { name, json } => {
            store.admin(name).await?;
            let pw = crate::password::generate();
            let hash = crate::password::hash(cfg, &pw)?;
            store.set_admin_password(name, &hash).await?;
            record(
                &store,
                &actor,
                "admin_password_reset",
                &format!("admin:{name}"),
                "new generated password; sessions ended",
            )
            .await?;
            if *json {
                println!(
                    "{}",
                    serde_json::json!({"name": name, "password": pw.expose_secret()})
                );
            } else {
                println!(
                    "new password of {name:?} (shown once): {}",
                    pw.expose_secret()
                );
                println!("its sessions have ended; its TOTP is unchanged");
            }
        }
        AdminCmd::Disable { name } | AdminCmd::Enable { name } => {
            let off = matches!(cmd, AdminCmd::Disable { .. });
            store.set_admin_disabled(name, off).await?;
            record(
                &store,
                &actor,
                if off {
                    "admin_disabled"
                } else {
                    "admin_enabled"
                },
                &format!("admin:{name}"),
                "",
            )
            .await?;
            println!(
                "administrator {name:?} {}",
                if off {
                    "disabled (its sessions have ended)"
                } else {
                    "enabled"
                }
            );
        }
        AdminCmd::Reset2fa { name } => {
            let a = store.admin(name).await?;
            store
                .remove_second_factor(&postern_store::totp::admin_owner(a.id))
                .await?;
            let n = store.end_admin_sessions_of(a.id).await?;
            record(
                &store,
                &actor,
                "2fa_disabled",
                &format!("admin:{name}"),
                "reset from the host shell",
            )
            .await?;
            println!("TOTP of {name:?} reset ({n} session(s) ended); the next login enrols again");
        }
    }
    store.close().await;
    Ok(())
}
