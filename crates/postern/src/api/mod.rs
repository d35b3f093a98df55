//! The admin HTTP API: JSON over HTTPS (the mail listeners' certificate), on loopback by default,
//! described by `docs/openapi.json` (served at `/api/v1/openapi.json`).
//!
//! Who may call: administrators, who log in with password + TOTP (the first login of an
//! administrator without TOTP must enrol first) and get a short-lived session token; and API
//! keys for automation, each with a role and an expiry. Both are bearer tokens stored only as
//! SHA-256 digests. Every handler checks the caller's role ([`crate::roles::allows`]) and, for a
//! domain-admin, its domains; every change is an audit event naming the caller.
//!
//! Replies never reveal internals: store and I/O errors become `500 {"error":"internal error"}`
//! (and a log line); a failed login is the same `401` whether the name exists or not.
//!
//! The same listener serves HTML pages on top of the same operations: the mail users'
//! self-service portal (`/account`, `portal.rs`), the administrators' console (`/admin`,
//! `console.rs`), and client autoconfiguration for Thunderbird and Outlook (`autoconfig.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use postern_auth::guard::Cidr;

mod admins;
mod app_passwords;
mod applications;
mod audit;
mod autoconfig;
mod bans;
mod common;
mod console;
mod console_pages;
mod domains;
mod html;
mod listener;
mod me;
mod portal;
mod queue;
mod session;
mod users;

use admins::*;
use app_passwords::*;
use applications::*;
use audit::*;
use bans::*;
pub use common::ApiState;
use common::*;
use domains::*;
pub use listener::TlsListener;
use queue::*;
use session::*;
use users::*;

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

// ---------------------------------------------------------------------------------------------
// Router and server

/// What a listener serves: everything (the admin listener) or the mail users' part only (the
/// `[web]` listener: portal, `/api/v1/me/…`, autoconfiguration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Admin,
    Users,
}

/// The mail users' JSON API, under `/api/v1`.
fn me_routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route(
            "/me/session",
            post(me::create_session).delete(me::end_session),
        )
        .route("/me/account", get(me::account))
        .route("/me/account/password", post(me::change_password))
        .route("/me/account/password-check", post(me::check_password))
        .route(
            "/me/app-passwords",
            get(me::list_app_passwords).post(me::create_app_password),
        )
        .route("/me/app-passwords/{name}", delete(me::revoke_app_password))
        .route("/me/signins", get(me::signins))
        .route("/me/lock", post(me::lock))
}

pub fn router(state: Arc<ApiState>, surface: Surface) -> Router {
    let max_body = state.cfg.admin.max_body_bytes;
    let v1 = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/login", post(login))
        .route("/login/enroll", post(login_enroll))
        .route("/logout", post(logout))
        .route("/me", get(me))
        .route("/me/password", post(change_own_password))
        .route("/domains", get(list_domains).post(add_domain))
        .route("/domains/{name}", delete(remove_domain))
        .route("/domains/{name}/dns", get(dns_records))
        .route("/queue", get(list_queue))
        .route("/queue/{id}", delete(remove_queued))
        .route("/queue/{id}/retry", post(retry_queued))
        .route("/queue/{id}/hold", post(hold_queued))
        .route("/queue/{id}/release", post(release_queued))
        .route("/secrets", get(list_secrets))
        .route("/users", get(list_users).post(add_user))
        .route("/users/{address}", get(get_user).delete(remove_user))
        .route("/users/{address}/password", post(set_password))
        .route("/users/{address}/disable", post(disable_user))
        .route("/users/{address}/enable", post(enable_user))
        .route("/users/{address}/unlock", post(unlock_user))
        .route("/users/{address}/2fa", delete(reset_2fa))
        .route("/users/{address}/incident/lock", post(incident_lock))
        .route("/users/{address}/incident/unlock", post(incident_unlock))
        .route("/users/{address}/timeline", get(timeline))
        .route(
            "/users/{address}/app-passwords",
            get(list_app_passwords).post(create_app_password),
        )
        .route(
            "/users/{address}/app-passwords/{name}",
            delete(revoke_app_password),
        )
        .route(
            "/users/{address}/certs",
            get(list_client_certs).post(add_client_cert),
        )
        .route("/users/{address}/certs/{name}", delete(remove_client_cert))
        .route("/users/{address}/signins", get(list_signins))
        .route(
            "/applications",
            get(list_applications).post(create_application),
        )
        .route(
            "/applications/{name}",
            get(get_application).delete(remove_application),
        )
        .route("/applications/{name}/rotate", post(rotate_application))
        .route("/bans", get(list_bans).post(add_ban))
        .route("/bans/lift", post(lift_ban))
        .route("/audit-log", get(audit_log))
        .route("/admins", get(list_admins).post(add_admin))
        .route("/admins/{name}", delete(remove_admin))
        .route("/api-keys", get(list_api_keys).post(add_api_key))
        .route("/api-keys/{name}", delete(revoke_api_key));
    // The self-service portal of mail users (HTML forms)
    let account = Router::new()
        .route("/", get(portal::home))
        .route("/login", get(portal::login_form).post(portal::login))
        .route("/logout", post(portal::logout))
        .route("/style.css", get(portal::style))
        .route("/app-passwords", post(portal::create_app_password))
        .route("/app-passwords/revoke", post(portal::revoke_app_password))
        .route("/lock", post(portal::lock_own_account))
        .route("/password", post(portal::change_password))
        .route("/password/check", post(portal::check_password))
        .route("/strength.js", get(portal::strength_js))
        .route("/2fa/off", post(portal::two_factor_off))
        .route("/passkeys/begin", post(portal::begin_passkey))
        .route("/passkeys/finish", post(portal::finish_passkey))
        .route("/passkeys/remove", post(portal::remove_passkey))
        .route("/passkeys/challenge", post(portal::passkey_challenge))
        .route("/passkey.js", get(portal::passkey_js))
        .route("/2fa/recovery", post(portal::new_recovery_codes))
        .route("/2fa/begin", post(portal::begin_two_factor))
        .route("/2fa/confirm", post(portal::confirm_two_factor));
    // The administrators' web console (HTML forms; the same operations and role checks)
    let admin = Router::new()
        .route("/", get(console::home))
        .route("/login", get(console::login_form).post(console::login))
        .route("/login/enroll", post(console::enroll))
        .route("/logout", post(console::logout))
        .route("/bans/lift", post(console::lift_ban))
        .route("/do", post(console_pages::act_form))
        .route("/live.js", get(console::live_js))
        .route("/{section}", get(console_pages::view));
    let users = Router::new()
        .nest("/account", account)
        // client autoconfiguration (Thunderbird, Outlook)
        .route(
            "/.well-known/autoconfig/mail/config-v1.1.xml",
            get(autoconfig::thunderbird),
        )
        .route("/mail/config-v1.1.xml", get(autoconfig::thunderbird))
        .route(
            "/autodiscover/autodiscover.xml",
            post(autoconfig::autodiscover),
        )
        .route(
            "/Autodiscover/Autodiscover.xml",
            post(autoconfig::autodiscover),
        )
        .route("/account/", get(portal::home));
    let app = match surface {
        Surface::Admin => users
            .nest("/api/v1", v1.merge(me_routes()))
            .nest("/admin", admin)
            // Prometheus scrapes here with an API key (or a session) of a role that may read
            // the audit log (auditor, superadmin)
            .route("/metrics", get(metrics)),
        Surface::Users => users.nest("/api/v1", me_routes()),
    };
    app.fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn metrics(c: Caller) -> ApiResult<Response> {
    c.may(crate::roles::Perm::ReadAudit)?;
    Ok((
        [(header::CONTENT_TYPE, postern_metrics::CONTENT_TYPE)],
        postern_metrics::encode_text(),
    )
        .into_response())
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        "nosniff".parse().expect("static"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000; includeSubDomains"
            .parse()
            .expect("static"),
    );
    // JSON only: nothing in a reply may run, load or be framed, should a browser render it.
    // (The portal's pages set their own, which allows their stylesheet and nothing else.)
    h.entry(header::CONTENT_SECURITY_POLICY).or_insert(
        "default-src 'none'; frame-ancestors 'none'"
            .parse()
            .expect("static"),
    );
    h.insert(
        header::REFERRER_POLICY,
        "no-referrer".parse().expect("static"),
    );
    r
}

/// Binds the admin listener (`Surface::Admin`, `[admin]`) or the mail users' web listener
/// (`Surface::Users`, `[web]`) and serves it until `shutdown` resolves.
pub async fn serve(
    state: Arc<ApiState>,
    surface: Surface,
    addr: SocketAddr,
    tls: tokio_rustls::TlsAcceptor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let what = match surface {
        Surface::Admin => "the admin API",
        Surface::Users => "the web portal",
    };
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for {what}: {e}"))?;
    let local = tcp.local_addr()?;
    let allow = match surface {
        Surface::Admin => &state.cfg.admin.allow,
        Surface::Users => &state.cfg.web.allow,
    };
    let allow: Vec<Cidr> = allow.iter().filter_map(|a| Cidr::parse(a).ok()).collect();
    let guard = state.auth.guard().clone();
    let (listener, accept) = TlsListener::start(tcp, tls, allow, guard);
    let app = router(state, surface).into_make_service_with_connect_info::<PeerAddr>();
    tracing::info!(address = %local, "{what} listening (HTTPS)");
    Ok(tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        accept.abort();
        if let Err(e) = r {
            tracing::error!(error = %e, "{what} stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_text_quotes_only_an_excerpt() {
        let long = "a".repeat(5000);
        let m = super::client_text(&format!("invalid address \"{long}@x.test\"\n"));
        assert!(m.len() < 120, "{m}");
        assert!(
            m.starts_with("invalid address \"aaaa") && m.ends_with("…\""),
            "{m}"
        );
        assert_eq!(super::client_text("plain"), "plain");
        assert!(super::client_text(&"b".repeat(1000)).chars().count() <= 301);
    }
}
