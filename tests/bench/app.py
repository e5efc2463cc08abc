"""A tiny V2/V1 server whose behaviour the bench tests know exactly: ``python tests/bench/app.py PORT``.

Models (each has metadata at GET /v2/models/NAME: one FP32 input ``x`` of shape [-1, 4]):

- ``fixed``: answers after DELAY_S (an asyncio sleep: the server stays responsive meanwhile).
- ``stall-<anything>``: answers at once, except its STALL_AT-th request, which freezes the whole
  server for STALL_S (a blocking sleep in the event loop); each name stalls once.
- ``flaky``: every FLAKY_EVERY-th request is a 503.
- V1 ``POST /v1/models/fixed:predict``: answers at once.

A V2 body whose ``x`` data does not match its shape is a 400, so a generated body is checked.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter

DELAY_S = 0.05
STALL_AT = 100
STALL_S = 0.5
FLAKY_EVERY = 4
ANSWER = b'{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[1,1],"data":[0.5]}]}'
counts: Counter[str] = Counter()


def main(port: int) -> None:
    import orjson
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def known(name: str) -> bool:
        return name in ("fixed", "flaky") or name.startswith("stall-")

    async def metadata(request: Request) -> Response:
        name = request.path_params["name"]
        if not known(name):
            return Response(b'{"error":"no such model"}', 404, media_type="application/json")
        doc = {"name": name, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
               "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]}
        return Response(orjson.dumps(doc), media_type="application/json")

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        if not known(name):
            return Response(b'{"error":"no such model"}', 404, media_type="application/json")
        x = orjson.loads(await request.body())["inputs"][0]
        if len(x["data"]) != x["shape"][0] * x["shape"][1]:
            return Response(b'{"error":"shape"}', 400, media_type="application/json")
        counts[name] += 1
        if name == "fixed":
            await asyncio.sleep(DELAY_S)
        elif name == "flaky" and counts[name] % FLAKY_EVERY == 0:
            return Response(b'{"error":"busy"}', 503, media_type="application/json")
        elif name.startswith("stall-") and counts[name] == STALL_AT:
            time.sleep(STALL_S)  # noqa: ASYNC251 -- on purpose: freezes the event loop, the whole server stalls
        return Response(ANSWER, media_type="application/json")

    async def predict(request: Request) -> Response:
        await request.body()
        return Response(b'{"predictions":[0.5]}', media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    app = Starlette(routes=[Route("/v2/health/ready", ready), Route("/v2/models/{name}", metadata),
                            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
                            Route("/v1/models/fixed:predict", predict, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False,
                log_level="warning")


if __name__ == "__main__":
    main(int(sys.argv[1]))
