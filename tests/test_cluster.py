"""Several Postern nodes on one PostgreSQL database and one Redis ([storage] database =
"postgres://…", [cluster] redis), each with its own port offset and data directory (certificate,
master key copy, lock), as `postern init --database URL` sets them up:

- one mail system: a message delivered through one node is read byte for byte through another;
- an app password revoked on one node is refused on another at once (credentials are read from
  the shared database at every login; the verified-credential cache is keyed by the stored hash);
- a delivery through one node wakes an IDLE session on another within a second (Redis
  pub/sub), a ban made on one node is refused by another within a second, and an incident lock
  made on one node ends the account's session on another at once (pub/sub too);
- a sender greylisted by one node passes through another once the delay is over, and
  `[imap] max_sessions_per_account` counts the sessions of every node;
- 5,000 queued messages are delivered exactly once with three nodes competing for the queue
  (leases taken with FOR UPDATE SKIP LOCKED);
- a node killed (SIGKILL) under SMTP load behind HAProxy: every acknowledged message is stored
  exactly once, and the client goes on through HAProxy on the other nodes.

PostgreSQL is POSTERN_TEST_PG's when set, else a private cluster started here (tests/pg.sh);
Redis and HAProxy are Debian's, started here on loopback."""
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import threading
import time
import uuid

import pytest

from dnsfake import FakeDns
from conftest import (ALICE, ALICE_PW, BOB, BOB_PW, PG, ROOT, free_port, init_dir, open_db, pg_database_on,
                      start, tls_client_context)
from test_cluster_bans import PASSWORD, REDIS, Redis, refused_within
from test_defence import FAST, HYDRA, hydra, imap_login
from test_haproxy import HAPROXY
from test_inbound_auth import message, send
from test_incident import read_until_closed
from test_mx_delivery import dns  # noqa: F401  (the fixture: a DNS zone on loopback)

PG_BIN = [d for d in ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
          if os.path.exists(f"{d}/initdb")]
pytestmark = [
    pytest.mark.skipif(not REDIS, reason="redis-server is installed by tests/run.sh"),
    pytest.mark.skipif(not (PG or PG_BIN), reason="PostgreSQL is installed by tests/run.sh"),
]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """HOST:PORT of a PostgreSQL whose role `mail` may create databases."""
    if PG:
        yield PG
        return
    d = pg_dir()
    out = subprocess.run(["bash", str(ROOT / "tests" / "pg.sh"), "start", str(d)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    yield out.stdout.strip()
    subprocess.run(["bash", str(ROOT / "tests" / "pg.sh"), "stop", str(d)], capture_output=True, timeout=120)
    shutil.rmtree(d, ignore_errors=True)


def pg_dir():
    """A directory for a private PostgreSQL cluster: under /tmp, since the server runs as the
    `postgres` user, which cannot enter pytest's private directories."""
    import tempfile
    from pathlib import Path
    return Path(tempfile.mkdtemp(prefix="postern-pg-"))


@pytest.fixture
def redis(tmp_path):
    os.environ["POSTERN_TEST_REDIS_PASSWORD"] = PASSWORD
    r = Redis(tmp_path)
    r.start()
    yield r
    r.stop()


def cluster(tmp_path, postgres, redis, names=("a", "b", "c"), extra=""):
    """Data directories of nodes on one new database: the first sets it up (and its accounts),
    the others join it with a copy of the first one's master key. Returns [(dir, offset)]."""
    url = pg_database_on(postgres)
    nodes = []
    for i, name in enumerate(names):
        (tmp_path / name).mkdir()
        conf = FAST + extra + f'''
[cluster]
redis = "redis://127.0.0.1:{redis.port}"
redis_password = "env:POSTERN_TEST_REDIS_PASSWORD"
node_name = "{name}"
'''
        if i > 0:
            # the master key its data is sealed with: before the node opens the database
            (tmp_path / name / "data").mkdir()
            shutil.copy(nodes[0][0] / "master.key", tmp_path / name / "data" / "master.key")
        d, off = init_dir(tmp_path / name, with_users=(i == 0), toml_extra=conf, database=url)
        nodes.append((d, off))
    return nodes


def start_all(nodes):
    return [start(d, off) for d, off in nodes]


def stop_all(servers):
    for s in servers:
        if s.proc.poll() is None:
            assert s.stop() == 0, s.log()[-3000:]


SENDER = "someone@remote.test"


def idle_session(port, user=ALICE, password=ALICE_PW):
    """An IMAPS session in IDLE on INBOX (alice's unless told): (its socket, a reader of its lines)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = tls_client_context().wrap_socket(raw)
    f = s.makefile("rb")
    f.readline()
    s.sendall(f'1 LOGIN "{user}" "{password}"\r\n'.encode())
    assert f.readline().startswith(b"1 OK")
    s.sendall(b"2 SELECT INBOX\r\n")
    while not f.readline().startswith(b"2 OK"):
        pass
    s.sendall(b"3 IDLE\r\n")
    assert f.readline().startswith(b"+")
    return s, f


def inbound(port, rcpt, subject, body="hello", message_id=None):
    message_id = message_id or f"<{uuid.uuid4()}@client.test>"
    msg = (f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n\r\n{body}\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.test")
        s.sendmail(SENDER, [rcpt], msg)
    return msg.encode()


def fetch_by_subject(port, subject):
    """The one message of alice's INBOX with `subject`, read over IMAPS: its bytes."""
    import imaplib
    m = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_client_context(), timeout=10)
    m.login(ALICE, ALICE_PW)
    m.select("INBOX")
    typ, data = m.search(None, "SUBJECT", f'"{subject}"')
    (num,) = data[0].split()
    typ, got = m.fetch(num, "(BODY.PEEK[])")
    m.logout()
    return got[0][1]


def test_three_nodes_serve_one_mail_system(tmp_path, postgres, redis):
    nodes = cluster(tmp_path, postgres, redis)
    a, b, c = servers = start_all(nodes)
    try:
        # a message through b, read back through c, byte for byte (the body is in the database)
        sent = inbound(b.smtp, ALICE, "through b", body="x" * 5000)
        body = fetch_by_subject(c.imaps, "through b")
        assert body.endswith(sent), body[-200:]
        assert b"Received:" in body[: len(body) - len(sent)]

        # an app password made on a works on c; revoked on a, refused on c at once
        import json
        secret = json.loads(a.cli("app-password", "create", BOB, "--name", "phone", "--json").stdout)["secret"]
        assert imap_login(c.imaps, BOB, secret) == "ok"
        a.cli("app-password", "revoke", BOB, "phone")
        assert imap_login(c.imaps, BOB, secret) == "fail"
        # and the account's own password still works everywhere
        assert imap_login(b.imaps, BOB, BOB_PW) == "ok"

        # IDLE on a; a delivery through b wakes it within a second
        s, f = idle_session(a.imaps)
        time.sleep(0.3)
        t0 = time.time()
        inbound(b.smtp, ALICE, "wake up")
        s.settimeout(5)
        line = f.readline()
        woke = time.time() - t0
        assert b"EXISTS" in line, line
        assert woke < 1.0, f"IDLE on a woke {woke:.2f} s after the delivery through b"
        s.sendall(b"DONE\r\n")
        s.close()

        # a ban made on c is refused by a within a second
        c.cli("ban", "add", "127.0.0.77/32", "--reason", "cluster test")
        ok, took = refused_within(a.imaps, "127.0.0.77", secs=1.0)
        assert ok, f"not refused by a {took:.2f} s after the ban on c"

        # an attack spread over the nodes meets one set of counters (in Redis): ten wrong
        # passwords for bob from ten addresses, through a, b and c in turn, lock the account for
        # unknown sources on every node; the address bob logged in from (through b) is a known
        # client on a as well
        for i in range(10):
            node = servers[i % 3]
            assert imap_login(node.imaps, BOB, f"wrong-{i}", source=f"127.0.1.{i + 1}") == "fail"
        for node in servers:
            assert imap_login(node.imaps, BOB, BOB_PW, source="127.0.2.1") == "fail"
        assert imap_login(a.imaps, BOB, BOB_PW) == "ok"

        # one POP3 session per maildrop in the cluster (RFC 1939 4): held through a, refused
        # through b, free again for b once a's session ends
        import poplib
        first = poplib.POP3_SSL("127.0.0.1", a.pop3s, context=tls_client_context(), timeout=10)
        first.user(ALICE)
        first.pass_(ALICE_PW)
        second = poplib.POP3_SSL("127.0.0.1", b.pop3s, context=tls_client_context(), timeout=10)
        second.user(ALICE)
        with pytest.raises(poplib.error_proto, match="IN-USE"):
            second.pass_(ALICE_PW)
        first.quit()
        time.sleep(0.3)
        third = poplib.POP3_SSL("127.0.0.1", b.pop3s, context=tls_client_context(), timeout=10)
        third.user(ALICE)
        third.pass_(ALICE_PW)
        assert third.stat()[0] >= 2
        third.quit()

        # one send limit for alice whichever node she submits through
        a.cli("user", "send-limits", ALICE, "--messages-per-hour", "3")
        for i, node in enumerate([a, b, c, a]):
            with smtplib.SMTP_SSL("127.0.0.1", node.submissions, context=tls_client_context(), timeout=20) as sub:
                sub.login(ALICE, ALICE_PW)
                msg = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: limit {i}\r\n\r\nx\r\n"
                if i < 3:
                    sub.sendmail(ALICE, [BOB], msg)
                else:
                    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                        sub.sendmail(ALICE, [BOB], msg)
                    assert refused.value.recipients[BOB][0] == 451, refused.value.recipients

        # an incident lock made on c ends bob's session on a at once: announced through Redis
        # (the nodes' twice-a-second read of the database is the fallback)
        s, f = idle_session(a.imaps, BOB, BOB_PW)
        lock = c.cli("incident", "lock", BOB, "--reason", "cluster test", "--json")
        t0 = time.time()
        said, closed = read_until_closed(f.readline, t0 + 5)
        ended = time.time() - t0
        s.close()
        assert closed and b"* BYE" in said, said
        assert ended < 1.0, f"bob's session on a ended {ended:.2f} s after the lock on c"
        deadline = time.time() + 3
        while "announced through the cluster" not in a.log() and time.time() < deadline:
            time.sleep(0.1)
        assert "announced through the cluster" in a.log(), a.log()[-3000:]
        assert imap_login(b.imaps, BOB, BOB_PW) == "fail", lock.stdout

        # the audit chain is one line whichever node wrote, and verifies from any node
        out = b.cli("audit-log", "verify")
        assert "intact" in out.stdout, out.stdout + out.stderr
        with open_db(nodes[0][0]) as db:
            writers = db.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0]
        assert writers > 5
    finally:
        stop_all(servers)


def test_greylisting_and_the_imap_session_cap_hold_for_the_cluster(tmp_path, postgres, redis):
    """A sender deferred by one node passes through another once the delay is over (the triplets
    are rows of the shared database: per-node state would defer it again there); and
    `[imap] max_sessions_per_account` counts an account's sessions on every node (Redis)."""
    import imaplib
    with FakeDns() as fake:
        extra = (f'[dns]\nserver = "127.0.0.1:{fake.port}"\ntimeout_ms = 700\nattempts = 1\n'
                 '[greylist]\nenabled = true\ndelay_secs = 2\n')
        nodes = cluster(tmp_path, postgres, redis, names=("a", "b"), extra=extra)
        for d, _ in nodes:
            cfg = d / "postern.toml"
            cfg.write_text(cfg.read_text().replace("[imap]\n", "[imap]\nmax_sessions_per_account = 2\n", 1))
        a, b = servers = start_all(nodes)
        try:
            msg = message("a@nowhere.test", "grey")
            code, text = send(a, "a@nowhere.test", msg)
            assert code == 451 and "4.7.1" in text, (code, text)
            time.sleep(2.2)
            code, text = send(b, "a@nowhere.test", msg)
            assert code == 250, text
            # the pass through b is known to a
            code, text = send(a, "a@nowhere.test", message("a@nowhere.test", "grey 2"))
            assert code == 250, text

            def session(node):
                m = imaplib.IMAP4_SSL("127.0.0.1", node.imaps, ssl_context=tls_client_context(), timeout=10)
                try:
                    m.login(ALICE, ALICE_PW)
                except imaplib.IMAP4.error as e:
                    m.shutdown()
                    return str(e)
                return m

            first, second = session(a), session(b)
            assert not isinstance(first, str) and not isinstance(second, str), (first, second)
            for node in (a, b):
                refused = session(node)
                assert isinstance(refused, str) and "LIMIT" in refused, refused
            # one ends: its seat is free again, for the other node too
            first.logout()
            deadline = time.time() + 3
            third = session(b)
            while isinstance(third, str) and time.time() < deadline:
                time.sleep(0.1)
                third = session(b)
            assert not isinstance(third, str), third
            second.logout()
            third.logout()
        finally:
            stop_all(servers)


class Sink:
    """An MX on loopback that accepts everything and keeps each message's Message-ID."""

    def __init__(self):
        self.port = free_port()
        self.ids = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def session(self, conn):
        f = conn.makefile("rb")
        conn.sendall(b"220 sink.dest.test ESMTP\r\n")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line[:4].upper()
                if cmd in (b"EHLO", b"HELO"):
                    conn.sendall(b"250-sink.dest.test\r\n250 PIPELINING\r\n")
                elif cmd == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    mid = None
                    while True:
                        l = f.readline()
                        if l in (b".\r\n", b""):
                            break
                        if mid is None and l.lower().startswith(b"message-id:"):
                            mid = l.split(b":", 1)[1].strip().decode()
                    with self.lock:
                        self.ids.append(mid)
                    conn.sendall(b"250 kept\r\n")
                elif cmd == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
        except OSError:
            return
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def test_queue_delivered_exactly_once_by_three_competing_nodes(tmp_path, postgres, redis, dns):
    sink = Sink()
    extra = f"""
[delivery]
enabled = true
dns_server = "127.0.0.1:{dns}"
mx_port = {sink.port}
retry_schedule_secs = [1]
"""
    nodes = cluster(tmp_path, postgres, redis, extra=extra)
    # 5,000 queued messages, written as the store writes them (a body row, the entry, its
    # recipient), before any node runs
    n = 5000
    now = int(time.time())
    with open_db(nodes[0][0], write=True) as db:
        with db.conn.cursor() as cur:
            for i in range(n):
                blob = uuid.uuid4().hex
                data = f"From: {ALICE}\r\nTo: x@dest.test\r\nMessage-ID: <q{i}@cluster.test>\r\nSubject: {i}\r\n\r\nbody {i}\r\n".encode()
                cur.execute("INSERT INTO bodies (id, data, created_at) VALUES (%s, %s, %s)", (blob, data, now))
                cur.execute("INSERT INTO queue (blob_id, size, sender, created_at, next_attempt_at) "
                            "VALUES (%s, %s, %s, %s, %s) RETURNING id", (blob, len(data), ALICE, now, now))
                qid = cur.fetchone()[0]
                cur.execute("INSERT INTO queue_recipients (queue_id, address) VALUES (%s, 'x@dest.test')", (qid,))
    servers = start_all(nodes)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            with open_db(nodes[0][0]) as db:
                left = db.execute("SELECT COUNT(*) FROM queue").fetchone()[0]
            if left == 0:
                break
            time.sleep(1)
        assert left == 0, f"{left} messages still queued"
        with sink.lock:
            ids = list(sink.ids)
        assert len(ids) == n, f"{len(ids)} deliveries for {n} messages"
        assert len(set(ids)) == n, f"{len(ids) - len(set(ids))} messages delivered twice"
        # the three nodes competed: each delivered a share, and no queue entry twice
        shares = [s.log().count('result="delivered"') for s in servers]
        assert sum(shares) == n and all(x > n // 10 for x in shares), shares
    finally:
        stop_all(servers)
        sink.close()


def haproxy_config(backend_ports, front, checks):
    """HAProxy in TCP mode in front of the nodes' `backend_ports`, PROXY v2 to each, health
    checked on its metrics listener's /health."""
    servers = "\n".join(f"    server n{i} 127.0.0.1:{p} send-proxy-v2 check port {checks[i]} inter 500 fall 1 rise 2"
                        for i, p in enumerate(backend_ports))
    return f"""global
    maxconn 2000
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 1s
    retries 3
    option redispatch
backend postern
    option httpchk GET /health
    http-check expect status 200
    balance roundrobin
{servers}
frontend front
    bind 127.0.0.1:{front}
    default_backend postern
"""


def start_haproxy(tmp_path, backend_ports, checks):
    """HAProxy ([`haproxy_config`]) on a free port: (its port, its process)."""
    front = free_port()
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(haproxy_config(backend_ports, front, checks))
    hap = subprocess.Popen([HAPROXY, "-db", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return front, hap


def proxied_nodes(tmp_path, postgres, redis, protocol, port):
    """Three nodes whose `protocol` listener (standard port `port`) takes PROXY v2 from
    127.0.0.1, each with a metrics listener for HAProxy's health checks: (nodes, metrics ports)."""
    metrics = [free_port() for _ in range(3)]
    nodes = []
    url = pg_database_on(postgres)
    for i, name in enumerate("abc"):
        (tmp_path / name).mkdir()
        if i > 0:
            (tmp_path / name / "data").mkdir()
            shutil.copy(nodes[0][0] / "master.key", tmp_path / name / "data" / "master.key")
        d, off = init_dir(tmp_path / name, with_users=(i == 0), database=url, toml_extra=FAST + f'''
[metrics]
listen = "127.0.0.1:{metrics[i]}"
[cluster]
redis = "redis://127.0.0.1:{redis.port}"
redis_password = "env:POSTERN_TEST_REDIS_PASSWORD"
node_name = "{name}"
''')
        cfg = d / "postern.toml"
        text = cfg.read_text()
        block = f'protocol = "{protocol}"\naddress = "127.0.0.1:{port + off}"\n'
        assert block in text
        cfg.write_text(text.replace(block, block + 'proxy_from = ["127.0.0.1/32"]\n'))
        nodes.append((d, off))
    return nodes, metrics


@pytest.mark.skipif(not (HAPROXY and HYDRA), reason="haproxy and hydra are installed by tests/run.sh")
def test_hydra_through_haproxy_over_three_nodes_meets_one_limit(tmp_path, postgres, redis):
    """hydra against the HAProxy address, its connections spread over three nodes: it finds
    nothing, the passwords verified are bounded by one per-address limit for the whole cluster
    (not one per node), and the attacker is banned on every node."""
    nodes, metrics = proxied_nodes(tmp_path, postgres, redis, "imaps", 993)
    servers = start_all(nodes)
    front, hap = start_haproxy(tmp_path, [s.imaps for s in servers], metrics)
    try:
        time.sleep(2)  # HAProxy's first checks
        # the owner logs in through HAProxy from her usual address first
        assert imap_login(front, BOB, BOB_PW, source="127.0.0.3") == "ok"
        out = hydra(tmp_path, "imap", front, timeout=60)
        assert BOB_PW not in out, out[-2000:]
        assert "1 valid password found" not in out
        with open_db(nodes[0][0]) as db:
            verified = db.execute("SELECT COUNT(*) FROM audit_log WHERE event = 'auth' AND ip = '127.0.0.1' "
                                  "AND reason IN ('bad_password', 'unknown_user')").fetchone()[0]
            bans = db.execute("SELECT COUNT(*) FROM audit_log WHERE event = 'ban' AND ip = '127.0.0.1'").fetchone()[0]
        # one per-address limit (10) for the cluster, plus what hydra had in flight
        assert 0 < verified <= 10 + 4, verified
        assert bans >= 1
        # the attempts went to every node (round robin through HAProxy)
        per_node = [sum(1 for line in s.log().splitlines()
                        if 'reason="bad_password"' in line and "ip=127.0.0.1 " in line) for s in servers]
        assert all(n > 0 for n in per_node), per_node
        # banned on every node: three connections through HAProxy (one to each node, round robin)
        # are closed before the login
        assert [imap_login(front, ALICE, ALICE_PW) for _ in servers] == ["closed"] * 3
        # bob is locked for unknown sources on every node, not for his own address
        assert [imap_login(front, BOB, BOB_PW, source="127.0.0.4") for _ in servers] == ["fail"] * 3
        assert [imap_login(front, BOB, BOB_PW, source="127.0.0.3") for _ in servers] == ["ok"] * 3
        print(f"hydra through HAProxy over three nodes: {verified} passwords verified in all, per node {per_node}")
    finally:
        hap.terminate()
        hap.wait(timeout=10)
        stop_all(servers)


@pytest.mark.skipif(not HAPROXY, reason="haproxy is installed by tests/run.sh")
def test_node_killed_under_smtp_load_loses_nothing_acknowledged(tmp_path, postgres, redis):
    nodes, metrics = proxied_nodes(tmp_path, postgres, redis, "smtp", 25)
    servers = start_all(nodes)
    front, hap = start_haproxy(tmp_path, [s.smtp for s in servers], metrics)
    acked, failed = [], []
    stop = threading.Event()

    def client(k):
        s = None
        i = 0
        while not stop.is_set():
            mid = f"<load{k}.{i}@client.test>"
            i += 1
            msg = f"From: {SENDER}\r\nTo: {ALICE}\r\nSubject: load\r\nMessage-ID: {mid}\r\n\r\nx\r\n"
            try:
                if s is None:
                    s = smtplib.SMTP("127.0.0.1", front, timeout=10)
                    s.ehlo("client.test")
                s.sendmail(SENDER, [ALICE], msg)
                acked.append(mid)
            except (smtplib.SMTPException, OSError):
                # not acknowledged: never sent again (a retry of a message whose 250 was lost
                # would be a legitimate duplicate); reconnect through HAProxy
                failed.append(mid)
                try:
                    s.close()
                except Exception:
                    pass
                s = None
                time.sleep(0.05)
        if s is not None:
            try:
                s.quit()
            except Exception:
                pass

    try:
        time.sleep(2)  # HAProxy's first checks
        threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        time.sleep(4)
        before_kill = len(acked)
        servers[1].proc.send_signal(signal.SIGKILL)
        servers[1].proc.wait(timeout=10)
        time.sleep(6)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        after_kill = len(acked) - before_kill
        assert before_kill > 20 and after_kill > 20, (before_kill, after_kill, len(failed))
        with open_db(nodes[0][0]) as db:
            rows = db.execute(
                "SELECT b.data FROM messages m JOIN mailboxes x ON x.id = m.mailbox_id "
                "JOIN accounts a ON a.id = x.account_id JOIN bodies b ON b.id = m.blob_id "
                "WHERE a.address = ? AND x.name = 'INBOX'", (ALICE,)).fetchall()
        stored = {}
        for (data,) in rows:
            data = bytes(data)
            for line in data.split(b"\r\n"):
                if line.lower().startswith(b"message-id:"):
                    mid = line.split(b":", 1)[1].strip().decode()
                    stored[mid] = stored.get(mid, 0) + 1
        missing = [m for m in acked if stored.get(m, 0) != 1]
        assert not missing, f"{len(missing)} acknowledged messages not stored exactly once: {missing[:5]}"
        assert all(stored.get(m, 0) <= 1 for m in failed)
        print(f"acknowledged {before_kill} before the kill and {after_kill} after; {len(failed)} not "
              f"acknowledged ({sum(stored.get(m, 0) for m in failed)} of them stored anyway)")
    finally:
        stop.set()
        hap.terminate()
        hap.wait(timeout=10)
        stop_all([s for i, s in enumerate(servers) if i != 1])


class Load:
    """Messages for alice sent one after the other to a node's port 25, each on its own
    connection; what each got: acknowledged (250), a temporary failure (4xx), a permanent one."""

    def __init__(self, port):
        self.port = port
        self.acked, self.temp, self.perm, self.conn_failed = [], [], [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        i = 0
        while not self.stop.is_set():
            mid = f"<pgload{i}@client.test>"
            i += 1
            msg = f"From: {SENDER}\r\nTo: {ALICE}\r\nSubject: load\r\nMessage-ID: {mid}\r\n\r\nx\r\n"
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=15) as s:
                    s.ehlo("client.test")
                    s.sendmail(SENDER, [ALICE], msg)
                self.acked.append(mid)
            except smtplib.SMTPResponseException as e:
                (self.temp if 400 <= e.smtp_code < 500 else self.perm).append((mid, e.smtp_code))
                time.sleep(0.05)
            except smtplib.SMTPRecipientsRefused as e:
                code = list(e.recipients.values())[0][0]
                (self.temp if 400 <= code < 500 else self.perm).append((mid, code))
                time.sleep(0.05)
            except (smtplib.SMTPException, OSError):
                self.conn_failed += 1
                time.sleep(0.05)

    def finish(self):
        self.stop.set()
        self.thread.join(timeout=30)


def stored_message_ids(datadir, account=ALICE):
    with open_db(datadir) as db:
        rows = db.execute(
            "SELECT b.data FROM messages m JOIN mailboxes x ON x.id = m.mailbox_id "
            "JOIN accounts a ON a.id = x.account_id JOIN bodies b ON b.id = m.blob_id "
            "WHERE a.address = ?", (account,)).fetchall()
    out = {}
    for (data,) in rows:
        for line in bytes(data).split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                mid = line.split(b":", 1)[1].strip().decode()
                out[mid] = out.get(mid, 0) + 1
                break
    return out


def health(port):
    import json
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_postgres_restarted_under_load(tmp_path, redis):
    """PostgreSQL stops for a few seconds under SMTP load: new mail gets temporary failures,
    nothing acknowledged is lost, /health says the database is down, and the node serves again
    once it is back, without a restart."""
    pgdir = pg_dir()
    out = subprocess.run(["bash", str(ROOT / "tests" / "pg.sh"), "start", str(pgdir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    try:
        metrics = free_port()
        nodes = cluster(tmp_path, out.stdout.strip(), redis, names=("a",),
                        extra=f'\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n')
        (a,) = start_all(nodes)
        try:
            load = Load(a.smtp)
            time.sleep(3)
            before = len(load.acked)
            subprocess.run(["bash", str(ROOT / "tests" / "pg.sh"), "down", str(pgdir)], check=True, timeout=60)
            time.sleep(1)
            code, h = health(metrics)
            assert code == 503 and h["database"] != "ok", h
            time.sleep(6)
            during = len(load.acked)
            subprocess.run(["bash", str(ROOT / "tests" / "pg.sh"), "up", str(pgdir)], check=True, timeout=60)
            # back without a restart: acknowledged again within a few seconds
            deadline = time.time() + 20
            while time.time() < deadline and len(load.acked) < during + 20:
                time.sleep(0.2)
            load.finish()
            assert a.proc.poll() is None, "the node exited"
            assert before > 10, before
            assert len(load.acked) >= during + 20, (before, during, len(load.acked), load.temp[-3:], load.conn_failed)
            assert load.temp, "no temporary failure while the database was down"
            assert not load.perm, f"permanent failures: {load.perm[:5]}"
            assert health(metrics)[0] == 200
            stored = stored_message_ids(nodes[0][0])
            lost = [m for m in load.acked if stored.get(m) != 1]
            assert not lost, f"{len(lost)} acknowledged messages not stored exactly once"
            assert all(stored.get(m, 0) == 0 for m, _ in load.temp), "a message refused with 4xx was stored"
            print(f"acknowledged {len(load.acked)} ({during - before} while the database was going down), "
                  f"{len(load.temp)} temporary failures, {load.conn_failed} connection errors")
        finally:
            stop_all([a])
    finally:
        subprocess.run(["bash", str(ROOT / "tests" / "pg.sh"), "stop", str(pgdir)], capture_output=True, timeout=120)
        shutil.rmtree(pgdir, ignore_errors=True)


def test_redis_stopped_and_restarted_under_load(tmp_path, postgres, redis):
    """Redis stops under load: logins and deliveries go on (each node on its own counters and
    bans), a change made through one node is seen on the other at its next command; once Redis
    is back, IDLE on one node is woken by a delivery through the other again."""
    nodes = cluster(tmp_path, postgres, redis, names=("a", "b"))
    a, b = servers = start_all(nodes)
    try:
        load = Load(b.smtp)
        time.sleep(2)
        redis.stop()
        time.sleep(1)
        n = len(load.acked)
        assert imap_login(a.imaps, BOB, BOB_PW) == "ok"
        time.sleep(2)
        assert len(load.acked) > n + 5, "deliveries stopped with Redis"
        import imaplib
        m = imaplib.IMAP4_SSL("127.0.0.1", a.imaps, ssl_context=tls_client_context(), timeout=10)
        m.login(ALICE, ALICE_PW)
        typ, data = m.select("INBOX")
        assert int(data[0]) >= n, (data, n)
        m.logout()
        redis.start()
        time.sleep(2)  # the nodes reconnect and resubscribe
        load.finish()
        assert not load.perm and not load.temp, (load.perm[:3], load.temp[:3])
        # IDLE wake-up across nodes works again
        s, f = idle_session(a.imaps)
        time.sleep(0.3)
        t0 = time.time()
        inbound(b.smtp, ALICE, "after redis came back")
        s.settimeout(5)
        line = f.readline()
        assert b"EXISTS" in line and time.time() - t0 < 1.0, (line, time.time() - t0)
        s.close()
        stored = stored_message_ids(nodes[0][0])
        assert all(stored.get(m) == 1 for m in load.acked)
    finally:
        stop_all(servers)
