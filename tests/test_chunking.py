"""SMTP CHUNKING / BDAT (RFC 3030) on port 25 and submission: chunks are read by length, so an
end-of-data marker inside a chunk is data (no smuggling), the same size cap and content rules as
DATA apply, the chunk is consumed even when the transaction failed, and pipelined chunks work.
Raw protocol: none of the clients installed here (smtplib, swaks, Postfix's smtp client) sends
BDAT."""
from conftest import ALICE, ALICE_PW, BOB, Raw, plain_b64


def session(port, tls=False):
    r = Raw(port, tls=tls)
    assert r.reply()[0] == 220
    code, lines = r.cmd("EHLO sender.test")
    assert code == 250 and "CHUNKING" in lines, lines
    return r


def bdat(r, data: bytes, last=False):
    r.send(f"BDAT {len(data)}{' LAST' if last else ''}\r\n".encode() + data)
    return r.reply()


def test_bdat_delivers_byte_for_byte_and_markers_inside_are_data(make_server):
    srv = make_server()
    before = len(srv.inbox(BOB))
    r = session(srv.smtp)
    assert r.cmd("MAIL FROM:<someone@remote.test>")[0] == 250
    assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    part1 = b"Subject: chunked\r\nFrom: someone@remote.test\r\n\r\nfirst line\r\n"
    # what would end a DATA message and start another transaction is only data here
    part2 = b".\r\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<" + ALICE.encode() + b">\r\nDATA\r\nsmuggled\r\n.\r\n"
    code, lines = bdat(r, part1)
    assert code == 250 and lines[0].endswith(f"{len(part1)} octets received"), lines
    assert bdat(r, part2)[0] == 250
    assert bdat(r, b"", last=True)[0] == 250
    assert r.cmd("NOOP")[0] == 250
    r.close()
    box = srv.inbox(BOB)
    assert len(box) == before + 1
    assert box[-1].endswith(part1 + part2), box[-1][-300:]
    assert not any(b"smuggled" in m for m in srv.inbox(ALICE))


def test_bdat_pipelined_rules_and_refusals(make_server):
    srv = make_server(smtp_extra="max_message_size = 2000")
    # everything in one write (PIPELINING): MAIL, RCPT and two chunks
    r = session(srv.smtp)
    body = b"Subject: piped\r\n\r\nhello\r\n"
    r.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<" + BOB.encode() + b">\r\n"
           + f"BDAT 10\r\n".encode() + body[:10] + f"BDAT {len(body) - 10} LAST\r\n".encode() + body[10:]
           + b"NOOP\r\n")
    assert [r.reply()[0] for _ in range(5)] == [250, 250, 250, 250, 250]
    assert srv.inbox(BOB)[-1].endswith(body)
    # no MAIL: 503, and the chunk is consumed (the next command is read as a command)
    assert bdat(r, b"MAIL FROM:<x@remote.test>\r\n", last=True)[0] == 503
    assert r.cmd("NOOP")[0] == 250
    # bare LF: refused at LAST, nothing stored
    n = len(srv.inbox(BOB))
    assert r.cmd("MAIL FROM:<a@remote.test>")[0] == 250
    assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    code, _ = bdat(r, b"Subject: x\r\n\r\nbare\nlf\r\n", last=True)
    assert code == 550
    # over the size cap: the chunks are read and dropped, 552, the session goes on
    assert r.cmd("MAIL FROM:<a@remote.test>")[0] == 250
    assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    assert bdat(r, b"x" * 1500)[0] == 250
    assert bdat(r, b"y" * 1500)[0] == 552
    assert bdat(r, b"z" * 10 + b"\r\n", last=True)[0] == 552
    assert r.cmd("NOOP")[0] == 250
    # DATA in the middle of a BDAT transaction
    assert r.cmd("MAIL FROM:<a@remote.test>")[0] == 250
    assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    assert bdat(r, b"Subject: half\r\n")[0] == 250
    assert r.cmd("DATA")[0] == 503
    assert r.cmd("RSET")[0] == 250
    assert len(srv.inbox(BOB)) == n
    # a chunk far beyond the cap is answered and cut off without reading it all
    r.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<" + BOB.encode() + b">\r\nBDAT 999999999 LAST\r\n")
    assert [r.reply()[0] for _ in range(3)] == [250, 250, 552]
    assert r.closed()


def test_bdat_on_submission_after_auth(make_server):
    srv = make_server()
    r = session(srv.submissions, tls=True)
    assert r.cmd("AUTH PLAIN " + plain_b64(ALICE, ALICE_PW))[0] == 235
    assert r.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
    assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    msg = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: submitted in chunks\r\n\r\nhi\r\n".encode()
    assert bdat(r, msg[:20])[0] == 250
    assert bdat(r, msg[20:], last=True)[0] == 250
    assert srv.inbox(BOB)[-1].endswith(msg)
    # the From rule holds for chunked messages too
    assert r.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
    assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    forged = f"From: {BOB}\r\nSubject: forged\r\n\r\nx\r\n".encode()
    assert bdat(r, forged, last=True)[0] == 550
    r.close()


def test_binarymime_parts_arrive_as_base64_and_decode_to_the_octets_sent(make_server):
    """BINARYMIME (RFC 3030 3): BODY=BINARYMIME is BDAT only (DATA is 503); a binary part (NUL,
    bare CR and LF, any octet) is stored re-encoded in base64 with its Content-Transfer-Encoding
    saying so, the other parts untouched; IMAP's BINARY fetch gives the exact octets back. Binary
    octets in the header section are refused."""
    import email
    import imaplib

    from conftest import BOB_PW, tls_client_context

    srv = make_server()
    r = session(srv.smtp)
    code, lines = r.cmd("EHLO sender.test")
    assert "BINARYMIME" in lines, lines
    assert r.cmd("MAIL FROM:<someone@remote.test> BODY=BINARYMIME")[0] == 250
    assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    assert r.cmd("DATA")[0] == 503
    blob = bytes(range(256)) * 20 + b"\r\n.\r\nMAIL FROM:<x@y>\r\n\n\r\x00"
    msg = (b"From: someone@remote.test\r\nTo: " + BOB.encode() + b"\r\nSubject: binary\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
           b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
           b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
           + blob + b"\r\n--b1--\r\n")
    n = len(srv.inbox(BOB))
    assert bdat(r, msg[:100])[0] == 250
    assert bdat(r, msg[100:], last=True)[0] == 250
    stored = srv.inbox(BOB)[-1]
    assert len(srv.inbox(BOB)) == n + 1
    assert b"\x00" not in stored and b"Content-Transfer-Encoding: base64\r\n" in stored
    assert b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--b1" in stored
    parts = [p for p in email.message_from_bytes(stored).walk() if not p.is_multipart()]
    assert parts[1].get_payload(decode=True) == blob
    # the same octets through IMAP BINARY (RFC 3516)
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context())
    m.login(BOB, BOB_PW)
    m.select("INBOX", readonly=True)
    typ, data = m.fetch(str(n + 1), "(BINARY.PEEK[2])")
    assert typ == "OK" and data[0][1] == blob, data[0][0]
    m.logout()
    # binary octets in the header section: refused, nothing stored
    assert r.cmd("MAIL FROM:<someone@remote.test> BODY=BINARYMIME")[0] == 250
    assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    code, _ = bdat(r, b"Subject: a\x00b\r\n\r\nx\r\n", last=True)
    assert code == 554
    assert len(srv.inbox(BOB)) == n + 1
    # without BODY=BINARYMIME, the old rules: binary content is refused
    assert r.cmd("MAIL FROM:<someone@remote.test>")[0] == 250
    assert r.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    assert bdat(r, msg, last=True)[0] == 550
    r.close()
