//! The strong-password policy: minimum length, a zxcvbn strength estimate (which includes its
//! common-password and dictionary lists), no user name or domain inside, and an optional
//! breached-password list.

use crate::breached::BreachedList;

/// Why a password was refused; the text is meant for the person choosing it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyViolation {
    #[error("password too short: it has {actual} characters, at least {min} are required")]
    TooShort { actual: usize, min: usize },
    #[error("password contains the user name or the domain ({0:?})")]
    ContainsUserInfo(String),
    #[error("password too guessable (strength {score} of 4, at least {min} required){feedback}")]
    TooGuessable {
        score: u8,
        min: u8,
        feedback: String,
    },
    #[error("password found in the breached-password list: it is known to attackers")]
    Breached,
    #[error("password too guessable: {0}")]
    Common(&'static str),
    #[error("the breached-password list could not be read: {0}")]
    ListUnreadable(String),
}

#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    pub min_length: usize,
    pub min_score: u8,
    pub breached: Option<BreachedList>,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy {
            min_length: 12,
            min_score: 3,
            breached: None,
        }
    }
}

impl PasswordPolicy {
    /// Checks `password` for the account `address` (`local@domain`). Runs the cheap checks first.
    pub fn check(&self, password: &str, address: &str) -> Result<(), PolicyViolation> {
        let chars = password.chars().count();
        if chars < self.min_length {
            return Err(PolicyViolation::TooShort {
                actual: chars,
                min: self.min_length,
            });
        }
        let lower = password.to_lowercase();
        let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
        let mut inputs: Vec<&str> = vec![local];
        inputs.extend(local.split(['.', '-', '_', '+']));
        inputs.push(domain);
        inputs.extend(domain.split('.').filter(|l| l.len() > 3));
        // Common second-level labels like "mail" or "com" are too short to matter (len > 3 above).
        for input in inputs.iter().filter(|s| s.chars().count() >= 4) {
            if lower.contains(&input.to_lowercase()) {
                return Err(PolicyViolation::ContainsUserInfo((*input).to_owned()));
            }
        }
        if let Some(why) = crate::common::common_reason(password) {
            return Err(PolicyViolation::Common(why));
        }
        let estimate = zxcvbn::zxcvbn(password, &inputs);
        let score = estimate.score() as u8;
        if score < self.min_score {
            // ": This is a very common password. Add another word or two." — one sentence each.
            let mut sentences: Vec<String> = Vec::new();
            if let Some(fb) = estimate.feedback() {
                if let Some(w) = fb.warning() {
                    sentences.push(w.to_string());
                }
                sentences.extend(fb.suggestions().iter().map(|s| s.to_string()));
            }
            let feedback: String = sentences
                .iter()
                .map(|s| {
                    let s = s.trim();
                    if s.ends_with(['.', '!', '?']) {
                        format!(" {s}")
                    } else {
                        format!(" {s}.")
                    }
                })
                .collect();
            let feedback = if feedback.is_empty() {
                feedback
            } else {
                format!(":{feedback}")
            };
            return Err(PolicyViolation::TooGuessable {
                score,
                min: self.min_score,
                feedback,
            });
        }
        if let Some(list) = &self.breached {
            match list.contains(password) {
                Ok(true) => return Err(PolicyViolation::Breached),
                Ok(false) => {}
                Err(e) => return Err(PolicyViolation::ListUnreadable(e.to_string())),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_short_guessable_and_personal_passwords() {
        let p = PasswordPolicy::default();
        assert!(matches!(
            p.check("short", "alice@example.test"),
            Err(PolicyViolation::TooShort { actual: 5, min: 12 })
        ));
        assert!(matches!(
            p.check("password1234", "alice@example.test"),
            Err(PolicyViolation::Common(_))
        ));
        assert!(matches!(
            p.check("qwertyuiopasdf", "alice@example.test"),
            Err(PolicyViolation::TooGuessable { .. })
        ));
        assert!(matches!(
            p.check("alice-rocks-hard-2024!", "alice@example.test"),
            Err(PolicyViolation::ContainsUserInfo(_))
        ));
        assert!(matches!(
            p.check("zebra-example-Qx7!vv", "bob@example.test"),
            Err(PolicyViolation::ContainsUserInfo(_))
        ));
        p.check("vT9#qLm2!xWp4Rz", "alice@example.test").unwrap();
        for weak in [
            "Summer2024!!",
            "Autumn2025!?",
            "December2023##",
            "Password2024!",
        ] {
            assert!(
                matches!(
                    p.check(weak, "alice@example.test"),
                    Err(PolicyViolation::Common(_) | PolicyViolation::TooGuessable { .. })
                ),
                "{weak}"
            );
        }
        p.check("correct horse battery staple orbit", "alice@example.test")
            .unwrap();
    }

    #[test]
    fn guessable_feedback_is_explained() {
        let err = PasswordPolicy::default()
            .check("qwertyuiopasdf", "a@example.test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("too guessable"), "{err}");
        assert!(!err.contains(".;") && !err.contains(". ;"), "{err}");
        assert!(
            err.len() > "password too guessable (strength 0 of 4, at least 3 required)".len(),
            "{err}"
        );
    }
}
