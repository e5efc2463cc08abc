"""Hostile --replicas values and --replicas with --workers: one clear line, exit 2, nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferlane.cli.main import EXIT_USAGE, main


@pytest.mark.parametrize("flags,says", [
    (["--replicas", "0..2"], "MIN must be at least 1"),
    (["--replicas", "3..1"], "MIN (3) is above MAX (1)"),
    (["--replicas", "a..b"], "expected MIN..MAX"),
    (["--replicas", "1..2", "--workers", "2"], "--replicas and --workers are exclusive"),
])
def test_hostile_replica_flags_are_usage_errors(flags: list[str], says: str, model_repo: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(model_repo), *flags]) == EXIT_USAGE
    assert says in capsys.readouterr().err


def test_a_bad_scale_window_is_an_argparse_error(model_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["serve", str(model_repo), "--replicas", "1..2", "--scale-window", "soon"])
    assert e.value.code == EXIT_USAGE
    assert "not a number of seconds" in capsys.readouterr().err
