"""The checked-in gRPC code is what scripts/gen-grpc makes from the vendored proto (the staleness check)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = "inferlane/transport/grpc/proto"
FILES = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")


def test_generated_code_is_current(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gen-grpc"), str(tmp_path)], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    for name in FILES:
        fresh = (tmp_path / GENERATED / name).read_text(encoding="utf-8")
        checked_in = (ROOT / "src" / GENERATED / name).read_text(encoding="utf-8")
        assert fresh == checked_in, f"src/{GENERATED}/{name} is stale: run scripts/gen-grpc"


def test_our_messages_and_tritonclients_live_in_one_process() -> None:
    """Both define the messages of package ``inference``: ours sit in a descriptor pool of their own."""
    import tritonclient.grpc.service_pb2 as theirs

    from inferlane.transport.grpc.proto import grpc_service_pb2 as ours

    message = ours.ModelInferRequest(model_name="fraud", raw_input_contents=[b"\x00" * 4])
    message.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    parsed = theirs.ModelInferRequest.FromString(message.SerializeToString())
    assert (parsed.model_name, parsed.inputs[0].name, list(parsed.inputs[0].shape)) == ("fraud", "x", [1, 1])
