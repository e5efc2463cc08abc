"""A throwaway PostgreSQL server on a free loopback port.

    with postgres_server() as dsn:      # postgresql://postgres@127.0.0.1:PORT/inferlane
        ...

PostgreSQL refuses to run as root: as root, ``initdb`` and ``pg_ctl`` run as the ``postgres`` OS
user (created by the Debian package) in a temp dir it owns. The server listens on 127.0.0.1 only,
keeps its unix socket in the temp dir, trusts local connections and skips fsync. A missing install
is a ServiceError naming ``apt-get install -y postgresql`` (scripts/check runs it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from inferlane.testing.ports import LOOPBACK, free_port
from inferlane.testing.processes import log_tail
from inferlane.testing.services.launcher import ServiceError

INSTALL_POSTGRES = "PostgreSQL is not installed: run `apt-get install -y postgresql` (scripts/check does it)"


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
def postgres_server(dbname: str = "inferlane", attempts: int = 3) -> Iterator[str]:
    """Start a throwaway PostgreSQL server; yields the DSN of a fresh database ``dbname``. When
    another process takes the port first, the server is started again on a new one."""
    import psycopg

    bindir = postgres_bindir()
    prefix, uid, gid = _as_postgres()
    # Not under pytest's basetemp: its folders are private to the test user, and postgres must enter ours.
    root = Path(tempfile.mkdtemp(prefix="inferlane-pg-"))
    data, log = root / "data", root / "server.log"
    pg_ctl = str(bindir / "pg_ctl")
    started = False
    try:
        if uid is not None and gid is not None:
            os.chown(root, uid, gid)
        _run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
              "--locale=C", "--no-sync", "--no-instructions"], "initdb")
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:  # appending keeps the owner
            conf.write(f"\nlisten_addresses = '{LOOPBACK}'\nunix_socket_directories = '{root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 50\n")
        for attempt in range(attempts):
            port = free_port()
            with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:  # the last setting wins
                conf.write(f"port = {port}\n")
            try:
                _run([*prefix, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"], "pg_ctl start")
            except ServiceError:
                if attempt + 1 == attempts:
                    raise
                continue
            started = True
            break
        with psycopg.connect(f"postgresql://postgres@{LOOPBACK}:{port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        yield f"postgresql://postgres@{LOOPBACK}:{port}/{dbname}"
    except ServiceError as e:
        raise ServiceError(f"{e}\nserver log:\n{log_tail(log)}") from None
    finally:
        if started:
            subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
