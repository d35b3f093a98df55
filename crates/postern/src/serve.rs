//! `postern serve`: bind every listener, run until SIGTERM/SIGINT, then drain.
//!
//! Shutdown (mini-redis style): a cancellation token stops the accept loops and tells idle sessions
//! to say 421 and leave; sessions in the middle of a transaction finish it. The process waits for
//! the tracked session tasks up to `server.shutdown_grace_secs`, then exits 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use postern_auth::{Authenticator, HashPool};
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

/// Opens the store for `serve`/`demo`: the data directory's lock first (a second server on the
/// same directory stops here, before it touches anything), then migrations.
async fn open_store_exclusive(cfg: &Config, what: &str) -> Result<Store> {
    let anchor = crate::datadir::lock_anchor(cfg);
    // A CLI command may hold the lock for a moment: wait for it, never for another server.
    let lock =
        postern_store::lock::DataLock::exclusive_waiting(&anchor, what, Duration::from_secs(10))?;
    Ok(crate::datadir::open_database(cfg, true)
        .await?
        .with_lock(lock))
}

/// Runs the server. `banner` is printed to stdout once every listener is bound (used by `demo`).
pub async fn serve(cfg: Config, format: Option<LogFormat>, banner: Option<String>) -> Result<()> {
    init_logging(&cfg, format);
    // Installed first: a SIGTERM that arrives while the server is still starting is kept and
    // handled as a graceful stop once it is up, instead of killing the process.
    let signals = Signals::install()?;
    let store = open_store_exclusive(
        &cfg,
        crate::datadir::COMMAND
            .get()
            .map_or("serve", String::as_str),
    )
    .await?
    .with_audit_failure_cap(cfg.defence.audit_max_failures_per_account_day)
    .with_batch_sync(cfg.storage.batch_sync)
    .with_scram_iterations(cfg.auth.scram_iterations)
    .with_default_quota(cfg.storage.default_quota_mb.saturating_mul(1 << 20));
    // One certificate for every listener, replaceable while they run (ACME renewal, SIGHUP).
    let certs =
        postern_net::tls::CertStore::load(&cfg.path(&cfg.tls.cert), &cfg.path(&cfg.tls.key))?;
    // Mail listeners ask for a client certificate (SASL EXTERNAL) unless told not to; the HTTP
    // listeners never do (a browser would pop up a certificate chooser).
    let tls = certs.acceptor_with(cfg.tls.request_client_certificates);
    let http_tls = certs.acceptor();
    // Blob files a crash left without a database row (written, never committed) are removed in
    // the background; files written by this process are never touched.
    {
        let (store, started) = (store.clone(), std::time::SystemTime::now());
        tokio::spawn(async move {
            match store.sweep_orphan_blobs(started).await {
                Ok(n) => tracing::info!(removed = n, "orphan blobs swept"),
                Err(e) => tracing::warn!(error = %e, "sweeping orphan blobs failed"),
            }
        });
    }
    // Fail closed: without its master key (file, env, Vault/OpenBao) the server does not start.
    let keys = crate::keys::Keys::load(&cfg, &store).await?;
    // From here on every audit row is HMAC-chained under a key the master key seals.
    keys.load_audit_key()
        .await
        .context("opening the audit chain's key")?;
    let checkpoints = spawn_checkpoints(&cfg, &store);
    // [cluster]: bans and mailbox changes shared with the other nodes through Redis
    let redis = crate::cluster::attach(&cfg, &store, &keys).await?;
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
    let audit = postern_store::audit::AuditWriter::start(store.clone());
    let guard = Arc::new(postern_auth::guard::Guard::new(
        guard_config(&cfg)?,
        Arc::new(postern_auth::guard::SystemClock),
        Some(Arc::new(store.clone())),
    ));
    guard.sync_bans().await;
    // The guard's and the send limits' counters, shared with the other nodes in a cluster.
    let counters = redis.as_ref().map(|c| crate::cluster::counters(c.clone()));
    if let Some(c) = &counters {
        // Every node derives the same key (the keys' MAC under the shared secret store): the
        // HMACs that stand for accounts and passwords in Redis match across nodes.
        let key = keys.mac("cluster shared counters", b"").await?;
        guard.share(c.clone(), key);
    }
    // Incident locks announced by other nodes (Redis), for the task that ends sessions below.
    let (revoked_tx, mut revoked_rx) = tokio::sync::mpsc::channel::<(i64, i64)>(256);
    if let Some(client) = redis {
        crate::cluster::relay_changes(client.clone(), &store, cfg.node_name());
        crate::cluster::listen(
            client,
            guard.clone(),
            store.clone(),
            cfg.node_name(),
            revoked_tx,
        );
    }
    // One resolver (and one cache) for outbound MX look-ups, the inbound checks, the reports
    // and the identity providers' keys.
    let dns = postern_dns::Dns::new(&cfg.dns).context("setting up the DNS resolver")?;
    let ldap = match cfg.directories.first() {
        None => None,
        Some(d) => Some(Arc::new(crate::directory::Ldap::new(d, &cfg, &keys).await?)),
    };
    let directory = ldap.clone().map(|l| l as Arc<dyn postern_auth::Directory>);
    let oidc = if cfg.oidc.is_empty() {
        None
    } else {
        Some(
            Arc::new(crate::oidc::Oidc::new(&cfg.oidc, &cfg, dns.resolver().clone(), &keys).await?)
                as Arc<dyn postern_auth::TokenVerifier>,
        )
    };
    let auth = Arc::new(
        Authenticator::new(Arc::new(store.clone()), pool, audit.clone())?
            .with_cache_ttl(Duration::from_secs(a.credential_cache_secs))
            .with_max_password_age(Duration::from_secs(
                cfg.password_policy.max_age_days.saturating_mul(86400),
            ))
            .with_expiry_warning(Duration::from_secs(
                cfg.password_policy.warn_days.saturating_mul(86400),
            ))
            .with_guard(guard.clone())
            .with_scram(
                a.scram_for_account_passwords,
                a.scram_iterations,
                keys.mac("scram-unknown-salt", b"").await?,
            )
            .with_signin_observer_if(cfg.notify.new_signin.then(|| {
                Arc::new(crate::notify::SigninNotices::new(
                    store.clone(),
                    cfg.notify.clone(),
                    guard.clone(),
                    cfg.server.hostname.clone(),
                )) as Arc<dyn postern_auth::SigninObserver>
            }))
            .with_token_verifier_if(oidc)
            .with_directory_if(directory),
    );
    if !a.scram_for_account_passwords {
        let n = store.drop_account_scram_verifiers().await?;
        if n > 0 {
            tracing::info!(
                dropped = n,
                "SCRAM verifiers of account passwords dropped (scram_for_account_passwords is off)"
            );
        }
    }
    // Incident response: `postern incident lock` (or the API) stamps the account's
    // sessions_revoked_at; within a second every live session of it ends. In a cluster the lock
    // is also announced through Redis, which ends the sessions at once; the database read
    // covers announcements lost while Redis was down. Each (account, time) is acted on once.
    let revocations = Arc::new(postern_net::Revocations::default());
    {
        let (store, revocations) = (store.clone(), revocations.clone());
        tokio::spawn(async move {
            let mut since = postern_store::now();
            let mut done: std::collections::HashSet<(i64, i64)> = Default::default();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                let rows = tokio::select! {
                    _ = tick.tick() => match store.sessions_revoked_since(since - 1).await {
                        Ok(rows) => {
                            // only the database's rows move `since`: an announcement may
                            // arrive before an earlier lock is read
                            for (_, at) in &rows {
                                since = since.max(*at);
                            }
                            rows
                        }
                        Err(_) => continue,
                    },
                    Some(announced) = revoked_rx.recv() => vec![announced],
                };
                for (account, at) in rows {
                    if done.insert((account, at)) {
                        let any = revocations.revoke(account);
                        tracing::info!(
                            account,
                            live_sessions = any,
                            "sessions of the account revoked"
                        );
                    }
                }
                done.retain(|(_, at)| *at >= since - 1);
            }
        });
    }
    // Bans added or lifted with `postern ban` reach the running server within 2 s, rotated
    // application secrets are retired (and audited) within 2 s of their grace period's end; once
    // an hour the audit log is trimmed to its retention, greylisting state expires and the DMARC
    // aggregate reports of finished days are sent. Several nodes on one database take turns: the
    // hourly work runs on the node that claims it (every 2 minutes each node tries; one claim
    // per hour succeeds), never on two at once.
    {
        let guard = guard.clone();
        let store = store.clone();
        let retention = cfg.defence.audit_retention_days;
        let grey = crate::backend::grey_policy(&cfg.greylist);
        let certs = certs.clone();
        let dns = dns.clone();
        let cfg = cfg.clone();
        let node = cfg.node_name();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                guard.sync_bans().await;
                if let Some(t) = certs.not_after() {
                    postern_metrics::set_tls_cert_expiry(t - postern_store::now());
                }
                let (bans, lockouts) = guard.active_counts();
                postern_metrics::set_bans(bans as i64);
                postern_metrics::set_lockouts(lockouts as i64);
                if n.is_multiple_of(5) {
                    if let Ok(counts) = store.queue_counts().await {
                        for state in ["queued", "held"] {
                            let c = counts
                                .iter()
                                .find(|(s, _)| s == state)
                                .map_or(0, |(_, c)| *c);
                            postern_metrics::set_queue(state, c);
                        }
                    }
                }
                if let Err(e) = crate::ops::applications::retire_previous_secrets(&store).await {
                    tracing::warn!(error = %e, "retiring rotated application secrets failed");
                }
                n += 1;
                let hourly = n % 60 == 1
                    && match store.claim_job("hourly", 3600, &node).await {
                        Ok(claimed) => claimed,
                        Err(e) => {
                            tracing::warn!(error = %e, "claiming the hourly jobs failed");
                            false
                        }
                    };
                if hourly {
                    if store.blobs().is_database() {
                        match store.sweep_bodies().await {
                            Ok(n) if n > 0 => tracing::info!(removed = n, "unused bodies swept"),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "sweeping unused bodies failed"),
                        }
                    }
                    if let Err(e) = store.prune_audit(retention).await {
                        tracing::warn!(error = %e, "audit log retention failed");
                    }
                    if let Err(e) = store.greylist_expire(postern_store::now(), grey).await {
                        tracing::warn!(error = %e, "greylist expiry failed");
                    }
                    if let Err(e) = store
                        .prune_vanished(cfg.imap.vanished_records_per_mailbox)
                        .await
                    {
                        tracing::warn!(error = %e, "pruning the expunge record failed");
                    }
                    // DMARC aggregate and TLS reports of the finished days
                    let today = postern_store::now().div_euclid(86400);
                    let actor = crate::actor::Actor::system("reports");
                    if let Err(e) =
                        crate::ops::reports::send(&store, &dns, &cfg, &actor, today).await
                    {
                        tracing::warn!(error = %e, "sending reports failed");
                    }
                }
            }
        });
    }
    let delivery = if cfg.delivery.enabled {
        Some(
            postern_queue::Delivery::new(
                store.clone(),
                cfg.server.hostname.clone(),
                cfg.delivery.clone(),
                cfg.relays.clone(),
                Arc::new(crate::keys::QueueSecrets(keys.clone())),
                dns.clone(),
                &cfg.dns,
            )
            .context("setting up outbound delivery")?,
        )
    } else {
        tracing::info!(
            "outbound delivery is off ([delivery] enabled = false): messages stay queued"
        );
        None
    };
    let smtp = Arc::new(SmtpServer {
        hostname: cfg.server.hostname.clone(),
        config: cfg.smtp.clone(),
        backend: Arc::new(StoreBackend {
            store: store.clone(),
            delivery: delivery.clone(),
            dkim: Some(Arc::new(postern_queue::dkim::Signer::new(
                store.clone(),
                Arc::new(crate::keys::QueueSecrets(keys.clone())),
            ))),
            grey: crate::backend::grey_policy(&cfg.greylist),
            quarantine_mailbox: cfg.inbound.quarantine_mailbox.clone(),
            audit: Some(audit.clone()),
        }),
        auth: auth.clone(),
        tls: tls.clone(),
        send_limiter: {
            let l = postern_smtp::limits::SendLimiter::default();
            if let Some(c) = &counters {
                l.share(c.clone());
            }
            l
        },
        inbound: cfg.inbound.checks.then(|| {
            postern_smtp::inbound::Inbound::new(
                dns.clone(),
                cfg.inbound.clone(),
                cfg.greylist.clone(),
            )
        }),
        greylist: cfg.greylist.enabled,
        revocations: revocations.clone(),
        trusted_networks: cfg
            .inbound
            .trusted_networks
            .iter()
            .filter_map(|n| postern_types::Cidr::parse(n).ok())
            .collect(),
    });
    if !cfg.inbound.checks {
        tracing::warn!("inbound checks are off ([inbound] checks = false): SPF, DKIM and DMARC are not verified on port 25");
    }
    let imap = Arc::new(postern_imap::ImapServer {
        hostname: cfg.server.hostname.clone(),
        config: cfg.imap.clone(),
        store: store.clone(),
        auth: auth.clone(),
        tls: tls.clone(),
        sessions: {
            let s = postern_imap::AccountSessions::default();
            if let Some(c) = &counters {
                s.share(c.clone());
            }
            Arc::new(s)
        },
        revocations: revocations.clone(),
        compressed: Default::default(),
    });
    let pop3 = Arc::new(postern_pop3::Pop3Server {
        hostname: cfg.server.hostname.clone(),
        config: cfg.pop3.clone(),
        store: store.clone(),
        auth: auth.clone(),
        tls: tls.clone(),
        locks: {
            let l = postern_pop3::MaildropLocks::default();
            if let Some(c) = &counters {
                l.share(c.clone());
            }
            Arc::new(l)
        },
        revocations: revocations.clone(),
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
        let access = Arc::new(Access {
            allow: parse_cidrs(&l.allow).with_context(|| format!("listener {}", l.address))?,
            deny: parse_cidrs(&l.deny).with_context(|| format!("listener {}", l.address))?,
            proxy_from: parse_cidrs(&l.proxy_from)
                .with_context(|| format!("listener {}", l.address))?,
        });
        bound.push((l.protocol, listener, access));
    }
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let smtp_limiter = ConnLimiter::new(cfg.smtp.max_connections, cfg.smtp.max_connections_per_ip);
    // IMAP and POP3 share one cap: both are mailbox access.
    let mbx_limiter = ConnLimiter::new(cfg.imap.max_connections, cfg.imap.max_connections_per_ip);
    let mut loops = Vec::new();
    for (protocol, listener, access) in bound {
        let addr = listener.local_addr()?;
        tracing::info!(protocol = protocol.name(), address = %addr, "listening");
        let gate = Gate {
            access,
            guard: guard.clone(),
            protocol,
            shutdown: shutdown.clone(),
        };
        let task = match protocol {
            // refused by Config::validate: the portal is served by the admin listener
            Protocol::Web => continue,
            Protocol::Smtp | Protocol::Submission | Protocol::Submissions => {
                let srv = smtp.clone();
                spawn_listener(
                    listener,
                    smtp_limiter.clone(),
                    &tracker,
                    gate,
                    move |t, p, a, s| {
                        postern_smtp::handle_connection(srv.clone(), protocol, t, p, a, s)
                    },
                )
            }
            Protocol::Imap | Protocol::Imaps => {
                let srv = imap.clone();
                spawn_listener(
                    listener,
                    mbx_limiter.clone(),
                    &tracker,
                    gate,
                    move |t, p, a, s| {
                        postern_imap::handle_connection(srv.clone(), protocol, t, p, a, s)
                    },
                )
            }
            Protocol::Pop3 | Protocol::Pop3s => {
                let srv = pop3.clone();
                spawn_listener(
                    listener,
                    mbx_limiter.clone(),
                    &tracker,
                    gate,
                    move |t, p, a, s| {
                        postern_pop3::handle_connection(srv.clone(), protocol, t, p, a, s)
                    },
                )
            }
        };
        loops.push(task);
    }
    // the admin listener (console, admin API, and the portal) and, when configured, the mail
    // users' own web listener (portal only); one state for both
    let api_state = if cfg.admin.listen.is_some() || cfg.web.listen.is_some() {
        let random: [u8; 32] = rand::random();
        Some(Arc::new(crate::api::ApiState {
            cfg: cfg.clone(),
            store: store.clone(),
            auth: auth.clone(),
            keys: keys.clone(),
            dummy_hash: auth.pool().hasher().hash(&random)?,
            ldap: ldap.clone().filter(|l| l.serves_admins()),
            passkeys: Arc::new(crate::passkeys::Passkeys::new(
                cfg.web
                    .passkey_rp_id
                    .as_deref()
                    .unwrap_or(&cfg.server.hostname),
            )?),
        }))
    } else {
        None
    };
    let mut api_tasks = Vec::new();
    for (surface, listen) in [
        (crate::api::Surface::Admin, cfg.admin.listen),
        (crate::api::Surface::Users, cfg.web.listen),
    ] {
        if let (Some(addr), Some(state)) = (listen, &api_state) {
            let sd = shutdown.clone();
            api_tasks.push(
                crate::api::serve(
                    state.clone(),
                    surface,
                    addr,
                    http_tls.rustls().clone(),
                    async move { sd.cancelled().await },
                )
                .await?,
            );
        }
    }
    let sts_task = match cfg.mta_sts.listen {
        Some(addr) => {
            let sd = shutdown.clone();
            Some(
                crate::sts_host::serve(
                    &cfg,
                    store.clone(),
                    guard.clone(),
                    addr,
                    http_tls.rustls().clone(),
                    async move { sd.cancelled().await },
                )
                .await?,
            )
        }
        None => None,
    };
    let metrics_task = match cfg.metrics.listen {
        Some(addr) => {
            let sd = shutdown.clone();
            Some(
                crate::metrics_http::serve(
                    addr,
                    store.clone(),
                    cfg.server.hostname.clone(),
                    async move { sd.cancelled().await },
                )
                .await?,
            )
        }
        None => None,
    };
    let delivery_task = delivery.as_ref().map(|d| {
        let (d, sd) = (d.clone(), shutdown.clone());
        tokio::spawn(async move { d.run(sd).await })
    });
    {
        let alerts =
            crate::alerts::Alerts::new(cfg.clone(), store.clone(), keys.clone(), dns.clone());
        tokio::spawn(alerts.run(shutdown.clone()));
    }
    let acme_task = if cfg.acme.directory.is_some() {
        let acme = crate::acme::Acme::new(cfg.clone(), store.clone(), keys.clone(), certs.clone());
        Some(acme.start(shutdown.clone()).await?)
    } else {
        None
    };
    // SIGHUP: certificates managed by hand are read again (sessions in progress keep theirs).
    {
        let certs = certs.clone();
        let store = store.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match certs.reload() {
                    Ok(()) => {
                        tracing::info!(not_after = ?certs.not_after(), "SIGHUP: certificate reloaded");
                        let _ = crate::actor::record(
                            &store,
                            &crate::actor::Actor::system("signal"),
                            "certificate_reloaded",
                            "",
                            "SIGHUP",
                        )
                        .await;
                    }
                    Err(e) => {
                        tracing::error!(target: "postern::alert", error = %e, "SIGHUP: the certificate could not be reloaded; the previous one stays")
                    }
                }
            }
        });
    }
    if let Some(k) = &cfg.backup.key {
        crate::backup::load_key(Some(&cfg), Some(&keys), k, crate::backup::KeyBase::Config)
            .await
            .context("[backup] key")?;
    }
    if cfg.backup.dir.is_some() {
        let (c, st, k, sd) = (cfg.clone(), store.clone(), keys.clone(), shutdown.clone());
        tokio::spawn(crate::backup::run_schedule(c, st, k, sd));
    }
    if let Some(b) = banner {
        println!("{b}");
    }
    match crate::privileges::OUTCOME.get() {
        Some(o) if nix::unistd::Uid::effective().is_root() => tracing::warn!("{o}"),
        Some(o) => tracing::info!("{o}"),
        None if nix::unistd::Uid::effective().is_root() => {
            tracing::warn!("running as root: set [server] user (postern audit reports this)")
        }
        None => {}
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), commit = env!("POSTERN_COMMIT"), hostname = %cfg.server.hostname, "postern started");

    signals.wait().await;
    tracing::info!(
        open_sessions = tracker.len(),
        "shutting down: no new connections; draining sessions"
    );
    shutdown.cancel();
    for l in loops {
        let _ = l.await;
    }
    for t in api_tasks
        .into_iter()
        .chain([sts_task, metrics_task, acme_task].into_iter().flatten())
    {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if let Some(t) = delivery_task {
        let _ = tokio::time::timeout(Duration::from_secs(35), t).await;
    }
    tracker.close();
    let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            cut = tracker.len(),
            "grace period over: closing the remaining sessions"
        );
    }
    checkpoints.abort();
    write_checkpoint(&cfg, &store).await;
    store.close().await;
    tracing::info!("postern stopped");
    Ok(())
}

/// Writes a signed checkpoint of the audit chain outside the database: to the log (journald or
/// syslog keep it), and appended to `audit.checkpoint_file` when configured.
pub async fn write_checkpoint(cfg: &Config, store: &Store) -> Option<String> {
    let cp = match store.audit_checkpoint().await {
        Ok(Some(cp)) => cp,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(error = %e, "audit checkpoint failed");
            return None;
        }
    };
    let line = serde_json::to_string(&cp).ok()?;
    tracing::info!(target: "postern::audit::checkpoint", id = cp.id, head = %cp.head, time = cp.time, sig = %cp.sig, "audit checkpoint {line}");
    if let Some(f) = &cfg.audit.checkpoint_file {
        let f = cfg.path(f);
        let res = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&f)?;
            writeln!(file, "{line}")?;
            file.sync_all()
        })();
        if let Err(e) = res {
            tracing::error!(file = %f.display(), error = %e, "could not write the audit checkpoint file");
        }
    }
    Some(line)
}

fn spawn_checkpoints(cfg: &Config, store: &Store) -> tokio::task::JoinHandle<()> {
    let (cfg, store) = (cfg.clone(), store.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(cfg.audit.checkpoint_secs));
        loop {
            tick.tick().await;
            write_checkpoint(&cfg, &store).await;
        }
    })
}

/// What every listener checks at accept, whatever its protocol.
struct Gate {
    access: Arc<Access>,
    guard: Arc<postern_auth::guard::Guard>,
    protocol: Protocol,
    shutdown: CancellationToken,
}

type Admission = Result<postern_net::ConnPermit, postern_net::Refusal>;

/// Runs the accept loop of one listener: each connection passes the [`gate`] (PROXY header,
/// access lists, bans) before `session` runs the protocol.
fn spawn_listener<F, Fut>(
    listener: TcpListener,
    limiter: Arc<ConnLimiter>,
    tracker: &TaskTracker,
    g: Gate,
    session: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr, Admission, CancellationToken) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let g = Arc::new(g);
    let session = Arc::new(session);
    let lim = limiter.clone();
    tokio::spawn(postern_net::accept_loop(
        listener,
        limiter,
        g.shutdown.clone(),
        tracker.clone(),
        move |tcp, peer, admission| {
            let (g, session, lim) = (g.clone(), session.clone(), lim.clone());
            async move {
                let Some((tcp, peer, admission)) =
                    gate(&g.access, &g.guard, &lim, g.protocol, tcp, peer, admission).await
                else {
                    return;
                };
                session(tcp, peer, admission, g.shutdown.clone()).await
            }
        },
    ))
}

/// A listener's allow and deny lists, evaluated at accept.
struct Access {
    allow: Vec<postern_auth::guard::Cidr>,
    deny: Vec<postern_auth::guard::Cidr>,
    proxy_from: Vec<postern_auth::guard::Cidr>,
}

/// Everything decided at accept, before a protocol session starts: the PROXY header (on listeners
/// behind a load balancer), the listener's access lists, and bans; all on the real client address.
async fn gate(
    access: &Access,
    guard: &postern_auth::guard::Guard,
    limiter: &Arc<ConnLimiter>,
    protocol: Protocol,
    mut tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    admission: Result<postern_net::ConnPermit, postern_net::Refusal>,
) -> Option<(
    tokio::net::TcpStream,
    std::net::SocketAddr,
    Result<postern_net::ConnPermit, postern_net::Refusal>,
)> {
    let (peer, admission) = if access.proxy_from.is_empty() {
        (peer, admission)
    } else {
        if !access.proxy_from.iter().any(|c| c.contains(peer.ip())) {
            tracing::warn!(event = "connection", protocol = protocol.name(), ip = %peer.ip(), "direct connection to a PROXY-protocol listener from an untrusted address closed");
            return None;
        }
        match postern_net::proxy::read_header(&mut tcp, Duration::from_secs(10)).await {
            Ok(Some(real)) => {
                // The caps count clients, not the proxy.
                drop(admission);
                (real, limiter.admit(real.ip()))
            }
            Ok(None) => (peer, admission),
            Err(e) => {
                tracing::warn!(event = "connection", protocol = protocol.name(), proxy = %peer.ip(), error = %e, "bad PROXY protocol header");
                return None;
            }
        }
    };
    if !access.admits(protocol, peer) || refuse_banned(guard, protocol, peer) {
        return None;
    }
    Some((tcp, peer, admission))
}

impl Access {
    fn admits(&self, protocol: Protocol, peer: std::net::SocketAddr) -> bool {
        let ip = peer.ip();
        let ok = (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
            && !self.deny.iter().any(|c| c.contains(ip));
        if !ok {
            tracing::info!(event = "connection", protocol = protocol.name(), ip = %ip, "connection refused by the listener's access list");
        }
        ok
    }
}

pub fn parse_cidrs(v: &[String]) -> Result<Vec<postern_auth::guard::Cidr>> {
    v.iter()
        .map(|a| postern_auth::guard::Cidr::parse(a).map_err(anyhow::Error::msg))
        .collect()
}

/// Bans are enforced at accept: the TCP connection is closed before any greeting or TLS work.
fn refuse_banned(
    guard: &postern_auth::guard::Guard,
    protocol: Protocol,
    peer: std::net::SocketAddr,
) -> bool {
    match guard.ban_of(peer.ip()) {
        Some(b) => {
            tracing::info!(event = "connection", protocol = protocol.name(), ip = %peer.ip(), ban = %b.target, "connection from a banned source closed");
            true
        }
        None => false,
    }
}

pub fn guard_config(cfg: &Config) -> Result<postern_auth::guard::GuardConfig> {
    use postern_auth::guard::{Cidr, GuardConfig};
    let d = &cfg.defence;
    Ok(GuardConfig {
        window_secs: d.window_secs,
        ip_max_failures: d.ip_max_failures,
        network_max_failures: d.network_max_failures,
        account_max_failures: d.account_max_failures,
        account_long_window_secs: d.account_long_window_secs,
        account_long_max_failures: d.account_long_max_failures,
        account_lockout_secs: d.account_lockout_secs,
        ban_secs: d.ban_secs,
        ban_max_secs: d.ban_max_secs,
        offender_memory_secs: d.offender_memory_secs,
        known_client_secs: d.known_client_days.saturating_mul(86400),
        same_password_secs: d.same_password_secs,
        failure_delay_ms: d.failure_delay_ms,
        failure_delay_max_ms: d.failure_delay_max_ms,
        // The admin API's allowed networks are never banned either: a ban must not lock the
        // administrators out of the one door that lifts it.
        allowlist: d
            .allowlist
            .iter()
            .chain(&cfg.admin.allow)
            .map(|a| Cidr::parse(a).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()
            .context("defence.allowlist / admin.allow")?,
        code_max_failures: d.code_max_failures,
        code_window_secs: d.code_window_secs,
    })
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
