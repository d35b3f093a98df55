"""SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, 7677, 9266) on IMAP, submission and POP3,
driven by an independent client implementation (Python's `scramp`) over imaplib, smtplib and a
raw POP3 dialogue; `tls-exporter` binding data comes from OpenSSL (`s_client -keymatexport`)."""
import base64
import imaplib
import json
import shutil
import smtplib
import socket
import subprocess
import time

import pytest

from conftest import ALICE, ALICE_PW, BOB, BOB_PW, tls_client_context

scramp = pytest.importorskip("scramp")
import scramp.core as scramp_core  # noqa: E402

# scramp refuses tls-exporter by name only (it cannot get the data from Python's ssl); the
# data here comes from OpenSSL, so the name is allowed.
scramp_core.CbName.SUPPORTED_TYPES = frozenset(scramp_core.CbName.SUPPORTED_TYPES | {"tls-exporter"})
scramp_core.CbName.UNSUPPORTED_TYPES = frozenset()

FAST = """
[defence]
failure_delay_max_ms = 200
"""


class Scram:
    """A SASL callback for imaplib/smtplib: client-first, client-final, then the server's
    signature is checked (scramp raises if it is wrong) and acknowledged with an empty reply."""

    def __init__(self, user, pw, mech="SCRAM-SHA-256", cb=None):
        self.c = scramp.ScramClient([mech], user, pw, channel_binding=cb)
        self.step = 0
        self.server_verified = False

    def __call__(self, challenge=None):
        if self.step == 0:
            self.step = 1
            return self.c.get_client_first()
        if self.step == 1:
            self.step = 2
            self.c.set_server_first(challenge.decode() if isinstance(challenge, bytes) else challenge)
            return self.c.get_client_final()
        self.c.set_server_final(challenge.decode() if isinstance(challenge, bytes) else challenge)
        self.server_verified = True
        return ""


def imap_scram(srv, user, pw, mech="SCRAM-SHA-256", cb=None):
    """(ok, server_verified, capabilities) of an AUTHENTICATE over IMAPS; cb may be a callable
    taking the SSL socket."""
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    caps = m.capabilities
    binding = cb(m.sock) if callable(cb) else cb
    s = Scram(user, pw, mech, binding)
    try:
        m.authenticate(mech, s)
        m.select("INBOX")
        m.logout()
        return True, s.server_verified, caps
    except imaplib.IMAP4.error:
        return False, s.server_verified, caps


def smtp_scram(srv, user, pw, mech="SCRAM-SHA-256", plus_cb=False):
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=10) as c:
        c.ehlo()
        auth_line = c.esmtp_features.get("auth", "")
        cb = ("tls-server-end-point", c.sock) if plus_cb else None
        s = Scram(user, pw, mech, cb)
        try:
            code, _ = c.auth(mech, s)
            return code == 235 and s.server_verified, auth_line
        except smtplib.SMTPAuthenticationError:
            return False, auth_line


class Pop3:
    def __init__(self, port):
        self.sock = tls_client_context().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
        self.f = self.sock.makefile("rb")
        assert self.line().startswith("+OK")

    def line(self):
        return self.f.readline().decode().rstrip("\r\n")

    def cmd(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()


def pop3_scram(srv, user, pw, mech="SCRAM-SHA-256", initial=True):
    p = Pop3(srv.pop3s)
    p.sock.sendall(b"CAPA\r\n")
    capa = []
    while (l := p.line()) != ".":
        capa.append(l)
    s = Scram(user, pw, mech)
    b64 = lambda t: base64.b64encode(t.encode()).decode()  # noqa: E731
    if initial:
        r = p.cmd(f"AUTH {mech} {b64(s())}")
    else:
        assert p.cmd(f"AUTH {mech}") == "+ "
        r = p.cmd(b64(s()))
    while r.startswith("+ "):
        r = p.cmd(b64(s(base64.b64decode(r[2:]).decode())))
    ok = r.startswith("+OK")
    if ok:
        assert p.cmd("STAT").startswith("+OK")
    return ok and s.server_verified, capa


def app_password(srv, name, *args, user=BOB):
    out = srv.cli("app-password", "create", user, "--name", name, *args, "--json").stdout
    return json.loads(out)["secret"]


def audit_rows(srv, where):
    with srv.db() as c:
        return c.execute(f"SELECT username, mechanism, result, reason, protocol FROM audit_log WHERE {where}").fetchall()


def wait_rows(srv, where, n=1, timeout=5):
    end = time.time() + timeout
    while True:
        rows = audit_rows(srv, where)
        if len(rows) >= n or time.time() > end:
            return rows
        time.sleep(0.1)


def test_scram_with_app_passwords_on_imap_smtp_pop3(make_server):
    srv = make_server()
    phone = app_password(srv, "phone")
    # a verifier is made at creation, under the account's salt; no account verifier (off)
    with srv.db() as c:
        (v,) = c.execute("SELECT scram_verifier FROM app_passwords WHERE name = 'phone'").fetchone()
        salt, iters, acct = c.execute(
            "SELECT scram_salt, scram_iterations, scram_verifier FROM accounts WHERE address = ?", (BOB,)).fetchone()
    assert len(v) == 64 and len(salt) == 16 and iters == 10000 and acct is None

    ok, verified, caps = imap_scram(srv, BOB, phone)
    assert ok and verified
    # advertised strongest first, only after TLS
    auths = [c for c in caps if c.startswith("AUTH=")]
    assert auths == ["AUTH=SCRAM-SHA-256-PLUS", "AUTH=SCRAM-SHA-256", "AUTH=PLAIN"], caps
    plain = imaplib.IMAP4("127.0.0.1", srv.imap, timeout=10)
    assert not [c for c in plain.capabilities if c.startswith("AUTH=")]
    plain.logout()
    # -PLUS with tls-server-end-point, computed by scramp from the certificate it received
    ok, verified, _ = imap_scram(srv, BOB, phone, "SCRAM-SHA-256-PLUS", lambda s: ("tls-server-end-point", s))
    assert ok and verified

    ok, auth_line = smtp_scram(srv, BOB, phone)
    assert ok and auth_line.split() == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "PLAIN", "LOGIN"], auth_line
    assert smtp_scram(srv, BOB, phone, "SCRAM-SHA-256-PLUS", plus_cb=True)[0]
    ok, capa = pop3_scram(srv, BOB, phone)
    assert ok and "SASL SCRAM-SHA-256-PLUS SCRAM-SHA-256 PLAIN" in capa, capa
    assert pop3_scram(srv, BOB, phone, initial=False)[0]

    # wrong password, unknown user: the uniform failure on every protocol
    assert not imap_scram(srv, BOB, "wrong-" + phone)[0]
    assert not smtp_scram(srv, BOB, "wrong-" + phone)[0]
    assert not pop3_scram(srv, BOB, "wrong-" + phone)[0]
    assert not imap_scram(srv, "nobody@example.test", phone)[0]
    # the account password has no verifier while scram_for_account_passwords is off
    assert not imap_scram(srv, BOB, BOB_PW)[0]
    # an app password scoped to SMTP does not open IMAP over SCRAM either
    sender = app_password(srv, "sender", "--protocols", "smtp")
    assert smtp_scram(srv, BOB, sender)[0] and not imap_scram(srv, BOB, sender)[0]
    # revoked: gone at once
    srv.cli("app-password", "revoke", BOB, "phone")
    assert not imap_scram(srv, BOB, phone)[0]

    ok_rows = audit_rows(srv, "event = 'auth' AND result = 'ok' AND mechanism LIKE 'SCRAM%'")
    assert {(r[1], r[4]) for r in ok_rows} >= {
        ("SCRAM-SHA-256", "imap"), ("SCRAM-SHA-256-PLUS", "imap"), ("SCRAM-SHA-256", "submissions"),
        ("SCRAM-SHA-256-PLUS", "submissions"), ("SCRAM-SHA-256", "pop3")}, ok_rows
    reasons = {r[3] for r in audit_rows(srv, "event = 'auth' AND result = 'failed' AND mechanism LIKE 'SCRAM%'")}
    assert {"bad_password", "unknown_user", "app_password_scope"} <= reasons, reasons
    # the made-up salt of an unknown name is stable (it does not tell the name is unknown)
    def salt_of(user):
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
        seen = []

        def cb(ch):
            if not seen:
                seen.append(1)
                return "n,,n=" + user + ",r=abcdefgh"
            seen.append(dict(kv.split("=", 1) for kv in ch.decode().split(",")))
            return None  # cancel
        with pytest.raises(imaplib.IMAP4.error):
            m.authenticate("SCRAM-SHA-256", cb)
        m.logout()
        return seen[1]["s"], seen[1]["i"]
    assert salt_of("nobody@example.test") == salt_of("nobody@example.test")
    assert salt_of("nobody@example.test") != salt_of("other@example.test")


def openssl_exporter_session(port):
    """An IMAPS session through `openssl s_client`, which prints the RFC 9266 exporter value.
    Returns (process, exporter bytes)."""
    p = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-ign_eof",
         "-keymatexport", "EXPORTER-Channel-Binding", "-keymatexportlen", "32"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    exporter = None
    while True:
        line = p.stdout.readline().decode(errors="replace")
        assert line, "s_client ended early"
        if "Keying material:" in line:
            exporter = bytes.fromhex(line.split("Keying material:")[1].strip())
        if line.startswith("* OK"):
            return p, exporter


def s_client_scram(p, user, pw, exporter, tag):
    s = Scram(user, pw, "SCRAM-SHA-256-PLUS", ("tls-exporter", exporter))
    b64 = lambda t: base64.b64encode(t.encode()).decode()  # noqa: E731

    def send(t):
        p.stdin.write(t.encode() + b"\r\n")

    def read():
        return p.stdout.readline().decode().rstrip("\r\n")
    send(f"{tag} AUTHENTICATE SCRAM-SHA-256-PLUS {b64(s())}")
    r = read()
    while r.startswith("+ "):
        try:
            send(b64(s(base64.b64decode(r[2:]).decode())))
        except scramp.ScramException:
            send("*")
        r = read()
    return r, s.server_verified


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
def test_scram_plus_channel_binding_and_downgrade(make_server):
    srv = make_server(toml_extra=FAST)
    phone = app_password(srv, "phone")
    # tls-exporter (TLS 1.3), the exporter value from OpenSSL
    p, exporter = openssl_exporter_session(srv.imaps)
    try:
        assert exporter and len(exporter) == 32
        r, verified = s_client_scram(p, BOB, phone, exporter, "a1")
        assert r.startswith("a1 OK") and verified, r
    finally:
        p.kill()
    # the binding of another TLS connection (what a TLS-terminating middlebox would forward):
    # refused, and audited as such
    p1, other = openssl_exporter_session(srv.imaps)
    p2, _ = openssl_exporter_session(srv.imaps)
    try:
        r, verified = s_client_scram(p2, BOB, phone, other, "a2")
        assert r.startswith("a2 NO") and not verified, r
    finally:
        p1.kill()
        p2.kill()
    ok, _, _ = imap_scram(srv, BOB, phone, "SCRAM-SHA-256-PLUS", ("tls-server-end-point", b"\0" * 32))
    assert not ok
    ok, _ = smtp_scram(srv, BOB, phone)
    assert ok
    # downgrade: a client that can bind says "y" (it believes the server cannot) where -PLUS is
    # offered: refused
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    s = Scram(BOB, phone)
    first = s.c.get_client_first()
    assert first.startswith("n,,")
    s.step = 1
    with pytest.raises(imaplib.IMAP4.error):
        m.authenticate("SCRAM-SHA-256", lambda ch: "y" + first[1:] if ch == b"" else s(ch))
    m.logout()
    rows = wait_rows(srv, "event = 'auth' AND reason = 'channel_binding'", 3)
    assert len(rows) >= 3 and all(r[0] == BOB for r in rows), rows


def test_scram_failures_are_counted_and_banned(make_server):
    """SCRAM failures go through the same guard as PLAIN: the source is banned after the same
    number of failures."""
    srv = make_server(toml_extra=FAST)
    app_password(srv, "phone")
    outcome = []
    for i in range(14):
        raw = socket.create_connection(("127.0.0.1", srv.imaps), timeout=10, source_address=("127.0.0.77", 0))
        try:
            s = tls_client_context().wrap_socket(raw)
            f = s.makefile("rb")
            if not f.readline():
                outcome.append("closed")
                continue
        except OSError:
            outcome.append("closed")
            continue
        sc = Scram(BOB, f"wrong-password-{i}")
        b64 = lambda t: base64.b64encode(t.encode()).decode()  # noqa: E731
        s.sendall(f"a AUTHENTICATE SCRAM-SHA-256 {b64(sc())}\r\n".encode())
        r = f.readline().decode()
        if r.startswith("+ "):
            s.sendall((b64(sc(base64.b64decode(r[2:]).decode())) + "\r\n").encode())
            r = f.readline().decode()
        outcome.append("fail" if r.startswith("a NO") else "other:" + r.strip())
        s.close()
        if outcome[-1] != "fail":
            break
    assert outcome[:5] == ["fail"] * 5, outcome
    assert outcome[-1] != "fail", outcome
    bans = wait_rows(srv, "event = 'ban'")
    assert bans, outcome
    assert audit_rows(srv, "event = 'ban' AND ip = '127.0.0.77'"), bans
    # the same count as password failures: 10 per source (the default) before the ban
    assert outcome.count("fail") <= 10, outcome
    # another source, another account: not affected
    assert smtp_scram(srv, ALICE, app_password(srv, "laptop", user=ALICE))[0]


def test_scram_for_account_passwords_setting(make_server):
    srv = make_server()
    # off (the default): no verifier, SCRAM with the account password fails, PLAIN works
    assert not imap_scram(srv, BOB, BOB_PW)[0]
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    m.login(BOB, BOB_PW)
    m.logout()
    time.sleep(0.5)
    with srv.db() as c:
        assert c.execute("SELECT scram_verifier FROM accounts WHERE address = ?", (BOB,)).fetchone()[0] is None
    # on: an existing account gets its verifier at its next password login
    srv.stop()
    cfg = srv.dir / "postern.toml"
    cfg.write_text(cfg.read_text() + "\n[auth]\nscram_for_account_passwords = true\n")
    srv.restart()
    assert not imap_scram(srv, BOB, BOB_PW)[0]
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    m.login(BOB, BOB_PW)
    m.logout()
    end = time.time() + 5
    while not imap_scram(srv, BOB, BOB_PW)[0]:
        assert time.time() < end, "no verifier made at the password login"
        time.sleep(0.2)
    assert smtp_scram(srv, BOB, BOB_PW)[0] and pop3_scram(srv, BOB, BOB_PW)[0]
    # a password change drops the old verifier and makes the new one (the CLI reads the setting)
    new_pw = "Zx7!kR2#vN9$qL-delta"
    srv.cli("user", "passwd", BOB, "--password-stdin", stdin=new_pw + "\n")
    assert not imap_scram(srv, BOB, BOB_PW)[0]
    assert imap_scram(srv, BOB, new_pw)[0]
    # an expired password is told as such over SCRAM too (only its owner can make the proof)
    srv.cli("user", "expire-password", BOB)
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    with pytest.raises(imaplib.IMAP4.error, match="EXPIRED"):
        m.authenticate("SCRAM-SHA-256", Scram(BOB, new_pw))
    # 2FA on: the account password alone no longer opens mail over SCRAM either (told only to
    # whoever made a valid proof); an app password still does
    from test_twofactor import enroll
    srv.cli("user", "passwd", BOB, "--password-stdin", stdin="Yq3!mT8#wV5$pK-echo\n")
    assert imap_scram(srv, BOB, "Yq3!mT8#wV5$pK-echo")[0]
    enroll(srv, BOB)
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    with pytest.raises(imaplib.IMAP4.error, match="(?i)app password"):
        m.authenticate("SCRAM-SHA-256", Scram(BOB, "Yq3!mT8#wV5$pK-echo"))
    # off again: the account verifiers are dropped at start, app passwords keep theirs
    app = app_password(srv, "tablet")
    srv.stop()
    cfg.write_text(cfg.read_text().replace("scram_for_account_passwords = true", "scram_for_account_passwords = false"))
    srv.restart()
    with srv.db() as c:
        assert c.execute("SELECT COUNT(*) FROM accounts WHERE scram_verifier IS NOT NULL").fetchone()[0] == 0
    assert imap_scram(srv, BOB, app)[0]
