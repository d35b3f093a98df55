"""Built-in alerts ([alerts]) without Prometheus: a signed webhook on loopback and mail to the
postmaster, for a queue backlog (firing, then resolved when the queue empties), a brute-force
wave (one notice, not one per check) and a broken audit chain (also `postern_audit_chain_ok 0`);
every notice is an audit event."""
import imaplib
import os
import smtplib
import socket
import time
import urllib.request

from conftest import open_db, ALICE, ALICE_PW, BOB, free_port, init_dir, start, tls_client_context
from hooks import WebhookReceiver


def setup(tmp_path, hook, secret, **kw):
    sf = tmp_path / "hook.key"
    sf.write_bytes(secret)
    sf.chmod(0o600)
    mport = free_port()
    extra = "\n".join(["[alerts]", "mail = true", f'webhook = "{hook.url}"', f'webhook_secret = "file:{sf}"',
                       "check_secs = 1", *[f"{k} = {v}" for k, v in kw.items()]])
    extra += f'\n[metrics]\nlisten = "127.0.0.1:{mport}"\n'
    d, off = init_dir(tmp_path, toml_extra=extra)
    return d, off, f"http://127.0.0.1:{mport}/metrics"


def metric(url, line, timeout=20):
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:  # the metrics listener may open after the mail ports
            time.sleep(0.2)
            continue
        if line in text.splitlines():
            return
        time.sleep(0.2)
    raise AssertionError(f"{line!r} not in the metrics: {[l for l in text.splitlines() if 'audit' in l]}")


def test_backlog_brute_force_mail_webhook_and_audit(tmp_path):
    secret = b"signing-key-" + os.urandom(8).hex().encode()
    with WebhookReceiver(secret) as hook:
        d, off, murl = setup(tmp_path, hook, secret, brute_force_failures=3, queue_backlog=2)
        srv = start(d, off)
        try:
            metric(murl, "postern_audit_chain_ok 1")
            # a backlog: two messages to a remote domain stay queued (delivery is off in tests)
            with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=20) as s:
                s.login(ALICE, ALICE_PW)
                for i in range(2):
                    s.sendmail(ALICE, ["someone@remote.test"], f"From: {ALICE}\r\nSubject: q{i}\r\n\r\nx\r\n".encode())
            h, n, raw = hook.wait_for("queue_backlog")
            assert hook.verified(h, raw), h
            assert not hook.verified(h, raw.replace(b"queue", b"QUEUE")), "the signature covers the body"
            assert h["x-postern-event"] == "firing" and n["severity"] == "warning" and "2 messages" in n["summary"]
            assert n["host"] == "mail.example.test" and not n["reminder"]
            for qid, _ in srv.queue():
                srv.cli("queue", "remove", str(qid))
            h, n, raw = hook.wait_for("queue_backlog", "resolved")
            assert hook.verified(h, raw)
            # a brute-force wave: wrong passwords for bob
            for i in range(4):
                try:
                    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
                    try:
                        m.login(BOB, f"wrong-password-{i}")
                    except imaplib.IMAP4.error:
                        pass
                    m.shutdown()
                except OSError:
                    pass
            h, n, raw = hook.wait_for("brute_force")
            assert n["severity"] == "critical" and "failed logins" in n["summary"]
            time.sleep(3)
            firing = [x for _, x, _ in hook.notices() if x["alert"] == "brute_force" and x["state"] == "firing"]
            assert len(firing) == 1, "one notice per wave, not one per check"
            # the postmaster (alice, through the alias) got the notices by mail
            deadline = time.time() + 10
            while time.time() < deadline:
                subjects = [m.split(b"\r\nSubject: ")[1].split(b"\r\n")[0] for m in srv.inbox(ALICE) if b"\r\nSubject: " in m]
                if any(b"brute force" in s for s in subjects):
                    break
                time.sleep(0.2)
            assert any(s.startswith(b"[Postern critical] brute force") for s in subjects), subjects
            assert any(s.startswith(b"[Postern resolved] queue backlog") for s in subjects), subjects
            q = srv.cli("audit-log", "query", "--json", "--limit", "1000").stdout
            assert '"alert_firing"' in q and '"alert_resolved"' in q
        finally:
            assert srv.stop() == 0


def test_broken_audit_chain_alerts(tmp_path):
    secret = b"signing-key-" + os.urandom(8).hex().encode()
    with WebhookReceiver(secret) as hook:
        d, off, murl = setup(tmp_path, hook, secret)
        srv = start(d, off)
        try:
            metric(murl, "postern_audit_chain_ok 1")
        finally:
            assert srv.stop() == 0
        # someone edits a row behind Postern's back
        with open_db(d, write=True) as c:
            n = c.execute("UPDATE audit_log SET reason = 'nothing to see' WHERE id = (SELECT MIN(id) FROM audit_log)").rowcount
        assert n == 1
        srv = start(d, off)
        try:
            h, note, raw = hook.wait_for("audit_chain_broken")
            assert hook.verified(h, raw) and note["severity"] == "critical"
            metric(murl, "postern_audit_chain_ok 0")
        finally:
            assert srv.stop() == 0
