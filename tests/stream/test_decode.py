"""RecordDecoder (JSON events → model inputs, one verdict per event; core/inputs/records.py) and the
record / dead-letter formats of the stream lane, on the demo fraud model (input ``features``: FP32 ``[-1, 30]``)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from inferlane.cli.batch_args import parse_columns
from inferlane.core.errors import ConfigError
from inferlane.core.inputs import RecordDecoder
from inferlane.core.model import ModelVersion
from inferlane.core.spec import ModelConfig
from inferlane.lanes.stream.sinks import DeadLetter, DeadLetters, JsonlWriter, RecordSink, Scored, output_key
from inferlane.lanes.stream.sources import Event
from tests.stream.support import fraud_events

WIDTH = 30
MAX_EVENT_BYTES = 1 << 20  # the demo fraud model's limits.max_request_bytes (checked by the fixture)
FIELDS = [f"f{i}" for i in range(WIDTH)]


@pytest.fixture(scope="module")
def config(model_repo: Path) -> Iterator[ModelConfig]:
    model = ModelVersion.open(model_repo / "fraud")
    assert model.config.limits.max_request_bytes == MAX_EVENT_BYTES
    try:
        yield model.config
    finally:
        model.close()


@pytest.fixture(scope="module")
def decoder(config: ModelConfig) -> RecordDecoder:
    return RecordDecoder.create(config, key="id")


def dumps(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def features(events: list[dict[str, Any]]) -> np.ndarray:
    return np.asarray([e["features"] for e in events], dtype=np.float32)


def vector(first: str) -> bytes:
    """A raw ``features`` list whose first element is the literal JSON text ``first``."""
    return b"[" + first.encode() + b",0.5" * (WIDTH - 1) + b"]"


def raw_event(key: str, vector_text: bytes) -> bytes:
    return b'{"id": "' + key.encode() + b'", "features": ' + vector_text + b"}"


# -- valid events ------------------------------------------------------------------------------

def test_valid_events_decode_to_rows_keys_and_index(decoder: RecordDecoder) -> None:
    events = fraud_events(6)
    events[1]["id"] = 17  # integer keys are kept as integers
    events[2]["comment"] = {"ignored": [1, 2]}  # fields that feed no input are ignored
    decoded = decoder.decode([dumps(e) for e in events])
    assert decoded.rejects == []
    assert decoded.index == [0, 1, 2, 3, 4, 5]
    assert decoded.keys["id"] == ["e0", 17, "e2", "e3", "e4", "e5"]
    assert list(decoded.inputs) == ["features"]
    arr = decoded.inputs["features"]
    assert arr.dtype == np.float32
    assert arr.shape == (6, WIDTH)
    np.testing.assert_array_equal(arr, features(events))


def test_integer_vectors_and_integer_keys_at_the_64_bit_edges(decoder: RecordDecoder) -> None:
    events = [{"id": 2**64 - 1, "features": list(range(WIDTH))}, {"id": -(2**63), "features": [0] * WIDTH}]
    decoded = decoder.decode([dumps(e) for e in events])
    assert decoded.rejects == []
    assert decoded.keys["id"] == [2**64 - 1, -(2**63)]
    np.testing.assert_array_equal(decoded.inputs["features"][0], np.arange(WIDTH, dtype=np.float32))


def test_booleans_are_refused_for_numbers_alone_or_among_numbers(decoder: RecordDecoder) -> None:
    # NumPy would fold true/false among numbers into 1 and 0; the input contract refuses them
    # whatever their neighbours, as every other lane does.
    decoded = decoder.decode([dumps({"id": "b", "features": [True, False] * (WIDTH // 2)}),
                              dumps({"id": "c", "features": [True] + [0.5] * (WIDTH - 1)}),
                              dumps(fraud_events(1)[0])])
    assert decoded.index == [2]
    assert decoded.rejects == [(0, "input 'features': true/false where FP32 numbers belong"),
                               (1, "input 'features': true/false where FP32 numbers belong")]


def test_an_integer_input_refuses_fractions_and_a_bool_input_refuses_numbers() -> None:
    cfg = ModelConfig.model_validate({
        "name": "typed", "runtime": "python",
        "inputs": [{"name": "count", "datatype": "INT64", "shape": [-1, 2]},
                   {"name": "flag", "datatype": "BOOL", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]})
    decoder = RecordDecoder.create(cfg, key="id")
    decoded = decoder.decode([dumps({"id": 1, "count": [3, 4], "flag": True}),
                              dumps({"id": 2, "count": [3.5, 4], "flag": False}),
                              dumps({"id": 3, "count": [1, 2], "flag": 1})])
    assert decoded.index == [0]
    np.testing.assert_array_equal(decoded.inputs["count"], np.asarray([[3, 4]], np.int64))
    np.testing.assert_array_equal(decoded.inputs["flag"], np.asarray([True]))
    reasons = dict(decoded.rejects)
    assert reasons[1] == "input 'count': a float where INT64 integers belong"
    assert reasons[2] == "input 'flag': a number where BOOL values (true/false) belong"


def test_an_empty_batch_decodes_to_zero_rows(decoder: RecordDecoder) -> None:
    decoded = decoder.decode([])
    assert (decoded.index, decoded.keys, decoded.rejects) == ([], {"id": []}, [])
    assert decoded.inputs["features"].shape == (0, WIDTH)
    assert decoded.inputs["features"].dtype == np.float32


def test_an_event_of_exactly_max_event_bytes_is_accepted(decoder: RecordDecoder) -> None:
    head = dumps({"id": "big", "features": [0.25] * WIDTH, "pad": ""})
    pad = MAX_EVENT_BYTES - len(head)
    raw = dumps({"id": "big", "features": [0.25] * WIDTH, "pad": "x" * pad})
    assert len(raw) == MAX_EVENT_BYTES
    decoded = decoder.decode([raw, raw + b" "])
    assert decoded.index == [0]
    assert decoded.keys["id"] == ["big"]
    np.testing.assert_array_equal(decoded.inputs["features"], np.full((1, WIDTH), 0.25, dtype=np.float32))
    assert decoded.rejects == [(1, f"event of {MAX_EVENT_BYTES + 1} bytes is over the {MAX_EVENT_BYTES}-byte limit "
                                   "(limits.max_request_bytes)")]


# -- --columns: an input from scalar fields ----------------------------------------------------

def scalar_events(n: int) -> list[dict[str, Any]]:
    return [{"id": f"s{i}", **{f: float(i * 100 + j) for j, f in enumerate(FIELDS)}} for i in range(n)]


def test_columns_build_each_row_from_scalar_fields_in_the_listed_order(config: ModelConfig) -> None:
    mapping = parse_columns(["features=" + ",".join(reversed(FIELDS))])
    assert mapping == {"features": list(reversed(FIELDS))}
    decoder = RecordDecoder.create(config, key="id", columns=mapping)
    events = scalar_events(3)
    decoded = decoder.decode([dumps(e) for e in events])
    assert decoded.rejects == []
    assert decoded.keys["id"] == ["s0", "s1", "s2"]
    expected = np.asarray([[e[f] for f in reversed(FIELDS)] for e in events], dtype=np.float32)
    np.testing.assert_array_equal(decoded.inputs["features"], expected)
    assert decoded.inputs["features"][1, 0] == 129.0  # row 1, first listed field f29


def test_columns_reject_only_the_events_with_bad_fields(config: ModelConfig) -> None:
    decoder = RecordDecoder.create(config, key="id", columns=parse_columns(["features=" + ",".join(FIELDS)]))
    events = scalar_events(6)
    del events[1]["f7"]
    events[3]["f0"] = [1.0, 2.0]
    events[4]["f29"] = None
    events[5]["f2"] = "twelve"
    decoded = decoder.decode([dumps(e) for e in events])
    assert decoded.index == [0, 2]
    assert decoded.keys["id"] == ["s0", "s2"]
    np.testing.assert_array_equal(decoded.inputs["features"],
                                  np.asarray([[e[f] for f in FIELDS] for e in (events[0], events[2])], np.float32))
    reasons = dict(decoded.rejects)
    assert sorted(reasons) == [1, 3, 4, 5]
    assert reasons[1] == "input 'features': missing field 'f7'"
    # each reason names the one field at fault
    assert reasons[3] == "input 'features' (field f0): a list where FP32 numbers belong"
    assert reasons[4] == "input 'features' (field f29): null where FP32 numbers belong"
    assert reasons[5] == "input 'features' (field f2): a string where FP32 numbers belong"


def test_a_plain_event_misses_its_mapped_fields(config: ModelConfig) -> None:
    decoder = RecordDecoder.create(config, key="id", columns={"features": FIELDS})
    decoded = decoder.decode([dumps(fraud_events(1)[0])])
    assert decoded.index == []
    assert decoded.rejects == [(0, "input 'features': missing field 'f0'")]
    assert decoded.inputs["features"].shape == (0, WIDTH)


@pytest.mark.parametrize(("key", "columns", "message"), [
    ("id", {"nope": ["a", "b"]}, "--columns nope=...: the model has no input 'nope' (inputs: ['features'])"),
    ("id", {"features": ["f_*"]}, "--columns features=...: list the event fields; globs only work on batch files"),
    ("id", {"features": ["f?"]}, "--columns features=...: list the event fields; globs only work on batch files"),
    ("id", {"features": ["f[0-9]"]}, "--columns features=...: list the event fields; globs only work on batch files"),
    ("id", {"features": []}, "--columns features=: name at least one field"),
    ("id", {"features": ["a", "b", "c"]}, "--columns features=...: 3 field(s) cannot fill rows of shape [30]"),
    ("", None, "--key: name the event field that identifies an event (its output key)"),
], ids=["unknown-input", "glob-star", "glob-question", "glob-class", "no-fields", "wrong-count", "no-key"])
def test_create_rejects_bad_configuration(config: ModelConfig, key: str, columns: dict[str, list[str]] | None,
                                          message: str) -> None:
    with pytest.raises(ConfigError) as e:
        RecordDecoder.create(config, key=key, columns=columns)
    assert e.value.message == message


def test_cli_columns_strings_become_the_mapping() -> None:
    assert parse_columns(["features=a,b,,c", "other=x"]) == {"features": ["a", "b", "c"], "other": ["x"]}
    assert parse_columns(["features="]) == {"features": []}  # then RecordDecoder.create refuses it
    with pytest.raises(ConfigError) as e:
        parse_columns(["features"])
    assert e.value.message.startswith("--columns features: write INPUT=col1,col2,...")


# -- malformed, oversized and hostile events ---------------------------------------------------

GOOD = fraud_events(2, prefix="good")
SHAPE = "input 'features': "
NO_KEY = "key field 'id' is missing or not a string/integer"
FEATURES = [0.5] * WIDTH


def _bad(event: dict[str, Any]) -> bytes:
    return dumps(event)


# (raw event, the exact reason or ("prefix", fragment) when the text comes from orjson)
HOSTILE: dict[str, tuple[bytes | None, str | tuple[str, str]]] = {
    "not-json": (b"not json", ("not JSON: ", "")),
    "truncated-json": (b'{"id": "t", "features": [1, 2,', ("not JSON: ", "")),
    "trailing-garbage": (_bad({"id": "t", "features": FEATURES}) + b"}", ("not JSON: ", "")),
    "non-utf8-bytes": (b'{"id": "\xff\xfe", "features": ' + vector("0.5") + b"}", ("not JSON: ", "UTF-8")),
    "empty-bytes": (b"", ("not JSON: ", "empty")),
    "whitespace-only": (b"  \n ", ("not JSON: ", "")),
    "no-value": (None, "empty event (no value)"),
    "json-array": (b"[1, 2, 3]", "event is a JSON array, not an object"),
    "json-int": (b"42", "event is a JSON number, not an object"),
    "json-float": (b"4.5", "event is a JSON number, not an object"),
    "json-string": (b'"{\\"id\\": 1}"', "event is a JSON string, not an object"),
    "json-bool": (b"true", "event is a JSON boolean, not an object"),
    "json-null": (b"null", "event is a JSON null, not an object"),
    "missing-key": (_bad({"features": FEATURES}), NO_KEY),
    "key-null": (_bad({"id": None, "features": FEATURES}), NO_KEY),
    "key-object": (_bad({"id": {"a": 1}, "features": FEATURES}), NO_KEY),
    "key-list": (_bad({"id": ["a"], "features": FEATURES}), NO_KEY),
    "key-float": (_bad({"id": 1.5, "features": FEATURES}), NO_KEY),
    "key-true": (_bad({"id": True, "features": FEATURES}), NO_KEY),
    "key-false": (_bad({"id": False, "features": FEATURES}), NO_KEY),
    "key-past-64-bits": (b'{"id": 1180591620717411303424, "features": ' + vector("0.5") + b"}", NO_KEY),
    "missing-input": (_bad({"id": "t", "feature": FEATURES}), "input 'features': missing field 'features'"),
    "short-vector": (_bad({"id": "t", "features": [0.5] * 29}), SHAPE + "shape [29] does not match [30]"),
    "long-vector": (_bad({"id": "t", "features": [0.5] * 31}), SHAPE + "shape [31] does not match [30]"),
    "empty-vector": (_bad({"id": "t", "features": []}), SHAPE + "shape [0] does not match [30]"),
    "nested-vector": (_bad({"id": "t", "features": [FEATURES]}), SHAPE + "shape [1, 30] does not match [30]"),
    "ragged-vector": (_bad({"id": "t", "features": [[0.5]] + [0.5] * 29}), (SHAPE, "")),
    "scalar-input": (_bad({"id": "t", "features": 0.5}), SHAPE + "shape [] does not match [30]"),
    "null-input": (_bad({"id": "t", "features": None}), SHAPE + "null where FP32 numbers belong"),
    "object-input": (_bad({"id": "t", "features": {"a": 1}}), (SHAPE, "")),
    "string-input": (_bad({"id": "t", "features": "0.5,0.5"}), SHAPE + "a string where FP32 numbers belong"),
    "strings-in-vector": (_bad({"id": "t", "features": ["a"] * WIDTH}), SHAPE + "a string where FP32 numbers belong"),
    "numeric-strings-in-vector": (_bad({"id": "t", "features": ["0.5"] * WIDTH}),
                                  SHAPE + "a string where FP32 numbers belong"),
    "one-numeric-string": (_bad({"id": "t", "features": ["0.5"] + [0.5] * 29}),
                           SHAPE + "a string where FP32 numbers belong"),
    "null-in-vector": (_bad({"id": "t", "features": [None] + [0.5] * 29}),
                       SHAPE + "null where FP32 numbers belong"),
    "nan-token": (raw_event("t", vector("NaN")), ("not JSON: ", "")),
    "infinity-token": (raw_event("t", vector("Infinity")), ("not JSON: ", "")),
    "minus-infinity-token": (raw_event("t", vector("-Infinity")), ("not JSON: ", "")),
    "1e400": (raw_event("t", vector("1e400")), ("not JSON: ", "infinity")),
    "-1e400": (raw_event("t", vector("-1e400")), ("not JSON: ", "infinity")),
    "1e39-past-fp32": (raw_event("t", vector("1e39")), SHAPE + "a number out of range for FP32"),
    "over-max-bytes": (_bad({"id": "t", "features": FEATURES, "pad": "x" * MAX_EVENT_BYTES}),
                       ("event of ", f"bytes is over the {MAX_EVENT_BYTES}-byte limit (limits.max_request_bytes)")),
    "100k-open-brackets": (b"[" * 100_000, ("not JSON: ", "depth")),
    "deep-input": (b'{"id": "t", "features": ' + b"[" * 100_000 + b"}", ("not JSON: ", "depth")),
    "nested-500-levels-input": (b'{"id": "t", "features": ' + b"[" * 500 + b"1" + b"]" * 500 + b"}", (SHAPE, "")),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_bad_event_is_rejected_alone_with_its_reason(decoder: RecordDecoder, case: str) -> None:
    raw, expected = HOSTILE[case]
    decoded = decoder.decode([dumps(GOOD[0]), raw, dumps(GOOD[1])])
    assert decoded.index == [0, 2]
    assert decoded.keys["id"] == ["good0", "good1"]
    np.testing.assert_array_equal(decoded.inputs["features"], features(GOOD))
    assert [i for i, _ in decoded.rejects] == [1]
    reason = decoded.rejects[0][1]
    if isinstance(expected, str):
        assert reason == expected
    else:
        prefix, fragment = expected
        assert reason.startswith(prefix), reason
        assert fragment in reason, reason
        assert len(reason) < 400


def test_a_batch_of_every_bad_event_yields_no_rows(decoder: RecordDecoder) -> None:
    raws = [raw for raw, _ in HOSTILE.values()]
    decoded = decoder.decode(raws)
    assert decoded.index == []
    assert decoded.keys["id"] == []
    assert decoded.inputs["features"].shape == (0, WIDTH)
    assert [i for i, _ in decoded.rejects] == list(range(len(raws)))
    assert all(reason for _, reason in decoded.rejects)


def test_a_mixed_batch_keeps_every_good_event_in_order(decoder: RecordDecoder) -> None:
    good = fraud_events(40)
    bad = [raw for raw, _ in HOSTILE.values()]
    batch: list[bytes | None] = []
    good_at: list[int] = []
    for i, event in enumerate(good):  # a bad event after every good one, cycling through the cases
        good_at.append(len(batch))
        batch.append(dumps(event))
        batch.append(bad[i % len(bad)])
    batch.extend(bad[40 % len(bad):])
    decoded = decoder.decode(batch)
    assert decoded.index == good_at
    assert decoded.keys["id"] == [e["id"] for e in good]
    np.testing.assert_array_equal(decoded.inputs["features"], features(good))
    rejected = [i for i, _ in decoded.rejects]
    assert rejected == sorted(set(range(len(batch))) - set(good_at))
    # the same reason for a bad event wherever it sits in a batch
    alone = {raw: decoder.decode([raw]).rejects[0][1] for raw in bad if raw is not None}
    for i, reason in decoded.rejects:
        raw = batch[i]
        if raw is not None:
            assert reason == alone[raw]


def test_rejects_in_a_batch_are_sorted_by_position(decoder: RecordDecoder) -> None:
    # a decode-time reject (not JSON) after a shape reject: the list still comes back in batch order
    batch: list[bytes | None] = [dumps({"id": "a", "features": [1.0]}), b"{", dumps(GOOD[0]), b"[]"]
    decoded = decoder.decode(batch)
    assert decoded.index == [2]
    assert [i for i, _ in decoded.rejects] == [0, 1, 3]
    assert decoded.rejects[0][1] == SHAPE + "shape [1] does not match [30]"


# -- output records and dead letters -----------------------------------------------------------

def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_output_key_is_the_event_key_at_the_model_version() -> None:
    assert output_key("e1", "3") == b"e1@3"
    assert output_key(17, "1") == b"17@1"


def test_record_sink_writes_one_json_record_per_scored_event(tmp_path: Path) -> None:
    path = tmp_path / "out" / "records.jsonl"
    sink = RecordSink(JsonlWriter(path))
    probabilities = np.asarray([[0.9, 0.1], [0.25, 0.75]], dtype=np.float32)
    before_ms = int(time.time() * 1000)
    try:
        sink.write(Scored("fraud", "1", "id", ["a", 7],
                          {"label": np.asarray([0, 1], dtype=np.int64), "probabilities": probabilities},
                          [1_764_000_000_123, 1_764_000_000_456]))
    finally:
        sink.close()
    records = read_jsonl(path)
    assert len(records) == 2
    for rec in records:
        assert list(rec) == ["id", "model_name", "model_version", "label", "probabilities", "event_time_ms",
                             "scored_at_ms"]
        assert isinstance(rec["scored_at_ms"], int)
        assert rec["scored_at_ms"] >= before_ms
    assert [r["id"] for r in records] == ["a", 7]
    assert [r["label"] for r in records] == [0, 1]
    assert [r["probabilities"] for r in records] == probabilities.tolist()
    assert [r["event_time_ms"] for r in records] == [1_764_000_000_123, 1_764_000_000_456]
    assert {(r["model_name"], r["model_version"]) for r in records} == {("fraud", "1")}


DEAD_LETTER_FIELDS = {"error", "stage", "source", "offset", "event_time_ms", "model_name", "model_version",
                      "failed_at_ms", "key"}


def test_dead_letters_carry_error_stage_source_offset_key_and_payload(tmp_path: Path,
                                                                      decoder: RecordDecoder) -> None:
    raws: list[bytes | None] = [
        dumps({"id": "bad", "features": [1, 2]}),
        b'{"id": "\xff"}',
        None,
        dumps(GOOD[0]),
    ]
    events = [
        Event(raws[0], b"bad", 1_764_000_000_123, "transactions/3", 1042),
        Event(raws[1], b"\xffk", 1_764_000_000_124, "transactions/3", 1043),
        Event(raws[2], None, 1_764_000_000_125, "fraud:events", "1764000000125-0"),
        Event(raws[3], b"good0", 1_764_000_000_126, "transactions/3", 1044),
    ]
    decoded = decoder.decode([e.value for e in events])
    assert decoded.index == [3]
    letters = [DeadLetter(events[i], "decode", reason) for i, reason in decoded.rejects]
    letters.append(DeadLetter(events[3], "score", "RuntimeError: the model failed"))
    # Following a rollout, a score failure names the version that failed (here the canary, 2).
    letters.append(DeadLetter(events[3], "score", "RuntimeError: the canary failed", "2"))
    path = tmp_path / "dlq" / "dead-letters.jsonl"
    dlq = DeadLetters(JsonlWriter(path), "fraud", "1")
    before_ms = int(time.time() * 1000)
    try:
        dlq.write(letters)
    finally:
        dlq.close()
    recs = read_jsonl(path)
    assert len(recs) == 5
    canary = recs.pop()
    assert (canary["stage"], canary["model_version"]) == ("score", "2")
    assert canary["error"] == "RuntimeError: the canary failed"
    for rec in recs:
        assert rec["model_name"] == "fraud"
        assert rec["model_version"] == "1"
        assert isinstance(rec["failed_at_ms"], int)
        assert rec["failed_at_ms"] >= before_ms

    first, second, third, fourth = recs
    assert set(first) == DEAD_LETTER_FIELDS | {"payload"}
    assert first["error"] == SHAPE + "shape [2] does not match [30]"
    assert (first["stage"], first["source"], first["offset"]) == ("decode", "transactions/3", 1042)
    assert (first["key"], first["event_time_ms"]) == ("bad", 1_764_000_000_123)
    assert first["payload"] == '{"id":"bad","features":[1,2]}'

    assert set(second) == DEAD_LETTER_FIELDS | {"payload_base64"}
    assert second["error"].startswith("not JSON: ")
    assert base64.b64decode(second["payload_base64"]) == b'{"id": "\xff"}'
    assert second["key"] == "\ufffdk"  # a non-UTF-8 key is kept readable, never dropped
    assert second["offset"] == 1043

    assert set(third) == DEAD_LETTER_FIELDS | {"payload"}
    assert third["error"] == "empty event (no value)"
    assert (third["source"], third["offset"], third["key"], third["payload"]) == (
        "fraud:events", "1764000000125-0", None, None)

    assert fourth["stage"] == "score"
    assert fourth["error"] == "RuntimeError: the model failed"
    assert orjson.loads(fourth["payload"]) == GOOD[0]


def test_jsonl_dead_letters_append_across_writers(tmp_path: Path) -> None:
    path = tmp_path / "dead-letters.jsonl"
    for n in range(2):
        dlq = DeadLetters(JsonlWriter(path), "fraud", "1")
        try:
            dlq.write([DeadLetter(Event(b"x", None, 0, "s", f"{n}-0"), "decode", f"error {n}")])
        finally:
            dlq.close()
    assert [(r["offset"], r["error"]) for r in read_jsonl(path)] == [("0-0", "error 0"), ("1-0", "error 1")]
