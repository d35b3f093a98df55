"""The administrators' web console (/admin) in a real browser (Debian's chromium, Playwright):
an administrator signs in with password and TOTP, sees a brute-force run against IMAP (from its
own loopback source address) on the dashboard — the failed logins, the attacked name, the ban —
and lifts the ban, after which the source is heard again. A helpdesk administrator sees no audit
data on the page and the API refuses it the audit log; a form without the CSRF token is refused;
the pages carry the strict CSP."""
import csv
import io
import os
import smtplib
import time

from conftest import ALICE, ALICE_PW, BOB, BOB_PW, tls_client_context
from test_admin_api import Api, create_admin, first_login, totp
from test_defence import FAST, imap_login

from test_portal import AXE, CHROMIUM, pytestmark, sync_playwright  # noqa: F401 (pytestmark applies here)

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
        assert "'unsafe-inline'" not in resp.headers["content-security-policy"]
        assert resp.headers["cache-control"] == "no-store"
        totals = page.inner_text("#login-totals")
        failed = int(totals.split(" failed")[0].split(", ")[-1])
        assert failed >= len(results) - 1, (totals, results)
        assert page.locator("#logins-chart rect.failed").count() >= 1
        assert BOB in page.inner_text("#attacked")
        assert "imap" in page.inner_text("#per-protocol")
        assert ATTACKER in page.inner_text("#bans")
        assert int(page.inner_text("#event-totals").split(" bans")[0]) >= 1
        assert page.locator("#events-chart rect.ban").count() >= 1
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


SECTIONS = ["users", "domains", "applications", "bans", "audit", "queue", "secrets", "admins"]


def test_console_sections_act_through_the_api(make_server, tmp_path):
    """A superadmin works through every section in the browser: creates an account and sets a
    generated password (shown once, and it logs in), creates and revokes an app password, reads the
    DNS records to publish, filters the audit log and exports it as CSV, holds, releases and removes
    a queued message, sees the secrets' metadata (never a value), adds a helpdesk administrator;
    the dashboard refreshes itself. The helpdesk administrator's navigation has no secrets,
    administrators or queue, and both the pages and the API refuse them. Every page carries the
    strict CSP, and axe-core finds no serious violation on any section."""
    srv = make_server()
    boot = create_admin(srv, "bootstrap")
    api = Api(srv)
    _, secret, _ = first_login(api, "admin", boot["password"])
    srv.cli("secret", "set", "relay-password", "--stdin", "--description", "upstream relay", stdin="Sup3r-Secret-Value-77\n")
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=10) as s:
        s.login(ALICE, ALICE_PW)
        s.sendmail(ALICE, ["someone@remote.test"], f"From: {ALICE}\r\nSubject: out\r\n\r\nx\r\n")
    base = f"https://127.0.0.1:{srv.admin}"
    out = os.environ.get("ARTIFACTS") or str(tmp_path)
    os.makedirs(out, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        ctx = b.new_context(ignore_https_errors=True, viewport={"width": 1200, "height": 900})
        page = console_login(ctx, base, "admin", boot["password"], totp(secret, time.time() + 30))
        nav = page.inner_text("nav.console")
        for label in ["Users", "Domains", "Applications", "Bans", "Audit log", "Queue", "Secrets", "Administrators"]:
            assert label in nav, nav

        def go(section):
            r = page.goto(f"{base}/admin/{section}")
            assert r.status == 200, (section, r.status)
            assert r.headers["content-security-policy"].startswith("default-src 'none'")
            assert r.headers["cache-control"] == "no-store"
            return r

        def submit(form_selector):
            with page.expect_navigation():
                page.click(f"{form_selector} button[type=submit]")
            return page.inner_text("main")

        # users: create an account with a generated password, which then logs in over IMAP
        go("users")
        page.fill("#new-user-address", "frank@example.test")
        text = submit("#new-user")
        assert "Account frank@example.test created." in text
        generated = page.inner_text("#shown-once")
        assert imap_login(srv.imaps, "frank@example.test", generated) == "ok"
        assert "frank@example.test" in page.inner_text("#users")
        page.screenshot(path=os.path.join(out, "console-users.png"), full_page=True)
        # one user: an app password made and revoked, a new password set
        with page.expect_navigation():
            page.click("#users a:text('frank@example.test')")
        page.fill("#new-app-password-name", "tablet")
        assert "App password tablet created." in submit("#new-app-password")
        app_pw = page.inner_text("#shown-once")
        assert imap_login(srv.imaps, "frank@example.test", app_pw) == "ok"
        assert "tablet" in page.inner_text("#app-passwords")
        with page.expect_navigation():
            page.click("button[aria-label='Revoke app password tablet']")
        assert "is revoked" in page.inner_text(".notice")
        assert imap_login(srv.imaps, "frank@example.test", app_pw) == "fail"
        assert "app_password_revoked" in page.inner_text("#timeline")
        page.screenshot(path=os.path.join(out, "console-user.png"), full_page=True)
        # a form without the CSRF token is refused, and changes nothing
        r = page.request.post(f"{base}/admin/do", form={"op": "user.disable", "address": "frank@example.test",
                                                      "csrf": "forged", "back": "users"})
        assert r.status == 403
        assert imap_login(srv.imaps, "frank@example.test", generated) == "ok"
        # domains and the DNS records to publish
        go("domains")
        with page.expect_navigation():
            page.click("#domains tr:has-text('example.test') a:text('Records to publish')")
        dns = page.inner_text("#dns")
        assert "MX" in dns and "v=spf1" in dns and "v=DMARC1" in dns, dns
        # the audit log: filtered, then exported
        go("audit?account=frank%40example.test")
        rows = page.inner_text("#audit")
        assert "user_created" in rows and "app_password_created" in rows, rows
        page.select_option("#audit-filter-result", "failed")
        submit("#audit-filter")
        assert "result=failed" in page.url
        with page.expect_download() as dl:
            page.click("#audit-export")
        got = list(csv.reader(io.StringIO(open(dl.value.path(), encoding="utf-8").read())))
        assert got[0][:4] == ["id", "time_utc", "unix_time", "event"]
        assert all(r[9] == "failed" for r in got[1:]), got
        assert any(r[6] == "frank@example.test" and r[3] == "auth" for r in got[1:]), got
        # the queue: hold, release, remove
        go("queue")
        assert "someone@remote.test" in page.inner_text("#queue")
        qid = page.locator("#queue tbody tr td").first.inner_text()
        with page.expect_navigation():
            page.click(f"button[aria-label='Hold message {qid}']")
        assert "held" in page.inner_text("#queue") and "is held" in page.inner_text(".notice")
        assert "held" in srv.cli("queue", "list").stdout
        with page.expect_navigation():
            page.click(f"button[aria-label='Release message {qid}']")
        with page.expect_navigation():
            page.click(f"button[aria-label='Remove message {qid}']")
        assert "queue is empty" in srv.cli("queue", "list").stdout
        # secrets: metadata, never the value
        go("secrets")
        assert "relay-password" in page.inner_text("#secrets") and "upstream relay" in page.inner_text("#secrets")
        assert "Sup3r-Secret-Value-77" not in page.content()
        # administrators: a helpdesk is added; its first password is shown once
        go("admins")
        page.fill("#new-admin-name", "desk")
        page.select_option("#new-admin-role", "helpdesk")
        assert "Administrator desk (helpdesk) added." in submit("#new-admin")
        desk_pw = page.inner_text("#shown-once")
        # the dashboard refreshes itself (JavaScript from this origin only)
        page.goto(f"{base}/admin")
        page.wait_for_selector("#live[data-refreshed-at]", timeout=25000)
        assert "Live: refreshed" in page.inner_text("#live-status")
        # the message Alice sent shows among the day's events
        assert "1 messages sent" in page.inner_text("#event-totals")
        # every section passes axe-core's serious/critical rules
        if os.path.exists(AXE):
            actx = b.new_context(ignore_https_errors=True, bypass_csp=True)
            actx.add_cookies(ctx.cookies())
            apage = actx.new_page()
            for section in ["", *SECTIONS, "user?address=frank%40example.test", "dns?domain=example.test"]:
                apage.goto(f"{base}/admin/{section}".rstrip("/"))
                apage.add_script_tag(path=AXE)
                res = apage.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
                bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
                       for v in res["violations"] if v["impact"] in ("serious", "critical")]
                assert not bad, (section, bad)
            actx.close()
        # the helpdesk administrator: no secrets, administrators or queue, on the page or the API
        # its first sign-in enrols its TOTP in the console itself
        hctx = b.new_context(ignore_https_errors=True)
        hpage = console_login(hctx, base, "desk", desk_pw, "")
        desk_secret = hpage.inner_text("#totp-secret").strip()
        assert hpage.locator(".qr svg").count() == 1
        hpage.fill("#code", totp(desk_secret))
        with hpage.expect_navigation():
            hpage.click("button[type=submit]")
        assert len(set(hpage.locator("#recovery-codes li").all_inner_texts())) == 10
        with hpage.expect_navigation():
            hpage.click("#continue")
        assert hpage.url.rstrip("/").endswith("/admin"), hpage.url
        code, r = api.call("POST", "/login", {"name": "desk", "password": desk_pw,
                                              "totp": totp(desk_secret, time.time() + 30)})
        assert code == 200 and r["status"] == "ok", r
        desk_token = r["token"]
        nav = hpage.inner_text("nav.console")
        assert "Users" in nav and "Bans" in nav
        assert "Secrets" not in nav and "Administrators" not in nav and "Queue" not in nav, nav
        for section, path in [("secrets", "/secrets"), ("admins", "/admins"), ("queue", "/queue")]:
            r = hpage.goto(f"{base}/admin/{section}")
            assert r.status == 403, section
            assert "your role does not allow this" in hpage.inner_text(".error")
            code, _ = api.call("GET", path, token=desk_token)
            assert code == 403, path
        r = hpage.request.post(f"{base}/admin/do", form={
            "op": "admin.add", "name": "sneaky", "role": "superadmin", "csrf": hpage.input_value("header input[name=csrf]"),
            "back": "users"})
        assert r.status == 200 and "your role does not allow this" in r.text()
        code, _ = api.call("POST", "/admins", {"name": "sneaky", "role": "superadmin"}, token=desk_token)
        assert code == 403
        assert "sneaky" not in srv.cli("admin", "list").stdout
        # helpdesk may still reset a password there
        hpage.goto(f"{base}/admin/user?address=frank%40example.test")
        assert hpage.locator("#set-password").count() == 1 and hpage.locator("#new-app-password").count() == 0
        b.close()


def test_console_dashboard_shows_a_hydra_run(make_server, tmp_path):
    """hydra brute-forces IMAPS (wrong passwords only) from an allowlisted administrator network
    (so the browser on the same address is not cut off); the dashboard, already open, shows the
    failed logins per door and the attacked account after its own refresh."""
    import shutil
    import subprocess
    hydra = shutil.which("hydra")
    if not hydra:
        import pytest
        pytest.skip("hydra not installed")
    srv = make_server(toml_extra=FAST + 'allowlist = ["127.0.0.1/32"]\n')
    boot = create_admin(srv, "bootstrap")
    api = Api(srv)
    _, secret, _ = first_login(api, "admin", boot["password"])
    words = tmp_path / "words.txt"
    words.write_text("".join(f"guess-{i}-Wrong\n" for i in range(30)))
    base = f"https://127.0.0.1:{srv.admin}"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        ctx = b.new_context(ignore_https_errors=True)
        page = console_login(ctx, base, "admin", boot["password"], totp(secret, time.time() + 30))
        before = page.inner_text("#login-totals")
        out = subprocess.run([hydra, "-l", BOB, "-P", str(words), "-S", "-s", str(srv.imaps), "-t", "4",
                              "-w", "5", "-W", "1", "-I", "127.0.0.1", "imap"],
                             capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL).stdout
        assert "valid password found" not in out or "0 valid password" in out, out[-1500:]
        # the open page refreshes itself: wait for a refresh after the run
        page.evaluate("document.getElementById('live').dataset.refreshedAt = ''")
        page.wait_for_selector("#live[data-refreshed-at^='2']", timeout=25000)
        totals = page.inner_text("#login-totals")
        failed = int(totals.split(" failed")[0].split(", ")[-1])
        assert failed >= 30, (before, totals)
        assert BOB in page.inner_text("#attacked")
        row = page.locator("#per-protocol tr", has_text="imap").inner_text()
        assert int(row.split("\t")[-1]) >= 30, row
        b.close()
