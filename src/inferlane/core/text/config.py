"""The ``tokenizer:`` and ``pooling:`` sections of model.yaml (text models).

    inputs:
      - {name: text, datatype: BYTES, shape: [-1]}        # what a request carries: one string per row
    outputs:
      - {name: embedding, datatype: FP32, shape: [-1, 384]}
    tokenizer: {file: tokenizer.json, max_input_length: 256}
    pooling: {source: last_hidden_state, output: embedding, mode: mean, normalize: true}

The declared inputs and outputs stay the request's view; the tensors the model itself takes (token
ids, attention mask, token type ids) and returns (``pooling.source``) are named here. This module
does not import core/spec.py (spec.py imports it), so it repeats the strict base settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class TokenizerSpec(_Strict):
    file: str = Field(default="tokenizer.json", min_length=1, pattern=r"^[^/\\]+$")
    """Hugging Face ``tokenizers`` JSON file in each version folder."""
    input: str | None = None
    """The request input holding the texts (a BYTES input of shape ``[-1]``, one UTF-8 string per
    row). Default: the only BYTES input."""
    ids: str = Field(default="input_ids", min_length=1)
    """Model input that receives the token ids."""
    mask: str | None = "attention_mask"
    """Model input that receives the attention mask (1 for a token, 0 for padding); null if none."""
    type_ids: str | None = "token_type_ids"
    """Model input that receives the token type ids; null when the model does not take them."""
    dtype: Literal["INT64", "INT32"] = "INT64"
    """Datatype of the token tensors the model takes."""
    max_input_length: int = Field(default=256, ge=2, le=1_000_000)
    """Most tokens in one text, special tokens included; a longer text gets 413 (never truncated,
    so that every lane gives the same answer)."""
    max_input_bytes: int | None = Field(default=None, ge=1)
    """Longest text in UTF-8 bytes, refused (413) before tokenizing so a huge string costs no
    tokenizer time. Default: 64 bytes per token of ``max_input_length``."""
    buckets: tuple[int, ...] = ()
    """Padded lengths: each text is padded to the smallest bucket that holds it, and only texts of
    the same bucket share a batch, so one long text does not pad a whole batch. Default: every
    multiple of 8 up to 128, then steps of 1/8 of the power of two below (144, 160, ... 256, 288,
    ...): padding is under 1/8 of a text, which is what a whole batch's throughput wants, while
    short requests still share few buckets. ``max_input_length`` is always the last bucket. ``[N]`` with N =
    ``max_input_length`` turns length-aware batching off (every text padded to N)."""
    max_batch_tokens: int | None = Field(default=None, ge=1)
    """Memory budget of one batch in padded tokens (rows × bucket length): the batcher never forms a
    larger batch, a request over it gets 413. Each token costs 8 bytes per token tensor (INT64).
    Default: 16384, or ``max_input_length`` when larger. ``batching.max_batch_elements``, when set,
    overrides it."""

    @model_validator(mode="after")
    def _check(self) -> TokenizerSpec:
        b = self.buckets
        if any(x < 1 for x in b) or list(b) != sorted(set(b)):
            raise ValueError(f"buckets {list(b)} must be increasing positive lengths")
        if b and b[-1] > self.max_input_length:
            raise ValueError(f"buckets: {b[-1]} is over max_input_length {self.max_input_length}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < self.max_input_length:
            raise ValueError(f"max_batch_tokens {self.max_batch_tokens} cannot hold one text of "
                             f"max_input_length {self.max_input_length}")
        names = [n for n in (self.ids, self.mask, self.type_ids) if n is not None]
        if len(set(names)) != len(names):
            raise ValueError(f"ids, mask and type_ids must name different model inputs, got {names}")
        return self

    @property
    def bucket_lengths(self) -> tuple[int, ...]:
        """Every padded length, ascending; the last is ``max_input_length``."""
        if self.buckets:
            base = list(self.buckets)
        else:  # each step an eighth of the power of two below (8 up to 128): under 1/8 of a text is padding
            base, n = [], 8
            while n < self.max_input_length:
                base.append(n)
                n += max(8, 1 << (n.bit_length() - 4))
        return tuple(sorted({*base, self.max_input_length}))

    @property
    def batch_tokens(self) -> int:
        return self.max_batch_tokens or max(16_384, self.max_input_length)

    @property
    def byte_limit(self) -> int:
        return self.max_input_bytes or 64 * self.max_input_length

    @property
    def model_inputs(self) -> tuple[str, ...]:
        """The token tensors the model takes, in order: ids, then mask and type ids when named."""
        return tuple(n for n in (self.ids, self.mask, self.type_ids) if n is not None)


class PoolingSpec(_Strict):
    source: str = Field(default="last_hidden_state", min_length=1)
    """Model output holding one vector per token (``[-1, -1, D]``)."""
    output: str = Field(default="embedding", min_length=1)
    """Declared output that receives the pooled vector (``[-1, D]``, FP32)."""
    mode: Literal["mean", "cls"] = "mean"
    """mean: average of the token vectors under the attention mask (padding left out); cls: the
    first token's vector."""
    normalize: bool = False
    """Scale each pooled vector to unit L2 norm (cosine similarity becomes a dot product)."""


class _Tensor(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


def check_text_config(inputs: Sequence[_Tensor], outputs: Sequence[_Tensor], tokenizer: TokenizerSpec | None,
                      pooling: PoolingSpec | None) -> None:
    """Cross-field rules of the two sections (ValueError, reported by ModelConfig's validator)."""
    if pooling is not None:
        if tokenizer is None:
            raise ValueError("pooling: needs a tokenizer: section (the attention mask comes from it)")
        out = next((o for o in outputs if o.name == pooling.output), None)
        if out is None:
            raise ValueError(f"pooling.output {pooling.output!r} is not one of the outputs "
                             f"{[o.name for o in outputs]}")
        if out.datatype != "FP32" or len(out.shape) != 2:
            raise ValueError(f"pooling.output {out.name!r} must be FP32 of shape [-1, D]")
    if tokenizer is None:
        return
    text = [i for i in inputs if i.datatype == "BYTES"]
    name = tokenizer.input or (text[0].name if len(text) == 1 else None)
    if name is None:
        raise ValueError(f"tokenizer.input: name the text input (BYTES inputs: {[i.name for i in text]})")
    spec = next((i for i in inputs if i.name == name), None)
    if spec is None or spec.datatype != "BYTES" or tuple(spec.shape) != (-1,):
        raise ValueError(f"tokenizer.input {name!r} must be a BYTES input of shape [-1] (one text per row)")
    clash = sorted(set(tokenizer.model_inputs) & {i.name for i in inputs})
    if clash:
        raise ValueError(f"tokenizer: the model inputs {clash} have the names of request inputs")


def text_input(inputs: Sequence[_Tensor], tokenizer: TokenizerSpec) -> str:
    """The request input that holds the texts (validated by :func:`check_text_config`)."""
    return tokenizer.input or next(i.name for i in inputs if i.datatype == "BYTES")
