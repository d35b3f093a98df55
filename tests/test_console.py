"""The administrators' web console (/admin) in a real browser (Debian's chromium, Playwright):
an administrator signs in with password and TOTP, sees a brute-force run against IMAP (from its
own loopback source address) on the dashboard — the failed logins, the attacked name, the ban —
and lifts the ban, after which the source is heard again. A helpdesk administrator sees no audit
data on the page and the API refuses it the audit log; a form without the CSRF token is refused;
the pages carry the strict CSP."""
import os
import time

from conftest import BOB, BOB_PW
from test_admin_api import Api, create_admin, first_login, totp
from test_defence import FAST, imap_login

from test_portal import CHROMIUM, pytestmark, sync_playwright  # noqa: F401 (pytestmark applies here)

ATTACKER = "127.0.3.7"


def console_login(ctx, base, name, password, code):
    page = ctx.new_page()
    page.goto(f"{base}/admin/login")
    page.fill("#name", name)
    page.fill("#password", password)
    page.fill("#totp", code)
    with page.expect_navigation():
        page.click("button[type=submit]")
    return page


def test_console_shows_an_attack_and_lifts_its_ban(make_server, tmp_path):
    srv = make_server(toml_extra=FAST)
    boot = create_admin(srv, "bootstrap")
    api = Api(srv)
    _, secret, _ = first_login(api, "admin", boot["password"])
    helper = create_admin(srv, "add", "helper", "--role", "helpdesk")
    helper_token, helper_secret, _ = first_login(api, "helper", helper["password"])
    # a brute-force run against one account from one source, until the source is banned
    results = []
    for i in range(40):
        r = imap_login(srv.imaps, BOB, f"guess-{i}-Wrong", source=ATTACKER, timeout=10)
        results.append(r)
        if r in ("refused", "closed"):
            break
    assert results[-1] in ("refused", "closed"), results
    assert imap_login(srv.imaps, BOB, BOB_PW, source=ATTACKER) in ("refused", "closed")
    base = f"https://127.0.0.1:{srv.admin}"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        ctx = b.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 900})
        # a wrong code: no session
        page = console_login(ctx, base, "admin", boot["password"], "000000")
        assert "Sign-in failed" in page.inner_text("main")
        page = console_login(ctx, base, "admin", boot["password"], totp(secret, time.time() + 30))
        assert page.url.rstrip("/").endswith("/admin"), page.url
        resp = page.reload()
        assert resp.headers["content-security-policy"].startswith("default-src 'none'; style-src 'self'")
        assert resp.headers["cache-control"] == "no-store"
        totals = page.inner_text("#login-totals")
        failed = int(totals.split(" failed")[0].split(", ")[-1])
        assert failed >= len(results) - 1, (totals, results)
        assert page.locator("#logins-chart rect.failed").count() >= 1
        assert BOB in page.inner_text("#attacked")
        assert "imap" in page.inner_text("#per-protocol")
        assert ATTACKER in page.inner_text("#bans")
        out = os.environ.get("ARTIFACTS") or str(tmp_path)
        os.makedirs(out, exist_ok=True)
        page.screenshot(path=os.path.join(out, "console-dashboard.png"), full_page=True)
        # a lift without the CSRF token is refused, with the session's cookie
        r = page.request.post(f"{base}/admin/bans/lift", form={"target": ATTACKER, "csrf": "x"})
        assert r.status == 403
        assert ATTACKER in page.inner_text("#bans")
        target = page.locator("#bans tbody tr", has_text=ATTACKER).locator("td").first.inner_text()
        with page.expect_navigation():
            page.click(f"button[aria-label='Lift the ban on {target}']")
        assert "is lifted" in page.inner_text(".notice")
        assert ATTACKER not in page.inner_text("main").split("Active bans")[1]
        # the source is heard again (the account itself stays locked for unknown sources after
        # the run, which is the lockout that spares the real user doing its job)
        assert imap_login(srv.imaps, BOB, BOB_PW, source=ATTACKER) in ("ok", "fail")
        # a helpdesk administrator: bans yes, audit data no (page and API)
        hctx = b.new_context(ignore_https_errors=True)
        hpage = console_login(hctx, base, "helper", helper["password"], totp(helper_secret, time.time() + 30))
        assert "Active bans" in hpage.inner_text("main")
        assert hpage.locator("#login-totals").count() == 0 and hpage.locator("#attacked").count() == 0
        code, _ = api.call("GET", "/audit-log", token=helper_token)
        assert code == 403
        # sign out: the console's session is gone
        with page.expect_navigation():
            page.click("text=Sign out")
        assert page.url.endswith("/admin/login")
        b.close()
