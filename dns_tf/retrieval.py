"""DnS search: coarse scores everywhere, fine scores where routing says they matter.

    query features ──index──> (coarse q, fine q, selector q)
      ──coarse top-K (ScaNN) or the whole index──> candidates with coarse similarity
      ──routing (SearchConfig.routing)──> the top p% (or a budget) of the candidates
      ──fine similarity on those pairs──> fine scores mapped s/2 + 1/2
      ──merge (SearchConfig.merge)──> ranking

Merges: ``calibrated`` (default) and ``cascade`` put the candidates that were not re-ranked on the
fine scale too, with the index's coarse-to-fine map (:mod:`dns_tf.calibration`); ``calibrated``
ranks everything by those scores, ``cascade`` ranks the re-ranked candidates first (by fine score)
and the others after them (by coarse score), as a retrieve-then-re-rank cascade does: a candidate
the fine student saw is never passed by one it did not see on the strength of a mapped coarse
score; ``paper`` leaves them at their raw coarse similarity in one list, as the authors'
``evaluation_dns.py`` does.
Routings: ``coarse`` (default) re-ranks the candidates with the highest coarse similarity;
``selector`` those with the highest selector scores (the paper); ``selector_in_coarse`` the best by
selector score among the coarse top ``ROUTING_POOL`` x as many as are re-ranked. On one scale,
re-ranking the coarse top only ever lifts what the coarse student missed near the top; a selector
trained on the students' raw disagreement mostly routes unrelated pairs (whose raw scores differ
by the scales alone), and one that is noisy leaves relevant coarse top candidates out.

The networks sit behind a small backend interface so that the same search runs in process
(:class:`LocalBackend`, Keras models) or against a TF Serving endpoint (``serving.client``):

- ``index(videos [B, T, R, D], mask [B, T]) -> IndexedVideos`` (fine parts in their stored form);
- ``fine_similarity(query_fine, target_fines) -> [N]`` over stored fine representations;
- ``selector_scores(mlp_input [N, 3]) -> [N]``;
- ``fingerprints``: ``{"coarse", "fine", "selector": weight fingerprint}``
  (:mod:`dns_tf.models.fingerprint`); an index that records the fingerprints it was built with
  refuses a backend whose networks differ;
- ``frame_to_frame(query_fine, target_fines) -> [[Tq, Tt_i]]``, the fine student's frame-to-frame
  matrices, from which ``SearchConfig.segments`` localises copied segments
  (:mod:`dns_tf.localization`).
- optionally ``fine_scores_in_index(query_fine, index, video_ids) -> [N]``, for a backend that
  reads the targets itself (a server holding the index's fine representations).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from concurrent import futures
from typing import Protocol, Sequence

import numpy as np

from dns_tf.calibration import IndexCalibration, ScoreMap, fit_index_calibration
from dns_tf.convert import load_network
from dns_tf.fine_representation import pack_bits, stored_kind
from dns_tf.flags import field
from dns_tf.index.store import VideoIndex
from dns_tf.localization.networks import localize_hits
from dns_tf.models import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork
from dns_tf.models.fingerprint import fingerprint
from dns_tf.similarity_fast import FastFineSimilarity

SEARCH_MODES = ("dns", "coarse", "fine")
# Stored fine representations read per batch of fine similarities: memory stays bounded whatever
# the size of the index or the kind of representation (float16 videos are 16x binary codes).
FINE_CHUNK_BYTES = 256 * 2**20
MERGES = ("calibrated", "cascade", "paper")
# The merges that put candidates left out of the re-ranking on the fine scale.
CALIBRATED_MERGES = ("cascade", "calibrated")
ROUTINGS = ("coarse", "selector_in_coarse", "selector")


# selector_in_coarse: the selector chooses among this many times as many coarse top candidates
# as it re-ranks (at least ROUTING_POOL_MIN).
ROUTING_POOL = 2
ROUTING_POOL_MIN = 10


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """How a query is answered (defaults: DnS re-ranking 5% of the candidates, as in the paper,
    the coarse top ones, merged on one scale; ``PAPER_SEARCH`` is the authors' protocol)."""

    mode: str = field("dns", "dns: routed re-ranking; coarse: S^c only; fine: S^f on every "
                             "candidate", choices=SEARCH_MODES)
    candidates: int = field(0, "coarse top-K candidates taken from the index (0: every video)")
    percentage: float = field(5.0, "share of the candidates re-ranked by the fine student, in %")
    budget: int = field(0, "re-rank exactly this many candidates instead of a percentage (0: off)")
    top: int = field(100, "results returned per query")
    segments: bool = field(False, "localise the copied segments (query and target seconds) of "
                                  "the re-ranked hits returned")
    merge: str = field("calibrated", "calibrated: one list ordered by score, the candidates not "
                                     "re-ranked mapped onto the fine scale (the index's "
                                     "calibration); cascade: the same scores, the re-ranked "
                                     "candidates first (routing coarse only); paper: the others "
                                     "keep their raw coarse similarity", choices=MERGES)
    routing: str = field("coarse", "which candidates the fine student re-ranks: coarse: the "
                                   "coarse top; selector_in_coarse: the best by selector score "
                                   f"among {ROUTING_POOL}x as many coarse top ones; selector: the "
                                   "best by selector score (the paper)", choices=ROUTINGS)
    min_score: float | None = field(None, "return only hits scoring at least this much")
    matches_only: bool = field(False, "return only matches: hits at or above the match "
                                      "threshold stored with the index (dns-tf calibrate)")

    def __post_init__(self):
        if self.mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {SEARCH_MODES}, got {self.mode!r}")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {self.merge!r}")
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.merge == "cascade" and self.routing != "coarse" and self.mode == "dns":
            raise ValueError(f"merge 'cascade' ranks the re-ranked candidates first, which keeps "
                             f"the coarse order only when they are the coarse top (routing "
                             f"'coarse'); with routing {self.routing!r} use merge 'calibrated' "
                             f"or 'paper'")
        if not 0.0 <= self.percentage <= 100.0:
            raise ValueError(f"percentage must be within [0, 100], got {self.percentage}")
        if self.candidates < 0 or self.budget < 0 or self.top < 1:
            raise ValueError("candidates and budget must be >= 0 and top >= 1")

    def rerank_count(self, num_candidates: int) -> int:
        """How many candidates the fine student re-ranks (the paper's merge counts as the
        authors' evaluation does, ``int(p / 100 * n)``)."""
        if self.mode == "coarse":
            return 0
        if self.mode == "fine":
            return num_candidates
        if self.budget:
            return min(self.budget, num_candidates)
        if self.merge == "paper":
            return min(num_candidates, int(self.percentage / 100.0 * num_candidates))
        return min(num_candidates, math.floor(self.percentage * num_candidates / 100.0 + 1e-9))


# The authors' protocol (evaluation_dns.py): selector routing over every candidate, raw coarse
# similarities for the candidates that are not re-ranked.
PAPER_SEARCH = SearchConfig(merge="paper", routing="selector")


def route(routing: str, count: int, coarse: np.ndarray,
          selector: np.ndarray | None) -> np.ndarray:
    """Which ``count`` of N candidates the fine student re-ranks, as indices into them.

    Args:
        routing: one of ``ROUTINGS``.
        count: how many to choose.
        coarse: ``[N]`` coarse similarities.
        selector: ``[N]`` selector scores (unused by ``coarse`` routing).
    """
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    count = min(int(count), len(coarse))
    if count <= 0:
        return np.zeros(0, np.int64)
    by_coarse = np.argsort(-np.asarray(coarse), kind="stable")
    if routing == "coarse":
        return by_coarse[:count]
    selector = np.asarray(selector)
    if routing == "selector":
        return np.argsort(-selector, kind="stable")[:count]
    pool = by_coarse[:max(ROUTING_POOL * count, ROUTING_POOL_MIN)]
    return pool[np.argsort(-selector[pool], kind="stable")[:count]]


def merged_order(scores: np.ndarray, reranked: np.ndarray, merge: str) -> np.ndarray:
    """Candidate indices best first: by score, the re-ranked ones ahead under ``cascade``.

    A cascade keeps what each stage knows best: the fine student orders the candidates it saw,
    and a candidate it did not see never passes one it did (with coarse routing those are the
    coarse top, so the coarse order above and below the re-ranked block is kept).
    """
    if merge == "cascade":
        return np.lexsort((-np.asarray(scores), ~np.asarray(reranked, bool)))
    return np.argsort(-np.asarray(scores), kind="stable")


def uses_selector(config: SearchConfig) -> bool:
    """Whether answering with ``config`` needs the selector's scores."""
    return config.mode == "dns" and config.routing != "coarse"


@dataclasses.dataclass(frozen=True)
class IndexedVideos:
    """What indexing produces for a batch: ``coarse [B, Dc]`` float32, ``fine`` one stored array
    per video (cut to its length), ``selector [B]`` float32 self-similarity scores."""

    coarse: np.ndarray
    fine: list[np.ndarray]
    selector: np.ndarray


@dataclasses.dataclass(frozen=True)
class Hit:
    """One result: ``score`` on the merge scale (see :class:`SearchConfig`), its raw
    ``coarse_score``, whether the fine student ``reranked`` it, and ``is_match``: its score
    against the match threshold stored with the index (None without one, or for a hit whose score
    is a raw coarse similarity, i.e. not re-ranked under the paper's merge)."""

    video_id: str
    score: float
    coarse_score: float
    reranked: bool
    is_match: bool | None = None
    # Copied segments (dns_tf.localization.Segment) of a re-ranked hit when the search localised
    # them; None when it did not.
    segments: tuple | None = None


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

    def as_dict(self) -> dict:
        """JSON-able form: counts, seconds per stage and the ranked hits."""
        return {"num_candidates": self.num_candidates, "num_reranked": self.num_reranked,
                "seconds": {stage: round(value, 6) for stage, value in self.seconds.items()},
                "hits": [{"rank": rank, "video_id": hit.video_id, "score": hit.score,
                          "coarse_score": hit.coarse_score, "reranked": hit.reranked,
                          "is_match": hit.is_match,
                          **({} if hit.segments is None else
                             {"segments": [segment.as_dict() for segment in hit.segments]})}
                         for rank, hit in enumerate(self.hits, start=1)]}


class Backend(Protocol):
    fine_kind: str
    fingerprints: dict[str, str]

    def index(self, videos: np.ndarray, mask: np.ndarray) -> IndexedVideos: ...

    def fine_similarity(self, query_fine: np.ndarray,
                        target_fines: Sequence[np.ndarray]) -> np.ndarray: ...

    def selector_scores(self, mlp_input: np.ndarray) -> np.ndarray: ...

    def frame_to_frame(self, query_fine: np.ndarray,
                       target_fines: Sequence[np.ndarray]) -> list[np.ndarray]: ...


def index_metadata(backend) -> dict:
    """What an index built with ``backend`` records about its networks: their fingerprints, and
    where they were served (the model name and version, for a server backend)."""
    return {"fingerprints": dict(backend.fingerprints),
            **getattr(backend, "provenance", {})}


def check_fingerprints(index: VideoIndex, backend) -> None:
    """Refuses ``backend`` when ``index`` records networks with other weights (ValueError
    naming both)."""
    recorded = index.metadata.get("fingerprints")
    if not recorded:
        return
    actual = backend.fingerprints
    differ = sorted(name for name in recorded if actual.get(name) != recorded[name])
    if differ:
        where = getattr(backend, "description", type(backend).__name__)
        raise ValueError(
            f"index at {index.path} was built with other networks than {where} runs: "
            + "; ".join(f"{name} {recorded[name]} in the index, {actual.get(name)} in the "
                        f"backend" for name in differ)
            + " (search with the networks the index was built with, or rebuild the index)")


class LocalBackend:
    """The three DnS networks in this process.

    Fine similarities come from :class:`~dns_tf.similarity_fast.FastFineSimilarity`: batched,
    compiled, reading the stored representations directly (packed codes are never unpacked), and
    equal to comparing the query with each target alone, as the authors' evaluation does.

    Args:
        coarse_student: a :class:`~dns_tf.models.CoarseGrainedStudent`.
        fine_student: a :class:`~dns_tf.models.FineGrainedStudent`.
        selector: a :class:`~dns_tf.models.SelectorNetwork` trained for these students.
        batch_size: target videos per fine-similarity batch.
    """

    @classmethod
    def from_files(cls, coarse: str, fine: str, selector: str, **kwargs) -> "LocalBackend":
        """Loads the three networks from ``.keras`` files or official ``.pth`` checkpoints."""
        return cls(load_network(coarse, CoarseGrainedStudent, "coarse student"),
                   load_network(fine, FineGrainedStudent, "fine student"),
                   load_network(selector, SelectorNetwork, "selector"), **kwargs)

    def __init__(self, coarse_student, fine_student, selector, batch_size: int = 64):
        self.coarse_student = coarse_student
        self.fine_student = fine_student
        self.selector = selector
        self.batch_size = batch_size
        self.fine_kind = stored_kind(fine_student)
        # A backend may lack a network (the search benchmark draws coarse vectors instead).
        self.fingerprints = {name: fingerprint(network) for name, network in (
            ("coarse", coarse_student), ("fine", fine_student), ("selector", selector))
            if network is not None}
        self.fast_similarity = FastFineSimilarity(fine_student, batch_size=batch_size)

    @property
    def fine_shape_tail(self) -> tuple[int, int]:
        """Per-frame shape of the fine representation as the model produces it: ``(R, D|bits)``."""
        student = self.fine_student
        return (9, student.bits if student.binarization is not None else student.dims)

    def _to_stored(self, fine: np.ndarray) -> np.ndarray:
        return pack_bits(fine) if self.fine_kind == "bits" else fine.astype(np.float16)

    def index(self, videos: np.ndarray, mask: np.ndarray) -> IndexedVideos:
        lengths = np.asarray(mask).sum(axis=1).astype(int)
        coarse = np.asarray(self.coarse_student.index_video(videos, mask))
        fine = np.asarray(self.fine_student.index_video(videos, mask))
        # The selector's comparator lets padding into pooling windows, so a padded video would
        # score differently than alone (as the authors index it): run it per length, unpadded.
        selector = np.empty(len(lengths), np.float32)
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            selector[rows] = np.asarray(self.selector.index_video(
                np.asarray(videos)[rows, :length], np.asarray(mask)[rows, :length]))[:, 0]
        return IndexedVideos(coarse=coarse,
                             fine=[self._to_stored(f[:n]) for f, n in zip(fine, lengths)],
                             selector=selector)

    def fine_similarity(self, query_fine, target_fines):
        if not len(target_fines):
            return np.zeros(0, np.float32)
        return self.fast_similarity(query_fine, target_fines)

    def selector_scores(self, mlp_input):
        return np.asarray(self.selector.score(np.asarray(mlp_input, np.float32)))[:, 0]

    def frame_to_frame(self, query_fine, target_fines):
        return self.fast_similarity.frame_to_frame(query_fine, target_fines) if target_fines else []


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
        check_fingerprints(index, backend)
        self.index = index
        self.backend = backend
        self.config = config
        self.calibration = IndexCalibration.load(index.path)

    def score_calibration(self) -> IndexCalibration | None:
        """The index's score calibration. An index without a stored one (made before
        calibration existed, or by hand) gets one fitted here, in memory, on first use; an index
        of fewer than two videos has none (there is nothing to merge)."""
        if self.calibration is None and len(self.index) >= 2:
            warnings.warn(f"{self.index.path} stores no score calibration; fitting one in memory "
                          f"(store it with 'dns-tf index calibrate')", stacklevel=2)
            self.calibration = fit_index_calibration(self.index, self.backend)
        return self.calibration

    @property
    def coarse_to_fine(self) -> ScoreMap | None:
        """The coarse-to-fine map of :meth:`score_calibration` (None without one)."""
        calibration = self.score_calibration()
        return None if calibration is None else calibration.coarse_to_fine

    @property
    def match_threshold(self) -> float | None:
        """The score from which a hit is a match (``dns-tf calibrate``), or None."""
        threshold = None if self.calibration is None else self.calibration.threshold
        return None if threshold is None else threshold.score

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
        threshold = self.match_threshold
        if config.matches_only and threshold is None:
            raise ValueError(f"{self.index.path} stores no match threshold; fit one with "
                             f"'dns-tf calibrate' or drop matches_only")
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
        count = config.rerank_count(len(ids))
        # Only candidates left out of the re-ranking need the coarse-to-fine map.
        coarse_to_fine = (self.coarse_to_fine
                          if config.merge in CALIBRATED_MERGES and count < len(ids) else None)
        final = np.array(coarse if coarse_to_fine is None else coarse_to_fine(coarse), np.float32)
        seconds["coarse"] = time.perf_counter() - clock

        chosen = np.zeros(0, int)
        if count:
            clock = time.perf_counter()
            if config.mode == "fine":
                chosen = np.arange(len(ids))
            else:
                routing = (self.routing_scores(query.selector[row],
                                               self.index.selector_scores(ids), coarse)
                           if uses_selector(config) else None)
                chosen = route(config.routing, count, coarse, routing)
            seconds["selector"] = time.perf_counter() - clock
            clock = time.perf_counter()
            fine = self.fine_scores(query.fine[row], [ids[i] for i in chosen])
            final[chosen] = fine / 2.0 + 0.5
            seconds["fine"] = time.perf_counter() - clock
        reranked = np.zeros(len(ids), bool)
        reranked[chosen] = True
        # Under the paper's merge a hit not re-ranked carries a raw coarse similarity, which is
        # not on the threshold's (fine) scale: it is not judged, and not a match.
        judged = reranked | (coarse_to_fine is not None)
        order = merged_order(final, reranked, config.merge)
        if config.min_score is not None:
            order = order[final[order] >= config.min_score]
        if config.matches_only:
            order = order[judged[order] & (final[order] >= threshold)]
        order = order[:config.top]
        hits = [Hit(ids[i], float(final[i]), float(coarse[i]), bool(reranked[i]),
                    None if threshold is None or not judged[i] else bool(final[i] >= threshold))
                for i in order]
        if config.segments:
            clock = time.perf_counter()
            hits = localize_hits(hits, query.fine[row], self.index, self.backend)
            seconds["segments"] = time.perf_counter() - clock
        return Ranking(hits, len(ids), int(count), seconds)

    def routing_scores(self, query_score: float, target_scores: np.ndarray,
                       coarse: np.ndarray) -> np.ndarray:
        """The selector's ``[N]`` scores of a query against N targets: its MLP reads
        ``[query self-similarity, target self-similarity, coarse similarity]`` per pair."""
        mlp_input = np.stack([np.full(len(target_scores), query_score), target_scores, coarse], 1)
        return self.backend.selector_scores(mlp_input)

    def fine_scores(self, query_fine: np.ndarray, video_ids: Sequence[str],
                    chunk: int | None = None) -> np.ndarray:
        """Fine similarities ``[N]`` in [-1, 1] of a stored query representation with indexed
        videos, reading ``chunk`` stored representations at a time (bounded memory; default:
        about FINE_CHUNK_BYTES of videos of 128 frames, 3640 binary codes or 227 float16)."""
        if chunk is None:
            chunk = max(1, FINE_CHUNK_BYTES // (128 * self.index.codec.frame_nbytes))
        in_index = getattr(self.backend, "fine_scores_in_index", None)
        scores = [np.zeros(0, np.float32)]
        for start in range(0, len(video_ids), chunk):
            ids = video_ids[start:start + chunk]
            if in_index is not None:  # the backend reads the targets itself
                scores.append(in_index(query_fine, self.index, ids))
                continue
            records = self.index.get_many(ids)
            scores.append(self.backend.fine_similarity(query_fine, [r.fine for r in records]))
        return np.concatenate(scores)


class ShardedRetriever:
    """DnS search over a collection split across several indexes (shards).

    A collection too large for one disk or one machine is indexed into shards (each a
    :class:`VideoIndex`, e.g. videos assigned by a hash of their id). The query is indexed once,
    every shard answers it in its own thread, and the hits are merged by score, every shard on the
    first shard's score calibration. Coarse-only and
    fine-only rankings equal those of one index holding every video. In DnS mode each shard routes
    its own top ``percentage`` of candidates (or its own ``budget``) to the fine student, so with
    shards of similar size the share re-ranked matches one index's.

    Args:
        retrievers: one :class:`DnSRetriever` per shard, sharing the same networks.
    """

    def __init__(self, retrievers: Sequence[DnSRetriever]):
        if not retrievers:
            raise ValueError("a sharded retriever needs at least one shard")
        self.retrievers = list(retrievers)
        # One scale for every shard: the first shard's calibration (its coarse-to-fine map and
        # match threshold) describes the collection; per-shard maps would merge shards unevenly.
        shared = self.retrievers[0].score_calibration()
        for retriever in self.retrievers[1:]:
            retriever.calibration = shared

    def search(self, features: np.ndarray, config: SearchConfig | None = None) -> Ranking:
        """Searches every shard with one query video's region features ``[T, R, D]``."""
        return self.search_indexed(self.retrievers[0].index_query(features), 0, config)

    def search_indexed(self, query: IndexedVideos, row: int = 0,
                       config: SearchConfig | None = None) -> Ranking:
        config = config or self.retrievers[0].config
        with futures.ThreadPoolExecutor(len(self.retrievers)) as pool:
            rankings = list(pool.map(lambda shard: shard.search_indexed(query, row, config),
                                     self.retrievers))
        merged = [hit for ranking in rankings for hit in ranking.hits]
        order = merged_order(np.array([hit.score for hit in merged], np.float64),
                             np.array([hit.reranked for hit in merged], bool), config.merge)
        hits = [merged[i] for i in order[:config.top]]
        # Shards run side by side: a stage takes as long as its slowest shard.
        seconds = {stage: max(r.seconds.get(stage, 0.0) for r in rankings)
                   for stage in {stage for r in rankings for stage in r.seconds}}
        return Ranking(hits, sum(r.num_candidates for r in rankings),
                       sum(r.num_reranked for r in rankings), seconds)
