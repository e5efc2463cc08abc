"""One exception tree for every lane and transport.

Each error carries the HTTP status and gRPC status code it maps to, so transports never
decide error semantics themselves (docs/architecture.md, "Errors")::

    InferlaneError                                     transient: a retry may succeed (core/retry.py)
    ├── InvalidInput          400  INVALID_ARGUMENT
    ├── PayloadTooLarge       413  RESOURCE_EXHAUSTED
    ├── OutOfMemory           507  RESOURCE_EXHAUSTED  (a forward pass ran out of device memory)
    ├── ModelNotFound         404  NOT_FOUND
    ├── NotFound              404  NOT_FOUND       (a job id)
    ├── Conflict              409  FAILED_PRECONDITION
    ├── Unavailable           503  UNAVAILABLE         transient
    │   ├── QueueFull         503  UNAVAILABLE  (+ Retry-After)
    │   └── ModelNotReady     503  UNAVAILABLE
    ├── DeadlineExceeded      504  DEADLINE_EXCEEDED   transient
    ├── RequestTimeout        408  DEADLINE_EXCEEDED (the client stalled sending its body)
    ├── Unauthenticated       401  UNAUTHENTICATED
    ├── PermissionDenied      403  PERMISSION_DENIED
    ├── RetriesExhausted      503  UNAVAILABLE         (a transient error outlasted the retry policy)
    ├── ConfigError           (a model repository or model.yaml is wrong; never reaches a client)
    └── ModelError            500  INTERNAL
        └── BatchSizeMismatch 500  INTERNAL
"""

from __future__ import annotations


class InferlaneError(Exception):
    """Base of every error inferlane raises on purpose."""

    http_status: int = 500
    grpc_code: str = "INTERNAL"
    transient: bool = False
    """True when the same call may succeed later; the one retry rule (core/retry.py) reads it."""
    details: dict[str, object] | None = None
    """Machine-readable fields answered beside ``error`` (a hybrid miss's ``reason``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(InferlaneError):
    """Malformed body, or a tensor with the wrong name, datatype or shape."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class PayloadTooLarge(InferlaneError):
    """A body or a tensor larger than the model's limits."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class OutOfMemory(InferlaneError):
    """A forward pass ran out of memory (``torch.cuda.OutOfMemoryError``, ``MemoryError``): that batch
    fails, the model stays loaded and the server keeps serving."""

    http_status = 507
    grpc_code = "RESOURCE_EXHAUSTED"


class ModelNotFound(InferlaneError):
    """No model, or no version, of that name."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class NotFound(InferlaneError):
    """No such job (or other resource)."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class Conflict(InferlaneError):
    """The resource is not in a state that allows the request (e.g. cancelling a running job)."""

    http_status = 409
    grpc_code = "FAILED_PRECONDITION"


class Unavailable(InferlaneError):
    """The request could be served later, but not now."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    transient = True


class QueueFull(Unavailable):
    """The model's queue is at its bound; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class ModelNotReady(Unavailable):
    """The model is loading, warming up or unloading."""


class DeadlineExceeded(InferlaneError):
    """The request's deadline passed before or while it was processed."""

    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"
    transient = True


class RequestTimeout(InferlaneError):
    """The client did not finish sending its request in time."""

    http_status = 408
    grpc_code = "DEADLINE_EXCEEDED"


class Unauthenticated(InferlaneError):
    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class PermissionDenied(InferlaneError):
    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class RetriesExhausted(InferlaneError):
    """A transient error kept coming back until the retry policy gave up; ``__cause__`` is the
    last one. Not transient itself: the policy already spent its budget."""

    http_status = 503
    grpc_code = "UNAVAILABLE"

    def __init__(self, what: str, attempts: int, last: BaseException) -> None:
        super().__init__(f"{what} failed {attempts} time{'s' if attempts != 1 else ''}; "
                         f"last error: {type(last).__name__}: {last}")
        self.attempts = attempts
        self.last = last


class ConfigError(InferlaneError):
    """A model repository, a model.yaml or an artifact is wrong; the message names the field."""


class ModelError(InferlaneError):
    """The model raised, or returned something that does not match its signature."""


class BatchSizeMismatch(ModelError):
    """A batch returned a different number of rows than it was given; fails every request in it."""

    def __init__(self, output: str, expected: int, got: int) -> None:
        super().__init__(
            f"model output {output!r} has {got} rows for a batch of {expected} rows; "
            "a model must return exactly one output row per input row"
        )
        self.expected = expected
        self.got = got
