"""Protobuf for asgi-micro: messages from pydantic models, built at run time.

``ProtoSchema`` turns the models and methods of a service into one protobuf package (real
descriptors in a ``DescriptorPool``, for gRPC and server reflection), ``render_proto`` prints it
as a ``.proto`` file, ``check_compatible`` catches a model change that would renumber fields,
and ``MessageConverter`` moves values between models and bytes.

Its codec, ``application/protobuf``, is in ``asgi_micro.codec``'s table like JSON and msgpack.
"""

from .codec import ProtobufCodec, message_converter
from .compat import IncompatibleSchema, check_compatible, find_incompatibilities
from .convert import MessageConverter
from .render import render_proto
from .schema import ProtoMethod, ProtoSchema, proto_package
from .spec import ProtoField, ProtoSchemaError

__all__ = [
    "IncompatibleSchema",
    "MessageConverter",
    "ProtoField",
    "ProtoMethod",
    "ProtoSchema",
    "ProtoSchemaError",
    "ProtobufCodec",
    "check_compatible",
    "find_incompatibilities",
    "message_converter",
    "proto_package",
    "render_proto",
]
