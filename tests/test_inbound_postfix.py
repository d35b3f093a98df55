"""A real MTA in front of port 25: Postfix (its own instance, `postfix -c DIR`, on a high loopback
port) relays mail for example.test to Postern. Postfix's own retry logic meets greylisting (451,
then delivered after the delay), a DKIM signature survives the hop and passes DMARC, and a message
whose domain says p=reject is refused with 550 and bounced by Postfix, never stored."""
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ALICE, free_port
from test_inbound_auth import dns, keys, message, results_of, signed  # noqa: F401 (fixtures)

POSTFIX = shutil.which("postfix")
pytestmark = pytest.mark.skipif(POSTFIX is None or os.geteuid() != 0,
                                reason="needs Debian's postfix package and root")


@pytest.fixture
def relay():
    """A Postfix instance on 127.0.0.1:PORT; `relay.to(port)` points example.test at Postern."""
    # Postfix's daemons run as the postfix user: its directories cannot live under pytest's
    # root-only temporary directory
    tmp = Path(tempfile.mkdtemp(prefix="postern-postfix-"))
    tmp.chmod(0o755)
    P = tmp
    C = P / "etc"
    for d in (C, P / "spool", P / "data"):
        d.mkdir(parents=True)
    shutil.chown(P / "data", "postfix", "postfix")
    port = free_port()

    class Relay:
        pass

    r = Relay()
    r.port, r.dir, r.conf = port, P, C

    def to(postern_port):
        (C / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {P}/spool
data_directory = {P}/data
meta_directory = /etc/postfix
maillog_file_prefixes = {tmp}
maillog_file = {P}/maillog
syslog_name = postfix-postern-test
myhostname = relay.spf-ok.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
biff = no
smtp_dns_support_level = disabled
smtp_bind_address = 127.0.0.1
relay_domains = example.test
transport_maps = inline:{{ {{example.test=smtp:[127.0.0.1]:{postern_port}}} }}
default_transport = discard:nothing leaves the test
smtp_tls_security_level = may
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
""")
        master = subprocess.run(
            ["sed", "-e", f"s/^smtp\\( *\\)inet/127.0.0.1:{port} inet/",
             "-e", r"/^[a-z0-9:.]/ s/^\(\S\+\s\+\S\+\s\+\S\+\s\+\S\+\s\+\)y\b/\1n/",
             "/usr/share/postfix/master.cf.dist"], capture_output=True, text=True, check=True).stdout
        (C / "master.cf").write_text(master)
        subprocess.run([POSTFIX, "-c", str(C), "set-permissions"], capture_output=True)
        subprocess.run([POSTFIX, "-c", str(C), "start"], capture_output=True, check=True, timeout=60)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)

    def log():
        f = P / "maillog"
        return f.read_text(errors="replace") if f.exists() else ""

    def flush():
        # a busy machine can leave a deferred message waiting past its retry time; ask Postfix
        # to retry now, as an operator would (`postqueue -f`)
        subprocess.run(["postqueue", "-c", str(C), "-f"], capture_output=True, timeout=30)

    r.to, r.log, r.flush = to, log, flush
    yield r
    subprocess.run([POSTFIX, "-c", str(C), "stop"], capture_output=True, timeout=60)
    shutil.rmtree(tmp, ignore_errors=True)


def wait(pred, secs=60, nudge=None):
    deadline = time.time() + secs
    last_nudge = time.time()
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        if nudge and time.time() - last_nudge > 5:
            nudge()
            last_nudge = time.time()
        time.sleep(0.3)
    return None


def test_postfix_relays_through_greylisting_and_dmarc(make_server, dns, keys, relay):  # noqa: F811
    dns.zone.add("badguy.test", "TXT", "v=spf1 ip4:127.0.0.5 -all")
    dns.zone.add("_dmarc.badguy.test", "TXT", "v=DMARC1; p=reject")
    srv = make_server(toml_extra=f'[dns]\nserver = "127.0.0.1:{dns.port}"\ntimeout_ms = 700\n\n'
                                 "[greylist]\nenabled = true\ndelay_secs = 2\n")
    relay.to(srv.smtp)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as s:
        s.sendmail("news@signer.test", [ALICE], signed(keys, message("news@signer.test", "via postfix")))
    # Postfix met greylisting, retried on its own, and got through after the delay
    got = wait(lambda: [m for m in srv.inbox(ALICE) if b"Subject: via postfix" in m], nudge=relay.flush)
    log = relay.log()
    assert got, log[-3000:]
    assert "Greylisted" in log, "Postfix was not greylisted first"
    ar = results_of(got[0])[0]
    # the signature survived the hop: DKIM and DMARC pass although SPF for signer.test fails
    assert "dkim=pass header.i=@signer.test" in ar and "dmarc=pass" in ar, ar
    assert b"by mail.example.test (Postern)" in got[0] and b"relay.spf-ok.test" in got[0]
    # a p=reject domain that fails: Postern refuses, Postfix bounces, nothing is stored
    before = len(srv.inbox(ALICE))
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as s:
        s.sendmail("boss@badguy.test", [ALICE], message("boss@badguy.test", "spoofed via postfix"))
    assert wait(lambda: "status=bounced" in relay.log() and "5.7.1" in relay.log(), nudge=relay.flush), \
        relay.log()[-3000:]
    assert "DMARC policy of badguy.test" in relay.log()
    assert len(srv.inbox(ALICE)) == before
