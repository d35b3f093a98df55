"""Postern against Dovecot on the same messages: a corpus of tricky mail (nested message/rfc822,
doubly nested, groups, encoded words, missing headers, 8-bit, threads by References and
In-Reply-To, subjects with Re:/Fwd:/[list] leaders) appended to both servers with the same
dates, then the same commands sent to both and the answers compared byte for byte: SORT by every
key, THREAD by both algorithms, ENVELOPE, BODYSTRUCTURE and BODY[section] of nested parts.

Dovecot (Debian's dovecot-imapd) runs as its own instance on a high loopback port, started and
stopped here."""
import email.header
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BOB, BOB_PW, free_port
from test_imap import RawImap, raw_login

DOVECOT = shutil.which("dovecot")
pytestmark = pytest.mark.skipif(DOVECOT is None or os.geteuid() != 0,
                                reason="needs Debian's dovecot-imapd package and root")


def msg(*lines, body="body\r\n"):
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


INNER = msg("From: Inner Sender <inner@example.test>", "To: undisclosed-recipients:;",
            "Subject: =?utf-8?q?inner_=C3=A9t=C3=A9?=", "Date: Mon, 02 Nov 2026 08:00:00 +0100",
            "Message-ID: <inner@example.test>", "Content-Type: text/plain; charset=utf-8",
            body="inner body\r\n")
INNER2 = msg("From: deep@example.test", "Subject: deepest", "Date: Sun, 01 Nov 2026 07:00:00 +0000",
             "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=in",
             body="--in\r\nContent-Type: text/plain\r\n\r\ndeep text\r\n"
                  "--in\r\nContent-Type: message/rfc822\r\n\r\n" + INNER.decode() + "\r\n--in--\r\n")

CORPUS = [
    # 1: a thread root
    msg("From: Alice Liddell <alice@example.test>", "To: Bob <bob@example.test>",
        "Cc: carol@example.test", "Subject: Party on Friday", "Date: Mon, 02 Nov 2026 10:00:00 +0000",
        "Message-ID: <p1@example.test>"),
    # 2: a reply by In-Reply-To only, earlier timezone
    msg("From: bob@example.test", "To: Alice <alice@example.test>", "Subject: Re: Party on Friday",
        "Date: Mon, 02 Nov 2026 12:30:00 +0200", "Message-ID: <p2@example.test>",
        "In-Reply-To: <p1@example.test>"),
    # 3: a reply by References, with a list tag
    msg("From: \"Zed\" <zed@example.test>", "To: list@example.test", "Subject: [party] RE: Party on Friday",
        "Date: Tue, 03 Nov 2026 09:00:00 -0500", "Message-ID: <p3@example.test>",
        "References: <p1@example.test> <p2@example.test>"),
    # 4: a group address and an encoded subject
    msg("From: =?iso-8859-1?q?J=F6rg?= <jorg@example.test>", "To: Friends: ann@example.test, ben@example.test;",
        "Cc: undisclosed-recipients:;", "Subject: =?utf-8?b?w4ltw6l0w6k=?=",
        "Date: Sun, 01 Nov 2026 23:59:59 +0000", "Message-ID: <g4@example.test>"),
    # 5: no Date, no Subject, no Message-ID
    msg("From: nobody@example.test", "To: bob@example.test"),
    # 6: nested message/rfc822 (the inner one has a group and an encoded subject)
    msg("From: fwd@example.test", "To: bob@example.test", "Subject: Fwd: inner ete",
        "Date: Wed, 04 Nov 2026 10:00:00 +0000", "Message-ID: <n6@example.test>", "MIME-Version: 1.0",
        "Content-Type: multipart/mixed; boundary=outer",
        body="--outer\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
             "--outer\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n"
             + INNER.decode() + "\r\n--outer--\r\n"),
    # 7: doubly nested
    msg("From: twice@example.test", "To: bob@example.test", "Subject: [Fwd: deepest]",
        "Date: Thu, 05 Nov 2026 10:00:00 +0000", "Message-ID: <d7@example.test>", "MIME-Version: 1.0",
        "Content-Type: message/rfc822", body=INNER2.decode()),
    # 8: 8-bit header and body, multipart/alternative
    msg("From: Ülrich <ulrich@example.test>", "To: bob@example.test", "Subject: Grüße (fwd)",
        "Date: Fri, 06 Nov 2026 10:00:00 +0000", "Message-ID: <a8@example.test>", "MIME-Version: 1.0",
        "Content-Type: multipart/alternative; boundary=\"alt\"",
        body="--alt\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
             "Grüße\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Grüße</p>\r\n--alt--\r\n"),
    # 9: a reply to a message not in the mailbox, same base subject as 4
    msg("From: ann@example.test", "To: bob@example.test", "Subject: Re: =?utf-8?b?w4ltw6l0w6k=?=",
        "Date: Sat, 07 Nov 2026 10:00:00 +0000", "Message-ID: <r9@example.test>",
        "References: <missing@example.test>"),
    # 10: same sent date as 1 (ties go by sequence number)
    msg("From: Alice Liddell <alice@example.test>", "To: dave@example.test", "Subject: party on friday",
        "Date: Mon, 02 Nov 2026 10:00:00 +0000", "Message-ID: <p10@example.test>"),
    # 11: quoted-printable text and a base64 attachment holding NUL bytes (BINARY, RFC 3516)
    msg("From: files@example.test", "To: bob@example.test", "Subject: binary parts",
        "Date: Sat, 07 Nov 2026 11:00:00 +0000", "Message-ID: <b11@example.test>", "MIME-Version: 1.0",
        "Content-Type: multipart/mixed; boundary=bb",
        body="--bb\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
             "caf=C3=A9 au lait, a soft=\r\nbreak\r\n"
             "--bb\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             "AAECAwBoZWxsbwA=\r\n--bb--\r\n"),
]

COMMANDS = [
    "UID SORT (ARRIVAL) UTF-8 ALL",
    "UID SORT (DATE) UTF-8 ALL",
    "UID SORT (REVERSE DATE) UTF-8 ALL",
    "UID SORT (SUBJECT DATE) UTF-8 ALL",
    "UID SORT (FROM REVERSE SIZE) UTF-8 ALL",
    "UID SORT (TO) UTF-8 ALL",
    "UID SORT (CC) UTF-8 ALL",
    "UID SORT (SIZE) UTF-8 ALL",
    "UID SORT (DISPLAYFROM) UTF-8 ALL",
    "SORT (SUBJECT) UTF-8 SINCE 1-Jan-2000",
    "UID THREAD REFERENCES UTF-8 ALL",
    "UID THREAD ORDEREDSUBJECT UTF-8 ALL",
    "THREAD REFERENCES UTF-8 NOT FROM nobody",
    # ESEARCH (RFC 4731)
    "SEARCH RETURN (MIN MAX COUNT ALL) FROM alice",
    "UID SEARCH RETURN () SINCE 3-Nov-2026",
    "UID SEARCH RETURN (COUNT) FROM nobody-at-all",
    "SEARCH RETURN (MIN) NOT ALL",
    "UID SEARCH RETURN (MAX COUNT) OR SUBJECT party SUBJECT deepest",
]
FETCHES = ["ENVELOPE", "BODYSTRUCTURE", "BODY", "BODY.PEEK[1]", "BODY.PEEK[2]", "BODY.PEEK[2.HEADER]",
           "BODY.PEEK[2.TEXT]", "BODY.PEEK[2.1]", "BODY.PEEK[2.MIME]", "BODY.PEEK[1.2.HEADER]",
           "BODY.PEEK[1.2.1]", "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]", "RFC822.SIZE",
           "BINARY.PEEK[1]", "BINARY.PEEK[2]", "BINARY.SIZE[1]", "BINARY.SIZE[2]", "BINARY.PEEK[1]<2.5>",
           "BINARY.PEEK[2.1]"]


@pytest.fixture(scope="module")
def dovecot():
    port = free_port()
    d = Path(tempfile.mkdtemp(prefix="postern-dovecot-"))
    os.chmod(d, 0o755)
    (d / "home").mkdir()
    shutil.chown(d / "home", "nobody", "nogroup")
    (d / "users").write_text("diff:{PLAIN}diffpass::::::\n")
    conf = d / "dovecot.conf"
    conf.write_text(f"""
instance_name = postern-diff-{port}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")
    (d / "state").mkdir()
    subprocess.run([DOVECOT, "-c", str(conf)], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield port
    subprocess.run([DOVECOT, "-c", str(conf), "stop"], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    shutil.rmtree(d, ignore_errors=True)


def session(r, tag, cmd):
    r.send(f"{tag} {cmd}\r\n".encode())
    got = r.until_tagged(tag)
    assert got[-1].startswith(f"{tag} OK"), (cmd, got)
    return got[:-1]


def load(r, box):
    """Appends the corpus with fixed dates (so ARRIVAL agrees) and selects the mailbox."""
    session(r, "c", f"CREATE {box}")
    for i, m in enumerate(CORPUS):
        date = f'"{1 + i:02d}-Nov-2026 12:00:00 +0000"'
        r.send(f"a APPEND {box} () {date} {{{len(m)}}}\r\n".encode())
        assert r.line().startswith("+")
        r.send(m + b"\r\n")
        assert r.until_tagged("a")[-1].startswith("a OK")
    session(r, "s", f"EXAMINE {box}")


def raw(r, tag, cmd):
    """The untagged answer of a command with literals inlined, as one byte string."""
    r.send(f"{tag} {cmd}\r\n".encode())
    out = b""
    while True:
        while b"\r\n" not in r.buf:
            chunk = r.sock.recv(65536)
            if not chunk:
                raise EOFError((cmd, out, r.buf))
            r.buf += chunk
        line, r.buf = r.buf.split(b"\r\n", 1)
        if line.startswith(tag.encode() + b" "):
            assert b" OK" in line, (cmd, line)
            return out
        out += line + b"\r\n"
        if line.endswith(b"}") and b"{" in line:
            n = int(line[line.rindex(b"{") + 1:-1])
            while len(r.buf) < n:
                chunk = r.sock.recv(65536)
                if not chunk:
                    raise EOFError((cmd, out, r.buf))
                r.buf += chunk
            out += r.buf[:n]
            r.buf = r.buf[n:]


def strings_decoded(answer: bytes) -> bytes:
    """The answer with every quoted string and literal replaced by its text after RFC 2047
    decoding, as one quoted form. Postern sends non-ASCII header text as UTF-8 encoded words so
    that IMAP4rev1 clients see 7-bit only; Dovecot passes the header's own bytes (8-bit literals,
    or the original charset's encoded words). The text a client shows is the same; this is what
    is compared, with the structure around it byte for byte."""
    out, i = b"", 0
    while i < len(answer):
        c = answer[i:i + 1]
        if c == b'"':
            j, buf = i + 1, b""
            while answer[j:j + 1] != b'"':
                if answer[j:j + 1] == b"\\":
                    j += 1
                buf += answer[j:j + 1]
                j += 1
            text, i = buf, j + 1
        elif c == b"{" and re.match(rb"\{\d+\}\r\n", answer[i:]):
            m = re.match(rb"\{(\d+)\}\r\n", answer[i:])
            n = int(m.group(1))
            start = i + m.end()
            text, i = answer[start:start + n], start + n
        else:
            out += c
            i += 1
            continue
        decoded = str(email.header.make_header(email.header.decode_header(text.decode("utf-8", "replace"))))
        out += b'"' + decoded.encode() + b'"'
    return out


def normalised(item: str, answer: bytes) -> bytes:
    """BODY and BODYSTRUCTURE compared without regard to the case of their atoms (Postern
    writes MIME types, encodings and parameter names in upper case as RFC 3501's examples do,
    Dovecot in lower case); ENVELOPE with its strings decoded (see strings_decoded)."""
    if item.startswith("BODY") and "[" not in item:
        answer = answer.lower()
    return strings_decoded(answer) if item in ("ENVELOPE", "BODYSTRUCTURE", "BODY") else answer


def both(server, dovecot, box):
    """A session on each server, logged in, with the corpus loaded into `box` and examined."""
    ours = raw_login(server)
    theirs = RawImap(dovecot)
    theirs.line()
    session(theirs, "l", "LOGIN diff diffpass")
    load(ours, box)
    load(theirs, box)
    return ours, theirs


def test_sort_and_thread_answer_as_dovecot_does(server, dovecot):
    ours, theirs = both(server, dovecot, "Diff")
    for cmd in COMMANDS:
        a, b = raw(ours, "x", cmd), raw(theirs, "x", cmd)
        assert a == b, f"{cmd}\n  postern: {a!r}\n  dovecot: {b!r}"


def test_fetch_of_nested_and_tricky_messages_as_dovecot_does(server, dovecot):
    ours, theirs = both(server, dovecot, "Diff2")
    diffs = []
    for item in FETCHES:
        for n in range(1, len(CORPUS) + 1):
            cmd = f"FETCH {n} ({item})"
            a, b = raw(ours, "f", cmd), raw(theirs, "f", cmd)
            if normalised(item, a) != normalised(item, b):
                diffs.append(f"{cmd}\n  postern: {a!r}\n  dovecot: {b!r}")
    assert not diffs, "\n".join(diffs)
