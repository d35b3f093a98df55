//! Command-line interface: parses the arguments (`args`), then runs the command. Passwords are
//! never accepted as arguments: only on standard input (`--password-stdin`) or at a prompt
//! without echo. One file per group of commands; each change goes through `ops`.

mod admins;
mod apps;
pub mod args;
mod dkim;
mod manage;
mod secret;
mod setup;
mod twofactor;

use anyhow::{Context, Result};
use postern_config::LogFormat;

pub use args::Cli;
use args::{BackupCmd, Command, LogFormatArg};

/// "serve", "user add" …: the subcommand path, for the data directory's lock file.
fn command_name() -> String {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a.starts_with('-') {
            // a global option with a separate value
            if matches!(a.as_str(), "--config" | "--dir" | "--log-format") {
                i += 1;
            }
        } else if let Some(sub) = cmd.find_subcommand(a).cloned() {
            names.push(a.clone());
            cmd = sub;
        } else {
            break;
        }
        i += 1;
    }
    if names.is_empty() {
        "cli".into()
    } else {
        names.join(" ")
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    let _ = crate::datadir::COMMAND.set(command_name());
    let log_format = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    match &cli.command {
        Command::Init {
            dir,
            domain,
            hostname,
            listen_ip,
            port_offset,
            user,
            database,
            database_password,
        } => setup::init_cli(
            dir,
            domain,
            hostname.as_deref(),
            *listen_ip,
            *port_offset,
            user.as_deref(),
            database
                .as_deref()
                .map(|url| (url, database_password.as_deref())),
        )
        .await
        .with_context(|| format!("init of {}", dir.display())),
        Command::Serve => {
            let cfg = cli.load_config()?;
            crate::serve::serve(cfg, log_format, None).await
        }
        Command::Demo => setup::demo(cli.dir.clone(), log_format).await,
        Command::Migrate {
            from,
            to,
            to_password,
        } => setup::migrate(from, to, to_password.as_deref()).await,
        Command::CheckConfig => {
            let cfg = cli.load_config()?;
            setup::check_config(&cfg).await
        }
        Command::Domain(c) => manage::domain(&cli.load_config()?, c).await,
        Command::User(c) => manage::user(&cli.load_config()?, c).await,
        Command::Alias(c) => manage::alias(&cli.load_config()?, c).await,
        Command::Queue(c) => manage::queue(&cli.load_config()?, c).await,
        Command::Ban(c) => manage::ban(&cli.load_config()?, c).await,
        Command::AppPassword(c) => manage::app_password(&cli.load_config()?, c).await,
        Command::App(c) => apps::run(&cli.load_config()?, c).await,
        Command::Admin(c) => admins::run(&cli.load_config()?, c).await,
        Command::Secret(c) => secret::run(&cli.load_config()?, c).await,
        Command::Dkim(c) => dkim::cli(&cli.load_config()?, c).await,
        Command::Dns { domain, json } => dkim::dns_cli(&cli.load_config()?, domain, *json).await,
        Command::AuditLog(c) => manage::audit_log(&cli.load_config()?, c).await,
        Command::Reports(c) => manage::reports(&cli.load_config()?, c).await,
        Command::Incident(c) => manage::incident(&cli.load_config()?, c).await,
        Command::Backup(c) => backup(&cli, c).await,
        Command::Audit {
            json,
            no_connect,
            no_dns,
        } => {
            let cfg = cli.load_config()?;
            let store = crate::datadir::open_store_plain(&cfg).await?;
            let opts = crate::selfaudit::Options {
                no_connect: *no_connect,
                no_dns: *no_dns,
            };
            let report = crate::selfaudit::run(&cfg, &store, &opts).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            if report.worst() == Some(crate::selfaudit::Severity::High) {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn backup(cli: &Cli, cmd: &BackupCmd) -> Result<()> {
    use crate::backup as b;
    match cmd {
        BackupCmd::Create { to, key, json } => {
            let cfg = cli.load_config()?;
            let store = crate::datadir::open_store(&cfg).await?;
            let keys = crate::keys::Keys::load(&cfg, &store).await?;
            let key = b::load_key(Some(&cfg), Some(&keys), key, b::KeyBase::Cwd).await?;
            let s = b::create(&cfg, &store, &keys, &key, to, &crate::actor::Actor::cli()).await?;
            if *json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!(
                    "backup written: {} ({} bytes): {} accounts, {} messages ({} bodies), {} queued",
                    s.path.display(), s.bytes, s.accounts, s.messages, s.blobs, s.queued
                );
                println!(
                    "not in it: the master key (id {}) — keep it separately; restore needs it",
                    s.master_key_id
                );
            }
        }
        BackupCmd::Verify { path, key, json } => {
            let cfg = cli.load_config().ok();
            let key = b::load_key(cfg.as_ref(), None, key, b::KeyBase::Cwd).await?;
            let path = path.clone();
            let m = tokio::task::spawn_blocking(move || b::verify(&path, &key)).await??;
            if *json {
                println!("{}", serde_json::to_string(&m)?);
            } else {
                println!(
                    "backup verified: {} entries match the manifest; made {} by postern {} on {}: {} accounts, {} messages, {} queued",
                    m.entries.len(),
                    chrono::DateTime::from_timestamp(m.created, 0).map(|t| t.to_rfc3339()).unwrap_or_default(),
                    m.postern_version, m.hostname, m.database.accounts, m.database.messages, m.database.queued
                );
                for n in &m.not_included {
                    println!("not in it: {n}");
                }
            }
        }
        BackupCmd::Restore {
            path,
            key,
            master_key,
            json,
        } => {
            let dir = cli
                .dir
                .clone()
                .context("give the new data directory with --dir NEWDIR")?;
            let cfg = cli
                .config
                .as_ref()
                .and_then(|p| postern_config::Config::load(p).ok());
            let key = b::load_key(cfg.as_ref(), None, key, b::KeyBase::Cwd).await?;
            let r = b::restore(path, &key, &dir, master_key.as_deref()).await?;
            if *json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "restored into {}: {} accounts, {} messages, {} queued; audit chain verified ({} rows)",
                    r.dir.display(), r.accounts, r.messages, r.queued, r.audit_rows_verified
                );
                println!("start it with: postern serve --dir {}", r.dir.display());
            }
        }
        BackupCmd::Keygen { out } => {
            let r = b::keygen(out)?;
            println!(
                "identity written to {} (keep it off the server)",
                out.display()
            );
            println!("recipient for [backup] key (through env: or file:): {r}");
        }
        BackupCmd::List { json } => {
            let cfg = cli.load_config()?;
            let dir = cfg
                .backup
                .dir
                .as_ref()
                .map(|d| cfg.path(d))
                .context("[backup] dir is not set")?;
            let v: Vec<serde_json::Value> = b::scheduled(&dir)
                .iter()
                .map(|p| {
                    let m = p.metadata().ok();
                    serde_json::json!({
                        "path": p.display().to_string(),
                        "bytes": m.as_ref().map(|m| m.len()),
                        "modified": m.and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                    })
                })
                .collect();
            if *json {
                println!("{}", serde_json::Value::Array(v));
            } else if v.is_empty() {
                println!("no scheduled backup in {}", dir.display());
            } else {
                for e in v {
                    println!("{}  {} bytes", e["path"].as_str().unwrap_or(""), e["bytes"]);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
