"""The admin HTTP API: no default credentials (bootstrap), password + TOTP login with enrolment on
first use, session tokens and API keys, the role matrix, domain scoping, audit events naming the
admin, and a schemathesis run against the API's own OpenAPI description."""
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import raw_db, ALICE, BOB, ROOT
from test_twofactor import totp

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


class Api:
    def __init__(self, srv, token=None):
        self.base = f"https://127.0.0.1:{srv.admin}/api/v1"
        self.token = token

    def call(self, method, path, body=None, token=None, headers=()):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        tok = token or self.token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        for k, v in headers:
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, context=CTX, timeout=15) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, (json.loads(raw) if raw else None)


def create_admin(srv, *args):
    return json.loads(srv.cli("admin", *args, "--json").stdout)


# the code each enrolment used, by secret: a test that replays it must replay that very code, not
# recompute it (a 30 s step may have ended in between, and then the recomputed code is a fresh one)
ENROLMENT_CODES = {}


def first_login(api, name, password):
    """Password → enrolment → session; returns (token, totp secret, recovery codes)."""
    code, r = api.call("POST", "/login", {"name": name, "password": password})
    assert code == 200 and r["status"] == "enrollment_required", r
    secret = r["secret"]
    assert r["otpauth_uri"].startswith("otpauth://totp/")
    enrol_code = totp(secret)
    code, s = api.call("POST", "/login/enroll", {"enrollment_token": r["enrollment_token"], "code": enrol_code})
    assert code == 200, s
    ENROLMENT_CODES[secret] = enrol_code
    return s["token"], secret, s["recovery_codes"]


def audit_rows(srv, event):
    with srv.db() as c:
        return c.execute("SELECT username, actor, ip, reason, mechanism FROM audit_log WHERE event = ?", (event,)).fetchall()


@pytest.fixture
def api_server(make_server):
    srv = make_server()
    boot = create_admin(srv, "bootstrap")
    return srv, boot


def test_bootstrap_login_totp_sessions(api_server):
    srv, boot = api_server
    api = Api(srv)
    # no default credentials; bootstrap only once
    assert boot["name"] == "admin" and boot["role"] == "superadmin" and len(boot["password"]) >= 20
    assert srv.cli("admin", "bootstrap", check=False).returncode != 0
    # unknown name and wrong password: the same reply
    c1, r1 = api.call("POST", "/login", {"name": "nobody", "password": "x" * 20})
    c2, r2 = api.call("POST", "/login", {"name": "admin", "password": "x" * 20})
    assert (c1, r1) == (c2, r2) == (401, {"error": "invalid credentials"})
    # first login: enrolment required; the password alone gives no session
    token, secret, recovery = first_login(api, "admin", boot["password"])
    assert token.startswith("psn_") and len(recovery) == 10
    code, me = api.call("GET", "/me", token=token)
    assert code == 200 and me["name"] == "admin" and me["role"] == "superadmin"
    # later logins need the TOTP code; a missing or replayed code fails, and a missing code gets
    # the reply a wrong password gets (the password step is no oracle)
    code, r = api.call("POST", "/login", {"name": "admin", "password": boot["password"]})
    assert (code, r) == (401, {"error": "invalid credentials"})
    used = ENROLMENT_CODES[secret]
    code, r = api.call("POST", "/login", {"name": "admin", "password": boot["password"], "totp": used})
    assert code == 401, "the enrolment code was accepted again"
    nxt = totp(secret, time.time() + 30)
    code, r = api.call("POST", "/login", {"name": "admin", "password": boot["password"], "totp": nxt})
    assert code == 200 and r["token"].startswith("psn_")
    code, r = api.call("POST", "/login", {"name": "admin", "password": boot["password"], "totp": nxt})
    assert code == 401, "a TOTP code was accepted twice"
    # a recovery code works once
    code, r = api.call("POST", "/login", {"name": "admin", "password": boot["password"], "totp": recovery[0]})
    assert code == 200
    code, r = api.call("POST", "/login", {"name": "admin", "password": boot["password"], "totp": recovery[0]})
    assert code == 401
    # logout ends the session
    assert api.call("POST", "/logout", token=token)[0] == 204
    assert api.call("GET", "/me", token=token)[0] == 401
    # the TOTP seed is sealed, tokens are stored as digests
    db = raw_db(srv.dir)
    assert secret.encode() not in db and token.encode() not in db and boot["password"].encode() not in db
    logins = [r for r in audit_rows(srv, "auth") if r[4] == "password+totp"]
    assert any(r[0] == "admin" for r in logins)


def role_token(srv, api, superadmin, name, role, *domains):
    code, a = api.call("POST", "/admins", {"name": name, "role": role, "domains": list(domains)}, token=superadmin)
    assert code == 201, a
    token, _, _ = first_login(api, name, a["password"])
    return token


def test_role_matrix_and_domain_scope(api_server):
    srv, boot = api_server
    api = Api(srv)
    su, _, _ = first_login(api, "admin", boot["password"])
    api.token = su
    assert api.call("POST", "/domains", {"name": "other.test"})[0] == 201
    assert api.call("POST", "/users", {"address": "dave@other.test", "password": "Zx8!qWm3#Lp5-delta"})[0] == 201
    tokens = {
        "domain-admin": role_token(srv, api, su, "dom", "domain-admin", "example.test"),
        "helpdesk": role_token(srv, api, su, "desk", "helpdesk"),
        "auditor": role_token(srv, api, su, "audit", "auditor"),
    }
    # a helpdesk with domains, or a domain-admin without, is refused
    assert api.call("POST", "/admins", {"name": "x", "role": "helpdesk", "domains": ["example.test"]})[0] == 422
    assert api.call("POST", "/admins", {"name": "y", "role": "domain-admin"})[0] == 422
    B = BOB.replace("@", "%40")
    # (method, path, body, roles allowed)
    matrix = [
        ("GET", "/users", None, {"domain-admin", "helpdesk", "auditor"}),
        ("POST", "/domains", {"name": "new.test"}, set()),
        ("GET", "/admins", None, set()),
        ("POST", "/admins", {"name": "z", "role": "auditor"}, set()),
        ("GET", "/api-keys", None, set()),
        ("POST", "/users", {"address": "new@example.test"}, {"domain-admin"}),
        ("POST", f"/users/{B}/password", {}, {"domain-admin", "helpdesk"}),
        ("POST", f"/users/{B}/unlock", None, {"domain-admin", "helpdesk"}),
        ("GET", f"/users/{B}/app-passwords", None, {"domain-admin", "helpdesk", "auditor"}),
        ("POST", f"/users/{B}/app-passwords", {"name": "p"}, {"domain-admin"}),
        ("POST", "/applications", {"name": "a", "allow_from": ["@example.test"]}, {"domain-admin"}),
        ("GET", "/applications", None, {"domain-admin", "helpdesk", "auditor"}),
        ("GET", "/bans", None, {"helpdesk", "auditor"}),
        ("POST", "/bans", {"target": "192.0.2.0/24", "duration_secs": 60}, {"helpdesk"}),
        ("GET", "/audit-log", None, {"auditor"}),
        ("POST", f"/users/{B}/disable", None, {"domain-admin"}),
    ]
    for method, path, body, allowed in matrix:
        for role, tok in tokens.items():
            code, r = api.call(method, path, body, token=tok)
            if role in allowed:
                assert code < 400 or code in (404, 409), (role, method, path, code, r)
            else:
                assert code == 403, (role, method, path, code, r)
            # undo what succeeded so that the next role meets the same state
            if code in (200, 201) and method == "POST":
                if path == "/users":
                    api.call("DELETE", "/users/new%40example.test", token=su)
                elif path.endswith("/app-passwords"):
                    api.call("DELETE", f"/users/{B}/app-passwords/p", token=su)
                elif path == "/applications":
                    api.call("DELETE", "/applications/a", token=su)
    # domain-admin scope: nothing outside its domains
    dom = tokens["domain-admin"]
    code, users = api.call("GET", "/users", token=dom)
    assert code == 200 and {u["address"] for u in users} >= {ALICE, BOB}
    assert all(u["address"].endswith("@example.test") for u in users)
    assert api.call("GET", "/users/dave%40other.test", token=dom)[0] == 403
    assert api.call("POST", "/users", {"address": "eve@other.test"}, token=dom)[0] == 403
    assert api.call("POST", "/applications", {"name": "b", "allow_from": ["@other.test"]}, token=dom)[0] == 403
    # helpdesk resets a password: a generated one is returned once, and works for IMAP
    code, r = api.call("POST", "/users/dave%40other.test/password", {}, token=tokens["helpdesk"])
    assert code == 200 and len(r["password"]) >= 20
    # every change names the admin who made it
    resets = audit_rows(srv, "password_reset")
    assert any(r[0] == "dave@other.test" and r[1] == "api:desk" and r[2] == "127.0.0.1" for r in resets)
    assert any(r[1] == "api:admin" for r in audit_rows(srv, "admin_created"))


def test_api_keys_expire_and_are_scoped(api_server):
    srv, boot = api_server
    api = Api(srv)
    su, _, _ = first_login(api, "admin", boot["password"])
    code, k = api.call("POST", "/api-keys", {"name": "deploy", "role": "auditor", "expires_in": 2}, token=su)
    assert code == 201 and k["key"].startswith("pak_")
    code, me = api.call("GET", "/me", token=k["key"])
    assert code == 200 and me["via"] == "apikey" and me["role"] == "auditor"
    assert api.call("GET", "/audit-log", token=k["key"])[0] == 200
    assert api.call("POST", "/users", {"address": "x@example.test"}, token=k["key"])[0] == 403
    listing = api.call("GET", "/api-keys", token=su)[1]
    assert listing[0]["name"] == "deploy" and "key" not in listing[0]
    time.sleep(3)
    assert api.call("GET", "/me", token=k["key"])[0] == 401
    # keys never live forever
    assert api.call("POST", "/api-keys", {"name": "forever", "role": "auditor", "expires_in": 0}, token=su)[0] == 422


def test_admin_api_is_https_only_and_unknown_paths_are_json(api_server):
    srv, _ = api_server
    import socket
    s = socket.create_connection(("127.0.0.1", srv.admin), timeout=5)
    s.sendall(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        data = s.recv(100)
    except OSError:
        data = b""
    s.close()
    assert b"openapi" not in data
    code, r = Api(srv).call("GET", "/nothing-here")
    assert code == 404 and "error" in r
    code, doc = Api(srv).call("GET", "/openapi.json")
    assert code == 200 and doc == json.loads((ROOT / "docs" / "openapi.json").read_text())


@pytest.mark.skipif(shutil.which("schemathesis") is None, reason="schemathesis is installed by tests/run.sh")
def test_schemathesis_against_the_openapi_description(make_server, tmp_path):
    # The fuzzer's address is allowlisted: its thousands of made-up logins (POST /login,
    # /me/password) would otherwise get it banned part-way, as they should (the defences have
    # their own tests); this test is about the API's answers matching its description.
    srv = make_server(toml_extra='[defence]\nallowlist = ["127.0.0.1/32"]\n')
    boot = create_admin(srv, "bootstrap")
    api = Api(srv)
    su, _, _ = first_login(api, "admin", boot["password"])
    code, k = api.call("POST", "/api-keys", {"name": "fuzz", "role": "superadmin", "expires_in": 3600}, token=su)
    assert code == 201
    env = dict(os.environ, SCHEMATHESIS_HOOKS="")
    p = subprocess.run(
        ["schemathesis", "run", f"https://127.0.0.1:{srv.admin}/api/v1/openapi.json",
         "--url", f"https://127.0.0.1:{srv.admin}",
         "--tls-verify", "false", "-H", f"Authorization: Bearer {k['key']}",
         "--max-examples", "15", "--checks", "not_a_server_error,status_code_conformance,"
         "content_type_conformance,response_schema_conformance,response_headers_conformance",
         "--exclude-path", "/api/v1/logout", "--exclude-path", "/api/v1/api-keys/{name}",
         "--exclude-path", "/api/v1/admins/{name}",
         # the mail users' API: an administrator's key opens none of it (401), and its sign-in's
         # failures would get this address banned; tests/test_me_api.py fuzzes it with a user's
         # session
         *[a for p in ["session", "account", "account/password", "account/password-check", "app-passwords",
                       "app-passwords/{name}", "signins", "lock"] for a in ("--exclude-path", f"/api/v1/me/{p}")],
         "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    import re
    m = re.search(r"(\d+) generated, (\d+) passed", out)
    assert m and int(m.group(1)) >= 200 and m.group(1) == m.group(2), out[-3000:]
    assert srv.proc.poll() is None, "the server died under schemathesis"
