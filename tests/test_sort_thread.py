"""SORT and THREAD (RFC 5256) from a real client library: imapclient's sort() and thread() on a
small mailbox of a conversation, with the answers a user would expect (newest first, subjects
without their Re:, replies under the message they answer); BADCHARSET and an unknown algorithm
refused. The byte-for-byte agreement with Dovecot is in test_dovecot_diff."""
import imapclient
import pytest

from conftest import BOB, BOB_PW, tls_client_context
from test_imap import raw_login

MESSAGES = [
    ("<t1@x>", None, "Budget 2027", "Mon, 02 Nov 2026 09:00:00 +0000", "carol@example.test"),
    ("<t2@x>", "<t1@x>", "Re: Budget 2027", "Mon, 02 Nov 2026 10:00:00 +0000", "alice@example.test"),
    ("<o3@x>", None, "Lunch?", "Mon, 02 Nov 2026 11:00:00 +0000", "bob@example.test"),
    ("<t4@x>", "<t2@x>", "RE: Re: Budget 2027", "Mon, 02 Nov 2026 12:00:00 +0000", "carol@example.test"),
    ("<t5@x>", "<t1@x>", "[fin] Re: Budget 2027", "Sun, 01 Nov 2026 12:00:00 -1100", "dave@example.test"),
]


@pytest.fixture(scope="module")
def client(server):
    c = imapclient.IMAPClient("127.0.0.1", port=server.imaps, ssl=True,
                              ssl_context=tls_client_context(), timeout=15)
    c.login(BOB, BOB_PW)
    c.create_folder("Threads")
    for mid, reply_to, subject, date, sender in MESSAGES:
        refs = f"In-Reply-To: {reply_to}\r\n" if reply_to else ""
        c.append("Threads", (f"From: {sender}\r\nTo: team@example.test\r\nSubject: {subject}\r\n"
                             f"Date: {date}\r\nMessage-ID: {mid}\r\n{refs}\r\nbody\r\n").encode())
    c.select_folder("Threads")
    yield c
    c.logout()


def test_capabilities(client):
    for cap in (b"SORT", b"SORT=DISPLAY", b"THREAD=REFERENCES", b"THREAD=ORDEREDSUBJECT"):
        assert client.has_capability(cap.decode()), cap


def test_sort_by_date_subject_and_from(client):
    # 5's date is 1 Nov 12:00 -1100 = 1 Nov 23:00 UTC: before all the others
    assert client.sort(["REVERSE DATE"]) == [4, 3, 2, 1, 5]
    assert client.sort(["DATE"]) == [5, 1, 2, 3, 4]
    # base subjects: "Budget 2027" four times (by sequence number), then "Lunch?"
    assert client.sort(["SUBJECT"]) == [1, 2, 4, 5, 3]
    assert client.sort(["SUBJECT", "REVERSE DATE"]) == [4, 2, 1, 5, 3]
    assert client.sort(["FROM", "DATE"]) == [2, 3, 1, 4, 5]
    # with search criteria
    assert client.sort(["DATE"], ["FROM", "carol"]) == [1, 4]


def test_thread_references_and_orderedsubject(client):
    # 1 is answered by 5 and by 2 (itself answered by 4), siblings by sent date (5's is
    # earliest); 3 stands alone
    assert client.thread("REFERENCES") == ((1, (5,), (2, 4)), (3,))
    assert client.thread("ORDEREDSUBJECT") == ((5, (1,), (2,), (4,)), (3,))


def test_refusals(server, client):
    r = raw_login(server)
    r.send(b"s SELECT Threads\r\n")
    r.until_tagged("s")
    r.send(b"a SORT (DATE) KOI8-R ALL\r\n")
    assert r.until_tagged("a")[-1].startswith("a NO [BADCHARSET")
    r.send(b"b THREAD SUPERTHREAD UTF-8 ALL\r\n")
    assert r.until_tagged("b")[-1].startswith("b BAD")
    r.send(b"c UID SORT (SIZE) UTF-8 ALL\r\n")
    got = r.until_tagged("c")
    assert got[-1].startswith("c OK") and got[0].startswith("* SORT "), got
    r.send(b"z LOGOUT\r\n")
