"""Second factor (TOTP): enrolment with a real RFC 6238 computation, the account password stops
opening mail (only app passwords do), single-use codes, recovery codes, sealed seeds."""
import base64
import hmac
import imaplib
import json
import poplib
import smtplib
import struct
import subprocess
import time

from conftest import raw_db, BIN, BOB, BOB_PW, tls_client_context


def totp(secret_b32, t=None, step=30):
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    counter = int((time.time() if t is None else t) // step)
    h = hmac.new(key, struct.pack(">Q", counter), "sha1").digest()
    o = h[-1] & 15
    return "%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1_000_000)


def enroll(srv, address, code_for=None, json_out=True):
    """Runs `user 2fa enroll`, reads the secret it prints, answers with a code; returns
    (secret, stdout, returncode)."""
    args = [BIN, "--dir", str(srv.dir), "user", "2fa", "enroll", address] + (["--json"] if json_out else [])
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    lines = [first]
    if json_out:
        secret = json.loads(first)["secret"]
    else:
        while "secret:" not in lines[-1]:
            lines.append(p.stdout.readline())
        secret = lines[-1].split("secret:")[1].strip()
    code = code_for(secret) if code_for else totp(secret)
    out, err = p.communicate(code + "\n", timeout=30)
    return secret, "".join(lines) + out, p.returncode, err


def imap_login(srv, user, pw):
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    try:
        m.login(user, pw)
        m.logout()
        return "ok"
    except imaplib.IMAP4.error as e:
        return str(e)


def smtp_login(srv, user, pw):
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=10) as s:
        try:
            s.login(user, pw)
            return "ok"
        except smtplib.SMTPAuthenticationError as e:
            return f"{e.smtp_code} {e.smtp_error.decode()}"


def pop3_login(srv, user, pw):
    p = poplib.POP3_SSL("127.0.0.1", srv.pop3s, context=tls_client_context(), timeout=10)
    try:
        p.user(user)
        p.pass_(pw)
        p.quit()
        return "ok"
    except poplib.error_proto as e:
        return str(e)


def test_totp_turns_the_password_off_for_mail(make_server):
    srv = make_server()
    app = json.loads(srv.cli("app-password", "create", BOB, "--name", "phone", "--json").stdout)["secret"]
    assert imap_login(srv, BOB, BOB_PW) == "ok"
    # a wrong code leaves the enrolment pending and 2FA off
    _, out, rc, err = enroll(srv, BOB, code_for=lambda s: "000000" if totp(s) != "000000" else "111111")
    assert rc != 0 and "not valid" in err
    assert "pending" in srv.cli("user", "2fa", "status", BOB).stdout
    assert imap_login(srv, BOB, BOB_PW) == "ok"
    # a real enrolment (terminal form: QR code, URI and secret)
    used = []
    secret, out, rc, err = enroll(srv, BOB, json_out=False, code_for=lambda s: used.append(totp(s)) or used[0])
    assert rc == 0, err
    assert "otpauth://totp/" in out and any(ch in out for ch in "\u2580\u2584\u2588")
    recovery = [l.strip() for l in out.splitlines() if l.startswith("  ") and l.count("-") == 2 and len(l.strip()) == 14]
    assert len(recovery) == 10
    assert "on; 10 recovery code(s) left" in srv.cli("user", "2fa", "status", BOB).stdout
    # the password alone no longer opens IMAP, SMTP or POP3, and says why (only to its owner)
    r = imap_login(srv, BOB, BOB_PW)
    assert "app password is required" in r
    r = smtp_login(srv, BOB, BOB_PW)
    assert r.startswith("535") and "app password is required" in r
    assert "app password is required" in pop3_login(srv, BOB, BOB_PW)
    # a wrong password gets the ordinary failure: nothing about 2FA
    r = imap_login(srv, BOB, "Wrong-password-42!")
    assert "app password" not in r and r != "ok"
    # app passwords keep working
    assert imap_login(srv, BOB, app) == "ok" and smtp_login(srv, BOB, app) == "ok"
    assert pop3_login(srv, BOB, app) == "ok"
    # the seed is sealed: neither it nor its base32 form is in the database
    raw = base64.b32decode(secret + "=" * (-len(secret) % 8))
    db = raw_db(srv.dir)
    assert raw not in db and secret.encode() not in db
    for c in recovery:
        assert c.encode() not in db
    # the code used to confirm cannot be used again: disabling with it fails
    p = srv.cli("user", "2fa", "disable", BOB, stdin=used[0] + "\n", check=False)
    assert p.returncode != 0 and "not valid" in p.stderr
    # a recovery code works once
    p = srv.cli("user", "2fa", "disable", BOB, stdin=recovery[0] + "\n", check=False)
    assert p.returncode == 0, p.stderr
    assert imap_login(srv, BOB, BOB_PW) == "ok"
    with srv.db() as c:
        events = [r[0] for r in c.execute("SELECT event FROM audit_log WHERE username = ?", (BOB,))]
        reasons = {r[0] for r in c.execute("SELECT reason FROM audit_log WHERE event = 'auth'")}
    assert "2fa_enabled" in events and "2fa_disabled" in events and "2fa_code_refused" in events
    assert "second_factor_required" in reasons


def test_codes_are_single_use_and_admin_override(make_server):
    srv = make_server()
    secret, out, rc, err = enroll(srv, BOB)
    assert rc == 0, err
    recovery = [l.strip() for l in out.splitlines() if l.startswith("  ") and len(l.strip()) == 14]
    # renewing recovery codes needs a fresh TOTP code: the next step's code (within the one-step
    # skew RFC 6238 allows) has not been used yet; using it twice must fail
    code = totp(secret, time.time() + 30)
    p = srv.cli("user", "2fa", "recovery-codes", BOB, stdin=code + "\n", check=False)
    assert p.returncode == 0, p.stderr
    p = srv.cli("user", "2fa", "recovery-codes", BOB, stdin=code + "\n", check=False)
    assert p.returncode != 0, "a TOTP code was accepted twice"
    # the old recovery codes no longer work
    p = srv.cli("user", "2fa", "disable", BOB, stdin=recovery[0] + "\n", check=False)
    assert p.returncode != 0
    # the host administrator can turn it off, with a reason that is audited
    assert srv.cli("user", "2fa", "disable", BOB, "--admin-override", check=False).returncode != 0
    srv.cli("user", "2fa", "disable", BOB, "--admin-override", "--reason", "lost phone, ticket 42")
    assert "off" in srv.cli("user", "2fa", "status", BOB).stdout
    with srv.db() as c:
        reason = c.execute("SELECT reason FROM audit_log WHERE event = '2fa_disabled'").fetchone()[0]
    assert "ticket 42" in reason
