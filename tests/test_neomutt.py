"""neomutt, a real terminal mail client, driven in tmux against Postern over IMAPS with the
certificate verified: it lists a mailbox, a message is read (its body shown, \\Seen reaches the
server), one flagged, one deleted and expunged, one saved (moved) into another mailbox, and a
message that arrives while neomutt watches the mailbox appears in its index. The server's state
is then read back with imaplib."""
import imaplib
import shutil
import subprocess
import time

import pytest

from conftest import BOB, BOB_PW, tls_client_context

NEOMUTT = shutil.which("neomutt")
TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(NEOMUTT is None or TMUX is None,
                                reason="needs Debian's neomutt and tmux packages")


def imap(server):
    m = imaplib.IMAP4_SSL("127.0.0.1", server.imaps, ssl_context=tls_client_context(), timeout=15)
    m.login(BOB, BOB_PW)
    return m


class Tmux:
    def __init__(self, name, cmd, env):
        self.name = name
        subprocess.run([TMUX, "kill-session", "-t", name], capture_output=True)
        subprocess.run([TMUX, "new-session", "-d", "-s", name, "-x", "160", "-y", "40", cmd],
                       check=True, env=env)

    def screen(self):
        return subprocess.run([TMUX, "capture-pane", "-p", "-t", self.name], capture_output=True,
                              text=True).stdout

    def keys(self, *keys):
        subprocess.run([TMUX, "send-keys", "-t", self.name, *keys], check=True)

    def wait(self, text, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.screen()
            if text in s:
                return s
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared on neomutt's screen:\n{self.screen()}")

    def alive(self):
        return subprocess.run([TMUX, "has-session", "-t", self.name], capture_output=True).returncode == 0

    def kill(self):
        subprocess.run([TMUX, "kill-session", "-t", self.name], capture_output=True)


def state(server, box):
    """{subject: flags} of a mailbox, read by a fresh session."""
    m = imap(server)
    m.select(box, readonly=True)
    typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    out = {}
    for item in data:
        if isinstance(item, tuple):
            subject = item[1].decode().strip().removeprefix("Subject: ")
            flags = item[0].decode().split("FLAGS (")[1].split(")")[0]
            out[subject] = set(flags.split())
    m.logout()
    return out


def test_neomutt_reads_flags_deletes_and_moves(server, tmp_path):
    m = imap(server)
    m.create("Mutt")
    for i in range(4):
        m.append("Mutt", None, None,
                 (f"From: Alice <alice@example.test>\r\nTo: {BOB}\r\nSubject: mutt {i}\r\n"
                  f"Date: Mon, 2 Nov 2026 10:0{i}:00 +0000\r\nMessage-ID: <mutt{i}@example.test>\r\n"
                  f"\r\nbody of mutt {i}\r\n").encode())
    m.logout()

    pw = tmp_path / "pw"
    pw.write_text(BOB_PW)
    rc = tmp_path / "neomuttrc"
    # `localhost` is in the certificate's names; the certificate itself is the CA file
    rc.write_text(f"""
set imap_user = "{BOB}"
set imap_pass = "`cat {pw}`"
set folder = "imaps://localhost:{server.imaps}/"
set spoolfile = "+Mutt"
set ssl_ca_certificates_file = "{server.dir / 'tls' / 'cert.pem'}"
set certificate_file = "{tmp_path / 'certs'}"
set ssl_force_tls = yes
set header_cache = ""
set message_cachedir = ""
set record = ""
set postponed = ""
set mail_check = 1
set timeout = 1
set imap_keepalive = 30
set sort = date
set delete = yes
set confirmcreate = no
set confirmappend = no
set mark_old = no
set quit = yes
set wait_key = no
set index_format = "%4C %Z %s"
""")
    env = {"HOME": str(tmp_path), "TERM": "xterm-256color", "PATH": "/usr/bin:/bin",
           "LANG": "C.UTF-8"}
    t = Tmux(f"postern-neomutt-{server.imaps}", f"{NEOMUTT} -n -F {rc}", env)
    try:
        t.wait("mutt 3")
        # read message 1: the pager shows its body; \Seen reaches the server
        t.keys("1", "Enter")
        t.keys("Enter")
        t.wait("body of mutt 0")
        t.keys("q")
        t.wait("mutt 3")
        # flag message 2, delete message 3, save (move) message 4 into MuttDone
        t.keys("2", "Enter", "F")
        t.keys("3", "Enter", "d")
        t.keys("4", "Enter", "s")
        t.wait("Save to mailbox")
        t.keys("C-u", "=MuttDone", "Enter")
        time.sleep(1)
        # sync: flags written, deleted messages expunged
        t.keys("$")
        deadline = time.time() + 20
        while time.time() < deadline:
            s = state(server, "Mutt")
            if set(s) == {"mutt 0", "mutt 1"}:
                break
            time.sleep(0.5)
        assert set(s) == {"mutt 0", "mutt 1"}, (s, t.screen())
        assert "\\Seen" in s["mutt 0"], s
        assert "\\Flagged" in s["mutt 1"], s
        assert set(state(server, "MuttDone")) == {"mutt 3"}
        # a message that arrives while neomutt has the mailbox open shows up in its index
        m = imap(server)
        m.append("Mutt", None, None,
                 b"From: carol@example.test\r\nSubject: mutt arrives\r\n"
                 b"Date: Mon, 2 Nov 2026 11:00:00 +0000\r\n\r\nnew\r\n")
        m.logout()
        t.wait("mutt arrives", timeout=30)
        t.keys("q")
        deadline = time.time() + 10
        while t.alive() and time.time() < deadline:
            time.sleep(0.2)
        assert not t.alive(), t.screen()
    finally:
        t.kill()
