"""Submission on 587 (STARTTLS) and 465 (implicit TLS) with real clients: smtplib and swaks."""
import shutil
import smtplib
import ssl
import subprocess

import pytest

from conftest import ALICE, ALICE_PW, BOB, CAROL, CAROL_PW, Raw, plain_b64, tls_client_context

MSG = (
    "From: Alice <alice@example.test>\r\n"
    "To: bob@example.test\r\n"
    "Subject: submission test\r\n"
    "Message-ID: <t1@example.test>\r\n"
    "\r\n"
    "Hello Bob,\r\n"
    ".a line that starts with a dot\r\n"
    "bye\r\n"
)


def test_starttls_auth_plain_and_delivery_byte_for_byte(server):
    before = len(server.inbox(BOB))
    with smtplib.SMTP("127.0.0.1", server.submission, timeout=10) as s:
        s.ehlo("client.test")
        assert not s.has_extn("auth"), "AUTH must not be offered before TLS"
        assert s.has_extn("starttls")
        s.starttls(context=tls_client_context())
        s.ehlo("client.test")
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes", "smtputf8"):
            assert s.has_extn(ext), ext
        assert not s.has_extn("starttls")
        s.login(ALICE, ALICE_PW)  # smtplib picks PLAIN? it prefers CRAM-MD5, PLAIN, LOGIN
        assert s.sendmail(ALICE, [BOB], MSG) == {}
    box = server.inbox(BOB)
    assert len(box) == before + 1
    stored = box[-1]
    assert stored.startswith(b"Return-Path: <alice@example.test>\r\nReceived: from client.test ([127.0.0.1])\r\n")
    assert stored.endswith(MSG.encode()), stored
    assert b"with ESMTPSA" in stored
    # Privacy by default: no TLS details or login name unless the account opts in.
    assert b"authenticated as" not in stored and b"cipher" not in stored


def test_auth_login_mechanism(server):
    with smtplib.SMTP("127.0.0.1", server.submission, timeout=10) as s:
        s.starttls(context=tls_client_context())
        s.ehlo()
        s.user, s.password = ALICE, ALICE_PW
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235
        assert s.sendmail(ALICE, [BOB], MSG) == {}


def test_implicit_tls_465(server):
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions, context=tls_client_context(), timeout=10) as s:
        s.ehlo()
        assert "PLAIN" in s.esmtp_features["auth"]
        assert not s.has_extn("starttls")
        s.login(ALICE, ALICE_PW)
        assert s.sendmail(ALICE, [BOB], MSG) == {}
        assert s.sock.version() in ("TLSv1.3", "TLSv1.2")


def test_tls12_is_accepted_and_tls11_is_not(server):
    ctx = tls_client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions, context=ctx, timeout=10) as s:
        assert s.sock.version() == "TLSv1.2"
    ctx = tls_client_context()
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        smtplib.SMTP_SSL("127.0.0.1", server.submissions, context=ctx, timeout=10)


def test_auth_before_tls_is_refused(server):
    r = Raw(server.submission)
    assert r.reply()[0] == 220
    code, lines = r.cmd("EHLO client.test")
    assert code == 250 and not any(l.startswith("AUTH") for l in lines)
    code, lines = r.cmd("AUTH PLAIN " + plain_b64(ALICE, ALICE_PW))
    assert code == 530 and lines[0].startswith("5.7.0")
    code, _ = r.cmd("AUTH LOGIN")
    assert code == 530
    r.close()


def test_mail_requires_auth_on_submission(server):
    r = Raw(server.submission)
    r.reply()
    r.cmd("EHLO client.test")
    r.starttls()
    r.cmd("EHLO client.test")
    code, lines = r.cmd(f"MAIL FROM:<{ALICE}>")
    assert code == 530 and lines[0].startswith("5.7.0")
    r.close()


def failure_reply(server, user, pw):
    r = Raw(server.submission)
    r.reply()
    r.cmd("EHLO c.test")
    r.starttls()
    r.cmd("EHLO c.test")
    reply = r.cmd("AUTH PLAIN " + plain_b64(user, pw))
    r.close()
    return reply


def test_failures_are_uniform(server):
    wrong = failure_reply(server, ALICE, "not the password at all")
    unknown = failure_reply(server, "nobody@example.test", "whatever password")
    disabled = failure_reply(server, CAROL, CAROL_PW)
    other_domain = failure_reply(server, "x@unknown.test", "pw")
    assert wrong == unknown == disabled == other_domain == (535, ["5.7.8 Authentication credentials invalid"])


def test_too_many_auth_failures_disconnect(server):
    r = Raw(server.submission)
    r.reply()
    r.cmd("EHLO c.test")
    r.starttls()
    r.cmd("EHLO c.test")
    assert r.cmd("AUTH PLAIN " + plain_b64(ALICE, "bad-1"))[0] == 535
    assert r.cmd("AUTH PLAIN " + plain_b64(ALICE, "bad-2"))[0] == 535
    r.send(("AUTH PLAIN " + plain_b64(ALICE, "bad-3") + "\r\n").encode())
    assert r.reply()[0] == 535
    assert r.reply()[0] == 421
    assert r.closed()


def test_sasl_cancel_and_garbage(server):
    r = Raw(server.submission)
    r.reply()
    r.cmd("EHLO c.test")
    r.starttls()
    r.cmd("EHLO c.test")
    assert r.cmd("AUTH PLAIN")[0] == 334
    assert r.cmd("*")[0] == 501
    assert r.cmd("AUTH PLAIN !!!notbase64")[0] == 501
    assert r.cmd("AUTH CRAM-MD5")[0] == 504
    assert r.cmd("AUTH PLAIN " + plain_b64(ALICE, ALICE_PW))[0] == 235
    assert r.cmd("AUTH PLAIN " + plain_b64(ALICE, ALICE_PW))[0] == 503
    r.close()


def test_sender_must_be_owned(server):
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions, context=tls_client_context(), timeout=10) as s:
        s.login(ALICE, ALICE_PW)
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail(BOB, [BOB], MSG)
        assert e.value.smtp_code == 553
        s.rset()
        with pytest.raises(smtplib.SMTPSenderRefused):
            s.sendmail("", [BOB], MSG)
        s.rset()
        # From header of someone else.
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail(ALICE, [BOB], MSG.replace("Alice <alice@example.test>", "Bob <bob@example.test>"))
        assert e.value.smtp_code == 550
        # Two From headers.
        with pytest.raises(smtplib.SMTPDataError):
            s.sendmail(ALICE, [BOB], "From: alice@example.test\r\n" + MSG)
        # Sender header of someone else.
        with pytest.raises(smtplib.SMTPDataError):
            s.sendmail(ALICE, [BOB], "Sender: bob@example.test\r\n" + MSG)
        # An alias the account owns is fine, in the envelope and in From.
        alias_msg = MSG.replace("Alice <alice@example.test>", "Postmaster <postmaster@example.test>")
        assert s.sendmail("postmaster@example.test", [BOB], alias_msg) == {}


def test_remote_recipient_is_queued(server):
    before = len(server.queue())
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions, context=tls_client_context(), timeout=10) as s:
        s.login(ALICE, ALICE_PW)
        assert s.sendmail(ALICE, ["friend@remote.test"], MSG) == {}
    q = server.queue()
    assert len(q) == before + 1 and q[-1][1] == ALICE
    out = server.cli("queue", "list").stdout
    assert "friend@remote.test" in out


def test_received_details_opt_in(server):
    server.cli("user", "received-details", ALICE, "on")
    try:
        with smtplib.SMTP_SSL("127.0.0.1", server.submissions, context=tls_client_context(), timeout=10) as s:
            s.login(ALICE, ALICE_PW)
            s.sendmail(ALICE, [BOB], MSG)
        stored = server.inbox(BOB)[-1]
        assert b"(authenticated as alice@example.test)" in stored
        assert b"with cipher" in stored
    finally:
        server.cli("user", "received-details", ALICE, "off")


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
def test_swaks_starttls_auth(server):
    before = len(server.inbox(BOB))
    p = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{server.submission}", "--tls",
         "--auth", "LOGIN", "--auth-user", ALICE, "--auth-password", ALICE_PW,
         "--from", ALICE, "--to", BOB, "--header", f"From: {ALICE}", "--body", "sent by swaks"],
        capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "235" in p.stdout
    box = server.inbox(BOB)
    assert len(box) == before + 1 and b"sent by swaks" in box[-1]


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
def test_swaks_implicit_tls_plain(server):
    p = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{server.submissions}", "--tlsc",
         "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", ALICE_PW,
         "--from", ALICE, "--to", BOB, "--header", f"From: {ALICE}"],
        capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_no_secret_in_logs(server):
    log = server.log()
    for secret in (ALICE_PW, CAROL_PW, plain_b64(ALICE, ALICE_PW)):
        assert secret not in log
    assert "postern::audit" in log and 'result="ok"' in log and 'result="failed"' in log
