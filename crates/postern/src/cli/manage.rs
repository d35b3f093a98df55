//! Everyday administration from the host shell: domains, accounts, aliases, app passwords, the
//! queue, bans and the audit log. Every change goes through `ops` (validated and audited there).

use anyhow::{bail, Context, Result};
use postern_config::Config;
use postern_types::{Domain, EmailAddress};
use secrecy::ExposeSecret;

use super::args::{AliasCmd, DomainCmd, QueueCmd, UserCmd};
use crate::actor::Actor;
use crate::datadir::open_store;
use crate::ops;
use crate::password;
use crate::util::parse_duration;

fn date(t: i64) -> String {
    crate::util::date(t)
}

fn address(s: &str) -> Result<EmailAddress> {
    EmailAddress::parse(s).with_context(|| format!("invalid address {s:?}"))
}

fn domain_arg(s: &str) -> Result<Domain> {
    Domain::parse(s).with_context(|| format!("invalid domain {s:?}"))
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

async fn client_cert(
    store: &postern_store::Store,
    actor: &Actor,
    cmd: &super::args::CertCmd,
) -> Result<()> {
    use super::args::CertCmd;
    match cmd {
        CertCmd::Add {
            address: a,
            file,
            name,
        } => {
            let a = address(a)?;
            let cert = postern_net::tls::ClientCert::from_pem_file(file)?;
            let name = name
                .clone()
                .unwrap_or_else(|| format!("cert-{}", &cert.key_fingerprint[..12]));
            ops::client_certs::add(store, actor, &a, &name, &cert).await?;
            println!(
                "certificate {name:?} registered to {a} (key SHA-256 {}, valid until {}); it logs in with SASL EXTERNAL",
                cert.key_fingerprint,
                date(cert.not_after)
            );
        }
        CertCmd::List { address: a } => {
            let a = address(a)?;
            let info = store.account(&a).await?;
            let list = store.list_client_certs(info.id).await?;
            if list.is_empty() {
                println!("no client certificates for {a}");
            }
            for c in list {
                println!(
                    "{:<20} {}  until {}  last used {}",
                    c.name,
                    c.fingerprint,
                    date(c.not_after),
                    c.last_used_at.map_or("never".to_owned(), |t| format!(
                        "{} from {}",
                        date(t),
                        c.last_used_ip.unwrap_or_default()
                    ))
                );
            }
        }
        CertCmd::Remove { address: a, name } => {
            let a = address(a)?;
            ops::client_certs::remove(store, actor, &a, name).await?;
            println!("certificate {name:?} of {a} removed");
        }
    }
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
            super::twofactor::cli(cfg, &store, c).await?;
        }
        UserCmd::Cert(c) => client_cert(&store, &actor, c).await?,
        UserCmd::Signins { address: a } => {
            let a = address(a)?;
            let info = store.account(&a).await?;
            let list = store.signin_sources(info.id).await?;
            if list.is_empty() {
                println!("no recorded sign-ins for {a}");
            }
            for (network, client, first, last) in list {
                println!(
                    "{network:<20} {client:<22} first {}  last {}",
                    date(first),
                    date(last)
                );
            }
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
        UserCmd::Quota { address: a, size } => {
            let a = address(a)?;
            if let Some(size) = size {
                ops::accounts::set_quota(&store, &actor, &a, size).await?;
            }
            let info = store.account(&a).await?;
            let (used, limit) = store.quota(info.id).await?;
            let mib = |b: u64| {
                if b < 1 << 20 {
                    format!("{:.1} KiB", b as f64 / 1024.0)
                } else {
                    format!("{:.1} MiB", b as f64 / 1048576.0)
                }
            };
            match limit {
                Some(l) => println!(
                    "{a}: {} of {} used ({}%)",
                    mib(used),
                    mib(l),
                    used.saturating_mul(100) / l.max(1)
                ),
                None => println!("{a}: {} used, no quota", mib(used)),
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

pub async fn ban(cfg: &Config, cmd: &super::args::BanCmd) -> Result<()> {
    use super::args::BanCmd;
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

pub async fn audit_log(cfg: &Config, cmd: &super::args::AuditLogCmd) -> Result<()> {
    use super::args::AuditLogCmd;
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

pub async fn app_password(cfg: &Config, cmd: &super::args::AppPasswordCmd) -> Result<()> {
    use super::args::AppPasswordCmd;
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
            let (protos, nets, expires_at, secret) = ops::app_passwords::create(
                &store,
                &Actor::cli(),
                &a,
                name,
                &protos,
                expires_in,
                from,
            )
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
            ops::app_passwords::revoke(&store, &Actor::cli(), &a, name).await?;
            println!("app password {name:?} of {a} revoked");
        }
    }
    store.close().await;
    Ok(())
}

pub async fn reports(cfg: &Config, cmd: &super::args::ReportsCmd) -> Result<()> {
    use super::args::ReportsCmd;
    let store = open_store(cfg).await?;
    let today = postern_store::now().div_euclid(86400);
    match cmd {
        ReportsCmd::Pending { json } => {
            let mut out = Vec::new();
            for (day, domain) in store
                .reports_pending(postern_store::dmarc::ReportKind::Dmarc, i64::MAX)
                .await?
            {
                let rows = store.dmarc_rows(day, &domain).await?;
                let messages: i64 = rows.records.iter().map(|(_, c)| c).sum();
                out.push(serde_json::json!({
                    "kind": "dmarc",
                    "day": chrono::DateTime::from_timestamp(day * 86400, 0)
                        .map(|d| d.format("%Y-%m-%d").to_string()),
                    "domain": domain, "rows": rows.records.len(), "messages": messages, "rua": rows.rua,
                }));
            }
            for (day, domain) in store
                .reports_pending(postern_store::dmarc::ReportKind::Tls, i64::MAX)
                .await?
            {
                let rows = store.tlsrpt_rows(day, &domain).await?;
                let sessions: i64 = rows.iter().map(|r| r.count).sum();
                out.push(serde_json::json!({
                    "kind": "tls",
                    "day": chrono::DateTime::from_timestamp(day * 86400, 0)
                        .map(|d| d.format("%Y-%m-%d").to_string()),
                    "domain": domain, "rows": rows.len(), "messages": sessions, "rua": [],
                }));
            }
            if *json {
                println!("{}", serde_json::Value::Array(out));
            } else if out.is_empty() {
                println!("no DMARC or TLS results waiting for a report");
            } else {
                for o in out {
                    println!(
                        "{}\t{}\t{}\t{} rows\t{} messages/sessions\t{}",
                        o["kind"].as_str().unwrap_or("?"),
                        o["day"].as_str().unwrap_or("?"),
                        o["domain"].as_str().unwrap_or("?"),
                        o["rows"],
                        o["messages"],
                        o["rua"]
                    );
                }
            }
        }
        ReportsCmd::Send {
            include_today,
            json,
        } => {
            let dns = postern_dns::Dns::new(&cfg.dns).context("setting up the DNS resolver")?;
            let until = if *include_today { today + 1 } else { today };
            let sent = ops::reports::send(&store, &dns, cfg, &Actor::cli(), until).await?;
            if *json {
                println!("{}", serde_json::to_string(&sent)?);
            } else {
                for (what, s) in [("DMARC", &sent.dmarc), ("TLS", &sent.tls)] {
                    println!(
                        "{} {what} reports sent to {} recipients ({} dropped: no address accepts them)",
                        s.reports, s.recipients, s.dropped
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn incident(cfg: &Config, cmd: &super::args::IncidentCmd) -> Result<()> {
    use super::args::IncidentCmd;
    let store = open_store(cfg).await?;
    let actor = Actor::cli();
    match cmd {
        IncidentCmd::Lock {
            address: a,
            reason,
            json,
        } => {
            let a = address(a)?;
            let e = ops::incident::lock(&store, &actor, &a, reason).await?;
            if *json {
                println!("{}", serde_json::to_string(&e)?);
            } else {
                println!(
                    "{a} locked: logins off, password to be replaced, {} app passwords revoked, {} client certificates removed, second factor {}, {} queued messages held; its live sessions end within a second",
                    e.app_passwords_revoked,
                    e.client_certs_removed,
                    if e.second_factor_removed { "removed (re-enrolment needed)" } else { "none" },
                    e.queued_messages_held
                );
                println!(
                    "next: `postern incident timeline {a}`, then `postern incident unlock {a}`"
                );
            }
        }
        IncidentCmd::Timeline {
            address: a,
            since,
            json,
        } => {
            let a = address(a)?;
            store.account(&a).await?;
            let since = match since {
                Some(s) => Some(postern_store::now() - parse_duration(s)? as i64),
                None => None,
            };
            let rows = ops::incident::timeline(&store, &a, since).await?;
            if *json {
                let v: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "ts": r.ts, "event": r.event, "protocol": r.protocol, "ip": r.ip,
                            "mechanism": r.mechanism, "tls": r.tls, "result": r.result,
                            "reason": r.reason, "actor": r.actor,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else if rows.is_empty() {
                println!("no events for {a}");
            } else {
                for r in &rows {
                    println!("{}", ops::incident::describe(r));
                }
            }
        }
        IncidentCmd::Unlock {
            address: a,
            password_stdin,
        } => {
            let a = address(a)?;
            let pw = password::read_new(*password_stdin)?;
            ops::incident::unlock(cfg, &store, &actor, &a, &pw).await?;
            println!("{a} unlocked with a new password; held mail stays in the queue (`postern queue list`)");
        }
    }
    Ok(())
}
