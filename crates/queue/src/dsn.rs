//! Delivery status notifications (RFC 3464): a multipart/report with a human-readable part, a
//! message/delivery-status part, and the original message's headers (text/rfc822-headers, RFC
//! 6522). Written by hand: the format is small and fixed, and no crate of the field builds it.

use postern_store::queue::QueuedMessage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
        }
    }
}

/// A recipient to report on.
#[derive(Debug, Clone)]
pub struct Failed {
    pub address: String,
    /// RFC 3463 status, e.g. 5.1.1.
    pub status: String,
    /// The remote reply or what went wrong.
    pub diagnostic: String,
    pub remote: Option<String>,
}

/// Only printable ASCII on one line: replies and addresses go into header fields.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .take(900)
        .collect()
}

/// The original message's header section (up to the first empty line), capped.
fn headers_of(body: &[u8]) -> &[u8] {
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(body.len());
    &body[..end.min(64 * 1024)]
}

/// The whole DSN message, ready to store or queue (sent with a null envelope sender).
pub fn build(
    hostname: &str,
    msg: &QueuedMessage,
    body: &[u8],
    rcpts: &[Failed],
    action: Action,
) -> Vec<u8> {
    let boundary = format!("postern-dsn-{}-{:x}", msg.id, rand::random::<u64>());
    let date = chrono::Utc::now().to_rfc2822();
    let arrival = chrono::DateTime::from_timestamp(msg.created_at, 0)
        .map(|d| d.to_rfc2822())
        .unwrap_or_else(|| date.clone());
    let subject = match action {
        Action::Failed => "Undelivered Mail Returned to Sender",
        Action::Delayed => "Delayed Mail (still being retried)",
    };
    let mut human = String::new();
    match action {
        Action::Failed => human.push_str(&format!(
            "This is the mail system at {hostname}.\r\n\r\nYour message could not be delivered to the recipients below.\r\n\r\n"
        )),
        Action::Delayed => human.push_str(&format!(
            "This is the mail system at {hostname}.\r\n\r\nYour message has not been delivered yet to the recipients below. It is still being retried; you do not need to send it again.\r\n\r\n"
        )),
    }
    for r in rcpts {
        human.push_str(&format!(
            "<{}>: {}\r\n",
            clean(&r.address),
            clean(&r.diagnostic)
        ));
    }
    let mut status = format!(
        "Reporting-MTA: dns; {hostname}\r\nX-Postern-Queue-ID: {}\r\nArrival-Date: {arrival}\r\n",
        msg.id
    );
    for r in rcpts {
        status.push_str("\r\n");
        status.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            clean(&r.address)
        ));
        status.push_str(&format!("Action: {}\r\n", action.as_str()));
        status.push_str(&format!("Status: {}\r\n", clean(&r.status)));
        if let Some(m) = &r.remote {
            let host = m.split_whitespace().next().unwrap_or(m);
            status.push_str(&format!("Remote-MTA: dns; {}\r\n", clean(host)));
        }
        status.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n",
            clean(&r.diagnostic)
        ));
    }
    let mut out = format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <dsn-{}-{:x}@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\
         \r\n--{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         Content-Description: Notification\r\n\r\n{human}\r\n\
         --{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         Content-Description: Delivery report\r\n\r\n{status}\r\n\
         --{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         Content-Description: Undelivered message headers\r\n\r\n",
        clean(&msg.sender),
        msg.id,
        rand::random::<u32>()
    )
    .into_bytes();
    out.extend_from_slice(headers_of(body));
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_parses_as_a_delivery_report() {
        let msg = QueuedMessage {
            id: 7,
            blob_id: "b".into(),
            size: 10,
            sender: "alice@a.test".into(),
            account_id: Some(1),
            created_at: 1_700_000_000,
            next_attempt_at: 0,
            attempts: 1,
            status: "queued".into(),
            last_error: None,
            warned: false,
            recipients: vec![],
        };
        let body = b"Subject: hello\r\nFrom: alice@a.test\r\n\r\nsecret body text\r\n";
        let d = build(
            "mail.a.test",
            &msg,
            body,
            &[Failed {
                address: "nobody@b.test".into(),
                status: "5.1.1".into(),
                diagnostic: "550 5.1.1 no such user\r\nInjected: header".into(),
                remote: Some("mx.b.test [127.0.0.1:25]".into()),
            }],
            Action::Failed,
        );
        let m = mail_parser::MessageParser::new().parse(&d).unwrap();
        assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
        let text = String::from_utf8_lossy(&d);
        assert!(text.contains("report-type=delivery-status"));
        assert!(text.contains("Final-Recipient: rfc822; nobody@b.test"));
        assert!(text.contains("Status: 5.1.1"));
        assert!(text.contains("Action: failed"));
        assert!(text.contains("Subject: hello"));
        // the body of the original is not returned, and a reply cannot inject header lines
        assert!(!text.contains("secret body text"));
        assert!(!text.contains("\r\nInjected: header"));
    }
}
