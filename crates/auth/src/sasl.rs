//! SASL mechanisms PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login), decoded from base64.
//! Hand-written: each is a few lines and the available crates pull in a full SASL framework.

use base64::Engine;
use secrecy::SecretString;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaslError {
    #[error("invalid base64")]
    Base64,
    #[error("malformed SASL message")]
    Malformed,
    #[error("the client cancelled the exchange")]
    Cancelled,
    /// The connection ended or timed out in the middle of an exchange.
    #[error("the connection closed during the exchange")]
    Closed,
}

/// One round trip of a SASL exchange in a protocol's own framing (`334 …` for SMTP, `+ …` for
/// IMAP and POP3, with their line limits and timeouts), for the exchanges that need more than
/// [`Exchange`]'s synchronous steps (SCRAM looks the user up between two messages).
#[async_trait::async_trait]
pub trait Challenger: Send {
    /// Sends `challenge` (already base64) and returns the client's decoded response:
    /// [`SaslError::Cancelled`] for `*`, [`SaslError::Closed`] if the connection is gone.
    async fn challenge(&mut self, challenge: &str) -> Result<Zeroizing<Vec<u8>>, SaslError>;
}

/// A user name and password taken from a SASL exchange. `Debug` never shows the password.
pub struct Credentials {
    pub username: String,
    pub password: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .finish()
    }
}

/// Decodes one base64 client response (RFC 4954 4: `*` cancels, `=` is an empty response).
pub fn decode_response(line: &[u8]) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    let line = line.trim_ascii();
    if line == b"*" {
        return Err(SaslError::Cancelled);
    }
    if line == b"=" {
        return Ok(Zeroizing::new(Vec::new()));
    }
    base64::engine::general_purpose::STANDARD
        .decode(line)
        .map(Zeroizing::new)
        .map_err(|_| SaslError::Base64)
}

/// PLAIN: `[authzid] NUL authcid NUL passwd`. An authzid other than the authcid is refused: no
/// account may act as another.
pub fn decode_plain(decoded: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = decoded.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authc.is_empty() || pass.is_empty() || (!authz.is_empty() && authz != authc) {
        return Err(SaslError::Malformed);
    }
    let username = std::str::from_utf8(authc).map_err(|_| SaslError::Malformed)?;
    let password = std::str::from_utf8(pass).map_err(|_| SaslError::Malformed)?;
    Ok(Credentials {
        username: username.to_owned(),
        password: SecretString::from(password.to_owned()),
    })
}

/// One LOGIN field (user name or password) as UTF-8.
pub fn decode_login_field(decoded: &[u8]) -> Result<String, SaslError> {
    if decoded.is_empty() || decoded.contains(&0) {
        return Err(SaslError::Malformed);
    }
    std::str::from_utf8(decoded)
        .map(str::to_owned)
        .map_err(|_| SaslError::Malformed)
}

/// The mechanisms Postern offers (only after TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    /// SCRAM-SHA-256 (RFC 7677), driven by [`crate::Authenticator::scram_exchange`].
    ScramSha256,
    /// SCRAM-SHA-256-PLUS: with TLS channel binding.
    ScramSha256Plus,
    /// EXTERNAL (RFC 4422 A): the TLS client certificate, registered to an account.
    External,
    /// OAUTHBEARER (RFC 7628): an access token from an OpenID Connect provider.
    OauthBearer,
    /// XOAUTH2 (Google's and Microsoft's older form of the same).
    Xoauth2,
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Mechanism> {
        [
            Mechanism::Plain,
            Mechanism::Login,
            Mechanism::ScramSha256,
            Mechanism::ScramSha256Plus,
            Mechanism::External,
            Mechanism::OauthBearer,
            Mechanism::Xoauth2,
        ]
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::External => "EXTERNAL",
            Mechanism::OauthBearer => "OAUTHBEARER",
            Mechanism::Xoauth2 => "XOAUTH2",
        }
    }

    pub fn is_oauth(self) -> bool {
        matches!(self, Mechanism::OauthBearer | Mechanism::Xoauth2)
    }

    /// Driven by an exchange of the auth core rather than [`Exchange`].
    pub fn is_multistep(self) -> bool {
        self.is_scram() || self.is_oauth() || self == Mechanism::External
    }

    pub fn is_scram(self) -> bool {
        matches!(self, Mechanism::ScramSha256 | Mechanism::ScramSha256Plus)
    }

    /// The mechanisms to advertise on a connection, strongest first: EXTERNAL only when the
    /// client presented a certificate, SCRAM-SHA-256-PLUS only where the connection has a
    /// channel binding to offer, OAUTHBEARER and XOAUTH2 only with an identity provider.
    pub fn advertised(offer: Offer) -> Vec<Mechanism> {
        let mut m = Vec::with_capacity(7);
        if offer.client_cert {
            m.push(Mechanism::External);
        }
        if offer.can_bind {
            m.push(Mechanism::ScramSha256Plus);
        }
        m.push(Mechanism::ScramSha256);
        if offer.oauth {
            m.extend([Mechanism::OauthBearer, Mechanism::Xoauth2]);
        }
        m.extend([Mechanism::Plain, Mechanism::Login]);
        m
    }
}

/// What a connection can offer beyond the password mechanisms.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offer {
    /// A TLS channel binding (SCRAM-SHA-256-PLUS).
    pub can_bind: bool,
    /// The client presented a certificate (EXTERNAL).
    pub client_cert: bool,
    /// An OpenID Connect provider is configured (OAUTHBEARER, XOAUTH2).
    pub oauth: bool,
}

/// A bearer token and the identity the client claims with it, from an OAUTHBEARER (RFC 7628
/// 3.1: a GS2 header, then `key=value` pairs separated by 0x01, among them
/// `auth=Bearer TOKEN`) or XOAUTH2 (`user=NAME^Aauth=Bearer TOKEN^A^A`) client response.
pub struct BearerResponse {
    /// The authorization identity (`a=` / `user=`), possibly empty.
    pub authzid: String,
    pub token: SecretString,
}

impl std::fmt::Debug for BearerResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerResponse")
            .field("authzid", &self.authzid)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

fn bearer_of(kvpairs: &str) -> Result<SecretString, SaslError> {
    for kv in kvpairs.split('\x01') {
        if let Some(v) = kv.strip_prefix("auth=") {
            let (scheme, token) = v.split_once(' ').ok_or(SaslError::Malformed)?;
            let token = token.trim();
            // RFC 6750 2.1 b64token
            let valid = !token.is_empty()
                && token.len() <= 16 * 1024
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
            if !scheme.eq_ignore_ascii_case("Bearer") || !valid {
                return Err(SaslError::Malformed);
            }
            return Ok(SecretString::from(token.to_owned()));
        }
    }
    Err(SaslError::Malformed)
}

/// Parses an OAUTHBEARER or XOAUTH2 client response.
pub fn decode_bearer(mechanism: Mechanism, msg: &[u8]) -> Result<BearerResponse, SaslError> {
    let msg = std::str::from_utf8(msg).map_err(|_| SaslError::Malformed)?;
    match mechanism {
        Mechanism::OauthBearer => {
            // gs2-header: ("n" / "y") "," [ "a=" saslname ] "," then kvsep
            let (flag, rest) = msg.split_once(',').ok_or(SaslError::Malformed)?;
            let (authz, rest) = rest.split_once(',').ok_or(SaslError::Malformed)?;
            if !matches!(flag, "n" | "y") {
                return Err(SaslError::Malformed);
            }
            let authzid = match authz {
                "" => String::new(),
                a => a
                    .strip_prefix("a=")
                    .ok_or(SaslError::Malformed)?
                    .replace("=2C", ",")
                    .replace("=3D", "="),
            };
            let kv = rest.strip_prefix('\x01').ok_or(SaslError::Malformed)?;
            Ok(BearerResponse {
                authzid,
                token: bearer_of(kv)?,
            })
        }
        Mechanism::Xoauth2 => {
            let mut user = None;
            for kv in msg.split('\x01') {
                if let Some(u) = kv.strip_prefix("user=") {
                    user = Some(u.to_owned());
                }
            }
            Ok(BearerResponse {
                authzid: user.ok_or(SaslError::Malformed)?,
                token: bearer_of(msg)?,
            })
        }
        _ => Err(SaslError::Malformed),
    }
}

/// What the server does next in an exchange.
#[derive(Debug)]
pub enum Step {
    /// Send this base64 challenge (in the protocol's framing: `334 …` for SMTP, `+ …` for IMAP
    /// and POP3) and feed the client's next line to [`Exchange::step`].
    Challenge(&'static str),
    /// The exchange is complete.
    Done(Credentials),
}

/// One server-side PLAIN or LOGIN exchange, without I/O: SMTP, IMAP and POP3 all drive this one
/// (initial response or not, cancellation with `*`, `=` for an empty response), each with its
/// own framing and line limits.
pub struct Exchange {
    mechanism: Mechanism,
    user: Option<String>,
}

const LOGIN_USER: &str = "VXNlcm5hbWU6"; // "Username:"
const LOGIN_PASS: &str = "UGFzc3dvcmQ6"; // "Password:"

impl Exchange {
    /// Starts an exchange, with the initial response if the client sent one (RFC 4954 4,
    /// RFC 4959).
    pub fn start(
        mechanism: Mechanism,
        initial: Option<&[u8]>,
    ) -> Result<(Exchange, Step), SaslError> {
        match initial {
            Some(ir) => Exchange::start_decoded(mechanism, Some(&decode_response(ir)?)),
            None => Exchange::start_decoded(mechanism, None),
        }
    }

    /// Like [`Exchange::start`], for a protocol whose parser already decoded the initial
    /// response's base64 (IMAP's SASL-IR through imap-codec).
    pub fn start_decoded(
        mechanism: Mechanism,
        initial: Option<&[u8]>,
    ) -> Result<(Exchange, Step), SaslError> {
        let mut ex = Exchange {
            mechanism,
            user: None,
        };
        let step = match (mechanism, initial) {
            (m, _) if m.is_scram() || m == Mechanism::External => return Err(SaslError::Malformed),
            (Mechanism::Plain, None) => Step::Challenge(""),
            (Mechanism::Login, None) => Step::Challenge(LOGIN_USER),
            (_, None) => return Err(SaslError::Malformed),
            (_, Some(ir)) => ex.step_decoded(ir)?,
        };
        Ok((ex, step))
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The client's next line (base64, `*` to cancel).
    pub fn step(&mut self, line: &[u8]) -> Result<Step, SaslError> {
        let decoded = decode_response(line)?;
        self.step_decoded(&decoded)
    }

    fn step_decoded(&mut self, decoded: &[u8]) -> Result<Step, SaslError> {
        match self.mechanism {
            Mechanism::Plain => decode_plain(decoded).map(Step::Done),
            Mechanism::Login => match self.user.take() {
                None => {
                    self.user = Some(decode_login_field(decoded)?);
                    Ok(Step::Challenge(LOGIN_PASS))
                }
                Some(username) => Ok(Step::Done(Credentials {
                    username,
                    password: SecretString::from(decode_login_field(decoded)?),
                })),
            },
            _ => Err(SaslError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn b64(s: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(s)
            .into_bytes()
    }

    #[test]
    fn exchanges() {
        // PLAIN with an initial response: done at once
        let (_, step) = Exchange::start(Mechanism::Plain, Some(&b64(b"\0a@x.test\0pw"))).unwrap();
        assert!(matches!(step, Step::Done(c) if c.username == "a@x.test"));
        // PLAIN without: an empty challenge, then the response
        let (mut ex, step) = Exchange::start(Mechanism::Plain, None).unwrap();
        assert!(matches!(step, Step::Challenge("")));
        let step = ex.step(&b64(b"\0a@x.test\0pw")).unwrap();
        assert!(matches!(step, Step::Done(c) if c.password.expose_secret() == "pw"));
        // LOGIN: user name, then password; the user name may come as the initial response
        let (mut ex, step) = Exchange::start(Mechanism::Login, None).unwrap();
        assert!(matches!(step, Step::Challenge(LOGIN_USER)));
        assert!(matches!(
            ex.step(&b64(b"u@x.test")).unwrap(),
            Step::Challenge(LOGIN_PASS)
        ));
        assert!(
            matches!(ex.step(&b64(b"secret")).unwrap(), Step::Done(c) if c.username == "u@x.test")
        );
        let (mut ex, step) = Exchange::start(Mechanism::Login, Some(&b64(b"u@x.test"))).unwrap();
        assert!(matches!(step, Step::Challenge(LOGIN_PASS)));
        assert_eq!(ex.step(b"*").unwrap_err(), SaslError::Cancelled);
        assert_eq!(Mechanism::parse("login"), Some(Mechanism::Login));
        assert_eq!(Mechanism::parse("CRAM-MD5"), None);
    }

    #[test]
    fn plain_variants() {
        let c = decode_plain(b"\0alice@example.test\0s3cret").unwrap();
        assert_eq!(c.username, "alice@example.test");
        assert_eq!(c.password.expose_secret(), "s3cret");
        assert!(decode_plain(b"alice@example.test\0alice@example.test\0pw").is_ok());
        assert_eq!(
            decode_plain(b"bob@x.test\0alice@x.test\0pw").unwrap_err(),
            SaslError::Malformed
        );
        assert_eq!(
            decode_plain(b"\0alice\0").unwrap_err(),
            SaslError::Malformed
        );
        assert_eq!(
            decode_plain(b"\0alice\0pw\0extra").unwrap_err(),
            SaslError::Malformed
        );
        assert_eq!(
            decode_plain(b"no nul at all").unwrap_err(),
            SaslError::Malformed
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn bearer_responses() {
        let b = decode_bearer(
            Mechanism::OauthBearer,
            b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01",
        )
        .unwrap();
        assert_eq!(b.authzid, "user@example.com");
        assert_eq!(
            b.token.expose_secret(),
            "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
        );
        assert!(!format!("{b:?}").contains("vF9d"));
        let b = decode_bearer(
            Mechanism::OauthBearer,
            b"n,,\x01auth=bearer abc.def-ghi\x01\x01",
        )
        .unwrap();
        assert_eq!(b.authzid, "");
        let x = decode_bearer(
            Mechanism::Xoauth2,
            b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg\x01\x01",
        )
        .unwrap();
        assert_eq!(x.authzid, "someuser@example.com");
        for bad in [
            &b"n,,auth=Bearer x"[..],
            b"p=tls-unique,,\x01auth=Bearer x\x01\x01",
            b"n,,\x01auth=Basic x\x01\x01",
            b"n,,\x01auth=Bearer a b\x01\x01",
            b"n,,\x01host=x\x01\x01",
            b"n,u=x,\x01auth=Bearer x\x01\x01",
        ] {
            assert!(
                decode_bearer(Mechanism::OauthBearer, bad).is_err(),
                "{bad:?}"
            );
        }
        assert!(decode_bearer(Mechanism::Xoauth2, b"auth=Bearer x\x01\x01").is_err());
    }

    #[test]
    fn responses() {
        assert_eq!(decode_response(b"*").unwrap_err(), SaslError::Cancelled);
        assert!(decode_response(b"=").unwrap().is_empty());
        assert_eq!(&**decode_response(b"YWxpY2U=\r\n").unwrap(), b"alice");
        assert_eq!(decode_response(b"!!!").unwrap_err(), SaslError::Base64);
    }
}
