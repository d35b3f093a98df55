"""IMAP COMPRESS=DEFLATE (RFC 4978): offered only after login; after its OK both directions are
raw DEFLATE, and a whole session (SELECT, APPEND, FETCH byte for byte, IDLE, LOGOUT) runs
through it; a second COMPRESS is refused; a decompression bomb (a few hundred KB that inflate to
a 300 MB line) meets the same line cap as plain input and is cut off with its BYE, the server's
memory unmoved; `imap.max_compressed_sessions` bounds how many sessions compress at once."""
import time
import zlib

from conftest import BOB, BOB_PW
from test_imap import RawImap, raw_login


class Deflated(RawImap):
    """The client side of a compressed session, taking over a RawImap's socket: what it sends
    is deflated, what it reads inflated (RawImap's until_tagged reads through `line`)."""

    def __init__(self, raw):
        self.raw = raw
        self.sock = raw.sock
        self.z = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.unz = zlib.decompressobj(-15)
        self.buf = self.unz.decompress(raw.buf) if raw.buf else b""
        raw.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH))

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += self.unz.decompress(chunk)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode(errors="replace")

    def cmd(self, tag, text):
        self.send(f"{tag} {text}\r\n".encode())
        got = self.until_tagged(tag)
        assert got[-1].startswith(f"{tag} OK"), got
        return got


def compressed_session(server):
    r = raw_login(server)
    r.send(b"c CAPABILITY\r\n")
    assert "COMPRESS=DEFLATE" in r.until_tagged("c")[0]
    r.send(b"z COMPRESS DEFLATE\r\n")
    assert r.line() == "z OK DEFLATE active"
    return Deflated(r)


def test_offered_after_login_only(server):
    r = RawImap(server.imaps, tls=True)
    greeting = r.line()
    assert "COMPRESS" not in greeting
    r.send(b"a COMPRESS DEFLATE\r\n")
    assert r.until_tagged("a")[-1].startswith("a BAD")


def test_a_whole_session_through_deflate(server):
    d = compressed_session(server)
    d.cmd("c", "CAPABILITY")
    d.send(b"x COMPRESS DEFLATE\r\n")
    assert d.until_tagged("x")[-1].startswith("x NO [COMPRESSIONACTIVE]")
    d.cmd("m", "CREATE Zipped")
    body = b"Subject: squeezed\r\n\r\n" + b"the same line again and again\r\n" * 2000
    d.send(b"a APPEND Zipped {%d+}\r\n" % len(body) + body + b"\r\n")
    assert d.until_tagged("a")[-1].startswith("a OK")
    d.cmd("s", "SELECT Zipped")
    d.send(b"f FETCH 1 BODY.PEEK[]\r\n")
    head = d.line()
    assert head.startswith("* 1 FETCH (BODY[] {%d}" % len(body)), head
    while len(d.buf) < len(body):
        d.buf += d.unz.decompress(d.raw.sock.recv(65536))
    assert d.buf[:len(body)] == body
    d.buf = d.buf[len(body):]
    assert d.until_tagged("f")[-1].startswith("f OK")
    # IDLE through the compressed stream: another session's append wakes it
    d.send(b"i IDLE\r\n")
    assert d.line().startswith("+")
    other = raw_login(server)
    msg = b"Subject: while idle\r\n\r\nx\r\n"
    other.send(b"a APPEND Zipped {%d+}\r\n" % len(msg) + msg + b"\r\n")
    other.until_tagged("a")
    assert d.line() == "* 2 EXISTS"
    d.send(b"DONE\r\n")
    assert d.until_tagged("i")[-1].startswith("i OK")
    d.send(b"l LOGOUT\r\n")
    assert d.until_tagged("l")[0].startswith("* BYE")


def test_decompression_bomb_meets_the_line_cap(server):
    def rss_mib():
        status = open(f"/proc/{server.proc.pid}/status").read()
        return int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1]) // 1024

    before = rss_mib()
    d = compressed_session(server)
    z = d.z
    piece = b"a" * (1 << 20)
    sent = 0
    bye = None
    d.raw.sock.settimeout(20)
    try:
        d.raw.sock.sendall(z.compress(b"b NOOP ") + z.flush(zlib.Z_SYNC_FLUSH))
        for _ in range(300):  # 300 MB inflated, about 300 KB on the wire
            out = z.compress(piece) + z.flush(zlib.Z_SYNC_FLUSH)
            d.raw.sock.sendall(out)
            sent += len(out)
    except OSError:
        pass
    try:
        while True:
            l = d.line()
            if l.startswith("* BYE"):
                bye = l
                break
    except (EOFError, OSError, zlib.error):
        pass
    assert bye == "* BYE Command line or literal too long", bye
    assert sent < 2_000_000, sent
    assert rss_mib() < before + 60, (before, rss_mib())


def test_compressed_sessions_are_bounded(make_server):
    srv = make_server()
    cfg = srv.dir / "postern.toml"
    cfg.write_text(cfg.read_text().replace("[imap]\n", "[imap]\nmax_compressed_sessions = 1\n", 1))
    srv.restart()
    first = compressed_session(srv)
    r = raw_login(srv)
    r.send(b"z COMPRESS DEFLATE\r\n")
    assert r.until_tagged("z")[-1].startswith("z NO [LIMIT]")
    # the refused session goes on uncompressed
    r.send(b"n NOOP\r\n")
    assert r.until_tagged("n")[-1].startswith("n OK")
    # the place comes back when the compressed session ends
    first.send(b"l LOGOUT\r\n")
    first.until_tagged("l")
    first.raw.sock.close()
    for _ in range(50):
        again = raw_login(srv)
        again.send(b"z COMPRESS DEFLATE\r\n")
        if again.line() == "z OK DEFLATE active":
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the compressed place was not given back")
