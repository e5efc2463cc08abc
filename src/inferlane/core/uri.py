"""Read and write whole objects by URI: ``s3://bucket/key`` (pyarrow) or a local path.

Local paths are confined to a root folder the operator chose, so a request can never make the
server read or write an arbitrary file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from inferlane.core.errors import ConfigError, InvalidInput, PayloadTooLarge


def _local(uri: str, root: Path | None, what: str) -> Path:
    if root is None:
        raise InvalidInput(f"{what} {uri[:200]!r}: local paths are disabled on this server (use s3://, or "
                           "set INFERLANE_JOBS_LOCAL_ROOT on the server)")
    path = Path(urlparse(uri).path if uri.startswith("file:") else uri)
    full = (root / path).resolve() if not path.is_absolute() else path.resolve()
    if not full.is_relative_to(root.resolve()):
        raise InvalidInput(f"{what} {uri[:200]!r} is outside the allowed folder {root}")
    return full


def filesystem_for(uri: str, endpoint_url: str | None = None) -> tuple[Any, str]:
    """(filesystem, path) for a local path or an ``s3://bucket/key`` URI.

    For ``s3://``, pyarrow's S3FileSystem (the AWS SDK) resolves all but the endpoint the standard
    AWS way: credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``),
    a ``~/.aws`` profile (``AWS_PROFILE``) or the instance role; the region from ``AWS_REGION``/
    ``AWS_DEFAULT_REGION`` or the profile (set one for S3-compatible servers too, or the SDK may
    probe EC2 metadata first). ``endpoint_url`` replaces AWS with an S3-compatible server, e.g.
    ``http://127.0.0.1:9000`` (MinIO, moto): its scheme picks HTTP or HTTPS, a bare ``host:port``
    means HTTPS, and buckets are then addressed path-style. Reading needs no bucket creation. Ray
    actors resolve the same variables in their own processes, which inherit the environment of
    the process that started Ray.
    """
    import pyarrow.fs as pafs  # the batch extra: only needed once a URI is used

    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        kwargs: dict[str, Any] = {}
        if endpoint_url:
            ep = urlparse(endpoint_url if "://" in endpoint_url else f"https://{endpoint_url}")
            if ep.scheme not in ("http", "https") or not ep.netloc:
                raise ConfigError(f"--endpoint-url {endpoint_url}: write http(s)://host:port")
            kwargs["endpoint_override"] = ep.netloc
            kwargs["scheme"] = ep.scheme
        return pafs.S3FileSystem(**kwargs), parsed.netloc + parsed.path
    if parsed.scheme not in ("", "file"):
        raise ConfigError(f"{uri}: unsupported scheme {parsed.scheme!r} (use a local path or s3://)")
    return pafs.LocalFileSystem(), pafs.LocalFileSystem().normalize_path(
        parsed.path if parsed.scheme == "file" else uri)


def read_uri(uri: str, *, root: Path | None, max_bytes: int, endpoint_url: str | None = None) -> bytes:
    if uri.startswith("s3://"):
        fs, path = filesystem_for(uri, endpoint_url)
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
        fs, path = filesystem_for(uri, endpoint_url)
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
