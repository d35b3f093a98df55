"""New-sign-in notices: a login from a source network and client the account has not used
within `[notify] known_days` puts a notice in its INBOX (and a `new_signin` audit event); a
known one does not, not twice (also across a restart), never for allowlisted networks, and at
most `max_per_day` a day."""
import poplib
import time

from conftest import BOB, BOB_PW, tls_client_context
from test_defence import imap_login

NOTIFY = """
[notify]
new_signin = true
max_per_day = 3

[defence]
allowlist = ["127.0.9.0/24"]
"""


def notices(srv):
    return [m for m in srv.inbox(BOB) if b"Subject: New sign-in to " + BOB.encode() in m]


def wait_notices(srv, n, timeout=5):
    end = time.time() + timeout
    while len(found := notices(srv)) < n and time.time() < end:
        time.sleep(0.1)
    return found


def signin_events(srv):
    with srv.db() as c:
        return c.execute("SELECT ip, protocol, mechanism, result, reason FROM audit_log "
                         "WHERE event = 'new_signin' ORDER BY id").fetchall()


def test_new_signin_notices(make_server):
    srv = make_server(toml_extra=NOTIFY)
    assert imap_login(srv.imaps, BOB, BOB_PW) == "ok"
    (first,) = wait_notices(srv, 1)
    text = first.decode()
    assert "From:  127.0.0.1 (network 127.0.0.0/24)" in text, text
    assert "How:   IMAP (LOGIN), TLSv1.3" in text, text
    assert "postern incident lock " + BOB in text
    assert "Auto-Submitted: auto-generated" in text
    # the same network and client again: nothing new, also after a restart (the database knows)
    assert imap_login(srv.imaps, BOB, BOB_PW, source="127.0.0.2") == "ok"
    srv.restart()
    assert imap_login(srv.imaps, BOB, BOB_PW) == "ok"
    time.sleep(1)
    assert len(notices(srv)) == 1
    # another client (POP3) from the same network is new
    p = poplib.POP3_SSL("127.0.0.1", srv.pop3s, context=tls_client_context(), timeout=10)
    p.user(BOB)
    p.pass_(BOB_PW)
    p.quit()
    assert "How:   POP3 (USER)" in wait_notices(srv, 2)[1].decode()
    # another network is new; an allowlisted one never tells
    assert imap_login(srv.imaps, BOB, BOB_PW, source="127.0.5.1") == "ok"
    assert "network 127.0.5.0/24" in wait_notices(srv, 3)[2].decode()
    assert imap_login(srv.imaps, BOB, BOB_PW, source="127.0.9.1") == "ok"
    # max_per_day = 3: the fourth new source is audited, not mailed
    assert imap_login(srv.imaps, BOB, BOB_PW, source="127.0.6.1") == "ok"
    time.sleep(1.5)
    assert len(notices(srv)) == 3
    events = signin_events(srv)
    assert [(e[0], e[3]) for e in events] == [
        ("127.0.0.1", "notified"), ("127.0.0.1", "notified"), ("127.0.5.1", "notified"),
        ("127.0.6.1", "rate_limited")], events
    assert events[1][1] == "pop3" and events[1][2] == "USER" and "client pop3 USER" in events[1][4]
    # the notices are in the owner's timeline, the known sources in `user signins`
    assert "new_signin" in srv.cli("incident", "timeline", BOB).stdout
    sources = srv.cli("user", "signins", BOB).stdout
    assert "127.0.5.0/24" in sources and "imap LOGIN" in sources and "pop3 USER" in sources, sources
    assert "127.0.9.0/24" in sources  # allowlisted: known, never told
