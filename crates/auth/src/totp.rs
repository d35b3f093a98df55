//! The second factor's credential logic (TOTP, RFC 6238, and recovery codes), without storage:
//! the binary keeps seeds sealed under the master key and the last accepted time step in the
//! store, and asks this module what a code is worth.
//!
//! Codes: SHA-1, 6 digits, 30-second steps, one step of skew either way (RFC 6238 5.2). A code is
//! accepted once: only a step later than the last accepted one counts ([`accepted_step`]).
//! Recovery codes: ten of 12 characters from an alphabet without look-alikes (about 60 bits
//! each), compared in a normalised form.

use rand::seq::IndexedRandom;
use totp_rs::{Algorithm, Builder, Secret, Totp};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
#[error("TOTP setup failed: {0}")]
pub struct TotpError(String);

fn totp(seed: &[u8], issuer: &str, account: &str) -> Result<Totp, TotpError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(Secret::from(seed.to_vec()))
        .with_issuer(Some(issuer.replace(':', "")))
        .with_account_name(account.replace(':', ""))
        .build()
        .map_err(|e| TotpError(e.to_string()))
}

/// A new seed: 160 random bits.
pub fn new_seed() -> Zeroizing<[u8; 20]> {
    Zeroizing::new(rand::random())
}

/// The otpauth URI and the base32 secret an authenticator app needs.
pub fn enrolment(
    seed: &[u8],
    issuer: &str,
    account: &str,
) -> Result<(Zeroizing<String>, Zeroizing<String>), TotpError> {
    let t = totp(seed, issuer, account)?;
    let uri = t.to_url().map_err(|e| TotpError(e.to_string()))?;
    Ok((Zeroizing::new(uri), Zeroizing::new(t.secret().to_base32())))
}

/// The time step `code` is valid for at `now` (Unix seconds), if it is later than
/// `last_step` (the last accepted one): a code is used once.
pub fn accepted_step(seed: &[u8], code: &str, now: u64, last_step: i64) -> Option<i64> {
    let t = totp(seed, "postern", "check").ok()?;
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let step = t.check(&code, now)? as i64;
    (step > last_step).then_some(step)
}

/// A recovery code as it is compared: letters and digits only, lower case.
pub fn normalise_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Ten recovery codes of 12 characters (about 60 bits each) in groups of four.
pub fn new_recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..10)
        .map(|_| {
            let s: String = (0..12)
                .map(|_| *ALPHABET.choose(&mut rng).expect("alphabet is not empty") as char)
                .collect();
            format!("{}-{}-{}", &s[0..4], &s[4..8], &s[8..12])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_used_once_and_recovery_codes_normalise() {
        let seed = [7u8; 20];
        let t = totp(&seed, "x", "y").unwrap();
        let now = 1_796_000_000u64;
        let code = t.generate(now).to_string();
        let step = accepted_step(&seed, &code, now, 0).unwrap();
        assert_eq!(accepted_step(&seed, &code, now, step), None, "not twice");
        assert_eq!(accepted_step(&seed, "000000x", now, 0), None);
        // one step of skew either way
        assert!(accepted_step(&seed, &t.generate(now - 30).to_string(), now, 0).is_some());
        assert!(accepted_step(&seed, &t.generate(now - 90).to_string(), now, 0).is_none());
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), 10);
        assert_eq!(
            normalise_recovery_code(&codes[0].to_uppercase()),
            normalise_recovery_code(&codes[0])
        );
        let (uri, secret) = enrolment(&seed, "mail.x:test", "a@x.test").unwrap();
        assert!(uri.starts_with("otpauth://totp/") && !secret.is_empty());
    }
}
