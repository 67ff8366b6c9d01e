"""Coarse retrieval: top-k maximum inner product search over the videos' coarse vectors ``[Dc]``.

Every searcher answers the same two questions, so brute force and ScaNN are interchangeable (the
shape of ``tfrs.layers.factorized_top_k``):

* ``search(queries [Q, D], k) -> (scores [Q, k], keys [Q, k])``, best first;
* ``scores_all(queries [Q, D]) -> scores [Q, N]``, exact, in the order of ``searcher.keys``.

Vectors are identified by int64 *keys* (the index's row keys, never reused). When fewer than ``k``
vectors exist the result has ``len(searcher)`` columns. :func:`build_searcher` picks the searcher
for a collection's size: exact brute force below ``CoarseConfig.brute_force_below`` vectors, ScaNN
(k-means partitioning into ~sqrt(N) leaves, anisotropic asymmetric hashing, exact float32
re-ordering) above. :class:`MergedSearcher` puts a built searcher together with the exact "delta" of
vectors added since it was built and drops removed keys, which is how a :class:`VideoIndex` serves
new videos at once.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
from typing import Any

import numpy as np

from dns_tf.flags import field

_QUERY_CHUNK = 256        # queries scored together by brute force; bounds the [Q, N] block
_ROW_CHUNK = 65_536       # database rows read at a time by exact whole-collection scoring


@dataclasses.dataclass(frozen=True)
class CoarseConfig:
    """How coarse vectors are searched.

    The ScaNN settings come from ``dns-tf bench coarse`` (1M unit vectors [1024] around 1000
    centres, 1000 leaves): searching 10 leaves gave recall@100 0.957 re-ordering 300 candidates and
    0.995 re-ordering 500, at ~1000 queries/s against 5.5 for exact search. The defaults search
    2% of the leaves (20 of 1000) and re-order 500, a margin for collections less clustered than
    the benchmark's.
    """

    brute_force_below: int = field(20_000, "collections smaller than this are searched exactly")
    leaves_per_sqrt_n: float = field(1.0, "ScaNN partitions: this many times sqrt(N) leaves")
    leaves_to_search_fraction: float = field(0.02, "fraction of ScaNN leaves searched per query")
    min_leaves_to_search: int = field(16, "search at least this many ScaNN leaves")
    dims_per_block: int = field(2, "ScaNN asymmetric hashing: dimensions per 4-bit code")
    anisotropic_quantization_threshold: float = field(
        0.2, "ScaNN anisotropic (score-aware) quantization threshold")
    reorder_num_neighbors: int = field(
        500, "candidates re-scored exactly in float32 (at least 2k are)")
    training_sample_size: int = field(250_000, "vectors sampled to train ScaNN's k-means and codes")
    rebuild_min_delta: int = field(2_048, "rebuild once the delta and removals pass this size ...")
    rebuild_delta_fraction: float = field(0.1, "... and this fraction of the built collection")

    def num_leaves(self, num_vectors: int) -> int:
        return max(2, min(num_vectors // 8, round(self.leaves_per_sqrt_n * math.sqrt(num_vectors))))

    def leaves_to_search(self, num_leaves: int) -> int:
        wanted = max(self.min_leaves_to_search, round(self.leaves_to_search_fraction * num_leaves))
        return min(num_leaves, wanted)

    def needs_rebuild(self, built_size: int, pending: int) -> bool:
        """Whether ``pending`` changes (delta vectors + removed keys) warrant a rebuild."""
        return pending > max(self.rebuild_min_delta, self.rebuild_delta_fraction * built_size)


def as_queries(queries: Any, dims: int) -> np.ndarray:
    """Queries as contiguous float32 ``[Q, dims]`` (a single ``[dims]`` query becomes ``[1, dims]``)."""
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None]
    if queries.ndim != 2 or queries.shape[1] != dims:
        raise ValueError(f"queries must have shape [Q, {dims}] or [{dims}], got {queries.shape}")
    return np.ascontiguousarray(queries)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the ``k`` largest scores of each row, best first."""
    k = min(k, scores.shape[1])
    if k == 0:
        return np.zeros((scores.shape[0], 0), np.int64), np.zeros((scores.shape[0], 0), np.float32)
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


class CoarseSearcher(abc.ABC):
    """Maximum inner product search over ``[N, D]`` vectors identified by int64 ``keys [N]``."""

    keys: np.ndarray
    dims: int

    def __len__(self) -> int:
        return len(self.keys)

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product: ``(scores [Q, k'], keys [Q, k'])``, ``k' = min(k, N)``."""

    @abc.abstractmethod
    def scores_all(self, queries: np.ndarray) -> np.ndarray:
        """Exact inner products with every vector: ``[Q, N]``, columns in ``self.keys`` order."""


class BruteForceSearcher(CoarseSearcher):
    """Exact search by matrix product.

    Args:
        vectors: ``[N, D]`` float32 (kept by reference, not copied).
        keys: ``[N]`` int64.
    """

    def __init__(self, vectors: np.ndarray, keys: np.ndarray):
        if vectors.ndim != 2 or len(vectors) != len(keys):
            raise ValueError(f"vectors [N, D] and keys [N] disagree: {vectors.shape} vs "
                             f"{np.shape(keys)}")
        self.vectors = vectors
        self.keys = np.asarray(keys, dtype=np.int64)
        self.dims = vectors.shape[1]

    def search(self, queries, k):
        queries = as_queries(queries, self.dims)
        k = min(int(k), len(self))
        all_scores = np.empty((len(queries), k), np.float32)
        all_keys = np.empty((len(queries), k), np.int64)
        for start in range(0, len(queries), _QUERY_CHUNK):
            block = queries[start:start + _QUERY_CHUNK] @ self.vectors.T
            columns, scores = top_k(block, k)
            all_scores[start:start + len(block)] = scores
            all_keys[start:start + len(block)] = self.keys[columns]
        return all_scores, all_keys

    def scores_all(self, queries):
        return as_queries(queries, self.dims) @ self.vectors.T


class RowsView:
    """Rows ``rows`` of a (memory-mapped) matrix, read a slice at a time: ``view[a:b]`` gathers
    ``matrix[rows[a:b]]``, so exact scoring over a big store never copies all of it."""

    def __init__(self, matrix: np.ndarray, rows: np.ndarray):
        self.matrix = matrix
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), matrix.shape[1])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: slice) -> np.ndarray:
        return np.asarray(self.matrix[self.rows[item]], dtype=np.float32)


def exact_scores(queries: np.ndarray, vectors) -> np.ndarray:
    """``queries [Q, D] @ vectors[N, D].T`` reading ``vectors`` (array or RowsView) in chunks."""
    out = np.empty((len(queries), len(vectors)), np.float32)
    for start in range(0, len(vectors), _ROW_CHUNK):
        chunk = np.asarray(vectors[start:start + _ROW_CHUNK], dtype=np.float32)
        out[:, start:start + len(chunk)] = queries @ chunk.T
    return out


class ScannSearcher(CoarseSearcher):
    """ScaNN: partitioning + anisotropic asymmetric hashing + exact float32 re-ordering.

    Build with :meth:`build`; :meth:`save` / :meth:`load` keep the trained searcher in a directory
    (ScaNN's own serialization plus ``keys.npy``). ``vectors`` (an array or :class:`RowsView` of the
    same rows) serves :meth:`scores_all` and the rare query whose searched leaves hold fewer than
    ``k`` vectors, which falls back to exact scoring so that every query gets ``min(k, N)`` results.
    """

    def __init__(self, scann_searcher, keys: np.ndarray, vectors, config: CoarseConfig,
                 num_leaves: int):
        self._scann = scann_searcher
        self.keys = np.asarray(keys, dtype=np.int64)
        self.vectors = vectors
        self.dims = vectors.shape[1]
        self.config = config
        self.num_leaves = num_leaves
        if len(vectors) != len(self.keys):
            raise ValueError(f"{len(vectors)} vectors for {len(self.keys)} keys")

    @staticmethod
    def _module():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # ScaNN loads only when an index uses it: its native library is large.
        from scann.scann_ops.py import scann_ops_pybind
        return scann_ops_pybind

    @classmethod
    def build(cls, vectors: np.ndarray, keys: np.ndarray, config: CoarseConfig,
              num_neighbors: int = 100) -> "ScannSearcher":
        """Trains a searcher on ``vectors [N, D]`` (array or :class:`RowsView`, N of at least a few
        hundred). ScaNN keeps its own copy; the searcher holds ``vectors`` as given."""
        data = np.ascontiguousarray(vectors[0:len(keys)], dtype=np.float32)
        num_leaves = config.num_leaves(len(data))
        builder = cls._module().builder(data, num_neighbors, "dot_product")
        searcher = (
            builder
            .tree(num_leaves=num_leaves,
                  num_leaves_to_search=config.leaves_to_search(num_leaves),
                  training_sample_size=min(len(data), config.training_sample_size))
            .score_ah(config.dims_per_block,
                      anisotropic_quantization_threshold=config.anisotropic_quantization_threshold,
                      training_sample_size=min(len(data), config.training_sample_size))
            .reorder(max(config.reorder_num_neighbors, num_neighbors))
            .build())
        return cls(searcher, keys, vectors, config, num_leaves)

    def save(self, directory: str) -> None:
        """Writes ScaNN's artifacts and ``keys.npy`` into the existing, empty ``directory``."""
        self._scann.serialize(directory, relative_path=True)
        np.save(os.path.join(directory, "keys.npy"), self.keys)
        with open(os.path.join(directory, "num_leaves"), "w") as f:
            f.write(str(self.num_leaves))

    @classmethod
    def load(cls, directory: str, vectors, config: CoarseConfig) -> "ScannSearcher":
        """Loads :meth:`save`'s artifacts; ``vectors`` must hold the rows of ``keys.npy``."""
        keys = np.load(os.path.join(directory, "keys.npy"))
        with open(os.path.join(directory, "num_leaves")) as f:
            num_leaves = int(f.read())
        searcher = cls._module().load_searcher(directory, assets_backcompat_shim=False)
        return cls(searcher, keys, vectors, config, num_leaves)

    def search(self, queries, k, leaves_to_search: int | None = None,
               reorder_num_neighbors: int | None = None):
        """Approximate top ``k``; ``leaves_to_search`` / ``reorder_num_neighbors`` override the
        configured search effort for this call."""
        queries = as_queries(queries, self.dims)
        k = min(int(k), len(self))
        leaves = leaves_to_search or self.config.leaves_to_search(self.num_leaves)
        reorder = max(reorder_num_neighbors or self.config.reorder_num_neighbors, 2 * k)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        keys = np.full((len(queries), k), -1, np.int64)
        if k == 0:
            return scores, keys
        if len(queries) == 1:  # the one-query path skips the batching machinery
            index, distance = self._scann.search(queries[0], k, reorder, leaves)
            index, distance = index[None], distance[None]
        else:
            index, distance = self._scann.search_batched(queries, k, reorder, leaves)
        found = np.isfinite(distance)  # search_batched pads missing results with NaN
        width = index.shape[1]
        scores[:, :width] = np.where(found, distance, -np.inf)
        keys[:, :width] = np.where(found, self.keys[index.astype(np.int64)], -1)
        short = np.flatnonzero(np.any(keys < 0, axis=1))
        if len(short):
            columns, exact = top_k(exact_scores(queries[short], self.vectors), k)
            scores[short], keys[short] = exact, self.keys[columns]
        return scores, keys

    def scores_all(self, queries):
        return exact_scores(as_queries(queries, self.dims), self.vectors)


def build_searcher(vectors, keys: np.ndarray, config: CoarseConfig) -> CoarseSearcher:
    """The searcher sized to the collection: brute force below ``config.brute_force_below``
    vectors, ScaNN above. ``vectors`` is ``[N, D]`` (array or :class:`RowsView`)."""
    if len(keys) < config.brute_force_below:
        return BruteForceSearcher(np.ascontiguousarray(vectors[0:len(keys)], np.float32), keys)
    return ScannSearcher.build(vectors, keys, config)


class MergedSearcher(CoarseSearcher):
    """A built searcher plus an exact delta of newer vectors, minus removed keys.

    Args:
        base: the searcher built at the last rebuild.
        delta: exact searcher over vectors added since (keys absent from ``base``).
        removed: keys of ``base`` removed since it was built; never returned.
    """

    def __init__(self, base: CoarseSearcher, delta: BruteForceSearcher, removed: np.ndarray):
        if len(delta) and delta.dims != base.dims:
            raise ValueError(f"delta has {delta.dims} dims, base {base.dims}")
        self.base = base
        self.delta = delta
        self.dims = base.dims
        self.removed = np.asarray(removed, dtype=np.int64)
        self._base_alive = ~np.isin(base.keys, self.removed) if len(self.removed) else None
        base_keys = base.keys if self._base_alive is None else base.keys[self._base_alive]
        self.keys = np.concatenate([base_keys, delta.keys])

    def search(self, queries, k):
        queries = as_queries(queries, self.dims)
        k = min(int(k), len(self))
        # Ask the base for enough extra results that filtering the removed keys leaves k.
        base_scores, base_keys = self.base.search(queries, k + len(self.removed))
        if len(self.removed):
            gone = np.isin(base_keys, self.removed)
            base_scores = np.where(gone, -np.inf, base_scores)
            base_keys = np.where(gone, -1, base_keys)
        if len(self.delta):
            delta_scores, delta_keys = self.delta.search(queries, k)
            base_scores = np.concatenate([base_scores, delta_scores], axis=1)
            base_keys = np.concatenate([base_keys, delta_keys], axis=1)
        columns, scores = top_k(base_scores, k)
        return scores, np.take_along_axis(base_keys, columns, axis=1)

    def scores_all(self, queries):
        queries = as_queries(queries, self.dims)
        base = self.base.scores_all(queries)
        if self._base_alive is not None:
            base = base[:, self._base_alive]
        if not len(self.delta):
            return base
        return np.concatenate([base, self.delta.scores_all(queries)], axis=1)
