"""Coarse retrieval: ScaNN vs exact search, queries/s one query at a time and recall@k.

The collection is ``n`` unit vectors ``[n, dims]`` drawn around ``centres`` random unit centres
(``normalize(centre + spread * noise / sqrt(dims))``), the queries are fresh draws of the same
process. Recall@k is the share of the exact top-k that ScaNN returns; exact search is the index's
own brute force (one matrix-vector product per query). Targets: ScaNN >= 20x the queries/s of
exact search at recall@100 >= 0.95 on 1M 1024-d vectors.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from dns_tf.index.coarse import BruteForceSearcher, CoarseConfig, ScannSearcher

_CHUNK = 65_536


def clustered_unit_vectors(n: int, dims: int, centres: np.ndarray, spread: float,
                           rng: np.random.Generator, out: np.ndarray | None = None) -> np.ndarray:
    """``[n, dims]`` float32 unit vectors around random rows of ``centres [C, dims]``, generated
    ``_CHUNK`` rows at a time into ``out`` (so 1M x 1024 needs no float64 temporaries of 8 GB)."""
    out = np.empty((n, dims), np.float32) if out is None else out
    for start in range(0, n, _CHUNK):
        size = min(_CHUNK, n - start)
        chunk = centres[rng.integers(0, len(centres), size)]
        chunk += rng.standard_normal((size, dims), dtype=np.float32) * (spread / np.sqrt(dims))
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        out[start:start + size] = chunk
    return out


def exact_top_k(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k row indices ``[Q, k]`` by inner product, scanning ``database`` in chunks."""
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), k), np.int64)
    for start in tqdm(range(0, len(database), _CHUNK), desc="exact top-k", leave=False):
        scores = np.concatenate([best_scores, queries @ database[start:start + _CHUNK].T], axis=1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        # Columns below k are the running best, the others rows of this chunk.
        previous = np.take_along_axis(best_rows, np.minimum(top, k - 1), axis=1)
        best_rows = np.where(top < k, previous, start + top - k)
        best_scores = np.take_along_axis(scores, top, axis=1)
    return best_rows


def _one_at_a_time(search, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """Runs ``search`` on each query alone: ``(queries per second, keys [Q, k])``."""
    search(queries[:1])  # warm-up
    found = []
    start = time.perf_counter()
    for query in queries:
        found.append(search(query[None])[1][0])
    return len(queries) / (time.perf_counter() - start), np.stack(found)


def run_coarse_benchmark(n: int = 1_000_000, dims: int = 1024, centres: int = 1000,
                         queries: int = 1000, exact_queries: int = 20, k: int = 100,
                         spread: float = 1.0, seed: int = 0,
                         config: CoarseConfig | None = None) -> dict[str, Any]:
    """Builds ScaNN over the synthetic collection and measures it against exact search.

    Args:
        n, dims, centres: the collection, ``[n, dims]`` around ``centres`` centres.
        queries: queries for ScaNN's queries/s and recall.
        exact_queries: queries timed for exact search (each reads the whole collection).
        k: neighbours per query.
        spread: noise norm relative to the centre's (1.0: cosine ~0.7 to the centre).
        config: the ScaNN settings (default: the index's :class:`CoarseConfig`).

    Returns:
        A dict of the settings and measurements (queries/s, speed-up, recall@k, build seconds).
    """
    config = config or CoarseConfig()
    rng = np.random.default_rng(seed)
    centre_vectors = rng.standard_normal((centres, dims), dtype=np.float32)
    centre_vectors /= np.linalg.norm(centre_vectors, axis=1, keepdims=True)
    start = time.perf_counter()
    database = clustered_unit_vectors(n, dims, centre_vectors, spread, rng)
    query_vectors = clustered_unit_vectors(queries, dims, centre_vectors, spread, rng)
    generate_s = time.perf_counter() - start
    truth = exact_top_k(database, query_vectors, k)

    keys = np.arange(n, dtype=np.int64)
    exact = BruteForceSearcher(database, keys)
    exact_qps, _ = _one_at_a_time(lambda q: exact.search(q, k), query_vectors[:exact_queries])

    start = time.perf_counter()
    scann = ScannSearcher.build(database, keys, config, num_neighbors=k)
    build_s = time.perf_counter() - start
    scann_qps, found = _one_at_a_time(lambda q: scann.search(q, k), query_vectors)
    recall = np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth)])
    return {
        "benchmark": "coarse",
        "n": n, "dims": dims, "centres": centres, "spread": spread, "k": k,
        "queries": queries, "exact_queries": exact_queries,
        "scann_config": {**dataclasses.asdict(config), "num_leaves": scann.num_leaves,
                         "leaves_to_search": config.leaves_to_search(scann.num_leaves)},
        "generate_s": round(generate_s, 2),
        "build_s": round(build_s, 2),
        "exact_qps": round(exact_qps, 2),
        "scann_qps": round(scann_qps, 2),
        "speedup": round(scann_qps / exact_qps, 2),
        f"recall_at_{k}": round(float(recall), 4),
    }


def add_arguments(parser) -> None:
    parser.add_argument("--n", type=int, default=1_000_000, help="collection size")
    parser.add_argument("--dims", type=int, default=1024, help="vector size")
    parser.add_argument("--centres", type=int, default=1000, help="cluster centres")
    parser.add_argument("--queries", type=int, default=1000, help="ScaNN queries (recall, speed)")
    parser.add_argument("--exact-queries", type=int, default=20, help="exact-search queries timed")
    parser.add_argument("--k", type=int, default=100, help="neighbours per query")


def measure(args) -> dict[str, Any]:
    sizes = dict(n=args.n, dims=args.dims, centres=args.centres, queries=args.queries,
                 exact_queries=args.exact_queries, k=args.k)
    if args.quick:  # 20x smaller, same vectors per centre
        quick_n = min(args.n, 50_000)
        sizes.update(n=quick_n, centres=max(1, args.centres * quick_n // args.n),
                     queries=min(args.queries, 200))
    return run_coarse_benchmark(**sizes)
