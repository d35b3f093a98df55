"""Black-box test fixtures: build-free (the runner builds), start the real `postern` binary on
127.0.0.1 high ports with a fresh data directory, and stop it with SIGTERM (asserting exit 0)."""
import base64
import json
import os
import random
import signal
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("POSTERN_BIN", str(ROOT / "target" / "debug" / "postern"))

ALICE = "alice@example.test"
ALICE_PW = "vT9#qLm2!xWp4Rz-alpha"
BOB = "bob@example.test"
BOB_PW = "Kq8$wN3!zRt6Lp-bravo"
CAROL = "carol@example.test"  # disabled account
CAROL_PW = "Hf4!pX9#mQ2$wZ-charlie"


def tls_client_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def run_cli(datadir, *args, stdin=None, check=True):
    p = subprocess.run([BIN, "--dir", str(datadir), *args], input=stdin, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"postern {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def free_port():
    """A free TCP port on 127.0.0.1 (for a peer or an extra listener of a test)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


_RECENT_PORTS = []


def free_offset():
    """A port offset for which every standard port (+offset) is free on 127.0.0.1, and not one
    handed out lately (several data directories are made before their servers start: a free port
    is not yet a taken one)."""
    for _ in range(500):
        # below Linux's ephemeral range (32768-60999): a server's own outgoing connections (to
        # PostgreSQL, Redis) take ports from it, and one left in TIME_WAIT by a killed server
        # would keep its successor from binding the same port
        off = random.randrange(20000, 32768 - 8080)
        bases = (25, 587, 465, 143, 993, 110, 995, 8080)
        ok = not any(base + off in _RECENT_PORTS for base in bases)
        for base in bases if ok else ():
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", base + off))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            _RECENT_PORTS.extend(base + off for base in bases)
            del _RECENT_PORTS[:-512]
            return off
    raise RuntimeError("no free ports")


class Server:
    def __init__(self, datadir, offset, proc, log_path):
        self.dir = Path(datadir)
        self.offset = offset
        self.proc = proc
        self.log_path = log_path
        self.smtp = 25 + offset
        self.submission = 587 + offset
        self.submissions = 465 + offset
        self.imap = 143 + offset
        self.imaps = 993 + offset
        self.pop3 = 110 + offset
        self.pop3s = 995 + offset
        self.admin = 8080 + offset

    def log(self):
        return Path(self.log_path).read_text(errors="replace")

    def cli(self, *args, **kw):
        return run_cli(self.dir, *args, **kw)

    def db(self, write=False):
        """The server's database, SQLite or (POSTERN_TEST_PG) PostgreSQL, read-only unless `write`."""
        return open_db(self.dir, write)

    def inbox(self, address, mailbox="INBOX"):
        """The stored messages of a mailbox, as bytes, in UID order."""
        with self.db() as c:
            rows = c.execute(
                "SELECT m.uid, m.blob_id FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
                "JOIN accounts a ON a.id = b.account_id WHERE a.address = ? AND b.name = ? ORDER BY m.uid",
                (address, mailbox),
            ).fetchall()
        return self.bodies([blob for _uid, blob in rows])

    def body(self, blob):
        """A stored body by its id: a file of the blob directory, or (PostgreSQL) a row."""
        return self.bodies([blob])[0]

    def bodies(self, blobs):
        """Stored bodies by their ids, in that order (one query on PostgreSQL)."""
        if not database_url(self.dir).startswith("postgres"):
            return [(self.dir / "blobs" / b[:2] / b).read_bytes() for b in blobs]
        with self.db() as c:
            found = {r[0]: bytes(r[1]) for r in c.execute(
                "SELECT id, data FROM bodies WHERE id = ANY(?)", (list(blobs),)).fetchall()}
        return [found[b] for b in blobs]

    def uids(self, address, mailbox="INBOX"):
        with self.db() as c:
            return [r[0] for r in c.execute(
                "SELECT m.uid FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
                "JOIN accounts a ON a.id = b.account_id WHERE a.address = ? AND b.name = ? ORDER BY m.uid",
                (address, mailbox))]

    def queue(self):
        with self.db() as c:
            return c.execute("SELECT id, sender FROM queue ORDER BY id").fetchall()

    def deferred_errors(self):
        """First recipient -> last error of every queued message tried at least twice. A message
        delivered a moment ago may leave the queue between the listing and the show: skipped."""
        out = {}
        for qid, _ in self.queue():
            p = self.cli("queue", "show", str(qid), "--json", check=False)
            if p.returncode != 0:
                continue
            m = json.loads(p.stdout)
            if m["attempts"] >= 2 and m["last_error"]:
                out[m["recipients"][0]["address"]] = m["last_error"]
        return out

    def restart(self):
        """Stops the server and starts it again on the same data directory (after a test changed
        its configuration or certificate); the fixture that made it still stops it at the end."""
        self.stop()
        new = start(self.dir, self.offset)
        self.proc, self.log_path = new.proc, new.log_path
        return self

    def stop(self, timeout=40):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def wait_port(port, proc, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


_DNS = None


def suite_dns():
    """The DNS server every test server asks unless its test brings its own: a loopback zone in
    which example.test (the test servers' own domain) allows mail from 127.0.0.1 only (SPF), and
    nothing else exists. Started once for the whole run."""
    global _DNS
    if _DNS is None:
        from dnsfake import FakeDns
        _DNS = FakeDns().start()
        _DNS.zone.add("example.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    return _DNS


# POSTERN_TEST_PG=HOST:PORT runs every server of the suite on PostgreSQL instead of SQLite: a
# fresh database each, made by the role `mail` (password `mailpass`, allowed to create databases),
# as tests/run.sh sets up on a private PostgreSQL cluster.
PG = os.environ.get("POSTERN_TEST_PG")
os.environ.setdefault("POSTERN_TEST_PGPASS", "mailpass")


def pg_database():
    """A new, empty PostgreSQL database on POSTERN_TEST_PG: its URL (no password in it)."""
    return pg_database_on(PG)


def pg_database_on(hostport):
    """A new, empty database on the PostgreSQL at HOST:PORT (role `mail`): its URL."""
    host, port = hostport.rsplit(":", 1)
    name = f"pt_{os.getpid()}_{random.randrange(1 << 40)}"
    subprocess.run(["psql", f"host={host} port={port} user=mail dbname=mail", "-qc", f"CREATE DATABASE {name}"],
                   env={**os.environ, "PGPASSWORD": os.environ["POSTERN_TEST_PGPASS"]}, check=True,
                   capture_output=True, timeout=60)
    return f"postgres://mail@{host}:{port}/{name}"


class PgDb:
    """A server's PostgreSQL database with the part of sqlite3's interface the tests use
    (`execute` with `?` parameters, `with`)."""

    def __init__(self, url):
        import psycopg
        self.conn = psycopg.connect(url, password=os.environ["POSTERN_TEST_PGPASS"], autocommit=True)

    def execute(self, sql, params=()):
        cur = self.conn.cursor()
        cur.execute(sql.replace("%", "%%").replace("?", "%s"), tuple(params))
        return cur

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.conn.close()


def database_url(datadir):
    """`[storage] database` of a data directory: a SQLite file name or a postgres:// URL."""
    import tomllib
    cfg = tomllib.loads((Path(datadir) / "postern.toml").read_text())
    return cfg.get("storage", {}).get("database", "postern.db")


def open_db(datadir, write=False):
    """The database of a data directory (as `Server.db`)."""
    db = database_url(datadir)
    if db.startswith("postgres"):
        return PgDb(db)
    path = Path(datadir) / db
    return sqlite3.connect(path) if write else sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def raw_db(datadir):
    """Everything the database holds, as bytes, to look for what must never be stored in clear:
    the SQLite file, or a `pg_dump` of the PostgreSQL database."""
    db = open_db(datadir)
    if isinstance(db, PgDb):
        i = db.conn.info
        dsn = f"host={i.host} port={i.port} user={i.user} dbname={i.dbname}"
        db.close()
        out = subprocess.run(["pg_dump", "--data-only", dsn],
                             env={**os.environ, "PGPASSWORD": os.environ["POSTERN_TEST_PGPASS"]},
                             capture_output=True, check=True, timeout=60)
        return out.stdout
    db.close()
    return (Path(datadir) / "postern.db").read_bytes()


def init_dir(tmp_path, smtp_extra="", with_users=True, toml_extra="", database=None, sqlite=False):
    """A data directory with the suite's defaults. `database`: a PostgreSQL URL to use (a node
    that joins a database another node set up) instead of SQLite or POSTERN_TEST_PG's fresh one;
    `sqlite`: SQLite whatever POSTERN_TEST_PG says."""
    d = tmp_path / "data"
    off = free_offset()
    database = database or (pg_database() if PG and not sqlite else None)
    db = ["--database", database, "--database-password", "env:POSTERN_TEST_PGPASS"] if database else []
    run_cli(d, "init", "--dir", str(d), "--domain", "example.test", "--hostname", "mail.example.test",
            "--listen-ip", "127.0.0.1", "--port-offset", str(off), *db)
    if os.geteuid() == 0:
        # CI runs as root: the test servers stay root (a real server drops to [server] user;
        # tests/test_privileges.py covers that)
        cfg = d / "postern.toml"
        cfg.write_text(cfg.read_text().replace("[server]\n", "[server]\nuser = \"root\"\n", 1))
    if smtp_extra:
        cfg = d / "postern.toml"
        extra = [l.strip() for l in smtp_extra.strip().splitlines()]
        keys = {l.split("=")[0].strip() for l in extra}
        lines = [l for l in cfg.read_text().splitlines() if l.split("=")[0].strip() not in keys]
        text = "\n".join(lines) + "\n"
        cfg.write_text(text.replace("[smtp]\n", "[smtp]\n" + "\n".join(extra) + "\n"))
    if "[delivery]" not in toml_extra:
        # No outbound delivery unless a test asks for it: remote domains in tests must never
        # reach the system's resolver or anything outside 127.0.0.0/8.
        toml_extra = toml_extra + "\n[delivery]\nenabled = false\n"
    if "[dns]" not in toml_extra and "dns_server" not in toml_extra:
        # Every look-up goes to a zone on loopback, never to the system's resolvers.
        toml_extra = toml_extra + f"\n[dns]\nserver = \"127.0.0.1:{suite_dns().port}\"\n"
    if "[alerts]" not in toml_extra:
        # Built-in alerts mail the postmaster (alice's alias here): tests that count her mail
        # would see them. Tests about alerts configure them.
        toml_extra = toml_extra + "\n[alerts]\nmail = false\n"
    if "[notify]" not in toml_extra:
        # New-sign-in notices are on by default; they would add a message to the INBOX of every
        # account a test logs in to. tests/test_notify.py turns them on.
        toml_extra = toml_extra + "\n[notify]\nnew_signin = false\n"
    if "[greylist]" not in toml_extra:
        # Greylisting is on by default; tests that are not about it would only see 451s.
        toml_extra = toml_extra + "\n[greylist]\nenabled = false\n"
    cfg = d / "postern.toml"
    cfg.write_text(cfg.read_text() + "\n" + toml_extra.strip() + "\n")
    if with_users:
        run_cli(d, "user", "add", ALICE, "--password-stdin", stdin=ALICE_PW + "\n")
        run_cli(d, "user", "add", BOB, "--password-stdin", stdin=BOB_PW + "\n")
        run_cli(d, "user", "add", CAROL, "--password-stdin", stdin=CAROL_PW + "\n")
        run_cli(d, "user", "disable", CAROL)
        run_cli(d, "alias", "add", "postmaster@example.test", ALICE)
    return d, off


def start(d, off, extra_args=()):
    log_path = d.parent / f"server-{off}.log"
    logf = open(log_path, "w")
    proc = subprocess.Popen([BIN, "--dir", str(d), *extra_args, "serve"], stdout=logf, stderr=subprocess.STDOUT)
    srv = Server(d, off, proc, log_path)
    for p in (srv.smtp, srv.submission, srv.submissions, srv.imap, srv.imaps):
        wait_port(p, proc)
    return srv


@pytest.fixture
def make_server(tmp_path):
    """Factory: make_server(smtp_extra="max_recipients = 5") -> a running Server."""
    servers = []

    def factory(smtp_extra="", extra_args=(), toml_extra=""):
        sub = tmp_path / f"s{len(servers)}"
        sub.mkdir()
        d, off = init_dir(sub, smtp_extra, toml_extra=toml_extra)
        srv = start(d, off, extra_args)
        servers.append(srv)
        return srv

    yield factory
    for s in servers:
        if s.proc.poll() is None:
            assert s.stop() == 0, s.log()[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server shared by a test module (default configuration)."""
    tmp = tmp_path_factory.mktemp("srv")
    d, off = init_dir(tmp)
    srv = start(d, off)
    yield srv
    rc = srv.stop()
    assert rc == 0, srv.log()[-3000:]


class Raw:
    """A raw SMTP dialogue over a socket (optionally TLS), for what smtplib will not send."""

    def __init__(self, port, tls=False, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            self.sock = tls_client_context().wrap_socket(self.sock)
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode()

    def reply(self):
        """One (possibly multi-line) reply: (code, [texts])."""
        texts = []
        while True:
            l = self.line()
            texts.append(l[4:])
            if len(l) < 4 or l[3] != "-":
                return int(l[:3]), texts

    def cmd(self, text):
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def starttls(self):
        code, _ = self.cmd("STARTTLS")
        assert code == 220
        self.sock = tls_client_context().wrap_socket(self.sock)
        self.buf = b""

    def closed(self, timeout=5):
        """True if the server closed the connection (EOF) within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                d = self.sock.recv(4096)
                if not d:
                    return True
                self.buf += d
        except (ConnectionResetError, BrokenPipeError):
            return True
        except (socket.timeout, TimeoutError):
            return False

    def close(self):
        self.sock.close()


def send_until_reply(r, first, piece, marker, limit=20_000_000):
    """Sends `first`, then `piece` again and again until `marker` arrives from the server (read
    by a thread meanwhile) or `limit` bytes went out; returns the bytes sent."""
    seen = threading.Event()

    def read():
        try:
            while True:
                d = r.sock.recv(65536)
                if not d:
                    return
                r.buf += d
                if marker in r.buf:
                    seen.set()
        except OSError:
            return
        finally:
            seen.set()
    t = threading.Thread(target=read, daemon=True)
    t.start()
    sent = 0
    try:
        r.send(first)
        while sent < limit and not seen.is_set():
            r.send(piece)
            sent += len(piece)
    except OSError:
        pass
    seen.wait(10)
    t.join(10)
    assert marker in r.buf, r.buf[-300:]
    return sent


def plain_b64(user, pw):
    return base64.b64encode(f"\0{user}\0{pw}".encode()).decode()


@pytest.fixture
def service_user():
    """A system user made for the test (root only) and a base directory it can reach (pytest's
    own temporary tree is 0700 root): (name, uid, gid, base). Removed afterwards."""
    import pwd
    import shutil
    import tempfile
    if os.geteuid() != 0:
        pytest.skip("dropping root needs root")
    name = "pst" + os.urandom(4).hex()
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    base = Path(tempfile.mkdtemp(prefix="postern-svc-", dir="/tmp"))
    os.chmod(base, 0o755)
    pw = pwd.getpwnam(name)
    try:
        yield name, pw.pw_uid, pw.pw_gid, base
    finally:
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(["userdel", name], capture_output=True)


def run_as_service(d, name):
    """Makes a data directory from init_dir serve as `name` when started as root."""
    cfg = d / "postern.toml"
    cfg.write_text(cfg.read_text().replace('user = "root"', f'user = "{name}"', 1))
    subprocess.run(["chown", "-R", f"{name}:", str(d)], check=True)
