//! `postern dkim ...` and `postern dns DOMAIN`: DKIM keys and the records to publish.

use anyhow::Result;

use crate::actor::{record, Actor};
use crate::dkim::*;
use crate::keys::Keys;

/// `postern dkim ...`
pub async fn cli(cfg: &postern_config::Config, cmd: &super::args::DkimCmd) -> Result<()> {
    use super::args::DkimCmd;
    let store = crate::datadir::open_store(cfg).await?;
    match cmd {
        DkimCmd::Generate {
            domain,
            algorithm,
            selector,
            transit,
        } => {
            let keys = Keys::load(cfg, &store).await?;
            let d = domain.to_ascii_lowercase();
            let k = generate(
                &store,
                &keys,
                &Actor::cli(),
                &d,
                algorithm,
                selector.as_deref(),
                transit.as_deref(),
            )
            .await?;
            let held = match &k.transit_key {
                Some(t) => format!("private key held by the secret manager's Transit key {t}"),
                None => "private key sealed in the secret store".into(),
            };
            println!(
                "DKIM {} key for {d}, selector {} ({held})",
                k.algorithm, k.selector
            );
            println!("publish, then check with `postern dns {d}`:");
            let kt = if k.algorithm == "ed25519" {
                "ed25519"
            } else {
                "rsa"
            };
            println!(
                "{}._domainkey.{d}. TXT {}",
                k.selector,
                txt(&format!("v=DKIM1; k={kt}; p={}", k.public_key))
            );
        }
        DkimCmd::List { domain } => {
            for k in store.dkim_keys(domain.as_deref()).await? {
                println!(
                    "{:<24} {:<20} {:<8} {}",
                    k.domain,
                    k.selector,
                    k.algorithm,
                    if k.active { "signing" } else { "published" }
                );
            }
        }
        DkimCmd::Retire { domain, selector } => {
            store.retire_dkim_key(domain, selector).await?;
            store.remove_secret(&secret_name(domain, selector)).await?;
            record(
                &store,
                &Actor::cli(),
                "dkim_retired",
                domain,
                &format!("selector={selector}"),
            )
            .await?;
            println!("selector {selector} of {domain} retired: remove its TXT record");
        }
    }
    store.close().await;
    Ok(())
}

/// `postern dns DOMAIN`
pub async fn dns_cli(cfg: &postern_config::Config, domain: &str, json: bool) -> Result<()> {
    let store = crate::datadir::open_store(cfg).await?;
    let (recs, notes) = records(&store, cfg, &domain.to_ascii_lowercase()).await?;
    if json {
        let v: Vec<serde_json::Value> = recs
            .iter()
            .map(|(n, t, v)| serde_json::json!({"name": n, "type": t, "value": v}))
            .collect();
        println!("{}", serde_json::to_string(&v)?);
        for n in &notes {
            eprintln!("note: {n}");
        }
    } else {
        println!("; records to publish for {domain} (zone-file syntax)");
        for n in &notes {
            println!("; note: {n}");
        }
        for (n, t, v) in recs {
            println!("{n:<40} 3600 IN {t:<5} {v}");
        }
    }
    store.close().await;
    Ok(())
}
