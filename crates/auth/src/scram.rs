//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677), server side, without I/O.
//!
//! Hand-written over `hmac`/`sha2`/`pbkdf2`: no maintained server crate fits (`rsasl` pulls a C
//! Kerberos library, `scram-rs` pulls aws-lc-rs and OpenSSL, `scram` is stuck on ring 0.16), and
//! the protocol is four messages. Checked against the RFC 7677 test vector below and, in the
//! black-box tests, against Python's `scramp`.
//!
//! Channel binding: `tls-exporter` (RFC 9266, TLS 1.3) and `tls-server-end-point` (RFC 5929).
//! The server always advertises the -PLUS mechanism beside the plain one (SASL is offered only
//! after TLS), so a client that says "y" (it supports binding but thinks the server does not) is
//! seeing a downgrade, and is refused (RFC 5802 6).

use base64::Engine;
use hmac::{KeyInit, Mac};
use sha2::Digest;
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why an exchange failed. For the audit log; the client only learns that it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message")]
    Malformed,
    /// The channel binding does not match this connection's (a TLS-terminating middlebox), or
    /// the client asked for a binding type this connection does not have, or a downgrade ("y").
    #[error("channel binding mismatch")]
    ChannelBinding,
    #[error("nonce mismatch")]
    Nonce,
}

/// What the server keeps of one password for SCRAM: StoredKey and ServerKey (RFC 5802 3). The
/// salt and iteration count are the account's, shared by all its verifiers so that one
/// server-first message serves whichever password the client holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier([REDACTED])")
    }
}

impl Verifier {
    /// `stored_key || server_key`, as stored.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(&self.stored_key);
        b[32..].copy_from_slice(&self.server_key);
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Verifier> {
        (b.len() == 64).then(|| Verifier {
            stored_key: b[..32].try_into().expect("32 bytes"),
            server_key: b[32..].try_into().expect("32 bytes"),
        })
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Derives the verifier of a password: SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password),
/// salt, iterations). None if the password is not a valid SASLprep string (it then cannot be
/// used with SCRAM, only with PLAIN).
pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Option<Verifier> {
    let prepped = Zeroizing::new(stringprep::saslprep(password).ok()?.into_owned());
    let mut salted = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
        prepped.as_bytes(),
        salt,
        iterations,
        salted.as_mut_slice(),
    );
    let client_key = Zeroizing::new(hmac(&salted[..], b"Client Key"));
    Some(Verifier {
        stored_key: sha2::Sha256::digest(&client_key[..]).into(),
        server_key: hmac(&salted[..], b"Server Key"),
    })
}

/// The channel bindings this connection offers (both None without TLS).
#[derive(Clone, Copy, Default)]
pub struct Bindings<'a> {
    pub exporter: Option<&'a [u8]>,
    pub end_point: Option<&'a [u8]>,
}

/// The client-first message, parsed and checked against the mechanism and the connection.
pub struct ClientFirst {
    /// The authentication identity (`n=`), unescaped.
    pub username: String,
    bare: String,
    cnonce: String,
    /// The expected `c=` attribute's decoded value: the GS2 header plus the binding data.
    cbind_input: Vec<u8>,
    /// The binding type used, for the audit log ("tls-exporter", ...), or None.
    pub binding: Option<&'static str>,
}

fn unescape_name(s: &str) -> Result<String, ScramError> {
    // RFC 5802 5.1: ',' and '=' are sent as "=2C" and "=3D"; any other '=' is an error.
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn printable_nonce(s: &str) -> bool {
    // RFC 5802 7: printable ASCII except ','.
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// The user name of a client-first message that [`ClientFirst::parse`] refused, if it has one
/// (so that a refused channel binding is audited and counted against that name).
pub fn peek_username(msg: &[u8]) -> Option<String> {
    let msg = std::str::from_utf8(msg).ok()?;
    let bare = msg.splitn(3, ',').nth(2)?;
    unescape_name(bare.split(',').next()?.strip_prefix("n=")?)
        .ok()
        .filter(|u| !u.is_empty())
}

impl ClientFirst {
    /// Parses `gs2-header client-first-message-bare`. `plus` is true for the -PLUS mechanism.
    pub fn parse(msg: &[u8], plus: bool, cb: Bindings<'_>) -> Result<ClientFirst, ScramError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed)?;
        let (flag, rest) = msg.split_once(',').ok_or(ScramError::Malformed)?;
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed)?;
        let gs2_header = format!("{flag},{authzid},");
        let (binding, data): (Option<&'static str>, &[u8]) = match (flag, plus) {
            ("n", false) => (None, &[]),
            // The client can bind but believes the server cannot. This server offers -PLUS
            // wherever it can bind (over TLS), so there someone removed it from the list on the
            // way (RFC 5802 6).
            ("y", false) if cb.exporter.is_some() || cb.end_point.is_some() => {
                return Err(ScramError::ChannelBinding)
            }
            ("y", false) => (None, &[]),
            (p, true) if p.starts_with("p=") => match &p[2..] {
                "tls-exporter" => (
                    Some("tls-exporter"),
                    cb.exporter.ok_or(ScramError::ChannelBinding)?,
                ),
                "tls-server-end-point" => (
                    Some("tls-server-end-point"),
                    cb.end_point.ok_or(ScramError::ChannelBinding)?,
                ),
                _ => return Err(ScramError::ChannelBinding),
            },
            // -PLUS without binding, or binding on the plain mechanism.
            ("n" | "y", true) => return Err(ScramError::ChannelBinding),
            (p, false) if p.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed),
        };
        let mut attrs = bare.split(',');
        let user = attrs
            .next()
            .and_then(|a| a.strip_prefix("n="))
            .ok_or(ScramError::Malformed)?;
        let cnonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed)?;
        // Extensions: "m=" is mandatory-to-understand and none is defined; others are ignored.
        if attrs.any(|a| a.starts_with("m=")) || !printable_nonce(cnonce) {
            return Err(ScramError::Malformed);
        }
        let username = unescape_name(user)?;
        if username.is_empty() {
            return Err(ScramError::Malformed);
        }
        // No account may act as another: an authorization identity must be the user itself.
        if !authzid.is_empty() {
            let a = authzid.strip_prefix("a=").ok_or(ScramError::Malformed)?;
            if !unescape_name(a)?.eq_ignore_ascii_case(&username) {
                return Err(ScramError::Malformed);
            }
        }
        let mut cbind_input = gs2_header.into_bytes();
        cbind_input.extend_from_slice(data);
        Ok(ClientFirst {
            username,
            bare: bare.to_owned(),
            cnonce: cnonce.to_owned(),
            cbind_input,
            binding,
        })
    }

    /// The server-first message for this salt and iteration count, with a fresh nonce.
    pub fn server_first(self, salt: &[u8], iterations: u32) -> (ServerFirst, String) {
        let snonce =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        let nonce = format!("{}{snonce}", self.cnonce);
        let msg = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
        (
            ServerFirst {
                first: self,
                nonce,
                server_first: msg.clone(),
            },
            msg,
        )
    }
}

/// The server's state between its first message and the client's final one.
pub struct ServerFirst {
    first: ClientFirst,
    nonce: String,
    server_first: String,
}

impl ServerFirst {
    pub fn username(&self) -> &str {
        &self.first.username
    }

    pub fn binding(&self) -> Option<&'static str> {
        self.first.binding
    }

    /// Checks the client-final message's binding and nonce and returns its proof.
    pub fn client_final(&self, msg: &[u8]) -> Result<Proof, ScramError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed)?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(ScramError::Malformed)?;
        let mut attrs = without_proof.split(',');
        let c = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed)?;
        let r = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed)?;
        if attrs.any(|a| a.starts_with("m=")) {
            return Err(ScramError::Malformed);
        }
        let c = B64.decode(c).map_err(|_| ScramError::Malformed)?;
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed)?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &c[..],
            &self.first.cbind_input[..],
        )) {
            return Err(ScramError::ChannelBinding);
        }
        if r != self.nonce {
            return Err(ScramError::Nonce);
        }
        Ok(Proof {
            auth_message: format!("{},{},{without_proof}", self.first.bare, self.server_first),
            proof,
        })
    }
}

/// A client's proof, to be checked against the verifiers of the account.
pub struct Proof {
    auth_message: String,
    proof: [u8; 32],
}

impl Proof {
    /// If the proof was made with the password of `v`, the server signature to send back.
    pub fn check(&self, v: &Verifier) -> Option<[u8; 32]> {
        let signature = hmac(&v.stored_key, self.auth_message.as_bytes());
        let mut client_key = Zeroizing::new([0u8; 32]);
        for (k, (p, s)) in client_key
            .iter_mut()
            .zip(self.proof.iter().zip(signature.iter()))
        {
            *k = p ^ s;
        }
        let stored: [u8; 32] = sha2::Sha256::digest(&client_key[..]).into();
        bool::from(subtle::ConstantTimeEq::ct_eq(
            &stored[..],
            &v.stored_key[..],
        ))
        .then(|| hmac(&v.server_key, self.auth_message.as_bytes()))
    }

    /// A fingerprint of this attempt for the guard's repeat detection: a SCRAM proof is never
    /// the same twice (it covers both nonces), so every failed proof counts.
    pub fn fingerprint(&self) -> secrecy::SecretString {
        secrecy::SecretString::from(B64.encode(self.proof))
    }
}

/// The server-final message after a successful proof.
pub fn server_final(signature: &[u8; 32]) -> String {
    format!("v={}", B64.encode(signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 3: user "user", password "pencil", the nonces and salt of the example.
    #[test]
    fn rfc7677_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = derive("pencil", &salt, 4096).unwrap();
        let first = ClientFirst::parse(
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            false,
            Bindings::default(),
        )
        .unwrap();
        assert_eq!(first.username, "user");
        // The example's server nonce, not a random one.
        let sf = ServerFirst {
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            server_first:
                "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
                    .into(),
            first,
        };
        let proof = sf
            .client_final(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let sig = proof.check(&v).expect("the RFC's proof matches");
        assert_eq!(
            server_final(&sig),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert!(proof
            .check(&derive("pencil2", &salt, 4096).unwrap())
            .is_none());
        assert_eq!(format!("{v:?}"), "Verifier([REDACTED])");
        assert_eq!(Verifier::from_bytes(&v.to_bytes()), Some(v));
    }

    #[test]
    fn gs2_rules() {
        let ep: &[u8] = b"\x01\x02";
        let exp: &[u8] = &[7u8; 32];
        let both = Bindings {
            exporter: Some(exp),
            end_point: Some(ep),
        };
        let parse = |m: &str, plus| ClientFirst::parse(m.as_bytes(), plus, both);
        assert!(parse("n,,n=a,r=x", false).is_ok());
        // "y" is a downgrade only where -PLUS is offered
        assert!(ClientFirst::parse(b"y,,n=a,r=x", false, Bindings::default()).is_ok());
        assert_eq!(
            parse("y,,n=a,r=x", false).err(),
            Some(ScramError::ChannelBinding)
        );
        assert_eq!(
            parse("n,,n=a,r=x", true).err(),
            Some(ScramError::ChannelBinding)
        );
        assert_eq!(
            parse("p=tls-unique,,n=a,r=x", true).err(),
            Some(ScramError::ChannelBinding)
        );
        assert_eq!(
            parse("p=tls-exporter,,n=a,r=x", false).err(),
            Some(ScramError::ChannelBinding)
        );
        let f = parse("p=tls-exporter,,n=a,r=x", true).unwrap();
        assert_eq!(f.binding, Some("tls-exporter"));
        let mut want = b"p=tls-exporter,,".to_vec();
        want.extend_from_slice(exp);
        assert_eq!(f.cbind_input, want);
        // TLS 1.2: no exporter
        let tls12 = Bindings {
            exporter: None,
            end_point: Some(ep),
        };
        assert_eq!(
            ClientFirst::parse(b"p=tls-exporter,,n=a,r=x", true, tls12).err(),
            Some(ScramError::ChannelBinding)
        );
        assert!(ClientFirst::parse(b"p=tls-server-end-point,,n=a,r=x", true, tls12).is_ok());
        // names, authzid, extensions, nonces
        assert_eq!(
            parse("n,,n=a=2Cb=3Dc,r=x", false).unwrap().username,
            "a,b=c"
        );
        assert!(parse("n,,n=a=2,r=x", false).is_err());
        assert!(parse("n,a=a,n=a,r=x", false).is_ok());
        assert!(parse("n,a=b,n=a,r=x", false).is_err());
        assert!(parse("n,,m=ext,n=a,r=x", false).is_err());
        assert!(parse("n,,n=a,r=x,m=1", false).is_err());
        assert!(parse("n,,n=,r=x", false).is_err());
        assert!(parse("n,,n=a,r=", false).is_err());
        assert!(parse("n,,n=a", false).is_err());
        assert!(parse("", false).is_err());
    }

    #[test]
    fn final_message_checks() {
        let ep: &[u8] = b"EP";
        let cb = Bindings {
            exporter: None,
            end_point: Some(ep),
        };
        let f = ClientFirst::parse(b"p=tls-server-end-point,,n=a,r=abc", true, cb).unwrap();
        let (sf, msg) = f.server_first(b"salt", 4096);
        let nonce = msg.split(',').next().unwrap().strip_prefix("r=").unwrap();
        assert!(nonce.starts_with("abc") && nonce.len() > 20);
        let good_c = B64.encode(b"p=tls-server-end-point,,EP");
        let bad_c = B64.encode(b"p=tls-server-end-point,,XX");
        let p = B64.encode([0u8; 32]);
        assert!(sf
            .client_final(format!("c={good_c},r={nonce},p={p}").as_bytes())
            .is_ok());
        assert_eq!(
            sf.client_final(format!("c={bad_c},r={nonce},p={p}").as_bytes())
                .err(),
            Some(ScramError::ChannelBinding)
        );
        assert_eq!(
            sf.client_final(format!("c={good_c},r=abc,p={p}").as_bytes())
                .err(),
            Some(ScramError::Nonce)
        );
        assert!(sf
            .client_final(format!("c={good_c},r={nonce},p=AAAA").as_bytes())
            .is_err());
        assert!(sf.client_final(b"garbage").is_err());
    }

    #[test]
    fn saslprep_applies() {
        // U+00AD (soft hyphen) maps to nothing; a prohibited character makes no verifier.
        assert_eq!(derive("pen\u{ad}cil", b"s", 1), derive("pencil", b"s", 1));
        assert!(derive("bad\u{7}", b"s", 1).is_none());
    }
}
