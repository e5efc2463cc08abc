"""The shared test and benchmark harness (``inferlane.testing``): its public names, what importing it
costs, waiting, the port-race retry of the service starters, fail-never-skip, and tables."""

from __future__ import annotations

import contextlib
import inspect
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import inferlane.testing
from inferlane.testing import (
    Column,
    ServiceError,
    WaitFailed,
    accepts_connections,
    exited,
    format_table,
    free_port,
    num,
    on_free_port,
    serve_or_fail,
    wait_until,
)


def test_exported_members_exist_and_are_documented() -> None:
    names = inferlane.testing.__all__  # ordered by ruff (RUF022)
    public = {n for n in dir(inferlane.testing) if not n.startswith("_") and n != "annotations"
              and not inspect.ismodule(getattr(inferlane.testing, n))}  # submodules are not exports
    assert public == set(names), public ^ set(names)
    for name in names:
        member = getattr(inferlane.testing, name)
        assert inspect.getdoc(member) or not callable(member), f"{name} has no docstring"


def test_importing_the_harness_imports_no_test_or_service_library() -> None:
    code = ("import sys, inferlane.testing; "
            "print(sorted(m for m in ('pytest', 'redis', 'confluent_kafka', 'boto3', 'moto', 'psycopg') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_wait_until_returns_once_the_condition_holds() -> None:
    calls: list[int] = []

    def third_time() -> bool:
        calls.append(1)
        return len(calls) == 3

    wait_until(third_time, "the third check", 10, interval_s=0)
    assert len(calls) == 3


def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(WaitFailed, match="timed out after 0 s waiting until the moon is blue"):
        wait_until(lambda: False, "the moon is blue", 0)


def test_wait_until_gives_up_when_the_process_that_should_do_it_exits(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("boom: no config\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait(30)
    with pytest.raises(WaitFailed, match=r"(?s)exited with code 3.*boom: no config"):
        wait_until(lambda: False, "the server is ready", 60, abort_if=[exited(proc, log)])


# A server that loses the race for its port the first time it is started: it exits at once, as a
# server whose port another process took would. The second start listens.
FLAKY_SERVER = textwrap.dedent('''
    import socket, sys, pathlib
    marker = pathlib.Path(sys.argv[2])
    if not marker.exists():
        marker.touch()
        sys.exit("Address already in use")
    s = socket.socket()
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen()
    while True:
        s.accept()[0].close()
''')


def test_a_service_that_loses_its_port_is_started_again_on_a_new_one(tmp_path: Path) -> None:
    ports: list[int] = []

    def command(port: int) -> list[str]:
        ports.append(port)
        return [sys.executable, "-c", FLAKY_SERVER, str(port), str(tmp_path / "started-once")]

    with on_free_port(command, accepts_connections, log=tmp_path / "server.log", what="the server listens",
                      start_timeout_s=30) as running:
        assert running.port == ports[-1] and accepts_connections(running.port)
        assert running.proc.poll() is None
    assert len(ports) == 2
    assert running.proc.poll() is not None  # stopped on leaving the block


def test_a_service_that_never_starts_is_an_error_with_its_log(tmp_path: Path) -> None:
    def command(port: int) -> list[str]:
        return [sys.executable, "-c", "import sys; sys.exit('cannot start: no such thing')"]

    with pytest.raises(ServiceError, match="cannot start: no such thing"), \
            on_free_port(command, accepts_connections, log=tmp_path / "server.log", what="the server listens",
                         start_timeout_s=30, attempts=2):
        pass


def test_a_fixture_whose_service_cannot_start_fails_and_never_skips() -> None:
    @contextlib.contextmanager
    def missing() -> Iterator[str]:
        raise ServiceError("redis-server is not installed: run `apt-get install -y redis-server`")
        yield "never"

    with pytest.raises(pytest.fail.Exception, match="apt-get install -y redis-server"):
        next(serve_or_fail(missing()))


def test_free_port_is_free() -> None:
    assert not accepts_connections(free_port())


def test_tables_align_text_left_and_numbers_right() -> None:
    text = format_table([Column("model", left=True), Column("rows/s")],
                        [["small", num(782159.3, ",.0f")], ["heavy", num(None, ",.0f")], ["x", num(float("nan"), "g")]])
    assert text.splitlines() == [
        "| model |  rows/s |",
        "|-------|--------:|",
        "| small | 782,159 |",
        "| heavy |       - |",
        "| x     |       - |",
    ]
    with pytest.raises(ValueError, match="a row has 1 cells for 2 columns"):
        format_table([Column("a"), Column("b")], [["1"]])
