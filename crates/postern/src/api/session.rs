//! Logging in (password, then a second-factor code; enrolment at the first login), sessions,
//! and an administrator's own password.

use super::common::*;

// ---------------------------------------------------------------------------------------------
// Login

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginReq {
    name: String,
    password: SecretString,
    #[serde(default)]
    totp: Option<SecretString>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollReq {
    enrollment_token: SecretString,
    code: SecretString,
}

pub(super) async fn audit_login(st: &ApiState, name: &str, ip: IpAddr, ok: bool, reason: &str) {
    let r = st
        .store
        .append_audit(&[NewAudit {
            ts: postern_store::now(),
            event: "auth".into(),
            protocol: Some("admin-api".into()),
            ip: Some(ip.to_string()),
            username: Some(postern_auth::loggable_username(name)),
            mechanism: Some("password+totp".into()),
            tls: Some("TLS".into()),
            result: if ok { "ok" } else { "failed" }.into(),
            reason: (!reason.is_empty()).then(|| reason.to_owned()),
            ..Default::default()
        }])
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "admin API: could not write the audit log");
    }
}

pub(super) async fn login(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    Body(req): Body<LoginReq>,
) -> ApiResult<Response> {
    let ip = addr.ip();
    let key = st.keys.clone();
    let guard = st.auth.guard().clone();
    let login = format!("admin:{}", req.name.trim().to_lowercase());
    match guard.check(ip, &login).await {
        Verdict::Banned => return Err(ApiError::TooMany),
        Verdict::Locked => {
            audit_login(&st, &req.name, ip, false, "locked").await;
            // The source pays for attempts on a locked account too.
            let effect = guard.locked_attempt(ip, &login, &req.password).await;
            return Err(failed(effect).await);
        }
        Verdict::Allow => {}
    }
    let name = req.name.trim();
    let mut found = st.store.admin_login(name).await?;
    // From the directory: a name it owns (or that is not local), password and role from there.
    let from_directory = match &st.ldap {
        Some(_) => st.store.admin_from_directory(name).await?.unwrap_or(true),
        None => false,
    };
    let matched = if let (true, Some(ldap)) = (from_directory, &st.ldap) {
        use postern_auth::DirectoryAnswer as D;
        let (answer, role) = ldap.check_admin(name, &req.password).await;
        let reason = match answer {
            D::Valid => None,
            D::Unavailable => {
                audit_login(&st, &req.name, ip, false, "directory_unavailable").await;
                return Err(ApiError::Unavailable(
                    "the directory is unavailable; try again",
                ));
            }
            D::NoSuchUser => Some("unknown_user"),
            D::BadPassword => Some("bad_password"),
            D::NotAllowed => Some("directory_denied"),
        };
        if let Some(reason) = reason {
            if answer == D::NoSuchUser {
                // the work of a local unknown name
                let _ = st
                    .auth
                    .pool()
                    .verify(&req.password, st.dummy_hash.clone())
                    .await;
            }
            audit_login(&st, &req.name, ip, false, reason).await;
            return Err(failed(guard.failure(ip, &login, &req.password).await).await);
        }
        let (role, domains) = role.ok_or(ApiError::Internal)?;
        st.store
            .sync_directory_admin(name, &st.dummy_hash, role, &domains)
            .await?;
        found = st.store.admin_login(name).await?;
        true
    } else {
        let phc = found
            .as_ref()
            .map_or(st.dummy_hash.clone(), |(_, h)| h.clone());
        st.auth
            .pool()
            .verify(&req.password, phc)
            .await
            .map_err(|_| ApiError::Unavailable("busy; try again"))?
    };
    let fail = |reason: &'static str| {
        let (st, guard, login, name, pw) = (
            st.clone(),
            guard.clone(),
            login.clone(),
            req.name.clone(),
            req.password.clone(),
        );
        async move {
            audit_login(&st, &name, ip, false, reason).await;
            failed(guard.failure(ip, &login, &pw).await).await
        }
    };
    let admin = match found {
        Some((a, _)) if matched && !a.disabled => a,
        Some((a, _)) if matched && a.disabled => return Err(fail("disabled").await),
        Some(_) => return Err(fail("bad_password").await),
        None => return Err(fail("unknown_user").await),
    };
    let owner = postern_store::totp::admin_owner(admin.id);
    let enrolled = st.store.second_factor_confirmed(&owner).await?;
    if !enrolled {
        // First login (or after a 2FA reset): the password alone only buys a TOTP enrolment.
        let e = crate::twofactor::begin(
            &st.store,
            &key,
            &owner,
            &st.cfg.server.hostname,
            &admin.name,
        )
        .await
        .map_err(|_| ApiError::Internal)?;
        let token = new_token("pen_");
        st.store
            .create_admin_session(
                &digest(token.expose_secret()),
                admin.id,
                "enroll",
                postern_store::now() + 600,
                &ip.to_string(),
            )
            .await?;
        audit_login(&st, &admin.name, ip, false, "totp_enrollment_required").await;
        return Ok((
            StatusCode::OK,
            axum::Json(json!({
                "status": "enrollment_required",
                "enrollment_token": token.expose_secret(),
                "otpauth_uri": e.uri.as_str(),
                "secret": e.secret_base32.as_str(),
            })),
        )
            .into_response());
    }
    // The second factor. Its failures are failures: every wrong or missing code counts
    // against the source and the account (never deduplicated by the password, which is the same
    // each time), a few lock the second factor for unknown sources, and the reply is the one a
    // wrong password gets, so the password step is no oracle.
    let code_fail = |reason: &'static str| {
        let (st, guard, login, name) =
            (st.clone(), guard.clone(), login.clone(), admin.name.clone());
        async move {
            audit_login(&st, &name, ip, false, reason).await;
            let effect = guard.code_failure(ip, &login).await;
            if effect.locked {
                second_factor_locked(&st, &name, ip).await;
            }
            failed(effect).await
        }
    };
    match guard.check_code(ip, &login).await {
        Verdict::Banned => return Err(ApiError::TooMany),
        Verdict::Locked => return Err(code_fail("second_factor_locked").await),
        Verdict::Allow => {}
    }
    let Some(code) = req.totp.as_ref() else {
        return Err(code_fail("totp_missing").await);
    };
    let proof = crate::twofactor::verify(&st.store, &key, &owner, code.expose_secret())
        .await
        .map_err(|_| ApiError::Internal)?;
    if proof.is_none() {
        return Err(code_fail("bad_totp").await);
    }
    guard.success(ip, &login).await;
    let detail = match proof {
        Some(crate::twofactor::Proof::RecoveryCode) => "recovery code used",
        _ => "",
    };
    audit_login(&st, &admin.name, ip, true, detail).await;
    session_reply(&st, admin.id, &admin.role, ip, None).await
}

/// A second factor was just locked by wrong codes: whoever sent them knew the password. An audit
/// event, an alert in the log, and a mail to the postmaster of each local domain.
pub(super) async fn second_factor_locked(st: &ApiState, name: &str, ip: IpAddr) {
    let system = Actor::system("guard");
    let detail = format!(
        "second factor locked for unknown sources after wrong codes from {ip}: the password is known to someone"
    );
    tracing::error!(target: "postern::alert", event = "second_factor_locked", admin = %postern_auth::loggable_username(name), ip = %ip, "wrong second-factor codes after the right password: the password is known; change it");
    if let Err(e) = record(
        &st.store,
        &system,
        "second_factor_locked",
        &format!("admin:{name}"),
        &detail,
    )
    .await
    {
        tracing::error!(error = %e, "admin API: could not write the audit log");
    }
    // Administrators have no mailbox of their own: the notice goes to the postmaster of each
    // local domain (RFC 2142), the operators' address.
    let accounts = crate::alerts::postmaster_accounts(&st.store).await;
    if accounts.is_empty() {
        return;
    }
    let now = chrono::Utc::now();
    let host = &st.cfg.server.hostname;
    let body = format!(
        "Wrong two-factor codes were sent for the administrator {name} together with the\r\n\
         right password, from {ip}, at {date}.\r\n\
         \r\n\
         The second factor of {name} is now locked for addresses it has not logged in from.\r\n\
         If this was not {name}, the password is known to someone: change it now\r\n\
         (postern admin passwd {name}).\r\n",
        date = now.to_rfc2822(),
    );
    let msg = crate::alerts::notice_message(
        host,
        &format!("postmaster@{host}"),
        "Someone knows your administrator password",
        &body,
    );
    if let Err(e) = st
        .store
        .deliver_local(vec![msg], &accounts, now.timestamp())
        .await
    {
        tracing::error!(error = %e, "could not deliver the second-factor notice");
    }
}

pub(super) async fn session_reply(
    st: &ApiState,
    admin_id: i64,
    role: &str,
    ip: IpAddr,
    recovery: Option<Vec<String>>,
) -> ApiResult<Response> {
    let token = new_token("psn_");
    let expires_at = postern_store::now() + st.cfg.admin.session_secs as i64;
    st.store
        .create_admin_session(
            &digest(token.expose_secret()),
            admin_id,
            "session",
            expires_at,
            &ip.to_string(),
        )
        .await?;
    let mut body = json!({
        "status": "ok",
        "token": token.expose_secret(),
        "expires_at": expires_at,
        "role": role,
    });
    if let Some(r) = recovery {
        body["recovery_codes"] = json!(r);
    }
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

pub(super) async fn login_enroll(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    Body(req): Body<EnrollReq>,
) -> ApiResult<Response> {
    let key = st.keys.clone();
    let d = digest(req.enrollment_token.expose_secret());
    let Some(admin) = st.store.admin_session(&d, "enroll").await? else {
        return Err(ApiError::Unauthorized(
            "invalid or expired enrollment token",
        ));
    };
    let owner = postern_store::totp::admin_owner(admin.id);
    let codes = crate::twofactor::confirm(&st.store, &key, &owner, req.code.expose_secret())
        .await
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    st.store.end_admin_session(&d).await?;
    let actor = Actor {
        door: "api",
        name: admin.name.clone(),
        ip: Some(addr.ip()),
    };
    record(
        &st.store,
        &actor,
        "2fa_enabled",
        &format!("admin:{}", admin.name),
        "",
    )
    .await?;
    audit_login(&st, &admin.name, addr.ip(), true, "totp enrolled").await;
    // Password and a code from the new authenticator: a full login, so the source becomes a
    // known client (a second-factor lock does not shut it out).
    st.auth
        .guard()
        .success(addr.ip(), &format!("admin:{}", admin.name.to_lowercase()))
        .await;
    session_reply(&st, admin.id, &admin.role, addr.ip(), Some(codes)).await
}

pub(super) async fn logout(State(st): St, c: Caller) -> ApiResult<StatusCode> {
    if let Some(d) = c.session {
        st.store.end_admin_session(&d).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnPasswordReq {
    old_password: SecretString,
    totp: SecretString,
    new_password: SecretString,
}

/// An administrator changes its own password: the old one and a second-factor code prove it is
/// the owner (both throttled like a login); the new one must pass the password policy. Every
/// session of the administrator ends, this one too: log in again with the new password.
pub(super) async fn change_own_password(
    State(st): St,
    c: Caller,
    Body(req): Body<OwnPasswordReq>,
) -> ApiResult<StatusCode> {
    if c.session.is_none() {
        return Err(ApiError::Unprocessable(
            "an API key has no password; log in as the administrator".into(),
        ));
    }
    if st.store.admin_from_directory(&c.actor.name).await? == Some(true) {
        return Err(ApiError::Unprocessable(
            "this administrator's password is the directory's; change it there".into(),
        ));
    }
    let ip = c.actor.ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let guard = st.auth.guard().clone();
    let login = format!("admin:{}", c.actor.name.to_lowercase());
    match guard.check(ip, &login).await {
        Verdict::Banned => return Err(ApiError::TooMany),
        Verdict::Locked => return Err(ApiError::Unauthorized("invalid credentials")),
        Verdict::Allow => {}
    }
    let Some((admin, phc)) = st.store.admin_login(&c.actor.name).await? else {
        return Err(ApiError::Unauthorized("invalid credentials"));
    };
    let matched = st
        .auth
        .pool()
        .verify(&req.old_password, phc)
        .await
        .map_err(|_| ApiError::Unavailable("busy; try again"))?;
    if !matched {
        audit_login(
            &st,
            &admin.name,
            ip,
            false,
            "bad_password (password change)",
        )
        .await;
        return Err(failed(guard.failure(ip, &login, &req.old_password).await).await);
    }
    // The new password is checked before the code, so that a refused choice does not use up
    // the code the administrator typed.
    if req.new_password.expose_secret() == req.old_password.expose_secret() {
        return Err(ApiError::Unprocessable(
            "the new password must differ from the old one".into(),
        ));
    }
    let hash = crate::password::check_and_hash(&st.cfg, &req.new_password, &admin.name)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    if guard.check_code(ip, &login).await != Verdict::Allow {
        return Err(ApiError::Unauthorized("invalid credentials"));
    }
    let owner = postern_store::totp::admin_owner(admin.id);
    let proof = crate::twofactor::verify(&st.store, &st.keys, &owner, req.totp.expose_secret())
        .await
        .map_err(|_| ApiError::Internal)?;
    if proof.is_none() {
        audit_login(&st, &admin.name, ip, false, "bad_totp (password change)").await;
        let e = guard.code_failure(ip, &login).await;
        if e.locked {
            second_factor_locked(&st, &admin.name, ip).await;
        }
        return Err(failed(e).await);
    }
    st.store.set_admin_password(&admin.name, &hash).await?;
    record(
        &st.store,
        &c.actor,
        "admin_password_changed",
        &format!("admin:{}", admin.name),
        "by the administrator; every session ended",
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn me(c: Caller) -> axum::Json<Value> {
    axum::Json(json!({
        "name": c.actor.name,
        "via": c.actor.door,
        "role": c.role.as_str(),
        "domains": c.domains,
    }))
}

pub(super) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI.to_owned(),
    )
        .into_response()
}

/// The reply to a failed login step, after the guard's delay: 429 if the source was just banned,
/// else the one 401 every failure gets (wrong name, password or code alike).
async fn failed(effect: postern_auth::guard::FailureEffect) -> ApiError {
    if effect.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(effect.delay_ms)).await;
    }
    if effect.banned.is_some() {
        ApiError::TooMany
    } else {
        ApiError::Unauthorized("invalid credentials")
    }
}

/// A login request as the web console makes it from its form (the same checks as the API's).
pub(super) fn enroll_request(enrollment_token: SecretString, code: SecretString) -> EnrollReq {
    EnrollReq {
        enrollment_token,
        code,
    }
}

pub(super) fn login_request(
    name: String,
    password: SecretString,
    totp: Option<SecretString>,
) -> LoginReq {
    LoginReq {
        name,
        password,
        totp,
    }
}
