"""neomutt, a real terminal mail client, driven in tmux against Postern over IMAPS with the
certificate verified: it lists a mailbox, a message is read (its body shown, \\Seen reaches the
server), one flagged, one deleted and expunged, one saved (moved) into another mailbox, and a
message that arrives while neomutt watches the mailbox appears in its index. The server's state
is then read back with imaplib."""
import shutil
import subprocess
import time

import pytest

from conftest import BOB, BOB_PW
from test_offlineimap import imap, server_state

NEOMUTT = shutil.which("neomutt")
TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(NEOMUTT is None or TMUX is None,
                                reason="needs Debian's neomutt and tmux packages")


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
            s = server_state(server, "Mutt")
            if set(s) == {"Subject: mutt 0", "Subject: mutt 1"}:
                break
            time.sleep(0.5)
        assert set(s) == {"Subject: mutt 0", "Subject: mutt 1"}, (s, t.screen())
        assert "\\Seen" in s["Subject: mutt 0"], s
        assert "\\Flagged" in s["Subject: mutt 1"], s
        assert set(server_state(server, "MuttDone")) == {"Subject: mutt 3"}
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
