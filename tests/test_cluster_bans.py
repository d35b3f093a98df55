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
    def __init__(self, tmp_path):
        self.port = free_port()
        self.dir = tmp_path / "redis"
        self.dir.mkdir(exist_ok=True)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS, "--bind", "127.0.0.1", "--port", str(self.port), "--requirepass", PASSWORD,
             "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            p = subprocess.run(["redis-cli", "-p", str(self.port), "-a", PASSWORD, "--no-auth-warning", "ping"],
                               capture_output=True, text=True)
            if "PONG" in p.stdout:
                return
            time.sleep(0.1)
        raise AssertionError("redis did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), "-a", PASSWORD, "--no-auth-warning", *args],
                              capture_output=True, text=True).stdout


def node(tmp_path, name, redis):
    d, off = init_dir(tmp_path / name, toml_extra=FAST + f'''
[cluster]
redis = "redis://127.0.0.1:{redis.port}"
redis_password = "env:POSTERN_TEST_REDIS_PASSWORD"
node_name = "{name}"
''')
    return d, off


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
