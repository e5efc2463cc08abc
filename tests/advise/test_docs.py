"""docs/choosing.md's hand-written GPU profile (the seeds' figures) gives the output the page shows:
the example is re-run here, so the page cannot go stale while the rules or the cost math change."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from inferlane.cli.main import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "choosing.md"


def test_the_seeds_gpu_example_in_the_docs_is_current(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    at = text.index("(`gpu-profile.json`)")
    blocks = re.findall(r"```(\w+)\n(.*?)```", text[at:], flags=re.S)[:3]
    assert [kind for kind, _ in blocks] == ["json", "bash", "text"]
    (tmp_path / "gpu-profile.json").write_text(blocks[0][1], encoding="utf-8")
    argv = shlex.split(blocks[1][1].replace("\\\n", " "))
    assert argv[:2] == ["inferlane", "advise"]
    argv = [str(tmp_path / a) if a == "gpu-profile.json" else a for a in argv[1:]]
    assert main(argv) == 0
    out = capsys.readouterr().out
    shown = [line for line in blocks[2][1].splitlines() if line]
    assert len(shown) > 10
    for line in shown:
        assert line in out, line
