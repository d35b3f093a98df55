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
use args::{Command, LogFormatArg};

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
        } => setup::init_cli(dir, domain, hostname.as_deref(), *listen_ip, *port_offset)
            .await
            .with_context(|| format!("init of {}", dir.display())),
        Command::Serve => {
            let cfg = cli.load_config()?;
            crate::serve::serve(cfg, log_format, None).await
        }
        Command::Demo => setup::demo(cli.dir.clone(), log_format).await,
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
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
