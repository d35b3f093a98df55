"""Never serve as root: started as root, the server becomes `[server] user` before it opens a
file, keeping only CAP_NET_BIND_SERVICE (it still binds a port below 1024), and everything it
writes belongs to that user; without such a user, or with a data directory that is not the
user's, it refuses to start and says what to do."""
import imaplib
import os
import pwd
import smtplib
import socket
import subprocess

import pytest

from conftest import (ALICE, ALICE_PW, BIN, BOB, BOB_PW, init_dir, run_as_service, run_cli, start,
                      tls_client_context)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping root needs root")


def low_port():
    for p in range(700, 1000):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port below 1024")


def status(pid):
    return dict(l.split(":", 1) for l in open(f"/proc/{pid}/status").read().splitlines() if ":" in l)


def test_root_is_dropped_and_only_bind_kept(service_user):
    name, uid, gid, base = service_user
    port = low_port()
    d, off = init_dir(base, toml_extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    run_as_service(d, name)
    srv = start(d, off)
    try:
        st = status(srv.proc.pid)
        assert st["Uid"].split() == [str(uid)] * 4, st["Uid"]
        assert st["Gid"].split() == [str(gid)] * 4, st["Gid"]
        assert st["Groups"].split() in ([str(gid)], []), st["Groups"]
        # CAP_NET_BIND_SERVICE is bit 10: nothing else, and nothing to pass on
        assert int(st["CapEff"], 16) == 1 << 10 and int(st["CapPrm"], 16) == 1 << 10, st
        assert int(st["CapInh"], 16) == 0 and int(st.get("CapAmb", "0"), 16) == 0, st
        # the port below 1024 was bound after the drop
        from test_alerts import metric
        metric(f"http://127.0.0.1:{port}/metrics", "postern_audit_chain_ok 1")
        # mail in and out: every new file is the service user's
        with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=20) as s:
            s.login(ALICE, ALICE_PW)
            s.sendmail(ALICE, [BOB], f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: as a user\r\n\r\nhello\r\n".encode())
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=20)
        m.login(BOB, BOB_PW)
        m.select("INBOX")
        typ, data = m.fetch("1", "(BODY[])")
        assert b"as a user" in data[0][1]
        m.logout()
        owners = {os.stat(os.path.join(r, f)).st_uid for r, _, fs in os.walk(d) for f in fs}
        assert owners == {uid}, f"files not owned by {name}: {owners}"
        # a CLI command run as root beside it works, and leaves nothing owned by root
        run_cli(d, "user", "add", "dave@example.test", "--password-stdin", stdin="Quartz-Lantern-Meadow-4417!\n")
        owners = {os.stat(os.path.join(r, f)).st_uid for r, _, fs in os.walk(d) for f in fs}
        assert owners == {uid}, owners
    finally:
        assert srv.stop() == 0


def test_refusals_say_what_to_do(service_user):
    name, uid, gid, base = service_user
    d, off = init_dir(base, with_users=False)
    cfg = d / "postern.toml"
    text = cfg.read_text()
    # a user that does not exist
    cfg.write_text(text.replace('user = "root"', 'user = "no-such-user-x"', 1))
    p = subprocess.run([BIN, "--dir", str(d), "serve"], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "does not serve as root" in p.stderr and "useradd" in p.stderr, p.stderr
    # the default, `postern`, when there is no such user
    try:
        pwd.getpwnam("postern")
    except KeyError:
        cfg.write_text(text.replace('user = "root"\n', "", 1))
        p = subprocess.run([BIN, "--dir", str(d), "serve"], capture_output=True, text=True, timeout=30)
        assert p.returncode != 0 and '"postern" does not exist' in p.stderr, p.stderr
    # a data directory that is not the user's
    cfg.write_text(text.replace('user = "root"', f'user = "{name}"', 1))
    p = subprocess.run([BIN, "--dir", str(d), "serve"], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and f"chown -R {name}:" in p.stderr, p.stderr
    # init --user hands a new directory over
    d2 = base / "fresh"
    out = run_cli(d2, "init", "--dir", str(d2), "--domain", "example.test", "--listen-ip", "127.0.0.1",
                  "--port-offset", "31000", "--user", name).stdout
    assert f"belongs to the user {name}" in out
    assert {os.stat(os.path.join(r, f)).st_uid for r, _, fs in os.walk(d2) for f in fs} == {uid}
    assert f'user = "{name}"' in (d2 / "postern.toml").read_text()
