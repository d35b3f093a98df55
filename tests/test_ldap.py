"""LDAP authentication against OpenLDAP's slapd, started on loopback with TLS (ldaps and
StartTLS): bind as the user succeeds and fails, the account is provisioned at its first login,
the access group is enforced, a filter-injection attempt in the user name finds nobody, a
directory that is down is a temporary failure (never a lockout or a ban), and local accounts
keep their local passwords."""
import imaplib
import shutil
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BOB, BOB_PW, free_port, tls_client_context

SLAPD = Path("/usr/sbin/slapd")
pytestmark = pytest.mark.skipif(not SLAPD.exists() or not shutil.which("slappasswd"),
                                reason="slapd and ldap-utils not installed")

DAVE, DAVE_PW = "dave@example.test", "Ld4p!Pass-dave-77"
ERIN, ERIN_PW = "erin@example.test", "Ld4p!Pass-erin-88"
SVC_PW = "service-Pw-31337"
OPS_PW = "Ops-Ldap-Pw-4711"
DESK_PW = "Desk-Ldap-Pw-4712"


class Slapd:
    def __init__(self, tmp):
        self.dir = tmp / "slapd"
        self.dir.mkdir()
        (self.dir / "db").mkdir()
        self.ldaps, self.ldap = free_port(), free_port()
        self.cert, self.key = self.dir / "cert.pem", self.dir / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
                        "-subj", "/CN=ldap", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-addext", "basicConstraints=critical,CA:FALSE"], check=True, capture_output=True)
        conf = self.dir / "slapd.conf"
        conf.write_text(f"""
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile {self.dir}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCertificateFile {self.cert}
TLSCertificateKeyFile {self.key}
database mdb
maxsize 10485760
suffix "dc=example,dc=test"
rootdn "cn=admin,dc=example,dc=test"
rootpw {self.hash("admin-secret")}
directory {self.dir}/db
access to attrs=userPassword by self write by anonymous auth by * none
access to * by users read by * none
""")
        self.conf = conf
        ldif = self.dir / "data.ldif"
        ldif.write_text(f"""dn: dc=example,dc=test
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,dc=example,dc=test
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=test
objectClass: organizationalUnit
ou: groups

dn: cn=postern,dc=example,dc=test
objectClass: person
cn: postern
sn: service
userPassword: {self.hash(SVC_PW)}

dn: uid=dave,ou=people,dc=example,dc=test
objectClass: inetOrgPerson
uid: dave
cn: Dave
sn: Directory
mail: {DAVE}
userPassword: {self.hash(DAVE_PW)}

dn: uid=erin,ou=people,dc=example,dc=test
objectClass: inetOrgPerson
uid: erin
cn: Erin
sn: NotInGroup
mail: {ERIN}
userPassword: {self.hash(ERIN_PW)}

dn: cn=mail-users,ou=groups,dc=example,dc=test
objectClass: groupOfNames
cn: mail-users
member: uid=dave,ou=people,dc=example,dc=test

dn: uid=ops,ou=people,dc=example,dc=test
objectClass: inetOrgPerson
uid: ops
cn: Ops
sn: Admin
userPassword: {self.hash(OPS_PW)}

dn: uid=desk,ou=people,dc=example,dc=test
objectClass: inetOrgPerson
uid: desk
cn: Desk
sn: Helpdesk
userPassword: {self.hash(DESK_PW)}

dn: cn=mail-admins,ou=groups,dc=example,dc=test
objectClass: groupOfNames
cn: mail-admins
member: uid=ops,ou=people,dc=example,dc=test

dn: cn=helpdesk,ou=groups,dc=example,dc=test
objectClass: groupOfNames
cn: helpdesk
member: uid=desk,ou=people,dc=example,dc=test
""")
        subprocess.run([str(SLAPD.parent / "slapadd"), "-f", str(conf), "-l", str(ldif)], check=True,
                       capture_output=True)
        self.proc = None

    @staticmethod
    def hash(pw):
        return subprocess.run(["slappasswd", "-s", pw], check=True, capture_output=True, text=True).stdout.strip()

    def start(self):
        self.proc = subprocess.Popen(
            [str(SLAPD), "-f", str(self.conf), "-d", "0",
             "-h", f"ldaps://127.0.0.1:{self.ldaps}/ ldap://127.0.0.1:{self.ldap}/"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "slapd.log", "a"))
        end = time.time() + 15
        while subprocess.run(["ldapsearch", "-x", "-H", f"ldap://127.0.0.1:{self.ldap}", "-b", "",
                              "-s", "base", "namingContexts"], capture_output=True).returncode != 0:
            assert self.proc.poll() is None and time.time() < end, (self.dir / "slapd.log").read_text()
            time.sleep(0.2)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def slapd(tmp_path):
    s = Slapd(tmp_path)
    s.start()
    yield s
    s.stop()


def directory_toml(s, url, starttls=False, ca=None, extra=""):
    return f"""
[[directory]]
kind = "ldap"
url = "{url}"
starttls = {"true" if starttls else "false"}
ca_file = "{ca or s.cert}"
bind_dn = "cn=postern,dc=example,dc=test"
bind_password = "file:{s.dir / 'svc.pw'}"
base_dn = "dc=example,dc=test"
group_filter = "(&(objectClass=groupOfNames)(cn=mail-users)(member={{dn}}))"
timeout_secs = 2
{extra}
"""


def imap_login(srv, user, pw):
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=15)
    try:
        m.login(m._quote(user), pw)  # quoted: the injection names are not IMAP atoms
        m.select("INBOX")
        m.logout()
        return "ok"
    except imaplib.IMAP4.error as e:
        return "unavailable" if "UNAVAILABLE" in str(e) else "fail"


def reasons(srv, user):
    time.sleep(0.3)
    with srv.db() as c:
        return [r[0] for r in c.execute(
            "SELECT COALESCE(reason, result) FROM audit_log WHERE event = 'auth' AND username = ? ORDER BY id",
            (user,))]


def test_ldap_bind_as_user_provisioning_groups_injection_and_outage(make_server, slapd):
    (slapd.dir / "svc.pw").write_text(SVC_PW + "\n")
    (slapd.dir / "svc.pw").chmod(0o600)
    srv = make_server(toml_extra=directory_toml(slapd, f"ldaps://127.0.0.1:{slapd.ldaps}"))
    # first login: bind as the user succeeds, the account is created here with its mailboxes
    assert "dave@" not in srv.cli("user", "list").stdout
    assert imap_login(srv, DAVE, DAVE_PW) == "ok"
    assert DAVE in srv.cli("user", "list").stdout
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=10) as s:
        s.login(DAVE, DAVE_PW)
        s.sendmail(DAVE, [DAVE], f"From: {DAVE}\r\nTo: {DAVE}\r\nSubject: hi\r\n\r\nfrom LDAP\r\n")
    assert imap_login(srv, DAVE, "Wrong-Pass-dave-1") == "fail"
    # in the directory with the right password, but not in the access group
    assert imap_login(srv, ERIN, ERIN_PW) == "fail"
    assert ERIN not in srv.cli("user", "list").stdout
    # filter injection: the name is escaped, so these match nobody
    for evil in ["*", "dave@example.test)(uid=*", "*)(|(mail=*", "dave@example.test)(objectClass=*))(|(a="]:
        assert imap_login(srv, evil, DAVE_PW) == "fail", evil
    # an empty password is never an (anonymous) bind
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    assert m._simple_command("LOGIN", DAVE, '""')[0] == "NO"
    # local accounts keep their local password; a directory account's is changed there
    assert imap_login(srv, BOB, BOB_PW) == "ok"
    p = srv.cli("user", "passwd", DAVE, "--password-stdin", stdin="Local-Pass-dave-99!\n", check=False)
    assert p.returncode != 0 and "directory" in p.stderr, p.stderr
    assert reasons(srv, DAVE)[:2] == ["ok", "ok"]
    assert "bad_password" in reasons(srv, DAVE)
    assert reasons(srv, ERIN) == ["directory_denied"]
    for evil in ["*", "dave@example.test)(uid=*", "*)(|(mail=*"]:
        assert reasons(srv, evil) == ["unknown_user"], evil
    with srv.db() as c:
        assert c.execute("SELECT directory FROM accounts WHERE address = ?", (DAVE,)).fetchone()[0] == "ldap"
        assert c.execute("SELECT COUNT(*) FROM audit_log WHERE event = 'account_provisioned'").fetchone()[0] == 1

    # the directory down: temporary failures, never counted: no ban, no lockout
    slapd.stop()
    for _ in range(14):
        assert imap_login(srv, DAVE, DAVE_PW) == "unavailable"
    assert "127.0.0.1" not in srv.cli("ban", "list").stdout
    slapd.start()
    assert imap_login(srv, DAVE, DAVE_PW) == "ok"
    assert reasons(srv, DAVE).count("directory_unavailable") == 14


def test_ldap_starttls_and_certificate_verification(make_server, slapd, tmp_path):
    (slapd.dir / "svc.pw").write_text(SVC_PW + "\n")
    (slapd.dir / "svc.pw").chmod(0o600)
    srv = make_server(toml_extra=directory_toml(slapd, f"ldap://127.0.0.1:{slapd.ldap}", starttls=True))
    assert imap_login(srv, DAVE, DAVE_PW) == "ok"
    # a directory whose certificate is not the trusted one: nothing is sent, a temporary failure
    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "other.key"), "-out", str(other), "-days", "2", "-subj", "/CN=x",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"],
                   check=True, capture_output=True)
    srv.stop()
    cfg = srv.dir / "postern.toml"
    cfg.write_text(cfg.read_text().replace(f'ca_file = "{slapd.cert}"', f'ca_file = "{other}"'))
    srv.restart()
    assert imap_login(srv, DAVE, DAVE_PW) == "unavailable"
    assert "invalid peer certificate" in srv.log() or "certificate" in srv.log().lower()
    # plain ldap:// without StartTLS is refused at start
    srv.stop()
    cfg.write_text(cfg.read_text().replace("starttls = true", "starttls = false"))
    from conftest import BIN
    p = subprocess.run([BIN, "--dir", str(srv.dir), "check-config"], capture_output=True, text=True)
    assert p.returncode != 0 and "never go to the directory in clear" in p.stdout + p.stderr


def test_ldap_administrators_get_their_role_from_groups(make_server, slapd):
    from test_admin_api import Api, first_login
    (slapd.dir / "svc.pw").write_text(SVC_PW + "\n")
    (slapd.dir / "svc.pw").chmod(0o600)
    admins = """admin_user_filter = "(&(objectClass=inetOrgPerson)(uid={login}))"
admin_groups = { superadmin = "(&(objectClass=groupOfNames)(cn=mail-admins)(member={dn}))", helpdesk = "(&(objectClass=groupOfNames)(cn=helpdesk)(member={dn}))" }
"""
    srv = make_server(toml_extra=directory_toml(slapd, f"ldaps://127.0.0.1:{slapd.ldaps}", extra=admins))
    from conftest import wait_port
    wait_port(srv.admin, srv.proc)
    api = Api(srv)
    # the directory's password, then the usual TOTP enrolment: a second factor stays required
    ops, _, _ = first_login(api, "ops", OPS_PW)
    assert api.call("GET", "/me", token=ops)[1]["role"] == "superadmin"
    desk, _, _ = first_login(api, "desk", DESK_PW)
    assert api.call("GET", "/me", token=desk)[1]["role"] == "helpdesk"
    assert api.call("POST", "/domains", {"name": "other.test"}, token=desk)[0] == 403
    assert api.call("POST", "/domains", {"name": "other.test"}, token=ops)[0] == 201
    # in the directory but in no admin group; a wrong password; an injection attempt
    assert api.call("POST", "/login", {"name": "dave", "password": DAVE_PW})[0] == 401
    assert api.call("POST", "/login", {"name": "ops", "password": "Wrong-Ops-Pw-1"})[0] == 401
    assert api.call("POST", "/login", {"name": "*", "password": OPS_PW})[0] == 401
    # the password is the directory's: changing it here is refused
    code, r = api.call("POST", "/me/password", {"old_password": OPS_PW, "new_password": "Another-Pw-77x!", "totp": "000000"},
                       token=ops)
    assert code == 422 and "directory" in r["error"], r
    # out of the group in the directory: the next login is refused
    subprocess.run(["ldapmodify", "-x", "-H", f"ldap://127.0.0.1:{slapd.ldap}", "-D", "cn=admin,dc=example,dc=test",
                    "-w", "admin-secret"], input="dn: cn=mail-admins,ou=groups,dc=example,dc=test\n"
                   "changetype: modify\nadd: member\nmember: uid=desk,ou=people,dc=example,dc=test\n-\n"
                   "delete: member\nmember: uid=ops,ou=people,dc=example,dc=test\n",
                   text=True, check=True, capture_output=True)
    assert api.call("POST", "/login", {"name": "ops", "password": OPS_PW})[0] == 401
    # desk is now in mail-admins: superadmin from its next login on (the first matching role
    # wins); the password step passes, and the second factor is still asked for
    code, r = api.call("POST", "/login", {"name": "desk", "password": DESK_PW})
    assert code == 401
    with srv.db() as c:
        rows = dict(c.execute("SELECT name, role FROM admins WHERE directory = 'ldap'").fetchall())
        denied = c.execute("SELECT COUNT(*) FROM audit_log WHERE protocol = 'admin-api' AND reason = 'directory_denied'").fetchone()[0]
        last_desk = c.execute("SELECT reason FROM audit_log WHERE protocol = 'admin-api' AND username = 'desk' "
                              "ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert rows == {"ops": "superadmin", "desk": "superadmin"}, rows
    assert denied == 2 and last_desk == "totp_missing"
