"""offlineimap (Debian's offlineimap3), a strict two-way IMAP <-> Maildir synchroniser, against
Postern over IMAPS with the certificate verified: a first sync brings the mailboxes and flags
down; flags set and a message deleted in the Maildir, and a message filed into another folder,
reach the server on the next sync; a flag set and a message expunged on the server reach the
Maildir on the one after. A sync that changes nothing changes nothing on either side."""
import imaplib
import re
import shutil
import subprocess

import pytest

from conftest import BOB, BOB_PW, tls_client_context

OFFLINEIMAP = shutil.which("offlineimap")
pytestmark = pytest.mark.skipif(OFFLINEIMAP is None, reason="needs Debian's offlineimap3 package")


def imap(server):
    m = imaplib.IMAP4_SSL("127.0.0.1", server.imaps, ssl_context=tls_client_context(), timeout=15)
    m.login(BOB, BOB_PW)
    return m


def sync(rc):
    p = subprocess.run([OFFLINEIMAP, "-c", str(rc), "-o", "-u", "basic"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "ERROR" not in p.stdout + p.stderr, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


def files(folder):
    return sorted(f for sub in ("cur", "new") for f in (folder / sub).iterdir())


def subject(f):
    """The Subject of a Maildir file (offlineimap writes LF line ends locally)."""
    return re.search(rb"Subject: (.*?)\r?\n", f.read_bytes()).group(1).decode()


def server_state(server, box):
    """{Subject line: flags} of a mailbox, read by a fresh session."""
    m = imap(server)
    m.select(box)
    typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    out = {}
    for item in data:
        if isinstance(item, tuple):
            subject = item[1].decode().strip()
            flags = item[0].decode().split("FLAGS (")[1].split(")")[0]
            out[subject] = set(flags.split())
    m.logout()
    return out


def test_offlineimap_two_way_sync(server, tmp_path):
    m = imap(server)
    m.create("Offline")
    m.create("OfflineDone")
    for i in range(4):
        m.append("Offline", "(\\Seen)" if i == 0 else None, None,
                 f"From: a@example.test\r\nSubject: off {i}\r\nMessage-ID: <off{i}@x>\r\n\r\nbody {i}\r\n".encode())
    m.logout()

    local = tmp_path / "Maildir"
    meta = tmp_path / "meta"
    pw = tmp_path / "pw"
    pw.write_text(BOB_PW)
    rc = tmp_path / "offlineimaprc"
    # `localhost` is in the certificate's names; the certificate itself is the CA file
    rc.write_text(f"""[general]
accounts = postern
metadata = {meta}

[Account postern]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {local}

[Repository remote]
type = IMAP
remotehost = localhost
remoteport = {server.imaps}
ssl = yes
sslcacertfile = {server.dir / 'tls' / 'cert.pem'}
remoteuser = {BOB}
remotepassfile = {pw}
folderfilter = lambda f: f in ['Offline', 'OfflineDone']
createfolders = True
""")
    sync(rc)
    folder = local / "Offline"
    got = files(folder)
    assert len(got) == 4, got
    # the \Seen message came down with its S flag
    seen = [f for f in got if b"Subject: off 0" in f.read_bytes()]
    assert seen and seen[0].name.endswith(",S"), [f.name for f in got]

    # local changes: flag one (F), delete one, file one into OfflineDone
    by_subject = {subject(f): f for f in got}
    flagged = by_subject["off 1"]
    flagged.rename(folder / "cur" / (flagged.name.split(":2,")[0] + ":2,FS"))
    by_subject["off 2"].unlink()
    done = local / "OfflineDone" / "new"
    done.mkdir(parents=True, exist_ok=True)
    (done / "1700000000.9.local").write_bytes(b"From: bob@example.test\r\nSubject: filed locally\r\n\r\nx\r\n")
    sync(rc)
    state = server_state(server, "Offline")
    assert set(state) == {"Subject: off 0", "Subject: off 1", "Subject: off 3"}, state
    assert {"\\Flagged", "\\Seen"} <= state["Subject: off 1"], state
    assert "Subject: filed locally" in server_state(server, "OfflineDone")

    # server changes: flag one, expunge one
    m = imap(server)
    m.select("Offline")
    typ, data = m.search(None, "HEADER", "Subject", '"off 3"')
    m.store(data[0].decode(), "+FLAGS", "(\\Answered)")
    typ, data = m.search(None, "HEADER", "Subject", '"off 0"')
    m.store(data[0].decode(), "+FLAGS", "(\\Deleted)")
    m.expunge()
    m.logout()
    sync(rc)
    got = files(folder)
    subjects = {subject(f): f for f in got}
    assert set(subjects) == {"off 1", "off 3"}, subjects
    assert "R" in subjects["off 3"].name.split(":2,")[1], subjects["off 3"].name

    # a sync with nothing to do changes nothing on either side
    before_local = sorted(f.name for f in files(folder))
    before_server = server_state(server, "Offline")
    sync(rc)
    assert sorted(f.name for f in files(folder)) == before_local
    assert server_state(server, "Offline") == before_server
