"""Tiny SavedModels with ``tf.function`` signatures, written the way TF Serving expects them.

``write_adder(base, version)`` and ``write_pixel_sum(base, version)`` write
``<base>/<version>/saved_model.pb``; ``write_saved_model`` writes any ``tf.Module``. Tests of the
server, the export and the client import them (``from saved_model_fixtures import write_adder``).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

ASSERT_LIMIT = 100.0


class Adder(tf.Module):
    """Float32 signatures, with a per-version ``offset`` variable telling versions apart.

    Signatures:
        ``serving_default`` and ``add``: ``x, y [B, 3]`` → ``sum = x + y + offset [B, 3]``,
            ``norm = Σ sum² [B]``.
        ``checked``: ``x [B, 3]`` → ``x``; fails at run time (InvalidArgumentError) when a value is
            ``>= ASSERT_LIMIT``.
        ``spin``: ``iterations []`` int32 → ``count []`` float32, counting up in a loop; a request
            that takes as long as the client likes.
    """

    def __init__(self, offset: float):
        super().__init__()
        self.offset = tf.Variable(offset, dtype=tf.float32, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                  tf.TensorSpec([None, 3], tf.float32, name="y")])
    def add(self, x, y):
        total = x + y + self.offset
        return {"sum": total, "norm": tf.reduce_sum(total * total, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def checked(self, x):
        with tf.control_dependencies([tf.debugging.assert_less(
                x, ASSERT_LIMIT, message=f"x must stay below {ASSERT_LIMIT}")]):
            return {"checked": tf.identity(x)}

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="iterations")])
    def spin(self, iterations):
        _, count = tf.while_loop(lambda step, count: step < iterations,
                                 lambda step, count: (step + 1, count + 1.0),
                                 (tf.constant(0), tf.constant(0.0)))
        return {"count": count}


class PixelSum(tf.Module):
    """Integer signature ``serving_default``: ``pixels [B, N]`` uint8, ``scale []`` int32 →
    ``total = scale · Σ_n pixels [B]`` int32, ``mean [B]`` float32."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.uint8, name="pixels"),
                                  tf.TensorSpec([], tf.int32, name="scale")])
    def serve(self, pixels, scale):
        total = tf.reduce_sum(tf.cast(pixels, tf.int32), axis=1) * scale
        return {"total": total, "mean": tf.reduce_mean(tf.cast(pixels, tf.float32), axis=1)}


def write_saved_model(export_dir: str | os.PathLike, module: tf.Module,
                      signatures: Mapping[str, tf.types.experimental.GenericFunction]) -> pathlib.Path:
    """Saves ``module`` with ``signatures`` (name → ``tf.function``) at ``export_dir``."""
    export_dir = pathlib.Path(export_dir)
    tf.saved_model.save(module, str(export_dir), signatures=dict(signatures))
    return export_dir


def write_adder(base_path: str | os.PathLike, version: int, offset: float | None = None) -> pathlib.Path:
    """Writes ``Adder(offset)`` as ``<base_path>/<version>``; ``offset`` defaults to the version."""
    module = Adder(float(version) if offset is None else offset)
    return write_saved_model(pathlib.Path(base_path) / str(version), module, {
        "serving_default": module.add, "add": module.add, "checked": module.checked,
        "spin": module.spin})


def write_pixel_sum(base_path: str | os.PathLike, version: int) -> pathlib.Path:
    """Writes ``PixelSum`` as ``<base_path>/<version>``."""
    module = PixelSum()
    return write_saved_model(pathlib.Path(base_path) / str(version), module,
                             {"serving_default": module.serve})


def adder_reference(x: np.ndarray, y: np.ndarray, offset: float) -> dict[str, np.ndarray]:
    """What ``Adder(offset).add`` computes, in NumPy."""
    total = (x + y + np.float32(offset)).astype(np.float32)
    return {"sum": total, "norm": (total * total).sum(axis=1)}
