"""Several IMAP sessions on one mailbox at once, each doing random APPEND, STORE (system flags
and new keywords), EXPUNGE, MOVE, FETCH, SEARCH and NOOP, while a checker in each session keeps
the mailbox as that session was told of it and checks every untagged response against it
(RFC 3501 7.3-7.4, RFC 7162 3.2.10):
- EXISTS never decreases without an EXPUNGE, and EXPUNGE names a message the session has;
- a FETCH names a message the session has, with the UID it had before (no UID changes slot),
  UIDs strictly ascending by sequence number (no duplicate);
- no keyword in a FETCH that an untagged FLAGS did not announce first;
- with QRESYNC on, VANISHED names UIDs the session has, and EXPUNGE is never sent;
- no BAD for a command the client built from what it was told.
At the end every session, after a NOOP, holds the same UIDs and flags as a fresh session."""
import random
import re
import threading
from collections import Counter

import pytest

from test_imap import raw_login

FETCH_RE = re.compile(r"^\* (\d+) FETCH \((.*)\)$")
KEYWORDS = ["$Work", "$Later", "$Label1", "Kw_a", "Kw_b", "$Junk"]
SYSTEM = ["\\Seen", "\\Flagged", "\\Answered", "\\Draft", "\\Deleted"]


class Checker:
    def __init__(self, name, qresync=False):
        self.name = name
        self.qresync = qresync
        self.view = []      # per sequence number: UID or None (told of by EXISTS, UID not yet seen)
        self.flags = []     # per sequence number: set of flags or None
        self.keywords = set()
        self.errors = []
        self.seen = Counter()

    def fail(self, what, line):
        self.errors.append(f"{self.name}: {what}: {line}")

    def check_order(self, line):
        known = [u for u in self.view if u is not None]
        if any(b <= a for a, b in zip(known, known[1:])):
            self.fail("UIDs not strictly ascending", f"{line} view={self.view}")

    def untagged(self, line):
        kind = re.match(r"^\* (?:\d+ )?([A-Z]+)", line)
        if kind:
            self.seen[kind.group(1)] += 1
        if line.startswith("* FLAGS ("):
            self.keywords = {f for f in line[len("* FLAGS ("):-1].split() if not f.startswith("\\")}
            return
        m = re.match(r"^\* (\d+) EXISTS$", line)
        if m:
            n = int(m.group(1))
            if n < len(self.view):
                self.fail("EXISTS decreased without EXPUNGE", f"{line} had {len(self.view)}")
            while len(self.view) < n:
                self.view.append(None)
                self.flags.append(None)
            return
        m = re.match(r"^\* (\d+) EXPUNGE$", line)
        if m:
            n = int(m.group(1))
            if self.qresync:
                self.fail("EXPUNGE with QRESYNC on", line)
            if not 1 <= n <= len(self.view):
                self.fail("EXPUNGE of an unknown sequence number", f"{line} had {len(self.view)}")
                return
            del self.view[n - 1]
            del self.flags[n - 1]
            return
        m = re.match(r"^\* VANISHED (\(EARLIER\) )?([\d:,]+)$", line)
        if m:
            if not self.qresync:
                self.fail("VANISHED without QRESYNC", line)
            if m.group(1):
                return
            for part in m.group(2).split(","):
                a, _, b = part.partition(":")
                for uid in range(int(a), int(b or a) + 1):
                    if uid not in self.view:
                        self.fail("VANISHED of a UID the session does not have", f"{line} view={self.view}")
                        continue
                    i = self.view.index(uid)
                    del self.view[i]
                    del self.flags[i]
            return
        if line.startswith("* SEARCH"):
            hits = [int(x) for x in line[len("* SEARCH"):].split()]
            if None not in self.view and hits != self.view:
                self.fail("UID SEARCH ALL is not the session's UIDs", f"{line} view={self.view}")
            return
        m = FETCH_RE.match(line)
        if m:
            n, items = int(m.group(1)), m.group(2)
            if not 1 <= n <= len(self.view):
                self.fail("FETCH of an unknown sequence number", f"{line} had {len(self.view)}")
                return
            u = re.search(r"\bUID (\d+)", items)
            if u:
                uid = int(u.group(1))
                if self.view[n - 1] not in (None, uid):
                    self.fail("FETCH gives a slot another UID", f"{line} had {self.view[n - 1]}")
                self.view[n - 1] = uid
                self.check_order(line)
            f = re.search(r"FLAGS \(([^)]*)\)", items)
            if f:
                flags = set(f.group(1).split())
                unannounced = {x for x in flags if not x.startswith("\\")} - self.keywords
                if unannounced:
                    self.fail("keyword before any FLAGS announced it", f"{line} known={self.keywords}")
                self.flags[n - 1] = flags - {"\\Recent"}
            return


class Session:
    def __init__(self, server, name, qresync=False, seed=0):
        self.r = raw_login(server)
        self.c = Checker(name, qresync)
        self.rng = random.Random(seed)
        self.n = 0
        if qresync:
            self.cmd("ENABLE QRESYNC")
        self.cmd("SELECT Load")

    def cmd(self, text, data=None):
        self.n += 1
        tag = f"t{self.n}"
        if data is None:
            self.r.send(f"{tag} {text}\r\n".encode())
        else:
            self.r.send(f"{tag} {text} {{{len(data)}+}}\r\n".encode() + data + b"\r\n")
        lines = self.r.until_tagged(tag)
        for l in lines[:-1]:
            self.c.untagged(l)
        last = lines[-1]
        if last.startswith(f"{tag} BAD") or last.startswith("* BYE"):
            self.c.fail("BAD or BYE", f"{text} -> {last}")
        if self.c.qresync and None in self.c.view and not text.startswith("FETCH 1:* (UID)"):
            # A QRESYNC client learns the UID of each new message before it can be told of its
            # expunge by UID; a FETCH by sequence number reports no expunge (RFC 3501 7.4.1).
            self.cmd("FETCH 1:* (UID)")
        return last

    def step(self, other_box):
        rng, c = self.rng, self.c
        op = rng.choice(["append", "append", "store", "store", "store", "expunge", "fetch",
                         "search", "noop", "move", "uidstore"])
        size = len(c.view)
        if op == "append" or size == 0:
            body = f"Subject: load {rng.random()}\r\n\r\nx\r\n".encode()
            flags = " ".join(rng.sample(KEYWORDS + SYSTEM[:2], rng.randint(0, 2)))
            self.cmd(f"APPEND Load ({flags})", body)
        elif op == "store":
            seq = rng.randint(1, size)
            flag = rng.choice(KEYWORDS + SYSTEM)
            self.cmd(f"STORE {seq} {rng.choice('+-')}FLAGS ({flag})")
        elif op == "uidstore":
            known = [u for u in c.view if u is not None]
            if known:
                self.cmd(f"UID STORE {rng.choice(known)} +FLAGS.SILENT ({rng.choice(KEYWORDS)})")
        elif op == "expunge":
            self.cmd(f"STORE {rng.randint(1, size)} +FLAGS.SILENT (\\Deleted)")
            self.cmd("EXPUNGE")
        elif op == "move":
            self.cmd(f"MOVE {rng.randint(1, size)} {other_box}")
        elif op == "fetch":
            self.cmd("FETCH 1:* (UID FLAGS)")
        elif op == "search":
            self.cmd("UID FETCH 1:* (FLAGS)")
            self.cmd("UID SEARCH ALL")
        else:
            self.cmd("NOOP")


def test_random_load_every_untagged_response_is_consistent(server):
    setup = raw_login(server)
    for box in ("Load", "LoadOut"):
        setup.send(f"c CREATE {box}\r\n".encode())
        setup.until_tagged("c")
    sessions = [Session(server, f"s{i}", qresync=(i == 3), seed=1000 + i) for i in range(5)]
    crashed = []

    def run(s):
        try:
            for _ in range(250):
                s.step("LoadOut")
        except Exception as e:  # noqa: BLE001 - reported below with the session's name
            crashed.append(f"{s.c.name}: {e!r}")

    threads = [threading.Thread(target=run, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not crashed, crashed
    errors = [e for s in sessions for e in s.c.errors]
    assert not errors, "\n".join(errors[:30])
    # the run exercised what it checks: other sessions' appends, expunges (EXPUNGE and
    # VANISHED), keyword announcements and flag updates
    seen = sum((s.c.seen for s in sessions), Counter())
    print("untagged responses checked:", dict(seen))
    for kind in ("EXISTS", "EXPUNGE", "VANISHED", "FLAGS", "FETCH", "SEARCH"):
        assert seen[kind] >= 20, (kind, seen)

    # at rest, every view is the mailbox
    fresh = Session(server, "fresh")
    # the random run can end with every message expunged: two more keep the comparison below
    # from being vacuous (the other sessions learn of them at their NOOP)
    for i in range(2):
        fresh.cmd("APPEND Load (\\Seen)", f"Subject: at rest {i}\r\n\r\nx\r\n".encode())
    fresh.cmd("FETCH 1:* (UID FLAGS)")
    truth = list(zip(fresh.c.view, fresh.c.flags))
    assert len(truth) > 0
    for s in sessions:
        s.cmd("NOOP")
        s.cmd("FETCH 1:* (UID FLAGS)")
        assert list(zip(s.c.view, s.c.flags)) == truth, s.c.name
    assert not [e for s in sessions + [fresh] for e in s.c.errors]
    for s in sessions + [fresh]:
        s.r.send(b"z LOGOUT\r\n")


def test_the_checker_catches_what_it_claims():
    """The checker itself, on made-up answers: each violation it exists for is reported."""
    def errors(lines, qresync=False):
        c = Checker("x", qresync)
        for l in lines:
            c.untagged(l)
        return c.errors

    base = ["* FLAGS (\\Seen $A)", "* 2 EXISTS", "* 1 FETCH (UID 5 FLAGS (\\Seen))", "* 2 FETCH (UID 7 FLAGS ($A))"]
    assert errors(base) == []
    assert errors(base + ["* 1 EXISTS"])                      # EXISTS decreased
    assert errors(base + ["* 3 EXPUNGE"])                     # unknown sequence number
    assert errors(base + ["* 1 FETCH (UID 6 FLAGS ())"])      # a slot changes UID
    assert errors(base + ["* 1 FETCH (UID 9 FLAGS ())"])      # UIDs out of order
    assert errors(base + ["* 2 FETCH (FLAGS ($B))"])          # keyword never announced
    assert errors(base + ["* VANISHED 7"])                    # VANISHED without QRESYNC
    assert errors(base + ["* 1 EXPUNGE"], qresync=True)       # EXPUNGE with QRESYNC
    assert errors(base + ["* VANISHED 8"], qresync=True)      # a UID the session lacks
    assert errors(base + ["* VANISHED 5:7"], qresync=True) == ["x: VANISHED of a UID the session does not have: * VANISHED 5:7 view=[7]"]
    assert errors(base + ["* SEARCH 5"])                      # SEARCH ALL missing a UID
