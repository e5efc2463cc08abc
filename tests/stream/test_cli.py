"""``inferlane stream run`` as a real subprocess: bad usage exits 2 with one clear line on stderr
(never a traceback), ``--help`` lists the flags, and a small Redis Streams run drains, reports and
dead-letters to the default file under the working directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from inferlane.testing import create_topics, free_port
from tests.stream.support import finish, fraud_events, start_lane, stream_url, xadd_events

pytestmark = pytest.mark.e2e  # every test here starts the CLI or a server as a subprocess

BASE = [sys.executable, "-m", "inferlane.cli.main", "stream", "run"]


def run_cli(args: list[str], cwd: Path, timeout: float = 120.0) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "INFERLANE_STATE_DIR"}  # the default: .inferlane in cwd
    proc = subprocess.run([*BASE, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def lane(model: Path, source: str, group: str, sink: str, *args: str, cwd: Path,
         timeout: float = 120.0) -> tuple[int, str, str]:
    return finish(start_lane(model, source, group, sink, *args, cwd=cwd), timeout)


def assert_usage_error(result: tuple[int, str, str], message: str) -> None:
    """Exit 2, nothing on stdout, and stderr is exactly the one line ``message``."""
    code, out, err = result
    assert "Traceback" not in err, err
    assert code == 2, err
    assert out == ""
    assert err.strip().splitlines() == [message], err


def assert_argparse_error(result: tuple[int, str, str], message: str) -> None:
    """Exit 2 from argparse: a usage summary, then one ``error:`` line naming the problem."""
    code, out, err = result
    assert "Traceback" not in err, err
    assert code == 2, err
    assert out == ""
    assert err.strip().splitlines()[-1] == f"inferlane stream run: error: {message}", err


@pytest.fixture
def fraud(model_repo: Path) -> Path:
    return model_repo / "fraud"


# -- argument parsing ----------------------------------------------------------------------------

def test_help_exits_0_and_lists_the_main_flags(tmp_path: Path) -> None:
    code, out, err = run_cli(["--help"], tmp_path)
    assert code == 0, err
    for flag in ["--model", "--version", "--source", "--group", "--sink", "--dlq", "--key", "--columns",
                 "--max-batch", "--max-wait-ms", "--max-inflight", "--idle-exit", "--json", "--start"]:
        assert flag in out, flag
    assert "kafka://host:port/topic" in out
    assert "Exit codes:" in out
    assert list(tmp_path.iterdir()) == []  # --help writes nothing


@pytest.mark.parametrize(("drop", "missing"), [
    (["--model", "--source", "--group", "--sink", "--key"], "--model, --source, --group, --sink, --key"),
    (["--key"], "--key"),
    (["--source", "--sink"], "--source, --sink"),
], ids=["all", "key", "source-and-sink"])
def test_missing_required_flags(tmp_path: Path, fraud: Path, drop: list[str], missing: str) -> None:
    given = {"--model": str(fraud), "--source": "redis://127.0.0.1:1/in", "--group": "g",
             "--sink": "redis://127.0.0.1:1/out", "--key": "id"}
    args = [part for flag, value in given.items() if flag not in drop for part in (flag, value)]
    assert_argparse_error(run_cli(args, tmp_path), f"the following arguments are required: {missing}")


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--max-batch", "-1", "argument --max-batch: -1 is negative"),
    ("--max-wait-ms", "-5", "argument --max-wait-ms: -5 is negative"),
    ("--max-inflight", "-2", "argument --max-inflight: -2 is negative"),
    ("--idle-exit", "-0.5", "argument --idle-exit: -0.5 is negative"),
    ("--shutdown-timeout", "-1", "argument --shutdown-timeout: -1 is negative"),
    ("--claim-idle-ms", "-1", "argument --claim-idle-ms: -1 is negative"),
    ("--max-batch", "many", "argument --max-batch: 'many' is not a number"),
    ("--max-batch", "1.5", "argument --max-batch: '1.5' is not a number"),
    ("--start", "middle", "argument --start: invalid choice: 'middle' (choose from earliest, latest)"),
])
def test_bad_numbers_and_choices(tmp_path: Path, fraud: Path, flag: str, value: str, message: str) -> None:
    args = ["--model", str(fraud), "--source", "redis://127.0.0.1:1/in", "--group", "g",
            "--sink", "redis://127.0.0.1:1/out", "--key", "id", flag, value]
    code, out, err = run_cli(args, tmp_path)
    if flag == "--start":  # argparse words choices differently across Python versions
        assert code == 2 and "Traceback" not in err and out == "", err
        assert "argument --start: invalid choice: 'middle'" in err.strip().splitlines()[-1]
    else:
        assert_argparse_error((code, out, err), message)


# -- configuration checked before anything is consumed -----------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--max-batch", "0"], "--max-batch 0: at least 1"),
    (["--max-inflight", "0"], "--max-inflight 0: at least 1"),
    (["--max-wait-ms", "600001"], "--max-wait-ms 600001.0: between 0 and 600000"),
    (["--columns", "nope=a,b"], "--columns nope=...: the model has no input 'nope' (inputs: ['features'])"),
    (["--columns", "features"], "--columns features: write INPUT=col1,col2,..."),
    (["--columns", "features="], "--columns features=: name at least one field"),
    (["--columns", "features=f_*"], "--columns features=...: list the event fields; globs only work on batch files"),
    (["--columns", "features=a,b"], "--columns features=...: 2 field(s) cannot fill rows of shape [30]"),
    (["--version", "7"], "--version 7: model fraud has versions ['1']"),
], ids=["max-batch-0", "max-inflight-0", "max-wait-too-long", "columns-unknown-input", "columns-no-equals",
        "columns-empty", "columns-glob", "columns-wrong-count", "unknown-version"])
def test_bad_settings_exit_2_before_any_connection(tmp_path: Path, fraud: Path, args: list[str],
                                                   message: str) -> None:
    # the source and sink point at a closed port: the check must come first
    result = lane(fraud, "redis://127.0.0.1:1/in", "g", "redis://127.0.0.1:1/out", *args, cwd=tmp_path)
    assert_usage_error(result, message)
    assert list(tmp_path.iterdir()) == []  # nothing created (no dead-letter file either)


def test_a_model_folder_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "nope"
    result = lane(missing, "redis://127.0.0.1:1/in", "g", "redis://127.0.0.1:1/out", cwd=tmp_path)
    assert_usage_error(result, f"{missing}: no model.yaml")


def test_a_source_of_an_unknown_scheme(tmp_path: Path, fraud: Path, stream_redis_url: str,
                                       topic_prefix: str) -> None:
    source = "amqp://127.0.0.1:5672/events"
    result = lane(fraud, source, topic_prefix, stream_url(stream_redis_url, f"{topic_prefix}:out"), cwd=tmp_path)
    assert_usage_error(result, f"--source {source}: use kafka://host:port/topic or redis://host:port/stream")


def test_a_sink_or_dlq_of_an_unknown_kind(tmp_path: Path, fraud: Path, stream_redis_url: str,
                                          topic_prefix: str) -> None:
    source = stream_url(stream_redis_url, f"{topic_prefix}:in")
    code, out, err = lane(fraud, source, topic_prefix, "ftp://127.0.0.1/out", cwd=tmp_path)
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith("ftp://127.0.0.1/out: use a folder, sqlite:///file.db or "
                                                 "postgresql://..."), err
    sink = stream_url(stream_redis_url, f"{topic_prefix}:out")
    result = lane(fraud, source, topic_prefix, sink, "--dlq", "letters.txt", cwd=tmp_path)
    assert_usage_error(result, "--dlq letters.txt: use kafka://host:port/topic, redis://host:port/stream or a "
                               ".jsonl file")


def test_kafka_topics_that_do_not_exist(tmp_path: Path, fraud: Path, kafka_bootstrap: str,
                                        topic_prefix: str) -> None:
    events, scores = f"{topic_prefix}-events", f"{topic_prefix}-scores"
    create_topics(kafka_bootstrap, [events, scores], partitions=1)
    group = f"{topic_prefix}-group"

    missing_source = f"kafka://{kafka_bootstrap}/{topic_prefix}-nope"
    result = lane(fraud, missing_source, group, f"kafka://{kafka_bootstrap}/{scores}", cwd=tmp_path)
    assert_usage_error(result, f"Kafka {kafka_bootstrap} topic(s) {topic_prefix}-nope group {group}: "
                               f"no topic {topic_prefix}-nope on the broker; create it first")

    missing_sink = f"kafka://{kafka_bootstrap}/{topic_prefix}-nowhere"
    result = lane(fraud, f"kafka://{kafka_bootstrap}/{events}", group, missing_sink, cwd=tmp_path)
    assert_usage_error(result, f"--sink {missing_sink}: no topic {topic_prefix}-nowhere on the broker; "
                               "create it first")

    missing_dlq = f"kafka://{kafka_bootstrap}/{topic_prefix}-nodlq"
    result = lane(fraud, f"kafka://{kafka_bootstrap}/{events}", group, f"kafka://{kafka_bootstrap}/{scores}",
                  "--dlq", missing_dlq, cwd=tmp_path)
    assert_usage_error(result, f"--dlq {missing_dlq}: no topic {topic_prefix}-nodlq on the broker; create it first")


def test_unreachable_redis_source_sink_or_dlq(tmp_path: Path, fraud: Path, stream_redis_url: str,
                                              topic_prefix: str) -> None:
    closed = f"redis://127.0.0.1:{free_port()}"
    good_in = stream_url(stream_redis_url, f"{topic_prefix}:in")
    good_out = stream_url(stream_redis_url, f"{topic_prefix}:out")
    # In parallel: each waits out redis-py's connection retries. --idle-exit: a lane that started
    # anyway exits 0 (and fails the test) instead of running until killed.
    runs = {
        "source": start_lane(fraud, f"{closed}/in", topic_prefix, good_out, "--idle-exit", "3", cwd=tmp_path),
        "sink": start_lane(fraud, good_in, topic_prefix, f"{closed}/out", "--idle-exit", "3", cwd=tmp_path),
        "dlq": start_lane(fraud, good_in, topic_prefix, good_out, "--dlq", f"{closed}/dlq", "--idle-exit", "3",
                          cwd=tmp_path),
    }
    results = {}
    try:
        for what, proc in runs.items():
            out, err = proc.communicate(timeout=120)
            results[what] = (proc.returncode, out, err)
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    code, out, err = results["source"]
    assert code == 2 and out == "" and "Traceback" not in err, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"Redis 127.0.0.1:{closed.rsplit(':', 1)[1]} stream in group {topic_prefix} "), line
    assert ": cannot reach Redis (" in line and "Connection refused" in line, line
    for what, name in (("sink", "out"), ("dlq", "dlq")):
        code, out, err = results[what]
        assert code == 2 and out == "" and "Traceback" not in err, err
        [line] = err.strip().splitlines()
        assert line.startswith(f"--{what} {closed}/{name}: cannot reach Redis ("), line
        assert "Connection refused" in line, line
    # the default dead-letter file is created on the first dead letter, not by a run that never started
    assert not (tmp_path / ".inferlane").exists()

def test_a_metrics_port_in_use(tmp_path: Path, fraud: Path, stream_redis_url: str, topic_prefix: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = lane(fraud, stream_url(stream_redis_url, f"{topic_prefix}:in"), topic_prefix,
                      stream_url(stream_redis_url, f"{topic_prefix}:out"), "--metrics-port", str(port),
                      "--idle-exit", "3", cwd=tmp_path)
    assert_usage_error(result, f"--metrics-port {port} on 127.0.0.1: Address already in use")


# -- a small run through Redis Streams ---------------------------------------------------------

def test_redis_run_scores_reports_and_dead_letters_to_the_default_file(tmp_path: Path, fraud: Path,
                                                                       stream_redis_url: str,
                                                                       topic_prefix: str) -> None:
    src, out_stream, group = f"{topic_prefix}:in", f"{topic_prefix}:out", f"{topic_prefix}-group"
    events = fraud_events(50)
    assert xadd_events(stream_redis_url, src, events[:25]) == 25
    client: Any = redis.Redis.from_url(stream_redis_url)
    try:
        poison = b'{"id": "poison", "features": [1, 2]}'
        poison_id = client.xadd(src, {"data": poison}).decode()
        assert xadd_events(stream_redis_url, src, events[25:]) == 25

        code, out, err = lane(fraud, stream_url(stream_redis_url, src), group,
                              stream_url(stream_redis_url, out_stream), "--idle-exit", "2", "--json",
                              "--max-batch", "16", cwd=tmp_path)
        assert code == 0, err
        assert "Traceback" not in err
        [line] = out.splitlines()
        report = orjson.loads(line)
        assert (report["events_in"], report["events_out"], report["dead_lettered"]) == (51, 50, 1)
        assert (report["model"], report["model_version"]) == ("fraud", "1")
        assert report["batches"] >= 4  # 51 events, at most 16 per micro-batch

        entries = client.xrange(out_stream)
        assert len(entries) == 50
        keys = [fields[b"key"] for _, fields in entries]
        assert sorted(keys) == sorted(f"e{i}@1".encode() for i in range(50))
        records = [orjson.loads(fields[b"data"]) for _, fields in entries]
        assert sorted(r["id"] for r in records) == sorted(f"e{i}" for i in range(50))
        for rec in records:
            assert (rec["model_name"], rec["model_version"]) == ("fraud", "1")
            assert rec["label"] in (0, 1)
            assert len(rec["probabilities"]) == 2
            assert abs(sum(rec["probabilities"]) - 1.0) < 1e-4
        assert client.xpending(src, group)["pending"] == 0  # every entry acknowledged

        dead_path = tmp_path / ".inferlane" / "stream" / group / "dead-letters.jsonl"
        [dead] = [orjson.loads(x) for x in dead_path.read_bytes().splitlines()]
        assert dead["error"] == "input 'features': shape [2] does not match [30]"
        assert dead["stage"] == "decode"
        assert (dead["source"], dead["offset"], dead["key"]) == (src, poison_id, "poison")  # its --key field
        assert dead["payload"] == poison.decode()
        assert dead["event_time_ms"] == int(poison_id.split("-")[0])
        assert (dead["model_name"], dead["model_version"]) == ("fraud", "1")
    finally:
        client.close()
