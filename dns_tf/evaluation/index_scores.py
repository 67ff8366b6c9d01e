"""A DnS retriever's scores of benchmark queries against a whole database, as the DnS sweep
(:mod:`dns_tf.evaluation.sweep`) and threshold fitting (:mod:`dns_tf.evaluation.thresholds`)
read them: every student and the selector on every pair, timed per stage."""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np
from tqdm import tqdm

from dns_tf.retrieval import DnSRetriever


@dataclasses.dataclass(frozen=True)
class DatabaseScores:
    """Queries against a benchmark's database (:func:`database_scores`).

    Attributes:
        coarse: ``[Q, N]`` coarse similarities.
        fine: ``[Q, N]`` fine similarities on the merge scale (``s / 2 + 1/2``, as the retriever
            merges them with coarse similarities).
        selector: ``[Q, N]`` selector routing scores.
        available: ``[N]`` bool, the database videos in the index (the others score 0).
        seconds_per_query: measured seconds per query of ``index_query``, ``coarse``,
            ``selector`` (every available video) and ``fine`` (every available video).
    """

    coarse: np.ndarray
    fine: np.ndarray
    selector: np.ndarray
    available: np.ndarray
    seconds_per_query: dict[str, float]


def database_scores(retriever: DnSRetriever, queries: Sequence[np.ndarray],
                    database: Sequence[str], progress: bool = False) -> DatabaseScores:
    """Every query against every database video of a benchmark, as the DnS sweep reads them.

    Args:
        retriever: the index and the networks (in process or served).
        queries: Q query videos' region features ``[T, R, D]``.
        database: the benchmark's N database ids (the columns); those not in the index are
            marked unavailable and score 0.
        progress: show a progress bar.
    """
    columns = {video_id: column for column, video_id in enumerate(database)}
    available = np.array([video_id in retriever.index for video_id in database], bool)
    available_ids = [video_id for video_id, present in zip(database, available) if present]
    target_selector = retriever.index.selector_scores(available_ids)
    result = DatabaseScores(*(np.zeros((len(queries), len(database)), np.float32)
                              for _ in range(3)), available, dict.fromkeys(
                                  ("index_query", "coarse", "selector", "fine"), 0.0))
    seconds = result.seconds_per_query
    for row, features in enumerate(tqdm(queries, desc="queries", disable=not progress)):
        clock = time.perf_counter()
        query = retriever.index_query(features)
        seconds["index_query"] += time.perf_counter() - clock
        clock = time.perf_counter()
        scores, ids = retriever.index.coarse_scores_all(query.coarse)
        positions = np.array([columns.get(video_id, -1) for video_id in ids], int)
        result.coarse[row, positions[positions >= 0]] = scores[0][positions >= 0]
        seconds["coarse"] += time.perf_counter() - clock
        clock = time.perf_counter()
        result.selector[row, available] = retriever.routing_scores(
            query.selector[0], target_selector, result.coarse[row, available])
        seconds["selector"] += time.perf_counter() - clock
        clock = time.perf_counter()
        result.fine[row, available] = retriever.fine_scores(query.fine[0], available_ids) / 2 + 0.5
        seconds["fine"] += time.perf_counter() - clock
    for stage in seconds:
        seconds[stage] /= max(len(queries), 1)
    return result
