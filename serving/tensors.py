"""``TensorProto`` ↔ NumPy for the Predict API, checked against a signature before anything runs.

Every defect of a request input is an ``INVALID_ARGUMENT`` naming the input and what was expected;
an input that would decode to more bytes than the server accepts is ``RESOURCE_EXHAUSTED`` (a tiny
``TensorProto`` may claim a huge shape and ask to be filled with its last value).

Policy beyond TF Serving: floating-point inputs holding NaN or ±Inf are refused, because a
non-finite feature silently turns every similarity it touches into NaN.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from serving.status import ServingError


def _names(keys: Iterable[str]) -> str:
    return "{" + ",".join(sorted(keys)) + "}"


def check_input_names(sent: Iterable[str], expected: Iterable[str]) -> None:
    """Requires the request to send exactly the signature's inputs (TF Serving's message)."""
    sent, expected = set(sent), set(expected)
    if sent != expected:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({_names(sent)}) != len({_names(expected)}). Sent extra: {_names(sent - expected)}. "
            f"Missing but required: {_names(expected - sent)}.")


def _shape_of(name: str, proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    if proto.tensor_shape.unknown_rank:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"tensor parsing error: {name}: a request tensor needs a known shape")
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"tensor parsing error: {name}: negative dimension in shape {list(shape)}")
    return shape


def decode_input(name: str, proto: tensor_pb2.TensorProto, spec: tf.TensorSpec,
                 max_bytes: int) -> np.ndarray:
    """Decodes request input ``name`` after checking its dtype, shape and size against ``spec``.

    Args:
        name: the input alias, for messages.
        proto: the request's tensor.
        spec: the signature's ``TensorSpec`` for that input.
        max_bytes: the most bytes the decoded array may take.

    Returns:
        The array, of ``spec.dtype`` and a shape compatible with ``spec.shape``.
    """
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except TypeError as error:  # DT_INVALID or an unknown enum value
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"tensor parsing error: {name}: invalid dtype enum {proto.dtype}") from error
    if dtype != spec.dtype:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expected input {name} to be {spec.dtype.name} but got {dtype.name}.")
    shape = _shape_of(name, proto)
    if not spec.shape.is_compatible_with(shape):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expected input {name} to have shape {spec.shape} but got {list(shape)}.")
    decoded_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype.as_numpy_dtype).itemsize
    if decoded_bytes > max_bytes:
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"input {name} of shape {list(shape)} would take {decoded_bytes} bytes, "
                           f"more than the server's limit of {max_bytes} bytes")
    try:
        array = tf.make_ndarray(proto)
    except Exception as error:  # malformed content: wrong byte count, bad strings, ...
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"tensor parsing error: {name}: {error}") from error
    if dtype.is_floating and not np.all(np.isfinite(array)):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name} contains NaN or Inf; this server refuses non-finite "
                           f"floating-point inputs")
    return array


def decode_inputs(inputs: Mapping[str, tensor_pb2.TensorProto], specs: Mapping[str, tf.TensorSpec],
                  max_bytes: int) -> dict[str, np.ndarray]:
    """Decodes a request's ``inputs`` map against the signature's ``specs`` (see ``decode_input``)."""
    check_input_names(inputs.keys(), specs.keys())
    return {name: decode_input(name, inputs[name], specs[name], max_bytes) for name in sorted(specs)}


def encode_outputs(outputs: Mapping[str, tf.Tensor | np.ndarray]) -> dict[str, tensor_pb2.TensorProto]:
    """Encodes output tensors for a ``PredictResponse``."""
    return {name: tf.make_tensor_proto(np.asarray(value)) for name, value in outputs.items()}
