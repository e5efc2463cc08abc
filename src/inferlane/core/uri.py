"""Read and write whole objects by URI: ``s3://bucket/key`` (pyarrow) or a local path.

Local paths are confined to a root folder the operator chose, so a request can never make the
server read or write an arbitrary file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from inferlane.core.errors import InvalidInput, PayloadTooLarge


def _local(uri: str, root: Path | None, what: str) -> Path:
    if root is None:
        raise InvalidInput(f"{what} {uri[:200]!r}: local paths are disabled on this server (use s3://, or "
                           "set the server's jobs_local_root)")
    path = Path(urlparse(uri).path if uri.startswith("file:") else uri)
    full = (root / path).resolve() if not path.is_absolute() else path.resolve()
    if not full.is_relative_to(root.resolve()):
        raise InvalidInput(f"{what} {uri[:200]!r} is outside the allowed folder {root}")
    return full


def _s3(uri: str, endpoint_url: str | None) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    p = urlparse(uri)
    kwargs: dict[str, object] = {}
    if endpoint_url:
        ep = urlparse(endpoint_url)
        kwargs.update(endpoint_override=ep.netloc, scheme=ep.scheme or "https")
    return pafs.S3FileSystem(**kwargs), p.netloc + p.path


def read_uri(uri: str, *, root: Path | None, max_bytes: int, endpoint_url: str | None = None) -> bytes:
    if uri.startswith("s3://"):
        fs, path = _s3(uri, endpoint_url)
        with fs.open_input_stream(path) as s:
            data = bytes(s.read(max_bytes + 1))
    else:
        with open(_local(uri, root, "input_uri"), "rb") as fh:
            data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"input_uri {uri[:200]!r} is larger than {max_bytes} bytes")
    return data


def write_uri(prefix: str, name: str, data: bytes, *, root: Path | None, endpoint_url: str | None = None) -> str:
    """Write ``data`` as ``<prefix>/<name>`` (atomically for local files); returns its URI."""
    if prefix.startswith("s3://"):
        uri = prefix.rstrip("/") + "/" + name
        fs, path = _s3(uri, endpoint_url)
        with fs.open_output_stream(path) as s:
            s.write(data)
        return uri
    folder = _local(prefix, root, "output_uri")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    tmp = folder / f".tmp-{name}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return str(target)
