"""Postern behind HAProxy (Debian's haproxy, on loopback) with contrib/haproxy/haproxy.cfg:
IMAPS, submissions and SMTP forwarded in TCP mode with PROXY protocol v2 (TLS stays end to end),
so the audit log and bans see the client's own address, not the proxy's; HAProxy's health
checks read the node's GET /health ([metrics] listen) and take a stopped node out."""
import json
import re
import shutil
import smtplib
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ALICE, BOB, BOB_PW, ROOT, free_port, init_dir, start, tls_client_context
from test_defence import imap_login

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
pytestmark = pytest.mark.skipif(not HAPROXY, reason="haproxy is installed by tests/run.sh")


def haproxy_config(node_ports, front_ports, metrics, stats):
    """contrib/haproxy/haproxy.cfg with loopback addresses and ports (and a stats page)."""
    text = (ROOT / "contrib" / "haproxy" / "haproxy.cfg").read_text()
    text = text.replace("log stdout format raw local0", "log stderr format raw local0")
    text = text.replace("check port 9100", f"check port {metrics}")
    for name, port in node_ports.items():
        text = re.sub(rf"server node1 10\.0\.0\.11:{port['std']}\b", f"server node1 127.0.0.1:{port['ours']}", text)
    for std, ours in front_ports.items():
        text = re.sub(rf"bind :{std}\n", f"bind 127.0.0.1:{ours}\n", text)
    text += f"\nfrontend stats\n    mode http\n    bind 127.0.0.1:{stats}\n    stats enable\n    stats uri /stats\n"
    assert "10.0.0.11" not in text.replace("# server node2 10.0.0.12", ""), text
    return text


def backend_status(stats):
    with urllib.request.urlopen(f"http://127.0.0.1:{stats}/stats;csv", timeout=5) as r:
        rows = r.read().decode().splitlines()
    head = rows[0].lstrip("# ").split(",")
    out = {}
    for line in rows[1:]:
        f = dict(zip(head, line.split(",")))
        if f.get("svname") == "node1":
            out[f["pxname"]] = f["status"]
    return out


def wait_status(stats, want, timeout=15):
    deadline = time.time() + timeout
    s = None
    while time.time() < deadline:
        try:
            s = backend_status(stats)
        except OSError:  # HAProxy still starting
            s = None
        if s and all(v.startswith(want) for v in s.values()):
            return s
        time.sleep(0.3)
    raise AssertionError(s)


def test_behind_haproxy_with_proxy_protocol_and_health_checks(tmp_path):
    d, off = init_dir(tmp_path)
    cfg = d / "postern.toml"
    text = cfg.read_text()
    std = {"smtp": 25, "submissions": 465, "submission": 587, "imaps": 993, "imap": 143, "pop3s": 995}
    for proto, p in std.items():
        block = f'protocol = "{proto}"\naddress = "127.0.0.1:{p + off}"\n'
        assert block in text, proto
        text = text.replace(block, block + 'proxy_from = ["127.0.0.1/32"]\n')
    metrics = free_port()
    text += f'\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
    cfg.write_text(text)
    srv = start(d, off)
    fronts = {p: free_port() for p in std.values()}
    stats = free_port()
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(haproxy_config({k: {"std": v, "ours": v + off} for k, v in std.items()}, fronts, metrics, stats))
    check = subprocess.run([HAPROXY, "-c", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    hap_log = open(tmp_path / "haproxy.log", "w")
    hap = subprocess.Popen([HAPROXY, "-db", "-f", str(conf)], stdout=hap_log, stderr=subprocess.STDOUT)
    try:
        # the node's health, as HAProxy reads it
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/health", timeout=5) as r:
            h = json.loads(r.read())
            assert r.status == 200 and h["status"] == "ok" and h["database"] == "ok", h
        wait_status(stats, "UP")
        # IMAPS through HAProxy from 127.0.0.9: TLS end to end, Postern sees 127.0.0.9
        assert imap_login(fronts[993], BOB, BOB_PW, source="127.0.0.9") == "ok"
        # submissions through HAProxy: the message is accepted and delivered
        raw = socket.create_connection(("127.0.0.1", fronts[465]), timeout=10, source_address=("127.0.0.10", 0))
        s = smtplib.SMTP_SSL(context=tls_client_context(), timeout=10)
        s.sock = tls_client_context().wrap_socket(raw, server_hostname="127.0.0.1")
        s.file = None
        code, _ = s.getreply()
        assert code == 220
        s.ehlo("client.test")
        s.login(BOB, BOB_PW)
        s.sendmail(BOB, [ALICE], f"From: {BOB}\r\nTo: {ALICE}\r\nSubject: via haproxy\r\n\r\nhello\r\n")
        s.quit()
        time.sleep(0.5)
        logins = srv.cli("user", "logins", BOB).stdout
        assert "127.0.0.9" in logins and "127.0.0.10" in logins, logins
        # a direct connection (no PROXY header) is not served
        direct = socket.create_connection(("127.0.0.1", 25 + off), timeout=10)
        direct.sendall(b"EHLO direct\r\n")
        direct.settimeout(12)
        try:
            answer = direct.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b"", "a connection without the PROXY header got an answer"
        direct.close()
        # the node stops: HAProxy's checks take it out (and its health endpoint is gone)
        assert srv.stop() == 0
        wait_status(stats, "DOWN")
        assert imap_login(fronts[993], BOB, BOB_PW, source="127.0.0.9") in ("closed", "refused")
        # back: in again
        srv = start(d, off)
        wait_status(stats, "UP")
        assert imap_login(fronts[993], BOB, BOB_PW, source="127.0.0.9") == "ok"
    finally:
        hap.terminate()
        try:
            hap.wait(timeout=10)
        except subprocess.TimeoutExpired:
            hap.kill()
        if srv.proc.poll() is None:
            srv.stop()
