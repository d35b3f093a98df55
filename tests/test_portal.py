"""The self-service portal (/account) in a real browser: Debian's chromium driven by Playwright.
A user with two-factor authentication signs in with password and TOTP code, creates an app
password (shown once, with the server settings), uses it over IMAP from Python, sees that login
and the app password's last use on the page, revokes it, and IMAP then fails. Every page carries
a strict Content-Security-Policy and no-store; a form without the session's CSRF token is
refused; wrong password, unknown user and wrong code all get the same answer; an app password
does not open the portal; after sign-out the old cookie is worth nothing. Screenshots of the
pages go to $ARTIFACTS (or the test's temporary directory)."""
import os
import shutil
import time

import pytest

from conftest import open_db, ALICE, ALICE_PW, BOB, BOB_PW
from test_twofactor import enroll, imap_login, totp

CHROMIUM = shutil.which("chromium")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover
    sync_playwright = None
pytestmark = pytest.mark.skipif(CHROMIUM is None or sync_playwright is None,
                                reason="needs Debian's chromium and Playwright for Python")

CSP = "default-src 'none'; style-src 'self'"
assert "unsafe-inline" not in CSP


@pytest.fixture
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        ctx = b.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 900})
        yield ctx
        ctx.close()
        b.close()


def shot(page, tmp_path, name):
    out = os.environ.get("ARTIFACTS") or str(tmp_path)
    os.makedirs(out, exist_ok=True)
    page.screenshot(path=os.path.join(out, f"portal-{name}.png"), full_page=True)


def sign_in(page, base, address, password, code=None):
    page.goto(f"{base}/account/login")
    page.fill("#address", address)
    page.fill("#password", password)
    if code is not None:
        page.fill("#code", code)
    with page.expect_navigation():
        page.click("button[type=submit]")


def test_portal_two_factor_app_password_lifecycle(server, browser, tmp_path):
    base = f"https://127.0.0.1:{server.admin}"
    secret, _, rc, err = enroll(server, BOB)
    assert rc == 0, err
    page = browser.new_page()
    # not signed in: the portal sends to its login page, with the portal's headers
    resp = page.goto(f"{base}/account")
    assert page.url.endswith("/account/login"), page.url
    h = resp.headers
    assert h["content-security-policy"].startswith(CSP), h
    assert "frame-ancestors 'none'" in h["content-security-policy"]
    assert h["cache-control"] == "no-store" and h["x-content-type-options"] == "nosniff"
    assert "max-age=" in h["strict-transport-security"]
    shot(page, tmp_path, "login")
    # the password alone is not enough on an account with a second factor, and gets the answer
    # a wrong password, a wrong code and an unknown user get (the password step is no oracle)
    failed = "Sign-in failed: check the address, the password and the code."
    sign_in(page, base, BOB, BOB_PW)
    assert failed in page.inner_text("main")
    sign_in(page, base, BOB, BOB_PW, "000000" if totp(secret, time.time() + 30) != "000000" else "111111")
    assert failed in page.inner_text("main")
    sign_in(page, base, BOB, "wrong-" + BOB_PW, totp(secret, time.time() + 30))
    assert failed in page.inner_text("main")
    sign_in(page, base, "nobody@example.test", BOB_PW, "123456")
    assert failed in page.inner_text("main")
    # the right code (the next step's: the current one was spent by the enrolment)
    sign_in(page, base, BOB, BOB_PW, totp(secret, time.time() + 30))
    assert page.url.rstrip("/").endswith("/account"), page.url
    assert page.inner_text("#twofactor") == "on"
    cookies = {c["name"]: c for c in browser.cookies()}
    c = cookies["__Host-postern_account"]
    assert c["secure"] and c["httpOnly"] and c["sameSite"] == "Strict" and c["path"] == "/"
    # create an app password for IMAP only: shown once, with the settings a mail program needs
    page.fill("#ap-name", "phone")
    page.uncheck("input[name=smtp]")
    page.fill("#ap-reauth", "wrong-" + BOB_PW)
    with page.expect_navigation():
        page.click("text=Create app password")
    assert "The password was not right." in page.inner_text(".notice")
    assert page.locator("#new-secret").count() == 0
    page.fill("#ap-name", "phone")
    page.uncheck("input[name=smtp]")
    page.fill("#ap-reauth", BOB_PW)
    with page.expect_navigation():
        page.click("text=Create app password")
    app_pw = page.inner_text("#new-secret").strip()
    assert len(app_pw) >= 16, app_pw
    settings = page.inner_text("table.settings")
    assert f"port {server.imaps}, SSL/TLS" in settings and BOB in settings, settings
    shot(page, tmp_path, "created")
    # it opens IMAP (not the account password: 2FA is on), and the page shows its use
    assert imap_login(server, BOB, app_pw) == "ok"
    assert imap_login(server, BOB, BOB_PW) != "ok"
    page.goto(f"{base}/account")
    assert "#new-secret" not in page.content() and app_pw not in page.content()
    row = page.inner_text("#app-passwords tbody tr")
    assert "phone" in row and "imap" in row and "from 127.0.0.1" in row, row
    signins = page.inner_text("#signins")
    assert "imap\t127.0.0.1\tLOGIN\tok" in signins and "web\t127.0.0.1\tpassword+totp\tok" in signins, signins
    shot(page, tmp_path, "overview")
    # a form without the session's CSRF token is refused, with the session's own cookie
    r = page.request.post(f"{base}/account/app-passwords/revoke", form={"name": "phone", "csrf": "x"})
    assert r.status == 403
    assert imap_login(server, BOB, app_pw) == "ok"
    # an app password does not open the portal
    other = browser.browser.new_context(ignore_https_errors=True).new_page()
    sign_in(other, base, BOB, app_pw)
    assert failed in other.inner_text("main")
    other.context.close()
    # revoke: IMAP with it fails from then on
    with page.expect_navigation():
        page.click("button[aria-label='Revoke phone']")
    assert "revoked" in page.inner_text("main")
    assert imap_login(server, BOB, app_pw) != "ok"
    # sign out: the old cookie no longer opens the portal
    with page.expect_navigation():
        page.click("text=Sign out")
    assert page.url.endswith("/account/login")
    r = page.request.get(f"{base}/account", headers={"cookie": f"__Host-postern_account={c['value']}"},
                         max_redirects=0)
    assert r.status == 303 and r.headers["location"] == "/account/login"
    # every change was audited with the user as its actor
    with open_db(server.dir, write=True) as db:
        rows = db.execute("SELECT event, actor FROM audit_log WHERE event LIKE 'app_password_%' "
                          "AND username = ?", (BOB,)).fetchall()
    assert ("app_password_created", f"web:{BOB}") in rows and ("app_password_revoked", f"web:{BOB}") in rows, rows


def test_portal_without_second_factor_and_on_a_phone(server, browser, tmp_path):
    """An account without a second factor signs in with its password; the page fits a phone
    screen (no horizontal scrolling); the user turns two-factor authentication on, then locks
    the account ("this wasn't me")."""
    base = f"https://127.0.0.1:{server.admin}"
    page = browser.browser.new_context(ignore_https_errors=True,
                                       viewport={"width": 375, "height": 740}).new_page()
    sign_in(page, base, ALICE, ALICE_PW)
    assert page.inner_text("#twofactor") == "off"
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width
    shot(page, tmp_path, "phone")
    assert imap_login(server, ALICE, ALICE_PW) == "ok"
    # a new password: the current one first, then the server's own policy decides
    page.fill("#pw-current", ALICE_PW)
    page.fill("#pw-new", "password123")
    with page.expect_navigation():
        page.click("#change-password")
    refused = page.inner_text(".notice")
    assert refused.startswith("Password not changed:"), refused
    new_pw = "Quartz-Lantern-Voyage-" + ALICE_PW[-4:] + "-Mosaic"
    page.fill("#pw-current", "wrong-" + ALICE_PW)
    page.fill("#pw-new", new_pw)
    with page.expect_navigation():
        page.click("#change-password")
    assert "The current password was not right." in page.inner_text(".notice")
    page.fill("#pw-current", ALICE_PW)
    page.fill("#pw-new", new_pw)
    with page.expect_navigation():
        page.click("#change-password")
    assert page.inner_text(".notice") == "Password changed."
    assert imap_login(server, ALICE, ALICE_PW) != "ok" and imap_login(server, ALICE, new_pw) == "ok"
    ALICE_NEW = new_pw
    # two-factor enrolment from the portal: the password again, then the secret shown as a QR
    # code and as text, confirmed with a code computed from it; recovery codes shown once
    page.fill("#reauth", "not-" + ALICE_NEW)
    with page.expect_navigation():
        page.click("#begin-2fa")
    assert "The password was not right." in page.inner_text("main")
    page.fill("#reauth", ALICE_NEW)
    with page.expect_navigation():
        page.click("#begin-2fa")
    assert page.locator(".qr svg").count() == 1
    secret = page.inner_text("#totp-secret").strip()
    shot(page, tmp_path, "enrol")
    page.fill("#code", totp(secret))
    with page.expect_navigation():
        page.click("form[action='/account/2fa/confirm'] button")
    codes = page.locator("#recovery-codes li").all_inner_texts()
    assert len(codes) == 10 and len(set(codes)) == 10, codes
    page.goto(f"{base}/account")
    assert page.inner_text("#twofactor") == "on"
    # with 2FA on, the account password no longer opens IMAP (app passwords do)
    assert imap_login(server, ALICE, ALICE_NEW) != "ok"
    # "this wasn't me": the account's own incident lock ends this session and mail logins
    with page.expect_navigation():
        page.click("#lock")
    assert "Your account is locked" in page.inner_text("main")
    page.goto(f"{base}/account")
    assert page.url.endswith("/account/login")
    with open_db(server.dir, write=True) as db:
        actors = dict(db.execute("SELECT event, actor FROM audit_log WHERE username = ? AND event IN "
                                 "('incident_locked', '2fa_enabled')", (ALICE,)).fetchall())
    assert actors == {"incident_locked": f"web:{ALICE}", "2fa_enabled": f"web:{ALICE}"}, actors
    page.context.close()


def test_portal_phone_profile_live_feedback_and_second_factor_management(make_server, browser, tmp_path):
    """The new-password field tells the server's verdict while it is typed (script from this
    origin only); an app password for IMAP and SMTP comes with a QR code and an Apple
    .mobileconfig whose settings and password work; with TOTP on, the user makes new recovery
    codes (the old ones stop working) and turns the second factor off with a code (a wrong code
    does not)."""
    import plistlib
    # its own server: the wrong passwords and codes below must not add to the other tests'
    # failures from the same address (the per-IP window would ban it)
    server = make_server()
    user, pw = "gina@example.test", "Harbor-Cobalt-Willow-5521-Tundra"
    server.cli("user", "add", user, "--password-stdin", stdin=pw + "\n")
    base = f"https://127.0.0.1:{server.admin}"
    page = browser.new_page()
    sign_in(page, base, user, pw)
    # live feedback: the server's policy, before the form is sent
    page.fill("#pw-new", "password123")
    page.wait_for_selector("#pw-feedback.error", timeout=10000)
    assert page.get_attribute("#pw-new", "aria-invalid") == "true"
    page.fill("#pw-new", "Velvet-Orchard-Glacier-8830-Prism")
    page.wait_for_selector("#pw-feedback.notice", timeout=10000)
    assert page.inner_text("#pw-feedback") == "Strong enough for this server."
    r = page.request.post(f"{base}/account/password/check", form={"csrf": "x", "new": "abc"})
    assert r.status == 403
    # an app password for a phone: QR code and configuration profile
    page.fill("#ap-name", "iphone")
    page.fill("#ap-reauth", pw)
    with page.expect_navigation():
        page.click("text=Create app password")
    app_pw = page.inner_text("#new-secret").strip()
    assert page.locator("#secret-qr svg").count() == 1
    with page.expect_download() as dl:
        page.click("#mobileconfig")
    assert dl.value.suggested_filename == "iphone.mobileconfig"
    profile = plistlib.loads(open(dl.value.path(), "rb").read())
    assert profile["PayloadType"] == "Configuration"
    mail = profile["PayloadContent"][0]
    assert mail["PayloadType"] == "com.apple.mail.managed" and mail["EmailAddress"] == user
    assert mail["IncomingMailServerPortNumber"] == server.imaps and mail["IncomingMailServerUseSSL"] is True
    assert mail["OutgoingMailServerPortNumber"] == server.submissions and mail["OutgoingMailServerUseSSL"] is True
    assert mail["IncomingPassword"] == app_pw == mail["OutgoingPassword"]
    assert imap_login(server, mail["IncomingMailServerUsername"], mail["IncomingPassword"]) == "ok"
    shot(page, tmp_path, "phone-profile")
    # one only from another network: refused from here
    page.goto(f"{base}/account")
    page.fill("#ap-name", "office")
    page.fill("#ap-networks", "10.0.0.0/8")
    page.fill("#ap-reauth", pw)
    with page.expect_navigation():
        page.click("text=Create app password")
    office_pw = page.inner_text("#new-secret").strip()
    assert "10.0.0.0/8" in page.locator("#app-passwords tr", has_text="office").inner_text()
    assert imap_login(server, user, office_pw) != "ok"
    # TOTP on, then new recovery codes
    page.goto(f"{base}/account")
    page.fill("#reauth", pw)
    with page.expect_navigation():
        page.click("#begin-2fa")
    secret = page.inner_text("#totp-secret").strip()
    page.fill("#code", totp(secret))
    with page.expect_navigation():
        page.click("form[action='/account/2fa/confirm'] button")
    first = page.locator("#recovery-codes li").all_inner_texts()
    page.goto(f"{base}/account")
    assert page.inner_text("#recovery-left") == "10"
    page.fill("#reauth-recovery", pw)
    with page.expect_navigation():
        page.click("#new-recovery")
    second = page.locator("#recovery-codes li").all_inner_texts()
    assert len(second) == 10 and not set(first) & set(second)
    # off: a wrong code (an old recovery code) is refused; a current code works
    page.goto(f"{base}/account")
    page.fill("#reauth-off", pw)
    page.fill("#off-code", first[0])
    with page.expect_navigation():
        page.click("#twofactor-off")
    assert "The code was not right." in page.inner_text(".notice")
    assert page.inner_text("#twofactor") == "on"
    page.fill("#reauth-off", pw)
    page.fill("#off-code", second[0])
    with page.expect_navigation():
        page.click("#twofactor-off")
    assert "Two-factor authentication is off." in page.inner_text(".notice")
    assert page.inner_text("#twofactor") == "off"
    assert imap_login(server, user, pw) == "ok"
    with open_db(server.dir, write=True) as db:
        events = [e for (e,) in db.execute("SELECT event FROM audit_log WHERE username = ? AND actor = ?",
                                           (user, f"web:{user}"))]
    assert "2fa_recovery_renewed" in events and "2fa_disabled" in events, events


def test_portal_passkey_as_second_factor(make_server, browser, tmp_path):
    """With TOTP on, a user adds a passkey (Chromium's virtual authenticator, through the DevTools
    WebAuthn domain) after the password again, then signs in with address, password and the passkey
    instead of a code; a wrong password with the passkey fails like any other; removing the second
    factor removes the passkeys."""
    srv = make_server(toml_extra='[web]\npasskey_rp_id = "localhost"\n')
    user, pw = "ivy@example.test", "Saffron-Glacier-Tidal-6620-Rook"
    srv.cli("user", "add", user, "--password-stdin", stdin=pw + "\n")
    secret, _, rc, err = enroll(srv, user)
    assert rc == 0, err
    base = f"https://localhost:{srv.admin}"
    page = browser.new_page()
    cdp = browser.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    auth = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True}})["authenticatorId"]
    sign_in(page, base, user, pw, totp(secret, time.time() + 30))
    assert page.locator("#twofactor").count() == 1, (page.url, page.inner_text("body"))
    assert page.inner_text("#twofactor") == "on"
    # add a passkey: the password first
    page.fill("#pk-name", "laptop")
    page.fill("#pk-pw", "wrong-" + pw)
    page.click("#add-passkey")
    page.wait_for_selector("#passkey-status:has-text('not right')", timeout=10000)
    page.fill("#pk-pw", pw)
    with page.expect_navigation():
        page.click("#add-passkey")
    assert "Passkey “laptop” added" in page.inner_text(".notice"), page.inner_text("main")
    assert "laptop" in page.inner_text("#passkeys")
    creds = cdp.send("WebAuthn.getCredentials", {"authenticatorId": auth})["credentials"]
    assert len(creds) == 1 and creds[0]["isResidentCredential"] and creds[0]["rpId"] == "localhost"
    shot(page, tmp_path, "passkeys")
    with page.expect_navigation():
        page.click("text=Sign out")
    # sign in with the passkey instead of a code
    page.goto(f"{base}/account/login")
    page.fill("#address", user)
    page.fill("#password", pw)
    with page.expect_navigation():
        page.click("#passkey-signin")
    assert page.url.rstrip("/").endswith("/account"), page.inner_text("main")
    assert "web\t127.0.0.1\tpassword+passkey\tok" in page.inner_text("#signins")
    assert "never" not in page.inner_text("#passkeys")
    with page.expect_navigation():
        page.click("text=Sign out")
    # the passkey does not stand for the password
    page.goto(f"{base}/account/login")
    page.fill("#address", user)
    page.fill("#password", "wrong-" + pw)
    with page.expect_navigation():
        page.click("#passkey-signin")
    assert "Sign-in failed" in page.inner_text("main")
    # a replayed assertion (the same answer again) is refused: each challenge works once
    page.goto(f"{base}/account/login")
    page.fill("#address", user)
    page.fill("#password", pw)
    answers = []
    page.on("request", lambda r: answers.append(r.post_data) if r.url.endswith("/account/login") and r.method == "POST" else None)
    with page.expect_navigation():
        page.click("#passkey-signin")
    assert page.url.rstrip("/").endswith("/account")
    r = page.context.request.post(f"{base}/account/login", data=answers[-1],
                                  headers={"content-type": "application/x-www-form-urlencoded"}, max_redirects=0)
    assert r.status == 401, r.status
    # the administrator resets the second factor: the passkeys go with it
    srv.cli("user", "2fa", "disable", user, "--admin-override", "--reason", "lost phone")
    page.goto(f"{base}/account")
    assert page.inner_text("#twofactor") == "off"
    assert page.locator("#passkeys").count() == 0


AXE = os.path.join(os.path.dirname(__file__), "axe", "node_modules", "axe-core", "axe.min.js")


@pytest.mark.skipif(not os.path.exists(AXE), reason="needs axe-core (npm ci --prefix tests/axe)")
def test_portal_pages_have_no_serious_accessibility_violations(server, browser):
    """axe-core (injected past the pages' CSP, which would refuse it) finds no serious or
    critical violation on the sign-in page, the account page and the enrolment page."""
    user, pw = "dora@example.test", "Granite-Meadow-Ferry-2091-Lumen"
    server.cli("user", "add", user, "--password-stdin", stdin=pw + "\n")
    base = f"https://127.0.0.1:{server.admin}"
    ctx = browser.browser.new_context(ignore_https_errors=True, bypass_csp=True)
    page = ctx.new_page()

    def check(name):
        page.add_script_tag(path=AXE)
        result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        assert result["testEngine"]["name"] == "axe-core" and result["passes"], name
        bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
               for v in result["violations"] if v["impact"] in ("serious", "critical")]
        assert not bad, (name, bad)

    page.goto(f"{base}/account/login")
    check("login")
    sign_in(page, base, user, pw)
    check("account")
    page.fill("#reauth", pw)
    with page.expect_navigation():
        page.click("#begin-2fa")
    check("enrolment")
    ctx.close()
