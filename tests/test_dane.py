"""DANE (RFC 7672) on direct delivery: a DNS server on loopback marks some zones DNSSEC-secure
(the AD bit a validating resolver sets, which Postern trusts like Postfix does) and serves TLSA
records for the receiving Postern's certificate. DANE-EE (3 1 1) accepts the server's own key
whatever its name; a TLSA record that does not match refuses the host; DANE-TA (2 0 1) accepts a
chain to the listed CA with the MX name checked; insecure TLSA records are ignored; a TLSA
look-up that fails for a secure MX defers the message."""
import hashlib
import json
import shutil
import subprocess

from dnsfake import FakeDns
from test_mta_sts import pki  # noqa: F401 (fixture)
from test_outbound import RCPT_PW, submit, wait_for

DOMAINS = ["ee.test", "bad.test", "ta.test", "insecure.test", "broken.test", "wrongname.test"]


def spki_sha256(cert):
    pub = subprocess.run(["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"],
                         capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         capture_output=True, check=True).stdout
    return hashlib.sha256(der).hexdigest()


def cert_sha256(cert):
    der = subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER"],
                         capture_output=True, check=True).stdout
    return hashlib.sha256(der).hexdigest()


def test_dane_ee_ta_mismatch_insecure_and_failure(make_server, pki):  # noqa: F811
    with FakeDns() as dns:
        z = dns.zone
        z.add("example.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        mx = make_server(toml_extra=f'[dns]\nserver = "127.0.0.1:{dns.port}"\n')
        for dom in DOMAINS:
            mx.cli("domain", "add", dom)
            mx.cli("user", "add", f"rcpt@{dom}", "--password-stdin", stdin=RCPT_PW + "\n")
        # the MX presents a certificate for mx1.dest.test from the test CA, with the CA in the chain
        cert, key = pki["mx"]
        (mx.dir / "tls" / "cert.pem").write_bytes(cert.read_bytes() + pki["ca"].read_bytes())
        shutil.copy(key, mx.dir / "tls" / "key.pem")
        (mx.dir / "tls" / "key.pem").chmod(0o600)
        mx.restart()
        port = mx.smtp
        ee = spki_sha256(cert)
        # the record `postern dns` tells the MX's admin to publish is the same (openssl computes ours)
        recs = json.loads(mx.cli("dns", "ee.test", "--json").stdout)
        tlsa = [r["value"] for r in recs if r["type"] == "TLSA"]
        assert tlsa == [f"3 1 1 {ee}"], recs
        hosts = {"ee.test": "mx.ee.test", "bad.test": "mx.bad.test", "ta.test": "mx1.dest.test",
                 "insecure.test": "mx.insecure.test", "broken.test": "mx.broken.test",
                 "wrongname.test": "mx.wrongname.test"}
        for dom, host in hosts.items():
            z.add(dom, "MX", (10, host))
            z.add(host, "A", "127.0.0.1")
        z.add(f"_{port}._tcp.mx.ee.test", "TLSA", (3, 1, 1, ee))
        z.add(f"_{port}._tcp.mx.bad.test", "TLSA", (3, 1, 1, "00" * 32))
        z.add(f"_{port}._tcp.mx1.dest.test", "TLSA", (2, 0, 1, cert_sha256(pki["ca"])))
        # DANE-TA checks the name: the CA's certificate names mx1.dest.test, not this host
        z.add(f"_{port}._tcp.mx.wrongname.test", "TLSA", (2, 0, 1, cert_sha256(pki["ca"])))
        z.add(f"_{port}._tcp.mx.insecure.test", "TLSA", (3, 1, 1, "00" * 32))
        z.broken.add(f"_{port}._tcp.mx.broken.test")
        for s in ("ee.test", "bad.test", "ta.test", "dest.test", "broken.test", "wrongname.test"):
            z.secure.add(s)
        srv = make_server(toml_extra=f"""
[dns]
server = "127.0.0.1:{dns.port}"

[delivery]
enabled = true
mx_port = {port}
retry_schedule_secs = [1]
give_up_after_secs = 3600
""")
        for dom in DOMAINS:
            submit(srv, [f"rcpt@{dom}"], subject=f"dane {dom}")
        for dom in ("ee.test", "ta.test", "insecure.test"):
            got = wait_for(lambda: mx.inbox(f"rcpt@{dom}"), what=f"delivery to {dom}")
            assert f"Subject: dane {dom}".encode() in got[0] and b"ESMTPS" in got[0]

        def errors():
            out = srv.deferred_errors()
            return out if len(out) == 3 else None

        errs = wait_for(errors, what="three deferred messages")
        assert "DANE" in errs["rcpt@bad.test"] or "TLSA" in errs["rcpt@bad.test"], errs
        assert "TLSA" in errs["rcpt@broken.test"], errs
        assert "4.7.5" in errs["rcpt@wrongname.test"], errs
        for dom in ("bad.test", "broken.test", "wrongname.test"):
            assert not mx.inbox(f"rcpt@{dom}")
