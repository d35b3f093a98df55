"""CONDSTORE and QRESYNC (RFC 7162) on the wire: MODSEQ per message and HIGHESTMODSEQ per
mailbox, FETCH (CHANGEDSINCE), STORE (UNCHANGEDSINCE) racing another session, SEARCH MODSEQ,
STATUS HIGHESTMODSEQ and SIZE, SELECT (QRESYNC ...) after a client was away (what vanished, what
changed), VANISHED instead of EXPUNGE once QRESYNC is on; and imapclient, a real client that
uses CONDSTORE, keeping a cache in step with CHANGEDSINCE."""
import re

import imapclient

from conftest import BOB, BOB_PW, tls_client_context
from test_imap import raw_login


def ok(r, tag, cmd):
    r.send(f"{tag} {cmd}\r\n".encode())
    got = r.until_tagged(tag)
    assert got[-1].startswith(f"{tag} OK"), got
    return got


def append(r, box, n):
    for i in range(n):
        body = f"Subject: m{i}\r\nMessage-ID: <c{i}@example.test>\r\n\r\nbody {i}\r\n".encode()
        r.send(b"ap APPEND %s {%d}\r\n" % (box.encode(), len(body)))
        assert r.line().startswith("+")
        r.send(body + b"\r\n")
        assert r.until_tagged("ap")[-1].startswith("ap OK")


def code(lines, name):
    for l in lines:
        m = re.search(r"\[" + name + r" (\d+)\]", l)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no {name} in {lines}")


def modseqs(lines):
    """{uid: (flags, modseq)} of the FETCH lines."""
    out = {}
    for l in lines:
        m = re.match(r"\* \d+ FETCH \(.*UID (\d+).*?(?:FLAGS \(([^)]*)\))?.*MODSEQ \((\d+)\)", l)
        if m:
            flags = re.search(r"FLAGS \(([^)]*)\)", l)
            out[int(m.group(1))] = (flags.group(1) if flags else None, int(m.group(3)))
    return out


def test_capabilities_and_condstore_basics(server):
    a = raw_login(server)
    caps = ok(a, "c", "CAPABILITY")[0]
    for cap in ("CONDSTORE", "QRESYNC", "STATUS=SIZE", "ENABLE"):
        assert f" {cap}" in caps, caps
    ok(a, "m", "CREATE Cs1")
    append(a, "Cs1", 3)
    # STATUS HIGHESTMODSEQ and SIZE (RFC 7162 3.1.6, RFC 8438)
    st = ok(a, "s", "STATUS Cs1 (MESSAGES HIGHESTMODSEQ SIZE)")[0]
    m = re.search(r"MESSAGES 3 HIGHESTMODSEQ (\d+) SIZE (\d+)", st)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 100, st
    # SELECT (CONDSTORE) reports the mailbox's HIGHESTMODSEQ, the one STATUS gave
    sel = ok(a, "x", "SELECT Cs1 (CONDSTORE)")
    high = code(sel, "HIGHESTMODSEQ")
    assert high == int(m.group(1))
    f = modseqs(ok(a, "f", "UID FETCH 1:* (FLAGS MODSEQ)"))
    assert sorted(f) == [1, 2, 3] and all(0 < ms <= high for _, ms in f.values()), f
    # a change raises the message's MODSEQ above HIGHESTMODSEQ; STORE answers carry MODSEQ
    st = ok(a, "t", "UID STORE 2 +FLAGS (\\Flagged)")
    (flags, ms2), = modseqs(st).values()
    assert "\\Flagged" in flags and ms2 > high, st
    # CHANGEDSINCE: only what changed after the given MODSEQ
    ch = modseqs(ok(a, "g", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {high})"))
    assert list(ch) == [2] and ch[2][1] == ms2, ch
    assert modseqs(ok(a, "h", f"FETCH 1:* (FLAGS) (CHANGEDSINCE {ms2})")) == {}
    # SEARCH MODSEQ reports the highest MODSEQ of what matched
    got = ok(a, "k", f"UID SEARCH MODSEQ {high + 1}")
    assert f"* SEARCH 2 (MODSEQ {ms2})" in got, got
    got = ok(a, "l", f"SEARCH MODSEQ {ms2 + 1}")
    assert "* SEARCH" in got, got
    # .SILENT still tells the new MODSEQ, without the flags
    got = ok(a, "n", "UID STORE 3 +FLAGS.SILENT (\\Seen)")
    assert any(re.match(r"\* 3 FETCH \(UID 3 MODSEQ \(\d+\)\)", l) for l in got), got
    a.send(b"z LOGOUT\r\n")


def test_unchangedsince_loses_to_a_change_by_another_session(server):
    """Two sessions, one message: B changes it after A read its MODSEQ; A's conditional STORE is
    refused for that message with [MODIFIED], applied to the other; A learns B's change."""
    a, b = raw_login(server), raw_login(server)
    ok(a, "m", "CREATE Cs2")
    append(a, "Cs2", 2)
    ok(a, "e", "ENABLE CONDSTORE")
    sel = ok(a, "s", "SELECT Cs2")
    known = code(sel, "HIGHESTMODSEQ")
    ok(b, "s", "SELECT Cs2")
    ok(b, "t", "STORE 1 +FLAGS ($Reviewed)")
    got = ok(a, "u", f"STORE 1:2 (UNCHANGEDSINCE {known}) +FLAGS (\\Seen)")
    assert got[-1].startswith("u OK [MODIFIED 1]"), got
    assert any(l.startswith("* 2 FETCH (FLAGS (") and "\\Seen" in l and "MODSEQ (" in l for l in got), got
    # message 1 kept B's flags and did not get \Seen
    f = modseqs(ok(a, "f", "FETCH 1 (UID FLAGS MODSEQ)"))
    assert "$Reviewed" in f[1][0] and "\\Seen" not in f[1][0], f
    # UID STORE names UIDs in MODIFIED
    got = ok(a, "v", f"UID STORE 1:2 (UNCHANGEDSINCE {known}) -FLAGS (\\Seen)")
    assert got[-1].startswith("v OK [MODIFIED 1:2]"), got
    # B, with CONDSTORE off, sees flag updates without MODSEQ
    got = ok(b, "n", "NOOP")
    assert any("FETCH" in l and "\\Seen" in l for l in got) and not any("MODSEQ" in l for l in got), got
    for r in (a, b):
        r.send(b"z LOGOUT\r\n")


def test_qresync_resynchronises_a_returning_client(server):
    """A client notes UIDVALIDITY, HIGHESTMODSEQ and its UIDs, goes away; meanwhile messages are
    flagged, expunged, moved and added. It comes back with SELECT (QRESYNC ...) and is told
    exactly what vanished (VANISHED (EARLIER)) and what changed (FETCH with MODSEQ), and only for
    the UIDs it knows."""
    a = raw_login(server)
    ok(a, "m", "CREATE Cs3")
    ok(a, "m2", "CREATE Cs3Other")
    append(a, "Cs3", 8)
    # QRESYNC must be enabled before SELECT uses it
    a.send(b"q SELECT Cs3 (QRESYNC (1 1))\r\n")
    assert a.until_tagged("q")[-1].startswith("q BAD")
    got = ok(a, "e", "ENABLE QRESYNC")
    assert "* ENABLED QRESYNC" in got, got
    sel = ok(a, "s", "SELECT Cs3")
    uv, known = code(sel, "UIDVALIDITY"), code(sel, "HIGHESTMODSEQ")
    a.send(b"z LOGOUT\r\n")

    b = raw_login(server)
    ok(b, "s", "SELECT Cs3")
    ok(b, "t", "UID STORE 2,5 +FLAGS (\\Answered)")
    ok(b, "d", "UID STORE 3,4 +FLAGS (\\Deleted)")
    ok(b, "x", "EXPUNGE")
    ok(b, "mv", "UID MOVE 7 Cs3Other")
    append(b, "Cs3", 1)  # UID 9: new, reported by EXISTS, not by the resync
    b.send(b"z LOGOUT\r\n")

    c = raw_login(server)
    ok(c, "e", "ENABLE QRESYNC")
    got = ok(c, "s", f"SELECT Cs3 (QRESYNC ({uv} {known} 1:8))")
    assert "* VANISHED (EARLIER) 3:4,7" in got, got
    assert "* 6 EXISTS" in got, got
    changed = modseqs(got)
    assert sorted(changed) == [2, 5], changed  # 9 is new: EXISTS tells of it
    assert all(ms > known for _, ms in changed.values())
    # only the UIDs the client knows: with 1:4 it hears of 3:4 and 2 only
    got = ok(c, "s2", f"SELECT Cs3 (QRESYNC ({uv} {known} 1:4))")
    assert got[0] == "* OK [CLOSED] Previous mailbox is now closed", got
    assert "* VANISHED (EARLIER) 3:4" in got and sorted(modseqs(got)) == [2], got
    # a stale UIDVALIDITY: a plain SELECT, nothing resynchronised
    got = ok(c, "s3", f"SELECT Cs3 (QRESYNC ({uv + 1} {known}))")
    assert not any("VANISHED" in l for l in got) and not modseqs(got), got
    # UID FETCH (CHANGEDSINCE .. VANISHED)
    got = ok(c, "f", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {known} VANISHED)")
    assert got[0] == "* VANISHED (EARLIER) 3:4,7", got
    assert sorted(modseqs(got)) == [2, 5, 9], got
    # VANISHED without QRESYNC's conditions is refused
    c.send(b"g FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n")
    assert c.until_tagged("g")[-1].startswith("g BAD")
    # with QRESYNC on, an expunge is a VANISHED of UIDs, not EXPUNGE of sequence numbers
    ok(c, "d", "UID STORE 5:6 +FLAGS.SILENT (\\Deleted)")
    got = ok(c, "x", "EXPUNGE")
    assert "* VANISHED 5:6" in got and not any("EXPUNGE" in l and l.startswith("* ") for l in got), got
    got = ok(c, "f2", f"UID FETCH 1:* (UID) (CHANGEDSINCE {known} VANISHED)")
    assert got[0] == "* VANISHED (EARLIER) 3:7", got
    c.send(b"z LOGOUT\r\n")


def test_idle_session_gets_modseq_and_vanished(server):
    """A session with QRESYNC on, in IDLE, hears another session's flag change with its MODSEQ
    and its expunge as VANISHED."""
    a, b = raw_login(server), raw_login(server)
    ok(a, "m", "CREATE Cs4")
    append(a, "Cs4", 3)
    ok(a, "e", "ENABLE QRESYNC CONDSTORE")
    ok(a, "s", "SELECT Cs4")
    a.send(b"i IDLE\r\n")
    assert a.line().startswith("+")
    ok(b, "s", "SELECT Cs4")
    ok(b, "t", "UID STORE 2 +FLAGS (\\Deleted)")
    line = a.line()
    assert re.match(r"\* 2 FETCH \(UID 2 FLAGS \(\\Deleted( \\Recent)?\) MODSEQ \(\d+\)\)", line), line
    ok(b, "x", "EXPUNGE")
    assert a.line() == "* VANISHED 2"
    a.send(b"DONE\r\n")
    assert a.until_tagged("i")[-1].startswith("i OK")
    for r in (a, b):
        r.send(b"z LOGOUT\r\n")


def test_imapclient_keeps_a_cache_with_changedsince(server):
    """imapclient (a real client library with CONDSTORE support): a cache of flags filled once,
    then kept in step by FETCH CHANGEDSINCE after changes from another connection."""
    def connect():
        c = imapclient.IMAPClient("127.0.0.1", port=server.imaps, ssl=True,
                                  ssl_context=tls_client_context(), timeout=15)
        c.login(BOB, BOB_PW)
        return c
    c = connect()
    assert c.has_capability("CONDSTORE") and c.has_capability("QRESYNC")
    c.create_folder("Cs5")
    for i in range(5):
        c.append("Cs5", f"Subject: ic{i}\r\n\r\nbody\r\n".encode())
    c.enable("CONDSTORE")
    info = c.select_folder("Cs5")
    high = info[b"HIGHESTMODSEQ"]
    cache = {uid: (set(d[b"FLAGS"]), d[b"MODSEQ"][0]) for uid, d in c.fetch(c.search("ALL"), ["FLAGS", "MODSEQ"]).items()}
    assert len(cache) == 5 and all(ms <= high for _, ms in cache.values())

    other = connect()
    other.select_folder("Cs5")
    other.add_flags([1, 3], [imapclient.FLAGGED])
    other.add_flags([4], [b"$Work"])
    other.logout()

    changed = c.fetch(c.search("ALL"), ["FLAGS"], modifiers=[f"CHANGEDSINCE {high}"])
    assert sorted(changed) == [1, 3, 4], changed
    for uid, d in changed.items():
        assert d[b"MODSEQ"][0] > high
        cache[uid] = (set(d[b"FLAGS"]), d[b"MODSEQ"][0])
    assert imapclient.FLAGGED in cache[1][0] and b"$Work" in cache[4][0]
    assert cache == {uid: (set(d[b"FLAGS"]), d[b"MODSEQ"][0])
                     for uid, d in c.fetch(c.search("ALL"), ["FLAGS", "MODSEQ"]).items()}
    assert c.folder_status("Cs5", [b"HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"] == max(ms for _, ms in cache.values())
    c.logout()
