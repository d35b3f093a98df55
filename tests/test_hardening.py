"""The second factor holds under guessing, bans cannot lock everyone out, and the audit chain
cannot be rewritten without the key (issue: attacker probe of the admin API)."""
import http.client
import json
import ssl
import time

import pytest

from conftest import open_db, ALICE
from test_admin_api import create_admin, first_login
from test_twofactor import totp

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def call(srv, method, path, body=None, token=None, source="127.0.0.1"):
    """One API request from a chosen loopback source address."""
    c = http.client.HTTPSConnection("127.0.0.1", srv.admin, context=CTX, timeout=20,
                                    source_address=(source, 0))
    headers = {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        c.request(method, "/api/v1" + path, body=data, headers=headers)
        r = c.getresponse()
        raw = r.read()
        return r.status, (json.loads(raw) if raw else None), {k.lower(): v for k, v in r.getheaders()}
    except (ConnectionResetError, ConnectionRefusedError, ssl.SSLError, http.client.RemoteDisconnected):
        return 0, None, {}  # dropped at accept: banned
    finally:
        c.close()


def login(srv, name, pw, code, source="127.0.0.1"):
    body = {"name": name, "password": pw}
    if code is not None:
        body["totp"] = code
    return call(srv, "POST", "/login", body, source=source)[:2]


@pytest.fixture
def admin(make_server):
    srv = make_server()
    boot = create_admin(srv, "bootstrap")

    class A:
        pass
    a = A()
    a.srv, a.pw = srv, boot["password"]

    class Shim:  # first_login's client
        def call(self, method, path, body=None, token=None):
            code, r, _ = call(srv, method, path, body, token)
            return code, r
    a.token, a.secret, a.recovery = first_login(Shim(), "admin", a.pw)
    return a


def wrong(code):
    return "%06d" % ((int(code) + 1) % 1_000_000)


def test_wrong_codes_from_one_address_get_it_banned(admin):
    srv = admin.srv
    statuses = []
    for _ in range(20):
        c, r = login(srv, "admin", admin.pw, wrong(totp(admin.secret)), source="127.0.0.2")
        statuses.append(c)
        if c in (0, 429):
            break
    assert statuses[0] == 401
    assert statuses[-1] in (0, 429), statuses
    assert len(statuses) <= 11, "banned at the source limit, not after 20"
    # the right code is refused from that address now
    c, _ = login(srv, "admin", admin.pw, totp(admin.secret, time.time() + 30), source="127.0.0.2")
    assert c in (0, 429), c
    # a missing code is a failure like a wrong password, with the same reply
    c1, r1 = login(srv, "admin", admin.pw, None, source="127.0.0.3")
    c2, r2 = login(srv, "admin", "wrong password!", None, source="127.0.0.3")
    assert (c1, r1) == (c2, r2) == (401, {"error": "invalid credentials"})


def test_wrong_codes_from_many_addresses_lock_the_second_factor_but_not_the_known_client(admin):
    srv = admin.srv
    # 127.0.0.1 is a known client of the admin: it enrolled (password + code) from there
    for i in range(20):
        c, _ = login(srv, "admin", admin.pw, wrong(totp(admin.secret)), source=f"127.0.0.{10 + i}")
        assert c == 401, (i, c)
    # an unknown source with the right password and the right code: locked
    c, _ = login(srv, "admin", admin.pw, totp(admin.secret, time.time() + 30), source="127.0.0.99")
    assert c == 401
    # a recovery code is throttled the same way
    c, _ = login(srv, "admin", admin.pw, admin.recovery[0], source="127.0.0.98")
    assert c == 401
    # the known client still logs in (the same code: refused above before it was checked)
    c, r = login(srv, "admin", admin.pw, totp(admin.secret, time.time() + 30))
    assert c == 200, r
    with srv.db() as db:
        locks = db.execute("SELECT reason FROM audit_log WHERE event = 'second_factor_locked'").fetchall()
    assert len(locks) == 1 and "password is known" in locks[0][0]
    assert "second_factor_locked" in srv.log()
    # the postmaster (alice through the alias) got the notice
    notices = [m for m in srv.inbox(ALICE) if b"Someone knows your administrator password" in m]
    assert len(notices) == 1, len(notices)


def test_no_role_can_ban_everyone(admin):
    srv = admin.srv
    tok = admin.token
    helpdesk = create_admin(srv, "add", "help1", "--role", "helpdesk")

    class Shim:
        def call(self, method, path, body=None, token=None):
            c, r, _ = call(srv, method, path, body, token)
            return c, r
    htok, _, _ = first_login(Shim(), "help1", helpdesk["password"])
    for target in ("0.0.0.0/0", "::/0", "10.0.0.0/8"):
        c, r, _ = call(srv, "POST", "/bans", {"target": target, "duration_secs": 3600}, token=htok)
        assert c == 422, (target, c, r)
        c, r, _ = call(srv, "POST", "/bans", {"target": target, "duration_secs": 3600, "force": True}, token=htok)
        assert c == 422, (target, c, r)
    # superadmin: refused without force, and never over its own address
    c, r, _ = call(srv, "POST", "/bans", {"target": "10.0.0.0/8", "duration_secs": 3600}, token=tok)
    assert c == 422 and "force" in r["error"]
    c, r, _ = call(srv, "POST", "/bans", {"target": "127.0.0.0/8", "duration_secs": 3600, "force": True}, token=tok)
    assert c == 422 and "your own address" in r["error"], r
    c, r, _ = call(srv, "POST", "/bans", {"target": "127.0.0.1", "duration_secs": 3600}, token=tok)
    assert c == 422 and "your own address" in r["error"], r
    # helpdesk: a day at most
    c, r, _ = call(srv, "POST", "/bans", {"target": "203.0.113.7", "duration_secs": 7 * 86400}, token=htok)
    assert c == 422
    c, r, _ = call(srv, "POST", "/bans", {"target": "203.0.113.7", "duration_secs": 3600}, token=htok)
    assert c == 201, r
    c, r, _ = call(srv, "POST", "/bans", {"target": "10.0.0.0/8", "duration_secs": 3600, "force": True}, token=tok)
    assert c == 201, r
    # the CLI (the host) needs --force too
    p = srv.cli("ban", "add", "10.0.0.0/8", check=False)
    assert p.returncode != 0 and "force" in p.stderr


def test_allowlisted_networks_are_never_banned(make_server):
    srv = make_server(toml_extra='[defence]\nallowlist = ["127.0.0.64/26"]\n')
    boot = create_admin(srv, "bootstrap")

    class Shim:
        def call(self, method, path, body=None, token=None):
            c, r, _ = call(srv, method, path, body, token, source="127.0.0.65")
            return c, r
    tok, _, _ = first_login(Shim(), "admin", boot["password"])
    c, r, _ = call(srv, "POST", "/bans", {"target": "127.0.0.64/27", "duration_secs": 3600}, token=tok,
                   source="127.0.0.2")
    assert c == 422 and "allowlisted" in r["error"], r
    # a ban stored by hand over the allowlisted network does not drop it
    p = srv.cli("ban", "add", "127.0.0.70", check=False)
    assert p.returncode != 0
    with open_db(srv.dir, write=True) as db:
        db.execute("INSERT INTO bans (target, until, reason, offences, created_at) VALUES "
                   "('127.0.0.64/26', ?, 'by hand', 1, 0)", (int(time.time()) + 3600,))
    time.sleep(3)
    c, r, _ = call(srv, "GET", "/me", token=tok, source="127.0.0.66")
    assert c == 200, (c, r)


# ---------------------------------------------------------------- audit chain


def rows(db):
    return db.execute("SELECT id, ts, event, protocol, ip, username, account_id, mechanism, tls, result, "
                      "reason, prev_hash, hash, keyed FROM audit_log ORDER BY id").fetchall()


def sha_chain(prev, r):
    import hashlib
    h = hashlib.sha256(prev.encode())
    fields = [str(r[1]), r[2], r[3] or "", r[4] or "", r[5] or "", "" if r[6] is None else str(r[6]),
              r[7] or "", r[8] or "", r[9], r[10] or ""]
    for f in fields:
        b = f.encode()
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()


@pytest.fixture
def chain(tmp_path):
    from conftest import init_dir
    d, off = init_dir(tmp_path)
    for i in range(10):
        from conftest import run_cli
        run_cli(d, "ban", "add", f"203.0.113.{i + 1}", "--for", "1h")
    cp = d / "checkpoints.jsonl"
    cfg = d / "postern.toml"
    cfg.write_text(cfg.read_text() + f'\n[audit]\ncheckpoint_file = "{cp}"\n')
    from conftest import run_cli
    run_cli(d, "audit-log", "checkpoint")
    p = run_cli(d, "audit-log", "verify")
    assert "intact" in p.stdout and "1 checkpoint(s) matched" in p.stdout, p.stdout
    return d


def verify(d):
    from conftest import run_cli
    return run_cli(d, "audit-log", "verify", check=False)


def test_edited_row_with_a_recomputed_sha256_chain_is_caught(chain):
    with open_db(chain, write=True) as db:
        rs = rows(db)
        target = rs[5]
        db.execute("UPDATE audit_log SET ip = '198.51.100.1' WHERE id = ?", (target[0],))
        prev = rs[4][12]
        for r in rows(db)[5:]:
            h = sha_chain(prev, r)
            db.execute("UPDATE audit_log SET prev_hash = ?, hash = ?, keyed = 0 WHERE id = ?", (prev, h, r[0]))
            prev = h
    p = verify(chain)
    assert p.returncode != 0 and f"row {target[0]}" in p.stderr, p.stderr


def test_rechaining_everything_is_caught(chain):
    with open_db(chain, write=True) as db:
        prev = ""
        for r in rows(db):
            h = sha_chain(prev, r)
            db.execute("UPDATE audit_log SET prev_hash = ?, hash = ?, keyed = 0 WHERE id = ?", (prev, h, r[0]))
            prev = h
    p = verify(chain)
    assert p.returncode != 0 and "tampered" in p.stderr, p.stderr


def test_deleting_the_first_rows_is_caught(chain):
    with open_db(chain, write=True) as db:
        db.execute("DELETE FROM audit_log WHERE id <= 3")
    p = verify(chain)
    assert p.returncode != 0 and "row 4" in p.stderr and "deleted" in p.stderr, p.stderr


def test_deleting_rows_in_the_middle_is_caught(chain):
    with open_db(chain, write=True) as db:
        db.execute("DELETE FROM audit_log WHERE id IN (5, 6)")
    p = verify(chain)
    assert p.returncode != 0 and "5..7" in p.stderr, p.stderr


def test_deleting_the_last_rows_is_caught_by_the_checkpoint(chain):
    with open_db(chain, write=True) as db:
        last = db.execute("SELECT MAX(id) FROM audit_log").fetchone()[0]
        db.execute("DELETE FROM audit_log WHERE id > ?", (last - 3,))
    p = verify(chain)
    assert p.returncode != 0 and truncated(p.stderr), p.stderr
    # without the checkpoint file the shorter chain looks whole: that is what checkpoints are for
    from conftest import run_cli
    cfg = chain / "postern.toml"
    cfg.write_text(cfg.read_text().replace("checkpoint_file", "# checkpoint_file"))
    assert "intact" in run_cli(chain, "audit-log", "verify").stdout
    p = run_cli(chain, "audit-log", "verify", "--checkpoint", str(chain / "checkpoints.jsonl"), check=False)
    # (the verify commands above appended rows, reusing the deleted ids: still the tail that went)
    assert p.returncode != 0 and truncated(p.stderr), p.stderr


def truncated(stderr):
    """The tail that went, as verify says it: SQLite gives the deleted ids to the rows appended
    next (the chain looks cut short), PostgreSQL's sequence never does (the checkpoint's row is
    missing)."""
    from conftest import PG
    return "truncated" in stderr or (PG is not None and "named by the checkpoint" in stderr and "missing" in stderr)


def test_a_forged_checkpoint_is_refused(chain):
    cp = chain / "checkpoints.jsonl"
    c = json.loads(cp.read_text().splitlines()[-1])
    c["id"] += 5
    cp.write_text(cp.read_text() + json.dumps(c) + "\n")
    p = verify(chain)
    assert p.returncode != 0 and "not signed" in p.stderr, p.stderr


def test_retention_pruning_passes(chain):
    # rows made "old", then the retention the server runs hourly
    with open_db(chain, write=True) as db:
        db.execute("UPDATE audit_log SET ts = ts - 100 * 86400 WHERE id <= 6")
    cfg = chain / "postern.toml"
    # the table header at the start of a line (comments may name it too)
    cfg.write_text(cfg.read_text().replace("\n[defence]\n", "\n[defence]\naudit_retention_days = 30\n")
                   if "\n[defence]\n" in cfg.read_text() else cfg.read_text() + "\n[defence]\naudit_retention_days = 30\n")
    from conftest import start
    import re
    off = int(re.search(r'address = "127\.0\.0\.1:(\d+)"', cfg.read_text()).group(1)) - 25
    srv = start(chain, off)
    deadline = time.time() + 20
    while time.time() < deadline:
        with open_db(chain) as db:
            if db.execute("SELECT COUNT(*) FROM audit_log WHERE event = 'audit_pruned'").fetchone()[0]:
                break
        time.sleep(0.2)
    assert srv.stop() == 0
    with open_db(chain) as db:
        first = db.execute("SELECT MIN(id) FROM audit_log").fetchone()[0]
    assert first == 7
    p = verify(chain)
    assert p.returncode == 0 and "intact" in p.stdout, p.stderr
    # and deleting one more old row after the pruning is still caught
    with open_db(chain, write=True) as db:
        db.execute("DELETE FROM audit_log WHERE id = 7")
    p = verify(chain)
    assert p.returncode != 0, p.stdout


# ---------------------------------------------------------------- smaller


def test_replies_quote_only_an_excerpt_and_carry_strict_headers(admin):
    srv = admin.srv
    long = "x" * 5000 + "@example.test"
    c, r, h = call(srv, "POST", "/users", {"address": long}, token=admin.token)
    assert c in (400, 422) and len(r["error"]) < 200, (c, len(r["error"]))
    assert "default-src 'none'" in h.get("content-security-policy", ""), h
    assert "includeSubDomains" in h.get("strict-transport-security", ""), h
    # serde's words without axum's prefix
    c, r, _ = call(srv, "POST", "/bans", {"target": 5}, token=admin.token)
    assert c == 400 and "target type" not in r["error"], r
    # too large: 413, not 400
    import socket
    s = CTX.wrap_socket(socket.create_connection(("127.0.0.1", srv.admin), timeout=10))
    s.sendall((f"POST /api/v1/bans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin.token}\r\n"
               "Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n").encode()
              + b'{"target": "203.0.113.1", "reason": "' + b"r" * 100_000)
    reply = b""
    try:
        while b"\r\n" not in reply:
            reply += s.recv(4096)
    finally:
        s.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]


def test_administrators_change_reset_disable(admin):
    srv = admin.srv
    new = "Granite-Orbit-Kettle-9912!"
    code_now = totp(admin.secret, time.time() + 30)
    # wrong old password: refused; right one + code: changed, sessions end
    c, _, _ = call(srv, "POST", "/me/password", {"old_password": "nope nope nope", "totp": code_now,
                                                 "new_password": new}, token=admin.token)
    assert c == 401
    c, r, _ = call(srv, "POST", "/me/password", {"old_password": admin.pw, "totp": code_now,
                                                 "new_password": "Summer2024!!"}, token=admin.token)
    assert c == 422 and "guessable" in r["error"], r
    c, r, _ = call(srv, "POST", "/me/password", {"old_password": admin.pw, "totp": code_now,
                                                 "new_password": new}, token=admin.token)
    assert c == 204, r
    assert call(srv, "GET", "/me", token=admin.token)[0] == 401, "sessions ended"
    # host shell: a new generated password, disable, enable
    out = json.loads(srv.cli("admin", "passwd", "admin", "--json").stdout)
    assert len(out["password"]) >= 16
    srv.cli("admin", "disable", "admin")
    # a recovery code that would work is refused while the administrator is disabled, and works
    # once it is enabled again (so the refusal was the disabling, not the code)
    c, _ = login(srv, "admin", out["password"], admin.recovery[-1])
    assert c == 401
    srv.cli("admin", "enable", "admin")
    c, _ = login(srv, "admin", out["password"], admin.recovery[-1])
    assert c == 200
    with srv.db() as db:
        events = [r[0] for r in db.execute("SELECT event FROM audit_log")]
    for e in ("admin_password_changed", "admin_password_reset", "admin_disabled", "admin_enabled"):
        assert e in events, e
