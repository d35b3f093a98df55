"""Storage quotas (RFC 9208 QUOTA, STORAGE resource): `postern user quota` and `[storage]
default_quota_mb`; a full mailbox gets `452 4.2.2` at RCPT (the sender retries later) and IMAP
APPEND/COPY `NO [OVERQUOTA]`; GETQUOTAROOT/GETQUOTA report used and limit in KiB (imapclient,
a real client, reads them); SETQUOTA is the administrator's, not the user's."""
import imaplib
import smtplib

import imapclient
import pytest

from conftest import ALICE, BOB, BOB_PW, tls_client_context

BODY = "x" * 4000


def deliver(srv, to=BOB):
    with smtplib.SMTP("127.0.0.1", srv.smtp, timeout=10) as s:
        return s.sendmail("someone@remote.test", [to], f"Subject: fill\r\n\r\n{BODY}\r\n")


def test_quota_enforced_and_reported(make_server):
    srv = make_server()
    assert "no quota" in srv.cli("user", "quota", BOB).stdout
    srv.cli("user", "quota", BOB, "10K")
    assert f"{BOB}: 0.0 KiB of 10.0 KiB used (0%)" in srv.cli("user", "quota", BOB).stdout
    c = imapclient.IMAPClient("127.0.0.1", port=srv.imaps, ssl_context=tls_client_context(), timeout=10)
    c.login(BOB, BOB_PW)
    assert b"QUOTA" in c.capabilities() and b"QUOTA=RES-STORAGE" in c.capabilities()
    roots, quotas = c.get_quota_root("INBOX")
    assert roots.quota_roots == [""] and quotas[0].resource == "STORAGE" and quotas[0].limit == 10, (roots, quotas)
    # deliveries until full: the next RCPT is a temporary failure (the sender keeps the mail)
    deliver(srv)
    deliver(srv)
    deliver(srv)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        deliver(srv)
    code, text = e.value.recipients[BOB]
    assert code == 452 and b"4.2.2" in text
    # another account is not affected
    assert deliver(srv, ALICE) == {}
    q = c.get_quota("INBOX")[0]
    assert q.usage >= 10 and q.limit == 10
    # APPEND and COPY over the quota: NO [OVERQUOTA]
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    m.login(BOB, BOB_PW)
    typ, data = m.append("INBOX", None, None, f"Subject: a\r\n\r\n{BODY}\r\n".encode())
    assert typ == "NO" and b"OVERQUOTA" in data[0], data
    m.select("INBOX")
    typ, data = m.copy("1", "Archive")
    assert typ == "NO" and b"OVERQUOTA" in data[0], data
    # MOVE does not add to the storage: it works
    assert m._simple_command("MOVE", "1", "Archive")[0] == "OK"
    # the user cannot raise their own quota
    typ, data = m._simple_command("SETQUOTA", '""', "(STORAGE 99999)")
    assert typ == "NO"
    m.logout()
    # raised by the administrator: mail flows again
    srv.cli("user", "quota", BOB, "1M")
    assert deliver(srv) == {}
    assert c.get_quota("INBOX")[0].limit == 1024
    c.logout()
    events = [r[0] for r in srv.db().execute("SELECT event FROM audit_log WHERE event = 'quota_set'")]
    assert len(events) == 2


def test_default_quota_from_the_configuration(make_server):
    srv = make_server()
    srv.stop()
    cfg = srv.dir / "postern.toml"
    cfg.write_text(cfg.read_text().replace("[storage]\n", "[storage]\ndefault_quota_mb = 1\n", 1))
    srv.restart()
    assert "of 1.0 MiB used" in srv.cli("user", "quota", BOB).stdout
    srv.cli("user", "quota", BOB, "none")
    assert "no quota" in srv.cli("user", "quota", BOB).stdout
    srv.cli("user", "quota", BOB, "default")
    assert "of 1.0 MiB" in srv.cli("user", "quota", BOB).stdout
    assert srv.cli("user", "quota", BOB, "lots", check=False).returncode != 0
    # no limit: GETQUOTAROOT names no root, GETQUOTA "" does not exist
    srv.cli("user", "quota", BOB, "none")
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    m.login(BOB, BOB_PW)
    typ, data = m.getquotaroot("INBOX")
    assert typ == "OK" and data[0] == [b"INBOX"], data
    assert m.getquota('""')[0] == "NO"
    m.logout()
