"""Direct delivery to MX hosts found through a DNS server on loopback (dnslib): MX preference,
opportunistic STARTTLS, a null MX and a non-existent domain bounced at once, a dead MX retried
with one delay warning, and RCPT-level partial failure."""
import json
import time

import pytest

from conftest import ALICE
from test_outbound import RCPT, RCPT_PW, submit, wait_for

dnslib = pytest.importorskip("dnslib")
from dnslib import MX, RR, A, QTYPE, RCODE  # noqa: E402
from dnslib.server import BaseResolver  # noqa: E402
from dnsfake import serve  # noqa: E402


class Zone(BaseResolver):
    def __init__(self, mx, a):
        self.mx, self.a = mx, a  # domain -> [(pref, host)], host -> ip

    def resolve(self, request, handler):
        reply = request.reply()
        q = str(request.q.qname).rstrip(".").lower()
        if request.q.qtype == QTYPE.MX and q in self.mx:
            for pref, host in self.mx[q]:
                reply.add_answer(RR(q + ".", QTYPE.MX, rdata=MX(host + "." if host != "." else ".", pref), ttl=60))
        elif request.q.qtype == QTYPE.A and q in self.a:
            reply.add_answer(RR(q + ".", QTYPE.A, rdata=A(self.a[q]), ttl=60))
        elif q not in self.mx and q not in self.a:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@pytest.fixture
def dns():
    zone = Zone(
        mx={"dest.test": [(20, "mx2.dest.test"), (10, "mx1.dest.test")],
            "nomail.test": [(0, ".")],
            "dead.test": [(10, "mx.dead.test")]},
        a={"mx1.dest.test": "127.0.0.1", "mx2.dest.test": "127.0.0.2", "mx.dead.test": "127.0.0.1"},
    )
    udp, tcp, port = serve(zone)
    udp.start_thread()
    tcp.start_thread()
    yield port
    udp.stop()
    tcp.stop()


def test_direct_mx_delivery(make_server, dns):
    # the receiving MX: a Postern serving dest.test on its port 25 (+offset)
    mx = make_server()
    mx.cli("domain", "add", "dest.test")
    mx.cli("user", "add", RCPT, "--password-stdin", stdin=RCPT_PW + "\n")
    # every MX of the zone is reached on the receiving server's SMTP port; dead.test's MX uses
    # 127.0.0.1 too, so it is made unreachable by a require_tls rule the MX cannot meet
    srv = make_server(toml_extra=f"""
[delivery]
enabled = true
dns_server = "127.0.0.1:{dns}"
mx_port = {mx.smtp}
retry_schedule_secs = [1]
warn_after_secs = 2
give_up_after_secs = 3600
require_tls = ["dead.test"]
""")
    submit(srv, [RCPT, "nobody@dest.test"], subject="direct")
    got = wait_for(lambda: mx.inbox(RCPT), what="direct delivery")
    assert b"Subject: direct" in got[0]
    # it came over STARTTLS (opportunistic) from the sending server
    assert b"ESMTPS" in got[0]
    # RCPT refused by the MX: bounced; a null MX and a domain that does not exist too
    submit(srv, ["x@nomail.test"], subject="to null mx")
    submit(srv, ["x@nxdomain.test"], subject="to nowhere")
    dsns = wait_for(lambda: (lambda d: d if len(d) >= 3 else None)(
        [m for m in srv.inbox(ALICE) if b"Action: failed" in m]), what="three DSNs")
    text = b"\n".join(dsns).decode()
    assert "Final-Recipient: rfc822; nobody@dest.test" in text
    assert "Final-Recipient: rfc822; x@nomail.test" in text and "5.1.10" in text
    assert "Final-Recipient: rfc822; x@nxdomain.test" in text and "5.1.2" in text
    # dead.test: retried, one delay warning, still queued
    submit(srv, ["x@dead.test"], subject="to a dead mx")
    delayed = wait_for(lambda: [m for m in srv.inbox(ALICE) if b"Action: delayed" in m], what="a delay DSN")
    assert len(delayed) == 1 and b"x@dead.test" in delayed[0]
    time.sleep(3)
    assert len([m for m in srv.inbox(ALICE) if b"Action: delayed" in m]) == 1, "warned twice"
    rows = srv.queue()
    assert len(rows) == 1
    m = json.loads(srv.cli("queue", "show", str(rows[0][0]), "--json").stdout)
    err = m["last_error"] or ""
    assert m["attempts"] >= 2 and "TLS" in err, err
