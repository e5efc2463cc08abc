"""The public API is declared once in __all__, and generated docs are current."""

import inspect
from pathlib import Path

import inferlane
from inferlane.core.config_docs import render

ROOT = Path(__file__).resolve().parents[1]


def test_exported_members_exist_and_are_sorted() -> None:
    assert inferlane.__all__ == sorted(inferlane.__all__)
    for name in inferlane.__all__:
        assert hasattr(inferlane, name), name
    public = {n for n in dir(inferlane) if not n.startswith("_") and n != "annotations"
              and not inspect.ismodule(getattr(inferlane, n))}  # subpackages are not exports
    assert public <= set(inferlane.__all__), public - set(inferlane.__all__)


def test_model_config_reference_is_current() -> None:
    on_disk = (ROOT / "docs" / "model-config.md").read_text(encoding="utf-8")
    assert on_disk == render(), "run: python -m inferlane.core.config_docs"
