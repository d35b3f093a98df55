#!/usr/bin/env python3
"""Legitimate login latency: one client logging in over IMAPS from a fixed loopback source
address, every INTERVAL seconds for SECONDS; prints JSON (p50/p99 of connect+TLS+LOGIN, failures)."""
import argparse
import json
import socket
import ssl
import time

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--user", required=True)
ap.add_argument("--password", required=True)
ap.add_argument("--source", default="127.0.0.50")
ap.add_argument("--seconds", type=float, default=20)
ap.add_argument("--interval", type=float, default=0.2)
a = ap.parse_args()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
lat, fails = [], 0
end = time.time() + a.seconds
while time.time() < end:
    t0 = time.perf_counter()
    try:
        raw = socket.create_connection(("127.0.0.1", a.port), timeout=10, source_address=(a.source, 0))
        s = ctx.wrap_socket(raw)
        f = s.makefile("rb")
        f.readline()
        s.sendall(f'a LOGIN "{a.user}" "{a.password}"\r\n'.encode())
        line = f.readline()
        ok = line.startswith(b"a OK")
        s.sendall(b"b LOGOUT\r\n")
        s.close()
    except OSError:
        ok = False
    if ok:
        lat.append(time.perf_counter() - t0)
    else:
        fails += 1
    time.sleep(a.interval)
lat.sort()
pct = lambda p: round(lat[min(len(lat) - 1, int(len(lat) * p))] * 1000, 1) if lat else None
print(json.dumps({"logins": len(lat), "failures": fails, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}))
