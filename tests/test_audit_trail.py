"""Every administrative change is an attributed audit event: each state-changing CLI command (and
the same operations through the admin API) leaves one event naming who (`cli:USER`,
`api:ADMIN`), what and on which target, read back with `postern audit-log query --json`."""
import json
import os
import pwd
import smtplib
import ssl

from conftest import ALICE, ALICE_PW, init_dir, run_cli, start, tls_client_context


def cli_user():
    return os.environ.get("USER") or os.environ.get("LOGNAME") or pwd.getpwuid(os.geteuid()).pw_name


def events(d, since_id):
    out = run_cli(d, "audit-log", "query", "--json", "--limit", "100000").stdout
    rows = [json.loads(l) for l in out.splitlines() if l.strip()]
    return [r for r in rows if r["id"] > since_id and r["event"] != "secret_read"]


def last_id(d):
    out = run_cli(d, "audit-log", "query", "--json", "--limit", "1").stdout.strip().splitlines()
    return json.loads(out[-1])["id"] if out else 0


PW = "Quartz-Lantern-Meadow-4471!"
PW2 = "Copper-Harbor-Violet-8352?"


def test_every_state_changing_cli_command_is_an_attributed_event(tmp_path):
    d, off = init_dir(tmp_path)
    # one message in the outbound queue (delivery is off in tests): submitted by alice
    srv = start(d, off)
    try:
        with smtplib.SMTP("127.0.0.1", srv.submission, timeout=20) as s:
            s.starttls(context=tls_client_context())
            s.login(ALICE, ALICE_PW)
            s.sendmail(ALICE, ["someone@remote.test"], f"From: {ALICE}\r\nSubject: q\r\n\r\nx\r\n".encode())
    finally:
        assert srv.stop() == 0
    qid = str(srv.queue()[0][0])
    who = f"cli:{cli_user()}"
    steps = [
        (["domain", "add", "other.test"], None, "domain_added", "other.test"),
        (["user", "add", "u@other.test", "--password-stdin"], PW, "user_created", "u@other.test"),
        (["user", "passwd", "u@other.test", "--password-stdin"], PW2, "password_reset", "u@other.test"),
        (["user", "disable", "u@other.test"], None, "user_disabled", "u@other.test"),
        (["user", "enable", "u@other.test"], None, "user_enabled", "u@other.test"),
        (["user", "networks", "u@other.test", "192.0.2.0/24"], None, "networks_set", "u@other.test"),
        (["user", "send-limits", "u@other.test", "--messages-per-hour", "5"], None, "send_limits_set",
         "u@other.test"),
        (["user", "pop3", "u@other.test", "off"], None, "pop3_set", "u@other.test"),
        (["user", "received-details", "u@other.test", "on"], None, "received_details_set", "u@other.test"),
        (["user", "expire-password", "u@other.test"], None, "password_expired", "u@other.test"),
        (["alias", "add", "a@other.test", "u@other.test"], None, "alias_added", "a@other.test"),
        (["alias", "remove", "a@other.test"], None, "alias_removed", "a@other.test"),
        (["app-password", "create", "u@other.test", "--name", "phone"], None, "app_password_created",
         "u@other.test"),
        (["app-password", "revoke", "u@other.test", "phone"], None, "app_password_revoked", "u@other.test"),
        (["ban", "add", "203.0.113.9"], None, "ban", "203.0.113.9"),
        (["ban", "remove", "203.0.113.9"], None, "unban", "203.0.113.9"),
        (["ban", "add", "203.0.113.10"], None, "ban", "203.0.113.10"),
        (["ban", "clear"], None, "unban", "*"),
        (["queue", "hold", qid], None, "queue_held", qid),
        (["queue", "release", qid], None, "queue_released", qid),
        (["queue", "retry", qid], None, "queue_retry", qid),
        (["queue", "remove", qid], None, "queue_removed", qid),
        (["user", "remove", "u@other.test"], None, "user_removed", "u@other.test"),
        (["domain", "remove", "other.test"], None, "domain_removed", "other.test"),
    ]
    for args, stdin, event, target in steps:
        before = last_id(d)
        run_cli(d, *args, stdin=(stdin + "\n") if stdin else None)
        new = events(d, before)
        assert len(new) == 1, (args, new)
        e = new[0]
        assert e["event"] == event, (args, e)
        assert e["actor"] == who, (args, e)
        assert e["username"] == target, (args, e)
        assert e["result"] == "ok", (args, e)
    # the credential commands: applications, administrators, secrets, DKIM keys, 2FA
    more = [
        (["app", "create", "billing", "--allow-from", "@example.test"], None, "app_created", "billing"),
        (["app", "rotate", "billing", "--grace", "1h"], None, "app_rotated", "billing"),
        (["app", "disable", "billing"], None, "app_disabled", "billing"),
        (["app", "enable", "billing"], None, "app_enabled", "billing"),
        (["app", "remove", "billing"], None, "app_removed", "billing"),
        (["admin", "bootstrap"], None, "admin_created", "admin:admin"),
        (["admin", "add", "ops", "--role", "helpdesk"], None, "admin_created", "admin:ops"),
        (["admin", "passwd", "ops"], None, "admin_password_reset", "admin:ops"),
        (["admin", "disable", "ops"], None, "admin_disabled", "admin:ops"),
        (["admin", "enable", "ops"], None, "admin_enabled", "admin:ops"),
        (["admin", "reset-2fa", "ops"], None, "2fa_disabled", "admin:ops"),
        (["admin", "remove", "ops"], None, "admin_removed", "admin:ops"),
        (["secret", "set", "relay", "--stdin"], "s3cret-relay-value", "secret_set", "relay"),
        (["secret", "remove", "relay"], None, "secret_removed", "relay"),
        (["dkim", "generate", "example.test", "--selector", "one"], None, "dkim_generated", "example.test"),
        (["dkim", "generate", "example.test", "--selector", "two"], None, "dkim_generated", "example.test"),
        (["dkim", "retire", "example.test", "one"], None, "dkim_retired", "example.test"),
    ]
    for args, stdin, event, target in more:
        before = last_id(d)
        run_cli(d, *args, stdin=(stdin + "\n") if stdin else None)
        new = events(d, before)
        assert len(new) == 1, (args, new)
        e = new[0]
        assert (e["event"], e["actor"], e["username"], e["result"]) == (event, who, target, "ok"), (args, e)
    # 2FA of an account: enrolment (confirmed with a code), then turned off by the host
    from test_twofactor import enroll

    class Srv:
        dir = d
    before = last_id(d)
    _, out, rc, err = enroll(Srv, ALICE)
    assert rc == 0, err
    new = events(d, before)
    assert [(e["event"], e["actor"], e["username"]) for e in new] == [("2fa_enabled", who, ALICE)], new
    before = last_id(d)
    run_cli(d, "user", "2fa", "disable", ALICE, "--admin-override", "--reason", "lost phone")
    new = events(d, before)
    assert [(e["event"], e["actor"], e["username"]) for e in new] == [("2fa_disabled", who, ALICE)], new
    # a command that fails changes nothing and records nothing
    before = last_id(d)
    run_cli(d, "domain", "remove", "example.test", check=False)
    assert events(d, before) == []
    assert "intact" in run_cli(d, "audit-log", "verify").stdout


def test_api_changes_are_attributed_to_the_administrator(make_server):
    from test_admin_api import Api, create_admin, first_login
    srv = make_server()
    boot = create_admin(srv, "bootstrap")
    api = Api(srv)
    token, _, _ = first_login(api, "admin", boot["password"])
    api.token = token
    calls = [
        ("POST", "/domains", {"name": "api.test"}, "domain_added", "api.test"),
        ("POST", "/users", {"address": "v@api.test", "password": PW}, "user_created", "v@api.test"),
        ("POST", "/users/v@api.test/disable", None, "user_disabled", "v@api.test"),
        ("POST", "/users/v@api.test/enable", None, "user_enabled", "v@api.test"),
        ("POST", "/bans", {"target": "203.0.113.20"}, "ban", "203.0.113.20"),
        ("POST", "/bans/lift", {"target": "203.0.113.20"}, "unban", "203.0.113.20"),
        ("POST", "/users/v@api.test/password", {"password": PW2}, "password_reset", "v@api.test"),
        ("POST", "/users/v@api.test/unlock", None, "user_unlocked", "v@api.test"),
        ("POST", "/users/v@api.test/app-passwords", {"name": "phone"}, "app_password_created", "v@api.test"),
        ("DELETE", "/users/v@api.test/app-passwords/phone", None, "app_password_revoked", "v@api.test"),
        ("POST", "/applications", {"name": "crm", "allow_from": ["@api.test"]}, "app_created", "crm"),
        ("POST", "/applications/crm/rotate", {"grace_secs": 60}, "app_rotated", "crm"),
        ("DELETE", "/applications/crm", None, "app_removed", "crm"),
        ("POST", "/admins", {"name": "help2", "role": "helpdesk"}, "admin_created", "admin:help2"),
        ("DELETE", "/admins/help2", None, "admin_removed", "admin:help2"),
        ("POST", "/api-keys", {"name": "deploy", "role": "auditor"}, "api_key_created", "apikey:deploy"),
        ("DELETE", "/api-keys/deploy", None, "api_key_revoked", "apikey:deploy"),
        ("DELETE", "/users/v@api.test", None, "user_removed", "v@api.test"),
        ("DELETE", "/domains/api.test", None, "domain_removed", "api.test"),
    ]
    for method, path, body, event, target in calls:
        before = last_id(srv.dir)
        code, r = api.call(method, path, body if body is not None else ({} if method == "POST" else None))
        assert code in (200, 201, 204), (path, code, r)
        new = [e for e in events(srv.dir, before) if e["event"] != "auth"]
        assert len(new) == 1 and new[0]["event"] == event, (path, new)
        assert new[0]["actor"] == "api:admin" and new[0]["username"] == target, new[0]
        assert new[0]["ip"] == "127.0.0.1", new[0]
