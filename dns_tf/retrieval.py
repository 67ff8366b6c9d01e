"""DnS search: coarse scores everywhere, fine scores where the selector says they matter.

    query features ──index──> (coarse q, fine q, selector q)
      ──coarse top-K (ScaNN) or the whole index──> candidates with coarse similarity
      ──selector MLP([q score, t score, coarse sim])──> routing scores
      ──top p% (or a budget) by routing score──> fine similarity on those pairs
      ──merge (fine mapped s/2 + 1/2, the scale the coarse student learns)──> ranking

The networks sit behind a small backend interface so that the same search runs in process
(:class:`LocalBackend`, Keras models) or against a TF Serving endpoint (``serving.client``):

- ``index(videos [B, T, R, D], mask [B, T]) -> IndexedVideos`` (fine parts in their stored form);
- ``fine_similarity(query_fine, target_fines) -> [N]`` over stored fine representations;
- ``selector_scores(mlp_input [N, 3]) -> [N]``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Protocol, Sequence

import numpy as np

from dns_tf.config import field
from dns_tf.index.fine_store import pack_bits, unpack_bits
from dns_tf.index.store import VideoIndex

SEARCH_MODES = ("dns", "coarse", "fine")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """How a query is answered (defaults: DnS re-ranking 5% of the candidates, as in the paper)."""

    mode: str = field("dns", "dns: selector-routed re-ranking; coarse: S^c only; fine: S^f on "
                             "every candidate", choices=SEARCH_MODES)
    candidates: int = field(0, "coarse top-K candidates taken from the index (0: every video)")
    percentage: float = field(5.0, "share of the candidates re-ranked by the fine student, in %")
    budget: int = field(0, "re-rank exactly this many candidates instead of a percentage (0: off)")
    top: int = field(100, "results returned per query")

    def __post_init__(self):
        if self.mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {SEARCH_MODES}, got {self.mode!r}")
        if not 0.0 <= self.percentage <= 100.0:
            raise ValueError(f"percentage must be within [0, 100], got {self.percentage}")
        if self.candidates < 0 or self.budget < 0 or self.top < 1:
            raise ValueError("candidates and budget must be >= 0 and top >= 1")

    def rerank_count(self, num_candidates: int) -> int:
        """How many candidates the fine student re-ranks."""
        if self.mode == "coarse":
            return 0
        if self.mode == "fine":
            return num_candidates
        if self.budget:
            return min(self.budget, num_candidates)
        return min(num_candidates, math.floor(self.percentage * num_candidates / 100.0 + 1e-9))


@dataclasses.dataclass(frozen=True)
class IndexedVideos:
    """What indexing produces for a batch: ``coarse [B, Dc]`` float32, ``fine`` one stored array
    per video (cut to its length), ``selector [B]`` float32 self-similarity scores."""

    coarse: np.ndarray
    fine: list[np.ndarray]
    selector: np.ndarray


@dataclasses.dataclass(frozen=True)
class Hit:
    video_id: str
    score: float
    coarse_score: float
    reranked: bool


@dataclasses.dataclass(frozen=True)
class Ranking:
    """One query's answer, best first, with where the time went."""

    hits: list[Hit]
    num_candidates: int
    num_reranked: int
    seconds: dict[str, float]

    @property
    def ids(self) -> list[str]:
        return [hit.video_id for hit in self.hits]

    @property
    def scores(self) -> np.ndarray:
        return np.array([hit.score for hit in self.hits], np.float32)


class Backend(Protocol):
    fine_kind: str

    def index(self, videos: np.ndarray, mask: np.ndarray) -> IndexedVideos: ...

    def fine_similarity(self, query_fine: np.ndarray,
                        target_fines: Sequence[np.ndarray]) -> np.ndarray: ...

    def selector_scores(self, mlp_input: np.ndarray) -> np.ndarray: ...


def pad_videos(videos: Sequence[np.ndarray], dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Pads videos ``[T_i, ...]`` into ``[N, max T, ...]`` with a ``[N, max T]`` frame mask."""
    length = max(len(v) for v in videos)
    padded = np.zeros((len(videos), length, *videos[0].shape[1:]), dtype)
    mask = np.zeros((len(videos), length), np.float32)
    for i, video in enumerate(videos):
        padded[i, :len(video)] = video
        mask[i, :len(video)] = 1.0
    return padded, mask


def fine_kind_of(fine_student) -> str:
    """How an index stores a fine student's representations."""
    return "bits" if fine_student.kind == "binarization" else "float16"


class LocalBackend:
    """The three DnS networks in this process.

    Args:
        coarse_student: a :class:`~dns_tf.models.CoarseGrainedStudent`.
        fine_student: a :class:`~dns_tf.models.FineGrainedStudent`.
        selector: a :class:`~dns_tf.models.SelectorNetwork` trained for these students.
        batch_size: target videos per fine-similarity batch.
    """

    def __init__(self, coarse_student, fine_student, selector, batch_size: int = 64):
        self.coarse_student = coarse_student
        self.fine_student = fine_student
        self.selector = selector
        self.batch_size = batch_size
        self.fine_kind = fine_kind_of(fine_student)

    @property
    def fine_shape_tail(self) -> tuple[int, int]:
        """Per-frame shape of the fine representation as the model produces it: ``(R, D|bits)``."""
        student = self.fine_student
        return (9, student.bits if student.binarization is not None else student.dims)

    def _to_stored(self, fine: np.ndarray) -> np.ndarray:
        return pack_bits(fine) if self.fine_kind == "bits" else fine.astype(np.float16)

    def _from_stored(self, fine: np.ndarray) -> np.ndarray:
        return unpack_bits(fine) if self.fine_kind == "bits" else fine.astype(np.float32)

    def index(self, videos: np.ndarray, mask: np.ndarray) -> IndexedVideos:
        lengths = np.asarray(mask).sum(axis=1).astype(int)
        coarse = np.asarray(self.coarse_student.index_video(videos, mask))
        fine = np.asarray(self.fine_student.index_video(videos, mask))
        selector = np.asarray(self.selector.index_video(videos, mask))[:, 0]
        return IndexedVideos(coarse=coarse,
                             fine=[self._to_stored(f[:n]) for f, n in zip(fine, lengths)],
                             selector=selector)

    def fine_similarity(self, query_fine, target_fines):
        query = self._from_stored(np.asarray(query_fine))[None]
        # Sorting by length keeps padding, and so wasted work, small.
        order = np.argsort([len(t) for t in target_fines], kind="stable")
        scores = np.empty(len(target_fines), np.float32)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            targets, mask = pad_videos([self._from_stored(target_fines[i]) for i in chosen])
            scores[chosen] = np.asarray(self.fine_student.calculate_video_similarity(
                query, targets, None, mask))[0]
        return scores

    def selector_scores(self, mlp_input):
        return np.asarray(self.selector.score(np.asarray(mlp_input, np.float32)))[:, 0]


class DnSRetriever:
    """Answers queries against a :class:`VideoIndex` with a backend's networks.

    Example:

        backend = LocalBackend(coarse, fine, selector)
        retriever = DnSRetriever(VideoIndex.open("my_index", readonly=True), backend)
        ranking = retriever.search(query_features, SearchConfig(percentage=10))
    """

    def __init__(self, index: VideoIndex, backend: Backend,
                 config: SearchConfig = SearchConfig()):
        if index.fine_kind != backend.fine_kind:
            raise ValueError(f"index at {index.path} stores '{index.fine_kind}' fine "
                             f"representations, the fine student produces '{backend.fine_kind}'")
        self.index = index
        self.backend = backend
        self.config = config

    def index_query(self, features: np.ndarray) -> IndexedVideos:
        """Indexes one query video ``[T, R, D]``."""
        features = np.asarray(features, np.float32)
        return self.backend.index(features[None], np.ones((1, len(features)), np.float32))

    def search(self, features: np.ndarray, config: SearchConfig | None = None) -> Ranking:
        """Searches with one query video's region features ``[T, R, D]``."""
        start = time.perf_counter()
        query = self.index_query(features)
        ranking = self.search_indexed(query, 0, config)
        ranking.seconds["index_query"] = time.perf_counter() - start - sum(
            ranking.seconds.values())
        return ranking

    def search_indexed(self, query: IndexedVideos, row: int = 0,
                       config: SearchConfig | None = None) -> Ranking:
        """Searches with row ``row`` of an already indexed batch of queries."""
        config = config or self.config
        seconds = {}
        clock = time.perf_counter()
        if len(self.index) == 0:
            return Ranking([], 0, 0, {"coarse": 0.0})
        if config.candidates and config.candidates < len(self.index):
            found = self.index.search(query.coarse[row:row + 1], config.candidates)
            ids, coarse = found.ids[0], found.scores[0]
        else:
            scores, ids = self.index.coarse_scores_all(query.coarse[row:row + 1])
            coarse = scores[0]
        seconds["coarse"] = time.perf_counter() - clock

        count = config.rerank_count(len(ids))
        final = np.array(coarse, np.float32)
        chosen = np.zeros(0, int)
        if count:
            clock = time.perf_counter()
            if config.mode == "fine":
                chosen = np.arange(len(ids))
            else:
                targets = self.index.selector_scores(ids)
                mlp_input = np.stack([np.full(len(ids), query.selector[row]), targets, coarse], 1)
                routing = self.backend.selector_scores(mlp_input)
                chosen = np.argsort(-routing, kind="stable")[:count]
            seconds["selector"] = time.perf_counter() - clock
            clock = time.perf_counter()
            records = self.index.get_many([ids[i] for i in chosen])
            fine = self.backend.fine_similarity(query.fine[row], [r.fine for r in records])
            final[chosen] = fine / 2.0 + 0.5
            seconds["fine"] = time.perf_counter() - clock
        reranked = np.zeros(len(ids), bool)
        reranked[chosen] = True
        order = np.argsort(-final, kind="stable")[:config.top]
        hits = [Hit(ids[i], float(final[i]), float(coarse[i]), bool(reranked[i])) for i in order]
        return Ranking(hits, len(ids), int(count), seconds)
