"""Port 25 trusts no one: SPF, iprev, DKIM, ARC and DMARC on inbound mail, our own domains never
spoofed from outside, forged Authentication-Results removed, greylisting, DNS block lists, and DNS
failures answered with 451 (never 250, never 550).

Everything is real: a DNS server on loopback (dnslib) serves the records, messages are signed by
dkimpy (an independent DKIM/ARC implementation), and clients connect from chosen addresses in
127.0.0.0/8 so that SPF passes for one and fails for another."""
import base64
import smtplib
import subprocess
import time
import types

import pytest

from conftest import ALICE, BOB

dkim = pytest.importorskip("dkim")
from dnsfake import FakeDns  # noqa: E402

HOST = "mail.example.test"
# 127.0.0.1 is the good sender's address in every SPF record; 127.0.0.2 and up are strangers
GOOD, STRANGER = "127.0.0.1", "127.0.0.2"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("dkim")
    priv = d / "k.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(priv), "2048"], check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(priv), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return priv.read_bytes(), base64.b64encode(der).decode()


@pytest.fixture
def dns(keys):
    _, pub = keys
    with FakeDns() as d:
        z = d.zone
        z.add("example.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        z.add("spf-ok.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        z.add("soft.test", "TXT", "v=spf1 ip4:127.0.0.1 ~all")
        z.add("signer.test", "TXT", "v=spf1 -all")
        z.add("sel._domainkey.signer.test", "TXT", f"v=DKIM1; k=rsa; p={pub}")
        z.add("revoked._domainkey.signer.test", "TXT", "v=DKIM1; k=rsa; p=")
        z.add("_dmarc.signer.test", "TXT", "v=DMARC1; p=reject")
        z.add("strict.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        z.add("_dmarc.strict.test", "TXT", "v=DMARC1; p=reject; sp=reject")
        z.add("quiet.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        z.add("_dmarc.quiet.test", "TXT", "v=DMARC1; p=quarantine")
        z.add("sampled.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        z.add("_dmarc.sampled.test", "TXT", "v=DMARC1; p=reject; pct=0")
        z.add("forwarder.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        z.add("sel._domainkey.forwarder.test", "TXT", f"v=DKIM1; k=rsa; p={pub}")
        z.add("1.0.0.127.in-addr.arpa", "PTR", "relay.spf-ok.test")
        z.add("relay.spf-ok.test", "A", "127.0.0.1")
        z.broken.add("broken.test")
        yield d


def start(make_server, dns, extra=""):
    return make_server(toml_extra=f'[dns]\nserver = "127.0.0.1:{dns.port}"\ntimeout_ms = 700\nattempts = 1\n' + extra)


def send(srv, mail_from, msg, source=STRANGER, rcpt=ALICE, helo="client.test"):
    """One message on port 25 from `source`; returns (code, text) of the final reply."""
    s = smtplib.SMTP(timeout=20, source_address=(source, 0))
    try:
        s.connect("127.0.0.1", srv.smtp)
        s.ehlo(helo)
        code, text = s.mail(mail_from)
        if code != 250:
            return code, text.decode()
        code, text = s.rcpt(rcpt)
        if code not in (250, 251):
            return code, text.decode()
        code, text = s.data(msg)
        return code, text.decode()
    finally:
        try:
            s.quit()
        except Exception:
            s.close()


def message(frm, subject, extra=b"", body=b"hello\r\n"):
    if isinstance(frm, str):
        frm = frm.encode()
    return (b"From: " + frm + b"\r\nTo: " + ALICE.encode() + b"\r\nSubject: " + subject.encode()
            + b"\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <" + subject.replace(" ", ".").encode()
            + b"@test>\r\n" + extra + b"\r\n" + body)


def signed(keys, msg, domain="signer.test", selector="sel"):
    priv, _ = keys
    sig = dkim.sign(msg, selector.encode(), domain.encode(), priv,
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + msg


def header_block(stored):
    return stored.split(b"\r\n\r\n", 1)[0].decode()


def results_of(stored):
    """Our Authentication-Results field, unfolded."""
    h = header_block(stored).replace("\r\n\t", " ").replace("\r\n ", " ")
    ours = [l for l in h.split("\r\n") if l.lower().startswith("authentication-results:")]
    return ours


def latest(srv, box="INBOX"):
    got = srv.inbox(ALICE, box)
    return got[-1] if got else None


def test_spf_results_are_recorded(make_server, dns):
    srv = start(make_server, dns)
    cases = [("a@spf-ok.test", GOOD, "spf=pass"),
             ("a@spf-ok.test", STRANGER, "spf=fail"),
             ("a@soft.test", STRANGER, "spf=softfail"),
             ("a@nowhere.test", STRANGER, "spf=none")]
    for sender, source, want in cases:
        code, text = send(srv, sender, message(sender, f"spf {want}"), source=source)
        assert code == 250, (sender, source, text)
        ars = results_of(latest(srv))
        assert len(ars) == 1, ars
        ar = ars[0]
        assert ar.startswith(f"Authentication-Results: {HOST};"), ar
        assert want in ar and "smtp.mailfrom=" in ar, (want, ar)
        assert "iprev=" in ar and "dmarc=" in ar
    # forward-confirmed reverse DNS for 127.0.0.1 (PTR and A agree)
    send(srv, "a@spf-ok.test", message("a@spf-ok.test", "iprev"), source=GOOD)
    assert "iprev=pass" in results_of(latest(srv))[0]


def test_dns_failure_is_temporary_never_a_pass_or_a_refusal(make_server, dns):
    srv = start(make_server, dns)
    before = len(srv.inbox(ALICE))
    code, text = send(srv, "a@broken.test", message("a@broken.test", "broken"))
    assert code == 451 and "4.4.3" in text, (code, text)
    # the whole DNS gone: still 451
    dns.stop()
    code, text = send(srv, "a@spf-ok.test", message("a@spf-ok.test", "no dns"), source=GOOD)
    assert code == 451 and "4.4.3" in text, (code, text)
    assert len(srv.inbox(ALICE)) == before


def test_dkim_pass_altered_expired_revoked(make_server, dns, keys, monkeypatch):
    srv = start(make_server, dns)
    # signed by signer.test, sent from a stranger: SPF fails, aligned DKIM passes: DMARC passes
    msg = signed(keys, message("news@signer.test", "dkim good"))
    code, text = send(srv, "news@signer.test", msg)
    assert code == 250, text
    ar = results_of(latest(srv))[0]
    assert "dkim=pass header.i=@signer.test" in ar and "dmarc=pass header.from=signer.test" in ar, ar
    # the body altered after signing: DKIM fails; signer.test says p=reject: refused
    bad = signed(keys, message("news@signer.test", "dkim altered")).replace(b"hello", b"HELLO")
    before = len(srv.inbox(ALICE))
    code, text = send(srv, "news@signer.test", bad)
    assert code == 550 and "5.7.1" in text and "DMARC" in text, (code, text)
    # a revoked key (empty p=) and an expired signature: not a pass either
    code, text = send(srv, "news@signer.test", signed(keys, message("news@signer.test", "revoked"), selector="revoked"))
    assert code == 550, text
    past = time.time() - 7200

    def sign_with_expiry(m, expiry):
        """dkimpy has no expiry parameter: x= is added to the tags it signs (t= two hours ago)."""
        monkeypatch.setattr(dkim, "time", types.SimpleNamespace(time=lambda: past))
        gen = dkim.DKIM.gen_header

        def with_expiry(self, fields, *a, **kw):
            return gen(self, fields[:-1] + [(b"x", b"%d" % int(expiry))] + fields[-1:], *a, **kw)

        monkeypatch.setattr(dkim.DKIM, "gen_header", with_expiry)
        priv, _ = keys
        try:
            return dkim.sign(m, b"sel", b"signer.test", priv, include_headers=[b"from", b"to", b"subject"])
        finally:
            monkeypatch.undo()

    # the same construction with x= still ahead passes (so what fails below is the expiry)
    m = message("news@signer.test", "not yet expired")
    code, text = send(srv, "news@signer.test", sign_with_expiry(m, time.time() + 3600) + m)
    assert code == 250, text
    before = len(srv.inbox(ALICE))
    m = message("news@signer.test", "expired")
    sig = sign_with_expiry(m, past + 3600)
    assert b"x=" in sig
    code, text = send(srv, "news@signer.test", sig + m)
    assert code == 550, text
    assert len(srv.inbox(ALICE)) == before, "a refused message was stored"
    # the same expired signature from a domain without DMARC: stored, and marked as not passing
    dns.zone.remove("_dmarc.signer.test")
    time.sleep(1.5)  # the record's 1 s TTL
    code, text = send(srv, "news@signer.test", sig + m)
    assert code == 250, text
    ar = results_of(latest(srv))[0]
    assert "dkim=pass" not in ar and "dkim=" in ar, ar


def test_dmarc_reject_quarantine_and_pct(make_server, dns):
    srv = start(make_server, dns)
    before = len(srv.inbox(ALICE))
    # p=reject, SPF fails, no DKIM: refused, nothing stored
    code, text = send(srv, "ceo@strict.test", message("ceo@strict.test", "reject me"))
    assert code == 550 and "5.7.1" in text and "strict.test" in text, (code, text)
    # envelope from elsewhere, From: strict.test: not aligned: refused too
    code, text = send(srv, "x@spf-ok.test", message("ceo@strict.test", "reject me too"), source=GOOD)
    assert code == 550, text
    # the subdomain policy applies to a subdomain that has no record of its own
    code, text = send(srv, "x@spf-ok.test", message("ceo@sub.strict.test", "sub"), source=GOOD)
    assert code == 550, text
    assert len(srv.inbox(ALICE)) == before
    # the same domain from its own address: SPF passes and aligns: delivered
    code, text = send(srv, "ceo@strict.test", message("ceo@strict.test", "fine"), source=GOOD)
    assert code == 250, text
    assert "dmarc=pass" in results_of(latest(srv))[0]
    # p=quarantine: delivered to Junk, not INBOX
    junk_before = len(srv.inbox(ALICE, "Junk"))
    code, text = send(srv, "a@quiet.test", message("a@quiet.test", "to junk"))
    assert code == 250, text
    junk = srv.inbox(ALICE, "Junk")
    assert len(junk) == junk_before + 1 and b"Subject: to junk" in junk[-1]
    assert "dmarc=fail" in results_of(junk[-1])[0]
    assert not any(b"Subject: to junk" in m for m in srv.inbox(ALICE))
    # p=reject with pct=0: never sampled, so the next policy down (quarantine) applies
    code, text = send(srv, "a@sampled.test", message("a@sampled.test", "sampled"))
    assert code == 250, text
    assert b"Subject: sampled" in srv.inbox(ALICE, "Junk")[-1]


def test_own_domain_is_never_spoofed_from_outside(make_server, dns):
    srv = start(make_server, dns)
    # example.test publishes no DMARC record: the rule is ours, not the record's
    before = len(srv.inbox(BOB))
    code, text = send(srv, ALICE, message(ALICE, "spoof"), rcpt=BOB)
    assert code == 550 and "5.7.1" in text, (code, text)
    # a spoofed From with an innocent envelope sender
    code, text = send(srv, "x@nowhere.test", message("CEO <ceo@example.test>", "spoof 2"), rcpt=BOB)
    assert code == 550 and "example.test" in text, (code, text)
    # and the case of the domain does not matter
    code, text = send(srv, "x@nowhere.test", message("ceo@EXAMPLE.Test", "spoof 3"), rcpt=BOB)
    assert code == 550, text
    assert len(srv.inbox(BOB)) == before
    # from the address the domain's SPF allows, it is mail of ours and is delivered
    code, text = send(srv, ALICE, message(ALICE, "legit"), source=GOOD, rcpt=BOB)
    assert code == 250, text


def test_forged_authentication_results_are_removed(make_server, dns):
    srv = start(make_server, dns)
    forged = (b"Authentication-Results: mail.example.test; dkim=pass header.d=bank.test; dmarc=pass\r\n"
              b"Authentication-Results: (tricky) MAIL.example.test.;\r\n\tspf=pass smtp.mailfrom=bank.test\r\n"
              b"Authentication-Results: elsewhere.test; spf=pass\r\n")
    code, text = send(srv, "a@nowhere.test", message("a@nowhere.test", "forged", extra=forged))
    assert code == 250, text
    stored = latest(srv)
    head = header_block(stored)
    ours = [l for l in results_of(stored) if HOST.lower() in l.lower()]
    assert len(ours) == 1, ours
    assert "bank.test" not in head, head
    assert "Authentication-Results: elsewhere.test; spf=pass" in head
    # ours comes before the message's own header fields
    assert head.index(f"Authentication-Results: {HOST}") < head.index("From: ")


def test_arc_chain_is_verified(make_server, dns, keys):
    srv = start(make_server, dns)
    priv, _ = keys
    # the forwarder verified the message and recorded it (ARC seals its own A-R as the AAR)
    msg = message("a@nowhere.test", "arc",
                  extra=b"Authentication-Results: forwarder.test; spf=pass smtp.mailfrom=a@nowhere.test\r\n")
    sealed = b"".join(dkim.arc_sign(msg, b"sel", b"forwarder.test", priv, b"forwarder.test",
                                    include_headers=[b"from", b"to", b"subject"])) + msg
    code, text = send(srv, "a@forwarder.test", sealed, source=GOOD)
    assert code == 250, text
    ar = results_of(latest(srv))[0]
    assert "arc=pass" in ar, ar


def test_greylisting(make_server, dns):
    srv = start(make_server, dns, "[greylist]\nenabled = true\ndelay_secs = 2\n")
    msg = message("a@nowhere.test", "grey")
    code, text = send(srv, "a@nowhere.test", msg)
    assert code == 451 and "4.7.1" in text, (code, text)
    code, text = send(srv, "a@nowhere.test", msg)
    assert code == 451, "an early retry passed"
    time.sleep(2.2)
    code, text = send(srv, "a@nowhere.test", msg)
    assert code == 250, text
    # the triplet is remembered: the next message passes at once
    code, text = send(srv, "a@nowhere.test", message("a@nowhere.test", "grey 2"))
    assert code == 250, text
    # another recipient is another triplet
    code, text = send(srv, "a@nowhere.test", msg, rcpt=BOB)
    assert code == 451, text
    # a sender domain that authenticated before passes at once when SPF passes for it again
    code, _ = send(srv, "a@spf-ok.test", message("a@spf-ok.test", "first"), source=GOOD)
    assert code == 451
    time.sleep(2.2)
    assert send(srv, "a@spf-ok.test", message("a@spf-ok.test", "first"), source=GOOD)[0] == 250
    assert send(srv, "b@spf-ok.test", message("b@spf-ok.test", "second"), source=GOOD, rcpt=BOB)[0] == 250


def test_dnsbl_and_trusted_networks(make_server, dns):
    dns.zone.add("2.0.0.127.bl.test", "A", "127.0.0.2")
    srv = start(make_server, dns, '[inbound]\ndnsbl = ["bl.test"]\ntrusted_networks = ["127.0.0.9"]\n')
    with pytest.raises(smtplib.SMTPConnectError) as e:
        smtplib.SMTP("127.0.0.1", srv.smtp, timeout=10, source_address=(STRANGER, 0))
    assert e.value.smtp_code == 554 and b"bl.test" in e.value.smtp_error
    # an address the list does not name is served
    code, text = send(srv, "a@nowhere.test", message("a@nowhere.test", "not listed"), source="127.0.0.3")
    assert code == 250, text
    # a block list that cannot answer never blocks mail
    dns.zone.broken.add("bl.test")
    time.sleep(1.5)  # the listing's 1 s TTL
    code, text = send(srv, "a@nowhere.test", message("a@nowhere.test", "bl down"), source=STRANGER)
    assert code == 250, text
    # a trusted network skips the checks (a forwarder): no verdict, no header of ours
    code, text = send(srv, ALICE, message(ALICE, "forwarded"), source="127.0.0.9", rcpt=BOB)
    assert code == 250, text
    assert results_of(srv.inbox(BOB)[-1]) == []


def test_swaks_sees_the_refusal(make_server, dns, tmp_path):
    srv = start(make_server, dns)
    p = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(srv.smtp), "--local-interface", STRANGER,
                        "--from", "boss@strict.test", "--to", ALICE, "--h-From", "boss@strict.test",
                        "--helo", "client.test", "--timeout", "20"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "550 5.7.1" in p.stdout, p.stdout[-2000:]


def test_dmarc_aggregate_report(make_server, dns):
    import email
    import gzip
    import json
    import xml.etree.ElementTree as ET
    z = dns.zone
    z.add("reporter.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    z.add("_dmarc.reporter.test", "TXT", "v=DMARC1; p=none; rua=mailto:dmarc@example.test")
    # example.test agrees to receive reporter.test's reports (RFC 7489 7.1)
    z.add("reporter.test._report._dmarc.example.test", "TXT", "v=DMARC1")
    # nosy.test asks for its reports to go to an address that never agreed: none is sent
    z.add("nosy.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    z.add("_dmarc.nosy.test", "TXT", "v=DMARC1; p=none; rua=mailto:reports@elsewhere.test")
    srv = start(make_server, dns)
    srv.cli("alias", "add", "dmarc@example.test", BOB)
    for i in range(2):
        assert send(srv, "a@reporter.test", message("a@reporter.test", f"pass {i}"), source=GOOD)[0] == 250
    assert send(srv, "a@reporter.test", message("a@reporter.test", "fail"), source=STRANGER)[0] == 250
    assert send(srv, "a@nosy.test", message("a@nosy.test", "nosy"), source=GOOD)[0] == 250
    pending = json.loads(srv.cli("reports", "pending", "--json").stdout)
    assert {p["domain"]: p["messages"] for p in pending} == {"reporter.test": 3, "nosy.test": 1}, pending
    sent = json.loads(srv.cli("reports", "send", "--include-today", "--json").stdout)
    assert sent["dmarc"] == {"reports": 1, "recipients": 1, "dropped": 1}, sent
    assert json.loads(srv.cli("reports", "pending", "--json").stdout) == []
    reports = [m for m in srv.inbox(BOB) if b"Report Domain: reporter.test" in m]
    assert len(reports) == 1
    msg = email.message_from_bytes(reports[0])
    gz = [p for p in msg.walk() if p.get_content_type() == "application/gzip"]
    assert len(gz) == 1 and gz[0].get_filename().endswith(".xml.gz")
    root = ET.fromstring(gzip.decompress(gz[0].get_payload(decode=True)))
    ns = {"d": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {"d": ""}
    q = (lambda p: p.replace("/", "/d:").replace("d:d:", "d:")) if ns["d"] else (lambda p: p)
    assert root.find(q("d:policy_published/d:domain"), ns).text == "reporter.test"
    rows = {}
    for rec in root.findall(q("d:record"), ns):
        ip = rec.find(q("d:row/d:source_ip"), ns).text
        rows[ip] = (int(rec.find(q("d:row/d:count"), ns).text),
                    rec.find(q("d:row/d:policy_evaluated/d:spf"), ns).text)
    assert rows == {GOOD: (2, "pass"), STRANGER: (1, "fail")}, rows
    with srv.db() as c:
        actors = [r[0] for r in c.execute("SELECT actor FROM audit_log WHERE event = 'dmarc_reports_sent'")]
    assert len(actors) == 1 and actors[0].startswith("cli:"), actors
