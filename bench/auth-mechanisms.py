#!/usr/bin/env python3
"""What each login mechanism costs: sequential IMAPS logins (connect + TLS + authenticate +
LOGOUT) against a Postern it starts on loopback, per mechanism, in rounds; prints the median and
the spread (min-max of the round medians) of one login, in ms, and the server's CPU time per
login.

Mechanisms: PLAIN with the account password (argon2id; the first login of each round after a
restart pays it, the rest hit the verified-credential cache), PLAIN with an app password
(SHA-256), SCRAM-SHA-256 and SCRAM-SHA-256-PLUS with an app password (client side: Python's
scramp, PBKDF2 4096..10000 iterations on the client), EXTERNAL with a client certificate.

    python3 bench/auth-mechanisms.py [--logins 200] [--rounds 3]
    POSTERN_BIN=target/release/postern python3 bench/auth-mechanisms.py
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import imaplib  # noqa: E402
import socket  # noqa: E402

import scramp  # noqa: E402

from conftest import BOB, BOB_PW, init_dir, start, tls_client_context  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--logins", type=int, default=200)
ap.add_argument("--rounds", type=int, default=3)
a = ap.parse_args()


class Imap(imaplib.IMAP4_SSL):
    """imaplib with TCP_NODELAY: it sends a continuation line and its CRLF in two writes, and
    Nagle plus the server's delayed ACK would add 40 ms per SASL round trip."""

    def _create_socket(self, timeout):
        s = super()._create_socket(timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


class Scram:
    def __init__(self, pw, mech, cb=None):
        self.c = scramp.ScramClient([mech], BOB, pw, channel_binding=cb)
        self.step = 0

    def __call__(self, ch):
        self.step += 1
        if self.step == 1:
            return self.c.get_client_first()
        if self.step == 2:
            self.c.set_server_first(ch.decode())
            return self.c.get_client_final()
        self.c.set_server_final(ch.decode())
        return ""


def cpu_ms(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def main():
    tmp = Path(tempfile.mkdtemp(prefix="postern-bench-auth-"))
    d, off = init_dir(tmp)
    srv = start(d, off)
    try:
        app = json.loads(srv.cli("app-password", "create", BOB, "--name", "bench", "--json").stdout)["secret"]
        key, cert = tmp / "c.key", tmp / "c.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=bench"],
                       check=True, capture_output=True)
        srv.cli("user", "cert", "add", BOB, str(cert), "--name", "bench")
        plain_ctx = tls_client_context()
        cert_ctx = tls_client_context()
        cert_ctx.load_cert_chain(str(cert), str(key))

        def plain(pw):
            def login():
                m = Imap("127.0.0.1", srv.imaps, ssl_context=plain_ctx, timeout=10)
                m.login(BOB, pw)
                m.logout()
            return login

        def scram(plus):
            def login():
                m = Imap("127.0.0.1", srv.imaps, ssl_context=plain_ctx, timeout=10)
                mech = "SCRAM-SHA-256-PLUS" if plus else "SCRAM-SHA-256"
                m.authenticate(mech, Scram(app, mech, ("tls-server-end-point", m.sock) if plus else None))
                m.logout()
            return login

        def external():
            m = Imap("127.0.0.1", srv.imaps, ssl_context=cert_ctx, timeout=10)
            m.authenticate("EXTERNAL", lambda _: "")
            m.logout()

        cases = [("PLAIN, account password (cached after the first)", plain(BOB_PW)),
                 ("PLAIN, app password", plain(app)),
                 ("SCRAM-SHA-256, app password", scram(False)),
                 ("SCRAM-SHA-256-PLUS, app password", scram(True)),
                 ("EXTERNAL, client certificate", external)]
        results = {}
        for name, login in cases:
            medians, cpus = [], []
            for _ in range(a.rounds):
                lat = []
                c0 = cpu_ms(srv.proc.pid)
                for _ in range(a.logins):
                    t0 = time.perf_counter()
                    login()
                    lat.append((time.perf_counter() - t0) * 1000)
                cpus.append((cpu_ms(srv.proc.pid) - c0) / a.logins)
                medians.append(statistics.median(lat))
            results[name] = {
                "login_ms_median": round(statistics.median(medians), 2),
                "login_ms_spread": [round(min(medians), 2), round(max(medians), 2)],
                "server_cpu_ms_per_login": round(statistics.median(cpus), 3),
            }
        print(json.dumps({"logins_per_round": a.logins, "rounds": a.rounds, "results": results}, indent=1))
    finally:
        srv.stop()


main()
