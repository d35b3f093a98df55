"""POP3 on 110 (STLS) and 995 (implicit TLS) with real clients: poplib, curl, fetchmail."""
import poplib
import shutil
import smtplib
import subprocess

import pytest

from conftest import (ALICE, ALICE_PW, BOB, BOB_PW, CAROL, CAROL_PW, Raw, init_dir, plain_b64, send_until_reply, start,
                      tls_client_context)

MSG = (
    "From: Alice <alice@example.test>\r\n"
    "To: Bob <bob@example.test>\r\n"
    "Subject: pop {n}\r\n"
    "\r\n"
    "line one\r\n"
    ".starts with a dot\r\n"
    "line three\r\n"
)


def send(server, n, to=BOB):
    with smtplib.SMTP("127.0.0.1", server.submission, timeout=10) as s:
        s.starttls(context=tls_client_context())
        s.login(ALICE, ALICE_PW)
        s.sendmail(ALICE, [to], MSG.format(n=n))


def pop3s(server, user=BOB, pw=BOB_PW):
    p = poplib.POP3_SSL("127.0.0.1", server.pop3s, context=tls_client_context(), timeout=15)
    p.user(user)
    p.pass_(pw)
    return p


def test_no_credentials_before_stls(server):
    p = poplib.POP3("127.0.0.1", server.pop3, timeout=10)
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps and "SASL" not in caps
    with pytest.raises(poplib.error_proto, match="TLS"):
        p.user(BOB)
    with pytest.raises(poplib.error_proto, match="TLS"):
        p._shortcmd("AUTH PLAIN " + plain_b64(BOB, BOB_PW))
    with pytest.raises(poplib.error_proto, match="APOP"):
        p._shortcmd("APOP bob@example.test 0123456789abcdef0123456789abcdef")
    p.stls(context=tls_client_context())
    caps = p.capa()
    assert "USER" in caps and "PLAIN" in caps.get("SASL", []) and "STLS" not in caps
    p.user(BOB)
    assert p.pass_(BOB_PW).startswith(b"+OK")
    p.quit()


def test_uniform_failures_and_cap(server):
    replies = []
    for user, pw in ((BOB, "wrong-pass-9"), ("nobody@example.test", "wrong-pass-9"), (CAROL, CAROL_PW)):
        p = poplib.POP3_SSL("127.0.0.1", server.pop3s, context=tls_client_context(), timeout=10)
        p.user(user)
        with pytest.raises(poplib.error_proto) as e:
            p.pass_(pw)
        replies.append(str(e.value))
    assert replies[0] == replies[1] == replies[2], replies
    assert "wrong-pass-9" not in server.log()


def test_retr_byte_for_byte_top_uidl_dele_and_update(server):
    send(server, 1)
    send(server, 2)
    stored = server.inbox(BOB)
    p = pop3s(server)
    count, size = p.stat()
    assert count == len(stored) and size == sum(len(m) for m in stored)
    resp, lines, octets = p.retr(count)
    # poplib strips CRLF and un-stuffs dots: rebuild and compare with what was stored
    assert b"\r\n".join(lines) + b"\r\n" == stored[-1]
    resp, lines, _ = p.top(count, 1)
    assert lines[-1] == b"line one" and b"Subject: pop 2" in lines
    uidl1 = p.uidl()[1]
    assert len(uidl1) == count
    p.dele(count)
    with pytest.raises(poplib.error_proto):
        p.retr(count)
    assert p.stat()[0] == count - 1
    p.rset()
    assert p.stat()[0] == count
    p.dele(count)
    p.quit()
    assert len(server.inbox(BOB)) == count - 1
    # UIDL values are stable across sessions
    p = pop3s(server)
    assert p.uidl()[1] == uidl1[:-1]
    p.quit()


def test_maildrop_lock(server):
    p1 = pop3s(server)
    p2 = poplib.POP3_SSL("127.0.0.1", server.pop3s, context=tls_client_context(), timeout=10)
    p2.user(BOB)
    with pytest.raises(poplib.error_proto, match="IN-USE"):
        p2.pass_(BOB_PW)
    p1.quit()
    p3 = pop3s(server)
    p3.quit()


def test_auth_plain_sasl(server):
    p = poplib.POP3_SSL("127.0.0.1", server.pop3s, context=tls_client_context(), timeout=10)
    assert p._shortcmd("AUTH PLAIN " + plain_b64(BOB, BOB_PW)).startswith(b"+OK")
    p.quit()


def test_pop3_off_per_account_and_server_wide(make_server):
    srv = make_server()
    srv.cli("user", "pop3", BOB, "off")
    p = poplib.POP3_SSL("127.0.0.1", srv.pop3s, context=tls_client_context(), timeout=10)
    p.user(BOB)
    with pytest.raises(poplib.error_proto, match="use IMAP"):
        p.pass_(BOB_PW)
    assert "POP3:             off" in srv.cli("user", "show", BOB).stdout
    # IMAP still works for that account
    import imaplib
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    m.login(BOB, BOB_PW)
    m.logout()
    # other accounts keep POP3
    p = pop3s(srv, ALICE, ALICE_PW)
    p.quit()


def test_pop3_switched_off_server_wide(tmp_path):
    import socket
    d, off = init_dir(tmp_path)
    cfg = d / "postern.toml"
    cfg.write_text(cfg.read_text().replace("[pop3]\nenabled = true", "[pop3]\nenabled = false"))
    srv = start(d, off)
    try:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.pop3s), timeout=3)
        assert "POP3 is switched off" in srv.log()
    finally:
        assert srv.stop() == 0


def test_line_without_end_is_cut_off_and_told_why(server):
    """A line without end is cut off at the line cap and the -ERR reaches the client (the server
    drains what is still in flight before closing, so no reset destroys the reply)."""
    r = Raw(server.pop3)
    r.line()
    sent = send_until_reply(r, b"USER ", b"x" * 65536, b"-ERR Line too long")
    assert sent < 20_000_000
    assert r.closed()


def test_hostile_pop3_input(server):
    import socket
    s = socket.create_connection(("127.0.0.1", server.pop3), timeout=10)
    s.recv(1024)
    s.sendall(b"USER " + b"x" * 5000 + b"\r\n")
    data = s.recv(1024)
    assert data.startswith(b"-ERR")
    s.close()
    p = poplib.POP3_SSL("127.0.0.1", server.pop3s, context=tls_client_context(), timeout=10)
    with pytest.raises(poplib.error_proto):
        p._shortcmd("RETR 1")
    with pytest.raises(poplib.error_proto):
        p._shortcmd("\x00\x01")
    p.quit()


@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_curl_pop3s_and_stls(server):
    send(server, 7)
    out = subprocess.run(["curl", "-sS", "-k", "--user", f"{BOB}:{BOB_PW}", f"pop3s://127.0.0.1:{server.pop3s}/"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    n = out.stdout.strip().splitlines()[-1].split()[0]
    out = subprocess.run(["curl", "-sS", "-k", "--ssl-reqd", "--user", f"{BOB}:{BOB_PW}",
                          f"pop3://127.0.0.1:{server.pop3}/{n}"], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert b"Subject: pop 7" in out.stdout


@pytest.mark.skipif(not shutil.which("fetchmail"), reason="fetchmail not installed")
def test_fetchmail_over_tls(server, tmp_path):
    send(server, 8)
    mbox = tmp_path / "mbox"
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f'poll 127.0.0.1 service {server.pop3s} protocol pop3 auth password\n'
        f'  user "{BOB}" password "{BOB_PW}" ssl sslcertck sslcertfile {server.dir / "tls" / "cert.pem"}\n'
        f'  sslcommonname mail.example.test keep mda "cat >> {mbox}"\n'
    )
    rc.chmod(0o600)
    p = subprocess.run(["fetchmail", "-f", str(rc), "--nosyslog", "-v", "--all"], capture_output=True, text=True,
                       timeout=60, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Subject: pop 8" in mbox.read_text()
    # STLS on port 110
    mbox2 = tmp_path / "mbox2"
    rc.write_text(
        f'poll 127.0.0.1 service {server.pop3} protocol pop3 auth password\n'
        f'  user "{BOB}" password "{BOB_PW}" sslproto tls1.2+ sslcertck sslcertfile {server.dir / "tls" / "cert.pem"}\n'
        f'  sslcommonname mail.example.test keep mda "cat >> {mbox2}"\n'
    )
    p = subprocess.run(["fetchmail", "-f", str(rc), "--nosyslog", "-v", "--all"], capture_output=True, text=True,
                       timeout=60, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "STLS" in p.stdout + p.stderr
    assert "Subject: pop 8" in mbox2.read_text()
