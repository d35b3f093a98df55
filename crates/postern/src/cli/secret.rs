//! `postern secret ...`: the internal secret store from the host shell.

use std::io::Read;

use anyhow::{bail, Context, Result};
use postern_config::Config;
use zeroize::Zeroizing;

use super::args::SecretCmd;
use crate::actor::{record, Actor};
use crate::datadir::open_store;
use crate::keys::Keys;

fn date(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// Secret names: like application names, plus ':' is reserved for Postern's own.
fn valid_name(n: &str) -> bool {
    crate::ops::applications::valid_name(n)
}

/// Points `[secrets] master_key` of the config file at `reference`.
fn rewrite_master_key(cfg: &Config, reference: &str) -> Result<()> {
    let file = &cfg.file;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let line = format!("master_key = {}", toml_string(reference));
    let mut done = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            if !done && l.trim_start().starts_with("master_key") {
                done = true;
                line.clone()
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !done {
        out.push(String::new());
        out.push("[secrets]".into());
        out.push(line);
    }
    let tmp = file.with_extension("toml.new");
    std::fs::write(&tmp, out.join("\n") + "\n")?;
    Config::load(&tmp).context("the rewritten configuration does not load")?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub async fn run(cfg: &Config, cmd: &SecretCmd) -> Result<()> {
    let store = open_store(cfg).await?;
    let actor = Actor::cli();
    match cmd {
        SecretCmd::Set {
            name,
            stdin: _,
            description,
        } => {
            if !valid_name(name) {
                bail!("invalid secret name {name:?}: use 1-64 of a-z 0-9 . _ -");
            }
            let mut buf = Zeroizing::new(Vec::new());
            std::io::stdin()
                .take(1 << 20)
                .read_to_end(&mut buf)
                .context("reading the secret from stdin")?;
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            if buf.is_empty() {
                bail!("no secret on standard input");
            }
            let keys = Keys::load(cfg, &store).await?;
            keys.put_secret(name, description, &buf).await?;
            record(&store, &actor, "secret_set", name, description).await?;
            println!(
                "secret {name:?} stored (sealed under {})",
                keys.key_id().await
            );
        }
        SecretCmd::List => {
            let list = store.list_secrets().await?;
            if list.iter().all(|s| s.name.contains(':')) {
                println!("no secrets");
            }
            for s in list.iter().filter(|s| !s.name.contains(':')) {
                println!(
                    "{:<24} updated {}  key {}  {}",
                    s.name,
                    date(s.updated_at),
                    s.key_id,
                    s.description
                );
            }
        }
        SecretCmd::Show { name } => {
            let s = store.secret_info(name).await?;
            println!("secret {}", s.name);
            println!("  description: {}", s.description);
            println!("  sealed under: {}", s.key_id);
            println!(
                "  created: {}  updated: {}",
                date(s.created_at),
                date(s.updated_at)
            );
        }
        SecretCmd::Reveal { name } => {
            let keys = Keys::load(cfg, &store).await?;
            let v = keys
                .secret(name, "revealed on the host shell", &actor)
                .await?;
            use std::io::Write;
            let mut out = std::io::stdout();
            out.write_all(&v)?;
            out.write_all(b"\n")?;
        }
        SecretCmd::Remove { name } => {
            store.remove_secret(name).await?;
            record(&store, &actor, "secret_removed", name, "").await?;
            println!("secret {name:?} removed");
        }
        SecretCmd::RotateMasterKey { to, generate } => {
            let reference = match (to, generate) {
                (Some(r), None) => r.clone(),
                (None, Some(p)) => {
                    let path = cfg.path(p);
                    postern_secrets::MasterKey::generate_file(&path)?;
                    format!("file:{}", p.display())
                }
                _ => bail!("give --to REFERENCE or --generate PATH"),
            };
            let keys = Keys::load(cfg, &store).await?;
            let old = keys.key_id().await;
            let (new, n) = keys.rotate(&reference).await?;
            rewrite_master_key(cfg, &reference)?;
            record(
                &store,
                &actor,
                "master_key_rotated",
                &new,
                &format!("from {old}; {n} sealed value(s) re-wrapped"),
            )
            .await?;
            println!("master key rotated: {n} sealed value(s) re-wrapped from {old} to {new}");
            println!(
                "[secrets] master_key now = {reference}; the running server switches by itself."
            );
            println!("The old key opens nothing any more; destroy it.");
        }
    }
    store.close().await;
    Ok(())
}
