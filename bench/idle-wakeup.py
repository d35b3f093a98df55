#!/usr/bin/env python3
"""IDLE wake-up across nodes: two Postern nodes on one PostgreSQL and one Redis.

An IMAPS session of alice idles on node A; N times, a message for alice is delivered through node
B's port 25 and the time is taken from the client's end of DATA until A's session announces the
new message (`* N EXISTS`). The figure includes B's durable commit (the 250) and the hop through
Redis. Prints p50, p90, p99 and max in milliseconds. Everything shares this machine's cores.

  POSTERN_BIN=target/release/postern python3 bench/idle-wakeup.py [N]
"""
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import ALICE  # noqa: E402
import test_cluster  # noqa: E402
from test_cluster_bans import PASSWORD, Redis  # noqa: E402


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    os.environ["POSTERN_TEST_REDIS_PASSWORD"] = PASSWORD
    tmp = Path(tempfile.mkdtemp(prefix="idle-wakeup-"))
    os.chmod(tmp, 0o755)  # a private PostgreSQL below runs as the postgres user
    pg = os.environ.get("POSTERN_TEST_PG")
    if not pg:
        out = subprocess.run(["bash", str(ROOT / "tests" / "pg.sh"), "start", str(tmp / "pg")],
                             capture_output=True, text=True, check=True)
        pg = out.stdout.strip()
    redis = Redis(tmp)
    redis.start()
    nodes = test_cluster.cluster(tmp, pg, redis, names=("a", "b"))
    a, b = test_cluster.start_all(nodes)
    try:
        s, f = test_cluster.idle_session(a.imaps)
        smtp = smtplib.SMTP("127.0.0.1", b.smtp, timeout=20)
        smtp.ehlo("client.test")
        times = []
        for i in range(n):
            msg = f"From: someone@remote.test\r\nTo: {ALICE}\r\nSubject: wake {i}\r\n\r\nx\r\n"
            smtp.mail("someone@remote.test")
            smtp.rcpt(ALICE)
            t0 = time.perf_counter()
            code, _ = smtp.data(msg)
            assert code == 250
            while True:
                line = f.readline()
                if b"EXISTS" in line:
                    break
                assert line, "IDLE session closed"
            times.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
        smtp.quit()
        s.sendall(b"DONE\r\n")
        s.close()
        times.sort()
        q = statistics.quantiles(times, n=100, method="inclusive")
        print(f"IDLE wake-up on A after a delivery through B, over {n} messages (ms): p50 {statistics.median(times):.1f}  "
              f"p90 {q[89]:.1f}  p99 {q[98]:.1f}  max {times[-1]:.1f}")
    finally:
        a.stop()
        b.stop()
        redis.stop()
        if not os.environ.get("POSTERN_TEST_PG"):
            subprocess.run(["bash", str(ROOT / "tests" / "pg.sh"), "stop", str(tmp / "pg")], capture_output=True)


if __name__ == "__main__":
    main()
