"""ACME certificates against Pebble (Debian `pebble`, a test CA speaking RFC 8555) on loopback:
TLS-ALPN-01 and HTTP-01 issuance replacing the self-signed certificate of `init`, a renewal at a
third of the lifetime served by every listener at once while an IMAP session stays open (and the
key kept across it), the account key sealed in the secret store; and SIGHUP reloading a
certificate managed by hand."""
import hashlib
import imaplib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest

from conftest import ALICE, ALICE_PW, free_port, init_dir, run_cli, start, tls_client_context
from dnsfake import FakeDns

pytestmark = pytest.mark.skipif(shutil.which("pebble") is None, reason="pebble is installed by tests/run.sh")


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"port {port} never opened")


def openssl(*a):
    subprocess.run(["openssl", *a], check=True, capture_output=True)


class Pebble:
    def __init__(self, root, dns_port, challenge_port, validity):
        self.root = root
        root.mkdir()
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=Pebble API test CA", "-keyout", str(root / "ca.key"), "-out", str(root / "ca.pem"),
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
                "-keyout", str(root / "api.key"), "-out", str(root / "api.csr"))
        (root / "api.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", str(root / "api.csr"), "-CA", str(root / "ca.pem"), "-CAkey", str(root / "ca.key"),
                "-CAcreateserial", "-days", "2", "-out", str(root / "api.pem"), "-extfile", str(root / "api.ext"))
        self.port, self.mgmt = free_port(), free_port()
        cfg = {"pebble": {"listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.mgmt}",
                          "certificate": str(root / "api.pem"), "privateKey": str(root / "api.key"),
                          "httpPort": challenge_port, "tlsPort": challenge_port, "ocspResponderURL": "",
                          "externalAccountBindingRequired": False, "certificateValidityPeriod": validity}}
        (root / "pebble.json").write_text(json.dumps(cfg))
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        self.proc = subprocess.Popen(["pebble", "-config", str(root / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns_port}"],
                                     env=env, stdout=open(root / "pebble.log", "w"), stderr=subprocess.STDOUT)
        wait_port(self.port)
        self.directory = f"https://127.0.0.1:{self.port}/dir"

    def issuing_root(self):
        """The root that signs issued certificates (random per run), from the management API."""
        ctx = ssl.create_default_context(cafile=str(self.root / "ca.pem"))
        pem = urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt}/roots/0", context=ctx, timeout=10).read()
        path = self.root / "issuing-root.pem"
        path.write_bytes(pem)
        return path

    def log(self):
        return (self.root / "pebble.log").read_text(errors="replace")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def served(port, cafile=None):
    """The leaf certificate (DER) the IMAPS port serves; verified against `cafile` when given."""
    if cafile:
        ctx = ssl.create_default_context(cafile=str(cafile))
        name = "mail.example.test"
    else:
        ctx, name = tls_client_context(), None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            return t.getpeercert(binary_form=True)


def spki(der):
    p = subprocess.run(["openssl", "x509", "-inform", "DER", "-pubkey", "-noout"], input=der, capture_output=True, check=True)
    return p.stdout


def wait_until(pred, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("challenge", ["tls-alpn-01", "http-01"])
def test_acme_issuance_and_renewal_with_hot_reload(tmp_path, challenge):
    renew = challenge == "tls-alpn-01"  # the renewal (about 40 s) once; issuance with both
    cport = free_port()
    with FakeDns() as dns:
        dns.zone.add("mail.example.test", "A", "127.0.0.1")
        pebble = Pebble(tmp_path / "pebble", dns.port, cport, validity=45 if renew else 3600)
        try:
            extra = (f'[dns]\nserver = "127.0.0.1:{dns.port}"\n'
                     f'[acme]\ndirectory = "{pebble.directory}"\nca_file = "{pebble.root / "ca.pem"}"\n'
                     f'challenge = "{challenge}"\nlisten = "127.0.0.1:{cport}"\ncheck_secs = 2\n'
                     f'contact = ["mailto:postmaster@example.test"]\n')
            d, off = init_dir(tmp_path, toml_extra=extra)
            self_signed = served_file = (d / "tls/cert.pem").read_text()
            srv = start(d, off)
            try:
                root = pebble.issuing_root()
                # the self-signed certificate of init is replaced without a restart
                first = wait_until(lambda: (d / "tls/cert.pem").read_text() != self_signed and served(srv.imaps, root),
                                   "the first ACME certificate", timeout=60)
                assert served(srv.submissions, root) == first, "every listener serves it"
                assert "Pebble" in subprocess.run(["openssl", "x509", "-noout", "-issuer"], input=(d / "tls/cert.pem").read_bytes(),
                                                  capture_output=True).stdout.decode()
                # the account key is sealed in the secret store, never in clear
                with srv.db() as c:
                    row = c.execute("SELECT sealed FROM secrets WHERE name = 'postern:acme-account'").fetchone()
                assert row and b"PRIVATE" not in row[0] and b"private_key" not in row[0]
                if renew:
                    # an IMAP session opened on the first certificate stays open through the renewal
                    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=20)
                    m.login(ALICE, ALICE_PW)
                    m.select("INBOX")
                    second = wait_until(lambda: (lambda c: c if c != first else None)(served(srv.imaps, root)),
                                        "the renewed certificate", timeout=90)
                    assert spki(second) == spki(first), "the key is kept across renewals (DANE 3 1 1 stays true)"
                    assert m.noop()[0] == "OK", "the session opened before the renewal still works"
                    m.logout()
            finally:
                assert srv.stop() == 0
            q = run_cli(d, "audit-log", "query", "--json", "--limit", "1000").stdout
            assert q.count('"certificate_renewed"') >= (2 if renew else 1), q[-2000:]
            assert '"acme_account_created"' in q
        finally:
            pebble.stop()


def test_sighup_reloads_a_certificate_managed_by_hand(tmp_path):
    d, off = init_dir(tmp_path)
    srv = start(d, off)
    try:
        before = served(srv.imaps)
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=20)
        m.login(ALICE, ALICE_PW)
        m.select("INBOX")
        # a new certificate and key written by hand (as an external tool would), then SIGHUP
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
                "-subj", "/CN=mail.example.test", "-addext", "subjectAltName=DNS:mail.example.test",
                "-keyout", str(d / "tls/key.new"), "-out", str(d / "tls/cert.new"))
        os.chmod(d / "tls/key.new", 0o600)
        os.replace(d / "tls/key.new", d / "tls/key.pem")
        os.replace(d / "tls/cert.new", d / "tls/cert.pem")
        srv.proc.send_signal(signal.SIGHUP)
        after = wait_until(lambda: (lambda c: c if c != before else None)(served(srv.imaps)), "the reloaded certificate", 20)
        want = subprocess.run(["openssl", "x509", "-outform", "DER"], input=(d / "tls/cert.pem").read_bytes(),
                              capture_output=True, check=True).stdout
        assert hashlib.sha256(after).digest() == hashlib.sha256(want).digest()
        assert m.noop()[0] == "OK"
        m.logout()
        # a broken pair is refused and the certificate in use stays
        (d / "tls/cert.pem").write_text("not a certificate\n")
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert served(srv.imaps) == after
        assert "could not be reloaded" in srv.log()
    finally:
        assert srv.stop() == 0
