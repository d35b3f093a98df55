//! A small world for the session fuzz targets: a store in a temporary directory with one
//! account and a few messages (one with bare LF line ends), an auth core with a cheap hasher, no
//! failure delays and loopback allowlisted (so the fuzzer is never banned), and a TLS acceptor.
//! Each input drives a whole session over an in-process stream (`MailStream::memory`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postern_auth::guard::{Cidr, Guard, GuardConfig, SystemClock};
use postern_auth::{Argon2Hasher, Authenticator, HashPool, PasswordHasher, TracingAudit};
use postern_store::Store;
use postern_types::{Domain, EmailAddress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const USER: &str = "fuzz@x.test";
pub const PASSWORD: &str = "fuzz-password";

pub struct World {
    pub rt: tokio::runtime::Runtime,
    pub store: Store,
    pub auth: Arc<Authenticator>,
    pub tls: postern_net::TlsAcceptor,
    _dir: tempfile::TempDir,
}

pub fn build() -> World {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    postern_net::tls::generate_self_signed("mail.x.test", &cert, &key).expect("certificate");
    let tls = postern_net::tls::load_acceptor(&cert, &key).expect("acceptor");
    let (store, auth) = rt.block_on(async {
        let store = Store::open(&dir.path().join("db"), &dir.path().join("blobs"))
            .await
            .expect("store");
        store
            .add_domain(&Domain::parse("x.test").unwrap())
            .await
            .unwrap();
        let hasher = Argon2Hasher::new(8, 1, 1).unwrap();
        let phc = hasher.hash(PASSWORD.as_bytes()).unwrap();
        let user = EmailAddress::parse(USER).unwrap();
        let id = store.add_account(&user, &phc).await.unwrap();
        for m in [
            &b"Subject: one\r\nFrom: a@x.test\r\n\r\nbody\r\n.dot\r\n"[..],
            b"Subject: bare\n\nline1\n.\nend\n",
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\npart\r\n--b--\r\n",
        ] {
            store
                .deliver_local(vec![m.to_vec()], &[id], postern_store::now())
                .await
                .unwrap();
        }
        let guard = Guard::new(
            GuardConfig {
                failure_delay_ms: 0,
                failure_delay_max_ms: 0,
                allowlist: vec![Cidr::parse("127.0.0.0/8").unwrap()],
                ..GuardConfig::default()
            },
            Arc::new(SystemClock),
            None,
        );
        let auth = Authenticator::new(
            Arc::new(store.clone()),
            HashPool::new(Arc::new(hasher), 4, Duration::from_secs(5)),
            Arc::new(TracingAudit),
        )
        .unwrap()
        .with_guard(Arc::new(guard));
        (store, Arc::new(auth))
    });
    World {
        rt,
        store,
        auth,
        tls,
        _dir: dir,
    }
}

pub fn peer() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

/// Feeds `input` to a session served on the other end of an in-process pipe, reads everything it
/// answers, and waits (bounded) for it to end. The first byte of the input chooses whether the
/// stream counts as encrypted (odd: as after TLS, so logins are allowed).
pub fn drive<F, Fut>(w: &World, data: &[u8], session: F)
where
    F: FnOnce(postern_net::MailStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some((&flag, input)) = data.split_first() else {
        return;
    };
    w.rt.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 16);
        let stream = postern_net::MailStream::memory(server, flag & 1 == 1);
        let task = tokio::spawn(session(stream));
        let (mut rd, mut wr) = tokio::io::split(client);
        let writer = async {
            let _ = wr.write_all(input).await;
            let _ = wr.shutdown().await;
        };
        let reader = async {
            let mut sink = vec![0u8; 1 << 16];
            while let Ok(n) = rd.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let both = async {
            tokio::join!(writer, reader);
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), both).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    });
}
