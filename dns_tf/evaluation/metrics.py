"""The three flavours of average precision the benchmarks use.

* ``ranked_average_precision`` — non-interpolated AP of a ranked list (FIVR, CC_WEB_VIDEO): the mean,
  over all relevant videos, of the precision at the rank where each is found (0 if never found).
* ``trapezoidal_average_precision`` — EVVE's AP: the area under the precision-recall curve summed as
  trapezoids between consecutive true positives.
* ``threshold_average_precision`` — AP over score thresholds with tied scores taken together (SVD;
  the definition of scikit-learn's ``average_precision_score``).
"""

from __future__ import annotations

import numpy as np


def ranked_average_precision(relevant_in_rank_order: np.ndarray, num_relevant: int) -> float:
    """AP of one ranked list.

    Args:
        relevant_in_rank_order: bool [N], whether the video at each rank (best first) is relevant.
        num_relevant: how many relevant videos exist, found or not; the AP's denominator.
    """
    hits = np.flatnonzero(relevant_in_rank_order)
    if num_relevant == 0:
        raise ValueError("average precision is undefined without relevant videos")
    precision_at_hits = np.arange(1, hits.size + 1) / (hits + 1.0)
    return float(precision_at_hits.sum() / num_relevant)


def trapezoidal_average_precision(positive_ranks: np.ndarray, num_positives: int) -> float:
    """EVVE's AP from the 0-based ranks of the true positives, in increasing order.

    Between the n-th and (n+1)-th positive, recall grows by ``1 / num_positives`` while precision
    goes from ``n / rank`` (1 at rank 0) to ``(n + 1) / (rank + 1)``; the AP sums those trapezoids.
    0 when there are no positives or none is retrieved.
    """
    ranks = np.asarray(positive_ranks, dtype=np.float64)
    if num_positives == 0 or ranks.size == 0:
        return 0.0
    found_before = np.arange(ranks.size, dtype=np.float64)
    precision_left = np.ones_like(ranks)
    np.divide(found_before, ranks, out=precision_left, where=ranks > 0)
    precision_right = (found_before + 1.0) / (ranks + 1.0)
    return float(np.sum((precision_left + precision_right) / 2.0) / num_positives)


def threshold_average_precision(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """AP as the recall-weighted sum of precision at each distinct score threshold.

    Videos with equal scores enter the ranking together, so the result does not depend on their
    order. 0 when there are no positives.

    Args:
        is_positive: bool [N].
        scores: float [N], higher is more similar.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    total_positives = int(is_positive.sum())
    if total_positives == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    scores, is_positive = scores[order], is_positive[order]
    # The last index of every run of equal scores is where a threshold admits the whole run.
    threshold_ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_positives = np.cumsum(is_positive)[threshold_ends]
    precision = true_positives / (threshold_ends + 1.0)
    recall = true_positives / total_positives
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))
