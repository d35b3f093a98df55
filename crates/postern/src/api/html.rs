//! What the portal's and the console's pages share: rendering with the pages' headers, redirects,
//! and reading a cookie.

use askama::Template;

use super::common::*;

/// The pages' policy: this site's stylesheet and scripts and nothing else; no inline script or
/// style, no other origin, no framing.
pub(super) const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                              script-src 'self'; connect-src 'self'; form-action 'self'; \
                              frame-ancestors 'none'; base-uri 'none'";

/// A static file compiled into the binary, with its type and a policy that lets it do nothing.
pub(super) fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
        ],
        body,
    )
        .into_response()
}

/// A rendered page with the pages' headers (the API's layer adds no-store, HSTS, nosniff and
/// the referrer policy, and keeps this CSP).
pub(super) fn page(t: impl Template, status: StatusCode) -> Response {
    match t.render() {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::X_FRAME_OPTIONS, "DENY"),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a page did not render");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

pub(super) fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// The value of cookie `name` in the request.
pub(super) fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A redirect that sets (or, with an empty value, clears) a `__Host-` session cookie.
pub(super) fn with_cookie(to: &str, name: &str, value: &str, max_age: i64) -> Response {
    let cookie =
        format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, to.to_owned()),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
}
