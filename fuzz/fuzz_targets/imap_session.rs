//! A whole IMAP session driven by arbitrary command sequences over an in-process stream: login,
//! SELECT/EXAMINE, FETCH, STORE, SEARCH, COPY/MOVE, EXPUNGE, APPEND with literals, IDLE … the
//! state machine and the store behind it, not only the parser.
#![no_main]
#![forbid(unsafe_code)]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

#[path = "session_world.rs"]
mod world;

fn server() -> &'static (world::World, Arc<postern_imap::ImapServer>) {
    static S: OnceLock<(world::World, Arc<postern_imap::ImapServer>)> = OnceLock::new();
    S.get_or_init(|| {
        let w = world::build();
        let srv = Arc::new(postern_imap::ImapServer {
            hostname: "mail.x.test".into(),
            config: postern_config::ImapConfig {
                greeting_delay_ms: 0,
                ..Default::default()
            },
            store: w.store.clone(),
            auth: w.auth.clone(),
            tls: w.tls.clone(),
            sessions: Default::default(),
            revocations: Default::default(),
            compressed: Default::default(),
        });
        (w, srv)
    })
}

fuzz_target!(|data: &[u8]| {
    let (w, srv) = server();
    let srv = srv.clone();
    world::drive(w, data, move |stream| {
        postern_imap::serve_stream(
            srv,
            postern_config::Protocol::Imaps,
            stream,
            world::peer(),
            tokio_util::sync::CancellationToken::new(),
        )
    });
});
