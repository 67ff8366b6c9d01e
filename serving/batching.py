"""``--batching_parameters_file``: TF Serving's ``BatchingParameters`` text proto, read and checked.

The embedded server does not batch across requests (each request runs as one batch, whatever its
leading dimension); it reads the file so that a deployment's flags and files work unchanged with
both servers, and so that a malformed file fails here as it would in ``tensorflow_model_server``.
The ``tensorflow-serving-api`` package does not ship this message, so its descriptor is declared
here from ``session_bundle_config.proto``; fields added by newer TF Serving releases are accepted
and ignored.
"""

from __future__ import annotations

import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2
from google.protobuf.message import Message

from serving.model_config import read_text_proto

_FIELDS = (  # name, number, type: as in tensorflow_serving/servables/tensorflow/session_bundle_config.proto
    ("max_batch_size", 1, ".google.protobuf.Int64Value"),
    ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
    ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
    ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
    ("thread_pool_name", 5, ".google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, "int64"),
    ("pad_variable_length_inputs", 7, "bool"),
)


def _batching_parameters_class() -> type[Message]:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(
        name="dns_tf/batching_parameters.proto", package="tensorflow.serving", syntax="proto3",
        dependency=[wrappers.name])
    message = file.message_type.add(name="BatchingParameters")
    for name, number, type_name in _FIELDS:
        field = message.field.add(name=name, number=number)
        if type_name == "int64":
            field.type = descriptor_pb2.FieldDescriptorProto.TYPE_INT64
            field.label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
        elif type_name == "bool":
            field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BOOL
            field.label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
        else:
            field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
            field.label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
            field.type_name = type_name
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParameters = _batching_parameters_class()


def read_batching_parameters(path: str | os.PathLike) -> Message:
    """Parses a ``BatchingParameters`` text proto, e.g. ``max_batch_size { value: 32 }``."""
    return read_text_proto(path, BatchingParameters(), "batching parameters file",
                           allow_unknown_field=True)
