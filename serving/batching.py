"""``--batching_parameters_file``: TF Serving's ``BatchingParameters`` text proto, read and checked.

The embedded server does not batch across requests (each request runs as one batch, whatever its
leading dimension); it reads the file so that a deployment's flags and files work unchanged with
both servers, and so that a malformed file fails here as it would in ``tensorflow_model_server``.
The ``tensorflow-serving-api`` package does not ship this message (see
:mod:`serving.declared_protos`); fields added by newer TF Serving releases are accepted
and ignored.
"""

from __future__ import annotations

import os

from google.protobuf.message import Message

from serving.declared_protos import declare_message
from serving.model_config import read_text_proto

# As in tensorflow_serving/servables/tensorflow/session_bundle_config.proto.
BatchingParameters = declare_message("BatchingParameters", (
    ("max_batch_size", 1, ".google.protobuf.Int64Value", False),
    ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", False),
    ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", False),
    ("num_batch_threads", 4, ".google.protobuf.Int64Value", False),
    ("thread_pool_name", 5, ".google.protobuf.StringValue", False),
    ("allowed_batch_sizes", 6, "int64", True),
    ("pad_variable_length_inputs", 7, "bool", False),
))


def read_batching_parameters(path: str | os.PathLike) -> Message:
    """Parses a ``BatchingParameters`` text proto, e.g. ``max_batch_size { value: 32 }``."""
    return read_text_proto(path, BatchingParameters(), "batching parameters file",
                           allow_unknown_field=True)
