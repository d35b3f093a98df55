//! Reading, generating and checking passwords for the command line.

use std::io::{IsTerminal, Read};

use anyhow::{bail, Context, Result};
use postern_auth::{BreachedList, PasswordPolicy};
use postern_config::Config;
use rand::seq::IndexedRandom;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// The policy from `[password_policy]`.
pub fn policy(cfg: &Config) -> Result<PasswordPolicy> {
    let p = &cfg.password_policy;
    let breached = match &p.breached_passwords_file {
        Some(path) => {
            let path = cfg.path(path);
            Some(BreachedList::open(&path).with_context(|| {
                format!("password_policy.breached_passwords_file {}", path.display())
            })?)
        }
        None => None,
    };
    Ok(PasswordPolicy {
        min_length: p.min_length,
        min_score: p.min_score,
        breached,
    })
}

/// Reads a new password: the first line of standard input with `--password-stdin`, else a prompt
/// (twice, no echo) when standard input is a terminal.
pub fn read_new(from_stdin: bool) -> Result<SecretString> {
    if from_stdin {
        let mut buf = Zeroizing::new(String::new());
        std::io::stdin()
            .read_to_string(&mut buf)
            .context("reading the password from standard input")?;
        let line = buf.split(['\n', '\r']).next().unwrap_or("");
        if line.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(SecretString::from(line.to_owned()));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password given: pipe it with --password-stdin (passwords are never accepted as arguments)");
    }
    let first = Zeroizing::new(
        rpassword::prompt_password("New password: ").context("reading the password")?,
    );
    let second =
        Zeroizing::new(rpassword::prompt_password("Repeat it: ").context("reading the password")?);
    if *first != *second {
        bail!("the two passwords differ");
    }
    if first.is_empty() {
        bail!("empty password");
    }
    Ok(SecretString::from(first.to_string()))
}

/// A random password of 5 groups of 5 characters from a 54-symbol alphabet (about 143 bits),
/// without look-alike characters.
pub fn generate() -> SecretString {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    let groups: Vec<String> = (0..5)
        .map(|_| {
            (0..5)
                .map(|_| *ALPHABET.choose(&mut rng).expect("alphabet is not empty") as char)
                .collect()
        })
        .collect();
    SecretString::from(groups.join("-"))
}

/// Checks the policy and hashes the password with the configured argon2id parameters.
pub fn check_and_hash(cfg: &Config, password: &SecretString, address: &str) -> Result<String> {
    let policy = policy(cfg)?;
    if let Err(v) = policy.check(password.expose_secret(), address) {
        bail!("password refused: {v}");
    }
    hash(cfg, password)
}

pub fn hash(cfg: &Config, password: &SecretString) -> Result<String> {
    use postern_auth::PasswordHasher;
    let a = &cfg.auth;
    let hasher = postern_auth::Argon2Hasher::new(
        a.argon2_memory_kib,
        a.argon2_iterations,
        a.argon2_parallelism,
    )?;
    Ok(hasher.hash(password.expose_secret().as_bytes())?)
}

/// True if `password` matches any of the PHC strings (the no-reuse check).
pub fn matches_any(password: &SecretString, hashes: &[String]) -> bool {
    use postern_auth::PasswordHasher;
    // Verification reads the parameters from each PHC string; these only build the hasher.
    let Ok(hasher) = postern_auth::Argon2Hasher::new(19456, 2, 1) else {
        return false;
    };
    hashes
        .iter()
        .any(|h| hasher.verify(password.expose_secret().as_bytes(), h))
}

/// Creates an account after the checks the CLI and the API share: the domain is served here,
/// the address is free, the password passes the policy.
pub async fn create_account(
    cfg: &Config,
    store: &postern_store::Store,
    a: &postern_types::EmailAddress,
    pw: &SecretString,
) -> Result<i64> {
    if !store.is_local_domain(a.domain()).await? {
        anyhow::bail!(
            "domain {} is not served here; add it first with `postern domain add {}`",
            a.domain(),
            a.domain()
        );
    }
    if store.resolve_recipient(a).await?.is_some() {
        anyhow::bail!("{a} already exists (as an account or an alias)");
    }
    let (cfg2, pw2, addr) = (cfg.clone(), pw.clone(), a.as_str().to_owned());
    let hash = tokio::task::spawn_blocking(move || check_and_hash(&cfg2, &pw2, &addr)).await??;
    let id = store.add_account(a, &hash).await?;
    account_scram(cfg, store, id, &hash, pw).await?;
    Ok(id)
}

/// With `[auth] scram_for_account_passwords`, the SCRAM verifier of a password just set (for
/// this hash only: a concurrent change wins).
async fn account_scram(
    cfg: &Config,
    store: &postern_store::Store,
    id: i64,
    hash: &str,
    pw: &SecretString,
) -> Result<()> {
    if cfg.auth.scram_for_account_passwords {
        let cred = postern_auth::StoredCredential::account(id, "", hash);
        store
            .make_scram_verifier(&cred, postern_auth::ScramTarget::Account, pw)
            .await?;
    }
    Ok(())
}

/// Sets a new account password: policy, then no reuse of the last N, then stored with history.
pub async fn change_account_password(
    cfg: &Config,
    store: &postern_store::Store,
    a: &postern_types::EmailAddress,
    pw: &SecretString,
) -> Result<()> {
    store.account(a).await?;
    let n = cfg.password_policy.history;
    let recent = if n > 0 {
        store.recent_password_hashes(a, n).await?
    } else {
        Vec::new()
    };
    let (cfg2, pw2, addr) = (cfg.clone(), pw.clone(), a.as_str().to_owned());
    let hash = tokio::task::spawn_blocking(move || -> Result<String> {
        let hash = check_and_hash(&cfg2, &pw2, &addr)?;
        if matches_any(&pw2, &recent) {
            anyhow::bail!("password refused: it is one of the last {n} passwords of this account");
        }
        Ok(hash)
    })
    .await??;
    store.set_password_keeping(a, &hash, n).await?;
    account_scram(cfg, store, store.account(a).await?.id, &hash, pw).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_pass_the_default_policy() {
        let p = PasswordPolicy::default();
        for _ in 0..20 {
            let pw = generate();
            assert_eq!(pw.expose_secret().len(), 29);
            p.check(pw.expose_secret(), "demo@example.test").unwrap();
        }
    }
}
