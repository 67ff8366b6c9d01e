"""``TensorProto`` ↔ NumPy for the Predict API, checked against a signature before anything runs.

Every defect of a request input is an ``INVALID_ARGUMENT`` naming the input and what was expected;
an input declaring more elements, or decoding to more bytes, than the server accepts is
``RESOURCE_EXHAUSTED``, decided on the declared shape before anything is allocated (a tiny
``TensorProto`` may claim a huge shape and ask to be filled with its last value).

A signature whose every input is batched (``[None, ...]``) needs one batch size across its inputs,
as TF Serving's batching requires: the DnS signatures pair each video with its length by position,
so a ``lengths`` of another size than ``features`` would describe videos that were not sent.

Policy beyond TF Serving: floating-point inputs holding NaN or ±Inf are refused, because a
non-finite feature silently turns every similarity it touches into NaN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from serving.status import ServingError


@dataclasses.dataclass(frozen=True)
class InputLimits:
    """What one request input may ask the server to allocate.

    Attributes:
        max_bytes: the most bytes one decoded input may take.
        max_elements: the most elements one input may declare (the product of its shape).
    """

    max_bytes: int
    max_elements: int


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


def check_input(name: str, proto: tensor_pb2.TensorProto, spec: tf.TensorSpec,
                limits: InputLimits) -> tuple[int, ...]:
    """Checks request input ``name``'s dtype, declared shape and size against ``spec``; returns
    the shape. Nothing is decoded.

    Args:
        name: the input alias, for messages.
        proto: the request's tensor.
        spec: the signature's ``TensorSpec`` for that input.
        limits: the most elements it may declare and bytes it may decode to.
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
    elements = 1
    for size in shape:  # Python ints: a product of huge dimensions cannot wrap around
        elements *= size
    if elements > limits.max_elements:
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"input {name} of shape {list(shape)} declares {elements} elements, more "
                           f"than the server's limit of {limits.max_elements} per input")
    decoded_bytes = elements * np.dtype(dtype.as_numpy_dtype).itemsize
    if decoded_bytes > limits.max_bytes:
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"input {name} of shape {list(shape)} would take {decoded_bytes} bytes, "
                           f"more than the server's limit of {limits.max_bytes} bytes")
    return shape


def decode_input(name: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decodes request input ``name``, checked by :func:`check_input`; refuses NaN and Inf."""
    try:
        array = tf.make_ndarray(proto)
    except Exception as error:  # malformed content: wrong byte count, bad strings, ...
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"tensor parsing error: {name}: {error}") from error
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name} contains NaN or Inf; this server refuses non-finite "
                           f"floating-point inputs")
    return array


def check_batch_sizes(shapes: Mapping[str, tuple[int, ...]], specs: Mapping[str, tf.TensorSpec]) -> None:
    """Requires one batch size (0th dimension) across the checked input ``shapes`` of a batched
    signature: one whose every input has rank >= 1 and an unknown 0th dimension."""
    if not specs or not all(spec.shape.rank and spec.shape[0] is None for spec in specs.values()):
        return
    batch_sizes = {name: shapes[name][0] for name in sorted(specs)}
    if len(set(batch_sizes.values())) > 1:
        sizes = ", ".join(f"{name} has {size}" for name, size in batch_sizes.items())
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"the inputs of a batched signature need one batch size (0th dimension): "
                           f"{sizes}")


def decode_inputs(inputs: Mapping[str, tensor_pb2.TensorProto], specs: Mapping[str, tf.TensorSpec],
                  limits: InputLimits) -> dict[str, np.ndarray]:
    """Decodes a request's ``inputs`` map against the signature's ``specs``, every input checked
    (:func:`check_input`, :func:`check_batch_sizes`) before any is decoded."""
    check_input_names(inputs.keys(), specs.keys())
    shapes = {name: check_input(name, inputs[name], specs[name], limits) for name in sorted(specs)}
    check_batch_sizes(shapes, specs)
    return {name: decode_input(name, inputs[name]) for name in sorted(specs)}


def encode_outputs(outputs: Mapping[str, tf.Tensor | np.ndarray]) -> dict[str, tensor_pb2.TensorProto]:
    """Encodes output tensors for a ``PredictResponse``."""
    return {name: tf.make_tensor_proto(np.asarray(value)) for name, value in outputs.items()}
