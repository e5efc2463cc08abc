"""The Python HTTP floor: ``python -m benchmarks.online.bare PORT``. A bare Starlette app served by
uvicorn exactly as inferlane is (``config.UVICORN``: uvloop, httptools, no access log); its infer
route reads the body and returns a constant V2 response, so it measures what any Python ASGI server
pays per request before doing any work.
"""

from __future__ import annotations

import sys

from benchmarks.online.config import HOST, UVICORN

BARE_RESPONSE = (b'{"model_name":"small","model_version":"1","outputs":[{"name":"y",'
                 b'"datatype":"FP32","shape":[1,2],"data":[0.4997,0.5003]}]}')


def main(argv: list[str]) -> int:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request: Request) -> Response:
        await request.body()  # read the request like a real endpoint, then ignore it
        return Response(BARE_RESPONSE, media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    app = Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"]),
                            Route("/v2/health/ready", ready, methods=["GET"])])
    uvicorn.run(app, host=HOST, port=int(argv[0]), **UVICORN)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
