"""Fine-grained similarity: pairs/s of the attention and binarization students, one query at a time.

Each query (``frames`` x 9 regions) is compared with ``targets`` stored targets of the same length,
as DnS re-ranking does, by :class:`~dns_tf.similarity_fast.FastFineSimilarity`. Reported per
student, for the fastest of ``repeats`` queries: pairs per second and per CPU-second (this
process's CPU time; steadier than wall time on a shared machine) of the whole similarity and of the
frame-to-frame stage alone, the rest (comparator) per CPU-second from the difference, and its
GFLOP per CPU-second; with ``--baseline``, also the students' own Keras
``calculate_video_similarity`` on padded batches.
Weights are random: the cost does not depend on them. Targets on 2 CPU cores: attention >= 300
pairs/s, binarization >= 1500 pairs/s (the authors' PyTorch: ~150 each).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from dns_tf.fine_representation import REGIONS, pack_bits, unpack_bits
from dns_tf.bench.registry import machine_load




def comparator_flops(frames_query: int, frames_target: int) -> int:
    """Multiply-adds x 2 of the video comparator CNN on one ``[Tq, Tt]`` matrix."""
    flops, rows, cols, channels = 0, frames_query, frames_target, 1
    for index, filters in enumerate((32, 64, 128)):
        flops += 2 * rows * cols * 9 * channels * filters
        channels = filters
        if index < 2:
            rows, cols = rows // 2, cols // 2
    return flops + 2 * rows * cols * channels


def _best_rates(function, pairs: int, repeats: int) -> tuple[float, float]:
    """``(pairs per second, pairs per CPU-second)`` of the fastest of ``repeats`` calls (after a
    warm-up call). CPU seconds are this process's, all threads: on a shared machine they are less
    disturbed by other processes than wall time."""
    function()
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return pairs / best_wall, pairs / best_cpu


def run_similarity_benchmark(kinds=("attention", "binarization"), frames: int = 60,
                             targets: int = 256, dims: int = 512, repeats: int = 5,
                             batch_size: int = 64, workers: int | None = None,
                             baseline: bool = False, seed: int = 0) -> dict[str, Any]:
    """Measures each fine student's similarity throughput (see the module docstring)."""
    import keras

    from dns_tf.models import FineGrainedStudent
    from dns_tf.similarity_fast import FastFineSimilarity

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    load_before = os.getloadavg()
    result: dict[str, Any] = {"benchmark": "similarity"}
    for kind in kinds:
        student = FineGrainedStudent(dims=dims, attention=kind == "attention",
                                     binarization=kind == "binarization", bits=dims)
        features = rng.standard_normal((targets + 1, frames, REGIONS, dims), dtype=np.float32)
        indexed = np.asarray(student.index_video(features))
        stored = pack_bits(indexed) if kind == "binarization" else indexed.astype(np.float16)
        query, database = stored[0], list(stored[1:])
        similarity = FastFineSimilarity(student, batch_size=batch_size, workers=workers)
        total, total_cpu = _best_rates(lambda: similarity(query, database), targets, repeats)
        frame_stage, frame_stage_cpu = _best_rates(
            lambda: similarity.frame_to_frame(query, database), targets, repeats)
        # The rest (gathering, comparator, chamfer) costs the difference in CPU time per pair.
        rest_cpu = 1.0 / max(1.0 / total_cpu - 1.0 / frame_stage_cpu, 1e-9)
        entry = {
            "pairs_per_s": round(total, 1),
            "pairs_per_cpu_s": round(total_cpu, 1),
            "frame_to_frame_pairs_per_s": round(frame_stage, 1),
            "frame_to_frame_pairs_per_cpu_s": round(frame_stage_cpu, 1),
            "comparator_pairs_per_cpu_s": round(rest_cpu, 1),
            "comparator_gflop_per_cpu_s": round(rest_cpu * comparator_flops(frames, frames) / 1e9,
                                                1),
            "frame_to_frame_path": ("xla_xor_popcount" if similarity.kind == "bits"
                                    else "float32_matmul"),
        }
        if baseline:
            def keras_batched():
                as_float = unpack_bits if kind == "binarization" else (
                    lambda x: np.asarray(x, np.float32))
                for start in range(0, targets, batch_size):
                    batch = as_float(np.stack(database[start:start + batch_size]))
                    student.calculate_video_similarity(as_float(query), batch)
            keras_wall, keras_cpu = _best_rates(keras_batched, targets, max(1, repeats // 2))
            entry["keras_batched_pairs_per_s"] = round(keras_wall, 1)
            entry["keras_batched_pairs_per_cpu_s"] = round(keras_cpu, 1)
        result[kind] = entry
    result["settings"] = {
        "frames": frames, "regions": REGIONS, "dims_or_bits": dims, "targets_per_query": targets,
        "repeats": repeats, "batch_size": batch_size, "workers": similarity.workers,
        **machine_load(load_before),
    }
    return result


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, default=60, help="frames of query and targets")
    parser.add_argument("--targets", type=int, default=256, help="targets per query")
    parser.add_argument("--dims", type=int, default=512, help="feature dims / code bits")
    parser.add_argument("--repeats", type=int, default=5, help="timed queries (best reported)")
    parser.add_argument("--batch-size", type=int, default=64, help="targets per batch")
    parser.add_argument("--workers", type=int, default=None,
                        help="batches in flight (default: min(2, CPU cores))")
    parser.add_argument("--students", nargs="+", default=["attention", "binarization"],
                        choices=["attention", "binarization"], help="students to measure")
    parser.add_argument("--baseline", action="store_true",
                        help="also time the Keras calculate_video_similarity on padded batches")


def measure(args) -> dict[str, Any]:
    sizes = dict(frames=args.frames, targets=args.targets, repeats=args.repeats)
    if args.quick:
        sizes.update(targets=min(args.targets, 32), repeats=1)
    return run_similarity_benchmark(kinds=tuple(args.students), dims=args.dims,
                                    batch_size=args.batch_size, workers=args.workers,
                                    baseline=args.baseline, **sizes)
