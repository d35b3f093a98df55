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


def dkim_verify(message: bytes, records):
    import dkim  # dkimpy, an independent implementation

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        for r in records:
            if r["type"] == "TXT" and r["name"].rstrip(".") == name.rstrip("."):
                # zone-file form: "chunk" "chunk" -> one string
                return "".join(part for part in r["value"].split('"')[1::2]).encode()
        return None

    return dkim.verify(message, dnsfunc=dnsfunc)


def test_dkim_signed_verified_and_rotated(make_server):
    relay, secret = make_relay(make_server)
    srv = make_server(toml_extra=sender_config(relay))
    srv.cli("secret", "set", "relay", "--stdin", stdin=secret + "\n")
    out = srv.cli("dkim", "generate", "example.test", "--selector", "one").stdout
    assert "one._domainkey.example.test. TXT" in out and "k=ed25519" in out
    submit(srv, [RCPT], subject="signed with ed25519")
    got = wait_for(lambda: relay.inbox(RCPT), what="the signed message")[0]
    assert b"DKIM-Signature:" in got and b"s=one" in got and b"a=ed25519-sha256" in got
    records = json.loads(srv.cli("dns", "example.test", "--json").stdout)
    assert dkim_verify(got, records)
    # a tampered body does not verify (the check can fail)
    assert not dkim_verify(got.replace(b"Numbers attached.", b"Numbers changed!!"), records)
    # rotation to an RSA key under a new selector: both published during the overlap
    srv.cli("dkim", "generate", "example.test", "--algorithm", "rsa", "--selector", "two")
    records = json.loads(srv.cli("dns", "example.test", "--json").stdout)
    names = {r["name"] for r in records if r["type"] == "TXT"}
    assert {"one._domainkey.example.test.", "two._domainkey.example.test."} <= names
    submit(srv, [RCPT], subject="signed with rsa")
    got = wait_for(lambda: [m for m in relay.inbox(RCPT) if b"signed with rsa" in m], what="the second message")[0]
    assert b"s=two" in got and b"a=rsa-sha256" in got
    assert dkim_verify(got, records)
    # the old selector can be retired, the signing one cannot
    assert srv.cli("dkim", "retire", "example.test", "two", check=False).returncode != 0
    srv.cli("dkim", "retire", "example.test", "one")
    names = {r["name"] for r in json.loads(srv.cli("dns", "example.test", "--json").stdout)}
    assert "one._domainkey.example.test." not in names
    # the private keys are sealed: no PKCS#8 key material in clear anywhere but the TLS key file
    ed25519_oid, rsa_oid = bytes.fromhex("06032b6570"), bytes.fromhex("2a864886f70d010101")
    for needle in (ed25519_oid, rsa_oid, b"PRIVATE KEY"):
        assert [p for p in grep_tree(srv.dir, needle) if "/tls/" not in p] == []


def test_dns_records(make_server):
    srv = make_server()
    recs = json.loads(srv.cli("dns", "example.test", "--json").stdout)
    by = {(r["name"], r["type"]): r["value"] for r in recs}
    assert by[("example.test.", "MX")] == "10 mail.example.test."
    assert by[("example.test.", "TXT")] == '"v=spf1 mx -all"'
    assert "v=DMARC1; p=quarantine" in by[("_dmarc.example.test.", "TXT")]
    assert "rua=mailto:" in by[("_dmarc.example.test.", "TXT")]
    assert by[("_submissions._tcp.example.test.", "SRV")] == "0 1 465 mail.example.test."
    assert by[("_imaps._tcp.example.test.", "SRV")] == "0 1 993 mail.example.test."
    assert srv.cli("dns", "elsewhere.test", check=False).returncode != 0


def test_give_up_bounces_with_4_4_7(make_server):
    relay, secret = make_relay(make_server)
    assert relay.stop() == 0  # nothing listens there any more
    cfg = sender_config(relay).replace("give_up_after_secs = 3600", "give_up_after_secs = 3")
    srv = make_server(toml_extra=cfg)
    srv.cli("secret", "set", "relay", "--stdin", stdin=secret + "\n")
    submit(srv, [RCPT], subject="never arrives")
    dsn = wait_for(lambda: [m for m in srv.inbox(ALICE) if b"delivery-status" in m], timeout=40, what="an expiry DSN")
    text = dsn[0].decode()
    assert "Status: 4.4.7" in text and "Action: failed" in text and "gave up after" in text
    wait_for(lambda: not srv.queue(), what="an empty queue")
