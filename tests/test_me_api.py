"""The mail users' JSON API (/api/v1/me/...): sign-in with the portal's rules (one answer for an
unknown user, a wrong password and a missing code), a session token, app passwords made (the
account password asked again), used over IMAP, seen in the sign-in history and revoked; the
password policy's verdict; the portal's cookie needs the CSRF header for a change; an
administrator's token opens none of it and a user's token none of the admin API; "this wasn't
me" locks the account and ends the session. schemathesis runs over these paths with a user's
token."""
import json
import os
import shutil
import subprocess
import urllib.request

import pytest

from test_admin_api import CTX, Api, create_admin, first_login
from test_defence import imap_login
from test_twofactor import enroll, totp

USER, PW = "hana@example.test", "Copper-Summit-Lagoon-4417-Fable"


def call(srv, method, path, body=None, token=None, headers=()):
    return Api(srv, token).call(method, path, body, headers=headers)


def test_me_api_credentials_lifecycle(make_server):
    srv = make_server()
    srv.cli("user", "add", USER, "--password-stdin", stdin=PW + "\n")
    # one answer for a wrong password and an unknown user
    c1, r1 = call(srv, "POST", "/me/session", {"address": USER, "password": "wrong-" + PW})
    c2, r2 = call(srv, "POST", "/me/session", {"address": "nobody@example.test", "password": PW})
    assert c1 == c2 == 401 and r1 == r2, (r1, r2)
    code, s = call(srv, "POST", "/me/session", {"address": USER, "password": PW})
    assert code == 201 and s["token"].startswith("pwa_") and s["expires_in"] == 1800, s
    tok = s["token"]
    code, me = call(srv, "GET", "/me/account", token=tok)
    assert code == 200 and me == {"address": USER, "two_factor": False, "recovery_codes_left": 0,
                                  "session_expires_at": me["session_expires_at"]}, me
    # the policy's verdict
    code, v = call(srv, "POST", "/me/account/password-check", {"password": "password123"}, token=tok)
    assert code == 200 and v["acceptable"] is False, v
    code, v = call(srv, "POST", "/me/account/password-check", {"password": "Lichen-Parade-Osprey-7712-Quill"},
                   token=tok)
    assert code == 200 and v["acceptable"] is True, v
    # an app password needs the account password again
    code, _ = call(srv, "POST", "/me/app-passwords", {"name": "laptop", "password": "wrong"}, token=tok)
    assert code == 422
    code, ap = call(srv, "POST", "/me/app-passwords", {"name": "laptop", "protocols": ["imap"], "password": PW},
                    token=tok)
    assert code == 201 and ap["protocols"] == ["imap"], ap
    assert imap_login(srv.imaps, USER, ap["secret"]) == "ok"
    code, lst = call(srv, "GET", "/me/app-passwords", token=tok)
    assert code == 200 and [p["name"] for p in lst] == ["laptop"] and lst[0]["last_used_ip"] == "127.0.0.1", lst
    assert "secret" not in json.dumps(lst)
    code, si = call(srv, "GET", "/me/signins", token=tok)
    assert code == 200 and si[0]["protocol"] == "imap" and si[0]["result"] == "ok", si
    assert any(x["protocol"] == "web" for x in si), si
    # the portal's cookie works for reading; a change needs the CSRF header
    cookie = ("Cookie", f"__Host-postern_account={tok}")
    code, _ = call(srv, "GET", "/me/account", headers=[cookie])
    assert code == 200
    code, _ = call(srv, "DELETE", "/me/app-passwords/laptop", headers=[cookie])
    assert code == 403
    assert imap_login(srv.imaps, USER, ap["secret"]) == "ok"
    code, _ = call(srv, "DELETE", "/me/app-passwords/laptop", headers=[cookie, ("X-CSRF-Token", s["csrf"])])
    assert code == 204
    assert imap_login(srv.imaps, USER, ap["secret"]) == "fail"
    code, _ = call(srv, "DELETE", "/me/app-passwords/laptop", token=tok)
    assert code == 404
    # a new password: the current one first, then the policy
    code, e = call(srv, "POST", "/me/account/password", {"current": PW, "new": "password123"}, token=tok)
    assert code == 422, e
    new = "Basalt-Meridian-Sorrel-3390-Wren"
    code, _ = call(srv, "POST", "/me/account/password", {"current": "x" + PW, "new": new}, token=tok)
    assert code == 422
    code, _ = call(srv, "POST", "/me/account/password", {"current": PW, "new": new}, token=tok)
    assert code == 204
    assert imap_login(srv.imaps, USER, new) == "ok"
    # tokens do not cross: an administrator's opens no /me, a user's no admin call
    boot = create_admin(srv, "bootstrap")
    admin_tok, _, _ = first_login(Api(srv), "admin", boot["password"])
    code, _ = call(srv, "GET", "/me/account", token=admin_tok)
    assert code == 401
    code, _ = call(srv, "GET", "/users", token=tok)
    assert code == 401
    # "this wasn't me": locked, and the session is gone
    code, out = call(srv, "POST", "/me/lock", token=tok)
    assert code == 200 and out["address"] == USER, out
    assert imap_login(srv.imaps, USER, new) == "fail"
    code, _ = call(srv, "GET", "/me/account", token=tok)
    assert code == 401


def test_me_api_sign_in_with_a_second_factor(make_server):
    srv = make_server()
    srv.cli("user", "add", USER, "--password-stdin", stdin=PW + "\n")
    secret, _, rc, err = enroll(srv, USER)
    assert rc == 0, err
    c1, r1 = call(srv, "POST", "/me/session", {"address": USER, "password": PW})
    c2, r2 = call(srv, "POST", "/me/session", {"address": USER, "password": PW, "code": "000000"})
    c3, r3 = call(srv, "POST", "/me/session", {"address": "nobody@example.test", "password": PW, "code": "1"})
    assert c1 == c2 == c3 == 401 and r1 == r2 == r3, (r1, r2, r3)
    import time
    code, s = call(srv, "POST", "/me/session", {"address": USER, "password": PW,
                                                "code": totp(secret, time.time() + 30)})
    assert code == 201, s
    code, me = call(srv, "GET", "/me/account", token=s["token"])
    assert me["two_factor"] is True and me["recovery_codes_left"] == 10, me
    code, _ = call(srv, "DELETE", "/me/session", token=s["token"])
    assert code == 204
    code, _ = call(srv, "GET", "/me/account", token=s["token"])
    assert code == 401


@pytest.mark.skipif(shutil.which("schemathesis") is None, reason="schemathesis is installed by tests/run.sh")
def test_schemathesis_over_the_mail_users_api(make_server, tmp_path):
    srv = make_server()
    srv.cli("user", "add", USER, "--password-stdin", stdin=PW + "\n")
    code, s = call(srv, "POST", "/me/session", {"address": USER, "password": PW})
    assert code == 201
    env = dict(os.environ, SCHEMATHESIS_HOOKS="")
    p = subprocess.run(
        ["schemathesis", "run", f"https://127.0.0.1:{srv.admin}/api/v1/openapi.json",
         "--url", f"https://127.0.0.1:{srv.admin}",
         "--tls-verify", "false", "-H", f"Authorization: Bearer {s['token']}",
         "--include-path-regex", "^/api/v1/me/",
         "--exclude-path", "/api/v1/me/lock", "--exclude-path", "/api/v1/me/session",
         "--exclude-path", "/api/v1/me/account/password",
         "--max-examples", "15", "--checks", "not_a_server_error,status_code_conformance,"
         "content_type_conformance,response_schema_conformance,response_headers_conformance",
         "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    import re
    m = re.search(r"(\d+) generated, (\d+) passed", out)
    assert m and int(m.group(1)) >= 40 and m.group(1) == m.group(2), out[-3000:]
    # the session opened the calls (not 401 everywhere): the account password asked again before
    # an app password was checked, and the wrong ones were counted as failed logins at door web
    # (which, repeated, ban the fuzzer's address, as they should)
    import sqlite3
    with srv.db() as db:
        n = db.execute("SELECT count(*) FROM audit_log WHERE event = 'auth' AND protocol = 'web' "
                       "AND username = ? AND result = 'failed'", (USER,)).fetchone()[0]
    assert n >= 1
    assert srv.proc.poll() is None


def test_the_web_listener_serves_users_only(make_server):
    """[web] listen: the portal, /api/v1/me and autoconfiguration on their own HTTPS port; the
    console and the admin API are not there (404), so the admin listener can stay private."""
    from conftest import free_port
    port = free_port()
    srv = make_server(toml_extra=f'[web]\nlisten = "127.0.0.1:{port}"\n')
    srv.cli("user", "add", USER, "--password-stdin", stdin=PW + "\n")

    def get(path, method="GET", body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=CTX, timeout=15) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers

    code, body, h = get("/account/login")
    assert code == 200 and b"Sign in" in body and h["Content-Security-Policy"].startswith("default-src 'none'")
    code, body, _ = get("/api/v1/me/session", "POST", {"address": USER, "password": PW})
    assert code == 201 and json.loads(body)["token"].startswith("pwa_")
    code, body, _ = get(f"/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress={USER}")
    assert code == 200 and b"<incomingServer" in body
    for path in ["/admin", "/admin/login", "/api/v1/users", "/api/v1/openapi.json", "/metrics"]:
        code, _, _ = get(path)
        assert code == 404, path
    code, _, _ = get("/api/v1/login", "POST", {"name": "admin", "password": "x"})
    assert code == 404
    # the admin listener still serves everything
    code, _ = Api(srv).call("GET", "/openapi.json")
    assert code == 200


def test_the_web_listener_allowlist(make_server):
    from conftest import free_port
    port = free_port()
    srv = make_server(toml_extra=f'[web]\nlisten = "127.0.0.1:{port}"\nallow = ["10.0.0.0/8"]\n')
    req = urllib.request.Request(f"https://127.0.0.1:{port}/account/login")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(req, context=CTX, timeout=10).read()
    assert srv.proc.poll() is None
