"""[cluster] redis: two Postern nodes (each its own data directory) share their bans through one
Redis (Debian's redis-server, started here on loopback with a password). A ban made on one node
— by the CLI or by the guard after a brute-force run — is refused by the other within a second,
a lift is lifted everywhere; with Redis stopped the nodes keep serving on their own bans, and a
ban made meanwhile reaches the other node once Redis is back."""
import os
import shutil
import subprocess
import time

import pytest

from conftest import ALICE, ALICE_PW, BOB, BOB_PW, free_port, init_dir, start
from test_defence import FAST, imap_login

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(not REDIS, reason="redis-server is installed by tests/run.sh")
PASSWORD = "cluster-test-redis-pw-7731"


class Redis:
    """Debian's redis-server on loopback with a password; with `tls` (a directory holding ca.pem,
    redis.pem and redis.key), on TLS only (no plain port)."""

    def __init__(self, tmp_path, tls=None):
        self.port = free_port()
        self.dir = tmp_path / "redis"
        self.dir.mkdir(exist_ok=True)
        self.proc = None
        self.tls = tls
        self.cli_tls = ["--tls", "--cacert", str(tls / "ca.pem")] if tls else []

    def start(self):
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls / "redis.pem"),
                     "--tls-key-file", str(self.tls / "redis.key"), "--tls-ca-cert-file", str(self.tls / "ca.pem"),
                     "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(
            [REDIS, "--bind", "127.0.0.1", *ports, "--requirepass", PASSWORD,
             "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            p = subprocess.run(["redis-cli", *self.cli_tls, "-p", str(self.port), "-a", PASSWORD, "--no-auth-warning",
                                "ping"], capture_output=True, text=True)
            if "PONG" in p.stdout:
                return
            time.sleep(0.1)
        raise AssertionError("redis did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def cli(self, *args):
        return subprocess.run(["redis-cli", *self.cli_tls, "-p", str(self.port), "-a", PASSWORD, "--no-auth-warning",
                               *args],
                              capture_output=True, text=True).stdout


def node(tmp_path, name, redis, extra=""):
    scheme = "rediss" if redis.tls else "redis"
    d, off = init_dir(tmp_path / name, toml_extra=FAST + f'''
[cluster]
redis = "{scheme}://127.0.0.1:{redis.port}"
redis_password = "env:POSTERN_TEST_REDIS_PASSWORD"
node_name = "{name}"
{extra}''')
    return d, off


def tls_files(d):
    """A private CA and a certificate for 127.0.0.1 it signed (openssl): ca.pem, redis.pem, redis.key."""
    d.mkdir()

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=cluster test CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "redis.key",
            "-out", "redis.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "redis.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", "redis.pem", "-extfile", "san.ext")
    (d / "redis.key").chmod(0o644)
    return d


def refused_within(port, source, secs=1.0):
    """Whether an IMAPS login from `source` is refused (banned) within `secs`; the time it took."""
    t0 = time.time()
    while True:
        r = imap_login(port, BOB, BOB_PW, source=source, timeout=5)
        if r in ("closed", "refused"):
            return True, time.time() - t0
        if time.time() - t0 > secs:
            return False, time.time() - t0
        time.sleep(0.05)


def test_bans_are_shared_between_nodes(tmp_path):
    os.environ["POSTERN_TEST_REDIS_PASSWORD"] = PASSWORD
    redis = Redis(tmp_path)
    redis.start()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    da, oa = node(tmp_path, "a", redis)
    db, ob = node(tmp_path, "b", redis)
    a = start(da, oa)
    b = start(db, ob)
    try:
        # a ban added on node A by the CLI is refused by node B within a second
        assert imap_login(b.imaps, BOB, BOB_PW, source="127.0.4.1") == "ok"
        a.cli("ban", "add", "127.0.4.1", "--for", "1h", "--reason", "seen on a")
        ok, took = refused_within(b.imaps, "127.0.4.1")
        assert ok, f"node B still served 127.0.4.1 after {took:.2f} s"
        assert "127.0.4.1" in redis.cli("hkeys", "postern:bans")
        assert imap_login(b.imaps, BOB, BOB_PW, source="127.0.4.2") == "ok"
        # the guard's own ban: a brute-force run on node B, refused by node A
        for i in range(40):
            r = imap_login(b.imaps, BOB, f"guess-{i}-Wrong", source="127.0.4.3", timeout=10)
            if r in ("closed", "refused"):
                break
        assert r in ("closed", "refused"), r
        ok, took = refused_within(a.imaps, "127.0.4.3")
        assert ok, f"node A still served 127.0.4.3 after {took:.2f} s"
        # lifted on B (the other node's ban): served again on A and B
        b.cli("ban", "remove", "127.0.4.1")
        time.sleep(1.0)
        assert imap_login(a.imaps, BOB, BOB_PW, source="127.0.4.1") in ("ok", "fail")
        assert imap_login(b.imaps, BOB, BOB_PW, source="127.0.4.1") in ("ok", "fail")
        assert "127.0.4.1" not in redis.cli("hkeys", "postern:bans")
        # no secret in Redis: addresses, reasons and node names only
        dump = redis.cli("hgetall", "postern:bans")
        assert BOB_PW not in dump and "guess-" not in dump
        # Redis stops: both nodes keep serving; a ban made on A meanwhile applies on A...
        redis.stop()
        assert imap_login(a.imaps, BOB, BOB_PW, source="127.0.4.5") == "ok"
        assert imap_login(b.imaps, BOB, BOB_PW, source="127.0.4.2") == "ok"  # a known client: BOB is locked for others after the run on B
        a.cli("ban", "add", "127.0.4.7", "--for", "1h")
        ok, took = refused_within(a.imaps, "127.0.4.7", secs=4)
        assert ok, "node A lost its own ban while Redis was down"
        assert imap_login(b.imaps, BOB, BOB_PW, source="127.0.4.2") == "ok"
        assert imap_login(b.imaps, ALICE, ALICE_PW, source="127.0.4.7") == "ok"
        # ... and reaches B once Redis is back
        redis.start()
        ok, took = refused_within(b.imaps, "127.0.4.7", secs=8)
        assert ok, f"the ban made during the outage did not reach node B ({took:.1f} s)"
        assert "127.0.4.7" in redis.cli("hkeys", "postern:bans")
    finally:
        for n in (a, b):
            if n.proc.poll() is None:
                n.stop()
        if redis.proc.poll() is None:
            redis.stop()


def test_bans_are_shared_over_tls_with_a_private_ca(tmp_path):
    """rediss:// with [cluster] redis_ca: the nodes talk to Redis over TLS only (it has no plain
    port) and share bans; a node that does not trust the CA (the system's store) is kept off
    Redis (certificate verified, an alert logged) and serves on its own."""
    os.environ["POSTERN_TEST_REDIS_PASSWORD"] = PASSWORD
    tls = tls_files(tmp_path / "tls")
    redis = Redis(tmp_path, tls=tls)
    redis.start()
    ca = f'redis_ca = "{tls / "ca.pem"}"\n'
    da, oa = node(tmp_path, "a", redis, ca)
    db, ob = node(tmp_path, "b", redis, ca)
    dc, oc = node(tmp_path, "c", redis)
    a, b, c = start(da, oa), start(db, ob), start(dc, oc)
    try:
        a.cli("ban", "add", "127.0.0.66/32", "--reason", "over tls")
        ok, took = refused_within(b.imaps, "127.0.0.66", secs=1.0)
        assert ok, f"not refused by b {took:.2f} s after the ban on a"
        assert "127.0.0.66" in redis.cli("HKEYS", "postern:bans")
        # the node without the CA never got through: its alert says why, and it did not get the ban
        deadline = time.time() + 5
        while time.time() < deadline and "cluster_redis_down" not in c.log():
            time.sleep(0.1)
        assert "cluster_redis_down" in c.log() and "UnknownIssuer" in c.log(), c.log()[-2000:]
        assert imap_login(c.imaps, ALICE, ALICE_PW, source="127.0.0.66") == "ok"
    finally:
        for s in (a, b, c):
            s.stop()
        redis.stop()
