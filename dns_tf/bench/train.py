"""Distillation training speed: steps/s of the attention student (S^f_A) under ``Model.fit``.

One step is :class:`training.distill.Distiller`'s ``train_step`` on ``pairs`` teacher-labelled
pairs (``pairs / 2`` anchors, each with a positive and a negative: the reference's ``--batch_sz``),
every video ``frames`` frames of 9 regions x ``dims``: indexing, the fine-grained similarity of both
pairs, the L1 + similarity-regularisation loss, gradients and Adam. The batch stays in memory
(``Dataset.from_tensors(...).repeat()``), so this measures the network, not the input pipeline.
Reported: steps and pairs per second (wall) and per CPU-second (this process, all threads; steadier
on a shared machine), after ``warmup`` traced steps. Weights and features are random: the cost does
not depend on them.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from dns_tf.fine_representation import REGIONS
from dns_tf.bench.registry import machine_load




def run_train_benchmark(pairs: int = 64, frames: int = 60, dims: int = 512, steps: int = 10,
                        warmup: int = 2, seed: int = 0) -> dict[str, Any]:
    """Times ``steps`` distillation steps of the attention student (see the module docstring)."""
    import keras
    import tensorflow as tf

    from dns_tf.models import FineGrainedStudent
    from training.distill import Distiller

    if pairs < 2 or pairs % 2:
        raise ValueError(f"pairs must be even and >= 2 (two per anchor), got {pairs}")
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    anchors = pairs // 2

    def videos():
        features = rng.standard_normal((anchors, frames, REGIONS, dims), dtype=np.float32)
        return features / np.linalg.norm(features, axis=-1, keepdims=True)

    batch = {role: videos() for role in ("anchor", "positive", "negative")}
    batch.update({f"{role}_mask": np.ones((anchors, frames), np.float32)
                  for role in ("anchor", "positive", "negative")})
    batch["similarity"] = rng.uniform(-1, 1, (anchors, 2)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensors(batch).repeat()

    distiller = Distiller(FineGrainedStudent(dims=dims, attention=True))
    distiller.compile(optimizer=keras.optimizers.Adam(1e-4))
    load_before = os.getloadavg()
    distiller.fit(dataset, steps_per_epoch=warmup, epochs=1, shuffle=False, verbose=0)  # traces
    wall, cpu = time.perf_counter(), time.process_time()
    distiller.fit(dataset, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gpus = tf.config.list_logical_devices("GPU")
    return {
        "benchmark": "train",
        "student": "fine-grained attention (S^f_A)",
        "steps_per_s": round(steps / wall, 4),
        "pairs_per_s": round(steps * pairs / wall, 2),
        "steps_per_cpu_s": round(steps / cpu, 4),
        "seconds_per_step": round(wall / steps, 3),
        "settings": {
            "pairs_per_step": pairs, "frames": frames, "regions": REGIONS, "dims": dims,
            "steps": steps, "warmup_steps": warmup,
            "device": gpus[0].name if gpus else "CPU", **machine_load(load_before),
        },
    }


def add_arguments(parser) -> None:
    parser.add_argument("--pairs", type=int, default=64, help="teacher-labelled pairs per step")
    parser.add_argument("--frames", type=int, default=60, help="frames of every video")
    parser.add_argument("--dims", type=int, default=512, help="region feature dims")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing)")


def measure(args) -> dict[str, Any]:
    sizes = dict(pairs=args.pairs, frames=args.frames, dims=args.dims, steps=args.steps,
                 warmup=args.warmup)
    if args.quick:
        sizes.update(pairs=8, frames=20, dims=64, steps=3, warmup=1)
    return run_train_benchmark(**sizes)
