"""Process lifecycle: graceful SIGTERM drain, fatal start-up errors, logs, the demo command."""
import json
import os
import re
import signal
import socket
import subprocess
import time

import smtplib

from conftest import raw_db, ALICE, ALICE_PW, BIN, Raw, init_dir, start, tls_client_context, wait_port


def test_sigterm_finishes_the_message_in_flight(tmp_path):
    d, off = init_dir(tmp_path)
    srv = start(d, off)
    r = Raw(srv.smtp)
    r.reply()
    r.cmd("EHLO c.test")
    r.cmd("MAIL FROM:<a@remote.test>")
    r.cmd(f"RCPT TO:<{ALICE}>")
    assert r.cmd("DATA")[0] == 354
    r.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # New connections are no longer accepted...
    try:
        socket.create_connection(("127.0.0.1", srv.smtp), timeout=1).close()
        refused = False
    except OSError:
        refused = True
    assert refused
    # ...but the message in flight completes and is stored, then the session is told to leave.
    r.send(b"second half\r\n.\r\n")
    assert r.reply()[0] == 250
    code, lines = r.cmd("NOOP")
    assert code == 421 and lines[0].startswith("4.3.2")
    assert srv.proc.wait(timeout=20) == 0
    assert srv.inbox(ALICE)[-1].endswith(b"first half\r\nsecond half\r\n")


def test_idle_sessions_are_closed_on_sigterm(tmp_path):
    d, off = init_dir(tmp_path)
    srv = start(d, off)
    r = Raw(srv.submission)
    r.reply()
    t = time.time()
    srv.proc.send_signal(signal.SIGTERM)
    code, _ = r.reply()
    assert code == 421
    assert srv.proc.wait(timeout=20) == 0
    assert time.time() - t < 5


def test_port_taken_is_a_clear_fatal_error(tmp_path):
    d, off = init_dir(tmp_path, with_users=False)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 587 + off))
    blocker.listen()
    try:
        p = subprocess.run([BIN, "--dir", str(d), "serve"], capture_output=True, text=True, timeout=30)
    finally:
        blocker.close()
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("postern: error:") and f"127.0.0.1:{587 + off}" in last and "submission" in last, p.stderr


def test_unreadable_key_is_a_clear_fatal_error(tmp_path):
    d, off = init_dir(tmp_path, with_users=False)
    os.chmod(d / "tls" / "key.pem", 0o644)
    p = subprocess.run([BIN, "--dir", str(d), "serve"], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert "key.pem" in last and "chmod 600" in last, p.stderr


def test_json_logs(tmp_path):
    d, off = init_dir(tmp_path)
    srv = start(d, off, extra_args=("--log-format", "json"))
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=10) as s:
        s.login(ALICE, ALICE_PW)
        s.sendmail(ALICE, [ALICE], f"From: {ALICE}\r\nSubject: j\r\n\r\nbody text here\r\n")
    assert srv.stop() == 0
    events = [json.loads(l) for l in srv.log().splitlines() if l.strip()]
    kinds = [e.get("event") for e in events]
    assert "auth" in kinds and "message" in kinds and "connection" in kinds
    auth = next(e for e in events if e.get("event") == "auth")
    assert auth["result"] == "ok" and auth["user"] == ALICE and auth["ip"] == "127.0.0.1" and auth["tls"] == "TLSv1.3"
    text = srv.log()
    assert ALICE_PW not in text and "body text here" not in text


def test_demo_one_command(tmp_path):
    d = tmp_path / "demo"
    proc = subprocess.Popen([BIN, "demo", "--dir", str(d)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        out = ""
        deadline = time.time() + 30
        while "Stop with Ctrl-C" not in out and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out += line
        m = re.search(r"password: (\S+)", out)
        assert m, out
        password = m.group(1)
        port = int(re.search(r"submission \(STARTTLS\+AUTH\) 127\.0\.0\.1:(\d+)", out).group(1))
        assert port == 10587
        wait_port(port, proc)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.starttls(context=tls_client_context())
            s.login("demo@example.test", password)
            assert s.sendmail("demo@example.test", ["demo@example.test"],
                              "From: demo@example.test\r\nSubject: demo\r\n\r\nhi\r\n") == {}
        # The generated password is stored only as an argon2id hash.
        db = raw_db(d)
        assert password.encode() not in db and b"$argon2id$" in db
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
