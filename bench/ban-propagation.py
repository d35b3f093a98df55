#!/usr/bin/env python3
"""Ban propagation between two Postern nodes sharing bans through Redis ([cluster] redis).

Starts Redis (Debian's redis-server) and two nodes on loopback, then N times: bans a fresh
127.0.5.x on node A through the admin API and times from the request until node B refuses an
IMAPS connection from that address (polled every 5 ms after the API's answer; the request itself,
HTTPS and the audited ban included, is part of the figure). Prints p50, p90,
p99 and max in milliseconds. The nodes share this machine's cores with the client.

  POSTERN_BIN=target/release/postern python3 bench/ban-propagation.py [N]
"""
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import init_dir, start  # noqa: E402
from test_admin_api import Api, create_admin, first_login  # noqa: E402
from test_cluster_bans import PASSWORD, Redis, node  # noqa: E402

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def refused(port, source):
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source, 0))
    except OSError:
        return True
    try:
        s = CTX.wrap_socket(raw)
        line = s.recv(100)
        s.close()
        return not line
    except OSError:
        return True


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    os.environ["POSTERN_TEST_REDIS_PASSWORD"] = PASSWORD
    tmp = Path(tempfile.mkdtemp(prefix="ban-prop-"))
    redis = Redis(tmp)
    redis.start()
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    da, oa = node(tmp, "a", redis)
    db, ob = node(tmp, "b", redis)
    a, b = start(da, oa), start(db, ob)
    try:
        boot = create_admin(a, "bootstrap")
        api = Api(a)
        token, _, _ = first_login(api, "admin", boot["password"])
        times = []
        for i in range(n):
            ip = f"127.0.5.{10 + i}"
            assert not refused(b.imaps, ip)
            t0 = time.perf_counter()
            code, r = api.call("POST", "/bans", {"target": ip, "duration_secs": 600}, token=token)
            assert code == 201, r
            while not refused(b.imaps, ip):
                if time.perf_counter() - t0 > 5:
                    raise SystemExit(f"{ip} not refused by node B after 5 s")
                time.sleep(0.005)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        q = statistics.quantiles(times, n=100, method="inclusive")
        print(f"ban propagation A -> B over {n} bans (ms): p50 {statistics.median(times):.1f}  "
              f"p90 {q[89]:.1f}  p99 {q[98]:.1f}  max {times[-1]:.1f}")
    finally:
        a.stop()
        b.stop()
        redis.stop()


if __name__ == "__main__":
    main()
