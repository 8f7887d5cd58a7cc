"""Transport security: Postgres with TLS (verify-full) and Redis over TLS (rediss://) with an ACL user.

Each test module starts its OWN servers on spare loopback ports, with a certificate authority it
creates: a Postgres cluster (initdb) that accepts TLS connections only, and a redis-server that
listens on a TLS port only and knows one ACL user (the default user is off). They need only the
server binaries: without them the tests skip, naming what is missing (and fail under CI=true).
They carry the postgres/redis markers (`-m "not postgres"` deselects them) but never touch the
shared servers.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from healthmate_features.backends import open_sql_store, postgres, redis
from healthmate_features.config import Settings
from healthmate_features.errors import ServiceUnavailableError
from healthmate_features.features.build import build_features
from healthmate_features.raw.ingest import ingest_raw

from ..conftest import IN_CI
from ..helpers import repos, servers
from ..helpers import tiny as tiny_data

REDIS_USER, REDIS_PASSWORD = "hm_app", "s3cret-Pa55word"


def _missing(what: str) -> None:
    message = f"{what}; install it (apt-get install postgresql redis-server) to run the TLS tests"
    if IN_CI:
        pytest.fail(f"CI=true requires {message}", pytrace=False)
    pytest.skip(message)


# --- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the servers' certificate
    wrong_ca: Path  # another CA, which signed nothing here
    cert: Path  # server certificate: CN 127.0.0.1, SAN 127.0.0.1 and localhost
    key: Path


def _make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost signed by it, and an unrelated CA (PEM files),
    made with the openssl command (the package does not depend on `cryptography`)."""
    openssl = shutil.which("openssl")
    if not openssl:
        _missing("the openssl command is not installed")
    pki = Pki(directory / "ca.pem", directory / "wrong-ca.pem", directory / "server.pem", directory / "server.key")

    def run(*args: str) -> None:
        done = subprocess.run([openssl, *args], cwd=directory, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes".split()
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    for cert, key, cn in ((pki.ca, "ca.key", "healthmate test CA"), (pki.wrong_ca, "wrong-ca.key", "some other CA")):
        run("req", "-x509", *ec, "-days", "1", "-subj", f"/CN={cn}", *ca_ext, "-keyout", key, "-out", str(cert))
    run("req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", str(pki.key), "-out", "server.csr")
    (directory / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    signing = ["-CA", str(pki.ca), "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-extfile", "server.ext"]
    run("x509", "-req", "-in", "server.csr", *signing, "-out", str(pki.cert))
    pki.key.chmod(0o600)
    return pki


@pytest.fixture(scope="module")
def server_dir() -> Iterator[Path]:
    """A directory for the servers' files outside pytest's (root-only) tmp tree, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="hm_tls_"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(server_dir) -> Pki:
    return _make_pki(server_dir)


# --- a TLS-only Postgres -----------------------------------------------------------------------


@dataclass(frozen=True)
class TlsPostgres:
    port: int
    pki: Pki


def _as_postgres_user() -> list[str]:
    """The command prefix that runs a Postgres server binary: none, or `runuser -u postgres --` as root
    (initdb and postgres refuse to run as root)."""
    if os.getuid() != 0:
        return []
    import pwd

    if not shutil.which("runuser"):
        _missing("running as root needs `runuser` to start Postgres as the postgres user, and it is missing")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        _missing("running as root needs a `postgres` system user to start Postgres as, and there is none")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def tls_postgres(server_dir, pki) -> Iterator[TlsPostgres]:
    """A Postgres cluster on a spare loopback port (127.0.0.1 and 127.0.0.2) that accepts TLS only
    (hostnossl ... reject), with trust auth; stopped and removed afterwards."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = binaries[-1] if binaries else shutil.which("initdb")
    if not initdb:
        _missing("PostgreSQL's initdb is not installed (looked in /usr/lib/postgresql/*/bin and PATH)")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    prefix = _as_postgres_user()
    data, certs = server_dir / "pgdata", server_dir / "pgcerts"
    certs.mkdir()
    data.mkdir(mode=0o700)
    for source in (pki.cert, pki.key):
        shutil.copy(source, certs / source.name)
    (certs / pki.key.name).chmod(0o600)
    if prefix:
        server_dir.chmod(0o755)
        shutil.chown(certs, "postgres", "postgres")
        shutil.chown(data, "postgres", "postgres")
        for path in certs.iterdir():
            shutil.chown(path, "postgres", "postgres")
    run = dict(capture_output=True, text=True, timeout=120)
    done = subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], **run)
    assert done.returncode == 0, done.stdout + done.stderr
    (data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostssl all all 127.0.0.0/8 trust\n"
        "hostnossl all all 0.0.0.0/0 reject\n"
        "hostnossl all all ::/0 reject\n"
    )
    port = servers.spare_port()
    options = (
        f"-p {port} -c listen_addresses='127.0.0.1,127.0.0.2' -k {data} -c ssl=on "
        f"-c ssl_cert_file={certs / pki.cert.name} -c ssl_key_file={certs / pki.key.name} -c fsync=off"
    )
    log = data / "server.log"
    done = subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"], **run)
    assert done.returncode == 0, done.stdout + done.stderr + (log.read_text() if log.exists() else "")
    try:
        yield TlsPostgres(port, pki)
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], **run)


def _pg_settings(repo: Path, server: TlsPostgres, **changes) -> Settings:
    values = {
        "profile": "production",
        "pg_host": "127.0.0.1",
        "pg_port": server.port,
        "pg_user": "postgres",
        "pg_password": "",
        "pg_database": "healthmate_tls",
        "pg_schema": "healthmate",
        "pg_sslmode": "verify-full",
        "pg_sslrootcert": str(server.pki.ca),
    }
    return Settings.from_env(repo_path=repo, **{**values, **changes})


@pytest.mark.postgres
def test_postgres_verify_full_migrates_the_sql_store(tls_postgres, tmp_path):
    settings = _pg_settings(tmp_path, tls_postgres)
    postgres.ensure_database(settings)
    with postgres.connect(settings) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    with open_sql_store(settings) as store:
        assert store.migrate() == []  # opening migrated it already: nothing left to do


@pytest.mark.postgres
@pytest.mark.parametrize(
    "change, names",
    [
        ({"pg_sslrootcert": "WRONG"}, ("HM_PG_SSLROOTCERT", "certificate verify failed")),
        ({"pg_host": "127.0.0.2"}, ("HM_PG_HOST=127.0.0.2", "does not match host name")),
        ({"pg_sslmode": "disable"}, ("HM_PG_SSLMODE", "no encryption")),
    ],
    ids=["wrong-ca", "host-name-mismatch", "sslmode-disable"],
)
def test_postgres_tls_failures_name_the_setting(tls_postgres, tmp_path, change, names):
    if change.get("pg_sslrootcert") == "WRONG":
        change = {"pg_sslrootcert": str(tls_postgres.pki.wrong_ca)}
    settings = _pg_settings(tmp_path, tls_postgres, **change)
    with pytest.raises(ServiceUnavailableError) as caught:
        with postgres.connect(settings, database="postgres"):
            pass
    message = str(caught.value)
    assert all(name in message for name in names), message
    assert str(tls_postgres.pki.wrong_ca) not in message and str(tls_postgres.pki.ca) not in message


# --- a TLS-only Redis with an ACL user ---------------------------------------------------------


@pytest.fixture(scope="module")
def tls_redis(server_dir, pki) -> Iterator[str]:
    """A redis-server on a spare loopback TLS port (no plain port), the default user off and one ACL
    user; yields its rediss:// URL with that user's credentials."""
    binary = shutil.which("redis-server")
    if not binary:
        _missing("redis-server is not installed")
    port = servers.spare_port()
    conf = server_dir / "redis.conf"
    conf.write_text(
        f"port 0\ntls-port {port}\nbind 127.0.0.1\n"
        f"tls-cert-file {pki.cert}\ntls-key-file {pki.key}\ntls-ca-cert-file {pki.ca}\ntls-auth-clients no\n"
        f'save ""\nappendonly no\ndir {server_dir}\n'
        "user default off\n"
        f"user {REDIS_USER} on >{REDIS_PASSWORD} ~* &* +@all\n"
    )
    log = server_dir / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, str(conf)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"rediss://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    settings = Settings.from_env(repo_path=server_dir, redis_url=url, redis_ca_cert=str(pki.ca))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                redis.check_redis(settings)
                break
            except ServiceUnavailableError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield url
    finally:
        servers._stop(proc)


@pytest.mark.redis
def test_redis_over_tls_with_an_acl_user(tls_redis, pki, tmp_path):
    settings = Settings.from_env(repo_path=tmp_path, redis_url=tls_redis, redis_ca_cert=str(pki.ca))
    client = redis.connect(settings)
    try:
        client.set("hm_tls:probe", "1")
        assert client.acl_whoami() == REDIS_USER
        assert client.connection_pool.get_connection().__class__.__name__ == "SSLConnection"
    finally:
        client.delete("hm_tls:probe")
        client.close()


@pytest.mark.redis
def test_the_pipelined_connection_over_tls_with_an_acl_user_and_its_failures(tls_redis, pki, tmp_path):
    """The API's online lookups' connection (`redis.PipelinedConnection`): TLS verified against the
    CA, the URL's ACL user; a wrong password or CA is a clear error that never shows the password."""
    import asyncio

    hello = redis.resp_command(b"PING", 0, b"") + redis.resp_command(b"ACL", 1, redis.resp_arguments(b"WHOAMI"))

    def talk(url: str, ca: Path) -> list:
        settings = Settings.from_env(repo_path=tmp_path, redis_url=url, redis_ca_cert=str(ca))

        async def exchange() -> list:
            connection = redis.PipelinedConnection(settings, timeout_s=5)
            try:
                with redis.answered_within(settings, timeout_s=5, setting="HM_ONLINE_DEADLINE_S"):
                    return await connection.send(hello, 2)
            finally:
                await connection.close()

        return asyncio.run(exchange())

    assert talk(tls_redis, pki.ca) == [b"PONG", REDIS_USER.encode()]
    with pytest.raises(ServiceUnavailableError) as caught:
        talk(tls_redis.replace(REDIS_PASSWORD, "not-the-password"), pki.ca)
    message = str(caught.value)
    assert "refused the credentials" in message and "password" in message, message
    assert "not-the-password" not in message and REDIS_PASSWORD not in message
    with pytest.raises(ServiceUnavailableError) as caught:
        talk(tls_redis, pki.wrong_ca)
    message = str(caught.value)
    assert "HM_REDIS_CA_CERT" in message and REDIS_PASSWORD not in message, message


@pytest.mark.redis
def test_redis_wrong_password_or_ca_is_a_clear_error(tls_redis, pki, tmp_path):
    wrong = tls_redis.replace(REDIS_PASSWORD, "not-the-password")
    settings = Settings.from_env(repo_path=tmp_path, redis_url=wrong, redis_ca_cert=str(pki.ca))
    with pytest.raises(ServiceUnavailableError) as caught:
        redis.check_redis(settings)
    message = str(caught.value)
    assert "HM_REDIS_URL" in message and "password" in message, message
    assert "not-the-password" not in message and REDIS_PASSWORD not in message

    settings = Settings.from_env(repo_path=tmp_path, redis_url=tls_redis, redis_ca_cert=str(pki.wrong_ca))
    with pytest.raises(ServiceUnavailableError) as caught:
        redis.check_redis(settings)
    message = str(caught.value)
    assert "HM_REDIS_CA_CERT" in message and REDIS_PASSWORD not in message, message


@pytest.mark.redis
def test_celery_broker_connects_over_tls(tls_redis, pki, tmp_path):
    from healthmate_features.jobs.queue import celery_app

    settings = Settings.from_env(
        repo_path=tmp_path, profile="production", redis_url=tls_redis, redis_ca_cert=str(pki.ca)
    )
    app = celery_app(settings)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        assert conn.connected


# --- both: the production profile end to end ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_production_profile_end_to_end_over_tls(tls_postgres, tls_redis, pki, tmp_path, monkeypatch):
    """Ingest, build, Feast's registry in Postgres (`apply`), materialize into Redis, read online: all over TLS."""
    from healthmate_features.stores import feature_store as store

    repo = repos.copy_repo(tmp_path / "repo")
    settings = _pg_settings(
        repo, tls_postgres, pg_database="healthmate_tls_e2e", redis_url=tls_redis, redis_ca_cert=str(pki.ca)
    )
    monkeypatch.chdir(repo)
    raw = tiny_data.write_raw(repo / "raw")
    try:
        ingest_raw(raw, settings)
        build_features(raw, settings)
        store.apply(settings)
        store.materialize(settings)
        online = store.online_features(settings, 1, at=tiny_data.day(40, 12))
        assert online and any(value is not None for value in online.values())
    finally:
        store.forget_online_reader(settings)
