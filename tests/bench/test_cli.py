"""``inferlane bench`` from the command line: help, bad input (exit 2), V1, bodies, the sweep, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferlane.cli.main import main
from inferlane.testing import free_port
from inferlane.testing.server import ServerProcess


def test_help_explains_the_modes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for text in ("--rate", "--concurrency", "--sweep", "--p99-ms", "open loop", "coordinated", "exit codes"):
        assert text in out


@pytest.mark.parametrize(("argv", "message"), [
    (["ftp://host:1", "--model", "m", "--rate", "10"], "is not a server URL"),
    (["https://127.0.0.1:1", "--model", "m", "--rate", "10"], "https is not supported"),
    (["{app}", "--model", "nope", "--rate", "10"], "has no model 'nope'"),
    (["{app}", "--model", "fixed"], "give --rate RPS"),
    (["{app}", "--model", "fixed", "--rate", "10", "--p99-ms", "5"], "--sweep and --p99-ms go together"),
    (["{app}", "--rate", "10"], "which model?"),
    (["{app}/v2/models/fixed/infer", "--rate", "10"], "give the body with --body"),
    (["{app}", "--model", "fixed", "--rate", "10", "--body", "/nonexistent.json"], "cannot read --body"),
    (["{app}", "--model", "fixed", "--rate", "10", "--inputs", "[1,"], "--inputs is not JSON"),
])
def test_bad_input_exits_2_with_a_clear_message(argv: list[str], message: str, app_url: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *(a.replace("{app}", app_url) for a in argv)]) == 2
    assert message in capsys.readouterr().err


def test_an_unreachable_server_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", f"http://127.0.0.1:{free_port()}", "--model", "m", "--rate", "10"]) == 2
    assert "cannot reach the server" in capsys.readouterr().err


@pytest.mark.parametrize("rate", ["0", "-5", "nan"])
def test_a_rate_that_is_not_positive_exits_2(rate: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", "http://127.0.0.1:1", "--model", "m", "--rate", rate])
    assert e.value.code == 2
    assert "must be greater than 0" in capsys.readouterr().err


def test_v1_with_a_body_file_and_json_output(app_url: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    body = tmp_path / "row.json"
    body.write_text('{"instances": [[1, 2, 3, 4]]}')
    out = tmp_path / "out.json"
    assert main(["bench", app_url, "--model", "fixed", "--protocol", "v1", "--body", str(body),
                 "--rate", "50", "--duration", "500ms", "--warmup", "0", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "POST " + app_url + "/v1/models/fixed:predict" in text and "200: " in text
    doc = json.loads(out.read_text())
    assert doc["mode"] == "open" and doc["target_rate"] == 50 and set(doc["statuses"]) == {"200"}
    assert doc["latency_ms"]["p99"] > 0


def test_the_sweep_finds_the_rate_the_connections_allow(app_url: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # 8 connections on a 50 ms model carry at most 160 req/s: 100 meets a 100 ms p99, 200 cannot.
    out = tmp_path / "sweep.json"
    assert main(["bench", app_url, "--model", "fixed", "--sweep", "--p99-ms", "100", "--rate", "50",
                 "--connections", "8", "--duration", "600ms", "--warmup", "100ms", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "highest rate meeting p99 <= 100 ms" in text
    doc = json.loads(out.read_text())
    rates = [s["rate"] for s in doc["steps"]]
    assert rates[:3] == [50, 100, 200]  # doubling until the first failure, then bisection
    assert len(rates) > 3 and not doc["steps"][2]["passed"]
    assert 100 <= doc["best_rate"] < 200
    assert not doc["limited_by_generator"]


def test_a_body_built_from_inferlane_model_metadata_is_valid(server: ServerProcess,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # A real `inferlane serve`: the body comes from GET /v2/models/fraud, and every answer is a 200.
    assert main(["bench", server.url, "--model", "fraud", "--rate", "100", "--duration", "500ms",
                 "--warmup", "100ms"]) == 0
    text = capsys.readouterr().out
    assert "random rows from GET /v2/models/fraud" in text
    assert "statuses    200: " in text and "no answer   none" in text
