//! Second factor (TOTP, RFC 6238): enrolment, confirmation, verification and recovery codes, on
//! top of the credential logic in `postern_auth::totp` (this file keeps the sealed seeds, the last
//! accepted step and the recovery-code digests in the store).
//!
//! Seeds are 160 random bits, sealed under the master key (purpose `totp:OWNER`) and opened only
//! to check a code. A code is accepted once: the store keeps the last accepted time step and
//! refuses that step or an earlier one (RFC 6238 5.2). Ten recovery codes are shown once at
//! confirmation and stored as keyed digests (HMAC under the master key), each usable once.
//! With a confirmed second factor, an account's password no longer opens SMTP, IMAP or POP3:
//! only its app passwords do (enforced by the auth core).

use anyhow::{bail, Result};
use postern_store::Store;

use crate::keys::Keys;
use postern_auth::totp as tf;
use zeroize::Zeroizing;

fn purpose(owner: &str) -> String {
    format!("totp:{owner}")
}

/// What the user needs to add the account to an authenticator app.
pub struct Enrolment {
    pub uri: Zeroizing<String>,
    pub secret_base32: Zeroizing<String>,
}

impl Enrolment {
    /// The otpauth URI as a QR code for a terminal (Unicode half blocks).
    pub fn qr(&self) -> Result<String> {
        let code = qrcode::QrCode::new(self.uri.as_bytes())?;
        Ok(code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build())
    }
}

/// Starts (or restarts) an enrolment: a new seed, sealed and stored unconfirmed.
pub async fn begin(
    store: &Store,
    key: &Keys,
    owner: &str,
    issuer: &str,
    account: &str,
) -> Result<Enrolment> {
    let seed = tf::new_seed();
    let (uri, secret_base32) = tf::enrolment(&seed[..], issuer, account)?;
    store
        .begin_second_factor(owner, &key.seal(&purpose(owner), &seed[..]).await?)
        .await
        .map_err(|e| match e {
            postern_store::StoreError::Exists(_) => {
                anyhow::anyhow!("two-factor authentication is already on; disable it first")
            }
            e => e.into(),
        })?;
    Ok(Enrolment { uri, secret_base32 })
}

/// Checks a TOTP code against the stored seed (confirmed or pending) and uses up its time step.
async fn check_code(store: &Store, key: &Keys, owner: &str, code: &str) -> Result<bool> {
    let Some(sf) = store.second_factor(owner).await? else {
        return Ok(false);
    };
    let seed = key
        .open(
            &purpose(owner),
            &sf.sealed_secret,
            "check a TOTP code",
            &crate::actor::Actor::system("totp"),
        )
        .await?;
    let now = postern_store::now().max(0) as u64;
    match tf::accepted_step(&seed, code, now, sf.last_step) {
        Some(step) => Ok(store.accept_totp_step(owner, step).await?),
        None => Ok(false),
    }
}

async fn recovery_digest(key: &Keys, owner: &str, code: &str) -> Result<String> {
    let norm = tf::normalise_recovery_code(code);
    Ok(hex::encode(
        key.mac("recovery-code", format!("{owner}:{norm}").as_bytes())
            .await?,
    ))
}

pub(crate) async fn recovery_digests(
    key: &Keys,
    owner: &str,
    codes: &[String],
) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(codes.len());
    for c in codes {
        out.push(recovery_digest(key, owner, c).await?);
    }
    Ok(out)
}

/// Ten new recovery codes (shown once).
pub(crate) fn new_recovery_codes() -> Vec<String> {
    tf::new_recovery_codes()
}

/// Confirms a pending enrolment with a code from the app; returns the recovery codes (shown once).
pub async fn confirm(store: &Store, key: &Keys, owner: &str, code: &str) -> Result<Vec<String>> {
    match store.second_factor(owner).await? {
        None => bail!("no enrolment in progress; start one with `2fa enroll`"),
        Some(sf) if sf.confirmed => bail!("two-factor authentication is already on"),
        Some(_) => {}
    }
    if !check_code(store, key, owner, code).await? {
        bail!("the code is not valid (check the device's clock, then try the next code)");
    }
    let codes = new_recovery_codes();
    let digests = recovery_digests(key, owner, &codes).await?;
    store.confirm_second_factor(owner, &digests).await?;
    Ok(codes)
}

/// Replaces the recovery codes of a confirmed second factor with ten new ones (shown once).
pub async fn renew_recovery_codes(store: &Store, key: &Keys, owner: &str) -> Result<Vec<String>> {
    match store.second_factor(owner).await? {
        Some(sf) if sf.confirmed => {}
        _ => bail!("two-factor authentication is not on"),
    }
    let codes = new_recovery_codes();
    let digests = recovery_digests(key, owner, &codes).await?;
    store.confirm_second_factor(owner, &digests).await?;
    Ok(codes)
}

/// How a second factor was proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    Totp,
    RecoveryCode,
}

/// Verifies a TOTP code or, failing that, a recovery code of a confirmed second factor. Each
/// code works once.
pub async fn verify(store: &Store, key: &Keys, owner: &str, code: &str) -> Result<Option<Proof>> {
    match store.second_factor(owner).await? {
        Some(sf) if sf.confirmed => {}
        _ => return Ok(None),
    }
    let digits = code.trim();
    if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(check_code(store, key, owner, digits)
            .await?
            .then_some(Proof::Totp));
    }
    let d = recovery_digest(key, owner, code).await?;
    Ok(store
        .use_recovery_code(owner, &d)
        .await?
        .then_some(Proof::RecoveryCode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_distinct_and_normalised() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), 10);
        assert_eq!(codes[0].len(), 14);
        assert_ne!(codes[0], codes[1]);
        assert_eq!(
            tf::normalise_recovery_code(" ABCD-efgh JKMN "),
            "abcdefghjkmn"
        );
    }
}
