"""Serving: fine re-ranking over gRPC against the in-process fast path (``LocalBackend``).

The DnS networks at the paper's sizes (random weights: speed does not depend on them) are
exported with ``serving.export``, an index of ``--targets`` videos of ``--frames`` frames is
exported as a resident fine store (``serving.resident_store``), and both are served by the
embedded TF Serving server on loopback with the export's batching parameters, as deployed
(``--no-batching``: each request runs alone). Two
workloads, one query against the ``--targets`` videos per request:

* ``fine_similarity``: the targets' representations shipped in the request (the ``dns`` model's
  ``fine_similarity`` signature; the request is built once, so the numbers are the server's);
* ``rerank``: what ``DnSRetriever`` does with a ``RemoteBackend``: the query's representation and
  the candidates' row keys (8 bytes each) to the resident store.

The in-process rate is the product's in-process path for the same work: ``LocalBackend``
(``FastFineSimilarity``) on the targets, read from the index for ``rerank``. ``C`` = 1, 4 and 16
clients (threads, one gRPC channel each) send requests back to back; each path is measured in
``--rounds`` alternating slices, so load from other processes hits them alike (load averages are
reported with the numbers).
Target: at 16 clients, gRPC pairs/s >= 80% of in process, and no errors.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from typing import Any

import numpy as np

from dns_tf.bench.registry import machine_load

CLIENTS = (1, 4, 16)
TARGET_RATIO = 0.8
# Request deadline: throughput is measured, not deadlines (a loaded machine takes minutes).
DEADLINE_S = 900.0


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


def _compare(clients: int, seconds: float, rounds: int, pairs: int, request_bytes: int,
             paths: dict) -> dict[str, Any]:
    """Measures each path in ``rounds`` alternating slices (load from other processes then hits
    both alike) and sums them: pairs/s, p50/p99 latency and errors per path."""
    totals = {name: ([], 0, 0.0) for name in paths}
    names = list(paths)
    for round_number in range(rounds):
        for name in names if round_number % 2 == 0 else names[::-1]:
            latencies, errors, elapsed = _drive(clients, seconds / rounds, paths[name])
            done, failed, spent = totals[name]
            totals[name] = (done + latencies, failed + errors, spent + elapsed)
    result = {name: {"pairs_per_s": round(pairs * len(done) / spent, 1),
                     "p50_ms": _percentile_ms(done, 50), "p99_ms": _percentile_ms(done, 99),
                     "errors": failed}
              for name, (done, failed, spent) in totals.items()}
    result["grpc"]["request_bytes_per_pair"] = round(request_bytes / pairs, 1)
    base = result["in_process"]["pairs_per_s"]
    result["ratio"] = round(result["grpc"]["pairs_per_s"] / base, 3) if base else None
    return result


def _stored_videos(rng, count: int, frames: int, binarization: bool) -> list[np.ndarray]:
    """Random fine representations in their stored form: packed codes or float16 features."""
    if binarization:
        return list(rng.integers(0, 256, (count, frames, 9, 64), dtype=np.uint8))
    return list(rng.standard_normal((count, frames, 9, 512)).astype(np.float16))


def run_serve_benchmark(frames: int = 60, targets: int = 64, seconds: float = 6.0,
                        rounds: int = 3, clients: tuple[int, ...] = CLIENTS,
                        fine: str = "binarization", max_workers: int | None = None,
                        enable_batching: bool = True, seed: int = 0) -> dict[str, Any]:
    """Exports the networks and a resident store, serves them on loopback, measures both paths.

    Args:
        frames: frames of the query and of every target.
        targets: targets per request (the videos of the index).
        seconds: how long each (workload, clients, path) measurement runs in all.
        rounds: slices each measurement is cut into, alternating gRPC and in process.
        clients: the numbers of concurrent clients.
        fine: ``"binarization"`` (packed codes) or ``"attention"`` (float16) fine student.
        max_workers: the server's gRPC threads (default: the server's).
        enable_batching: merge concurrent requests in the server (the export's batching file).
        seed: inputs and weights.

    Returns:
        Settings, load averages and, per workload and number of clients, pairs/s, request bytes
        per pair, p50/p99 latency and errors over gRPC, pairs/s in process, and their ratio.
    """
    import grpc
    import keras
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from dns_tf.index.store import VideoIndex
    from dns_tf.models import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork
    from dns_tf.retrieval import DnSRetriever, LocalBackend, index_metadata
    from serving.client import RemoteBackend
    from serving.export import DNS_MODEL, export_models
    from serving.resident_store import RERANK_SIGNATURE, STORE_MODEL, export_store
    from serving.server import ModelServer

    keras.utils.set_random_seed(seed)
    binarization = fine == "binarization"
    networks = (CoarseGrainedStudent(), FineGrainedStudent(binarization=binarization,
                                                           attention=not binarization),
                SelectorNetwork())
    local = LocalBackend(*networks)
    rng = np.random.default_rng(seed)
    query, *stored = _stored_videos(rng, 1 + targets, frames, binarization)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dns-tf-bench-serve-") as root:
        start = time.perf_counter()
        exported = export_models(os.path.join(root, "export"), *networks)
        export_s = time.perf_counter() - start
        ids = [f"v{number}" for number in range(targets)]
        index = VideoIndex.create(os.path.join(root, "videos.idx"), coarse_dims=128,
                                  fine_kind=local.fine_kind, fine_shape_tail=local.fine_shape_tail,
                                  metadata=index_metadata(local))
        index.add_many(ids, rng.standard_normal((targets, 128)).astype(np.float32), stored,
                       rng.random(targets))
        export_store(os.path.join(root, "export"), index, networks[1])

        request = predict_pb2.PredictRequest()
        request.model_spec.name = DNS_MODEL
        request.model_spec.signature_name = "fine_similarity"
        for name, value in {"query": query[None], "query_length": np.array([frames], np.int32),
                            "targets": np.stack(stored)[None],
                            "target_lengths": np.full((1, targets), frames, np.int32)}.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        fine_bytes = request.ByteSize()
        in_process = DnSRetriever(index, local)

        results = {}
        batching = ({"enable_batching": True, "batching_parameters_file":
                     str(exported.batching_parameters)} if enable_batching else {})
        with ModelServer(exported.models_config, max_workers=max_workers,
                         xla_cpu_compilation_enabled=True, **batching) as server:
            target = f"127.0.0.1:{server.port}"
            channels = [grpc.insecure_channel(target) for _ in range(max(clients))]
            stubs = [prediction_service_pb2_grpc.PredictionServiceStub(c) for c in channels]
            remotes = [DnSRetriever(index, RemoteBackend(target, timeout=DEADLINE_S,
                                                         targets_per_request=targets))
                       for _ in range(max(clients))]
            try:
                # The query and the candidates' keys: what a resident-store request carries.
                rerank_request = predict_pb2.PredictRequest()
                rerank_request.model_spec.name = STORE_MODEL
                rerank_request.model_spec.signature_name = RERANK_SIGNATURE
                for name, value in {"query": query[None],
                                    "query_length": np.array([frames], np.int32),
                                    "keys": index.keys(ids)[None]}.items():
                    rerank_request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
                rerank_bytes = rerank_request.ByteSize()
                workloads = {
                    "fine_similarity": (fine_bytes,
                                        lambda number: stubs[number].Predict(
                                            request, timeout=DEADLINE_S),
                                        lambda _: local.fine_similarity(query, stored)),
                    "rerank": (rerank_bytes,
                               lambda number: remotes[number].fine_scores(query, ids),
                               lambda _: in_process.fine_scores(query, ids)),
                }
                for workload, (request_bytes, remote, local_call) in workloads.items():
                    for warm_up in (local_call, remote):  # traces, compilations, connections
                        _drive(1, min(2.0, seconds), warm_up)
                    if workload == "rerank" and not remotes[0].backend.store_for(index):
                        raise RuntimeError("the server's resident store was not used")
                    results[workload] = {
                        str(count): _compare(count, seconds, rounds, targets, request_bytes,
                                             {"grpc": remote, "in_process": local_call})
                        for count in clients}
            finally:
                for channel in channels:
                    channel.close()
                for remote in remotes:
                    remote.backend.close()
        index.close()
    most = str(max(clients))
    ratios = {workload: results[workload][most]["ratio"] for workload in results}
    errors = sum(entry["grpc"]["errors"] + entry["in_process"]["errors"]
                 for per_clients in results.values() for entry in per_clients.values())
    met = (errors == 0 and ratios["rerank"] is not None and ratios["rerank"] >= TARGET_RATIO
           and (not binarization or ratios["fine_similarity"] >= TARGET_RATIO))
    return {"benchmark": "serve", "fine": fine, "frames": frames, "targets": targets,
            "seconds": seconds, "rounds": rounds, "enable_batching": enable_batching,
            "export_s": round(export_s, 2), **machine_load(load_before),
            "results": results,
            "target": f"grpc >= {TARGET_RATIO:.0%} of in-process pairs/s at {most} clients for "
                      f"rerank (and fine_similarity with binarization), no errors",
            "target_met": met}


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, default=60, help="frames per video")
    parser.add_argument("--targets", type=int, default=64, help="targets per request (videos "
                                                                "in the index)")
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating slices per measurement")
    parser.add_argument("--fine", choices=("binarization", "attention"), default="binarization",
                        help="fine-grained student exported")
    parser.add_argument("--max-workers", type=int, default=None, help="server gRPC threads")
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                        help="merge concurrent requests in the server with the export's "
                             "batching_parameters.txt, as deployed (default: on)")


def measure(args) -> dict[str, Any]:
    settings = dict(frames=args.frames, targets=args.targets, seconds=args.seconds,
                    rounds=args.rounds, fine=args.fine, max_workers=args.max_workers,
                    enable_batching=args.batching)
    if args.quick:
        settings.update(frames=min(args.frames, 16), targets=min(args.targets, 8),
                        seconds=min(args.seconds, 2.0), rounds=min(args.rounds, 2))
    return run_serve_benchmark(**settings)
