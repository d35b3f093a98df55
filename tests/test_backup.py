"""Encrypted backups: `postern backup create` while the server takes mail and expunges it, then
`verify`, `restore --dir NEWDIR` and a server started on the restored directory that serves every
message byte for byte over IMAP and whose audit chain verifies. A damaged, truncated or wrongly
keyed backup is refused with a clear message; restore without the master key fails closed; the
master key cannot be the backup key; scheduled backups ([backup]) appear and are pruned."""
import imaplib
import json
import os
import smtplib
import threading
import time

from conftest import ALICE, ALICE_PW, BOB, BOB_PW, init_dir, run_cli, start, tls_client_context


def keygen(tmp_path, name="backup.key"):
    key = tmp_path / name
    out = run_cli(tmp_path, "backup", "keygen", "--out", str(key)).stdout
    recipient = [l.split()[-1] for l in out.splitlines() if "recipient" in l][0]
    assert recipient.startswith("age1")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    return key, recipient


def fetch_all(port, user, pw):
    """{uid: raw message} of a user's INBOX over IMAPS."""
    m = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_client_context(), timeout=30)
    m.login(user, pw)
    m.select("INBOX", readonly=True)
    typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
    out = {}
    for item in data:
        if isinstance(item, tuple):
            uid = int(item[0].split(b"UID ")[1].split()[0])
            out[uid] = item[1]
    m.logout()
    return out


def send(port, n, start_at, acked):
    with smtplib.SMTP_SSL("127.0.0.1", port, context=tls_client_context(), timeout=30) as s:
        s.login(ALICE, ALICE_PW)
        for i in range(start_at, start_at + n):
            body = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: load {i}\r\n\r\n" + ("line %d\r\n" % i) * (i % 50 + 1)
            s.sendmail(ALICE, [BOB], body.encode())
            acked.append(i)


def test_backup_under_load_restores_every_message(tmp_path):
    d, off = init_dir(tmp_path)
    run_cli(d, "user", "send-limits", ALICE, "--messages-per-hour", "100000", "--recipients-per-hour", "100000")
    key, _ = keygen(tmp_path)
    srv = start(d, off)
    try:
        acked = []
        send(srv.submissions, 40, 0, acked)
        before = set(acked)
        # load while the backup runs: new mail in, and old mail expunged (its bodies removed)
        stop = threading.Event()
        errors = []

        def sender():
            i = 1000
            while not stop.is_set():
                try:
                    send(srv.submissions, 5, i, acked)
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
                    return
                i += 5

        def expunger():
            m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=30)
            m.login(BOB, BOB_PW)
            m.select("INBOX")
            while not stop.is_set():
                typ, data = m.search(None, "ALL")
                ids = data[0].split()
                if len(ids) > 30:
                    m.store(ids[0], "+FLAGS", "\\Deleted")
                    m.expunge()
                time.sleep(0.05)
            m.logout()

        threads = [threading.Thread(target=sender), threading.Thread(target=expunger)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        out = srv.cli("backup", "create", "--to", str(tmp_path / "b1.tar.age"), "--key", f"file:{key}", "--json")
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(60)
        assert not errors, errors
        summary = json.loads(out.stdout)
        assert summary["messages"] > 0 and summary["accounts"] == 3
        assert oct((tmp_path / "b1.tar.age").stat().st_mode & 0o777) == "0o600"
        # nothing in clear: no message text, no address in the file
        raw = (tmp_path / "b1.tar.age").read_bytes()
        assert raw.startswith(b"age-encryption.org/v1")
        assert b"load 1" not in raw and b"example.test" not in raw
        final = fetch_all(srv.imaps, BOB, BOB_PW)
    finally:
        assert srv.stop() == 0

    v = run_cli(tmp_path, "backup", "verify", str(tmp_path / "b1.tar.age"), "--key", f"file:{key}", "--json")
    manifest = json.loads(v.stdout)
    assert manifest["database"]["messages"] == summary["messages"]
    assert any("master key" in n for n in manifest["not_included"])

    new = tmp_path / "restored"
    r = run_cli(new, "backup", "restore", str(tmp_path / "b1.tar.age"), "--key", f"file:{key}",
                "--master-key", f"file:{d / 'master.key'}", "--json")
    restored = json.loads(r.stdout)
    assert restored["messages"] == summary["messages"]
    assert restored["audit_rows_verified"] > 0
    assert oct((new / "master.key").stat().st_mode & 0o777) == "0o600"
    run_cli(new, "audit-log", "verify")
    srv2 = start(new, off)
    try:
        got = fetch_all(srv2.imaps, BOB, BOB_PW)
        # every message the restored server serves was acknowledged, and is byte for byte the one
        # the original served (when the original still had it at the end)
        subjects = {int(b.split(b"Subject: load ")[1].split(b"\r\n")[0]) for b in got.values()}
        assert subjects <= set(acked)
        same = [u for u in got if u in final]
        assert same, "no message in common with the end state"
        for u in same:
            assert got[u] == final[u], f"UID {u} differs"
        # every message acknowledged before the backup began and not expunged is there
        with srv2.db() as c:
            n = c.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        assert n == summary["messages"]
        total = sum(1 for _ in got) + len(fetch_all(srv2.imaps, ALICE, ALICE_PW))
        assert total <= n
        assert len(got) >= 30 and before  # the expunger keeps about 30
        # the restored server takes mail and records it in the same chain
        acked2 = []
        send(srv2.submissions, 2, 5000, acked2)
    finally:
        assert srv2.stop() == 0
    run_cli(new, "audit-log", "verify")
    q = run_cli(new, "audit-log", "query", "--json", "--limit", "1000").stdout
    assert '"backup_restored"' in q


def test_damaged_truncated_wrong_key_and_missing_master_key_are_refused(tmp_path):
    d, off = init_dir(tmp_path)
    key, recipient = keygen(tmp_path)
    other, _ = keygen(tmp_path, "other.key")
    srv = start(d, off)
    try:
        acked = []
        send(srv.submissions, 3, 0, acked)
        b = tmp_path / "b.tar.age"
        srv.cli("backup", "create", "--to", str(b), "--key", f"file:{key}")
        # never over an existing file
        p = srv.cli("backup", "create", "--to", str(b), "--key", f"file:{key}", check=False)
        assert p.returncode != 0 and "exists" in p.stderr
        # the master key is not a backup key
        p = srv.cli("backup", "create", "--to", str(tmp_path / "m.tar.age"), "--key", f"file:{d / 'master.key'}", check=False)
        assert p.returncode != 0 and "is the master key" in p.stderr, p.stderr
        # a key on the command line is refused
        p = srv.cli("backup", "create", "--to", str(tmp_path / "x.tar.age"), "--key", "hunter2hunter2hunter2", check=False)
        assert p.returncode != 0 and "reference" in p.stderr
        # a recipient makes backups it cannot read
        rfile = tmp_path / "recipient"
        rfile.write_text(recipient + "\n")
        rfile.chmod(0o600)
        srv.cli("backup", "create", "--to", str(tmp_path / "r.tar.age"), "--key", f"file:{rfile}")
        p = run_cli(tmp_path, "backup", "verify", str(tmp_path / "r.tar.age"), "--key", f"file:{rfile}", check=False)
        assert p.returncode != 0 and "cannot read" in p.stderr
        run_cli(tmp_path, "backup", "verify", str(tmp_path / "r.tar.age"), "--key", f"file:{key}")
        # a passphrase from the environment
        env = dict(os.environ, BK_PASS="a long backup passphrase of mine")
        import subprocess
        from conftest import BIN
        subprocess.run([BIN, "--dir", str(d), "backup", "create", "--to", str(tmp_path / "p.tar.age"),
                        "--key", "env:BK_PASS"], env=env, check=True, capture_output=True, timeout=120)
        p = subprocess.run([BIN, "backup", "verify", str(tmp_path / "p.tar.age"), "--key", "env:BK_PASS"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    finally:
        assert srv.stop() == 0

    data = b.read_bytes()
    p = run_cli(tmp_path, "backup", "verify", str(b), "--key", f"file:{other}", check=False)
    assert p.returncode != 0 and "wrong key" in p.stderr, p.stderr
    flipped = tmp_path / "flipped.tar.age"
    mid = len(data) // 2
    flipped.write_bytes(data[:mid] + bytes([data[mid] ^ 1]) + data[mid + 1:])
    p = run_cli(tmp_path, "backup", "verify", str(flipped), "--key", f"file:{key}", check=False)
    assert p.returncode != 0 and "damaged" in p.stderr, p.stderr
    for cut in (len(data) - 1, len(data) - 20000, 300):
        t = tmp_path / f"cut{cut}.tar.age"
        t.write_bytes(data[:cut])
        p = run_cli(tmp_path, "backup", "verify", str(t), "--key", f"file:{key}", check=False)
        assert p.returncode != 0 and ("truncated" in p.stderr or "damaged" in p.stderr), (cut, p.stderr)
    # restore of a damaged backup writes nothing
    new = tmp_path / "new"
    p = run_cli(new, "backup", "restore", str(flipped), "--key", f"file:{key}", check=False)
    assert p.returncode != 0 and not new.exists()
    # restore without the master key fails closed and says why
    p = run_cli(new, "backup", "restore", str(b), "--key", f"file:{key}", check=False)
    assert p.returncode != 0 and "master key" in p.stderr and "--master-key" in p.stderr, p.stderr
    assert not new.exists()
    # a different master key is refused too
    wrong = tmp_path / "wrong-master.key"
    wrong.write_text("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
    wrong.chmod(0o600)
    p = run_cli(new, "backup", "restore", str(b), "--key", f"file:{key}", "--master-key", f"file:{wrong}", check=False)
    assert p.returncode != 0 and "not the one" in p.stderr, p.stderr
    assert not new.exists()
    # into a directory that holds something: refused
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    p = run_cli(busy, "backup", "restore", str(b), "--key", f"file:{key}", "--master-key", f"file:{d / 'master.key'}", check=False)
    assert p.returncode != 0 and "not empty" in p.stderr
    assert (busy / "x").exists()


def test_scheduled_backups_and_retention(tmp_path):
    key, recipient = keygen(tmp_path)
    rfile = tmp_path / "recipient"
    rfile.write_text(recipient + "\n")
    rfile.chmod(0o600)
    extra = f'[backup]\ndir = "backups"\nkey = "file:{rfile}"\ninterval_hours = 1\nkeep = 2\n'
    d, off = init_dir(tmp_path, toml_extra=extra)
    bdir = d / "backups"

    def wait_for(n):
        deadline = time.time() + 30
        while time.time() < deadline:
            files = sorted(p for p in bdir.glob("postern-*.tar.age")) if bdir.exists() else []
            if len(files) >= n:
                return files
            time.sleep(0.2)
        raise AssertionError(f"no {n} scheduled backups: {list(bdir.glob('*')) if bdir.exists() else None}")

    srv = start(d, off)
    try:
        first = wait_for(1)
        run_cli(tmp_path, "backup", "verify", str(first[0]), "--key", f"file:{key}")
        lst = json.loads(srv.cli("backup", "list", "--json").stdout)
        assert len(lst) == 1
    finally:
        assert srv.stop() == 0
    def created():
        q = run_cli(d, "audit-log", "query", "--json", "--limit", "1000").stdout
        return q.count('"backup_created"')

    for expected in (2, 3):
        # make the newest look older than the interval: the next start backs up at once
        for f in bdir.glob("postern-*.tar.age"):
            t = f.stat().st_mtime - 7200
            os.utime(f, (t, t))
        time.sleep(1.1)  # a new name (one-second resolution)
        srv = start(d, off)
        try:
            deadline = time.time() + 30
            while created() < expected and time.time() < deadline:
                time.sleep(0.2)
        finally:
            assert srv.stop() == 0
    files = sorted(bdir.glob("postern-*.tar.age"))
    assert len(files) == 2, files
    assert first[0] not in files, "the oldest was pruned"
    assert created() == 3
