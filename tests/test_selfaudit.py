"""`postern audit` on a deliberately weak installation (the expected findings are there, the exit
status is 1, each finding explains itself), on a hardened one (no high finding, exit 0), and its
probes against peers that are wrong on purpose: an OpenSSL server that accepts TLS 1.0 and weak
suites, and an SMTP server that relays anything (the negative controls of the TLS and relay
checks). DNS comes from a loopback zone the test writes."""
import json
import os
import socket
import subprocess
import threading

from conftest import ALICE, BIN, init_dir, run_as_service, run_cli, start
from dnsfake import FakeDns


def audit(d, *args):
    p = subprocess.run([BIN, "--dir", str(d), "audit", "--json", *args], capture_output=True, text=True, timeout=120)
    report = json.loads(p.stdout)
    return p.returncode, report, {f["id"]: f for f in report["findings"]}


def dns_extra(dns):
    return f'[dns]\nserver = "127.0.0.1:{dns.port}"\ntimeout_ms = 1000\n'


def publish(dns, d):
    """The records `postern dns` asks for, into the zone (TXT strings unquoted and joined)."""
    for r in json.loads(run_cli(d, "dns", "example.test", "--json").stdout):
        name, kind, value = r["name"], r["type"], r["value"]
        if kind == "TXT":
            dns.zone.add(name, "TXT", "".join(part.strip('"') for part in value.split('" "')))
        elif kind == "MX":
            pref, host = value.split()
            dns.zone.add(name, "MX", (int(pref), host.rstrip(".")))


def test_weak_installation_is_reported(tmp_path):
    with FakeDns() as dns:
        dns.zone.add("example.test", "MX", (10, "mx.elsewhere.test"))
        dns.zone.add("example.test", "TXT", "v=spf1 +all")
        dns.zone.add("_dmarc.example.test", "TXT", "v=DMARC1; p=none")
        # the public address of the host name (only looked up: no traffic goes to 192.0.2.0/24)
        dns.zone.add("mail.example.test", "A", "192.0.2.26")
        dns.zone.add("26.2.0.192.in-addr.arpa", "PTR", "host-26.isp.test")
        d, off = init_dir(tmp_path, toml_extra=dns_extra(dns) + "[inbound]\nchecks = false\n")
        cfg = d / "postern.toml"
        text = cfg.read_text().replace("min_length = 12", "min_length = 8")
        text = text.replace('master_key = "file:master.key"', 'master_key = "file:master.key"\nallow_plaintext_secrets = true')
        cfg.write_text(text)
        run_cli(d, "app-password", "create", ALICE, "--name", "phone")
        run_cli(d, "admin", "bootstrap")
        os.chmod(d, 0o755)
        srv = start(d, off)
        try:
            code, report, f = audit(d)
        finally:
            srv.stop()
            os.chmod(d, 0o700)
    assert code == 1, "a high finding makes the exit status 1"
    expected_high = {"secrets.plaintext_allowed", "inbound.checks_off", "admins.no_totp", "files.data_dir_open",
                     "dns.spf_pass_all", "dns.mx"}
    expected_other = {"password_policy.weaker", "dns.dmarc_none", "dns.ptr", "backup.none",
                      "secrets.master_key_beside_data", "tls.self_signed", "pop3.enabled",
                      "app_passwords.never_expire", "accounts.no_2fa", "password_policy.no_breached_list"}
    missing = (expected_high | expected_other) - set(f)
    assert not missing, (missing, list(f))
    assert "host-26.isp.test" in f["dns.ptr"]["what"]
    for i in expected_high:
        assert f[i]["severity"] == "high", f[i]
    for x in f.values():
        assert x["what"] and x["why"] and x["fix"] and x["setting"], x
    # the live checks ran and passed against Postern's own listeners
    passed = "\n".join(report["passed"])
    assert "no open relay" in passed and "TLS 1.0 refused" in passed and "weak cipher suites only" in passed
    assert "listener.auth_before_tls" not in f and "smtp.open_relay" not in f
    # the text form, for a person
    p = subprocess.run([BIN, "--dir", str(d), "audit", "--no-connect", "--no-dns"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "[HIGH] Secrets in clear are allowed" in p.stdout and "fix:" in p.stdout and "why:" in p.stdout
    assert "checks passed; findings:" in p.stdout


def test_hardened_installation_has_no_high_finding(tmp_path, request):
    service = None
    if os.geteuid() == 0:
        # as root (CI), the hardened server runs as a service user, never as root
        service = request.getfixturevalue("service_user")
        tmp_path = service[3]
    with FakeDns() as dns:
        d, off = init_dir(tmp_path, toml_extra=dns_extra(dns))
        # the master key away from the data, a DKIM key, a backup, reverse DNS, DMARC reject
        outside = tmp_path / "keys"
        outside.mkdir(mode=0o700)
        run_cli(d, "secret", "rotate-master-key", "--generate", str(outside / "master.key"))
        run_cli(d, "dkim", "generate", "example.test")
        run_cli(d, "backup", "keygen", "--out", str(outside / "backup.key"))
        run_cli(d, "backup", "create", "--to", str(outside / "b.tar.age"), "--key", f"file:{outside / 'backup.key'}")
        publish(dns, d)
        dns.zone.remove("_dmarc.example.test")
        dns.zone.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject")
        # the public address of the host name and its PTR (looked up only: no traffic goes there)
        dns.zone.add("mail.example.test", "A", "192.0.2.25")
        dns.zone.add("25.2.0.192.in-addr.arpa", "PTR", "mail.example.test")
        if service:
            run_as_service(d, service[0])
            subprocess.run(["chown", "-R", f"{service[0]}:", str(outside)], check=True)
        srv = start(d, off)
        try:
            code, report, f = audit(d)
        finally:
            srv.stop()
    highs = [x for x in f.values() if x["severity"] == "high"]
    assert code == 0 and not highs, highs
    assert "secrets.master_key_beside_data" not in f and "backup.none" not in f
    assert not any(i.startswith("dns.") and i not in ("dns.no_mta_sts", "dns.tls_rpt") for i in f), [f[i] for i in f if i.startswith("dns.")]
    passed = "\n".join(report["passed"])
    for want in ("DKIM", "DMARC p=reject", "PTR of 192.0.2.25 is mail.example.test", "audit chain verified",
                 "master key outside the data directory", "newest backup"):
        assert want in passed, (want, passed)


def relay_everything(port, stop):
    """An SMTP server that accepts every sender and recipient (an open relay)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(5)
    srv.settimeout(0.2)
    while not stop.is_set():
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        f = c.makefile("rwb")
        f.write(b"220 relay.test ESMTP\r\n")
        f.flush()
        for line in f:
            cmd = line.strip().upper()
            if cmd.startswith(b"EHLO"):
                f.write(b"250-relay.test\r\n250 AUTH PLAIN\r\n")
            elif cmd == b"QUIT":
                f.write(b"221 bye\r\n")
                f.flush()
                break
            else:
                f.write(b"250 ok\r\n")
            f.flush()
        c.close()
    srv.close()


def test_probes_catch_legacy_tls_and_an_open_relay(tmp_path):
    """Negative controls: the same probes against wrong peers on the configured ports."""
    d, off = init_dir(tmp_path)
    env = dict(os.environ, OPENSSL_CONF="/dev/null")
    ossl = subprocess.Popen(["openssl", "s_server", "-accept", str(993 + off), "-cipher", "ALL:@SECLEVEL=0",
                             "-cert", str(d / "tls/cert.pem"), "-key", str(d / "tls/key.pem"), "-quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    t = threading.Thread(target=relay_everything, args=(25 + off, stop))
    t.start()
    try:
        import time
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", 993 + off), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        code, report, f = audit(d, "--no-dns")
    finally:
        stop.set()
        t.join(10)
        ossl.terminate()
        ossl.wait(10)
    assert code == 1
    assert f["listener.tls10"]["severity"] == "high" and f"{993 + off}" in f["listener.tls10"]["what"]
    assert f["listener.weak_ciphers"]["severity"] == "high"
    assert f["smtp.open_relay"]["severity"] == "high"
    assert f["listener.auth_before_tls"]["severity"] == "high"  # the fake offers AUTH in clear
    assert "listener.unreachable" in f  # Postern itself is not running
