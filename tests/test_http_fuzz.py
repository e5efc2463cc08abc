"""Fuzzing the HTTP API of the running server (shared ``server`` fixture, read-only routes and
inference only, so the server-side state other tests see is unchanged).

* Schemathesis generates requests from the OpenAPI document the server serves at
  ``/openapi.json``: schema-valid ones (positive) for every operation and schema-violating ones
  (negative) for the operations that take a body or headers. Path parameters are often swapped
  for real model names and versions, so requests reach the codec and the models, not just 404.
  Checks: no 5xx but the documented 503/504, every status and content type documented,
  responses match their schemas, schema-violating requests refused, and every 4xx/5xx on the
  API routes is JSON ``{"error": "..."}``.
* Hypothesis builds near-valid V2 bodies (JSON and binary tensors) for the ``fraud`` model, where
  an oracle knows which must succeed and which must be refused with 400.

``schemathesis.pytest.from_fixture`` (lazy schemas) is not used: with the installed pytest 9.2 it
fails with ``'Function' object has no attribute '_nodeid'``. ``APIOperation.as_strategy`` inside
an ordinary parametrized test needs no pytest plugin and loads the schema from the live server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from inferlane.core.datatypes import DATATYPES
from inferlane.transport.http.openapi import openapi_document
from tests.conftest import Server

pytestmark = pytest.mark.e2e

# Deterministic and bounded: the same examples on every run, no example database, no deadline
# (the machine may be slow), and no health checks (requests, not generation, take the time).
FUZZ = settings(max_examples=100, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck))

DOC = openapi_document()
OPERATIONS = [(method.upper(), path) for path, item in DOC["paths"].items() for method in item]
# Negative mode needs something that can violate the schema: a body or a non-path parameter.
# (A path parameter is any string, so there is nothing to violate.)
WITH_INPUTS = {(method.upper(), path) for path, item in DOC["paths"].items()
               for method, op in item.items()
               if "requestBody" in op or any(p["in"] != "path" for p in op.get("parameters", []))}
CASES = [pytest.param(method, path, GenerationMode.POSITIVE, id=f"{method} {path} positive")
         for method, path in OPERATIONS]
CASES += [pytest.param(method, path, GenerationMode.NEGATIVE, id=f"{method} {path} negative")
          for method, path in OPERATIONS if (method, path) in WITH_INPUTS]
NOT_JSON = {"/metrics", "/docs"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def api_schema(server: Server) -> Any:
    # 413 counts as refusing a schema-violating request: size limits are checked first, so a body
    # that is both too large and invalid gets 413. 5xx is not allowed (checked separately).
    config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
        "expected-statuses": ["400", "404", "405", "413"]}}})
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def test_served_document_is_the_generated_one(server: Server) -> None:
    assert httpx.get(f"{server.url}/openapi.json").json() == orjson.loads(orjson.dumps(DOC))


def _check_error_body(path: str, status: int, headers: dict[str, list[str]], body: bytes) -> None:
    assert status < 500 or status in (503, 504), (status, body[:500])
    if status >= 400 and path not in NOT_JSON:
        assert headers.get("content-type") == ["application/json"], (status, headers)
        doc = orjson.loads(body)
        assert isinstance(doc, dict), body[:500]
        assert isinstance(doc.get("error"), str) and doc["error"], body[:500]
    if status == 503 and "queue" in body.decode(errors="replace"):
        assert headers.get("retry-after", [""])[0].isdigit()


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_openapi_fuzz(api_schema: Any, server: Server, session: requests.Session, method: str,
                      path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @FUZZ
    @given(case=operation.as_strategy(mode),
           model=st.sampled_from(["fraud", "slow", "missing", None]),
           version=st.sampled_from(["1", "7", None]))
    def run(case: Any, model: str | None, version: str | None) -> None:
        params = case.path_parameters or {}
        if model is not None and "name" in params:
            params["name"] = model
        if version is not None and "version" in params:
            params["version"] = version
        response = case.call(base_url=server.url, session=session, timeout=30)
        _check_error_body(path, response.status_code, response.headers, response.content)
        case.validate_response(response, checks=CHECKS)

    run()


# -- near-valid V2 bodies for `fraud` (features FP32 [-1, 30]) with an oracle ---------------------

NUMBERS = {
    "floats": st.floats(-1e6, 1e6, allow_nan=False, width=32),
    "ints": st.integers(-1000, 1000),
    "bools": st.booleans(),
    "strings": st.text(max_size=3),
    "nulls": st.none(),
    "mixed": st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.none(), st.text(max_size=2),
                       st.lists(st.integers(-10, 10), max_size=2)),
    "huge": st.floats(1e39, 1e300),
}


@st.composite
def fraud_bodies(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """A V2 body close to a valid `fraud` request, and whether it is valid."""
    name = draw(st.sampled_from(["features", "features", "features", "x", ""]))
    datatype = draw(st.sampled_from(["FP32", "FP32", "FP32", "FP64", "INT64", "BOOL", "fp32"]))
    rows = draw(st.integers(0, 3))
    cols = draw(st.sampled_from([30, 30, 30, 29]))
    shape: list[Any] = draw(st.sampled_from([[rows, cols], [rows, cols], [rows * cols],
                                             [rows, cols, 1], [-rows, cols], [rows, float(cols)],
                                             [rows, cols + 0.5], [rows, str(cols)]]))
    kind = draw(st.sampled_from(["floats", "floats", "floats", "ints", *NUMBERS]))
    n = max(rows * cols + draw(st.sampled_from([0, 0, 0, 1, -1])), 0)
    flat = draw(st.lists(NUMBERS[kind], min_size=n, max_size=n))
    data: Any = flat
    nested = draw(st.booleans())
    if nested and rows and n == rows * cols:
        data = [flat[r * cols:(r + 1) * cols] for r in range(rows)]
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    body: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.booleans()):
        body["outputs"] = [{"name": draw(st.sampled_from(["label", "probabilities", "nope"]))}]
    if draw(st.integers(0, 9)) == 0:
        body["inputs"].append(dict(tensor))  # the same name twice
    dims_ok = all(isinstance(d, int | float) and float(d).is_integer() and d >= 0 for d in shape)
    valid = (name == "features" and datatype == "FP32" and dims_ok
             and [int(d) for d in shape] == [rows, 30] and rows >= 1 and cols == 30
             and n == rows * cols and kind in ("floats", "ints") and len(body["inputs"]) == 1
             and body.get("outputs", [{"name": "label"}])[0]["name"] != "nope")
    return body, valid


@FUZZ
@given(fraud_bodies())
def test_near_valid_json_bodies(server: Server, example: tuple[dict[str, Any], bool]) -> None:
    body, valid = example
    r = httpx.post(f"{server.url}/v2/models/fraud/infer", content=orjson.dumps(body), timeout=30)
    _check_error_body("/v2/models/fraud/infer", r.status_code,
                      {k: [v] for k, v in r.headers.items()}, r.content)
    if valid:
        assert r.status_code == 200, (body, r.text)
        rows = body["inputs"][0]["shape"][0]
        shapes = {o["name"]: o["shape"] for o in r.json()["outputs"]}
        assert all(s[0] == rows for s in shapes.values()), shapes
    else:
        assert r.status_code == 400, (body, r.text)


@st.composite
def binary_bodies(draw: st.DrawFn) -> tuple[bytes, str, bool]:
    """A binary-extension body for `fraud`, its Inference-Header-Content-Length, and validity."""
    rows = draw(st.integers(1, 3))
    raw = np.arange(rows * 30, dtype="<f4").tobytes()
    size = len(raw) + draw(st.sampled_from([0, 0, 0, 4, -4, -len(raw), 1]))
    extra = draw(st.sampled_from([b"", b"", b"", b"\x00\x00\x00\x00"]))
    cut = draw(st.sampled_from([0, 0, 0, 4]))
    size_value: Any = draw(st.sampled_from([size, size, size, -1, str(size), float(size), True]))
    header = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [rows, 30],
                                       "parameters": {"binary_data_size": size_value}}]})
    body = header + raw[:len(raw) - cut] + extra
    hl_delta = draw(st.sampled_from([0, 0, 0, 0, 1, -1, 10**6]))
    hl = str(len(header) + hl_delta)
    hl = draw(st.sampled_from([hl, hl, hl, hl, f"{hl}x", "", "-3", "\u00b2", "9" * 5000]))
    # An integral float is a JSON Schema integer, so 480.0 is as good as 480.
    valid = (size == len(raw) == len(body) - len(header) and hl == str(len(header))
             and size_value == size and not isinstance(size_value, bool | str))
    return body, hl, valid


@FUZZ
@given(binary_bodies())
def test_near_valid_binary_bodies(server: Server, example: tuple[bytes, str, bool]) -> None:
    body, hl, valid = example
    r = httpx.post(f"{server.url}/v2/models/fraud/infer", content=body, timeout=30,
                   headers={"Inference-Header-Content-Length": hl.encode("latin-1"),
                            "Content-Type": "application/octet-stream"})
    _check_error_body("/v2/models/fraud/infer", r.status_code,
                      {k: [v] for k, v in r.headers.items()}, r.content)
    assert r.status_code == (200 if valid else 400), (hl, body[:300], r.text)
    if valid:
        rows = orjson.loads(body[:int(hl)])["inputs"][0]["shape"][0]
        assert {o["name"]: o["shape"][0] for o in r.json()["outputs"]} == {"label": rows,
                                                                           "probabilities": rows}


def test_datatypes_list_is_what_the_schema_documents() -> None:
    enum = DOC["components"]["schemas"]["RequestInput"]["properties"]["datatype"]["enum"]
    assert tuple(enum) == DATATYPES
