//! A whole POP3 session (AUTHORIZATION, TRANSACTION, UPDATE) driven by arbitrary command
//! sequences over an in-process stream: the state machine, not only the parser. Logins, RETR
//! (with CRLF normalisation and dot-stuffing), TOP, DELE, RSET, UIDL and QUIT reach the store.
#![no_main]
#![forbid(unsafe_code)]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

#[path = "session_world.rs"]
mod world;

fn server() -> &'static (world::World, Arc<postern_pop3::Pop3Server>) {
    static S: OnceLock<(world::World, Arc<postern_pop3::Pop3Server>)> = OnceLock::new();
    S.get_or_init(|| {
        let w = world::build();
        let srv = Arc::new(postern_pop3::Pop3Server {
            hostname: "mail.x.test".into(),
            config: postern_config::Pop3Config {
                greeting_delay_ms: 0,
                ..Default::default()
            },
            store: w.store.clone(),
            auth: w.auth.clone(),
            tls: w.tls.clone(),
            locks: Default::default(),
            revocations: Default::default(),
        });
        (w, srv)
    })
}

fuzz_target!(|data: &[u8]| {
    let (w, srv) = server();
    let srv = srv.clone();
    world::drive(w, data, move |stream| {
        postern_pop3::serve_stream(
            srv,
            postern_config::Protocol::Pop3s,
            stream,
            world::peer(),
            tokio_util::sync::CancellationToken::new(),
        )
    });
});
