//! `postern init`, `demo` and `check-config`: making a data directory, a throw-away server, and
//! checking what `serve` would load.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use postern_config::{Config, LogFormat};
use postern_types::{Domain, EmailAddress};
use secrecy::ExposeSecret;

use crate::datadir::open_store;
use crate::password;

fn date(t: i64) -> String {
    crate::util::date(t)
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
    database: Option<(&str, Option<&str>)>,
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
    let mut text = postern_config::initial_config_text(&hostname, ip, port_offset);
    if let Some(p) = database.and_then(|(_, p)| p) {
        password_reference(p, "--database-password")?;
    }
    if let Some((url, password)) = database {
        let mut line = format!("database = {}", toml_string(url));
        if let Some(p) = password {
            line.push_str(&format!("\ndatabase_password = {}", toml_string(p)));
        }
        let new = text.replacen("database = \"postern.db\"", &line, 1);
        anyhow::ensure!(
            new != text,
            "no [storage] database line in the initial configuration"
        );
        text = new;
    }
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
    // Nothing is sealed yet: the master key can still be changed in the configuration before
    // the first account (which seals the audit chain's key) without a rotation.
    let store = match crate::datadir::open_store_plain(&cfg).await {
        Ok(s) => s,
        Err(e) => {
            // leave nothing half made: a second try starts from scratch
            let _ = std::fs::remove_file(&config_path);
            return Err(e);
        }
    };
    // A shared database another node set up: this node joins it, and must use the master key
    // its data is sealed with, so none is generated here.
    let joined = !store.sealed_rows().await?.is_empty();
    if let Some(p) = cfg.secrets.master_key.strip_prefix("file:") {
        let path = cfg.path(Path::new(p));
        if !path.exists() && !joined {
            postern_secrets::MasterKey::generate_file(&path)?;
        }
        if !path.exists() && joined {
            println!(
                "This database is already set up: this node joins it. Copy the master key file {} \
                 from a node (or point [secrets] master_key at the reference the nodes share) before \
                 starting it.",
                path.display()
            );
        }
    }
    match store.add_domain(&domain).await {
        Ok(()) => {}
        Err(postern_store::StoreError::Exists(_)) if cfg.storage.postgres_url().is_some() => {}
        Err(e) => return Err(e.into()),
    }
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
        println!("  listener: {:<12} https://{a}/account", "user portal");
        println!("  listener: {:<12} https://{a}/admin", "console");
    }
    if let Some(a) = cfg.web.listen {
        println!(
            "  listener: {:<12} https://{a}/account (mail users only)",
            "web portal"
        );
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
    user: Option<&str>,
    database: Option<(&str, Option<&str>)>,
) -> Result<()> {
    let cfg = init(dir, domain, hostname, ip, port_offset, database).await?;
    if let Some(u) = user {
        set_server_user(&cfg.file, u)?;
        crate::privileges::give_to(dir, u)?;
        println!(
            "{} belongs to the user {u}; started as root, the server runs as {u}",
            dir.display()
        );
    } else if nix::unistd::Uid::effective().is_root() {
        println!(
            "Note: started as root, the server runs as the user `postern` (create it, and give it this \
             directory: chown -R postern: {}), or as another with `postern init --user NAME`",
            dir.display()
        );
    }
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

/// Writes `user = "NAME"` into the `[server]` table of a config file `init` made.
fn set_server_user(file: &Path, user: &str) -> Result<()> {
    let text = std::fs::read_to_string(file)?;
    let line = format!("user = {}", toml_string(user));
    let new = text.replacen("[server]\n", &format!("[server]\n{line}\n"), 1);
    anyhow::ensure!(new != text, "no [server] table in {}", file.display());
    std::fs::write(file, new)?;
    Ok(())
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
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
    let store = crate::datadir::open_store_plain(cfg).await?;
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
        None,
    )
    .await?;
    if nix::unistd::Uid::effective().is_root() {
        // a throw-away server on loopback; a real one never serves as root ([server] user)
        eprintln!(
            "postern: warning: the demo runs as root; `postern serve` would run as [server] user"
        );
    }
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
         Then: curl -k --user '{user}:<password>' 'imaps://127.0.0.1:{}/INBOX;MAILINDEX=2'   (1 is the new-sign-in notice)\n\
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

/// `postern migrate --from DIR --to postgres://…`: see [`postern_store::migrate`].
pub async fn migrate(from: &Path, to: &str, to_password: Option<&str>) -> Result<()> {
    let cfg = Config::load(&from.join("postern.toml"))?;
    if cfg.storage.postgres_url().is_some() {
        bail!("{} already uses PostgreSQL", from.display());
    }
    if !to.starts_with("postgres://") && !to.starts_with("postgresql://") {
        bail!("--to must be a postgres:// URL");
    }
    if url::Url::parse(to).is_ok_and(|u| u.password().is_some()) {
        bail!("--to must not carry a password: give --to-password env:NAME (or file:, vault:)");
    }
    let db = cfg.path(&cfg.storage.database);
    let blobs = cfg.path(&cfg.storage.blobs);
    // the server must be stopped: a copy of a database that changes is not a copy
    let lock = postern_store::lock::DataLock::exclusive(&db, "migrate")
        .map_err(|e| anyhow::anyhow!("{e}: stop the server of {} first", from.display()))?;
    let src = postern_store::Store::open(&db, &blobs)
        .await?
        .with_lock(lock);
    crate::keys::Keys::load(&cfg, &src)
        .await?
        .load_audit_key()
        .await?;
    match src.verify_audit().await? {
        Ok(_) => {}
        Err(e) => bail!(
            "the audit chain of {} does not verify ({e}); nothing was copied",
            from.display()
        ),
    }
    let password = match to_password {
        Some(r) => Some({
            password_reference(r, "--to-password")?;
            crate::keys::resolve_before_store(&cfg, r, "--to-password").await?
        }),
        None => None,
    };
    let dst = postern_store::Store::open_postgres(
        to,
        password.as_deref().map(String::as_str),
        2,
        &blobs,
        true,
        true,
    )
    .await
    .with_context(|| format!("opening {}", crate::datadir::redact_url(to)))?;
    let report = src.copy_to(&dst).await?;
    for (t, n) in &report.tables {
        println!("  {t}: {n} rows");
    }
    println!(
        "  bodies: {} (from {} into the database)",
        report.bodies,
        blobs.display()
    );
    // the chain, checked again where it now lives (its key is sealed by the same master key)
    let keys = crate::keys::Keys::load(&cfg, &dst).await?;
    keys.load_audit_key().await?;
    match dst.verify_audit().await? {
        Ok(n) => println!("audit chain: {n} rows, intact in PostgreSQL"),
        Err(e) => bail!("the audit chain does not verify in PostgreSQL: {e}"),
    }
    dst.close().await;
    src.close().await;
    println!(
        "Copied. To run this installation on PostgreSQL, set in {}:\n  [storage]\n  database = \"{}\"",
        cfg.file.display(),
        crate::datadir::redact_url(to)
    );
    if let Some(r) = to_password {
        println!("  database_password = \"{r}\"");
    }
    println!("The SQLite database and the blob directory are left as they were.");
    Ok(())
}

/// A password option must name where the password is (`env:`, `file:`, `vault:`): a password
/// itself on a command line is refused, and never repeated in the message (nor written to a file).
fn password_reference(r: &str, what: &str) -> Result<()> {
    if ["env:", "file:", "vault:"].iter().any(|p| r.starts_with(p)) {
        Ok(())
    } else {
        bail!("{what} takes a reference (env:NAME, file:PATH or vault:MOUNT/PATH#FIELD), never the password itself")
    }
}
