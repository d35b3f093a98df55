//! `postern app ...`: application credentials from the host shell.

use anyhow::Result;
use postern_config::Config;
use postern_store::apps::ApplicationInfo;
use secrecy::{ExposeSecret, SecretString};

use super::args::AppCmd;
use crate::actor::Actor;
use crate::datadir::open_store;
use crate::ops::applications::*;

fn date(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

fn print_info(a: &ApplicationInfo) {
    let opt = |v: Option<u32>| v.map_or("default".to_owned(), |v| v.to_string());
    println!("application {}", a.name);
    println!("  allow from:  {}", a.allow_from.join(", "));
    println!(
        "  networks:    {}",
        if a.networks.is_empty() {
            "any".to_owned()
        } else {
            a.networks.join(", ")
        }
    );
    println!(
        "  send limits: {} messages/h, {} recipients/h",
        opt(a.send_messages_per_hour),
        opt(a.send_recipients_per_hour)
    );
    println!(
        "  expires:     {}",
        a.expires_at.map_or("never".into(), date)
    );
    println!(
        "  state:       {}",
        if a.disabled { "disabled" } else { "active" }
    );
    if let Some(u) = a.previous_secret_valid_until {
        println!("  rotation:    previous secret works until {}", date(u));
    }
    println!(
        "  last used:   {}",
        match (&a.last_used_at, &a.last_used_ip) {
            (Some(t), Some(ip)) => format!("{} from {ip}", date(*t)),
            _ => "never".into(),
        }
    );
}

fn print_secret(a: &ApplicationInfo, secret: &SecretString, json: bool) {
    if json {
        let mut v = serde_json::to_value(a).unwrap_or_default();
        v["secret"] = serde_json::Value::String(secret.expose_secret().to_owned());
        println!("{v}");
    } else {
        println!(
            "secret for application {:?} (shown once; only a digest is stored):",
            a.name
        );
        println!("  {}", secret.expose_secret());
        println!(
            "log in over SMTP submission with user name {:?} and this secret",
            a.name
        );
    }
}

/// `postern app ...`
pub async fn run(cfg: &Config, cmd: &AppCmd) -> Result<()> {
    let store = open_store(cfg).await?;
    let actor = Actor::cli();
    match cmd {
        AppCmd::Create {
            name,
            allow_from,
            from,
            expires,
            messages_per_hour,
            recipients_per_hour,
            json,
        } => {
            let req = CreateRequest {
                name: name.clone(),
                allow_from: allow_from.clone(),
                networks: from.clone(),
                expires_in: expires
                    .as_deref()
                    .map(crate::util::parse_duration)
                    .transpose()?,
                messages_per_hour: *messages_per_hour,
                recipients_per_hour: *recipients_per_hour,
            };
            let (info, secret) = create(&store, &actor, &req).await?;
            print_secret(&info, &secret, *json);
        }
        AppCmd::Rotate { name, grace, json } => {
            let grace = crate::util::parse_duration(grace)?;
            let (info, secret) = rotate(&store, &actor, name, grace).await?;
            print_secret(&info, &secret, *json);
            if !*json {
                println!(
                    "the previous secret keeps working until {}",
                    info.previous_secret_valid_until.map_or("now".into(), date)
                );
            }
        }
        AppCmd::List { json } => {
            let list = store.list_applications().await?;
            if *json {
                println!("{}", serde_json::to_string(&list)?);
            } else if list.is_empty() {
                println!("no applications");
            } else {
                for a in list {
                    println!(
                        "{:<24} {:<8} allow {:<32} expires {}",
                        a.name,
                        if a.disabled { "disabled" } else { "active" },
                        a.allow_from.join(","),
                        a.expires_at.map_or("never".into(), date)
                    );
                }
            }
        }
        AppCmd::Show { name, json } => {
            let a = store.application(name).await?;
            if *json {
                println!("{}", serde_json::to_string(&a)?);
            } else {
                print_info(&a);
            }
        }
        AppCmd::Disable { name } => {
            set_disabled(&store, &actor, name, true).await?;
            println!("application {name:?} disabled");
        }
        AppCmd::Enable { name } => {
            set_disabled(&store, &actor, name, false).await?;
            println!("application {name:?} enabled");
        }
        AppCmd::Remove { name } => {
            remove(&store, &actor, name).await?;
            println!("application {name:?} removed");
        }
    }
    store.close().await;
    Ok(())
}
