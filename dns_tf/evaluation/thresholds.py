"""Match thresholds fitted on labelled pairs: the score from which a search's hit is a match.

Every (query, database video) pair a benchmark's annotation labels is scored exactly as a search
with the same :class:`~dns_tf.retrieval.SearchConfig` scores it; the lowest score whose pairs reach
the target precision becomes the index's match threshold (``calibration.json``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dns_tf.calibration import (CalibrationConfig, IndexCalibration, fit_index_calibration,
                                fit_match_threshold, plot_precision_recall)
from dns_tf.evaluation.index_scores import database_scores
from dns_tf.evaluation.sweep import dns_similarities
from dns_tf.retrieval import DnSRetriever, SearchConfig


def labelled_scores(dataset, queries, scores: np.ndarray, available: np.ndarray):
    """``(scores [P], labels [P])`` of every labelled pair among the available database videos;
    ``scores`` is ``[Q, N]`` over ``dataset.database``."""
    column_of = {video: column for column, video in enumerate(dataset.database)}
    values, labels = [], []
    for row, query in enumerate(queries):
        positives, negatives = dataset.pair_labels(query)
        if negatives is None:
            negatives = set(dataset.database) - positives - {query}
        for videos, label in ((positives, True), (negatives, False)):
            columns = [column_of[v] for v in videos if v in column_of and available[column_of[v]]]
            values.append(scores[row, columns])
            labels.append(np.full(len(columns), label))
    return np.concatenate(values), np.concatenate(labels)


def calibrate_threshold(index, backend, dataset, query_features, search: SearchConfig,
                        target_precision: float, plot: str | None = None):
    """Fits the match threshold of ``index`` on ``dataset``'s labelled pairs, stores it and
    returns ``(IndexCalibration, curves)``; ``query_features`` maps query ids to ``[T, R, D]``.
    An index without a coarse-to-fine map gets one first (the threshold is on its scale)."""
    queries = [query for query in dataset.queries if query in query_features]
    if not queries:
        raise ValueError(f"the features hold none of the {len(dataset.queries)} {dataset.name} "
                         f"queries")
    calibration = (IndexCalibration.load(index.path)
                   or fit_index_calibration(index, backend, CalibrationConfig()))
    retriever = DnSRetriever(index, backend)
    scores = database_scores(retriever, [query_features[q] for q in queries], dataset.database)
    searched = dns_similarities(scores.coarse, scores.fine, scores.selector, search,
                                calibration.coarse_to_fine, scores.available)
    curves = {f"search ({search.mode}, merge {search.merge})": labelled_scores(
                  dataset, queries, searched, scores.available),
              "fine student": labelled_scores(dataset, queries, scores.fine, scores.available),
              "coarse student, calibrated": labelled_scores(
                  dataset, queries, calibration.coarse_to_fine(scores.coarse), scores.available)}
    values, labels = next(iter(curves.values()))
    threshold = fit_match_threshold(values, labels, target_precision,
                                    source=f"{dataset.name}, {len(queries)} queries")
    calibration = dataclasses.replace(calibration, threshold=threshold)
    calibration.save(index.path)
    if plot:
        plot_precision_recall(curves, threshold, plot, title=f"{dataset.name}: labelled pairs")
    return calibration, curves
