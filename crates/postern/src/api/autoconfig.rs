//! Client autoconfiguration over HTTPS, so that a user types an address and a password and the
//! mail program finds the rest: Thunderbird's autoconfig (`/.well-known/autoconfig/mail/
//! config-v1.1.xml`, and `/mail/config-v1.1.xml` for a host `autoconfig.DOMAIN` pointed at this
//! listener) and Microsoft's Autodiscover "POX" (`POST /autodiscover/autodiscover.xml`).
//!
//! Only the implicit-TLS listeners are offered (IMAPS, POP3S when POP3 is on, submissions; the
//! STARTTLS ones only when no implicit-TLS one exists), with the password sent inside TLS
//! (`password-cleartext` / `SSL on`): never a port that could be used without encryption.
//! Only for the server's own domains; the XML is written here (two fixed documents) with every
//! value escaped.

use postern_types::Protocol;

use super::common::*;

/// (kind, port, implicit TLS) of what a mail program should use, in order of preference.
fn endpoints(cfg: &Config) -> Vec<(&'static str, u16, bool)> {
    let mut out = Vec::new();
    for (kind, implicit, starttls) in [
        ("imap", Protocol::Imaps, Protocol::Imap),
        ("pop3", Protocol::Pop3s, Protocol::Pop3),
        ("smtp", Protocol::Submissions, Protocol::Submission),
    ] {
        if kind == "pop3" && !cfg.pop3.enabled {
            continue;
        }
        let find = |p| cfg.listeners.iter().find(|l| l.protocol == p);
        if let Some(l) = find(implicit) {
            out.push((kind, l.address.port(), true));
        } else if let Some(l) = find(starttls) {
            out.push((kind, l.address.port(), false));
        }
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn xml(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The address asked about, if it is of one of our domains.
async fn local_address(st: &ApiState, address: &str) -> ApiResult<EmailAddress> {
    let a = EmailAddress::parse(address.trim())
        .map_err(|_| ApiError::BadRequest("not an email address".into()))?;
    if !st.store.is_local_domain(a.domain()).await? {
        return Err(ApiError::NotFound("not a domain of this server".into()));
    }
    Ok(a)
}

#[derive(Deserialize)]
pub struct AutoconfigQuery {
    emailaddress: String,
}

pub(super) async fn thunderbird(
    State(st): St,
    Query(q): Query<AutoconfigQuery>,
) -> ApiResult<Response> {
    let a = local_address(&st, &q.emailaddress).await?;
    let host = xml_escape(&st.cfg.server.hostname);
    let domain = xml_escape(a.domain());
    let mut servers = String::new();
    for (kind, port, implicit) in endpoints(&st.cfg) {
        let (tag, socket) = match (kind, implicit) {
            ("smtp", true) => ("outgoingServer", "SSL"),
            ("smtp", false) => ("outgoingServer", "STARTTLS"),
            (_, true) => ("incomingServer", "SSL"),
            (_, false) => ("incomingServer", "STARTTLS"),
        };
        servers.push_str(&format!(
            "    <{tag} type=\"{kind}\">\n      <hostname>{host}</hostname>\n      <port>{port}</port>\n      \
             <socketType>{socket}</socketType>\n      <authentication>password-cleartext</authentication>\n      \
             <username>%EMAILADDRESS%</username>\n    </{tag}>\n"
        ));
    }
    Ok(xml(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n  \
         <emailProvider id=\"{domain}\">\n    <domain>{domain}</domain>\n    \
         <displayName>{domain} mail</displayName>\n    <displayShortName>{domain}</displayShortName>\n\
         {servers}  </emailProvider>\n</clientConfig>\n"
    )))
}

/// The `<EMailAddress>` of an Autodiscover request (the one element it needs; a full XML parser
/// for one text node of a bounded body would add nothing).
fn requested_address(body: &str) -> Option<&str> {
    let start = body.find("<EMailAddress>")? + "<EMailAddress>".len();
    let len = body[start..].find("</EMailAddress>")?;
    Some(body[start..start + len].trim())
}

pub(super) async fn autodiscover(State(st): St, body: String) -> ApiResult<Response> {
    let address = requested_address(&body)
        .ok_or_else(|| ApiError::BadRequest("no EMailAddress in the request".into()))?;
    let a = local_address(&st, address).await?;
    let host = xml_escape(&st.cfg.server.hostname);
    let login = xml_escape(a.as_str());
    let mut protocols = String::new();
    for (kind, port, implicit) in endpoints(&st.cfg) {
        let (t, enc) = match (kind, implicit) {
            ("imap", _) => ("IMAP", implicit),
            ("pop3", _) => ("POP3", implicit),
            _ => ("SMTP", implicit),
        };
        let encryption = if enc { "SSL" } else { "TLS" };
        protocols.push_str(&format!(
            "      <Protocol>\n        <Type>{t}</Type>\n        <Server>{host}</Server>\n        \
             <Port>{port}</Port>\n        <LoginName>{login}</LoginName>\n        <SPA>off</SPA>\n        \
             <Encryption>{encryption}</Encryption>\n        <AuthRequired>on</AuthRequired>\n      </Protocol>\n"
        ));
    }
    Ok(xml(format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n  \
         <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">\n    \
         <Account>\n      <AccountType>email</AccountType>\n      <Action>settings</Action>\n{protocols}    </Account>\n  \
         </Response>\n</Autodiscover>\n"
    )))
}

/// An Apple configuration profile (`.mobileconfig`, a property list) that sets up one mail
/// account on an iPhone, iPad or Mac with an app password: IMAP and SMTP over TLS (the same
/// endpoints as autoconfig), the app password for both. None without an IMAP and an SMTP
/// endpoint. Written here (a fixed document, every value escaped) rather than with a plist
/// crate: nothing else in Postern reads or writes property lists.
pub(super) fn mobileconfig(cfg: &Config, address: &str, secret: &str) -> Option<String> {
    let eps = endpoints(cfg);
    let find = |k: &str| eps.iter().find(|(kind, _, _)| *kind == k).copied();
    let (_, imap_port, _) = find("imap")?;
    let (_, smtp_port, _) = find("smtp")?;
    let host = xml_escape(&cfg.server.hostname);
    let a = xml_escape(address);
    let pw = xml_escape(secret);
    let uuid = || {
        let b: [u8; 16] = rand::random();
        let h = hex::encode(b);
        // version 4, RFC 4122 variant
        format!(
            "{}-{}-4{}-{}{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            ["8", "9", "a", "b"][usize::from(b[8] & 3)],
            &h[17..20],
            &h[20..32]
        )
    };
    let (u1, u2) = (uuid(), uuid());
    Some(format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>PayloadContent</key>
  <array>
    <dict>
      <key>EmailAccountDescription</key><string>{a}</string>
      <key>EmailAccountName</key><string>{a}</string>
      <key>EmailAccountType</key><string>EmailTypeIMAP</string>
      <key>EmailAddress</key><string>{a}</string>
      <key>IncomingMailServerAuthentication</key><string>EmailAuthPassword</string>
      <key>IncomingMailServerHostName</key><string>{host}</string>
      <key>IncomingMailServerPortNumber</key><integer>{imap_port}</integer>
      <key>IncomingMailServerUseSSL</key><true/>
      <key>IncomingMailServerUsername</key><string>{a}</string>
      <key>IncomingPassword</key><string>{pw}</string>
      <key>OutgoingMailServerAuthentication</key><string>EmailAuthPassword</string>
      <key>OutgoingMailServerHostName</key><string>{host}</string>
      <key>OutgoingMailServerPortNumber</key><integer>{smtp_port}</integer>
      <key>OutgoingMailServerUseSSL</key><true/>
      <key>OutgoingMailServerUsername</key><string>{a}</string>
      <key>OutgoingPassword</key><string>{pw}</string>
      <key>OutgoingPasswordSameAsIncomingPassword</key><true/>
      <key>PayloadDisplayName</key><string>Mail ({a})</string>
      <key>PayloadIdentifier</key><string>{host}.postern.mail.{u1}</string>
      <key>PayloadType</key><string>com.apple.mail.managed</string>
      <key>PayloadUUID</key><string>{u1}</string>
      <key>PayloadVersion</key><integer>1</integer>
    </dict>
  </array>
  <key>PayloadDescription</key><string>Sets up the mail account {a} with an app password.</string>
  <key>PayloadDisplayName</key><string>{a}</string>
  <key>PayloadIdentifier</key><string>{host}.postern.{u2}</string>
  <key>PayloadRemovalDisallowed</key><false/>
  <key>PayloadType</key><string>Configuration</string>
  <key>PayloadUUID</key><string>{u2}</string>
  <key>PayloadVersion</key><integer>1</integer>
</dict>
</plist>
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_of_an_autodiscover_request() {
        let body = "<?xml version=\"1.0\"?><Autodiscover xmlns=\"x\"><Request>\
                    <EMailAddress> bob@example.test </EMailAddress>\
                    <AcceptableResponseSchema>y</AcceptableResponseSchema></Request></Autodiscover>";
        assert_eq!(requested_address(body), Some("bob@example.test"));
        assert_eq!(requested_address("<EMailAddress>x"), None);
        assert_eq!(xml_escape("a<&>\"'"), "a&lt;&amp;&gt;&quot;&apos;");
    }
}
