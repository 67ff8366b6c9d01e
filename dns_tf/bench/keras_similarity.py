"""Fine-grained similarity through the Keras layers, on whichever Keras backend is active.

The students' layers are written with ``keras.ops``, so the same model runs on TensorFlow, JAX or
PyTorch. With ``KERAS_BACKEND=jax`` on a GPU machine this measures S^f_A and S^f_B pairs/s there
(no TensorFlow needed). Random weights, 60 vs 60 frames of 9 regions, 256 targets per query, the
whole ``calculate_video_similarity`` compiled once (``jax.jit`` or ``tf.function``). Unlike
``dns-tf bench similarity`` (the CPU serving path, packed codes and per-pair exactness), this is
the model's own arithmetic on a padded batch.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, default=60, help="frames per video (default: 60)")
    parser.add_argument("--targets", type=int, default=256,
                        help="target videos per query (default: 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best counts")


def _compiled(function):
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.function(function)
    return function


def _device() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax
        device = jax.devices()[0]
        return f"{device.platform}: {device.device_kind}"
    import os
    return f"{keras.backend.backend()} ({os.cpu_count()} CPUs)"


def run_keras_similarity_benchmark(frames: int = 60, targets: int = 256,
                                   repeats: int = 5) -> dict[str, Any]:
    import keras

    from dns_tf.models import FineGrainedStudent

    rng = np.random.default_rng(0)

    def videos(count):
        x = rng.standard_normal((count, frames, 9, 512), dtype=np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    result: dict[str, Any] = {"benchmark": "keras_similarity", "backend": keras.backend.backend(),
                              "device": _device()}
    for kind in ("attention", "binarization"):
        keras.utils.set_random_seed(0)
        student = FineGrainedStudent(attention=kind == "attention",
                                     binarization=kind == "binarization")
        query = student.index_video(videos(1))
        database = student.index_video(videos(targets))
        similarity = _compiled(lambda q, t: student.calculate_video_similarity(q, t))
        np.asarray(similarity(query, database))  # compile and warm up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            np.asarray(similarity(query, database))  # waits for the device
            best = min(best, time.perf_counter() - start)
        result[kind] = {"pairs_per_s": round(targets / best, 1),
                        "seconds_per_query": round(best, 5)}
    result["settings"] = {"frames": frames, "regions": 9, "dims_or_bits": 512,
                          "targets_per_query": targets, "repeats": repeats}
    return result


def measure(args) -> dict[str, Any]:
    if args.quick:
        return run_keras_similarity_benchmark(frames=12, targets=16, repeats=1)
    return run_keras_similarity_benchmark(args.frames, args.targets, args.repeats)
