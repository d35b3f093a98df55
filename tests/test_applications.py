"""Application credentials: submit-only principals with allowed senders, networks, quotas, expiry,
and rotation with an overlap that ends on time."""
import imaplib
import json
import poplib
import smtplib
import time

from conftest import BOB, tls_client_context


def create(srv, name, *args):
    out = srv.cli("app", "create", name, *args, "--json").stdout
    return json.loads(out)


def message(sender, to=BOB, subject="invoice"):
    return f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nInvoice attached.\r\n"


def send(srv, user, secret, sender, to=BOB, header_from=None):
    """Returns None on success, else the SMTP error (code, text)."""
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=10) as s:
        try:
            s.login(user, secret)
        except smtplib.SMTPAuthenticationError as e:
            return ("auth", e.smtp_code)
        try:
            s.sendmail(sender, [to], message(header_from or sender, to))
        except smtplib.SMTPSenderRefused as e:
            return (e.smtp_code, e.smtp_error)
        except smtplib.SMTPRecipientsRefused as e:
            return list(e.recipients.values())[0]
        except smtplib.SMTPDataError as e:
            return (e.smtp_code, e.smtp_error)
    return None


def audit(srv, event):
    with srv.db() as c:
        return c.execute("SELECT username, actor, reason FROM audit_log WHERE event = ?", (event,)).fetchall()


def test_application_sends_only_as_its_senders_and_never_reads_mail(make_server):
    srv = make_server()
    app = create(srv, "billing", "--allow-from", "billing@example.test", "--allow-from", "@example.test",
                 "--messages-per-hour", "3")
    secret = app["secret"]
    assert secret.startswith("pst_") and app["allow_from"] == ["billing@example.test", "@example.test"]
    assert send(srv, "billing", secret, "billing@example.test") is None
    assert any(b"Invoice attached." in m for m in srv.inbox(BOB))
    # only the allow-from list: a domain that is not listed is refused
    narrow = create(srv, "crm", "--allow-from", "crm@example.test")["secret"]
    code, _ = send(srv, "crm", narrow, "alice@example.test")
    assert code == 553
    # another local domain is refused too, and so is a remote one
    srv.cli("domain", "add", "other.test")
    assert send(srv, "crm", narrow, "crm@other.test")[0] == 553
    assert send(srv, "billing", secret, "billing@elsewhere.test")[0] == 553
    # envelope allowed but the From header claims someone else
    code, _ = send(srv, "crm", narrow, "crm@example.test", header_from="alice@example.test")
    assert code == 550
    # quota: 3 messages per hour for billing, one already sent
    assert send(srv, "billing", secret, "billing@example.test") is None
    assert send(srv, "billing", secret, "billing@example.test") is None
    code, _ = send(srv, "billing", secret, "billing@example.test")
    assert code == 451
    # never IMAP or POP3
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    try:
        m.login("billing", secret)
        raise AssertionError("an application logged in over IMAP")
    except imaplib.IMAP4.error as e:
        assert "AUTHENTICATIONFAILED" in str(e)
    p = poplib.POP3_SSL("127.0.0.1", srv.pop3s, context=tls_client_context(), timeout=10)
    p.user("billing")
    try:
        p.pass_(secret)
        raise AssertionError("an application logged in over POP3")
    except poplib.error_proto:
        pass
    # only a digest is stored, and the CLI never shows the secret again
    with srv.db() as c:
        stored = " ".join(str(v) for row in c.execute("SELECT * FROM applications") for v in row)
    assert secret not in stored and secret[4:] not in stored
    listing = srv.cli("app", "list").stdout + srv.cli("app", "show", "billing").stdout
    assert "billing" in listing and secret not in listing and "127.0.0.1" in listing
    assert secret not in srv.log()
    reasons = {r[2] for r in audit(srv, "auth") if r[0] == "billing"}
    assert "application_scope" in reasons
    created = audit(srv, "app_created")
    assert created and created[0][1].startswith("cli:")


def test_application_networks_expiry_disable_remove(make_server):
    srv = make_server()
    office = create(srv, "office", "--allow-from", "@example.test", "--from", "127.0.9.0/24")["secret"]
    assert send(srv, "office", office, "office@example.test") == ("auth", 535)
    short = create(srv, "short", "--allow-from", "@example.test", "--expires", "1s")["secret"]
    time.sleep(2.1)
    assert send(srv, "short", short, "x@example.test") == ("auth", 535)
    s = create(srv, "svc", "--allow-from", "svc@example.test")["secret"]
    srv.cli("app", "disable", "svc")
    assert send(srv, "svc", s, "svc@example.test") == ("auth", 535)
    srv.cli("app", "enable", "svc")
    assert send(srv, "svc", s, "svc@example.test") is None
    srv.cli("app", "remove", "svc")
    assert send(srv, "svc", s, "svc@example.test") == ("auth", 535)
    # refused at creation: a non-local domain, a name with '@', a duplicate
    assert srv.cli("app", "create", "x", "--allow-from", "@elsewhere.test", check=False).returncode != 0
    assert srv.cli("app", "create", "a@b", "--allow-from", "@example.test", check=False).returncode != 0
    assert srv.cli("app", "create", "office", "--allow-from", "@example.test", check=False).returncode != 0


def test_rotation_overlap_ends_on_time(make_server):
    srv = make_server()
    old = create(srv, "shop", "--allow-from", "shop@example.test")["secret"]
    out = json.loads(srv.cli("app", "rotate", "shop", "--grace", "4s", "--json").stdout)
    new = out["secret"]
    assert new != old and out["previous_secret_valid_until"]
    # during the overlap both work
    assert send(srv, "shop", old, "shop@example.test") is None
    assert send(srv, "shop", new, "shop@example.test") is None
    deadline = out["previous_secret_valid_until"]
    time.sleep(max(0, deadline - time.time()) + 0.5)
    assert send(srv, "shop", old, "shop@example.test") == ("auth", 535)
    assert send(srv, "shop", new, "shop@example.test") is None
    # both events are in the audit log: the rotation (by whom) and the end of the old secret
    assert audit(srv, "app_rotated")[0][0] == "shop"
    for _ in range(30):
        if audit(srv, "app_secret_retired"):
            break
        time.sleep(0.2)
    retired = audit(srv, "app_secret_retired")
    assert retired and retired[0][0] == "shop"
