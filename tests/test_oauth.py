"""OAUTHBEARER (RFC 7628) and XOAUTH2 with access tokens from a real OpenID Connect provider
(node-oidc-provider, started on loopback over HTTPS): a valid token logs in on IMAP, submission
and POP3; expired, wrong audience, wrong issuer, unknown key, `alg: none`, HS256 signed with the
public key, a missing scope and a token for a disabled account are refused and audited; a key
rotation at the provider is picked up."""
import base64
import hashlib
import hmac
import imaplib
import json
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, BOB, CAROL, free_port, tls_client_context

OIDC_DIR = Path(__file__).parent / "oidc"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(
    not NODE or not (OIDC_DIR / "node_modules" / "oidc-provider").exists(),
    reason="node and tests/oidc/node_modules (npm ci --prefix tests/oidc) needed")

ec_mod = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ec")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature  # noqa: E402


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def new_key(kid):
    key = ec_mod.generate_private_key(ec_mod.SECP256R1())
    n = key.private_numbers()
    pub = n.public_numbers
    jwk = {"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
           "x": b64u(pub.x.to_bytes(32, "big")), "y": b64u(pub.y.to_bytes(32, "big")),
           "d": b64u(n.private_value.to_bytes(32, "big"))}
    return key, jwk


def sign(header, claims, key=None, hs_secret=None):
    msg = f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(claims).encode())}".encode()
    if header["alg"] == "none":
        sig = b""
    elif header["alg"] == "HS256":
        sig = hmac.new(hs_secret, msg, hashlib.sha256).digest()
    else:
        r, s = decode_dss_signature(key.sign(msg, ec_mod.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return msg.decode() + "." + b64u(sig)


class IdP:
    """node-oidc-provider over HTTPS on 127.0.0.1 with its own certificate."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.port = free_port()
        self.issuer = f"https://127.0.0.1:{self.port}"
        self.cert, self.key = tmp / "idp.pem", tmp / "idp.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
                        "-subj", "/CN=idp", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-addext", "basicConstraints=critical,CA:FALSE"],
                       check=True, capture_output=True)
        self.clients = [
            {"client_id": "bob-phone", "client_secret": "s1-" + "x" * 40, "email": BOB},
            {"client_id": "carol-phone", "client_secret": "s2-" + "x" * 40, "email": CAROL},
            {"client_id": "bob-opaque", "client_secret": "s3-" + "x" * 40, "email": BOB},
            # the client Postern introspects opaque tokens with
            {"client_id": "postern", "client_secret": "s4-" + "x" * 40, "email": "", "grant_types": []},
        ]
        (tmp / "clients.json").write_text(json.dumps(self.clients))
        self.proc = None
        self.ctx = ssl.create_default_context(cafile=str(self.cert))

    def start(self, jwks):
        (self.tmp / "jwks.json").write_text(json.dumps({"keys": jwks}))
        self.log = open(self.tmp / "idp.log", "a")
        self.proc = subprocess.Popen(
            [NODE, str(OIDC_DIR / "provider.mjs"), str(self.port), str(self.cert), str(self.key),
             str(self.tmp / "jwks.json"), str(self.tmp / "clients.json")],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def token(self, client_id):
        c = next(c for c in self.clients if c["client_id"] == client_id)
        body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": c["client_id"],
                                       "client_secret": c["client_secret"], "scope": "mail",
                                       "resource": "urn:postern"}).encode()
        with urllib.request.urlopen(urllib.request.Request(self.issuer + "/token", data=body),
                                    context=self.ctx, timeout=10) as r:
            return json.loads(r.read())["access_token"]


def oauthbearer(user, token):
    return f"n,a={user},\x01host=127.0.0.1\x01port=993\x01auth=Bearer {token}\x01\x01"


class ImapFrom(imaplib.IMAP4_SSL):
    """IMAPS from a chosen loopback source address."""

    def __init__(self, port, source):
        self.source = source
        super().__init__("127.0.0.1", port, ssl_context=tls_client_context(), timeout=10)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def imap_oauth(srv, user, token, mech="OAUTHBEARER", source="127.0.0.1"):
    m = ImapFrom(srv.imaps, source)
    caps = m.capabilities
    first = oauthbearer(user, token) if mech == "OAUTHBEARER" else f"user={user}\x01auth=Bearer {token}\x01\x01"
    replies = []

    def cb(challenge):
        if not replies:
            replies.append(None)
            return first
        replies.append(challenge)  # the RFC 7628 error JSON; answered with a dummy 0x01
        return "\x01"
    try:
        m.authenticate(mech, cb)
        m.select("INBOX")
        m.logout()
        return True, caps, replies[1:]
    except imaplib.IMAP4.error as e:
        return False, caps, replies[1:] + [str(e)]


def audit_reasons(srv):
    time.sleep(0.3)
    with srv.db() as c:
        return [r for r in c.execute(
            "SELECT mechanism, result, reason FROM audit_log WHERE event = 'auth' AND mechanism IN "
            "('OAUTHBEARER', 'XOAUTH2') ORDER BY id")]


@pytest.fixture
def idp(tmp_path):
    i = IdP(tmp_path)
    yield i
    i.stop()


def test_oauth_tokens_from_a_real_provider(make_server, idp, tmp_path):
    k1, jwk1 = new_key("k1")
    idp.start([jwk1])
    srv = make_server(toml_extra=f"""
[[oidc]]
issuer = "{idp.issuer}"
audience = "postern"
scope = "mail"
ca_file = "{idp.cert}"
""")
    token = idp.token("bob-phone")
    assert token.count(".") == 2
    ok, caps, _ = imap_oauth(srv, BOB, token)
    assert ok, caps
    assert "AUTH=OAUTHBEARER" in caps and "AUTH=XOAUTH2" in caps
    assert imap_oauth(srv, BOB, token, "XOAUTH2")[0]
    # no authorization identity: the token's account
    assert imap_oauth(srv, "", token)[0]
    # submission (smtplib, XOAUTH2 and OAUTHBEARER) and POP3
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=10) as s:
        s.ehlo()
        assert "OAUTHBEARER" in s.esmtp_features["auth"].split()
        code, _ = s.auth("XOAUTH2", lambda c=None: f"user={BOB}\x01auth=Bearer {token}\x01\x01")
        assert code == 235
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=10) as s:
        s.ehlo()
        assert s.auth("OAUTHBEARER", lambda c=None: oauthbearer(BOB, token))[0] == 235
    sock = tls_client_context().wrap_socket(socket.create_connection(("127.0.0.1", srv.pop3s), timeout=10))
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(f"AUTH OAUTHBEARER {base64.b64encode(oauthbearer(BOB, token).encode()).decode()}\r\n".encode())
    assert f.readline().startswith(b"+OK")
    sock.close()

    # curl, an independent client: OAUTHBEARER over IMAPS with the token
    if shutil.which("curl"):
        p = subprocess.run(["curl", "-sS", "-v", "--insecure", "--oauth2-bearer", token, "-u", f"{BOB}:",
                            f"imaps://127.0.0.1:{srv.imaps}/"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr[-2000:]
        assert "AUTHENTICATE OAUTHBEARER" in p.stderr and "INBOX" in p.stdout, p.stderr[-2000:]
        assert token not in srv.log()
        p = subprocess.run(["curl", "-sS", "--insecure", "--oauth2-bearer", token + "x", "-u", f"{BOB}:",
                            f"imaps://127.0.0.1:{srv.imaps}/"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 67, (p.returncode, p.stderr[-2000:])  # CURLE_LOGIN_DENIED

    # refusals, each told as the RFC 7628 error challenge, then NO
    now = int(time.time())
    good = {"iss": idp.issuer, "aud": "postern", "exp": now + 300, "iat": now, "scope": "mail", "email": BOB}
    hdr = {"alg": "ES256", "kid": "k1", "typ": "at+jwt"}
    k9, _ = new_key("k9")
    public_pem = k1.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    bad = {
        "control (valid, made here)": sign(hdr, good, k1),
        "expired": sign(hdr, {**good, "exp": now - 600}, k1),
        "not yet valid": sign(hdr, {**good, "nbf": now + 600}, k1),
        "wrong audience": sign(hdr, {**good, "aud": "another-app"}, k1),
        "wrong issuer": sign(hdr, {**good, "iss": "https://127.0.0.1:1"}, k1),
        "unknown key": sign({**hdr, "kid": "k9"}, good, k9),
        "right kid, wrong key": sign(hdr, good, k9),
        "alg none": sign({"alg": "none", "kid": "k1"}, good),
        "HS256 with the public key": sign({"alg": "HS256", "kid": "k1"}, good, hs_secret=public_pem),
        "no scope": sign(hdr, {k: v for k, v in good.items() if k != "scope"}, k1),
        "another account named": None,
        "disabled account": idp.token("carol-phone"),
    }
    results = {}
    # each from its own network: eleven failures from one source would (rightly) ban it
    for i, (what, tok) in enumerate(bad.items()):
        src = f"127.0.{20 + i}.1"
        if what == "another account named":
            results[what] = imap_oauth(srv, "alice@example.test", token, source=src)
        else:
            results[what] = imap_oauth(srv, CAROL if what == "disabled account" else BOB, tok, source=src)
    assert results.pop("control (valid, made here)")[0]
    for what, (ok, _, replies) in results.items():
        assert not ok, what
        assert json.loads(replies[0])["status"] == "invalid_token", (what, replies)
    reasons = [r[2] for r in audit_reasons(srv) if r[1] == "failed"]
    assert reasons.count("token_expired") == 2, reasons
    assert reasons.count("token_invalid") >= 7, reasons
    assert "identity_mismatch" in reasons and "disabled" in reasons, reasons
    # the token never reaches the log
    assert token not in srv.log() and token[-20:] not in srv.log()

    # key rotation at the provider: a new key signs, the old one is gone; the server fetches the
    # keys again when it meets the new kid (at most every 10 s)
    idp.stop()
    k2, jwk2 = new_key("k2")
    idp.start([jwk2])
    time.sleep(10.5)
    rotated = idp.token("bob-phone")
    assert json.loads(base64.urlsafe_b64decode(rotated.split(".")[0] + "=="))["kid"] == "k2"
    assert imap_oauth(srv, BOB, rotated)[0]
    # the provider down: keys already known still verify; a new key is a temporary failure,
    # not a failed login that would count toward a lockout
    idp.stop()
    assert imap_oauth(srv, BOB, rotated)[0]
    k3, _ = new_key("k3")
    time.sleep(10.5)
    ok, _, replies = imap_oauth(srv, BOB, sign({**hdr, "kid": "k3"}, {**good, "exp": int(time.time()) + 300}, k3))
    assert not ok and "UNAVAILABLE" in replies[-1], replies


def test_opaque_tokens_by_introspection(make_server, idp, tmp_path):
    k1, jwk1 = new_key("k1")
    idp.start([jwk1])
    secret = tmp_path / "introspection.secret"
    secret.write_text(idp.clients[3]["client_secret"] + "\n")
    secret.chmod(0o600)
    srv = make_server(toml_extra=f"""
[[oidc]]
issuer = "{idp.issuer}"
audience = "postern"
scope = "mail"
ca_file = "{idp.cert}"
introspection_client_id = "postern"
introspection_client_secret = "file:{secret}"
""")
    opaque = idp.token("bob-opaque")
    assert opaque.count(".") == 0, opaque[:20]
    assert imap_oauth(srv, BOB, opaque)[0]
    assert imap_oauth(srv, BOB, opaque, "XOAUTH2")[0]
    # a made-up opaque token is inactive; an opaque token for someone else is not Bob's
    ok, _, replies = imap_oauth(srv, BOB, "x" * 43, source="127.0.30.1")
    assert not ok and json.loads(replies[0])["status"] == "invalid_token"
    assert not imap_oauth(srv, CAROL, opaque, source="127.0.31.1")[0]
    # JWTs still work beside it
    assert imap_oauth(srv, BOB, idp.token("bob-phone"))[0]
    assert opaque not in srv.log()


def test_oauth_not_offered_without_a_provider(make_server):
    srv = make_server()
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    assert "AUTH=OAUTHBEARER" not in m.capabilities
    with pytest.raises(imaplib.IMAP4.error):
        m.authenticate("OAUTHBEARER", lambda c: oauthbearer(BOB, "a.b.c"))
    m.logout()
    # an algorithm outside the asymmetric list is refused at start
    d = srv.dir
    srv.stop()
    cfg = d / "postern.toml"
    cfg.write_text(cfg.read_text() + '\n[[oidc]]\nissuer = "https://127.0.0.1:1"\naudience = "x"\nalgorithms = ["HS256"]\n')
    p = subprocess.run([BIN, "--dir", str(d), "check-config"],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "never none or HS*" in p.stderr + p.stdout, p.stderr + p.stdout
    cfg.write_text(cfg.read_text().replace('algorithms = ["HS256"]', 'algorithms = ["RS256"]'))
