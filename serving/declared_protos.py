"""TF Serving messages the ``tensorflow-serving-api`` package does not ship, declared from their
``.proto`` files so that the server reads the same text-proto files as ``tensorflow_model_server``."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2
from google.protobuf.message import Message

_Field = descriptor_pb2.FieldDescriptorProto
_SCALAR_TYPES = {"int64": _Field.TYPE_INT64, "bool": _Field.TYPE_BOOL, "string": _Field.TYPE_STRING}


def declare_message(name: str, fields: Sequence[tuple[str, int, str, bool]]) -> type[Message]:
    """A proto3 message class ``tensorflow.serving.<name>``.

    Args:
        name: the message name.
        fields: ``(field name, number, type, repeated)``; the type is ``int64``, ``bool``,
            ``string`` or a ``.google.protobuf.*Value`` wrapper.
    """
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(
        name=f"dns_tf/{name}.proto", package="tensorflow.serving", syntax="proto3",
        dependency=[wrappers.name])
    message = file.message_type.add(name=name)
    for field_name, number, type_name, repeated in fields:
        field = message.field.add(name=field_name, number=number,
                                  label=_Field.LABEL_REPEATED if repeated else _Field.LABEL_OPTIONAL)
        if type_name in _SCALAR_TYPES:
            field.type = _SCALAR_TYPES[type_name]
        else:
            field.type = _Field.TYPE_MESSAGE
            field.type_name = type_name
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
