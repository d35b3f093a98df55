"""Disk full: on a small tmpfs the server answers with temporary failures (SMTP 452, IMAP NO),
keeps running, damages nothing already stored, and accepts mail again when space returns."""
import imaplib
import os
import shutil
import smtplib
import subprocess
import uuid

import pytest

from conftest import open_db, ALICE, BOB, BOB_PW, init_dir, start, tls_client_context


def send(srv, size):
    token = uuid.uuid4().hex
    body = f"From: x@remote.test\r\nTo: {ALICE}\r\nSubject: {token}\r\n\r\n" + ("x" * 998 + "\r\n") * (size // 1000)
    with smtplib.SMTP("127.0.0.1", srv.smtp, timeout=20) as s:
        s.sendmail("x@remote.test", [ALICE], body)
    return token


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_disk_full_is_temporary_and_recoverable(small_disk):
    d, off = init_dir(small_disk)
    srv = start(d, off)
    filler = small_disk / "filler"
    try:
        free = shutil.disk_usage(small_disk).free
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - 3 * 1024 * 1024))
        confirmed, refused = [], None
        for _ in range(40):
            try:
                confirmed.append(send(srv, 400_000))
            except smtplib.SMTPDataError as e:
                refused = (e.smtp_code, e.smtp_error.decode())
                break
        assert refused, "the disk never filled up"
        assert refused[0] == 452 and "4.3.1" in refused[1], refused
        assert confirmed, "nothing fitted before the disk filled"
        # IMAP APPEND is refused with a temporary NO, and the server stays up
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=20)
        m.login(BOB, BOB_PW)
        typ, data = m.append("INBOX", None, None, b"Subject: big\r\n\r\n" + b"y" * 2_000_000)
        assert typ == "NO" and b"UNAVAILABLE" in data[0], (typ, data)
        m.logout()
        assert srv.proc.poll() is None
        # space returns: mail is accepted again, nothing stored was damaged
        filler.unlink()
        confirmed.append(send(srv, 400_000))
        with open_db(d) as c:
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = [m for m in srv.inbox(ALICE)]
        for t in confirmed:
            assert sum(1 for m in stored if t.encode() in m) == 1, f"message {t} lost or doubled"
        assert all(m.endswith(b"\r\n") and len(m) > 390_000 for m in stored)
    finally:
        assert srv.stop() == 0
