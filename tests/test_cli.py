"""The command line: init, the password policy, domains, users, aliases, config errors."""
import hashlib
import os
import stat
import subprocess

import pytest

from conftest import open_db, BIN, run_cli


@pytest.fixture
def datadir(tmp_path):
    d = tmp_path / "data"
    run_cli(d, "init", "--dir", str(d), "--domain", "example.test", "--listen-ip", "127.0.0.1", "--port-offset", "30000")
    return d


def test_init_creates_config_db_cert_and_no_account(datadir):
    cfg = (datadir / "postern.toml").read_text()
    assert 'hostname = "mail.example.test"' in cfg
    for port in (30025, 30587, 30465):
        assert f'127.0.0.1:{port}' in cfg
    assert (datadir / "postern.db").exists()
    assert (datadir / "tls" / "cert.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE(os.stat(datadir / "tls" / "key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(datadir).st_mode) == 0o700
    assert run_cli(datadir, "user", "list").stdout.strip() == ""
    assert "example.test" in run_cli(datadir, "domain", "list").stdout
    # Never overwrites.
    p = run_cli(datadir, "init", "--dir", str(datadir), "--domain", "example.test", check=False)
    assert p.returncode != 0 and "already exists" in p.stderr


def add(datadir, address, password, check=False):
    return run_cli(datadir, "user", "add", address, "--password-stdin", stdin=password + "\n", check=check)


def test_policy_refusals_explain_why(datadir):
    p = add(datadir, "alice@example.test", "Sh0rt!pw")
    assert p.returncode != 0 and "too short" in p.stderr
    p = add(datadir, "alice@example.test", "password1234")
    assert p.returncode != 0 and "too guessable" in p.stderr and "common password" in p.stderr.lower()
    p = add(datadir, "alice@example.test", "Alice-Wonderland-77!")
    assert p.returncode != 0 and "user name or the domain" in p.stderr
    p = add(datadir, "alice@example.test", "Xq9!example-rules-4u")
    assert p.returncode != 0 and "user name or the domain" in p.stderr
    assert run_cli(datadir, "user", "list").stdout.strip() == ""
    add(datadir, "alice@example.test", "vT9#qLm2!xWp4Rz-alpha", check=True)


def test_breached_password_list(datadir):
    breached = "Zebra!Quantum#Orbit-9917"
    # A Pwned Passwords style file: sorted upper-case SHA-1 hashes with counts.
    hashes = sorted([hashlib.sha1(breached.encode()).hexdigest().upper()] +
                    [hashlib.sha1(f"filler{i}".encode()).hexdigest().upper() for i in range(1000)])
    f = datadir / "pwned.txt"
    f.write_text("".join(f"{h}:{i + 1}\r\n" for i, h in enumerate(hashes)))
    cfg = datadir / "postern.toml"
    cfg.write_text(cfg.read_text().replace("[password_policy]\n", '[password_policy]\nbreached_passwords_file = "pwned.txt"\n'))
    p = add(datadir, "alice@example.test", breached)
    assert p.returncode != 0 and "breached" in p.stderr
    add(datadir, "alice@example.test", "Unlisted!Quantum#Orbit-42", check=True)


def test_password_is_never_an_argument(datadir):
    # No positional or option takes a password.
    p = run_cli(datadir, "user", "add", "alice@example.test", "vT9#qLm2!xWp4Rz", check=False)
    assert p.returncode != 0
    p = run_cli(datadir, "user", "add", "alice@example.test", "--password", "vT9#qLm2!xWp4Rz", check=False)
    assert p.returncode != 0
    # Without --password-stdin and without a terminal, it refuses rather than guessing.
    p = subprocess.run([BIN, "--dir", str(datadir), "user", "add", "alice@example.test"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert p.returncode != 0 and "--password-stdin" in p.stderr


def test_user_lifecycle(datadir):
    add(datadir, "alice@example.test", "vT9#qLm2!xWp4Rz-alpha", check=True)
    p = add(datadir, "alice@example.test", "vT9#qLm2!xWp4Rz-alpha")
    assert p.returncode != 0 and "already exists" in p.stderr
    p = add(datadir, "x@unknown.test", "vT9#qLm2!xWp4Rz-alpha")
    assert p.returncode != 0 and "domain add" in p.stderr
    run_cli(datadir, "user", "disable", "alice@example.test")
    assert "disabled" in run_cli(datadir, "user", "list").stdout
    run_cli(datadir, "user", "enable", "alice@example.test")
    show = run_cli(datadir, "user", "show", "alice@example.test").stdout
    for word in ("active", "INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive", "\\Sent"):
        assert word in show
    assert "argon2" not in show  # no hash in output
    old_hash = sqlite_hash(datadir)
    run_cli(datadir, "user", "passwd", "alice@example.test", "--password-stdin", stdin="Nw7$Lk2#Pq9!Zx-delta\n")
    assert sqlite_hash(datadir) != old_hash and sqlite_hash(datadir).startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    p = run_cli(datadir, "user", "passwd", "alice@example.test", "--password-stdin", stdin="weak\n", check=False)
    assert p.returncode != 0 and "too short" in p.stderr
    run_cli(datadir, "alias", "add", "info@example.test", "alice@example.test")
    assert "info@example.test\talice@example.test" in run_cli(datadir, "alias", "list").stdout
    p = run_cli(datadir, "domain", "remove", "example.test", check=False)
    assert p.returncode != 0 and "account" in p.stderr
    run_cli(datadir, "user", "remove", "alice@example.test")
    assert run_cli(datadir, "alias", "list").stdout.strip() == ""
    run_cli(datadir, "domain", "remove", "example.test")
    assert run_cli(datadir, "domain", "list").stdout.strip() == ""


def sqlite_hash(datadir):
    import sqlite3
    with open_db(datadir, write=True) as c:
        return c.execute("SELECT password_hash FROM accounts").fetchone()[0]


def test_domains(datadir):
    run_cli(datadir, "domain", "add", "Other.TEST")
    assert "other.test" in run_cli(datadir, "domain", "list").stdout
    for bad in ("not a domain", "1.2.3.4", "trailing.dot.", "[127.0.0.1]"):
        p = run_cli(datadir, "domain", "add", bad, check=False)
        assert p.returncode != 0, bad


def test_bad_config_names_the_file_and_shows_where(tmp_path):
    cfg = tmp_path / "postern.toml"
    cfg.write_text('[server]\nhostname = "mail.example.test"\nhostnam = "typo"\n')
    p = subprocess.run([BIN, "--config", str(cfg), "serve"], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    # first line: which file; then toml's own diagram: the line, a caret under the fault, what
    assert str(cfg) in lines[0], p.stderr
    assert any("hostnam" in l and "|" in l for l in lines), p.stderr
    assert any(l.strip().startswith("|") and "^" in l for l in lines), p.stderr
    assert any("unknown field" in l for l in lines), p.stderr
    p = subprocess.run([BIN, "--config", str(tmp_path / "missing.toml"), "serve"], capture_output=True, text=True)
    assert p.returncode != 0 and "missing.toml" in p.stderr
    assert p.stderr.count("No such file or directory") == 1 and "postern init" in p.stderr, p.stderr


def test_version():
    p = subprocess.run([BIN, "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("postern ")


def test_version_names_the_commit():
    import subprocess as sp
    from conftest import BIN, ROOT
    out = sp.run([BIN, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    head = sp.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert out.startswith("postern 0.1.0 (commit ")
    if head.returncode == 0:
        assert f"(commit {head.stdout.strip()}" in out, out
