"""The gRPC transport of the client: pooled grpc.aio channels, one per node.

``GrpcTransport`` calls a method by its path (``/greeter.Greeter/Hello``, from the endpoint's
``grpc`` metadata in the registry, or ``method_path``). Requests are pydantic models, generated
protobuf classes or dicts; replies are ``response_model`` instances, or dicts as
``google.protobuf.json_format`` writes them (field names as declared).

The caller need not have the server's models: the transport asks the node's server reflection
for the method's descriptors, once per node and gRPC service. A pydantic model the caller passes
is then compared with the server's message, field by field (names, numbers, types, nested
messages, enum values), once per node, method and model: when they match, the model's own
protobuf converter encodes and decodes (no detour through JSON, and exact for every type); when
they do not, the model goes through JSON, and a mismatch shows as a validation error instead of
values silently landing in the wrong fields. A node without reflection is trusted to match the
models; dicts then cannot be sent.

Errors are those of the HTTP client: the server's ``MicroError`` rebuilt from the trailing
metadata (class, id and detail), else the class closest to the status; ``ConnectionFailed``
when the node could not be reached (nothing was sent), ``ConnectionLost`` when a call broke
after it was sent, ``Timeout`` (408) when the deadline passed.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .. import errors
from ..codec import message_type
from ..errors import (
    CLIENT_ID,
    BadGateway,
    BadRequest,
    ConnectionFailed,
    ConnectionLost,
    MicroError,
    Timeout,
)
from ..grpc.status import ERROR_KEY, error_from_status
from ..protobuf import MessageConverter, ProtoSchemaError, message_converter, proto_package

__all__ = ["GrpcTransport", "method_path"]

_DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
_RESERVED_METADATA = frozenset(("micro-timeout", "content-type", "accept"))
_NOT_CONNECTED = "failed to connect to all addresses"

Encode = Callable[[Any], bytes]
Decode = Callable[[bytes], Any]


def method_path(service: str, endpoint: str, *, package: str | None = None) -> str:
    """The gRPC path of ``endpoint`` by convention: ``("greeter", "Greeter.Hello")`` is
    ``/greeter.Greeter/Hello`` (the package derived from the service name, unless given)."""
    router, _, method = endpoint.rpartition(".")
    if not router or not method:
        raise ValueError(f"an endpoint is named '<Router>.<Method>', got {endpoint!r}")
    return f"/{package or proto_package(service)}.{router}/{method}"


@dataclass(slots=True)
class _Method:
    """A method as the node describes it; ``None`` classes when it offers no reflection."""

    request: type[Message] | None
    response: type[Message] | None


class _Node:
    """One node: its channel, the calls it carries, what its reflection said (per gRPC
    service, and per method)."""

    __slots__ = (
        "address",
        "callables",
        "calls",
        "channel",
        "described",
        "in_flight",
        "pools",
    )

    def __init__(self, address: str, options: Sequence[tuple[str, Any]]) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=list(options))
        self.callables: dict[tuple[str, str], Any] = {}
        self.described: dict[str, _Method] = {}
        self.pools: dict[str, descriptor_pool.DescriptorPool | None] = {}
        self.calls = 0  # completed, to tell a reused connection from a new one
        self.in_flight = 0

    def callable(self, kind: str, method: str) -> Any:
        found = self.callables.get((kind, method))
        if found is None:
            found = self.callables[kind, method] = getattr(self.channel, kind)(method)
        return found


class GrpcTransport:
    """grpc.aio channels to nodes, opened on first use and kept until ``aclose()``.

    ``max_message_size`` bounds replies (requests are bounded by the server);
    ``connect_timeout`` bounds the wait for a connection when the call's own timeout is longer.
    """

    def __init__(
        self,
        *,
        max_message_size: int = _DEFAULT_MAX_MESSAGE_SIZE,
        connect_timeout: float = 5.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.max_message_size = max_message_size
        self.connect_timeout = connect_timeout
        self.options = [
            ("grpc.max_receive_message_length", max_message_size),
            # grpc's own transparent retry would re-send a call whose connection broke after
            # the server took it, then report "failed to connect" when the node is gone: the
            # retry loop decides what may be repeated, so grpc must not.
            ("grpc.enable_retries", 0),
            *options,
        ]
        self._nodes: dict[str, _Node] = {}
        self._codecs: dict[tuple[str, str, Any, Any], tuple[Encode, Decode]] = {}
        self._closed = False

    def in_flight(self, address: str) -> int:
        """Calls outstanding to ``address``, for a least-outstanding-requests balancer."""
        node = self._nodes.get(address)
        return node.in_flight if node is not None else 0

    async def unary(
        self,
        address: str,
        method: str,
        request: Any = None,
        *,
        response_model: Any = None,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
        service: str = "",
    ) -> Any:
        """Call a unary method; ``service`` is the id of errors that carry none."""
        deadline = _deadline(timeout)
        node = await self._connected(address, deadline)
        encode, decode = await self._codec(node, method, type(request), response_model, deadline)
        call = node.callable("unary_unary", method)(
            _encode(encode, request, service), timeout=_left(deadline), metadata=_metadata(metadata)
        )
        return await _reply(node, call, decode, service)

    async def server_stream(
        self,
        address: str,
        method: str,
        request: Any = None,
        *,
        response_model: Any = None,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
        service: str = "",
    ) -> AsyncIterator[Any]:
        """Call a server-streaming method and iterate over its replies."""
        deadline = _deadline(timeout)
        node = await self._connected(address, deadline)
        encode, decode = await self._codec(node, method, type(request), response_model, deadline)
        call = node.callable("unary_stream", method)(
            _encode(encode, request, service), timeout=_left(deadline), metadata=_metadata(metadata)
        )
        async for reply in self._replies(node, call, decode, service):
            yield reply

    async def client_stream(
        self,
        address: str,
        method: str,
        requests: AsyncIterable[Any] | Iterable[Any],
        *,
        request_model: Any = None,
        response_model: Any = None,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
        service: str = "",
    ) -> Any:
        """Call a client-streaming method with ``requests`` (of ``request_model``, a pydantic
        model or generated class, when they are not dicts) and return its reply."""
        deadline = _deadline(timeout)
        node = await self._connected(address, deadline)
        encode, decode = await self._codec(node, method, request_model, response_model, deadline)
        call = node.callable("stream_unary", method)(
            _encoded(encode, requests, service),
            timeout=_left(deadline),
            metadata=_metadata(metadata),
        )
        return await _reply(node, call, decode, service)

    async def bidi_stream(
        self,
        address: str,
        method: str,
        requests: AsyncIterable[Any] | Iterable[Any],
        *,
        request_model: Any = None,
        response_model: Any = None,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
        service: str = "",
    ) -> AsyncIterator[Any]:
        """Call a bidirectional-streaming method: ``requests`` go out as the replies come."""
        deadline = _deadline(timeout)
        node = await self._connected(address, deadline)
        encode, decode = await self._codec(node, method, request_model, response_model, deadline)
        call = node.callable("stream_stream", method)(
            _encoded(encode, requests, service),
            timeout=_left(deadline),
            metadata=_metadata(metadata),
        )
        async for reply in self._replies(node, call, decode, service):
            yield reply

    async def aclose(self) -> None:
        """Close every channel; idempotent."""
        self._closed = True
        nodes, self._nodes = list(self._nodes.values()), {}
        await asyncio.gather(*(node.channel.close() for node in nodes))

    async def __aenter__(self) -> GrpcTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- connections --------------------------------------------------------------------------

    async def _connected(self, address: str, deadline: float | None) -> _Node:
        """The node's channel, connected: ``ConnectionFailed`` when it cannot be, as nothing
        has been sent then."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = _Node(address, self.options)
        channel = node.channel
        state = channel.get_state(try_to_connect=True)
        if state is grpc.ChannelConnectivity.READY:
            return node
        wait = self.connect_timeout
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        try:
            async with asyncio.timeout(wait):
                while state is not grpc.ChannelConnectivity.READY:
                    if state in (
                        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                        grpc.ChannelConnectivity.SHUTDOWN,
                    ):
                        break
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError:
            pass
        if state is grpc.ChannelConnectivity.READY:
            return node
        # A fresh channel next time: a failed one waits out its reconnect backoff.
        if self._nodes.get(address) is node:
            del self._nodes[address]
        await node.channel.close()
        if deadline is not None and time.monotonic() >= deadline:
            raise Timeout(f"deadline exceeded connecting to {address}", id=CLIENT_ID)
        raise ConnectionFailed(f"cannot connect to {address} ({state.name})", id=CLIENT_ID)

    # -- messages -----------------------------------------------------------------------------

    async def _codec(
        self,
        node: _Node,
        method: str,
        request_model: Any,
        response_model: Any,
        deadline: float | None,
    ) -> tuple[Encode, Decode]:
        key = (node.address, method, request_model, response_model)
        found = self._codecs.get(key)
        if found is None:
            described = await self._describe(node, method, deadline)
            found = self._codecs[key] = (
                _encoder(request_model, described.request, method),
                _decoder(response_model, described.response, method),
            )
        return found

    async def _describe(self, node: _Node, method: str, deadline: float | None) -> _Method:
        """The method's message classes, from the node's server reflection."""
        found = node.described.get(method)
        if found is not None:
            return found
        service_name, _, method_name = method.strip("/").partition("/")
        pool = node.pools.get(service_name)
        if service_name not in node.pools:
            # Bounded even without a deadline: a node that never answers must not hang calls.
            timeout = _left(deadline) if deadline is not None else self.connect_timeout
            pool = node.pools[service_name] = await _reflected(node, service_name, timeout)
        if pool is None:
            found = _Method(None, None)  # no reflection: the caller's models are all there is
        else:
            try:
                descriptor = pool.FindServiceByName(service_name).methods_by_name[method_name]
            except KeyError:
                raise errors.NotImplemented(
                    f"{node.address} has no method {method}", id=CLIENT_ID
                ) from None
            found = _Method(
                message_factory.GetMessageClass(descriptor.input_type),
                message_factory.GetMessageClass(descriptor.output_type),
            )
        node.described[method] = found
        return found

    async def _replies(
        self, node: _Node, call: Any, decode: Decode, service: str
    ) -> AsyncIterator[Any]:
        node.in_flight += 1
        started = False
        try:
            async for data in call:
                started = True
                yield _decode(decode, data)
            node.calls += 1
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, node, service, started=started) from None
        finally:
            node.in_flight -= 1
            call.cancel()  # when the caller stopped early: the server's handler stops too


class _NoReflection(Exception):
    pass


async def _reflected(
    node: _Node, service_name: str, timeout: float | None
) -> descriptor_pool.DescriptorPool | None:
    """A pool of the files describing ``service_name``, or ``None`` when the node offers no
    reflection."""
    stub = reflection_pb2_grpc.ServerReflectionStub(node.channel)
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    wanted = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=service_name)]
    try:
        while wanted:
            async for reply in stub.ServerReflectionInfo(iter(wanted), timeout=timeout):
                if reply.HasField("error_response"):
                    if reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]:
                        raise errors.NotImplemented(
                            f"{node.address} has no service {service_name}", id=CLIENT_ID
                        )
                    raise _NoReflection(reply.error_response.error_message)
                for data in reply.file_descriptor_response.file_descriptor_proto:
                    file = descriptor_pb2.FileDescriptorProto.FromString(data)
                    files[file.name] = file
            wanted = [
                reflection_pb2.ServerReflectionRequest(file_by_filename=name)
                for name in sorted(
                    {
                        dependency
                        for file in files.values()
                        for dependency in file.dependency
                        if dependency not in files
                    }
                )
            ]
        pool = descriptor_pool.DescriptorPool()
        _add_in_order(pool, files)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise _error(exc, node, "", started=False) from None
        return None
    except (_NoReflection, TypeError, ValueError):
        return None  # no reflection, or descriptors this process cannot use
    return pool


def _add_in_order(
    pool: descriptor_pool.DescriptorPool, files: dict[str, descriptor_pb2.FileDescriptorProto]
) -> None:
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added or name not in files:
            return
        added.add(name)
        for dependency in files[name].dependency:
            add(dependency)
        pool.Add(files[name])

    for name in sorted(files):
        add(name)


def _encoder(model: Any, remote: type[Message] | None, method: str) -> Encode:
    """How requests become the bytes of the remote message: through the model's converter when
    it matches the remote message (or nothing says otherwise), else through JSON."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        converter = _converter(model)
        if converter is not None and (remote is None or _same_shape(converter, remote)):
            encode: Encode = converter.encode
            return encode
    if remote is None:
        return functools.partial(_serialize_generated, method)
    return functools.partial(_serialize, remote, _shape_of(remote.DESCRIPTOR))


def _decoder(model: Any, remote: type[Message] | None, method: str) -> Decode:
    """How reply bytes become a ``model`` instance, or a dict without one."""
    if isinstance(model, type) and issubclass(model, Message):
        from_string: Decode = model.FromString
        return from_string
    if isinstance(model, type) and issubclass(model, BaseModel):
        converter = _converter(model)
        if converter is not None and (remote is None or _same_shape(converter, remote)):
            decode: Decode = converter.decode
            return decode
        if remote is not None:
            validate = model.model_validate
            return lambda data: validate(_to_dict(remote.FromString(data)))
    if remote is None:

        def undecodable(data: bytes) -> Any:
            raise BadRequest(
                f"the node offers no server reflection, so {method} needs a response_model "
                "(a pydantic model or a generated protobuf class)",
                id=CLIENT_ID,
            )

        return undecodable
    return lambda data: _to_dict(remote.FromString(data))


def _serialize(remote: type[Message], shape: type[BaseModel], value: Any) -> bytes:
    """``value`` as the bytes of the ``remote`` message. A dict (or a model of another shape)
    is first validated as the server validates it, field by field (so a wrong value reads as
    the server's own error would: ``name: Input should be a valid string``), then mapped onto
    the message by name; what the message has no field for is left out, as the server's model
    leaves it out over HTTP."""
    if isinstance(value, Message):
        return value.SerializeToString()
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        checked = shape.model_validate(value).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        raise BadRequest.from_validation(exc) from None  # the service's id: see _encode
    try:
        return json_format.ParseDict(checked, remote()).SerializeToString()
    except (json_format.ParseError, TypeError, AttributeError) as exc:
        raise BadRequest(
            f"the request is not a {remote.DESCRIPTOR.full_name}: {exc}", id=CLIENT_ID
        ) from exc


@functools.cache
def _shape_of(descriptor: Any) -> type[BaseModel]:
    """A pydantic model of a message's fields as its JSON mapping holds them (every field
    optional, as in proto3; unknown keys ignored), to validate a dict against."""
    fields: dict[str, Any] = {}
    for field in descriptor.fields:
        fields[field.name] = (_json_type(field) | None, None)
    model: type[BaseModel] = create_model(
        descriptor.name, __config__=ConfigDict(extra="ignore"), **fields
    )
    return model


def _json_type(field: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        message = field.message_type
        if message.GetOptions().map_entry:
            key, value = message.fields_by_name["key"], message.fields_by_name["value"]
            return dict[_json_type(key), _json_type(value)]  # type: ignore[misc]
        # Well-known types have JSON forms of their own (a Timestamp is a string): json_format
        # checks those.
        single = Any if message.full_name.startswith("google.protobuf.") else _shape_of(message)
    else:
        single = _SCALARS.get(field.type, int)
    return list[single] if field.is_repeated else single  # type: ignore[valid-type]


_SCALARS: dict[int, Any] = {
    FieldDescriptor.TYPE_STRING: str,
    FieldDescriptor.TYPE_BYTES: str,  # base64 in JSON
    FieldDescriptor.TYPE_BOOL: bool,
    FieldDescriptor.TYPE_DOUBLE: float,
    FieldDescriptor.TYPE_FLOAT: float,
    FieldDescriptor.TYPE_ENUM: str | int,  # the value's name or number
}


def _serialize_generated(method: str, value: Any) -> bytes:
    if isinstance(value, Message):
        return value.SerializeToString()
    raise BadRequest(
        f"the node offers no server reflection, so {method} needs its request as a pydantic "
        "model or a generated protobuf class, not a dict",
        id=CLIENT_ID,
    )


def _converter(model: type[BaseModel]) -> MessageConverter | None:
    try:
        return message_converter(message_type(model))
    except ProtoSchemaError:
        return None


def _same_shape(converter: MessageConverter, remote: type[Message]) -> bool:
    return _same_fields(converter.message_class.DESCRIPTOR, remote.DESCRIPTOR, set())


def _same_fields(local: Any, remote: Any, seen: set[tuple[str, str]]) -> bool:
    """Whether two messages put the same values under the same field numbers, nested messages
    and enums included; their names and packages may differ."""
    if (local.full_name, remote.full_name) in seen:
        return True
    seen.add((local.full_name, remote.full_name))
    ours = {field.number: field for field in local.fields}
    theirs = {field.number: field for field in remote.fields}
    if ours.keys() != theirs.keys():
        return False
    for number, field in ours.items():
        other = theirs[number]
        if (field.name, field.type, field.is_repeated, field.has_presence) != (
            other.name,
            other.type,
            other.is_repeated,
            other.has_presence,
        ):
            return False
        if field.type == FieldDescriptor.TYPE_MESSAGE and not _same_fields(
            field.message_type, other.message_type, seen
        ):
            return False
        if field.type == FieldDescriptor.TYPE_ENUM and [
            (value.name, value.number) for value in field.enum_type.values
        ] != [(value.name, value.number) for value in other.enum_type.values]:
            return False
    return True


def _to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def _encode(encode: Encode, request: Any, service: str = "") -> bytes:
    if request is None:
        return b""  # every field at its default: a valid message of any type
    try:
        return encode(request)
    except BadRequest as exc:
        # Refused by the method's own message: the service's error, as it reads over HTTP.
        exc.id = exc.id or service
        raise


async def _reply(node: _Node, call: Any, decode: Decode, service: str) -> Any:
    """The one reply of a unary or client-streaming ``call`` on ``node``, decoded."""
    node.in_flight += 1
    try:
        data = await call
    except grpc.aio.AioRpcError as exc:
        raise _error(exc, node, service, started=False) from None
    finally:
        node.in_flight -= 1
    node.calls += 1
    return _decode(decode, data)


def _decode(decode: Decode, data: bytes) -> Any:
    try:
        return decode(data)
    except (DecodeError, BadRequest) as exc:
        raise BadGateway(f"the reply is not the method's message: {exc}", id=CLIENT_ID) from exc


async def _encoded(
    encode: Encode, requests: AsyncIterable[Any] | Iterable[Any], service: str
) -> AsyncIterator[bytes]:
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            yield _encode(encode, request, service)
    else:
        for request in requests:
            yield _encode(encode, request, service)


def _metadata(pairs: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The context's headers as gRPC metadata; the deadline goes as ``grpc-timeout``."""
    return tuple(
        (key.lower(), value) for key, value in pairs if key.lower() not in _RESERVED_METADATA
    )


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout <= 0:
        raise Timeout("deadline exceeded before the call", id=CLIENT_ID)
    return time.monotonic() + timeout


def _left(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.001)


def _error(exc: grpc.aio.AioRpcError, node: _Node, service: str, *, started: bool) -> MicroError:
    code, details, trailing = exc.code(), exc.details() or "", exc.trailing_metadata()
    if any(key == ERROR_KEY for key, _ in trailing or ()):
        return error_from_status(code, details, trailing, id=service)  # the server's own
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Timeout(f"deadline exceeded calling {node.address}", id=CLIENT_ID)
    if code == grpc.StatusCode.UNAVAILABLE and _NOT_CONNECTED in details:
        return ConnectionFailed(f"cannot connect to {node.address}: {details}", id=CLIENT_ID)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        # Said by grpc itself, not by a handler: the connection broke, or the server stopped,
        # with the call on it.
        return ConnectionLost(
            f"the call to {node.address} broke: {details}",
            id=CLIENT_ID,
            reused=node.calls > 0,
            response_started=started,
        )
    return error_from_status(code, details, trailing, id=service)
