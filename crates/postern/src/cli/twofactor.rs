//! `postern user 2fa ...`: a mail account's second factor from the host shell.

use anyhow::{bail, Context, Result};
use postern_config::Config;
use postern_store::Store;

use crate::keys::Keys;
use crate::twofactor::*;
use zeroize::Zeroizing;

fn read_code(prompt: &str) -> Result<Option<Zeroizing<String>>> {
    use std::io::{BufRead, Write};
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = Zeroizing::new(String::new());
    let n = std::io::stdin().lock().read_line(&mut line)?;
    let code = Zeroizing::new(line.trim().to_owned());
    Ok((n > 0 && !code.is_empty()).then_some(code))
}

fn print_recovery(codes: &[String]) {
    println!("Two-factor authentication is on. Recovery codes (shown once; each works once):");
    for c in codes {
        println!("  {c}");
    }
    println!(
        "Mail clients now need app passwords: `postern app-password create ADDRESS --name NAME`."
    );
}

/// `postern user 2fa ...`
pub async fn cli(cfg: &Config, store: &Store, cmd: &super::args::TwoFaCmd) -> Result<()> {
    use super::args::TwoFaCmd;
    use crate::actor::{record, Actor};
    let actor = Actor::cli();
    let account = |a: &str| {
        let a = a.to_owned();
        async move {
            let addr = postern_types::EmailAddress::parse(&a)
                .with_context(|| format!("invalid address {a:?}"))?;
            let info = store.account(&addr).await?;
            Ok::<_, anyhow::Error>((
                postern_store::totp::account_owner(info.id),
                addr.as_str().to_owned(),
            ))
        }
    };
    let key = Keys::load(cfg, store).await?;
    match cmd {
        TwoFaCmd::Enroll { address, json } => {
            let (owner, addr) = account(address).await?;
            let e = begin(store, &key, &owner, &cfg.server.hostname, &addr).await?;
            if *json {
                println!(
                    "{}",
                    serde_json::json!({"uri": e.uri.as_str(), "secret": e.secret_base32.as_str()})
                );
            } else {
                println!("Scan this with an authenticator app (or enter the secret by hand):");
                println!("{}", e.qr()?);
                println!("{}", e.uri.as_str());
                println!("secret: {}", e.secret_base32.as_str());
            }
            {
                use std::io::Write;
                std::io::stdout().flush()?;
            }
            match read_code("Code from the app: ")? {
                None => {
                    println!("Enrolment pending: finish it with `postern user 2fa confirm {addr}`.")
                }
                Some(code) => {
                    let codes = confirm(store, &key, &owner, &code).await?;
                    record(store, &actor, "2fa_enabled", &addr, "").await?;
                    print_recovery(&codes);
                }
            }
        }
        TwoFaCmd::Confirm { address } => {
            let (owner, addr) = account(address).await?;
            let Some(code) = read_code("Code from the app: ")? else {
                bail!("no code given");
            };
            let codes = confirm(store, &key, &owner, &code).await?;
            record(store, &actor, "2fa_enabled", &addr, "").await?;
            print_recovery(&codes);
        }
        TwoFaCmd::Status { address } => {
            let (owner, addr) = account(address).await?;
            match store.second_factor(&owner).await? {
                Some(sf) if sf.confirmed => println!(
                    "{addr}: two-factor authentication on; {} recovery code(s) left",
                    store.recovery_codes_left(&owner).await?
                ),
                Some(_) => println!("{addr}: enrolment pending (not yet confirmed)"),
                None => println!("{addr}: two-factor authentication off"),
            }
        }
        TwoFaCmd::Disable {
            address,
            admin_override,
            reason,
        } => {
            let (owner, addr) = account(address).await?;
            let detail = if *admin_override {
                let Some(r) = reason.as_deref().filter(|r| !r.trim().is_empty()) else {
                    bail!("--admin-override needs --reason (it goes to the audit log)");
                };
                format!("admin override: {r}")
            } else {
                let Some(code) = read_code("Current code or a recovery code: ")? else {
                    bail!("no code given (or use --admin-override --reason ...)");
                };
                if verify(store, &key, &owner, &code).await?.is_none() {
                    record(store, &actor, "2fa_code_refused", &addr, "disable").await?;
                    bail!("the code is not valid");
                }
                "with a valid code".to_owned()
            };
            if !store.remove_second_factor(&owner).await? {
                bail!("two-factor authentication is not on for {addr}");
            }
            record(store, &actor, "2fa_disabled", &addr, &detail).await?;
            println!("two-factor authentication off for {addr}; the password works for mail again");
        }
        TwoFaCmd::RecoveryCodes { address } => {
            let (owner, addr) = account(address).await?;
            let Some(code) = read_code("Current code: ")? else {
                bail!("no code given");
            };
            if verify(store, &key, &owner, &code).await? != Some(Proof::Totp) {
                bail!("the code is not valid");
            }
            let codes = new_recovery_codes();
            let digests = recovery_digests(&key, &owner, &codes).await?;
            store.confirm_second_factor(&owner, &digests).await?;
            record(store, &actor, "2fa_recovery_codes_renewed", &addr, "").await?;
            print_recovery(&codes);
        }
    }
    Ok(())
}
