//! The `postern` binary. Where things live:
//! `cli/` the command line (`args` defines it, one file per group of commands), `api/` the
//! admin HTTP API (one file per resource), `ops/` every administrative operation (validate,
//! change, audit with its actor: the only way CLI and API change state), `serve` the wiring,
//! signals and graceful shutdown, `datadir` opening a data directory (lock, store, audit key),
//! `keys` the master key and sealed secrets, `dkim` key generation and DNS records, `twofactor` TOTP
//! and recovery codes, `roles`/`banpolicy` who may do what, `actor` who did it, `reports` the
//! DMARC and TLS reports to other domains, `sts_host` our MTA-STS policy over HTTPS,
//! `metrics_http` the plain-HTTP metrics listener, `backend` the SMTP server's store adapter,
//! `backup` encrypted backups, `selfaudit` `postern audit`, `alerts` the built-in alerts, `acme`
//! certificates from an ACME CA, `privileges` dropping root at start.
#![forbid(unsafe_code)]

mod acme;
mod actor;
mod alerts;
mod api;
mod backend;
mod backup;
mod banpolicy;
mod cli;
mod cluster;
mod datadir;
mod directory;
mod dkim;
mod keys;
mod metrics_http;
mod notify;
mod oidc;
mod ops;
mod passkeys;
mod password;
mod privileges;
mod reports;
mod roles;
mod selfaudit;
mod serve;
mod sts_host;
mod twofactor;
mod util;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // One TLS crypto provider for the whole process: ring only (aws-lc-rs is kept out of the
    // dependency tree; tests/run.sh and deny.toml check it).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // No core dumps: a dump would hold passwords in flight and opened secrets.
    if let Err(e) = rlimit::setrlimit(rlimit::Resource::CORE, 0, 0) {
        eprintln!("postern: warning: could not disable core dumps: {e}");
    }
    postern_metrics::init(env!("POSTERN_COMMIT"));
    let args = cli::Cli::parse();
    // Started as root: become the service user now, while this is the only thread.
    if let Err(e) = privileges::before_runtime(&args) {
        eprintln!("postern: error: {e:#}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postern: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The runtime's tasks stopped first (a start-up task such as the audit checkpoint
            // could still log), so that this stays the last line.
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            // One clear line: what failed and where (the chain of contexts).
            eprintln!("postern: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
