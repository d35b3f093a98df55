"""Outbound delivery through a smarthost that requires AUTH over TLS (a second Postern, which
takes the mail with an application credential), retries while it is down, and one DSN for a
permanent failure. The relay password is given once on stdin and exists nowhere in clear."""
import json
import smtplib
import time
from pathlib import Path

from conftest import ALICE, ALICE_PW, start, tls_client_context

RCPT = "rcpt@dest.test"
RCPT_PW = "Wd7#pLq2!vMz9-recipient"


def make_relay(make_server):
    """The smarthost: a Postern serving dest.test, taking submissions from an application that
    may send as @example.test. Returns (server, application secret)."""
    relay = make_server()
    relay.cli("domain", "add", "dest.test")
    relay.cli("user", "add", RCPT, "--password-stdin", stdin=RCPT_PW + "\n")
    app = json.loads(relay.cli("app", "create", "smarthost", "--allow-from", "@example.test", "--json").stdout)
    return relay, app["secret"]


def sender_config(relay, retry="[1, 2]"):
    return f"""
[delivery]
enabled = true
retry_schedule_secs = {retry}
warn_after_secs = 0
give_up_after_secs = 3600

[[relay]]
domains = ["*"]
host = "127.0.0.1"
port = {relay.submissions}
tls = "implicit"
tls_name = "mail.example.test"
ca_file = "{relay.dir / 'tls' / 'cert.pem'}"
username = "smarthost"
password = "secret:relay"
"""


def submit(srv, rcpts, subject="quarterly report"):
    msg = f"From: {ALICE}\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n\r\nNumbers attached.\r\n"
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=10) as s:
        s.login(ALICE, ALICE_PW)
        s.sendmail(ALICE, rcpts, msg)


def wait_for(pred, timeout=30, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def grep_tree(root: Path, needle: bytes):
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_smarthost_with_stored_credentials(make_server):
    relay, secret = make_relay(make_server)
    srv = make_server(toml_extra=sender_config(relay))
    srv.cli("secret", "set", "relay", "--stdin", "--description", "smarthost login", stdin=secret + "\n")
    submit(srv, [RCPT])
    got = wait_for(lambda: relay.inbox(RCPT), what="the relayed message")
    assert b"Subject: quarterly report" in got[0] and b"Numbers attached." in got[0]
    wait_for(lambda: not srv.queue(), what="an empty queue")
    # the relay password: given once on stdin, in no file and no log line in clear
    assert grep_tree(srv.dir, secret.encode()) == []
    assert secret not in srv.log() and secret not in relay.log()
    with srv.db() as c:
        reads = c.execute("SELECT reason FROM audit_log WHERE event = 'secret_read'").fetchall()
    assert any("relay login to 127.0.0.1" in r[0] for r in reads)
    # the smarthost saw an authenticated application login over TLS
    with relay.db() as c:
        logins = c.execute("SELECT username, tls, result FROM audit_log WHERE event = 'auth'").fetchall()
    assert ("smarthost", "TLSv1.3", "ok") in logins


def test_retry_while_down_then_delivered_and_bounce_once(make_server):
    relay, secret = make_relay(make_server)
    srv = make_server(toml_extra=sender_config(relay))
    srv.cli("secret", "set", "relay", "--stdin", stdin=secret + "\n")
    assert relay.stop() == 0
    submit(srv, [RCPT, "nobody@dest.test"], subject="while down")
    # attempts fail while the relay is down; the message stays queued with the reason
    def attempted_twice():
        rows = srv.queue()
        if not rows:
            return None
        m = json.loads(srv.cli("queue", "show", str(rows[0][0]), "--json").stdout)
        return m if m["attempts"] >= 2 else None
    q = wait_for(attempted_twice, what="two failed attempts")
    assert all(r["status"] == "pending" for r in q["recipients"])
    assert "connection" in (q["last_error"] or "")
    # back up: delivered to the existing recipient, one DSN for the unknown one
    relay2 = start(relay.dir, relay.offset)
    try:
        got = wait_for(lambda: relay2.inbox(RCPT), what="delivery after the relay came back")
        assert b"Subject: while down" in got[0]
        dsn = wait_for(lambda: [m for m in srv.inbox(ALICE) if b"delivery-status" in m], what="a DSN")
        assert len(dsn) == 1
        text = dsn[0].decode()
        assert "Final-Recipient: rfc822; nobody@dest.test" in text and "Action: failed" in text
        assert "Status: 5." in text and "Subject: while down" in text
        assert RCPT not in text.split("message/delivery-status")[1].split("rfc822-headers")[0]
        wait_for(lambda: not srv.queue(), what="an empty queue")
        time.sleep(3)
        assert len([m for m in srv.inbox(ALICE) if b"delivery-status" in m]) == 1, "bounced twice"
    finally:
        assert relay2.stop() == 0


def test_hold_release_remove(make_server):
    relay, secret = make_relay(make_server)
    assert relay.stop() == 0
    srv = make_server(toml_extra=sender_config(relay, retry="[3600]"))
    submit(srv, ["someone@dest.test"])
    qid = wait_for(lambda: srv.queue(), what="a queued message")[0][0]
    srv.cli("queue", "hold", str(qid))
    assert json.loads(srv.cli("queue", "show", str(qid), "--json").stdout)["status"] == "held"
    srv.cli("queue", "release", str(qid))
    assert json.loads(srv.cli("queue", "show", str(qid), "--json").stdout)["status"] == "queued"
    srv.cli("queue", "remove", str(qid))
    assert srv.queue() == []
    # nothing bounced for a removed message
    assert not [m for m in srv.inbox(ALICE) if b"delivery-status" in m]
