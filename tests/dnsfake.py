"""A DNS server on loopback (dnslib) serving a zone a test can change while it runs: A, AAAA, MX,
TXT, PTR and TLSA records, names that answer SERVFAIL (a broken DNS), names whose answers carry
the AD bit (as a validating resolver marks DNSSEC-secure data), everything else NXDOMAIN."""
import socket
import threading

from dnslib import AAAA, MX, PTR, RCODE, QTYPE, RR, SOA, TLSA, TXT, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

QUIET = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def txt_chunks(text):
    """A TXT record's strings: at most 255 bytes each (RFC 1035 3.3.14)."""
    b = text.encode()
    return [b[i:i + 255] for i in range(0, len(b), 255)] or [b""]


class Zone(BaseResolver):
    def __init__(self, ttl=1):
        self.ttl = ttl  # short in tests, so a changed record is seen a second later
        self.records = {}  # (name, qtype) -> [rdata]
        self.broken = set()  # names that answer SERVFAIL
        self.secure = set()  # names (and everything under them) answered with AD set
        self.lock = threading.Lock()
        self.queries = []

    def add(self, name, kind, value):
        name = name.rstrip(".").lower()
        if kind == "TXT":
            rdata = TXT(txt_chunks(value))
        elif kind == "A":
            rdata = A(value)
        elif kind == "AAAA":
            rdata = AAAA(value)
        elif kind == "MX":
            pref, host = value
            rdata = MX(host + "." if host != "." else ".", pref)
        elif kind == "PTR":
            rdata = PTR(value.rstrip(".") + ".")
        elif kind == "TLSA":
            usage, selector, matching, hexdata = value
            rdata = TLSA(usage, selector, matching, bytes.fromhex(hexdata))
        else:
            raise ValueError(kind)
        with self.lock:
            self.records.setdefault((name, getattr(QTYPE, kind)), []).append(rdata)

    def remove(self, name, kind=None):
        name = name.rstrip(".").lower()
        with self.lock:
            for k in [k for k in self.records if k[0] == name and (kind is None or k[1] == getattr(QTYPE, kind))]:
                del self.records[k]

    def resolve(self, request, handler):
        reply = request.reply()
        q = str(request.q.qname).rstrip(".").lower()
        with self.lock:
            self.queries.append((q, QTYPE[request.q.qtype]))
            if q in self.broken or any(q.endswith("." + b) for b in self.broken):
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            answers = self.records.get((q, request.q.qtype), [])
            exists = any(k[0] == q for k in self.records)
            # (dnslib's reply() copies the query's flags, and a DANE query sets AD: clear it)
            reply.header.ad = int(any(q == s or q.endswith("." + s) for s in self.secure))
        for rdata in answers:
            reply.add_answer(RR(q + ".", request.q.qtype, rdata=rdata, ttl=self.ttl))
        if not answers and not exists:
            reply.header.rcode = RCODE.NXDOMAIN
        if not answers:
            # an SOA in the authority section makes the negative answer cacheable (RFC 2308)
            reply.add_auth(RR("test.", QTYPE.SOA, ttl=self.ttl,
                              rdata=SOA("ns.test.", "hostmaster.test.", (1, 3600, 600, 86400, self.ttl))))
        return reply


def serve(resolver):
    """UDP and TCP DNS servers (not started) for `resolver` on one free loopback port:
    (udp, tcp, port). A free UDP port may be taken for TCP (a busy machine's outgoing
    connections), so another port is tried."""
    for attempt in range(20):
        port = free_udp_port()
        udp = None
        try:
            udp = DNSServer(resolver, port=port, address="127.0.0.1", logger=QUIET)
            tcp = DNSServer(resolver, port=port, address="127.0.0.1", tcp=True, logger=QUIET)
            return udp, tcp, port
        except OSError:
            if udp is not None:
                udp.server.server_close()
            if attempt == 19:
                raise


class FakeDns:
    """A running zone: `with FakeDns() as dns: dns.zone.add(...); dns.port`."""

    def __init__(self, ttl=1):
        self.zone = Zone(ttl)
        self.udp, self.tcp, self.port = serve(self.zone)

    def start(self):
        self.udp.start_thread()
        self.tcp.start_thread()
        return self

    def stop(self):
        self.udp.stop()
        self.tcp.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()
