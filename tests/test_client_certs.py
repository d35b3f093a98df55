"""TLS client certificates and SASL EXTERNAL (RFC 4422 A) on IMAP, submission and POP3: a
certificate registered to an account (`postern user cert add`) logs in; an unregistered one, a
foreign authorization identity or an expired one does not; every attempt is audited. Clients:
Python's ssl with a client certificate, and `openssl s_client -cert`."""
import imaplib
import json
import shutil
import smtplib
import subprocess
import time

import pytest

from conftest import ALICE, BOB, tls_client_context
from test_admin_api import Api, create_admin, first_login


def make_cert(tmp_path, name, days=30, key_type="ec"):
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key_type == "ec" else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", str(days), "-subj", f"/CN={name}"], check=True, capture_output=True)
    return cert, key


def expired_cert_for(key_path):
    """A certificate for an existing key, valid in 2020 only (OpenSSL 3.0's command line cannot
    set past dates)."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phone old")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
            .not_valid_after(datetime.datetime(2021, 1, 1, tzinfo=datetime.timezone.utc))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def ctx_with(cert=None, key=None):
    ctx = tls_client_context()
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def imap_external(srv, ctx, authzid=""):
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=ctx, timeout=10)
    caps = m.capabilities
    try:
        m.authenticate("EXTERNAL", lambda _: authzid)
        ok = m.select("INBOX")[0] == "OK"
        m.logout()
        return ok, caps
    except imaplib.IMAP4.error:
        return False, caps


def audit(srv, where, timeout=5):
    """Audit rows matching `where`, waiting a little for the batched audit writer."""
    end = time.time() + timeout
    while True:
        with srv.db() as c:
            rows = c.execute(f"SELECT username, protocol, result, reason FROM audit_log WHERE {where}").fetchall()
        if rows or time.time() > end:
            return rows
        time.sleep(0.1)


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
def test_external_with_registered_certificates(make_server, tmp_path):
    srv = make_server()
    laptop, laptop_key = make_cert(tmp_path, "laptop")
    stranger, stranger_key = make_cert(tmp_path, "stranger", key_type="rsa")
    out = srv.cli("user", "cert", "add", BOB, str(laptop), "--name", "laptop").stdout
    assert "registered" in out
    assert "laptop" in srv.cli("user", "cert", "list", BOB).stdout
    # the same key cannot be registered twice (to anyone)
    assert srv.cli("user", "cert", "add", ALICE, str(laptop), "--name", "x", check=False).returncode != 0

    # IMAP: EXTERNAL is advertised (first) only when a certificate was presented
    ok, caps = imap_external(srv, ctx_with(laptop, laptop_key))
    assert ok and caps.index("AUTH=EXTERNAL") < caps.index("AUTH=SCRAM-SHA-256"), caps
    ok, caps = imap_external(srv, ctx_with())
    assert not ok and "AUTH=EXTERNAL" not in caps
    # an explicit authorization identity: the certificate's account, or nothing
    assert imap_external(srv, ctx_with(laptop, laptop_key), BOB)[0]
    assert not imap_external(srv, ctx_with(laptop, laptop_key), ALICE)[0]
    # a certificate nobody registered
    assert not imap_external(srv, ctx_with(stranger, stranger_key))[0]

    # submission, with smtplib
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=ctx_with(laptop, laptop_key), timeout=10) as s:
        s.ehlo()
        assert s.esmtp_features["auth"].split()[0] == "EXTERNAL", s.esmtp_features
        code, _ = s.auth("EXTERNAL", lambda challenge=None: "")
        assert code == 235
        s.sendmail(BOB, [ALICE], f"From: {BOB}\r\nTo: {ALICE}\r\nSubject: cert\r\n\r\nsent with EXTERNAL\r\n")
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=ctx_with(stranger, stranger_key), timeout=10) as s:
        s.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.auth("EXTERNAL", lambda challenge=None: "")

    # POP3 through openssl s_client -cert, with the initial response "=" (empty authzid)
    p = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{srv.pop3s}", "-quiet", "-cert", str(laptop),
         "-key", str(laptop_key)],
        input=b"CAPA\r\nAUTH EXTERNAL =\r\nSTAT\r\nQUIT\r\n", capture_output=True, timeout=20)
    out = p.stdout.decode()
    assert "SASL EXTERNAL SCRAM-SHA-256-PLUS" in out, out
    lines = [l for l in out.splitlines() if l.startswith(("+OK", "-ERR"))]
    assert any(l.startswith("+OK") and "logged in" in l.lower() or "maildrop" in l.lower() for l in lines), out
    assert any(l.startswith("+OK 0 ") or l.startswith("+OK 1 ") for l in lines), out

    # curl, an independent client: SASL EXTERNAL with its client certificate
    if shutil.which("curl"):
        p = subprocess.run(["curl", "-sS", "-v", "--insecure", "--cert", str(laptop), "--key", str(laptop_key),
                            "--login-options", "AUTH=EXTERNAL", "-u", f"{BOB}:", f"imaps://127.0.0.1:{srv.imaps}/"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and "AUTHENTICATE EXTERNAL" in p.stderr and "INBOX" in p.stdout, p.stderr[-2000:]

    # audit: successes and the reasons of the failures
    ok = audit(srv, "event = 'auth' AND mechanism = 'EXTERNAL' AND result = 'ok'")
    assert {r[1] for r in ok} >= {"imap", "submissions", "pop3"}, ok
    reasons = {r[3] for r in audit(srv, "event = 'auth' AND mechanism = 'EXTERNAL' AND result = 'failed'")}
    assert {"unknown_certificate", "identity_mismatch"} <= reasons, reasons
    with srv.db() as c:
        (used,) = c.execute("SELECT last_used_ip FROM client_certs WHERE name = 'laptop'").fetchone()
    assert used == "127.0.0.1"

    # removal takes effect at once; an incident lock removes every registration
    srv.cli("user", "cert", "remove", BOB, "laptop")
    assert not imap_external(srv, ctx_with(laptop, laptop_key))[0]
    srv.cli("user", "cert", "add", BOB, str(laptop), "--name", "laptop")
    srv.cli("user", "cert", "add", BOB, str(stranger))  # named after its key by default
    assert "cert-" in srv.cli("user", "cert", "list", BOB).stdout
    lock = json.loads(srv.cli("incident", "lock", BOB, "--json").stdout)
    assert lock["client_certs_removed"] == 2
    assert "no client certificates" in srv.cli("user", "cert", "list", BOB).stdout


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
def test_client_certs_over_the_api_and_expiry(make_server, tmp_path):
    srv = make_server()
    boot = create_admin(srv, "bootstrap")
    api = Api(srv)
    token, _, _ = first_login(api, "admin", boot["password"])
    cert, key = make_cert(tmp_path, "phone")
    code, r = api.call("POST", f"/users/{BOB}/certs", {"name": "phone", "pem": cert.read_text()}, token=token)
    assert code == 201 and r["name"] == "phone" and len(r["key_sha256"]) == 64, r
    code, r = api.call("POST", f"/users/{BOB}/certs", {"name": "junk", "pem": "not a certificate"}, token=token)
    assert code == 422, r
    code, lst = api.call("GET", f"/users/{BOB}/certs", token=token)
    assert code == 200 and [c["name"] for c in lst] == ["phone"]
    assert imap_external(srv, ctx_with(cert, key))[0]
    # a renewed certificate with the same key keeps working
    renewed = tmp_path / "renewed.pem"
    subprocess.run(["openssl", "req", "-x509", "-key", str(key), "-out", str(renewed), "-days", "90",
                    "-subj", "/CN=phone renewed"], check=True, capture_output=True)
    assert imap_external(srv, ctx_with(renewed, key))[0]
    # the same key in a certificate that is no longer valid: refused
    old = tmp_path / "old.pem"
    old.write_bytes(expired_cert_for(key))
    assert not imap_external(srv, ctx_with(old, key))[0]
    assert audit(srv, "reason = 'certificate_expired'")
    code, _ = api.call("DELETE", f"/users/{BOB}/certs/phone", token=token)
    assert code == 204
    assert not imap_external(srv, ctx_with(cert, key))[0]
    with srv.db() as c:
        events = [r[0] for r in c.execute(
            "SELECT event FROM audit_log WHERE event LIKE 'client_cert_%' ORDER BY id")]
    assert events == ["client_cert_added", "client_cert_removed"], events


def test_client_certificates_can_be_not_requested(make_server, tmp_path):
    srv = make_server()
    cfg = srv.dir / "postern.toml"
    cfg.write_text(cfg.read_text().replace("[tls]\n", "[tls]\nrequest_client_certificates = false\n", 1))
    srv.restart()
    # a client with a certificate is not asked for it: nothing to offer EXTERNAL with
    cert, key = make_cert(tmp_path, "c")
    srv.cli("user", "cert", "add", BOB, str(cert), "--name", "c")
    ok, caps = imap_external(srv, ctx_with(cert, key))
    assert not ok and "AUTH=SCRAM-SHA-256" in caps and "AUTH=EXTERNAL" not in caps
