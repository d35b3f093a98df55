//! The self-service portal of mail users (`/account`), served beside the admin API (and on the
//! users-only `[web]` listener) over HTTPS: server-rendered pages (askama), the same operations
//! as the CLI and the API (every change audited with the user as its actor, `web:ADDRESS`).
//! Two small scripts of this site add live password feedback and passkeys (WebAuthn runs in the
//! browser); everything else works without JavaScript.
//!
//! Signing in goes through the auth core as any mail login does (door `web`: the same guard,
//! throttling, bans and audit; app passwords never open it); an account with a second factor
//! then needs its TOTP or recovery code, checked here, a wrong one counting as a failed login.
//! The session is a cookie `__Host-postern_account` (Secure, HttpOnly, SameSite=Strict, path
//! `/`), stored as its SHA-256 digest and ended by logout, expiry, a disabled account or an
//! incident lock. Every form carries the session's CSRF token. Pages are sent with a
//! Content-Security-Policy that allows only this site's stylesheet and scripts (no inline
//! script), with `no-store`.

use askama::Template;
use axum::Form;
use postern_auth::{AuthOutcome, LoginAttempt};
use postern_types::Protocol;

use super::common::*;
use super::html::{cookie, page, redirect, with_cookie};

pub(super) const COOKIE: &str = "__Host-postern_account";
/// How long a portal session lasts (no sliding renewal: sign in again after it).
pub(super) const SESSION_SECS: i64 = 30 * 60;
const STYLE: &str = include_str!("../../static/account.css");

#[derive(Template)]
#[template(path = "account/login.html")]
struct LoginPage {
    message: Option<&'static str>,
    address: String,
}

struct AppPasswordRow {
    name: String,
    protocols: String,
    networks: String,
    expires: String,
    last_used: String,
}

struct SigninRow {
    when: String,
    protocol: String,
    ip: String,
    mechanism: String,
    result: String,
}

struct Created {
    name: String,
    secret: String,
    /// The app password as a QR code (inline SVG), for a phone's camera.
    qr_svg: String,
    /// An Apple configuration profile with it, as a data: URL to download.
    mobileconfig: Option<String>,
    /// (what, host:port and security) for the mail program's settings
    servers: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "account/twofactor.html")]
struct TwoFactorPage {
    message: Option<&'static str>,
    csrf: String,
    /// The otpauth URI as an inline SVG (made here from our own data, not the user's)
    qr_svg: String,
    secret: String,
    recovery: Vec<String>,
}

#[derive(Template)]
#[template(path = "account/overview.html")]
struct Overview {
    address: String,
    csrf: String,
    notice: Option<String>,
    created: Option<Created>,
    two_factor: bool,
    recovery_left: i64,
    /// (name, created, last used)
    passkeys: Vec<(String, String, String)>,
    app_passwords: Vec<AppPasswordRow>,
    signins: Vec<SigninRow>,
}

fn login_page(message: Option<&'static str>, address: String, status: StatusCode) -> Response {
    page(LoginPage { message, address }, status)
}

fn when(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// The live session of the request, with its token's digest.
async fn session(
    st: &ApiState,
    headers: &axum::http::HeaderMap,
) -> ApiResult<Option<(postern_store::web::WebSession, [u8; 32])>> {
    let Some(token) = cookie(headers, COOKIE) else {
        return Ok(None);
    };
    let d = digest(&token);
    Ok(st.store.web_session(&d).await?.map(|s| (s, d)))
}

/// The session of a form's request, its CSRF token checked: `Err` with the reply to send when
/// there is no session (to the sign-in page) or the token is not the session's (403).
async fn form_session(
    st: &ApiState,
    headers: &axum::http::HeaderMap,
    csrf: &str,
) -> ApiResult<Result<postern_store::web::WebSession, Response>> {
    let Some((s, _)) = session(st, headers).await? else {
        return Ok(Err(redirect("/account/login")));
    };
    if !csrf_ok(&s, csrf) {
        return Err(ApiError::Forbidden);
    }
    Ok(Ok(s))
}

/// The session of a form that asks the password again before a sensitive change: `Err` with the
/// reply to send when there is no session, or the password is not right (the overview, saying
/// so; the failure counted as a login failure by the auth core).
async fn reauthed_session(
    st: &ApiState,
    headers: &axum::http::HeaderMap,
    csrf: &str,
    password: &SecretString,
    ip: IpAddr,
) -> ApiResult<Result<postern_store::web::WebSession, Response>> {
    let s = match form_session(st, headers, csrf).await? {
        Ok(s) => s,
        Err(reply) => return Ok(Err(reply)),
    };
    if !reauthenticated(st, &s, password, ip).await {
        let n = Some("The password was not right.".to_owned());
        return overview(st, &s, n, None).await.map(Err);
    }
    Ok(Ok(s))
}

/// A form's CSRF token must be the session's (their digests compared: the timing of the
/// comparison tells nothing about the token).
pub(super) fn csrf_ok(s: &postern_store::web::WebSession, given: &str) -> bool {
    digest(&s.csrf) == digest(given)
}

/// Records a change the session's user made (actor `web:ADDRESS`) in the audit log.
async fn audit(
    st: &ApiState,
    s: &postern_store::web::WebSession,
    ip: IpAddr,
    event: &str,
    detail: &str,
) -> ApiResult<()> {
    record(&st.store, &actor(s, ip), event, &s.address, detail)
        .await
        .map_err(|_| ApiError::Internal)
}

/// The page that shows new recovery codes, once.
fn recovery_page(s: &postern_store::web::WebSession, recovery: Vec<String>) -> Response {
    page(
        TwoFactorPage {
            message: None,
            csrf: s.csrf.clone(),
            qr_svg: String::new(),
            secret: String::new(),
            recovery,
        },
        StatusCode::OK,
    )
}

pub(super) fn actor(s: &postern_store::web::WebSession, ip: IpAddr) -> Actor {
    Actor {
        door: "web",
        name: postern_auth::loggable_username(&s.address),
        ip: Some(ip),
    }
}

pub(super) async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
        ],
        STYLE,
    )
        .into_response()
}

pub(super) async fn login_form(State(st): St, headers: axum::http::HeaderMap) -> Response {
    match session(&st, &headers).await {
        Ok(Some(_)) => redirect("/account"),
        _ => login_page(None, String::new(), StatusCode::OK),
    }
}

#[derive(Deserialize)]
pub struct LoginForm {
    address: String,
    password: SecretString,
    #[serde(default)]
    code: Option<SecretString>,
    /// A passkey's assertion (`PublicKeyCredential.toJSON()`), instead of a code.
    #[serde(default)]
    passkey: Option<String>,
}

async fn audit_second_factor(st: &ApiState, address: &str, ip: IpAddr, ok: bool, mechanism: &str) {
    let r = st
        .store
        .append_audit(&[NewAudit {
            ts: postern_store::now(),
            event: "auth".into(),
            protocol: Some("web".into()),
            ip: Some(ip.to_string()),
            username: Some(postern_auth::loggable_username(address)),
            mechanism: Some(mechanism.into()),
            tls: Some("TLS".into()),
            result: if ok { "ok" } else { "failed" }.into(),
            reason: (!ok).then(|| "bad_second_factor".to_owned()),
            ..Default::default()
        }])
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "portal: could not write the audit log");
    }
}

/// Why a sign-in failed: what the user is told, and the status.
pub(super) struct SignInFailed(pub &'static str, pub StatusCode);

const FAILED: &str = "Sign-in failed: check the address, the password and the code.";

/// Signs a mail user in (the portal's form and `POST /api/v1/me/session` alike): the password
/// through the auth core (door `web`), then, with a second factor on, its code, counted by the
/// guard as at every other door. The account's id when both are right.
pub(super) async fn sign_in(
    st: &ApiState,
    ip: IpAddr,
    address: &str,
    password: &SecretString,
    code: Option<&SecretString>,
    passkey: Option<&str>,
) -> ApiResult<Result<i64, SignInFailed>> {
    let failed = |status| Ok(Err(SignInFailed(FAILED, status)));
    let address = address.trim().to_lowercase();
    let keep = postern_auth::loggable_username(&address);
    if address.len() > 320 {
        return failed(StatusCode::UNAUTHORIZED);
    }
    let outcome = st
        .auth
        .authenticate(LoginAttempt {
            username: &address,
            password,
            protocol: Protocol::Web,
            mechanism: "password",
            remote_ip: ip,
            tls: Some("TLS"),
        })
        .await;
    const BUSY: &str = "Too many failed sign-ins from your address; try again later.";
    Ok(Ok(match outcome {
        AuthOutcome::Success(p) => p.account_id,
        AuthOutcome::AppPasswordRequired => {
            // the password was right and the account has a second factor: its code decides
            let code = code
                .map(|c| c.expose_secret().trim().to_owned())
                .unwrap_or_default();
            let info = match EmailAddress::parse(&address) {
                Ok(a) => st.store.account(&a).await.ok(),
                Err(_) => None,
            };
            let Some(info) = info else {
                return failed(StatusCode::UNAUTHORIZED);
            };
            // A wrong or missing code after the right password counts against the source and
            // the account's second factor (Guard::code_failure: a few lock it for unknown
            // sources), and gets the reply a wrong password gets: the password step is no
            // oracle.
            let guard = st.auth.guard();
            let passkey = passkey.filter(|p| !p.is_empty());
            let mechanism = if passkey.is_some() {
                "password+passkey"
            } else {
                "password+totp"
            };
            let code_fail = || async {
                audit_second_factor(st, &address, ip, false, mechanism).await;
                let effect = guard.code_failure(ip, &address).await;
                if effect.locked {
                    tracing::error!(target: "postern::alert", event = "second_factor_locked", account = %keep, ip = %ip, "wrong second-factor codes after the right password: the password is known; change it");
                    let _ = record(
                        &st.store,
                        &Actor::system("guard"),
                        "second_factor_locked",
                        &address,
                        &format!("second factor locked for unknown sources after wrong codes from {ip}: the password is known to someone"),
                    )
                    .await;
                }
                let status = if effect.banned.is_some() {
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    StatusCode::UNAUTHORIZED
                };
                Err(SignInFailed(FAILED, status))
            };
            match guard.check_code(ip, &address).await {
                Verdict::Banned => {
                    return Ok(Err(SignInFailed(BUSY, StatusCode::TOO_MANY_REQUESTS)))
                }
                Verdict::Locked => return Ok(code_fail().await),
                Verdict::Allow => {}
            }
            let owner = postern_store::totp::account_owner(info.id);
            let proven = match passkey {
                Some(answer) => st
                    .passkeys
                    .verify(&st.store, &owner, answer.as_bytes())
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "portal: passkey check failed");
                        ApiError::Internal
                    })?,
                None if code.is_empty() => false,
                None => crate::twofactor::verify(&st.store, &st.keys, &owner, &code)
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "portal: second-factor check failed");
                        ApiError::Internal
                    })?
                    .is_some(),
            };
            if !proven {
                return Ok(code_fail().await);
            }
            guard.success(ip, &address).await;
            audit_second_factor(st, &address, ip, true, mechanism).await;
            info.id
        }
        AuthOutcome::PasswordExpired => {
            return Ok(Err(SignInFailed(
                "Your password has expired: ask your administrator for a new one.",
                StatusCode::UNAUTHORIZED,
            )))
        }
        AuthOutcome::Refused => return Ok(Err(SignInFailed(BUSY, StatusCode::TOO_MANY_REQUESTS))),
        AuthOutcome::TemporaryFailure => {
            return Ok(Err(SignInFailed(
                "The server is busy; try again in a moment.",
                StatusCode::SERVICE_UNAVAILABLE,
            )))
        }
        AuthOutcome::Failure => return failed(StatusCode::UNAUTHORIZED),
    }))
}

/// A new session for an account: the token (for the cookie or a bearer header) and its CSRF
/// token; only the token's digest is stored.
pub(super) async fn new_session(
    st: &ApiState,
    account_id: i64,
    ip: IpAddr,
) -> ApiResult<(SecretString, SecretString)> {
    let token = new_token("pwa_");
    let csrf = new_token("");
    st.store
        .create_web_session(
            &digest(token.expose_secret()),
            account_id,
            csrf.expose_secret(),
            postern_store::now() + SESSION_SECS,
            &ip.to_string(),
        )
        .await?;
    Ok((token, csrf))
}

pub(super) async fn login(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    Form(f): Form<LoginForm>,
) -> ApiResult<Response> {
    let ip = addr.ip();
    let keep = postern_auth::loggable_username(&f.address.trim().to_lowercase());
    let passkey = f.passkey.as_deref();
    let account_id =
        match sign_in(&st, ip, &f.address, &f.password, f.code.as_ref(), passkey).await? {
            Ok(id) => id,
            Err(SignInFailed(m, status)) => {
                let keep = if f.address.len() > 320 {
                    String::new()
                } else {
                    keep
                };
                return Ok(login_page(Some(m), keep, status));
            }
        };
    let (token, _) = new_session(&st, account_id, ip).await?;
    Ok(with_cookie(
        "/account",
        COOKIE,
        token.expose_secret(),
        SESSION_SECS,
    ))
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub(super) async fn logout(
    State(st): St,
    headers: axum::http::HeaderMap,
    Form(f): Form<CsrfForm>,
) -> ApiResult<Response> {
    if let Some((s, d)) = session(&st, &headers).await? {
        if !csrf_ok(&s, &f.csrf) {
            return Err(ApiError::Forbidden);
        }
        st.store.end_web_session(&d).await?;
    }
    Ok(with_cookie("/account/login", COOKIE, "", 0))
}

/// The overview page of a session, with a notice or a just-created app password.
async fn overview(
    st: &ApiState,
    s: &postern_store::web::WebSession,
    notice: Option<String>,
    created: Option<Created>,
) -> ApiResult<Response> {
    let owner = postern_store::totp::account_owner(s.account_id);
    let two_factor = st
        .store
        .second_factor(&owner)
        .await?
        .is_some_and(|f| f.confirmed);
    let recovery_left = if two_factor {
        st.store.recovery_codes_left(&owner).await?
    } else {
        0
    };
    let passkeys = st
        .store
        .passkeys(&owner)
        .await?
        .into_iter()
        .map(|p| {
            let used = p.last_used_at.map_or_else(|| "never".into(), when);
            (p.name, when(p.created_at), used)
        })
        .collect();
    let app_passwords = st
        .store
        .list_app_passwords(s.account_id)
        .await?
        .into_iter()
        .map(|a| AppPasswordRow {
            name: a.name,
            protocols: a.protocols.join(", "),
            networks: if a.networks.is_empty() {
                "anywhere".into()
            } else {
                a.networks.join(", ")
            },
            expires: a.expires_at.map_or_else(|| "never".into(), when),
            last_used: match (a.last_used_at, a.last_used_ip) {
                (Some(t), Some(ip)) => format!("{} from {ip}", when(t)),
                (Some(t), None) => when(t),
                _ => "never".into(),
            },
        })
        .collect();
    let a = EmailAddress::parse(&s.address).map_err(|_| ApiError::Internal)?;
    let since = postern_store::now() - 30 * 86400;
    let mut signins: Vec<SigninRow> = crate::ops::incident::timeline(&st.store, &a, Some(since))
        .await?
        .into_iter()
        .filter(|r| r.event == "auth")
        .map(|r| SigninRow {
            when: when(r.ts),
            protocol: r.protocol.unwrap_or_default(),
            ip: r.ip.unwrap_or_default(),
            mechanism: r.mechanism.unwrap_or_default(),
            result: r.result,
        })
        .collect();
    signins.reverse();
    signins.truncate(50);
    Ok(page(
        Overview {
            address: s.address.clone(),
            csrf: s.csrf.clone(),
            notice,
            created,
            two_factor,
            recovery_left,
            passkeys,
            app_passwords,
            signins,
        },
        StatusCode::OK,
    ))
}

pub(super) async fn home(State(st): St, headers: axum::http::HeaderMap) -> ApiResult<Response> {
    match session(&st, &headers).await? {
        Some((s, _)) => overview(&st, &s, None, None).await,
        None => Ok(redirect("/account/login")),
    }
}

#[derive(Deserialize)]
pub struct CreateForm {
    csrf: String,
    name: String,
    #[serde(default)]
    imap: Option<String>,
    #[serde(default)]
    smtp: Option<String>,
    #[serde(default)]
    pop3: Option<String>,
    #[serde(default)]
    days: Option<String>,
    /// Networks (CIDR, comma- or space-separated) it may be used from; empty: anywhere.
    #[serde(default)]
    networks: Option<String>,
    /// The account password, asked again before a new credential is made.
    password: SecretString,
}

/// The settings a mail program needs, from the configured listeners (TLS ports only).
fn servers(cfg: &Config) -> Vec<(String, String)> {
    let host = &cfg.server.hostname;
    let mut out = Vec::new();
    for l in &cfg.listeners {
        let (what, how) = match l.protocol {
            Protocol::Imaps => ("Incoming mail (IMAP)", "SSL/TLS"),
            Protocol::Submissions => ("Outgoing mail (SMTP)", "SSL/TLS"),
            Protocol::Submission => ("Outgoing mail (SMTP)", "STARTTLS"),
            Protocol::Imap => ("Incoming mail (IMAP)", "STARTTLS"),
            _ => continue,
        };
        out.push((
            what.to_owned(),
            format!("{host}, port {}, {how}", l.address.port()),
        ));
    }
    out
}

pub(super) async fn create_app_password(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<CreateForm>,
) -> ApiResult<Response> {
    let s = match reauthed_session(&st, &headers, &f.csrf, &f.password, addr.ip()).await? {
        Ok(s) => s,
        Err(reply) => return Ok(reply),
    };
    let protocols: Vec<String> = [("imap", &f.imap), ("smtp", &f.smtp), ("pop3", &f.pop3)]
        .into_iter()
        .filter(|(_, on)| on.is_some())
        .map(|(p, _)| p.to_owned())
        .collect();
    let days = match f.days.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        None => None,
        Some(d) => match d.parse::<u64>() {
            Ok(n) if (1..=3650).contains(&n) => Some(n * 86400),
            _ => {
                let n = Some("The expiry must be a number of days from 1 to 3650.".into());
                return overview(&st, &s, n, None).await;
            }
        },
    };
    let a = EmailAddress::parse(&s.address).map_err(|_| ApiError::Internal)?;
    let name = f.name.trim().to_owned();
    let actor = actor(&s, addr.ip());
    let networks: Vec<String> = f
        .networks
        .as_deref()
        .unwrap_or("")
        .split([',', ' '])
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    match crate::ops::app_passwords::create(
        &st.store, &actor, &a, &name, &protocols, days, &networks,
    )
    .await
    {
        Ok((protocols, _, _, secret)) => {
            let secret = secret.expose_secret();
            let both = ["imap", "smtp"]
                .iter()
                .all(|p| protocols.iter().any(|x| x == p));
            let mobileconfig = both
                .then(|| super::autoconfig::mobileconfig(&st.cfg, &s.address, secret))
                .flatten()
                .map(|p| {
                    format!(
                        "data:application/x-apple-aspen-config;base64,{}",
                        base64::engine::general_purpose::STANDARD.encode(p)
                    )
                });
            let created = Created {
                name,
                secret: secret.to_owned(),
                qr_svg: qr_svg(secret),
                mobileconfig,
                servers: servers(&st.cfg),
            };
            overview(&st, &s, None, Some(created)).await
        }
        Err(e) => {
            let n = client_text(&format!("Not created: {e}"));
            overview(&st, &s, Some(n), None).await
        }
    }
}

#[derive(Deserialize)]
pub struct RevokeForm {
    csrf: String,
    name: String,
}

pub(super) async fn revoke_app_password(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<RevokeForm>,
) -> ApiResult<Response> {
    let s = match form_session(&st, &headers, &f.csrf).await? {
        Ok(s) => s,
        Err(reply) => return Ok(reply),
    };
    let a = EmailAddress::parse(&s.address).map_err(|_| ApiError::Internal)?;
    let notice = match crate::ops::app_passwords::revoke(
        &st.store,
        &actor(&s, addr.ip()),
        &a,
        &f.name,
    )
    .await
    {
        Ok(()) => format!("App password “{}” revoked.", f.name),
        Err(_) => "No such app password.".to_owned(),
    };
    overview(&st, &s, Some(client_text(&notice)), None).await
}

#[derive(Deserialize)]
pub struct ReauthForm {
    csrf: String,
    password: SecretString,
}

/// The session's account password checked again before a sensitive change (through the auth
/// core: a wrong one counts as a failed login). True if it is right.
pub(super) async fn reauthenticated(
    st: &ApiState,
    s: &postern_store::web::WebSession,
    password: &SecretString,
    ip: IpAddr,
) -> bool {
    let outcome = st
        .auth
        .authenticate(LoginAttempt {
            username: &s.address,
            password,
            protocol: Protocol::Web,
            mechanism: "password",
            remote_ip: ip,
            tls: Some("TLS"),
        })
        .await;
    // with a second factor on, a right password answers AppPasswordRequired
    matches!(
        outcome,
        AuthOutcome::Success(_) | AuthOutcome::AppPasswordRequired
    )
}

/// `data` as a QR code in an inline SVG (made here from our own data, never the user's input).
pub(super) fn qr_svg(data: &str) -> String {
    let svg = qrcode::QrCode::new(data.as_bytes())
        .map(|c| {
            c.render::<qrcode::render::svg::Color>()
                .min_dimensions(200, 200)
                .build()
        })
        .unwrap_or_default();
    // the XML prologue has no place inside HTML
    match svg.find("<svg") {
        Some(i) => svg[i..].to_owned(),
        None => String::new(),
    }
}

/// Starts a TOTP enrolment (after the password again): the secret as a QR code and as text.
pub(super) async fn begin_two_factor(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<ReauthForm>,
) -> ApiResult<Response> {
    let s = match reauthed_session(&st, &headers, &f.csrf, &f.password, addr.ip()).await? {
        Ok(s) => s,
        Err(reply) => return Ok(reply),
    };
    let owner = postern_store::totp::account_owner(s.account_id);
    let e = match crate::twofactor::begin(
        &st.store,
        &st.keys,
        &owner,
        &st.cfg.server.hostname,
        &s.address,
    )
    .await
    {
        Ok(e) => e,
        Err(err) => {
            let n = client_text(&format!("{err}"));
            return overview(&st, &s, Some(n), None).await;
        }
    };
    let qr_svg = qr_svg(e.uri.as_str());
    Ok(page(
        TwoFactorPage {
            message: None,
            csrf: s.csrf.clone(),
            qr_svg,
            secret: e.secret_base32.as_str().to_owned(),
            recovery: Vec::new(),
        },
        StatusCode::OK,
    ))
}

#[derive(Deserialize)]
pub struct CodeForm {
    csrf: String,
    code: SecretString,
}

/// Confirms the enrolment with a code from the app; the recovery codes are shown once.
pub(super) async fn confirm_two_factor(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<CodeForm>,
) -> ApiResult<Response> {
    let s = match form_session(&st, &headers, &f.csrf).await? {
        Ok(s) => s,
        Err(reply) => return Ok(reply),
    };
    let owner = postern_store::totp::account_owner(s.account_id);
    let code = f.code.expose_secret().trim().to_owned();
    match crate::twofactor::confirm(&st.store, &st.keys, &owner, &code).await {
        Ok(recovery) => {
            audit(&st, &s, addr.ip(), "2fa_enabled", "").await?;
            Ok(recovery_page(&s, recovery))
        }
        Err(_) => {
            let n = "The code was not right; start again and check the phone's clock.";
            overview(&st, &s, Some(n.into()), None).await
        }
    }
}

#[derive(Deserialize)]
pub struct PasswordForm {
    csrf: String,
    current: SecretString,
    new: SecretString,
}

/// A new password, after the current one: the server's own policy (length, strength estimate
/// with its feedback, common and breached lists, no reuse) decides, as for `postern user passwd`.
pub(super) async fn change_password(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<PasswordForm>,
) -> ApiResult<Response> {
    let s = match form_session(&st, &headers, &f.csrf).await? {
        Ok(s) => s,
        Err(reply) => return Ok(reply),
    };
    if !reauthenticated(&st, &s, &f.current, addr.ip()).await {
        let n = "The current password was not right.".to_owned();
        return overview(&st, &s, Some(n), None).await;
    }
    let a = EmailAddress::parse(&s.address).map_err(|_| ApiError::Internal)?;
    let notice = match crate::ops::accounts::set_password(
        &st.cfg,
        &st.store,
        &actor(&s, addr.ip()),
        &a,
        &f.new,
    )
    .await
    {
        Ok(()) => "Password changed.".to_owned(),
        Err(e) => client_text(&format!("Password not changed: {e}")),
    };
    overview(&st, &s, Some(notice), None).await
}

#[derive(Deserialize)]
pub struct OffForm {
    csrf: String,
    password: SecretString,
    code: SecretString,
}

/// Turns the second factor off: the password and a current code (or a recovery code) first.
pub(super) async fn two_factor_off(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<OffForm>,
) -> ApiResult<Response> {
    let s = match reauthed_session(&st, &headers, &f.csrf, &f.password, addr.ip()).await? {
        Ok(s) => s,
        Err(reply) => return Ok(reply),
    };
    // the code is counted as at sign-in: a wrong one is a failure against the source and the
    // account's second factor
    let owner = postern_store::totp::account_owner(s.account_id);
    let code = f.code.expose_secret().trim().to_owned();
    let guard = st.auth.guard();
    let proven = match guard.check_code(addr.ip(), &s.address).await {
        postern_auth::guard::Verdict::Allow if !code.is_empty() => {
            crate::twofactor::verify(&st.store, &st.keys, &owner, &code)
                .await
                .map_err(|_| ApiError::Internal)?
        }
        _ => None,
    };
    if proven.is_none() {
        guard.code_failure(addr.ip(), &s.address).await;
        return overview(&st, &s, Some("The code was not right.".into()), None).await;
    }
    let a = EmailAddress::parse(&s.address).map_err(|_| ApiError::Internal)?;
    crate::ops::accounts::reset_2fa(
        &st.store,
        &actor(&s, addr.ip()),
        &a,
        "turned off by its owner from the portal",
    )
    .await?;
    let n = "Two-factor authentication is off. Your app passwords still work.";
    overview(&st, &s, Some(n.into()), None).await
}

/// Ten new recovery codes (after the password again); the old ones stop working.
pub(super) async fn new_recovery_codes(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<ReauthForm>,
) -> ApiResult<Response> {
    let s = match reauthed_session(&st, &headers, &f.csrf, &f.password, addr.ip()).await? {
        Ok(s) => s,
        Err(reply) => return Ok(reply),
    };
    let owner = postern_store::totp::account_owner(s.account_id);
    let recovery = crate::twofactor::renew_recovery_codes(&st.store, &st.keys, &owner).await?;
    audit(&st, &s, addr.ip(), "2fa_recovery_renewed", "").await?;
    Ok(recovery_page(&s, recovery))
}

#[derive(Deserialize)]
pub struct CheckForm {
    csrf: String,
    new: SecretString,
}

/// The server's verdict on a password being typed (the live feedback of the change form): the
/// same policy as the change itself, nothing stored, nothing logged.
pub(super) async fn check_password(
    State(st): St,
    headers: axum::http::HeaderMap,
    Form(f): Form<CheckForm>,
) -> ApiResult<axum::Json<Value>> {
    let Some((s, _)) = session(&st, &headers).await? else {
        return Err(ApiError::Unauthorized("sign in first"));
    };
    if !csrf_ok(&s, &f.csrf) {
        return Err(ApiError::Forbidden);
    }
    Ok(axum::Json(verdict(&st, &s.address, &f.new)?))
}

/// The password policy's verdict on a candidate password of `address`, as JSON.
pub(super) fn verdict(st: &ApiState, address: &str, password: &SecretString) -> ApiResult<Value> {
    let policy = crate::password::policy(&st.cfg).map_err(|_| ApiError::Internal)?;
    Ok(match policy.check(password.expose_secret(), address) {
        Ok(()) => json!({"acceptable": true, "message": "Strong enough for this server."}),
        Err(v) => json!({"acceptable": false, "message": client_text(&v.to_string())}),
    })
}

#[derive(Deserialize)]
pub struct PasskeyBeginForm {
    csrf: String,
    password: SecretString,
}

/// Starts adding a passkey (after the password again; with TOTP on, as passkeys are a second
/// factor beside it): the options for `navigator.credentials.create`, as JSON for the page's
/// script.
pub(super) async fn begin_passkey(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<PasskeyBeginForm>,
) -> ApiResult<axum::Json<Value>> {
    let Some((s, _)) = session(&st, &headers).await? else {
        return Err(ApiError::Unauthorized("sign in first"));
    };
    if !csrf_ok(&s, &f.csrf) {
        return Err(ApiError::Forbidden);
    }
    if !reauthenticated(&st, &s, &f.password, addr.ip()).await {
        return Err(ApiError::Unprocessable(
            "The password was not right.".into(),
        ));
    }
    let owner = postern_store::totp::account_owner(s.account_id);
    if !st.store.second_factor_confirmed(&owner).await? {
        return Err(ApiError::Unprocessable(
            "Turn on two-factor authentication first: a passkey is a second factor beside it."
                .into(),
        ));
    }
    let options = st
        .passkeys
        .begin_registration(&st.store, &owner, &s.address)
        .await
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    Ok(axum::Json(options))
}

#[derive(Deserialize)]
pub struct PasskeyFinishForm {
    csrf: String,
    name: String,
    credential: String,
}

/// Stores the passkey the browser made (its answer checked against the challenge given).
pub(super) async fn finish_passkey(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<PasskeyFinishForm>,
) -> ApiResult<Response> {
    let s = match form_session(&st, &headers, &f.csrf).await? {
        Ok(s) => s,
        Err(reply) => return Ok(reply),
    };
    let name: String = f.name.trim().chars().filter(|c| !c.is_control()).collect();
    if name.is_empty() || name.chars().count() > 64 {
        let n = "A passkey needs a name of 1 to 64 characters.".to_owned();
        return overview(&st, &s, Some(n), None).await;
    }
    let owner = postern_store::totp::account_owner(s.account_id);
    let notice = match st
        .passkeys
        .finish_registration(&st.store, &owner, &name, f.credential.as_bytes())
        .await
    {
        Ok(()) => {
            audit(&st, &s, addr.ip(), "passkey_added", &format!("name={name}")).await?;
            format!("Passkey “{name}” added: use it instead of a code when you sign in.")
        }
        Err(e) => client_text(&format!("Passkey not added: {e}")),
    };
    overview(&st, &s, Some(notice), None).await
}

#[derive(Deserialize)]
pub struct PasskeyRemoveForm {
    csrf: String,
    name: String,
    password: SecretString,
}

pub(super) async fn remove_passkey(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<PasskeyRemoveForm>,
) -> ApiResult<Response> {
    let s = match reauthed_session(&st, &headers, &f.csrf, &f.password, addr.ip()).await? {
        Ok(s) => s,
        Err(reply) => return Ok(reply),
    };
    let owner = postern_store::totp::account_owner(s.account_id);
    let notice = match st.store.remove_passkey(&owner, &f.name).await {
        Ok(()) => {
            audit(
                &st,
                &s,
                addr.ip(),
                "passkey_removed",
                &format!("name={}", f.name),
            )
            .await?;
            format!("Passkey “{}” removed.", f.name)
        }
        Err(_) => "No such passkey.".to_owned(),
    };
    overview(&st, &s, Some(client_text(&notice)), None).await
}

/// A challenge for signing in with a passkey (any passkey of this site: no account is named, so
/// nothing is told about one). A banned source gets none.
pub(super) async fn passkey_challenge(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
) -> ApiResult<axum::Json<Value>> {
    if st.auth.guard().is_banned(addr.ip()) {
        return Err(ApiError::TooMany);
    }
    st.passkeys
        .begin_authentication()
        .map(axum::Json)
        .map_err(|_| ApiError::Unavailable("try again in a few minutes"))
}

pub(super) async fn passkey_js() -> Response {
    super::html::asset(
        "text/javascript; charset=utf-8",
        include_str!("../../static/passkey.js"),
    )
}

pub(super) async fn strength_js() -> Response {
    super::html::asset(
        "text/javascript; charset=utf-8",
        include_str!("../../static/strength.js"),
    )
}

/// "This wasn't me": the account's own incident lock (the same operation as `postern incident
/// lock`): logins off, app passwords and second factor removed, queued mail held, every live
/// session ended, this one included; an administrator unlocks it with a new password.
pub(super) async fn lock_own_account(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<CsrfForm>,
) -> ApiResult<Response> {
    let s = match form_session(&st, &headers, &f.csrf).await? {
        Ok(s) => s,
        Err(reply) => return Ok(reply),
    };
    let a = EmailAddress::parse(&s.address).map_err(|_| ApiError::Internal)?;
    crate::ops::incident::lock(
        &st.store,
        &actor(&s, addr.ip()),
        &a,
        "locked by its owner from the portal (a sign-in was not theirs)",
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "portal: incident lock failed");
        ApiError::Internal
    })?;
    Ok(login_page(
        Some("Your account is locked: every password, app password and session of it is off. Ask your administrator to unlock it with a new password."),
        String::new(),
        StatusCode::OK,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; __Host-postern_account=pwa_x".parse().unwrap(),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("pwa_x"));
        let mut h = axum::http::HeaderMap::new();
        h.append(header::COOKIE, "postern_account=pwa_x".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), None);
    }

    #[test]
    fn pages_escape_what_they_show() {
        let html = LoginPage {
            message: None,
            address: "\"><script>alert(1)</script>".into(),
        }
        .render()
        .unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&#34;&#62;&#60;script&#62;")
                || html.contains("&quot;&gt;&lt;script&gt;"),
            "{html}"
        );
    }
}
