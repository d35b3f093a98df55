"""Prometheus metrics: the plain-HTTP `[metrics] listen` endpoint and `/metrics` on the admin
listener (HTTPS, an administrator allowed to read the audit log). Counters move with real
traffic (IMAP logins, port-25 messages and refusals, open connections), labels never carry an
account name or an address, and the exposition is valid OpenMetrics text."""
import imaplib
import json
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import ALICE, ALICE_PW, BOB, ROOT, free_port, tls_client_context, wait_port
from test_admin_api import create_admin, first_login


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        return r.read().decode()


def value(text, name, **labels):
    """The sample of `name` whose labels include `labels` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, v = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{want}"' in head for k, want in labels.items()):
            total += float(v)
    return total


def test_metrics_follow_real_traffic(make_server):
    port = free_port()
    srv = make_server(toml_extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    wait_port(port, srv.proc)
    before = scrape(port)
    assert value(before, "postern_auth_attempts_total", protocol="imap", result="failure") == 0
    assert 'postern_build_info{version="' in before and "commit=" in before
    assert before.rstrip().endswith("# EOF")
    # two wrong passwords and a right one over IMAPS; an IMAP connection stays open
    for pw in ("wrong-password-1", "wrong-password-2"):
        with imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context()) as m:
            try:
                m.login(ALICE, pw)
            except imaplib.IMAP4.error:
                pass
    open_session = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context())
    open_session.login(ALICE, ALICE_PW)
    # port 25: a message accepted, and our own domain spoofed from a stranger refused
    with smtplib.SMTP("127.0.0.1", srv.smtp, timeout=20) as s:
        s.sendmail("someone@remote.test", [ALICE], "From: someone@remote.test\r\nSubject: m\r\n\r\nx\r\n")
    s = smtplib.SMTP(timeout=20, source_address=("127.0.0.2", 0))
    s.connect("127.0.0.1", srv.smtp)
    s.ehlo("client.test")
    s.mail(BOB)
    s.rcpt(ALICE)
    code, _ = s.data(f"From: {BOB}\r\nSubject: spoof\r\n\r\nx\r\n")
    s.quit()
    assert code == 550
    time.sleep(2.5)  # the gauges are refreshed every 2 s
    text = scrape(port)
    assert value(text, "postern_auth_attempts_total", protocol="imap", result="failure") == 2
    assert value(text, "postern_auth_attempts_total", protocol="imap", result="success") == 1
    assert value(text, "postern_connections_active", protocol="imaps") >= 1
    assert value(text, "postern_messages_received_total", listener="smtp", result="accepted") == 1
    assert value(text, "postern_messages_received_total", listener="smtp", result="rejected") == 1
    assert value(text, "postern_inbound_checks_total", check="own_domain", result="reject") == 1
    assert value(text, "postern_inbound_checks_total", check="spf") >= 2
    assert value(text, "postern_argon2_seconds_count") >= 3
    assert value(text, "postern_tls_cert_expiry_seconds") > 86400
    # no account name or address is ever a label
    for secret in ("alice", "bob", "example.test", "127.0.0."):
        assert secret not in text, secret
    open_session.logout()

    # the admin listener: an authenticated administrator only
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    url = f"https://127.0.0.1:{srv.admin}/metrics"
    try:
        urllib.request.urlopen(url, context=ctx, timeout=10)
        raise AssertionError("metrics without credentials")
    except urllib.error.HTTPError as e:
        assert e.code == 401

    class Shim:
        def call(self, method, path, body=None, token=None):
            req = urllib.request.Request(f"https://127.0.0.1:{srv.admin}/api/v1{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode())
            req.add_header("Content-Type", "application/json")
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
                    raw = r.read()
                    return r.status, json.loads(raw) if raw else None
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read() or b"null")

    boot = create_admin(srv, "bootstrap")
    token, _, _ = first_login(Shim(), "admin", boot["password"])
    req = urllib.request.Request(url)
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        body = r.read().decode()
        assert r.status == 200 and "postern_auth_attempts_total" in body


RULES = ROOT / "contrib" / "prometheus"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="Debian's prometheus package (tests/run.sh installs it)")
def test_alert_rules_pass_promtool():
    check = subprocess.run(["promtool", "check", "rules", str(RULES / "postern.rules.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(["promtool", "test", "rules", "postern.rules.test.yml"], cwd=RULES,
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus package (tests/run.sh installs it)")
def test_a_real_prometheus_scrapes_postern(make_server, tmp_path):
    port = free_port()
    srv = make_server(toml_extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    wait_port(port, srv.proc)
    with imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context()) as m:
        try:
            m.login(ALICE, "not the password")
        except imaplib.IMAP4.error:
            pass
    prom_port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES / 'postern.rules.yml'}
scrape_configs:
  - job_name: postern
    static_configs:
      - targets: ["127.0.0.1:{port}"]
""")
    prom = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=open(tmp_path / "prometheus.log", "w"), stderr=subprocess.STDOUT)
    try:
        def query(q):
            url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())["data"]["result"]

        deadline = time.time() + 60
        got = []
        while time.time() < deadline:
            try:
                got = query('postern_auth_attempts_total{result="failure"}')
                if got:
                    break
            except (OSError, urllib.error.URLError, KeyError):
                pass
            time.sleep(0.5)
        assert got, (tmp_path / "prometheus.log").read_text()[-3000:]
        assert float(got[0]["value"][1]) == 1 and got[0]["metric"]["protocol"] == "imap"
        up = query('up{job="postern"}')
        assert up and up[0]["value"][1] == "1"
        # the rules loaded (none fires on a quiet server)
        with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=5) as r:
            groups = json.loads(r.read())["data"]["groups"]
        assert groups and len(groups[0]["rules"]) == 11
    finally:
        prom.terminate()
        prom.wait(timeout=30)
