"""MTA-STS (RFC 8461) both ways, against real pieces on loopback: a DNS server (dnslib)
publishing `_mta-sts` records, and a receiving Postern with a certificate from a test CA for
mx1.dest.test and mta-sts.dest.test, which serves dest.test's policy itself (`[mta_sts] listen`,
its `_mta-sts` record taken from `postern dns`); the other domains' policies come from an HTTPS
server in Python. An `enforce` policy delivers over verified TLS to a listed MX, refuses an MX
whose certificate does not match and an MX the policy does not list; `testing` delivers anyway; a
cached policy keeps applying when the policy servers are gone."""
import email
import gzip
import http.server
import json
import shutil
import ssl
import subprocess
import threading

import pytest

from conftest import free_port
from dnsfake import FakeDns
from test_outbound import RCPT, RCPT_PW, submit, wait_for

DOMAINS = ["dest.test", "wrong.test", "other.test", "testing.test"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")

    def run(*a):
        subprocess.run(a, check=True, capture_output=True)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Postern Test CA",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def leaf(name, sans):
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={sans[0]}",
            "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=" + ",".join(f"DNS:{s}" for s in sans)
                       + "\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
        run("openssl", "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-out", str(d / f"{name}.pem"),
            "-extfile", str(ext))
        (d / f"{name}.key").chmod(0o600)
        return d / f"{name}.pem", d / f"{name}.key"

    return {"ca": d / "ca.pem", "mx": leaf("mx", ["mx1.dest.test", "mta-sts.dest.test"]),
            "sts": leaf("sts", [f"mta-sts.{x}" for x in DOMAINS])}


class PolicyServer:
    """HTTPS on 127.0.0.1: the policy of each domain, by Host header."""

    def __init__(self, cert, key, policies, port):
        self.policies = policies
        self.posted = []  # (path, content type, body) of POSTs: TLS reports sent over https
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0]
                body = outer.policies.get(host.removeprefix("mta-sts."))
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                outer.posted.append((self.path, self.headers.get("Content-Type"), self.rfile.read(n)))
                self.send_response(201)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.port = port
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.2", self.port), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def policy(mode, *mx):
    return "version: STSv1\r\nmode: " + mode + "\r\n" + "".join(f"mx: {m}\r\n" for m in mx) + "max_age: 86400\r\n"


def test_mta_sts_enforce_testing_and_cache(make_server, pki):
    with FakeDns() as dns:
        z = dns.zone
        z.add("example.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        for dom, mx in [("dest.test", "mx1.dest.test"), ("wrong.test", "mx.wrong.test"),
                        ("other.test", "mx1.other.test"), ("testing.test", "mx.testing.test")]:
            z.add(dom, "MX", (10, mx))
            z.add(mx, "A", "127.0.0.1")
            if dom != "dest.test":
                z.add(f"_mta-sts.{dom}", "TXT", "v=STSv1; id=1")
                z.add(f"mta-sts.{dom}", "A", "127.0.0.2")
        # the policy hosts listen on one port (mta_sts_port): Postern on 127.0.0.1, Python on .2
        port = free_port()  # TCP: the policy hosts and Postern's mta_sts listener
        sts = PolicyServer(*pki["sts"], {
            # the MX's certificate names mx1.dest.test, not mx.wrong.test
            "wrong.test": policy("enforce", "*.wrong.test"),
            # the policy lists a host the domain's MX records do not name
            "other.test": policy("enforce", "mx9.other.test"),
            "testing.test": policy("testing", "mx.testing.test"),
        }, port)
        try:
            # the receiving MX: certificate for mx1.dest.test from the test CA
            mx = make_server(toml_extra=f'[dns]\nserver = "127.0.0.1:{dns.port}"\n')
            for dom in DOMAINS:
                mx.cli("domain", "add", dom)
                mx.cli("user", "add", f"rcpt@{dom}", "--password-stdin", stdin=RCPT_PW + "\n")
            mx.cli("alias", "add", "postmaster@dest.test", RCPT)
            with open(mx.dir / "postern.toml", "a") as f:
                f.write(f'\n[mta_sts]\nlisten = "127.0.0.1:{port}"\nmode = "enforce"\nmx = ["mx1.dest.test"]\n')
            cert, key = pki["mx"]
            shutil.copy(cert, mx.dir / "tls" / "cert.pem")
            shutil.copy(key, mx.dir / "tls" / "key.pem")
            (mx.dir / "tls" / "key.pem").chmod(0o600)
            mx.restart()
            # the record to publish comes from `postern dns`; the policy from Postern's own host
            recs = json.loads(mx.cli("dns", "dest.test", "--json").stdout)
            sts_txt = [r["value"].strip('"') for r in recs if r["name"] == "_mta-sts.dest.test."]
            assert len(sts_txt) == 1 and sts_txt[0].startswith("v=STSv1; id="), recs
            tlsrpt = [r["value"] for r in recs if r["name"] == "_smtp._tls.dest.test."]
            assert tlsrpt == ['"v=TLSRPTv1; rua=mailto:postmaster@dest.test"'], recs
            z.add("_mta-sts.dest.test", "TXT", sts_txt[0])
            z.add("mta-sts.dest.test", "A", "127.0.0.1")
            got = subprocess.run(["curl", "-sS", "--cacert", str(pki["ca"]), "--resolve", f"mta-sts.dest.test:{port}:127.0.0.1",
                                  f"https://mta-sts.dest.test:{port}/.well-known/mta-sts.txt", "-w", "\n%{http_code} %{content_type}"],
                                 capture_output=True, text=True, timeout=20).stdout
            # (text mode: the policy's CRLF lines read as \n)
            assert got.startswith("version: STSv1\nmode: enforce\nmx: mx1.dest.test\nmax_age: 604800\n"), got
            assert got.endswith("200 text/plain"), got
            # a name that is not one of its domains: 404
            code = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--resolve",
                                   f"mta-sts.nowhere.test:{port}:127.0.0.1",
                                   f"https://mta-sts.nowhere.test:{port}/.well-known/mta-sts.txt"],
                                  capture_output=True, text=True, timeout=20).stdout
            assert code == "404", code
            srv = make_server(toml_extra=f"""
[dns]
server = "127.0.0.1:{dns.port}"

[delivery]
enabled = true
mx_port = {mx.smtp}
ca_file = "{pki['ca']}"
mta_sts_port = {sts.port}
retry_schedule_secs = [1]
give_up_after_secs = 3600
""")
            submit(srv, [RCPT], subject="enforced")
            got = wait_for(lambda: mx.inbox(RCPT), what="delivery under an enforce policy")
            assert b"Subject: enforced" in got[0] and b"ESMTPS" in got[0]
            submit(srv, ["rcpt@testing.test"], subject="testing mode")
            wait_for(lambda: mx.inbox("rcpt@testing.test"), what="delivery under a testing policy")
            submit(srv, ["rcpt@wrong.test"], subject="wrong certificate")
            submit(srv, ["rcpt@other.test"], subject="unlisted mx")

            def errors():
                out = srv.deferred_errors()
                return out if len(out) == 2 else None

            errs = wait_for(errors, what="two deferred messages")
            assert "lists none of its MX hosts" in errs["rcpt@other.test"], errs
            assert "certificate" in errs["rcpt@wrong.test"].lower() or "tls" in errs["rcpt@wrong.test"].lower(), errs
            assert not mx.inbox("rcpt@wrong.test") and not mx.inbox("rcpt@other.test")
            # the policy servers go away: the cached policies still apply
            sts.stop()
            with open(mx.dir / "postern.toml") as f:
                cfg = f.read()
            with open(mx.dir / "postern.toml", "w") as f:
                f.write(cfg.replace(f'listen = "127.0.0.1:{port}"\n', ""))
            mx.restart()
            submit(srv, ["rcpt@wrong.test"], subject="still enforced")
            submit(srv, [RCPT], subject="still delivered")
            wait_for(lambda: len(mx.inbox(RCPT)) == 2, what="delivery on the cached policy")
            assert not mx.inbox("rcpt@wrong.test")
            # TLS reports (RFC 8460) of the day, to the addresses of each domain's _smtp._tls
            for dom in ("dest.test", "wrong.test"):
                z.add(f"_smtp._tls.{dom}", "TXT", "v=TLSRPTv1; rua=mailto:postmaster@dest.test")
            # testing.test wants its report POSTed over https (certificate checked against the CA)
            receiver = PolicyServer(*pki["sts"], {}, port)
            z.add("_smtp._tls.testing.test", "TXT", f"v=TLSRPTv1; rua=https://mta-sts.testing.test:{port}/tlsrpt")
            try:
                sent = json.loads(srv.cli("reports", "send", "--include-today", "--json").stdout)
            finally:
                receiver.stop()
            assert sent["tls"]["reports"] == 3, sent
            assert len(receiver.posted) == 1, receiver.posted
            path, ctype, body = receiver.posted[0]
            assert path == "/tlsrpt" and ctype == "application/tlsrpt+gzip"
            posted = json.loads(gzip.decompress(body))
            pol = posted["policies"][0]
            assert pol["policy"]["policy-domain"] == "testing.test" and pol["policy"]["policy-type"] == "sts"
            assert pol["summary"]["total-successful-session-count"] >= 1, posted
            reports = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(
                [m for m in mx.inbox(RCPT) if b"Report Domain:" in m]), what="two TLS reports")
            by_domain = {}
            for raw in reports:
                msg = email.message_from_bytes(raw)
                part = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"][0]
                rep = json.loads(gzip.decompress(part.get_payload(decode=True)))
                pol = rep["policies"][0]
                by_domain[pol["policy"]["policy-domain"]] = pol
            good, bad = by_domain["dest.test"], by_domain["wrong.test"]
            assert good["policy"]["policy-type"] == "sts" and "mode: enforce" in good["policy"]["policy-string"]
            assert good["summary"]["total-successful-session-count"] >= 2, good
            assert good["summary"]["total-failure-session-count"] == 0, good
            assert bad["summary"]["total-failure-session-count"] >= 1, bad
            details = bad["failure-details"]
            assert details[0]["result-type"] == "certificate-host-mismatch", details
            assert details[0]["receiving-mx-hostname"] == "mx.wrong.test", details
            mx.stop()
        finally:
            try:
                sts.stop()
            except Exception:
                pass
