"""Client autoconfiguration over HTTPS: Thunderbird's config-v1.1.xml (at the well-known path and
at /mail/ for a host autoconfig.DOMAIN) and Outlook's Autodiscover (POX), fetched and parsed as a
client would: only implicit-TLS ports (IMAPS, POP3S, submissions), the password inside TLS,
the user's address as the user name; nothing for a domain the server does not serve."""
import ssl
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

from conftest import BOB


def fetch(url, data=None, host=None):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if host:
        req.add_header("Host", host)
    if data:
        req.add_header("Content-Type", "text/xml")
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return r.status, r.headers, r.read()


def test_thunderbird_autoconfig_names_only_tls_ports(server):
    base = f"https://127.0.0.1:{server.admin}"
    for path, host in (("/.well-known/autoconfig/mail/config-v1.1.xml", None),
                       ("/mail/config-v1.1.xml", "autoconfig.example.test")):
        status, headers, body = fetch(f"{base}{path}?emailaddress={BOB}", host=host)
        assert status == 200 and headers["content-type"].startswith("application/xml")
        root = ET.fromstring(body)
        assert root.tag == "clientConfig" and root.get("version") == "1.1"
        prov = root.find("emailProvider")
        assert prov.get("id") == "example.test" and prov.findtext("domain") == "example.test"
        servers = {(s.get("type"), int(s.findtext("port")), s.findtext("socketType"))
                   for s in prov.iter() if s.tag in ("incomingServer", "outgoingServer")}
        assert servers == {("imap", server.imaps, "SSL"), ("pop3", server.pop3s, "SSL"),
                           ("smtp", server.submissions, "SSL")}, servers
        for s in prov.iter():
            if s.tag in ("incomingServer", "outgoingServer"):
                assert s.findtext("authentication") == "password-cleartext"
                assert s.findtext("username") == "%EMAILADDRESS%"
                assert s.findtext("hostname")
    # a domain the server does not serve: nothing
    try:
        fetch(f"{base}/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=a@elsewhere.test")
        raise AssertionError("autoconfig answered for a foreign domain")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def test_outlook_autodiscover(server):
    req = (f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/'
           f'exchange/autodiscover/outlook/requestschema/2006"><Request><EMailAddress>{BOB}</EMailAddress>'
           '<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/'
           'responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>').encode()
    status, _, body = fetch(f"https://127.0.0.1:{server.admin}/autodiscover/autodiscover.xml", data=req)
    assert status == 200
    ns = {"r": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
    root = ET.fromstring(body)
    protos = root.findall(".//r:Account/r:Protocol", ns)
    got = {(p.findtext("r:Type", namespaces=ns), int(p.findtext("r:Port", namespaces=ns)),
            p.findtext("r:Encryption", namespaces=ns)) for p in protos}
    assert got == {("IMAP", server.imaps, "SSL"), ("POP3", server.pop3s, "SSL"),
                   ("SMTP", server.submissions, "SSL")}, got
    assert all(p.findtext("r:LoginName", namespaces=ns) == BOB for p in protos)
    assert all(p.findtext("r:SPA", namespaces=ns) == "off" for p in protos)
