"""PostgreSQL over TLS: a private PostgreSQL cluster that takes TCP connections over TLS only
(`hostssl`), its certificate signed by a private CA. A node whose [storage] database URL says
`sslmode=verify-full&sslrootcert=CA` serves mail from it, and every connection it holds is
encrypted (PostgreSQL's own pg_stat_ssl says so); a node that does not trust the CA does not start,
and says why."""
import os
import shutil
import subprocess

import pytest

from conftest import ALICE, BIN, ROOT, init_dir, pg_database_on, start
from test_cluster import PG_BIN, fetch_by_subject, inbound, pg_dir
from test_cluster_bans import tls_files

pytestmark = pytest.mark.skipif(not PG_BIN, reason="PostgreSQL is installed by tests/run.sh")


@pytest.fixture
def tls_postgres(tmp_path):
    certs = tls_files(tmp_path / "tls")
    shutil.copy(certs / "redis.pem", certs / "server.pem")
    shutil.copy(certs / "redis.key", certs / "server.key")
    d = pg_dir()
    os.chmod(d, 0o755)
    out = subprocess.run(["bash", str(ROOT / "tests" / "pg.sh"), "start", str(d)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PG_TLS": str(certs)})
    assert out.returncode == 0, out.stderr
    yield out.stdout.strip(), certs
    subprocess.run(["bash", str(ROOT / "tests" / "pg.sh"), "stop", str(d)], capture_output=True, timeout=120)
    shutil.rmtree(d, ignore_errors=True)


def test_node_on_postgres_over_tls(tmp_path, tls_postgres):
    hostport, certs = tls_postgres
    plain = pg_database_on(hostport)
    url = f"{plain}?sslmode=verify-full&sslrootcert={certs / 'ca.pem'}"
    d, off = init_dir(tmp_path / "node", database=url)
    srv = start(d, off)
    try:
        sent = inbound(srv.smtp, ALICE, "over tls")
        assert fetch_by_subject(srv.imaps, "over tls").endswith(sent)
        import psycopg
        name = plain.rsplit("/", 1)[1]
        with psycopg.connect(plain, password=os.environ["POSTERN_TEST_PGPASS"], sslmode="require",
                             autocommit=True) as c:
            rows = c.execute("SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                             "WHERE a.datname = %s AND a.pid <> pg_backend_pid()", (name,)).fetchall()
        assert rows, "the node holds no connection to its database"
        assert all(ssl for ssl, _ in rows), rows
        print(f"{len(rows)} connections of the node, all over {sorted({v for _, v in rows})}")
    finally:
        srv.stop()
    # the CA not given: the server's certificate is not trusted, and the node says so
    cfg = d / "postern.toml"
    cfg.write_text(cfg.read_text().replace(url, f"{plain}?sslmode=verify-full"))
    p = subprocess.run([BIN, "--dir", str(d), "serve"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("postern: error:") and "UnknownIssuer" in p.stderr, p.stderr[-2000:]
