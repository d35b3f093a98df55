//! The `postern` binary: command line, start-up, wiring, signals and graceful shutdown.
#![forbid(unsafe_code)]

mod actor;
mod api;
mod backend;
mod banpolicy;
mod cli;
mod datadir;
mod dkim;
mod keys;
mod ops;
mod password;
mod roles;
mod serve;
mod twofactor;
mod util;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // One TLS crypto provider for the whole process (see CRATES.md: ring only).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // No core dumps: a dump would hold passwords in flight and opened secrets.
    if let Err(e) = rlimit::setrlimit(rlimit::Resource::CORE, 0, 0) {
        eprintln!("postern: warning: could not disable core dumps: {e}");
    }
    let args = cli::Cli::parse();
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
            // One clear line: what failed and where (the chain of contexts).
            eprintln!("postern: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
