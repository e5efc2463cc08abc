"""The text stage of a model version: strings in, token tensors to the model, pooled vectors out.

    stage = TextStage.load(config, version_dir)        # reads tokenizer.json
    admitted = stage.admit({"text": texts})             # one request: checked, tokenized, padded
    admitted.key, admitted.tokens                       # its bucket (the batcher key) and tensors
    outputs = stage.run(batch, model)                   # strings (a whole batch) or admitted tokens

Length-aware batching: each text is padded to the smallest bucket that holds it, and a request's
batcher key is its bucket, so only requests of one bucket share a forward pass and a long text never
pads a batch of short ones. A request's elements are its padded tokens (rows × bucket), so the
batcher's element budget is a budget of padded tokens. Whole batches (batch and stream lanes,
warm-up) are grouped by bucket here, in chunks within the same budget, and put back in order: every
text is padded to the same length in every lane, so every lane gives it the same vector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from inferlane.core.errors import ConfigError, InvalidInput, ModelError, PayloadTooLarge
from inferlane.core.spec import ModelConfig, TensorSpec
from inferlane.core.text.config import PoolingSpec, TokenizerSpec, text_input
from inferlane.core.text.pooling import l2_normalize, pool

Model = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@runtime_checkable
class BucketObserver(Protocol):
    """Told the bucket (padded length) and rows of every forward pass (metrics)."""

    def on_bucket(self, length: int, rows: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Admitted:
    """One request after the text stage: what the batcher queues."""

    tokens: dict[str, np.ndarray]
    """Token tensors padded to the bucket, plus the request's other inputs unchanged."""
    rows: int
    key: int
    """The bucket (padded length): the batcher key."""

    @property
    def elements(self) -> int:
        return self.rows * self.key


@dataclass(frozen=True, slots=True)
class _Encoded:
    ids: list[list[int]]
    type_ids: list[list[int]]
    lengths: np.ndarray


class TextStage:
    def __init__(self, spec: TokenizerSpec, pooling: PoolingSpec | None, input_name: str, tokenizer: Any,
                 budget: int, max_rows: int) -> None:
        self.spec = spec
        self.pooling = pooling
        self.input = input_name
        self._tok = tokenizer
        self._encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self.buckets = np.asarray(spec.bucket_lengths, dtype=np.int64)
        self.budget = budget
        self.max_rows = max_rows
        self._dtype = np.int64 if spec.dtype == "INT64" else np.int32
        padding = tokenizer.padding
        self._pad_id = int(padding["pad_id"]) if padding else 0
        self.observer: BucketObserver | None = None

    @classmethod
    def load(cls, config: ModelConfig, version_dir: Path) -> TextStage:
        """Read the tokenizer file; ConfigError names it when it is missing, unreadable or needs the extra."""
        spec = config.tokenizer
        assert spec is not None, "TextStage.load needs a tokenizer: section"
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError("a tokenizer: section needs the tokenizers package: "
                              "pip install 'inferlane[text]'") from None
        path = version_dir / spec.file
        if not path.is_file():
            raise ConfigError(f"{path}: tokenizer file not found (tokenizer.file in model.yaml)")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception for a malformed file
            raise ConfigError(f"{path}: not a Hugging Face tokenizers JSON file: {e}") from e
        # Length is ours to decide: no silent truncation (413 instead), padding to the bucket below.
        tok.no_truncation()
        tok.no_padding()
        return cls(spec, config.pooling, text_input(config.inputs, spec), tok, config.batch_elements_budget,
                   config.batching.max_batch_size)

    # -- one request ------------------------------------------------------------------------------

    def texts(self, arr: np.ndarray) -> list[str]:
        """The texts of a BYTES input: UTF-8 checked (400 naming the row), sizes checked before any
        tokenizing (413)."""
        out: list[str] = []
        for i, x in enumerate(arr.tolist()):
            try:
                out.append(self._text(x))
            except (InvalidInput, PayloadTooLarge) as e:
                raise type(e)(f"input {self.input!r} row {i}: {e.message}") from None
        return out

    def _text(self, x: object) -> str:
        """One text; InvalidInput or PayloadTooLarge says what is wrong with it (without the row)."""
        limit = self.spec.byte_limit
        if isinstance(x, bytes):
            if len(x) > limit:
                raise PayloadTooLarge(f"{len(x)} bytes; the limit is {limit} (tokenizer.max_input_bytes)")
            try:
                return x.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidInput(f"not valid UTF-8 (byte {e.start})") from None
        if isinstance(x, str):
            if len(x) > limit:
                raise PayloadTooLarge(f"{len(x)} characters; the limit is {limit} bytes (tokenizer.max_input_bytes)")
            return x
        raise InvalidInput(f"a text must be a string, not {type(x).__name__}")

    def _tokenize(self, texts: list[str]) -> _Encoded:
        encs = self._encode(texts, add_special_tokens=True)
        ids = [e.ids for e in encs]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        too_long = np.flatnonzero(lengths > self.spec.max_input_length)
        if too_long.size:
            i = int(too_long[0])
            raise PayloadTooLarge(f"input {self.input!r} row {i}: {self._too_long(int(lengths[i]))}")
        return _Encoded(ids, [e.type_ids for e in encs], lengths)

    def _too_long(self, tokens: int) -> str:
        return f"{tokens} tokens; model takes at most {self.spec.max_input_length} (tokenizer.max_input_length)"

    def screen(self, batch: Mapping[str, np.ndarray]) -> list[tuple[int, str]]:
        """(row, reason) for every text of a whole batch that :meth:`run` would refuse: too many
        bytes, not UTF-8, not a string, or over max_input_length. A whole-batch lane rejects those
        rows alone and scores the others."""
        if self.input not in batch:
            return []
        refused: list[tuple[int, str]] = []
        rows: list[int] = []
        texts: list[str] = []
        for i, x in enumerate(batch[self.input].tolist()):
            try:
                texts.append(self._text(x))
                rows.append(i)
            except (InvalidInput, PayloadTooLarge) as e:
                refused.append((i, f"input {self.input!r}: {e.message}"))
        if texts:
            encs = self._encode(texts, add_special_tokens=True)
            refused += [(i, f"input {self.input!r}: {self._too_long(len(e.ids))}")
                        for i, e in zip(rows, encs, strict=True) if len(e.ids) > self.spec.max_input_length]
        return sorted(refused)

    def bucket_of(self, lengths: np.ndarray) -> np.ndarray:
        """The padded length of each text: the smallest bucket that holds it."""
        return np.asarray(self.buckets[np.searchsorted(self.buckets, lengths)], dtype=np.int64)

    def _pad(self, enc: _Encoded, rows: np.ndarray, length: int) -> dict[str, np.ndarray]:
        n = len(rows)
        ids = np.full((n, length), self._pad_id, dtype=self._dtype)
        types = np.zeros((n, length), dtype=self._dtype)
        for j, r in enumerate(rows.tolist()):
            k = int(enc.lengths[r])
            ids[j, :k] = enc.ids[r]
            types[j, :k] = enc.type_ids[r]
        out = {self.spec.ids: ids}
        if self.spec.mask is not None:
            out[self.spec.mask] = (np.arange(length) < enc.lengths[rows][:, None]).astype(self._dtype)
        if self.spec.type_ids is not None:
            out[self.spec.type_ids] = types
        return out

    def admit(self, inputs: Mapping[str, np.ndarray]) -> Admitted:
        """One request (signature already checked): its texts tokenized and padded to one bucket, the
        longest text's; 413 when over max_input_length or over the batch budget."""
        arr = inputs[self.input]
        enc = self._tokenize(self.texts(arr))
        rows = len(enc.lengths)
        length = int(self.bucket_of(enc.lengths).max()) if rows else int(self.buckets[0])
        if rows * length > self.budget:
            raise PayloadTooLarge(f"request has {rows} texts padded to {length} tokens ({rows * length}); the "
                                  f"batch budget is {self.budget} tokens (tokenizer.max_batch_tokens)")
        tokens = self._pad(enc, np.arange(rows), length)
        tokens.update((k, v) for k, v in inputs.items() if k != self.input)
        return Admitted(tokens, rows, length)

    # -- forward ----------------------------------------------------------------------------------

    def run(self, batch: Mapping[str, np.ndarray], model: Model) -> dict[str, np.ndarray]:
        """Run ``model`` on a batch: admitted tokens as they are (one bucket), or texts grouped by
        bucket in chunks within the budget and put back in row order."""
        if self.input not in batch:
            return self._forward(dict(batch), model)
        enc = self._tokenize(self.texts(batch[self.input]))
        rows = len(enc.lengths)
        buckets = self.bucket_of(enc.lengths)
        others = {k: v for k, v in batch.items() if k != self.input}
        order: list[np.ndarray] = []
        parts: list[dict[str, np.ndarray]] = []
        for length in np.unique(buckets).tolist():
            members = np.flatnonzero(buckets == length)
            step = max(1, min(self.max_rows, self.budget // length))
            for lo in range(0, len(members), step):
                chunk = members[lo:lo + step]
                tokens = self._pad(enc, chunk, length)
                tokens.update((k, v[chunk]) for k, v in others.items())
                parts.append(self._forward(tokens, model))
                order.append(chunk)
        if len(parts) == 1 and rows == len(order[0]):
            return parts[0]
        where = np.concatenate(order)
        back = np.empty(rows, dtype=np.int64)
        back[where] = np.arange(rows)
        try:
            return {k: np.concatenate([p[k] for p in parts])[back] for k in parts[0]}
        except ValueError as e:
            raise ModelError(f"outputs of different buckets cannot be joined ({e}): a text model's outputs "
                             "must have one row per text and no token dimension (use pooling:)") from e

    def _forward(self, tokens: dict[str, np.ndarray], model: Model) -> dict[str, np.ndarray]:
        ids = tokens[self.spec.ids]
        rows, length = ids.shape
        out = model(tokens)
        if self.observer is not None:
            self.observer.on_bucket(length, rows)
        p = self.pooling
        if p is None:
            return out
        if p.source not in out:
            raise ModelError(f"pooling.source {p.source!r}: the model returned {sorted(out)}")
        mask = tokens[self.spec.mask] if self.spec.mask is not None else (ids != self._pad_id)
        vec = pool(np.asarray(out.pop(p.source)), mask, p.mode)
        out[p.output] = l2_normalize(vec) if p.normalize else vec
        return out


def runtime_config(config: ModelConfig) -> ModelConfig:
    """The config as the runtime sees it: the token tensors (``[-1, -1]``) instead of the text input,
    and ``pooling.source`` (``[-1, -1, -1]`` FP32) instead of the pooled output, so the runtime's own
    signature check compares the artifact with what it really gets and returns."""
    spec = config.tokenizer
    if spec is None:
        return config
    name = text_input(config.inputs, spec)
    inputs = [TensorSpec(name=n, datatype=spec.dtype, shape=(-1, -1)) for n in spec.model_inputs]
    inputs += [s for s in config.inputs if s.name != name]
    outputs = list(config.outputs)
    if config.pooling is not None:
        outputs = [s for s in outputs if s.name != config.pooling.output]
        outputs.append(TensorSpec(name=config.pooling.source, datatype="FP32", shape=(-1, -1, -1)))
    return config.model_copy(update={"inputs": tuple(inputs), "outputs": tuple(outputs)})
