//! The administrators' web console (`/admin`): sign-in (password and TOTP, through the admin
//! API's own login, so the same guard, code accounting and audit apply; a first sign-in enrols
//! TOTP), the navigation shared by every section, and the dashboard: the last day's logins drawn
//! server-side as inline SVG (per hour, per door, the most attacked names), the active bans with
//! a button to lift one, and the queue's depth, refreshed by a script of this site. The other
//! sections are in `console_pages.rs`.
//!
//! The session is the admin API's own (a `psn_` token, `[admin] session_secs`), carried in the
//! cookie `__Host-postern_admin` (Secure, HttpOnly, SameSite=Strict); the caller it stands for
//! is built by the same code as a bearer token's, with the door `console`, so every role check
//! and every audit event is the API's. The CSRF token of its forms is derived from the session
//! token (a digest no other site can compute). Each section shows only what the role may read,
//! and every action checks the role again.

use askama::Template;
use axum::Form;

use super::common::*;
use super::html::{cookie, page, redirect, with_cookie};

const COOKIE: &str = "__Host-postern_admin";

#[derive(Template)]
#[template(path = "admin/login.html")]
struct LoginPage {
    message: Option<&'static str>,
}

struct BanRow {
    target: String,
    until: String,
    reason: String,
}

/// A link of the console's navigation.
pub(super) struct Nav {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

/// What every console page shows around its content: who is signed in, the navigation (only
/// the sections the role may read), the sign-out form's CSRF token, and a notice.
pub(super) struct Frame {
    pub name: String,
    pub role: String,
    pub csrf: String,
    pub nav: Vec<Nav>,
    pub notice: Option<String>,
    /// The notice reports a refusal or an error.
    pub failed: bool,
}

impl Frame {
    pub(super) fn new(c: &Caller, token: &str, current: &str) -> Frame {
        const SECTIONS: [(&str, &str, Option<Perm>); 9] = [
            ("/admin", "Dashboard", None),
            ("/admin/users", "Users", Some(Perm::ReadDirectory)),
            ("/admin/domains", "Domains", Some(Perm::ReadDirectory)),
            (
                "/admin/applications",
                "Applications",
                Some(Perm::ReadCredentials),
            ),
            ("/admin/bans", "Bans", Some(Perm::ReadBans)),
            ("/admin/audit", "Audit log", Some(Perm::ReadAudit)),
            ("/admin/queue", "Queue", Some(Perm::ReadQueue)),
            ("/admin/secrets", "Secrets", Some(Perm::ReadSecrets)),
            ("/admin/admins", "Administrators", Some(Perm::ManageAdmins)),
        ];
        Frame {
            name: c.actor.name.clone(),
            role: c.role.as_str().to_owned(),
            csrf: csrf_of(token),
            nav: SECTIONS
                .iter()
                .filter(|(_, _, p)| p.is_none_or(|p| c.may(p).is_ok()))
                .map(|(href, label, _)| Nav {
                    href,
                    label,
                    current: *href == current,
                })
                .collect(),
            notice: None,
            failed: false,
        }
    }
}

#[derive(Template)]
#[template(path = "admin/dashboard.html")]
struct Dashboard {
    f: Frame,
    can_audit: bool,
    can_read_bans: bool,
    can_manage_bans: bool,
    ok_total: i64,
    failed_total: i64,
    /// An inline SVG built here from numbers only.
    chart: String,
    per_protocol: Vec<(String, i64, i64)>,
    most_failed: Vec<(String, i64)>,
    /// Bans, lockouts and messages sent in the last 24 hours, and their chart.
    bans_total: i64,
    lockouts_total: i64,
    sent_total: i64,
    events_chart: String,
    bans: Vec<BanRow>,
    queued: i64,
    held: i64,
}

pub(super) fn csrf_of(token: &str) -> String {
    hex::encode(digest(&format!("console-csrf:{token}")))
}

/// The signed-in administrator of the request and the session token.
pub(super) async fn caller(
    st: &ApiState,
    headers: &axum::http::HeaderMap,
    ip: IpAddr,
) -> Option<(Caller, String)> {
    let t = cookie(headers, COOKIE)?;
    let c = caller_for_token(st, &t, ip, "console").await.ok()?;
    // API keys are for automation, not for a browser
    c.session.is_some().then_some((c, t))
}

pub(super) async fn login_form(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    match caller(&st, &headers, addr.ip()).await {
        Some(_) => redirect("/admin"),
        None => page(LoginPage { message: None }, StatusCode::OK),
    }
}

#[derive(Deserialize)]
pub struct LoginForm {
    name: String,
    password: SecretString,
    totp: SecretString,
}

const FAILED: &str = "Sign-in failed: check the name, the password and the code.";

pub(super) async fn login(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    Form(f): Form<LoginForm>,
) -> Response {
    let totp = Some(f.totp).filter(|t| !t.expose_secret().trim().is_empty());
    let req = super::session::login_request(f.name, f.password, totp);
    let r = super::session::login(State(st.clone()), ConnectInfo(PeerAddr(addr)), Body(req)).await;
    let resp = match r {
        Ok(resp) => resp,
        Err(ApiError::TooMany) => {
            let m = Some("Too many failed sign-ins from your address; try again later.");
            return page(LoginPage { message: m }, StatusCode::TOO_MANY_REQUESTS);
        }
        Err(_) => {
            return page(
                LoginPage {
                    message: Some(FAILED),
                },
                StatusCode::UNAUTHORIZED,
            )
        }
    };
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if v["status"] == "enrollment_required" {
        // first sign-in: the TOTP enrolment, here as through POST /api/v1/login/enroll
        return page(
            EnrollPage {
                message: None,
                qr_svg: super::portal::qr_svg(v["otpauth_uri"].as_str().unwrap_or_default()),
                secret: v["secret"].as_str().unwrap_or_default().to_owned(),
                enrollment_token: v["enrollment_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                recovery: Vec::new(),
            },
            StatusCode::OK,
        );
    }
    let Some(t) = v["token"].as_str().filter(|_| v["status"] == "ok") else {
        return page(
            LoginPage {
                message: Some(FAILED),
            },
            StatusCode::UNAUTHORIZED,
        );
    };
    with_cookie("/admin", COOKIE, t, st.cfg.admin.session_secs as i64)
}

#[derive(Template)]
#[template(path = "admin/enroll.html")]
struct EnrollPage {
    message: Option<&'static str>,
    qr_svg: String,
    secret: String,
    enrollment_token: String,
    recovery: Vec<String>,
}

#[derive(Deserialize)]
pub struct EnrollForm {
    enrollment_token: SecretString,
    code: SecretString,
}

/// Finishes a first sign-in's TOTP enrolment (the API's own `login/enroll`): the recovery codes
/// are shown once and the session starts.
pub(super) async fn enroll(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    Form(f): Form<EnrollForm>,
) -> Response {
    let req = super::session::enroll_request(f.enrollment_token, f.code);
    let r = super::session::login_enroll(State(st.clone()), ConnectInfo(PeerAddr(addr)), Body(req))
        .await;
    let Ok(resp) = r else {
        let m = Some("The code was not right or the enrolment expired: sign in again.");
        return page(LoginPage { message: m }, StatusCode::UNAUTHORIZED);
    };
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(t), Some(codes)) = (v["token"].as_str(), v["recovery_codes"].as_array()) else {
        return page(
            LoginPage {
                message: Some(FAILED),
            },
            StatusCode::UNAUTHORIZED,
        );
    };
    let recovery = codes
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    let mut r = page(
        EnrollPage {
            message: None,
            qr_svg: String::new(),
            secret: String::new(),
            enrollment_token: String::new(),
            recovery,
        },
        StatusCode::OK,
    );
    let cookie = format!(
        "{COOKIE}={t}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        st.cfg.admin.session_secs
    );
    if let Ok(v) = cookie.parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// Logins per hour of the last 24 as bars: succeeded above the axis, failed below.
fn chart(per_hour: &[(i64, String, i64)], now: i64) -> String {
    let first = (now / 3600 - 23) * 3600;
    let mut ok = [0i64; 24];
    let mut failed = [0i64; 24];
    for (h, r, n) in per_hour {
        let i = (h - first) / 3600;
        if (0..24).contains(&i) {
            if r == "ok" {
                ok[i as usize] += n;
            } else {
                failed[i as usize] += n;
            }
        }
    }
    let max = ok
        .iter()
        .chain(failed.iter())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let (w, half) = (24.0 * 20.0, 80.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {}\" width=\"100%\" role=\"img\" \
         aria-label=\"Logins per hour\" id=\"logins-chart\"><line x1=\"0\" y1=\"{half}\" x2=\"{w}\" y2=\"{half}\" stroke=\"#888\"/>",
        2.0 * half + 4.0
    );
    for i in 0..24 {
        let x = i as f64 * 20.0 + 3.0;
        let hok = ok[i] as f64 / max * (half - 2.0);
        let hf = failed[i] as f64 / max * (half - 2.0);
        if ok[i] > 0 {
            svg.push_str(&format!(
                "<rect class=\"ok\" x=\"{x}\" y=\"{:.1}\" width=\"14\" height=\"{hok:.1}\" fill=\"#0b5cad\"><title>{} succeeded</title></rect>",
                half - hok,
                ok[i]
            ));
        }
        if failed[i] > 0 {
            svg.push_str(&format!(
                "<rect class=\"failed\" x=\"{x}\" y=\"{half}\" width=\"14\" height=\"{hf:.1}\" fill=\"#c0262d\"><title>{} failed</title></rect>",
                failed[i]
            ));
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Bans, lockouts and messages sent per hour of the last 24, as three thin bars per hour (each
/// scaled to its own maximum: they differ by orders of magnitude).
fn events_chart(per_hour: &[(i64, String, i64)], now: i64) -> String {
    let first = (now / 3600 - 23) * 3600;
    const KINDS: [(&str, &str, &str); 3] = [
        ("ban", "#c0262d", "bans"),
        ("lockout", "#b35c00", "lockouts"),
        ("mail_sent", "#0b5cad", "messages sent"),
    ];
    let mut counts = [[0i64; 24]; 3];
    for (h, e, n) in per_hour {
        let i = (h - first) / 3600;
        if let (Some(k), true) = (
            KINDS.iter().position(|(name, _, _)| name == e),
            (0..24).contains(&i),
        ) {
            counts[k][i as usize] += n;
        }
    }
    let height = 80.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 480 {}\" width=\"100%\" role=\"img\" \
         aria-label=\"Bans, lockouts and messages sent per hour\" id=\"events-chart\">\
         <line x1=\"0\" y1=\"{height}\" x2=\"480\" y2=\"{height}\" stroke=\"#888\"/>",
        height + 4.0
    );
    for (k, (name, colour, label)) in KINDS.iter().enumerate() {
        let max = counts[k].iter().copied().max().unwrap_or(0).max(1) as f64;
        for (i, n) in counts[k].iter().enumerate() {
            if *n > 0 {
                let h = *n as f64 / max * (height - 2.0);
                svg.push_str(&format!(
                    "<rect class=\"{name}\" x=\"{}\" y=\"{:.1}\" width=\"5\" height=\"{h:.1}\" fill=\"{colour}\"><title>{n} {label}</title></rect>",
                    i as f64 * 20.0 + 2.0 + k as f64 * 6.0,
                    height - h
                ));
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

async fn dashboard(
    st: &ApiState,
    c: &Caller,
    t: &str,
    notice: Option<String>,
) -> ApiResult<Response> {
    let can_audit = c.may(Perm::ReadAudit).is_ok();
    let can_read_bans = c.may(Perm::ReadBans).is_ok();
    let can_manage_bans = c.may(Perm::ManageBans).is_ok();
    let now = postern_store::now();
    let summary = if can_audit {
        st.store.auth_summary(now - 24 * 3600).await?
    } else {
        Default::default()
    };
    let total = |which: &str| {
        summary
            .per_hour
            .iter()
            .filter(|(_, r, _)| r == which)
            .map(|(_, _, n)| n)
            .sum::<i64>()
    };
    let event_total = |which: &str| {
        summary
            .events_per_hour
            .iter()
            .filter(|(_, e, _)| e == which)
            .map(|(_, _, n)| n)
            .sum::<i64>()
    };
    let mut per_protocol: Vec<(String, i64, i64)> = Vec::new();
    for (p, r, n) in &summary.per_protocol {
        if !per_protocol.iter().any(|x| &x.0 == p) {
            per_protocol.push((p.clone(), 0, 0));
        }
        if let Some(row) = per_protocol.iter_mut().find(|x| &x.0 == p) {
            if r == "ok" {
                row.1 += n;
            } else {
                row.2 += n;
            }
        }
    }
    let bans = if can_read_bans {
        st.store
            .list_bans()
            .await?
            .into_iter()
            .map(|b| BanRow {
                target: b.target.to_string(),
                until: chrono::DateTime::from_timestamp(b.until as i64, 0)
                    .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_default(),
                reason: b.reason,
            })
            .collect()
    } else {
        Vec::new()
    };
    let counts = st.store.queue_counts().await?;
    let count = |s: &str| counts.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
    Ok(page(
        Dashboard {
            f: Frame {
                notice,
                ..Frame::new(c, t, "/admin")
            },
            can_audit,
            can_read_bans,
            can_manage_bans,
            ok_total: total("ok"),
            failed_total: total("failed"),
            chart: chart(&summary.per_hour, now),
            bans_total: event_total("ban"),
            lockouts_total: event_total("lockout"),
            sent_total: event_total("mail_sent"),
            events_chart: events_chart(&summary.events_per_hour, now),
            per_protocol,
            most_failed: summary.most_failed,
            bans,
            queued: count("queued"),
            held: count("held"),
        },
        StatusCode::OK,
    ))
}

pub(super) async fn home(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    match caller(&st, &headers, addr.ip()).await {
        Some((c, t)) => dashboard(&st, &c, &t, None).await,
        None => Ok(redirect("/admin/login")),
    }
}

#[derive(Deserialize)]
pub struct LiftForm {
    csrf: String,
    target: String,
}

pub(super) async fn lift_ban(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<LiftForm>,
) -> ApiResult<Response> {
    let Some((c, t)) = caller(&st, &headers, addr.ip()).await else {
        return Ok(redirect("/admin/login"));
    };
    if csrf_of(&t) != f.csrf {
        return Err(ApiError::Forbidden);
    }
    c.may(Perm::ManageBans)?;
    let target = Cidr::parse(&f.target).map_err(ApiError::Unprocessable)?;
    let notice =
        if crate::ops::bans::remove(&st.store, Some(st.auth.guard()), &c.actor, &target).await? {
            format!("The ban on {target} is lifted.")
        } else {
            format!("No ban on {target}.")
        };
    dashboard(&st, &c, &t, Some(notice)).await
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub(super) async fn logout(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<CsrfForm>,
) -> ApiResult<Response> {
    if let Some((_, t)) = caller(&st, &headers, addr.ip()).await {
        if csrf_of(&t) != f.csrf {
            return Err(ApiError::Forbidden);
        }
        st.store.end_admin_session(&digest(&t)).await?;
    }
    Ok(with_cookie("/admin/login", COOKIE, "", 0))
}

/// The dashboard's live refresh (see the file's own comment).
pub(super) async fn live_js() -> Response {
    super::html::asset(
        "text/javascript; charset=utf-8",
        include_str!("../../static/live.js"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_draws_each_hour() {
        let now = 100 * 3600 + 1800;
        let svg = chart(
            &[
                (100 * 3600, "ok".into(), 4),
                (100 * 3600, "failed".into(), 8),
                (90 * 3600, "failed".into(), 2),
                (10 * 3600, "failed".into(), 99),
            ],
            now,
        );
        assert_eq!(svg.matches("class=\"ok\"").count(), 1);
        assert_eq!(svg.matches("class=\"failed\"").count(), 2, "{svg}");
        assert!(svg.contains("<title>8 failed</title>") && !svg.contains("99"));
    }

    #[test]
    fn the_events_chart_draws_each_kind() {
        let now = 100 * 3600 + 10;
        let svg = events_chart(
            &[
                (100 * 3600, "ban".into(), 2),
                (99 * 3600, "mail_sent".into(), 500),
                (99 * 3600, "lockout".into(), 1),
                (99 * 3600, "auth".into(), 7),
                (50 * 3600, "ban".into(), 9),
            ],
            now,
        );
        assert_eq!(svg.matches("class=\"ban\"").count(), 1, "{svg}");
        assert!(svg.contains("<title>500 messages sent</title>"));
        assert!(svg.contains("<title>1 lockouts</title>") && !svg.contains("<title>9 "));
        assert!(!svg.contains(">7 "));
    }
}
