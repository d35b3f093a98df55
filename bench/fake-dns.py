#!/usr/bin/env python3
"""A DNS server on loopback for benchmarks (tests/dnsfake.py): example.test allows 127.0.0.1 (SPF)
and publishes DMARC p=reject; everything else does not exist. Prints its port, then serves until
killed. Answers carry a 60 s TTL, so a run's look-ups come from Postern's cache."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dnsfake import FakeDns  # noqa: E402

d = FakeDns(ttl=60).start()
d.zone.add("example.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
d.zone.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject")
print(d.port, flush=True)
while True:
    time.sleep(3600)
