"""Inbound MX on port 25: local delivery, no AUTH, no open relay under any input, SMTP smuggling."""
import shutil
import smtplib
import subprocess

import pytest

from conftest import ALICE, ALICE_PW, BOB, Raw, plain_b64


def session(server):
    r = Raw(server.smtp)
    assert r.reply()[0] == 220
    assert r.cmd("EHLO sender.test")[0] == 250
    return r


def test_local_delivery_unauthenticated(server):
    before = len(server.inbox(ALICE))
    with smtplib.SMTP("127.0.0.1", server.smtp, timeout=10) as s:
        assert s.sendmail("someone@remote.test", [ALICE], "Subject: hi\r\n\r\ninbound\r\n") == {}
        # An alias delivers to its account.
        assert s.sendmail("someone@remote.test", ["PostMaster@Example.TEST"], "Subject: pm\r\n\r\nto postmaster\r\n") == {}
        # Bounces (null sender) are accepted for local users.
        assert s.sendmail("", [ALICE], "Subject: bounce\r\n\r\nx\r\n") == {}
    box = server.inbox(ALICE)
    assert len(box) == before + 3
    assert box[-3].startswith(b"Return-Path: <someone@remote.test>\r\nReceived: from ")
    assert b"with ESMTP id" in box[-3]
    assert box[-1].startswith(b"Return-Path: <>\r\n")


def test_port_25_offers_no_auth_even_after_tls(server):
    r = session(server)
    code, lines = r.cmd("EHLO sender.test")
    assert not any(l.startswith("AUTH") for l in lines)
    assert r.cmd("AUTH PLAIN " + plain_b64(ALICE, ALICE_PW))[0] == 530
    r.starttls()
    code, lines = r.cmd("EHLO sender.test")
    assert code == 250 and not any(l.startswith("AUTH") for l in lines)
    assert r.cmd("AUTH PLAIN " + plain_b64(ALICE, ALICE_PW))[0] == 503
    r.close()


def test_unknown_local_user(server):
    r = session(server)
    assert r.cmd("MAIL FROM:<x@remote.test>")[0] == 250
    code, lines = r.cmd("RCPT TO:<nobody@example.test>")
    assert code == 550 and lines[0].startswith("5.1.1")
    r.close()


RELAY_ATTEMPTS = [
    "victim@remote.test",
    "victim@remote.test.",
    "victim%remote.test@example.test",  # '%' hack: local part that does not exist
    "victim%remote.test@[127.0.0.1]",
    '"victim@remote.test"@example.test',
    '"victim%remote.test"',
    "@example.test:victim@remote.test",  # source route
    "@example.test,@mail.example.test:victim@remote.test",
    "victim@[127.0.0.1]",
    "victim@[IPv6:::1]",
    "victim@127.0.0.1",
    "remote.test!victim@example.test",  # UUCP bang path
    "victim@remote.test@example.test",
    "victim@example.test@remote.test",
    "victim",
    "victim@example.test.remote.test",
    "alice@example.test.",
    "<alice@example.test>",
]


@pytest.mark.parametrize("rcpt", RELAY_ATTEMPTS)
def test_no_open_relay(server, rcpt):
    before = len(server.queue())
    r = session(server)
    assert r.cmd("MAIL FROM:<spammer@remote.test>")[0] == 250
    code, _ = r.cmd(f"RCPT TO:<{rcpt}>")
    assert code >= 500, f"{rcpt} was accepted with {code}"
    assert r.cmd("DATA")[0] >= 500
    r.close()
    assert len(server.queue()) == before


def test_vrfy_and_expn_disabled(server):
    r = session(server)
    assert r.cmd(f"VRFY {ALICE}")[0] == 502
    assert r.cmd("EXPN staff")[0] == 502
    r.close()


@pytest.mark.skipif(shutil.which("nmap") is None, reason="nmap not installed")
def test_nmap_smtp_open_relay(make_server):
    # nmap tries ~20 relay tricks in one session; a roomier error cap lets it finish its verdict.
    server = make_server("max_errors = 100")
    p = subprocess.run(
        ["nmap", "-n", "-Pn", "-sV", "-p", str(server.smtp), "--script", "smtp-open-relay",
         "--script-args", "smtp-open-relay.domain=example.test,smtp-open-relay.ip=127.0.0.1", "127.0.0.1"],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "smtp-open-relay" in p.stdout, p.stdout
    assert "Server is an open relay" not in p.stdout, p.stdout
    assert "doesn't seem to be an open relay" in p.stdout or "Server doesn't seem to be an open relay" in p.stdout, p.stdout


# --- SMTP smuggling (2023): a fake end-of-data must never split one message into two. ---

SMUGGLE_ENDS = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n\x00.\r\n", b"\r\n.\n", b"\n.\r", b"\r.\n"]


@pytest.mark.parametrize("fake_end", SMUGGLE_ENDS, ids=[repr(e) for e in SMUGGLE_ENDS])
def test_smuggling_is_refused_as_one_message(server, fake_end):
    before_alice = len(server.inbox(ALICE))
    before_bob = len(server.inbox(BOB))
    r = session(server)
    payload = (
        b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<" + ALICE.encode() + b">\r\nDATA\r\n"
        b"From: sender@remote.test\r\nSubject: first\r\n\r\nhello" + fake_end +
        b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<" + BOB.encode() + b">\r\nDATA\r\n"
        b"From: admin@example.test\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
    )
    r.send(payload)
    assert r.reply()[0] == 250  # MAIL
    assert r.reply()[0] == 250  # RCPT
    assert r.reply()[0] == 354  # DATA
    code, lines = r.reply()     # the one and only end of data
    assert code == 550 and lines[0].startswith("5.6.0"), (code, lines)
    # Nothing more: the "smuggled" commands were message text, not commands.
    assert r.cmd("NOOP")[0] == 250
    r.close()
    assert len(server.inbox(ALICE)) == before_alice
    assert len(server.inbox(BOB)) == before_bob


def test_pipelined_messages_are_two_messages(server):
    """The legitimate case: two complete transactions pipelined in one write."""
    before = len(server.inbox(BOB))
    r = session(server)
    one = b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<" + BOB.encode() + b">\r\nDATA\r\nSubject: 1\r\n\r\none\r\n.\r\n"
    two = b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<" + BOB.encode() + b">\r\nDATA\r\nSubject: 2\r\n\r\ntwo\r\n.\r\nQUIT\r\n"
    r.send(one + two)
    codes = [r.reply()[0] for _ in range(9)]
    assert codes == [250, 250, 354, 250, 250, 250, 354, 250, 221], codes
    box = server.inbox(BOB)
    assert len(box) == before + 2
    assert box[-2].endswith(b"Subject: 1\r\n\r\none\r\n") and box[-1].endswith(b"Subject: 2\r\n\r\ntwo\r\n")


def test_starttls_command_injection_is_discarded(server):
    """Commands pipelined in clear text behind STARTTLS must not run inside TLS (CVE-2011-0411)."""
    import ssl
    from conftest import tls_client_context
    r = session(server)
    r.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<injected@remote.test>\r\n")
    assert r.reply()[0] == 220
    r.sock = tls_client_context().wrap_socket(r.sock)
    r.buf = b""
    assert r.cmd("EHLO sender.test")[0] == 250
    # If the injected MAIL had run, this would be a nested MAIL (503).
    assert r.cmd("MAIL FROM:<real@remote.test>")[0] == 250
    r.close()
