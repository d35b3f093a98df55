//! Passwords every cracker tries first, refused even when no breached-password file is configured.
//!
//! Two checks on top of zxcvbn's estimate:
//! * a built-in list of the 19,646 most common passwords (lower-cased, deduplicated), the list
//!   Django ships (`django/contrib/auth/common-passwords.txt.gz`, BSD-3-Clause, created by Royce
//!   Williams from breach corpora), embedded compressed (80 KB) and loaded on first use;
//! * the "word + year + punctuation" family (`Summer2024!!`, `Password1!`, `january2025`): the
//!   password stripped of leading and trailing digits and punctuation is a common password, a
//!   season, a month or a weekday. zxcvbn scores some of these 3 of 4, yet they fall in the first
//!   minutes of any rule-based attack.

use std::collections::HashSet;
use std::io::Read;
use std::sync::OnceLock;

const LIST_GZ: &[u8] = include_bytes!("common-passwords.txt.gz");

const CALENDAR: &[&str] = &[
    "spring",
    "summer",
    "autumn",
    "fall",
    "winter",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "christmas",
    "xmas",
    "easter",
    "welcome",
    "changeme",
    "letmein",
    "password",
    "passwort",
    "motdepasse",
    "contraseña",
];

fn list() -> &'static HashSet<String> {
    static LIST: OnceLock<HashSet<String>> = OnceLock::new();
    LIST.get_or_init(|| {
        let mut text = String::new();
        // The list is part of the binary: a failure here is a build defect, and an empty list
        // only weakens the policy to zxcvbn's estimate, so it is logged, not fatal.
        if let Err(e) = flate2::read::GzDecoder::new(LIST_GZ).read_to_string(&mut text) {
            tracing::error!(error = %e, "the built-in common-password list could not be read");
        }
        text.lines().map(str::to_owned).collect()
    })
}

/// Why a password is one of the first guesses, if it is.
pub fn common_reason(password: &str) -> Option<&'static str> {
    let lower = password.to_lowercase();
    let l = list();
    if l.contains(&lower) {
        return Some("it is one of the most common passwords");
    }
    let core = lower.trim_matches(|c: char| c.is_ascii_digit() || !c.is_alphanumeric());
    if core.len() < lower.len() && !core.is_empty() {
        // Leetspeak turned back, so that "P@ssw0rd2024!" counts as "password".
        let plain: String = core
            .chars()
            .map(|c| match c {
                '@' | '4' => 'a',
                '3' => 'e',
                '1' | '!' => 'i',
                '0' => 'o',
                '$' | '5' => 's',
                '7' => 't',
                c => c,
            })
            .collect();
        if CALENDAR.contains(&core) || CALENDAR.contains(&plain.as_str()) {
            return Some("a season, month or day with a number and punctuation is among the first patterns crackers try");
        }
        if l.contains(core) || l.contains(&plain) {
            return Some("a common password with a number or punctuation added is among the first patterns crackers try");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_guesses_are_caught() {
        for p in [
            "Summer2024!!",
            "summer2024",
            "Winter2025!",
            "January2026$",
            "Password1!",
            "P@ssw0rd2024!",
            "Monkey1234!!",
            "!!Welcome2024",
            "qwerty123",
            "iloveyou",
        ] {
            assert!(common_reason(p).is_some(), "{p} should be refused");
        }
        for p in [
            "vT9#qLm2!xWp4Rz-alpha",
            "correct horse battery staple orbit",
            "Summer-orbit-Kettle-77",
            "Kx9?marble-Thistle-copper-77",
        ] {
            assert_eq!(common_reason(p), None, "{p} should pass");
        }
        assert!(list().len() > 19_000);
    }
}
