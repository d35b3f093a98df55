//! A whole SMTP session driven by arbitrary command sequences over an in-process stream, on the
//! submission and the MX ports (chosen by the second input byte): EHLO, AUTH PLAIN/LOGIN, MAIL,
//! RCPT, DATA (dot-unstuffing, smuggling checks, size caps), RSET, QUIT — the state machine, not
//! only the parsers. Deliveries go to an in-memory backend that checks what it is given.
#![no_main]
#![forbid(unsafe_code)]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use postern_auth::Principal;
use postern_smtp::{BackendError, Delivery, MailBackend};
use postern_types::EmailAddress;

#[path = "session_world.rs"]
mod world;

struct Mem;

#[async_trait::async_trait]
impl MailBackend for Mem {
    async fn is_local_domain(&self, domain: &str) -> Result<bool, BackendError> {
        Ok(domain == "x.test")
    }
    async fn resolve_recipient(&self, a: &EmailAddress) -> Result<Option<i64>, BackendError> {
        Ok((a.as_str() == world::USER).then_some(1))
    }
    async fn allowed_senders(&self, _p: &Principal) -> Result<Vec<String>, BackendError> {
        Ok(vec![world::USER.to_owned()])
    }
    async fn received_details(&self, _p: &Principal) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn deliver(&self, d: Delivery) -> Result<(), BackendError> {
        // What a session hands over is a whole message: no bare CR or LF (smuggling), and a
        // recipient to go to.
        assert!(!d.local.is_empty() || !d.remote.is_empty());
        for (i, &b) in d.body.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && d.body[i - 1] == b'\r', "bare LF delivered");
            }
        }
        Ok(())
    }
}

fn servers() -> &'static (world::World, Arc<postern_smtp::SmtpServer>) {
    static S: OnceLock<(world::World, Arc<postern_smtp::SmtpServer>)> = OnceLock::new();
    S.get_or_init(|| {
        let w = world::build();
        let srv = Arc::new(postern_smtp::SmtpServer {
            hostname: "mail.x.test".into(),
            config: postern_config::SmtpConfig {
                max_message_size: 65536,
                ..Default::default()
            },
            backend: Arc::new(Mem),
            auth: w.auth.clone(),
            tls: w.tls.clone(),
            send_limiter: Default::default(),
            // no DNS in a fuzz run: the port-25 checks have their own target (auth_results)
            inbound: None,
            greylist: false,
            trusted_networks: Vec::new(),
            revocations: Default::default(),
        });
        (w, srv)
    })
}

fuzz_target!(|data: &[u8]| {
    let (w, srv) = servers();
    let srv = srv.clone();
    let Some((&port, rest)) = data.split_first() else {
        return;
    };
    let protocol = if port & 1 == 1 {
        postern_config::Protocol::Submissions
    } else {
        postern_config::Protocol::Smtp
    };
    world::drive(w, rest, move |stream| {
        postern_smtp::serve_stream(
            srv,
            protocol,
            stream,
            world::peer(),
            tokio_util::sync::CancellationToken::new(),
        )
    });
});
