"""Raw ONNX Runtime: ``python -m benchmarks.online.raw '{"seconds": S, "models": {name: path}}'``,
run pinned to the server core (``measure_raw`` starts it). One session per model (one thread,
sequential, data in memory) runs batches of RAW_BATCH and of 1 back to back for S seconds each;
prints the rates as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, module_command
from benchmarks.online.config import N_FEATURES, RAW_BATCH


def measure_raw(seconds: float, core: int, models: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Run this program pinned to ``core``; its figures per model (``rows_per_s_b64``,
    ``ms_per_run_b64``, ``rows_per_s_b1``, ``ms_per_run_b1``)."""
    spec = {"seconds": seconds, "models": {m: str(p) for m, p in models.items()}}
    cmd = module_command("benchmarks.online.raw", json.dumps(spec), prefix=["taskset", "-c", str(core)])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, timeout=300)
    result: dict[str, dict[str, float]] = json.loads(out.stdout)
    return result


def main(argv: list[str]) -> int:
    import numpy as np
    import onnxruntime as ort

    spec = json.loads(argv[0])
    seconds = float(spec["seconds"])
    out: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for name, path in spec["models"].items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        result: dict[str, float] = {}
        for batch in (RAW_BATCH, 1):
            feed = {"x": rng.standard_normal((batch, N_FEATURES)).astype(np.float32)}
            for _ in range(20):
                sess.run(["y"], feed)
            runs = 0
            t0 = time.perf_counter()
            deadline = t0 + seconds
            while True:
                sess.run(["y"], feed)
                runs += 1
                now = time.perf_counter()
                if now >= deadline:
                    break
            result[f"rows_per_s_b{batch}"] = runs * batch / (now - t0)
            result[f"ms_per_run_b{batch}"] = (now - t0) / runs * 1e3
        out[name] = result
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
