"""Configurable limits: line length, recipients, size, error and idle-command caps, timeouts,
connection caps, clients that talk before the greeting, slow clients."""
import socket
import time

from conftest import ALICE, BOB, Raw, send_until_reply


def session(srv):
    r = Raw(srv.smtp)
    assert r.reply()[0] == 220
    assert r.cmd("EHLO sender.test")[0] == 250
    return r


def test_line_too_long(server):
    r = session(server)
    code, lines = r.cmd("NOOP " + "x" * 1200)
    assert code == 500 and lines[0].startswith("5.5.2")
    # A 1000-octet line (incl. CRLF) is fine.
    assert r.cmd("NOOP " + "x" * (1000 - 7))[0] == 250
    # An endless line is discarded without buffering and the session continues.
    r.send(b"NOOP " + b"y" * 200_000 + b"\r\n")
    assert r.reply()[0] == 500
    assert r.cmd("NOOP")[0] == 250
    # A line that does not end is not read until the deadline: cut off after 1 MiB, with a 421
    # the client sees while it is still sending.
    sent = send_until_reply(r, b"NOOP ", b"z" * 100_000, b"421 ")
    assert sent < 20_000_000, "20 MB of one line were read"
    assert b"500 5.5.2" in r.buf and b"Line without end" in r.buf


def test_recipient_limit(make_server):
    srv = make_server("max_recipients = 3")
    r = session(srv)
    r.cmd("MAIL FROM:<a@remote.test>")
    for rc in (ALICE, BOB, "postmaster@example.test"):
        assert r.cmd(f"RCPT TO:<{rc}>")[0] == 250
    code, lines = r.cmd("RCPT TO:<carol@example.test>")
    assert code == 452 and lines[0].startswith("4.5.3")
    r.close()


def test_size_limit(make_server):
    srv = make_server("max_message_size = 2048")
    r = session(srv)
    code, lines = r.cmd("EHLO sender.test")
    assert "SIZE 2048" in lines
    code, lines = r.cmd("MAIL FROM:<a@remote.test> SIZE=4096")
    assert code == 552 and lines[0].startswith("5.3.4")
    assert r.cmd("MAIL FROM:<a@remote.test>")[0] == 250
    assert r.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
    assert r.cmd("DATA")[0] == 354
    r.send(b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 50 + b".\r\n")
    code, lines = r.reply()
    assert code == 552
    assert r.cmd("NOOP")[0] == 250
    r.close()
    assert srv.inbox(ALICE) == []


def test_endless_data_is_cut_off(make_server):
    """Past the cap DATA is dropped until the dot (so the sender gets a 552 it can bounce), but
    not forever: past twice the cap (at least cap + 1 MiB) the session is answered and closed."""
    srv = make_server("max_message_size = 100000")
    r = session(srv)
    assert r.cmd("MAIL FROM:<a@remote.test>")[0] == 250
    assert r.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
    assert r.cmd("DATA")[0] == 354
    sent = send_until_reply(r, b"", (b"w" * 998 + b"\r\n") * 100, b"421 ", limit=50_000_000)
    assert sent < 50_000_000
    assert b"552 5.3.4" in r.buf and b"too big" in r.buf
    assert srv.inbox(ALICE) == []


def test_too_many_errors_disconnect(make_server):
    srv = make_server("max_errors = 3")
    r = session(srv)
    assert r.cmd("BOGUS")[0] == 500
    assert r.cmd("BOGUS")[0] == 500
    r.send(b"BOGUS\r\n")
    assert r.reply()[0] == 500
    assert r.reply()[0] == 421
    assert r.closed()


def test_too_many_commands_without_mail(make_server):
    srv = make_server("max_commands_before_mail = 5")
    r = session(srv)  # EHLO is the first
    for _ in range(4):
        assert r.cmd("NOOP")[0] == 250
    code, _ = r.cmd("NOOP")
    assert code == 421
    assert r.closed()


def test_idle_timeout(make_server):
    srv = make_server("idle_timeout_secs = 1")
    r = session(srv)
    time.sleep(1.5)
    code, lines = r.reply()
    assert code == 421 and lines[0].startswith("4.4.2")
    assert r.closed()


def test_slow_client_is_cut_off_by_the_command_deadline(make_server):
    srv = make_server("idle_timeout_secs = 2")
    r = Raw(srv.smtp)
    r.reply()
    start = time.time()
    closed = False
    for ch in b"EHLO slowloris.test":
        try:
            r.send(bytes([ch]))
        except OSError:
            closed = True
            break
        time.sleep(0.25)
        if time.time() - start > 6:
            break
    if not closed:
        code, _ = r.reply()
        assert code == 421
        assert r.closed()
    assert time.time() - start < 6


def test_talking_before_the_greeting(make_server):
    srv = make_server("greeting_delay_ms = 400")
    s = socket.create_connection(("127.0.0.1", srv.smtp))
    s.sendall(b"EHLO impatient.test\r\n")
    data = b""
    s.settimeout(5)
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"554 5.5.1"), data
    s.close()
    # A patient client is served.
    r = Raw(srv.smtp)
    assert r.reply()[0] == 220
    r.close()


def test_per_ip_connection_cap(make_server):
    srv = make_server("max_connections_per_ip = 3")
    time.sleep(0.5)  # let the start-up port probes' sessions end
    held = [Raw(srv.smtp) for _ in range(3)]
    for h in held:
        assert h.reply()[0] == 220
    extra = Raw(srv.smtp)
    code, lines = extra.reply()
    assert code == 421 and lines[0].startswith("4.7.0")
    assert extra.closed()
    held[0].cmd("QUIT")
    held[0].close()
    time.sleep(0.2)
    again = Raw(srv.smtp)
    assert again.reply()[0] == 220
    for h in held[1:] + [again]:
        h.close()


def test_many_recipients_do_not_grow_memory(server):
    """A flood of RCPT commands past the cap is answered 452 each and then cut by the error cap,
    and the server's memory does not grow with it."""

    def rss_kib():
        status = open(f"/proc/{server.proc.pid}/status").read()
        return int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1])

    def flood(n):
        r = session(server)
        r.cmd("MAIL FROM:<a@remote.test>")
        r.send(b"".join(b"RCPT TO:<alice@example.test>\r\n" for _ in range(n)))
        codes = []
        try:
            while True:
                codes.append(r.reply()[0])
        except (EOFError, OSError):
            pass
        r.close()
        return codes

    codes = flood(300)
    # Repeats count toward the cap (max_recipients = 100 distinct, 200 RCPT commands in all):
    # at most 200 answers 250, then 452s until the error cap closes the session.
    assert 250 in codes and 452 in codes, codes[:5]
    assert codes.count(250) <= 200, codes.count(250)
    assert codes[-1] in (452, 421), codes[-3:]
    flood(300)  # warm up allocator pools
    before = rss_kib()
    for _ in range(20):
        flood(2000)
    grown = rss_kib() - before
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB over 40,000 RCPTs"