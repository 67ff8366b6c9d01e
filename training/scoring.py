"""Scoring video pairs with a trained network: the teacher or either student.

The pairs labeller and the validation callbacks both need "similarity of query q to targets
t1..tn" from whichever network they are given. :class:`PairScorer` hides the difference:

* fine-grained networks (:class:`~dns_tf.models.ViSiLTeacher`,
  :class:`~dns_tf.models.FineGrainedStudent`): the query and a batch of targets of one length are
  indexed and compared by one compiled function (``[1, Tq, R, D]`` against ``[B, T, R, D]``), so
  every pair scores what it scores alone (as search and the authors' evaluation compare it: the
  comparator's poolings depend on padding); nothing is cached, so memory stays bounded by one
  batch whatever the collection's size;
* the coarse-grained student: each video is indexed once into its vector ``[Dc]`` (cached: 4 KB a
  video, until :meth:`PairScorer.clear`), and a pair's similarity is a dot product.

Similarities are the network's own outputs: ``[-1, 1]`` for ViSiL and fine students, the dot
product of unit vectors for the coarse student (trained towards ``s / 2 + 0.5``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from dns_tf.data.augment import truncate
from dns_tf.data.padding import padded_batch_from_arrays
from dns_tf.evaluation.datasets import RetrievalDataset
from dns_tf.evaluation.similarities import SimilarityMatrix
from dns_tf.models import CoarseGrainedStudent
from dns_tf.models.fine_grained import FineGrainedSimilarityModel


#: Videos read together and sorted by length before batching (a bound on memory).
_READ_CHUNK_BATCHES = 8


def read_video(features: Mapping, video_id: str, max_frames: int | None = None) -> np.ndarray:
    """Region features of one video as float32 ``[T, R, D]``, cut to ``max_frames``."""
    try:
        video = np.asarray(features[video_id], dtype=np.float32)
    except KeyError:
        raise KeyError(f"video {video_id!r} is not in the features") from None
    if video.ndim != 3 or len(video) == 0:
        raise ValueError(f"video {video_id!r} has shape {video.shape}, expected [T, R, D] with "
                         "T >= 1")
    return truncate(video, max_frames)


def length_batches(features: Mapping, video_ids: Sequence[str], batch_size: int,
                   max_frames: int | None = None, same_length: bool = False):
    """Yields ``(ids, videos [B, T, R, D], mask [B, T])`` over ``video_ids``, each video read once.

    Videos are read a few batches at a time and batched by similar length within those, so little
    work goes to padding and memory stays bounded. With ``same_length`` a batch only holds videos
    of one length (no padding at all): a network whose output depends on padding (the
    comparator's 2x2 poolings keep a last, partial window of a padded video that a video compared
    alone drops) then computes what it computes for each video alone, as search and the authors'
    evaluation do.
    """
    chunk = batch_size * _READ_CHUNK_BATCHES
    for start in range(0, len(video_ids), chunk):
        ids = list(video_ids[start:start + chunk])
        videos = [read_video(features, v, max_frames) for v in ids]
        lengths = np.array([len(v) for v in videos])
        order = np.argsort(lengths, kind="stable")
        runs = (np.split(order, np.flatnonzero(np.diff(lengths[order])) + 1) if same_length
                else [order])
        for run in runs:
            for first in range(0, len(run), batch_size):
                chosen = run[first:first + batch_size]
                padded, mask = padded_batch_from_arrays([videos[i] for i in chosen])
                yield [ids[i] for i in chosen], padded, mask


class PairScorer:
    """Similarities of query videos to target videos under one network.

    Args:
        model: a fine-grained network (teacher or fine student) or a coarse-grained student.
        features: Mapping video id -> region features ``[T, R, D]``.
        batch_size: target videos compared at once.
        max_frames: frames kept per video (the first ones); None keeps all.
    """

    def __init__(self, model, features: Mapping, batch_size: int = 32,
                 max_frames: int | None = None):
        if not isinstance(model, (FineGrainedSimilarityModel, CoarseGrainedStudent)):
            raise TypeError(f"cannot score pairs with a {type(model).__name__}; expected a "
                            "ViSiLTeacher, FineGrainedStudent or CoarseGrainedStudent")
        self.model = model
        self.features = features
        self.batch_size = batch_size
        self.max_frames = max_frames
        self.coarse = isinstance(model, CoarseGrainedStudent)
        self._vectors: dict[str, np.ndarray] = {}
        # One trace for every length and batch size.
        videos = tf.TensorSpec([None, None, None, None], tf.float32)
        masks = tf.TensorSpec([None, None], tf.float32)
        if self.coarse:
            self._index = tf.function(lambda videos, mask: model.index_video(videos, mask),
                                      input_signature=[videos, masks])
        else:
            self._compare = tf.function(self._fine_similarity,
                                        input_signature=[videos, masks, videos, masks])

    def _fine_similarity(self, query, query_mask, targets, target_mask):
        query = self.model.index_video(query, query_mask)
        targets = self.model.index_video(targets, target_mask)
        return self.model.calculate_video_similarity(query, targets, query_mask, target_mask)[0]

    def clear(self) -> None:
        """Forgets cached coarse vectors (after the network's weights changed)."""
        self._vectors.clear()

    def vectors(self, video_ids: Sequence[str]) -> np.ndarray:
        """Coarse student only: the unit vectors ``[N, Dc]`` of ``video_ids``."""
        missing = [v for v in dict.fromkeys(video_ids) if v not in self._vectors]
        for ids, videos, mask in length_batches(self.features, missing, self.batch_size,
                                                self.max_frames):
            self._vectors.update(zip(ids, np.asarray(self._index(videos, mask))))
        return np.stack([self._vectors[v] for v in video_ids])

    def score(self, query_id: str, target_ids: Sequence[str]) -> np.ndarray:
        """Similarities ``[len(target_ids)]`` float32 of one query to each target."""
        if len(target_ids) == 0:
            return np.zeros((0,), np.float32)
        if self.coarse:
            return self.vectors(target_ids) @ self.vectors([query_id])[0]
        query = read_video(self.features, query_id, self.max_frames)[None]
        query_mask = np.ones(query.shape[:2], np.float32)
        scores = dict.fromkeys(target_ids, 0.0)
        for ids, videos, mask in length_batches(self.features, list(scores), self.batch_size,
                                                self.max_frames, same_length=True):
            scores.update(zip(ids, np.asarray(self._compare(query, query_mask, videos, mask))))
        return np.array([scores[v] for v in target_ids], np.float32)

    def matrix(self, queries: Sequence[str], database: Sequence[str]) -> np.ndarray:
        """Similarities ``[len(queries), len(database)]`` float32."""
        if self.coarse:
            return self.vectors(queries) @ self.vectors(database).T
        return np.stack([self.score(q, database) for q in queries]) if queries else (
            np.zeros((0, len(database)), np.float32))


class BenchmarkEvaluator:
    """Retrieval metrics of a network on a benchmark, computed as often as asked (e.g. every few
    epochs while the network trains), over the videos present in ``features``.

    Args:
        model: the network being evaluated; its current weights are used at each call.
        features: Mapping video id -> ``[T, R, D]``.
        benchmark: a :class:`~dns_tf.synthetic.features.SyntheticCollection` or a
            :class:`~dns_tf.evaluation.datasets.RetrievalDataset` (FIVR, CC_WEB_VIDEO, ...):
            anything with ``queries``, ``database`` and ``evaluate``.
    """

    def __init__(self, model, features: Mapping, benchmark, batch_size: int = 32,
                 max_frames: int | None = None):
        self.benchmark = benchmark
        self.queries = [q for q in benchmark.queries if q in features]
        self.database = [v for v in benchmark.database if v in features]
        if not self.queries or not self.database:
            raise ValueError(f"the features hold {len(self.queries)} of the "
                             f"{len(benchmark.queries)} queries and {len(self.database)} of the "
                             f"{len(benchmark.database)} database videos of the benchmark; need "
                             "at least one of each")
        self.scorer = PairScorer(model, features, batch_size, max_frames)

    def __call__(self) -> dict[str, float]:
        """The benchmark's metrics (e.g. ``DSVR``, ``CSVR``, ``ISVR``) plus ``mAP``, their mean
        (unless the benchmark names one ``mAP`` itself)."""
        self.scorer.clear()  # the weights may have changed since the last call
        scores = self.scorer.matrix(self.queries, self.database)
        if isinstance(self.benchmark, RetrievalDataset):
            metrics = self.benchmark.evaluate(
                SimilarityMatrix(scores, self.queries, self.database), all_db=set(self.database))
        else:
            metrics = self.benchmark.evaluate({q: dict(zip(self.database, row.tolist()))
                                               for q, row in zip(self.queries, scores)})
        metrics = {name: float(value) for name, value in metrics.items()}
        metrics.setdefault("mAP", float(np.mean(list(metrics.values()))))
        return metrics


def validation_evaluator(model, validation: tuple | None, max_frames: int | None = None):
    """A :class:`BenchmarkEvaluator` of ``model`` for ``validation = (benchmark, features)``;
    None without validation data."""
    if validation is None:
        return None
    benchmark, features = validation
    return BenchmarkEvaluator(model, features, benchmark, max_frames=max_frames)


def evaluate_model(model, features: Mapping, benchmark, batch_size: int = 32,
                   max_frames: int | None = None) -> dict[str, float]:
    """Retrieval metrics of ``model`` on a benchmark once (see :class:`BenchmarkEvaluator`)."""
    return BenchmarkEvaluator(model, features, benchmark, batch_size, max_frames)()
