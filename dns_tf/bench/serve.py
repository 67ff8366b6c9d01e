"""Serving: requests/s and latency of the DnS model over gRPC, next to the same work in process.

The three DnS networks at the paper's sizes (random weights: speed does not depend on them) are
exported with ``serving.export`` and served by the embedded TF Serving server on loopback. For the
``index`` signature (one video of ``--frames`` frames per request) and ``fine_similarity`` (one
query against ``--targets`` targets per request), ``C`` = 1, 4 and 16 clients (threads, one gRPC
channel each) send requests back to back for ``--seconds``; the in-process rate is the same
SavedModel signature called directly from ``C`` threads (the same work without gRPC, protos or
the server's checks). Both are measured in ``--rounds`` alternating slices, so load from other
processes hits them alike. Requests are built once: the numbers are the server's, not the
client's.
Target: at 16 clients, gRPC throughput >= 80% of in process, and no errors.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any

import numpy as np


CLIENTS = (1, 4, 16)
TARGET_RATIO = 0.8


def _percentile_ms(latencies: list[float], q: float) -> float:
    return round(1000.0 * float(np.percentile(latencies, q)), 2) if latencies else float("nan")


def _drive(clients: int, seconds: float, call) -> tuple[list[float], int, float]:
    """Runs ``call(client_number)`` back to back from ``clients`` threads for ``seconds``.

    Returns:
        ``(latencies of the completed calls, failed calls, elapsed seconds)``.
    """
    latencies = [[] for _ in range(clients)]
    errors = [0] * clients
    start_line = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(number: int) -> None:
        start_line.wait()
        while time.perf_counter() < stop_at[0]:
            started = time.perf_counter()
            try:
                call(number)
            except Exception:  # counted: the benchmark reports errors instead of dying
                errors[number] += 1
                continue
            latencies[number].append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    begin = time.perf_counter()
    start_line.wait()
    for thread in threads:
        thread.join()
    return [x for per_client in latencies for x in per_client], sum(errors), \
        time.perf_counter() - begin


def _compare(clients: int, seconds: float, rounds: int, paths: dict) -> dict[str, Any]:
    """Measures each path in ``rounds`` alternating slices (load from other processes then hits
    both alike) and sums them: requests/s, p50/p99 latency, errors per path."""
    totals = {name: ([], 0, 0.0) for name in paths}
    names = list(paths)
    for round_number in range(rounds):
        for name in names if round_number % 2 == 0 else names[::-1]:
            latencies, errors, elapsed = _drive(clients, seconds / rounds, paths[name])
            done, failed, spent = totals[name]
            totals[name] = (done + latencies, failed + errors, spent + elapsed)
    result = {name: {"requests": len(done), "rps": round(len(done) / spent, 2),
                     "p50_ms": _percentile_ms(done, 50), "p99_ms": _percentile_ms(done, 99),
                     "errors": failed}
              for name, (done, failed, spent) in totals.items()}
    base = result["in_process"]["rps"]
    result["ratio"] = round(result["grpc"]["rps"] / base, 3) if base else None
    return result


def _workloads(rng, frames: int, targets: int, fine_dtype) -> dict[str, dict[str, np.ndarray]]:
    features = rng.standard_normal((1, frames, 9, 512)).astype(np.float32)
    fine_size = 64 if fine_dtype == np.uint8 else 512
    if fine_dtype == np.uint8:
        stored = rng.integers(0, 256, (1 + targets, frames, 9, fine_size), dtype=np.uint8)
    else:
        stored = rng.standard_normal((1 + targets, frames, 9, fine_size)).astype(np.float16)
    return {
        "index": {"features": features, "lengths": np.array([frames], np.int32)},
        "fine_similarity": {"query": stored[:1], "query_length": np.array([frames], np.int32),
                            "targets": stored[None, 1:],
                            "target_lengths": np.full((1, targets), frames, np.int32)},
    }


def run_serve_benchmark(frames: int = 32, targets: int = 16, seconds: float = 6.0,
                        rounds: int = 3, clients: tuple[int, ...] = CLIENTS,
                        fine: str = "binarization", max_workers: int | None = None,
                        seed: int = 0) -> dict[str, Any]:
    """Exports the DnS networks, serves them on loopback, and measures both paths.

    Args:
        frames: frames of every video (indexed videos, query and targets).
        targets: targets per ``fine_similarity`` request.
        seconds: how long each (signature, clients, path) measurement runs in all.
        rounds: slices each measurement is cut into, alternating gRPC and in process.
        clients: the numbers of concurrent clients.
        fine: ``"binarization"`` (packed codes) or ``"attention"`` (float16) fine student.
        max_workers: the server's gRPC threads (default: the server's).
        seed: inputs and weights.

    Returns:
        Settings and, per signature and number of clients, requests/s, p50/p99 latency and errors
        over gRPC and in process, and their ratio.
    """
    import grpc
    import keras
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from dns_tf.models import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork
    from serving.export import export_models
    from serving.server import ModelServer

    keras.utils.set_random_seed(seed)
    fine_student = FineGrainedStudent(binarization=fine == "binarization",
                                      attention=fine == "attention")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="dns-tf-bench-serve-") as root:
        start = time.perf_counter()
        exported = export_models(root, CoarseGrainedStudent(), fine_student, SelectorNetwork())
        export_s = time.perf_counter() - start
        fine_dtype = np.uint8 if fine == "binarization" else np.float16
        workloads = _workloads(rng, frames, targets, fine_dtype)
        signatures = tf.saved_model.load(str(exported.models["dns"])).signatures

        results = {}
        with ModelServer(exported.models_config, max_workers=max_workers) as server:
            channels = [grpc.insecure_channel(f"127.0.0.1:{server.port}")
                        for _ in range(max(clients))]
            stubs = [prediction_service_pb2_grpc.PredictionServiceStub(c) for c in channels]
            try:
                for signature, inputs in workloads.items():
                    request = predict_pb2.PredictRequest()
                    request.model_spec.name = "dns"
                    request.model_spec.signature_name = signature
                    for name, value in inputs.items():
                        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
                    tensors = {name: tf.constant(value) for name, value in inputs.items()}
                    function = signatures[signature]

                    def in_process(_, function=function, tensors=tensors):
                        function(**tensors)

                    def remote(number, request=request):
                        stubs[number].Predict(request, timeout=60)

                    for warm_up in (in_process, remote):  # traces, connections, caches
                        _drive(1, min(1.0, seconds), warm_up)
                    per_clients = {str(count): _compare(count, seconds, rounds,
                                                        {"grpc": remote, "in_process": in_process})
                                   for count in clients}
                    results[signature] = per_clients
            finally:
                for channel in channels:
                    channel.close()
    most = str(max(clients))
    met = all(results[s][most]["ratio"] is not None and results[s][most]["ratio"] >= TARGET_RATIO
              and results[s][most]["grpc"]["errors"] == 0 for s in results)
    return {"benchmark": "serve", "fine": fine, "frames": frames, "targets": targets,
            "seconds": seconds, "rounds": rounds, "cpus": os.cpu_count(), "export_s": round(export_s, 2),
            "results": results,
            "target": f"grpc >= {TARGET_RATIO:.0%} of in-process requests/s at {most} clients, "
                      f"no errors", "target_met": met}


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, default=32, help="frames per video")
    parser.add_argument("--targets", type=int, default=16, help="targets per fine_similarity "
                                                                "request")
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating slices per measurement")
    parser.add_argument("--fine", choices=("binarization", "attention"), default="binarization",
                        help="fine-grained student exported")
    parser.add_argument("--max-workers", type=int, default=None, help="server gRPC threads")


def measure(args) -> dict[str, Any]:
    settings = dict(frames=args.frames, targets=args.targets, seconds=args.seconds,
                    rounds=args.rounds, fine=args.fine, max_workers=args.max_workers)
    if args.quick:
        settings.update(frames=min(args.frames, 16), targets=min(args.targets, 8),
                        seconds=min(args.seconds, 2.0), rounds=min(args.rounds, 2))
    return run_serve_benchmark(**settings)
