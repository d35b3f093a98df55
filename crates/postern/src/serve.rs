//! `postern serve`: bind every listener, run until SIGTERM/SIGINT, then drain.
//!
//! Shutdown (mini-redis style): a cancellation token stops the accept loops and tells idle sessions
//! to say 421 and leave; sessions in the middle of a transaction finish it. The process waits for
//! the tracked session tasks up to `server.shutdown_grace_secs`, then exits 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use postern_auth::{Authenticator, HashPool, TracingAudit};
use postern_config::{Config, LogFormat, Protocol};
use postern_net::ConnLimiter;
use postern_smtp::SmtpServer;
use postern_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::StoreBackend;

pub fn init_logging(cfg: &Config, format: Option<LogFormat>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("POSTERN_LOG")
        .or_else(|_| EnvFilter::try_new(&cfg.logging.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let res = match format.unwrap_or(cfg.logging.format) {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    let _ = res;
}

pub async fn open_store(cfg: &Config) -> Result<Store> {
    let db = cfg.path(&cfg.storage.database);
    let blobs = cfg.path(&cfg.storage.blobs);
    Store::open(&db, &blobs)
        .await
        .with_context(|| format!("opening the database {}", db.display()))
}

/// Runs the server. `banner` is printed to stdout once every listener is bound (used by `demo`).
pub async fn serve(cfg: Config, format: Option<LogFormat>, banner: Option<String>) -> Result<()> {
    init_logging(&cfg, format);
    let store = open_store(&cfg).await?;
    let tls = postern_net::tls::load_acceptor(&cfg.path(&cfg.tls.cert), &cfg.path(&cfg.tls.key))?;
    let a = &cfg.auth;
    let hasher = postern_auth::Argon2Hasher::new(
        a.argon2_memory_kib,
        a.argon2_iterations,
        a.argon2_parallelism,
    )
    .context("auth.argon2_* settings")?;
    let pool = HashPool::new(
        Arc::new(hasher),
        a.max_concurrent_verifications,
        Duration::from_millis(a.verification_queue_ms),
    );
    let auth = Arc::new(Authenticator::new(
        Arc::new(store.clone()),
        pool,
        Arc::new(TracingAudit),
    )?);
    let smtp = Arc::new(SmtpServer {
        hostname: cfg.server.hostname.clone(),
        config: cfg.smtp.clone(),
        backend: Arc::new(StoreBackend {
            store: store.clone(),
        }),
        auth: auth.clone(),
        tls: tls.clone(),
    });
    let imap = Arc::new(postern_imap::ImapServer {
        hostname: cfg.server.hostname.clone(),
        config: cfg.imap.clone(),
        store: store.clone(),
        auth: auth.clone(),
        tls: tls.clone(),
        sessions: Default::default(),
    });
    let pop3 = Arc::new(postern_pop3::Pop3Server {
        hostname: cfg.server.hostname.clone(),
        config: cfg.pop3.clone(),
        store: store.clone(),
        auth: auth.clone(),
        tls: tls.clone(),
        locks: Default::default(),
    });
    if cfg.listeners.is_empty() {
        anyhow::bail!("no [[listener]] in the configuration: nothing to serve");
    }
    // Bind everything before serving anything: a taken port is a start-up error, not a half server.
    let mut bound = Vec::new();
    for l in &cfg.listeners {
        if matches!(l.protocol, Protocol::Pop3 | Protocol::Pop3s) && !cfg.pop3.enabled {
            tracing::info!(address = %l.address, "POP3 is switched off ([pop3] enabled = false): not listening");
            continue;
        }
        let listener = TcpListener::bind(l.address).await.with_context(|| {
            format!(
                "cannot listen on {} ({} listener)",
                l.address,
                l.protocol.name()
            )
        })?;
        bound.push((l.protocol, listener));
    }
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let smtp_limiter = ConnLimiter::new(cfg.smtp.max_connections, cfg.smtp.max_connections_per_ip);
    // IMAP and POP3 share one cap: both are mailbox access.
    let mbx_limiter = ConnLimiter::new(cfg.imap.max_connections, cfg.imap.max_connections_per_ip);
    let mut loops = Vec::new();
    for (protocol, listener) in bound {
        let addr = listener.local_addr()?;
        tracing::info!(protocol = protocol.name(), address = %addr, "listening");
        let token = shutdown.clone();
        let task = match protocol {
            Protocol::Smtp | Protocol::Submission | Protocol::Submissions => {
                let smtp = smtp.clone();
                tokio::spawn(postern_net::accept_loop(
                    listener,
                    smtp_limiter.clone(),
                    shutdown.clone(),
                    tracker.clone(),
                    move |tcp, peer, admission| {
                        postern_smtp::handle_connection(
                            smtp.clone(),
                            protocol,
                            tcp,
                            peer,
                            admission,
                            token.clone(),
                        )
                    },
                ))
            }
            Protocol::Imap | Protocol::Imaps => {
                let imap = imap.clone();
                tokio::spawn(postern_net::accept_loop(
                    listener,
                    mbx_limiter.clone(),
                    shutdown.clone(),
                    tracker.clone(),
                    move |tcp, peer, admission| {
                        postern_imap::handle_connection(
                            imap.clone(),
                            protocol,
                            tcp,
                            peer,
                            admission,
                            token.clone(),
                        )
                    },
                ))
            }
            Protocol::Pop3 | Protocol::Pop3s => {
                let pop3 = pop3.clone();
                tokio::spawn(postern_net::accept_loop(
                    listener,
                    mbx_limiter.clone(),
                    shutdown.clone(),
                    tracker.clone(),
                    move |tcp, peer, admission| {
                        postern_pop3::handle_connection(
                            pop3.clone(),
                            protocol,
                            tcp,
                            peer,
                            admission,
                            token.clone(),
                        )
                    },
                ))
            }
        };
        loops.push(task);
    }
    if let Some(b) = banner {
        println!("{b}");
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), hostname = %cfg.server.hostname, "postern started");

    wait_for_signal().await?;
    tracing::info!(
        open_sessions = tracker.len(),
        "shutting down: no new connections; draining sessions"
    );
    shutdown.cancel();
    for l in loops {
        let _ = l.await;
    }
    tracker.close();
    let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            cut = tracker.len(),
            "grace period over: closing the remaining sessions"
        );
    }
    store.close().await;
    tracing::info!("postern stopped");
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
