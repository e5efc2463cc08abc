"""The naive endpoint: ``python -m benchmarks.online.naive PORT MODEL_NAME MODEL_PATH``. What a user
writes without a model server: a plain Starlette app, served by uvicorn like inferlane and the bare
endpoint (uvloop, httptools, no access log), whose POST handler parses the V2 JSON body with orjson,
builds a float32 array, calls ``InferenceSession.run`` once per request (on the event loop: the
handler is a plain ``async def``) and answers V2 JSON. The session is created as a user would:
default ``SessionOptions``, no thread settings.
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.online.config import HOST, UVICORN


def build_app(name: str, model_path: str) -> Any:
    import numpy as np
    import onnxruntime as ort
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    session = ort.InferenceSession(model_path)

    async def infer(request: Request) -> Response:
        doc = orjson.loads(await request.body())
        tensor = doc["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        (y,) = session.run(None, {tensor["name"]: x})
        body = {"model_name": name, "outputs": [
            {"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}]}
        return Response(orjson.dumps(body), media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    return Starlette(routes=[Route(f"/v2/models/{name}/infer", infer, methods=["POST"]),
                             Route("/v2/health/ready", ready, methods=["GET"])])


def main(argv: list[str]) -> int:
    import uvicorn

    port, name, model_path = argv
    uvicorn.run(build_app(name, model_path), host=HOST, port=int(port), **UVICORN)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
