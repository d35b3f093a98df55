//! Administrative commands run from the host shell: init, demo, domain, user, alias, queue.
//! They work on the database directly, also while the server runs (SQLite WAL allows it).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use postern_config::{Config, LogFormat};
use postern_types::{Domain, EmailAddress};
use secrecy::ExposeSecret;

use crate::actor::Actor;
use crate::cli::{AliasCmd, DomainCmd, QueueCmd, UserCmd};
use crate::ops;
use crate::password;
use crate::serve::open_store;

fn date(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

fn address(s: &str) -> Result<EmailAddress> {
    EmailAddress::parse(s).with_context(|| format!("invalid address {s:?}"))
}

fn domain_arg(s: &str) -> Result<Domain> {
    Domain::parse(s).with_context(|| format!("invalid domain {s:?}"))
}

/// `postern init`: config file, database with the first domain, self-signed certificate.
pub async fn init(
    dir: &Path,
    domain: &str,
    hostname: Option<&str>,
    ip: IpAddr,
    port_offset: u16,
) -> Result<Config> {
    let domain = domain_arg(domain)?;
    let hostname = hostname
        .map(str::to_owned)
        .unwrap_or_else(|| format!("mail.{domain}"));
    Domain::parse(&hostname).with_context(|| format!("invalid --hostname {hostname:?}"))?;
    if port_offset > 65535 - 8080 {
        bail!("--port-offset {port_offset} would push ports past 65535");
    }
    let config_path = dir.join("postern.toml");
    if config_path.exists() {
        bail!(
            "{} already exists; refusing to overwrite it",
            config_path.display()
        );
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = postern_config::initial_config_text(&hostname, ip, port_offset);
    std::fs::write(&config_path, text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let cfg = Config::load(&config_path)?;
    let (cert, key) = (cfg.path(&cfg.tls.cert), cfg.path(&cfg.tls.key));
    let fingerprint = if cert.exists() {
        None
    } else {
        Some(postern_net::tls::generate_self_signed(
            &hostname, &cert, &key,
        )?)
    };
    if let Some(p) = cfg.secrets.master_key.strip_prefix("file:") {
        let path = cfg.path(Path::new(p));
        if !path.exists() {
            postern_secrets::MasterKey::generate_file(&path)?;
        }
    }
    // Nothing is sealed yet: the master key can still be changed in the configuration before
    // the first account (which seals the audit chain's key) without a rotation.
    let store = crate::serve::open_store_plain(&cfg).await?;
    store.add_domain(&domain).await?;
    store.close().await;
    println!("Initialised {}", dir.display());
    println!("  config:   {}", config_path.display());
    println!("  domain:   {domain}");
    println!(
        "  hostname: {hostname} (self-signed certificate in {})",
        cert.display()
    );
    if let Some(fp) = fingerprint {
        println!("  certificate SHA-256 fingerprint (to pin in a mail client):");
        println!("    {fp}");
    }
    for l in &cfg.listeners {
        println!("  listener: {:<12} {}", l.protocol.name(), l.address);
    }
    if let Some(a) = cfg.admin.listen {
        println!("  listener: {:<12} https://{a}/api/v1", "admin API");
    }
    Ok(cfg)
}

/// `postern init` from the command line: the data directory, then what to do next.
pub async fn init_cli(
    dir: &Path,
    domain: &str,
    hostname: Option<&str>,
    ip: IpAddr,
    port_offset: u16,
) -> Result<()> {
    init(dir, domain, hostname, ip, port_offset).await?;
    let me = self_path();
    println!("No account exists yet. Create one with:");
    println!(
        "  {me} --dir {} user add postmaster@{}",
        dir.display(),
        domain.to_ascii_lowercase()
    );
    println!("Then start the server with:");
    println!("  {me} --dir {} serve", dir.display());
    Ok(())
}

/// How to call this very binary in a printed hint: `postern` when that is what `PATH` finds,
/// else the full path (after `cargo build` the binary is not on `PATH`).
pub fn self_path() -> String {
    let exe = std::env::current_exe().ok();
    let on_path = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let c = d.join("postern");
            c.is_file()
                && exe.as_ref().is_some_and(|e| {
                    std::fs::canonicalize(&c).ok() == std::fs::canonicalize(e).ok()
                })
        })
    });
    match exe {
        Some(e) if !on_path => e.display().to_string(),
        _ => "postern".to_owned(),
    }
}

/// `postern check-config`: loads what `serve` loads, binds nothing, and says what it found.
pub async fn check_config(cfg: &Config) -> Result<()> {
    let (cert, key) = (cfg.path(&cfg.tls.cert), cfg.path(&cfg.tls.key));
    postern_net::tls::load_acceptor(&cert, &key)?;
    let (fp, not_after) = postern_net::tls::certificate_summary(&cert)?;
    let days = (not_after - postern_store::now()) / 86400;
    if days < 0 {
        bail!(
            "the TLS certificate {} expired on {}",
            cert.display(),
            date(not_after)
        );
    }
    for l in &cfg.listeners {
        crate::serve::parse_cidrs(&l.allow)
            .and_then(|_| crate::serve::parse_cidrs(&l.deny))
            .and_then(|_| crate::serve::parse_cidrs(&l.proxy_from))
            .with_context(|| format!("listener {}", l.address))?;
    }
    crate::serve::guard_config(cfg)?;
    postern_auth::Argon2Hasher::new(
        cfg.auth.argon2_memory_kib,
        cfg.auth.argon2_iterations,
        cfg.auth.argon2_parallelism,
    )
    .context("auth.argon2_* settings")?;
    if let Some(f) = &cfg.password_policy.breached_passwords_file {
        let f = cfg.path(f);
        std::fs::metadata(&f)
            .with_context(|| format!("password_policy.breached_passwords_file {}", f.display()))?;
    }
    let store = crate::serve::open_store_plain(cfg).await?;
    // The master key: the server fails closed without it. A missing key file with nothing sealed
    // yet is made by `serve`; that is said, not done, here.
    let master = &cfg.secrets.master_key;
    let missing_file = master
        .strip_prefix("file:")
        .map(|p| cfg.path(Path::new(p)))
        .filter(|p| !p.exists());
    let keys = match missing_file {
        Some(p) if store.sealed_rows().await?.is_empty() => {
            println!(
                "  master key: {} does not exist yet; `serve` will create it",
                p.display()
            );
            None
        }
        Some(p) => bail!(
            "the master key file {} is missing, and sealed secrets need it",
            p.display()
        ),
        None => Some(crate::keys::Keys::load(cfg, &store).await?),
    };
    if let Some(keys) = &keys {
        for r in &cfg.relays {
            if let Some(pw) = &r.password {
                keys.resolve(pw, &format!("check-config: relay {}", r.host))
                    .await
                    .with_context(|| format!("relay {}: password {pw}", r.host))?;
            }
        }
    }
    store.close().await;
    println!("{}: ok", cfg.file.display());
    println!(
        "  certificate {} (SHA-256 {fp}), valid until {} ({days} days)",
        cert.display(),
        date(not_after)
    );
    if keys.is_some() {
        println!("  master key: {} opens", master);
    }
    for l in &cfg.listeners {
        println!("  listener {:<12} {}", l.protocol.name(), l.address);
    }
    if let Some(a) = cfg.admin.listen {
        println!("  listener {:<12} {a}", "admin API");
    }
    Ok(())
}

/// `postern demo`: a throw-away server to look at, in one command.
pub async fn demo(dir: Option<PathBuf>, format: Option<LogFormat>) -> Result<()> {
    // A directory of its own is removed when the demo stops; one given with --dir is kept.
    let (dir, throwaway) = match dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("postern-demo-{}", hex_id())),
            true,
        ),
    };
    let res = demo_in(&dir, throwaway, format).await;
    if throwaway {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!(
                "postern: warning: could not remove the demo directory {}: {e}",
                dir.display()
            );
        }
    }
    res
}

async fn demo_in(dir: &Path, throwaway: bool, format: Option<LogFormat>) -> Result<()> {
    let cfg = init(
        dir,
        "example.test",
        Some("mail.example.test"),
        "127.0.0.1".parse()?,
        10000,
    )
    .await?;
    let user = address("demo@example.test")?;
    let pw = password::generate();
    let hash = password::check_and_hash(&cfg, &pw, user.as_str())?;
    let store = open_store(&cfg).await?;
    store.add_account(&user, &hash).await?;
    store.close().await;
    // releases the data directory's lock before the server takes it
    drop(store);
    let port = |p: postern_config::Protocol| {
        cfg.listeners
            .iter()
            .find(|l| l.protocol == p)
            .map(|l| l.address.port())
            .unwrap_or(0)
    };
    let banner = format!(
        "\n==================== Postern demo ====================\n\
         user:     {user}\n\
         password: {}   (shown once; not stored in clear anywhere)\n\
         SMTP (MX, no auth)         127.0.0.1:{}\n\
         submission (STARTTLS+AUTH) 127.0.0.1:{}\n\
         submissions (TLS+AUTH)     127.0.0.1:{}\n\
         IMAP (STARTTLS) / IMAPS    127.0.0.1:{} / {}\n\
         POP3 (STLS) / POP3S        127.0.0.1:{} / {}\n\
         admin API (HTTPS)          {} (first: {} --dir {} admin bootstrap)\n\
         data directory: {}{}\n\
         Try: swaks --server 127.0.0.1:{} --tls --auth-user {user} --auth-password '<password>' \\\n\
         \x20      --from {user} --to {user}\n\
         Then: curl -k --user '{user}:<password>' 'imaps://127.0.0.1:{}/INBOX;MAILINDEX=1'\n\
         Stop with Ctrl-C.\n\
         ======================================================",
        pw.expose_secret(),
        port(postern_config::Protocol::Smtp),
        port(postern_config::Protocol::Submission),
        port(postern_config::Protocol::Submissions),
        port(postern_config::Protocol::Imap),
        port(postern_config::Protocol::Imaps),
        port(postern_config::Protocol::Pop3),
        port(postern_config::Protocol::Pop3s),
        cfg.admin
            .listen
            .map_or("off".to_owned(), |a| format!("https://{a}/api/v1")),
        self_path(),
        dir.display(),
        dir.display(),
        if throwaway {
            " (removed when the demo stops)"
        } else {
            ""
        },
        port(postern_config::Protocol::Submission),
        port(postern_config::Protocol::Imaps),
    );
    drop(pw);
    crate::serve::serve(cfg, format, Some(banner)).await
}

fn hex_id() -> String {
    let b: [u8; 4] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub async fn domain(cfg: &Config, cmd: &DomainCmd) -> Result<()> {
    let store = open_store(cfg).await?;
    let actor = Actor::cli();
    match cmd {
        DomainCmd::Add { domain } => {
            let d = domain_arg(domain)?;
            ops::domains::add(&store, &actor, &d).await?;
            println!("domain {d} added");
        }
        DomainCmd::List => {
            for d in store.list_domains().await? {
                println!("{}\t{} account(s)", d.name, d.accounts);
            }
        }
        DomainCmd::Remove { domain } => {
            let d = domain_arg(domain)?;
            ops::domains::remove(&store, &actor, &d).await?;
            println!("domain {d} removed");
        }
    }
    store.close().await;
    Ok(())
}

pub async fn user(cfg: &Config, cmd: &UserCmd) -> Result<()> {
    let store = open_store(cfg).await?;
    let actor = Actor::cli();
    match cmd {
        UserCmd::Add {
            address: a,
            password_stdin,
        } => {
            let a = address(a)?;
            if store.resolve_recipient(&a).await?.is_some() {
                bail!("{a} already exists (as an account or an alias)");
            }
            let pw = password::read_new(*password_stdin)?;
            ops::accounts::create(cfg, &store, &actor, &a, &pw).await?;
            println!("account {a} created");
        }
        UserCmd::Passwd {
            address: a,
            password_stdin,
        } => {
            let a = address(a)?;
            store.account(&a).await?;
            let pw = password::read_new(*password_stdin)?;
            ops::accounts::set_password(cfg, &store, &actor, &a, &pw).await?;
            println!("password of {a} changed");
        }
        UserCmd::List => {
            for a in store.list_accounts().await? {
                println!(
                    "{}\t{}",
                    a.address,
                    if a.disabled { "disabled" } else { "active" }
                );
            }
        }
        UserCmd::Show { address: a } => {
            let a = address(a)?;
            let info = store.account(&a).await?;
            println!("address:          {}", info.address);
            println!(
                "status:           {}",
                if info.disabled { "disabled" } else { "active" }
            );
            println!("created:          {}", date(info.created_at));
            println!("password changed: {}", date(info.password_changed_at));
            let days = cfg.password_policy.max_age_days;
            if store.must_change_password(info.id).await? {
                println!("password expires: now (a change was forced)");
            } else if days > 0 {
                println!(
                    "password expires: {}",
                    date(info.password_changed_at + days as i64 * 86400)
                );
            }
            println!(
                "received details: {}",
                if info.received_details { "on" } else { "off" }
            );
            let nets = store.allowed_networks(info.id).await?;
            println!(
                "login from:       {}",
                if nets.is_empty() {
                    "anywhere".to_owned()
                } else {
                    nets.join(", ")
                }
            );
            println!(
                "POP3:             {}",
                if store.pop3_enabled(info.id).await? {
                    "on"
                } else {
                    "off"
                }
            );
            let owned = store.owned_addresses(info.id).await?;
            let aliases: Vec<_> = owned.into_iter().filter(|o| *o != info.address).collect();
            println!(
                "aliases:          {}",
                if aliases.is_empty() {
                    "-".to_owned()
                } else {
                    aliases.join(", ")
                }
            );
            println!("mailboxes:");
            for m in store.mailboxes(info.id).await? {
                println!(
                    "  {:<10} {:>6} message(s) {:>10} bytes  {}",
                    m.name,
                    m.messages,
                    m.bytes,
                    m.special_use.unwrap_or_default()
                );
            }
        }
        UserCmd::TwoFa(c) => {
            crate::twofactor::cli(cfg, &store, c).await?;
        }
        UserCmd::ExpirePassword { address: a } => {
            let a = address(a)?;
            ops::accounts::expire_password(&store, &actor, &a).await?;
            println!(
                "{a} must change the password: logins with it fail until `postern user passwd`"
            );
        }
        UserCmd::Disable { address: a } => {
            let a = address(a)?;
            ops::accounts::set_disabled(&store, &actor, &a, true).await?;
            println!("account {a} disabled");
        }
        UserCmd::Enable { address: a } => {
            let a = address(a)?;
            ops::accounts::set_disabled(&store, &actor, &a, false).await?;
            println!("account {a} enabled");
        }
        UserCmd::Remove { address: a } => {
            let a = address(a)?;
            ops::accounts::remove(&store, &actor, &a).await?;
            println!("account {a} removed with its mail");
        }
        UserCmd::ReceivedDetails { address: a, on } => {
            let a = address(a)?;
            ops::accounts::set_received_details(&store, &actor, &a, *on).await?;
            println!(
                "received details for {a}: {}",
                if *on { "on" } else { "off" }
            );
        }
        UserCmd::Networks {
            address: a,
            networks,
        } => {
            let a = address(a)?;
            let nets = ops::accounts::set_networks(&store, &actor, &a, networks).await?;
            if nets.is_empty() {
                println!("{a} may log in from anywhere");
            } else {
                println!("{a} may log in only from {}", nets.join(", "));
            }
        }
        UserCmd::SendLimits {
            address: a,
            messages_per_hour,
            recipients_per_hour,
        } => {
            let a = address(a)?;
            ops::accounts::set_send_limits(
                &store,
                &actor,
                &a,
                *messages_per_hour,
                *recipients_per_hour,
            )
            .await?;
            let show = |v: &Option<u32>| v.map_or("default".to_owned(), |n| n.to_string());
            println!(
                "send limits for {a}: {} messages/hour, {} recipients/hour",
                show(messages_per_hour),
                show(recipients_per_hour)
            );
        }
        UserCmd::Logins { address: a, limit } => {
            let a = address(a)?;
            let rows = store
                .query_audit(&postern_store::audit::AuditQuery {
                    account: Some(a.as_str().to_owned()),
                    success_only: true,
                    limit: *limit,
                    ..Default::default()
                })
                .await?;
            if rows.is_empty() {
                println!("no recorded logins for {a}");
            }
            for r in rows {
                println!(
                    "{}  {:<15}  {:<11} {:<6} {}",
                    date(r.ts),
                    r.ip.unwrap_or_default(),
                    r.protocol.unwrap_or_default(),
                    r.mechanism.unwrap_or_default(),
                    r.tls.unwrap_or_else(|| "no TLS".into())
                );
            }
        }
        UserCmd::Pop3 { address: a, on } => {
            let a = address(a)?;
            ops::accounts::set_pop3(&store, &actor, &a, *on).await?;
            println!("POP3 for {a}: {}", if *on { "on" } else { "off" });
        }
    }
    store.close().await;
    Ok(())
}

pub async fn alias(cfg: &Config, cmd: &AliasCmd) -> Result<()> {
    let store = open_store(cfg).await?;
    let actor = Actor::cli();
    match cmd {
        AliasCmd::Add { alias, account } => {
            let (al, ac) = (address(alias)?, address(account)?);
            ops::aliases::add(&store, &actor, &al, &ac).await?;
            println!("alias {al} -> {ac} added");
        }
        AliasCmd::List => {
            for (al, ac) in store.list_aliases().await? {
                println!("{al}\t{ac}");
            }
        }
        AliasCmd::Remove { alias } => {
            let al = address(alias)?;
            ops::aliases::remove(&store, &actor, &al).await?;
            println!("alias {al} removed");
        }
    }
    store.close().await;
    Ok(())
}

pub async fn queue(cfg: &Config, cmd: &QueueCmd) -> Result<()> {
    let store = open_store(cfg).await?;
    let actor = Actor::cli();
    match cmd {
        QueueCmd::List => {
            let q = store.queue_list().await?;
            if q.is_empty() {
                println!("queue is empty");
            }
            for e in q {
                println!(
                    "{}\t{}\t{}\t{} bytes\tattempts {}\t<{}> -> {}",
                    e.id,
                    date(e.created_at),
                    e.status,
                    e.size,
                    e.attempts,
                    e.sender,
                    e.recipients.join(", ")
                );
            }
        }
        QueueCmd::Show { id, json } => {
            let m = store.queued_message(*id).await?;
            if *json {
                println!("{}", serde_json::to_string(&m)?);
            } else {
                println!("message {} ({} bytes), from <{}>", m.id, m.size, m.sender);
                println!(
                    "  queued {}  state {}  attempts {}",
                    date(m.created_at),
                    m.status,
                    m.attempts
                );
                println!("  next attempt {}", date(m.next_attempt_at));
                for r in &m.recipients {
                    println!(
                        "  {:<32} {:<9} {}",
                        r.address,
                        r.status,
                        r.last_error.as_deref().unwrap_or("")
                    );
                }
            }
        }
        QueueCmd::Retry { id } => {
            ops::queue::retry(&store, &actor, *id).await?;
            println!("message {id} will be attempted now");
        }
        QueueCmd::Remove { id } => {
            ops::queue::remove(&store, &actor, *id).await?;
            println!("message {id} removed from the queue (no bounce)");
        }
        QueueCmd::Hold { id } => {
            ops::queue::hold(&store, &actor, *id, true).await?;
            println!("message {id} held");
        }
        QueueCmd::Release { id } => {
            ops::queue::hold(&store, &actor, *id, false).await?;
            println!("message {id} released");
        }
    }
    store.close().await;
    Ok(())
}

/// "90s", "10m", "2h", "7d", or plain seconds.
pub fn parse_duration(s: &str) -> Result<u64> {
    let s = s.trim();
    let (n, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        Some('d') => (&s[..s.len() - 1], 86400),
        Some('y') => (&s[..s.len() - 1], 365 * 86400),
        _ => (s, 1),
    };
    let n: u64 = n
        .parse()
        .with_context(|| format!("invalid duration {s:?} (use e.g. 90s, 10m, 2h, 7d)"))?;
    n.checked_mul(mult)
        .with_context(|| format!("duration {s:?} is too long"))
}

pub async fn ban(cfg: &Config, cmd: &crate::cli::BanCmd) -> Result<()> {
    use crate::cli::BanCmd;
    use postern_auth::guard::Cidr;
    let store = open_store(cfg).await?;
    let target = |t: &str| Cidr::parse(t).map_err(anyhow::Error::msg);
    match cmd {
        BanCmd::List => {
            let bans = store.list_bans().await?;
            if bans.is_empty() {
                println!("no active bans");
            }
            for b in bans {
                println!(
                    "{:<20} until {}  offences {}  {}",
                    b.target.to_string(),
                    date(b.until as i64),
                    b.offences,
                    b.reason
                );
            }
        }
        BanCmd::Add {
            target: t,
            duration,
            reason,
            force,
        } => {
            let t = target(t)?;
            let secs = parse_duration(duration)?;
            let ban = ops::bans::add(
                cfg,
                &store,
                None,
                &Actor::cli(),
                crate::banpolicy::Asker::Host,
                t,
                secs,
                reason,
                *force,
            )
            .await?;
            println!("{t} banned until {}", date(ban.until as i64));
        }
        BanCmd::Remove { target: t } => {
            let t = target(t)?;
            if !ops::bans::remove(&store, None, &Actor::cli(), &t).await? {
                anyhow::bail!("no ban on {t}");
            }
            println!("ban on {t} lifted (the server applies it within 2 seconds)");
        }
        BanCmd::Clear => {
            let n = ops::bans::clear(&store, &Actor::cli()).await?;
            println!("{n} ban(s) lifted");
        }
    }
    store.close().await;
    Ok(())
}

pub async fn audit_log(cfg: &Config, cmd: &crate::cli::AuditLogCmd) -> Result<()> {
    use crate::cli::AuditLogCmd;
    let store = open_store(cfg).await?;
    match cmd {
        AuditLogCmd::Verify { checkpoint } => {
            let rows = match store.verify_audit().await? {
                Ok(n) => n,
                Err(e) => {
                    store.close().await;
                    anyhow::bail!("audit log tampered with: {e}");
                }
            };
            // Checkpoints kept outside the database: the file given, else the configured one.
            let file = checkpoint
                .clone()
                .or_else(|| cfg.audit.checkpoint_file.as_ref().map(|f| cfg.path(f)));
            let mut checked = 0;
            if let Some(f) = file.filter(|f| checkpoint.is_some() || f.exists()) {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading the checkpoints {}", f.display()))?;
                let mut cps = Vec::new();
                for (i, l) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    cps.push(
                        serde_json::from_str::<postern_store::audit::Checkpoint>(l).with_context(
                            || format!("{} line {}: not a checkpoint", f.display(), i + 1),
                        )?,
                    );
                }
                match store.verify_checkpoints(&cps).await? {
                    Ok(n) => checked = n,
                    Err(e) => {
                        store.close().await;
                        anyhow::bail!("audit log tampered with: {e}");
                    }
                }
            }
            println!("audit log intact: {rows} row(s) checked, {checked} checkpoint(s) matched");
        }
        AuditLogCmd::Checkpoint => match crate::serve::write_checkpoint(cfg, &store).await {
            Some(line) => println!("{line}"),
            None => anyhow::bail!(
                "no checkpoint written: the audit log is empty or its key could not be opened"
            ),
        },
        AuditLogCmd::Query {
            account,
            ip,
            since,
            result,
            limit,
            json,
        } => {
            let since = match since {
                None => None,
                Some(s) if s.chars().all(|c| c.is_ascii_digit()) && s.len() > 6 => {
                    Some(s.parse::<i64>()?)
                }
                Some(s) => Some(postern_store::now() - parse_duration(s)? as i64),
            };
            let rows = store
                .query_audit(&postern_store::audit::AuditQuery {
                    account: account.clone(),
                    ip: ip.clone(),
                    since,
                    failed_only: result.as_deref() == Some("failed"),
                    success_only: result.as_deref() == Some("ok"),
                    limit: *limit,
                })
                .await?;
            for r in rows {
                if *json {
                    let o = serde_json::json!({
                        "id": r.id, "ts": r.ts, "time": date(r.ts), "event": r.event,
                        "protocol": r.protocol, "ip": r.ip, "username": r.username,
                        "account_id": r.account_id, "mechanism": r.mechanism, "tls": r.tls, "actor": r.actor,
                        "result": r.result, "reason": r.reason,
                    });
                    println!("{o}");
                } else {
                    println!(
                        "{}  {:<6} {:<7} {:<11} {:<15} {:<30} {}",
                        date(r.ts),
                        r.event,
                        r.result,
                        r.protocol.unwrap_or_default(),
                        r.ip.unwrap_or_default(),
                        r.username.unwrap_or_default(),
                        r.reason.unwrap_or_default()
                    );
                }
            }
        }
    }
    store.close().await;
    Ok(())
}

/// Creates an app password (shared by the CLI and the API); returns its normalised scope and
/// the secret, which is shown once. Audited as `app_password_created`.
pub async fn create_app_password(
    store: &postern_store::Store,
    actor: &crate::actor::Actor,
    a: &EmailAddress,
    name: &str,
    protocols: &[String],
    expires_in: Option<u64>,
    from: &[String],
) -> Result<(Vec<String>, Vec<String>, Option<i64>, secrecy::SecretString)> {
    let info = store.account(a).await?;
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        bail!("invalid app password name {name:?}");
    }
    let mut protos: Vec<String> = Vec::new();
    for p in protocols.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        if !matches!(p, "smtp" | "imap" | "pop3") {
            bail!("unknown protocol {p:?} (use smtp, imap, pop3)");
        }
        if !protos.iter().any(|x| x == p) {
            protos.push(p.to_owned());
        }
    }
    if protos.is_empty() {
        bail!("no protocol given (use smtp, imap, pop3)");
    }
    let nets = crate::apps::check_networks(from)?;
    let expires_at =
        expires_in.map(|e| postern_store::now().saturating_add(e.min(i64::MAX as u64 / 2) as i64));
    let secret = password::generate();
    let digest = postern_auth::app_password_digest(secret.expose_secret());
    store
        .add_app_password(info.id, name, &digest, &protos, &nets, expires_at)
        .await?;
    crate::actor::record(
        store,
        actor,
        "app_password_created",
        a.as_str(),
        &format!("name={name} protocols={}", protos.join(",")),
    )
    .await?;
    Ok((protos, nets, expires_at, secret))
}

pub async fn app_password(cfg: &Config, cmd: &crate::cli::AppPasswordCmd) -> Result<()> {
    use crate::cli::AppPasswordCmd;
    let store = open_store(cfg).await?;
    match cmd {
        AppPasswordCmd::Create {
            address: a,
            name,
            protocols,
            expires,
            from,
            json,
        } => {
            let a = address(a)?;
            let protos: Vec<String> = protocols.split(',').map(str::to_owned).collect();
            let expires_in = expires.as_deref().map(parse_duration).transpose()?;
            let (protos, nets, expires_at, secret) =
                create_app_password(&store, &Actor::cli(), &a, name, &protos, expires_in, from)
                    .await?;
            if *json {
                let o = serde_json::json!({
                    "address": a.as_str(), "name": name, "secret": secret.expose_secret(),
                    "protocols": protos, "networks": nets, "expires_at": expires_at,
                });
                println!("{o}");
            } else {
                println!("app password {name:?} for {a} (shown once; only a digest is stored):");
                println!("  {}", secret.expose_secret());
                println!(
                    "  protocols: {}  networks: {}  expires: {}",
                    protos.join(","),
                    if nets.is_empty() {
                        "any".to_owned()
                    } else {
                        nets.join(",")
                    },
                    expires_at.map_or("never".to_owned(), date)
                );
            }
        }
        AppPasswordCmd::List { address: a } => {
            let a = address(a)?;
            let info = store.account(&a).await?;
            let list = store.list_app_passwords(info.id).await?;
            if list.is_empty() {
                println!("no app passwords for {a}");
            }
            for p in list {
                println!(
                    "{:<20} {:<15} from {:<18} expires {:<24} last used {}",
                    p.name,
                    p.protocols.join(","),
                    if p.networks.is_empty() {
                        "any".to_owned()
                    } else {
                        p.networks.join(",")
                    },
                    p.expires_at.map_or("never".to_owned(), date),
                    match (p.last_used_at, p.last_used_ip) {
                        (Some(t), Some(ip)) => format!("{} from {ip}", date(t)),
                        _ => "never".to_owned(),
                    }
                );
            }
        }
        AppPasswordCmd::Revoke { address: a, name } => {
            let a = address(a)?;
            let info = store.account(&a).await?;
            store.revoke_app_password(info.id, name).await?;
            crate::actor::record(
                &store,
                &Actor::cli(),
                "app_password_revoked",
                a.as_str(),
                &format!("name={name}"),
            )
            .await?;
            println!("app password {name:?} of {a} revoked");
        }
    }
    store.close().await;
    Ok(())
}
