"""``inference.GRPCInferenceService``: the Open Inference Protocol V2 over gRPC, on the online lane.

    service = InferenceService(lane, ready=lambda: registry.ready, orders=controller.orders, token=token)
    server.add_generic_rpc_handlers([service.handler()])

Every method parses its message, calls what the HTTP routes call (``registry.get`` then
``OnlineLane.infer_on``, the same batcher, limits and versions; transport/extensions.py for the
statistics and repository extensions) and encodes the answer. Failures are InferlaneErrors, mapped
by their ``grpc_code`` (core/errors.py); a model's own failure and any unexpected one answer
INTERNAL with a request id, the details going to the log only (``hidden_error``, as over HTTP).

Metadata read: ``inferlane-routing-key`` and ``inferlane-timeout-ms`` (as the HTTP headers of the
same names), ``authorization: Bearer TOKEN`` for the repository extension. The request's time
limit is the smallest of its gRPC deadline, ``inferlane-timeout-ms`` and the ``timeout``
parameter (microseconds, as tritonclient sends it); past it the answer is DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from inferlane import __version__
from inferlane.core import codec
from inferlane.core.errors import (
    DeadlineExceeded,
    InferlaneError,
    InvalidInput,
    ModelError,
    PayloadTooLarge,
    QueueFull,
)
from inferlane.lanes.online import OnlineLane
from inferlane.lanes.online.hybrid import KeyedLane, route_request
from inferlane.rollout.versions import VersionOrders
from inferlane.transport.extensions import (
    load_model,
    repository_index,
    repository_version,
    statistics,
    unload_model,
)
from inferlane.transport.grpc.proto import grpc_service_pb2 as pb
from inferlane.transport.grpc.tensors import decode_request, encode_response, parameters
from inferlane.transport.http.admin import TOKEN_ENV, AdminToken
from inferlane.transport.http.app import EXTENSIONS
from inferlane.transport.http.app import _metadata as model_metadata
from inferlane.transport.http.infer import ROUTING_KEY_HEADER, TIMEOUT_HEADER, VERSION_HEADER, hidden_error, timeout_s

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
AUTHORIZATION = "authorization"
RETRY_AFTER = "retry-after"
"""Trailing metadata of a QueueFull answer: seconds to wait, as HTTP's Retry-After header."""

Context = grpc.aio.ServicerContext[Any, Any]
Method = Callable[[Any, Context], Awaitable[Any]]


class _Sized:
    """A ModelInferRequest and the size of its encoding (the model's ``max_request_bytes`` applies to it);
    ``message`` is None when the bytes are not a valid message."""

    __slots__ = ("message", "size")

    def __init__(self, data: bytes) -> None:
        self.size = len(data)
        try:
            self.message: pb.ModelInferRequest | None = pb.ModelInferRequest.FromString(data)
        except DecodeError:
            self.message = None


def status_of(e: InferlaneError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """The gRPC status, details and trailing metadata answering ``e`` (the one table: core/errors.py)."""
    message = hidden_error("the model failed on this request", e.message) if isinstance(e, ModelError) else e.message
    trailing = ((RETRY_AFTER, str(e.retry_after)),) if isinstance(e, QueueFull) else ()
    return grpc.StatusCode[e.grpc_code], message, trailing


async def abort(context: Context, e: InferlaneError, version: str | None = None) -> None:
    """End the call with the status answering ``e``; ``version``: the model version it went to."""
    code, details, trailing = status_of(e)
    if version is not None:
        trailing += ((VERSION_HEADER, version),)
    await context.abort(code, details, trailing)


def _guarded(method: Method, name: str) -> Method:
    """``method`` answering every failure with its status (never a traceback to the client)."""

    async def call(request: Any, context: Context) -> Any:
        try:
            return await method(request, context)
        except grpc.aio.AbortError:  # already answered
            raise
        except InferlaneError as e:
            await abort(context, e)
        except Exception as e:
            log.exception("unexpected error in %s/%s", SERVICE, name)
            await context.abort(grpc.StatusCode.INTERNAL, hidden_error("internal error", repr(e)))

    return call


def _metadata_value(context: Context, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item[0] == key:
            value = item[1]
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


class InferenceService:
    """The servicer: one coroutine per RPC, registered by :meth:`handler` (methods left out of the
    vendored proto answer UNIMPLEMENTED).

    ``ready``: whether the server is ready (as ``/v2/health/ready``). ``orders`` and ``token``: the
    model repository extension, which answers UNIMPLEMENTED while ``token`` is None (no admin token
    set), as its HTTP routes answer 404 then.
    """

    def __init__(self, lane: OnlineLane, ready: Callable[[], bool], *, orders: VersionOrders,
                 token: AdminToken | None = None, keyed: KeyedLane | None = None) -> None:
        self.lane = lane
        self.keyed = keyed
        """Requests with ``parameters.key`` to models with ``hybrid:`` or ``features:`` (as over HTTP)."""
        self.registry = lane.registry
        self.ready = ready
        self.orders = orders
        self.token = token

    def handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        table: dict[str, tuple[Method, Callable[[bytes], Any], Callable[[Any], bytes]]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest.FromString, pb.ServerLiveResponse.SerializeToString),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest.FromString,
                            pb.ServerReadyResponse.SerializeToString),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest.FromString, pb.ModelReadyResponse.SerializeToString),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest.FromString,
                               pb.ServerMetadataResponse.SerializeToString),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest.FromString,
                              pb.ModelMetadataResponse.SerializeToString),
            "ModelInfer": (self.model_infer, _Sized, pb.ModelInferResponse.SerializeToString),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest.FromString,
                                pb.ModelStatisticsResponse.SerializeToString),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest.FromString,
                                pb.RepositoryIndexResponse.SerializeToString),
            "RepositoryModelLoad": (self.repository_model_load, pb.RepositoryModelLoadRequest.FromString,
                                    pb.RepositoryModelLoadResponse.SerializeToString),
            "RepositoryModelUnload": (self.repository_model_unload, pb.RepositoryModelUnloadRequest.FromString,
                                      pb.RepositoryModelUnloadResponse.SerializeToString),
        }
        handlers = {name: unary(_guarded(method, name), request_deserializer=load, response_serializer=dump)
                    for name, (method, load, dump) in table.items()}
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    # -- health and metadata ----------------------------------------------------------------------

    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready())

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        entry, _ = self.registry.resolve(request.name, request.version or None)  # NOT_FOUND, as HTTP's 404
        return pb.ModelReadyResponse(ready=self.registry.is_ready(entry.name, request.version or None))

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="inferlane", version=__version__, extensions=EXTENSIONS)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        entry, _ = self.registry.resolve(request.name, request.version or None)
        doc = model_metadata(entry.name, [request.version] if request.version else list(entry.versions), entry.config)
        answer = pb.ModelMetadataResponse()
        json_format.ParseDict(doc, answer)
        return answer

    # -- inference --------------------------------------------------------------------------------

    async def model_infer(self, request: _Sized, context: Context) -> pb.ModelInferResponse:
        message = request.message
        if message is None:
            raise InvalidInput("the request is not a valid inference.ModelInferRequest message")
        version = message.model_version or None
        key = codec.routing_key(_metadata_value(context, ROUTING_KEY_HEADER) or None, ROUTING_KEY_HEADER)
        registry = self.registry
        mv = registry.get(message.model_name, version, key)
        try:
            limits = mv.config.limits
            if request.size > limits.max_request_bytes:
                raise PayloadTooLarge(f"message of {request.size} bytes exceeds the model's limit of "
                                      f"{limits.max_request_bytes} bytes")
            req = decode_request(message, limits.max_elements_per_input)
            routing = route_request(self.lane, self.keyed is not None, mv, req.inputs, req.parameters,
                                    pinned=version is not None, key=key)
            mv = routing.model
            codec.check_requested_outputs(req, mv.config)
            timeout = _time_limit(context, req.parameters)
            if routing.keys is not None:
                assert self.keyed is not None
                keyed = await self.keyed.infer(mv, req.inputs or None, routing.keys, timeout,
                                               routed=version is None, key=routing.key)
                return encode_response(keyed.model.name, keyed.model.version, keyed.outputs, req, keyed.parameters())
            result = await self.lane.infer_on(mv, req.inputs, timeout, routed=version is None, key=routing.key)
        except InferlaneError as e:  # the answer still names the version the request went to
            await abort(context, e, mv.version)
            raise  # not reached: abort raises
        return encode_response(result.model.name, result.model.version, result.prediction.outputs, req)

    # -- statistics extension ----------------------------------------------------------------------

    async def model_statistics(self, request: pb.ModelStatisticsRequest,
                               context: Context) -> pb.ModelStatisticsResponse:
        doc = statistics(self.registry, self.lane.metrics, request.name, request.version)
        answer = pb.ModelStatisticsResponse()
        json_format.ParseDict(doc, answer)
        return answer

    # -- model repository extension (admin token) --------------------------------------------------

    async def _admin(self, context: Context) -> None:
        """The admin token's check (UNAUTHENTICATED, PERMISSION_DENIED); UNIMPLEMENTED without one set, as
        the extension's HTTP routes are absent then."""
        if self.token is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                f"the model repository extension is off: set {TOKEN_ENV} to turn it on")
        else:
            self.token.check(_metadata_value(context, AUTHORIZATION))

    async def repository_index(self, request: pb.RepositoryIndexRequest,
                               context: Context) -> pb.RepositoryIndexResponse:
        await self._admin(context)
        models = [pb.RepositoryIndexResponse.ModelIndex(**entry)
                  for entry in repository_index(self.registry, request.ready)]
        return pb.RepositoryIndexResponse(models=models)

    async def repository_model_load(self, request: pb.RepositoryModelLoadRequest,
                                    context: Context) -> pb.RepositoryModelLoadResponse:
        await self._admin(context)
        version = repository_version(parameters(request.parameters))
        await load_model(self.orders, self.registry, request.model_name, version)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request: pb.RepositoryModelUnloadRequest,
                                      context: Context) -> pb.RepositoryModelUnloadResponse:
        await self._admin(context)
        version = repository_version(parameters(request.parameters))
        await unload_model(self.orders, self.registry, request.model_name, version)
        return pb.RepositoryModelUnloadResponse()


def _time_limit(context: Context, params: dict[str, Any]) -> float | None:
    """Seconds the request may take: the smallest of its gRPC deadline, ``inferlane-timeout-ms`` and
    the ``timeout`` parameter (microseconds); None when none is set (the model's ``timeout_ms``)."""
    limit = timeout_s(_metadata_value(context, TIMEOUT_HEADER), {"timeout": params.get("timeout")})
    remaining = context.time_remaining()
    if remaining is not None:
        if remaining <= 0:
            raise DeadlineExceeded("the request's gRPC deadline passed before it was queued")
        limit = remaining if limit is None else min(limit, remaining)
    return limit

