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

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

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
    fn responses() {
        assert_eq!(decode_response(b"*").unwrap_err(), SaslError::Cancelled);
        assert!(decode_response(b"=").unwrap().is_empty());
        assert_eq!(&**decode_response(b"YWxpY2U=\r\n").unwrap(), b"alice");
        assert_eq!(decode_response(b"!!!").unwrap_err(), SaslError::Base64);
    }
}
