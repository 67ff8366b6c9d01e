"""Scores of predicted segments against the ground truth: segment F1 and VSC22's segment µAP.

Both take ``{(query, target): [Segment, ...]}`` for the ground truth and the predictions (see
:mod:`dns_tf.localization.segments`). A prediction for a pair without ground truth is a false
positive (it matches nothing); a ground-truth pair without predictions is all missed.

- :func:`segment_f1`: a prediction is a true positive when it overlaps a not yet matched
  ground-truth segment of its pair with temporal IoU >= ``iou`` on *both* axes (query and target);
  predictions are matched greedily, highest score first, each to the candidate of greatest
  ``min(IoU_query, IoU_target)``.
- :func:`segment_micro_ap`: the VSC22 matching track's metric (Pizzi et al. 2023, following VCSL's
  copy-overlap precision and recall). Predictions of all pairs are ranked by score; after each
  group of equal scores, per axis, recall is the time covered by both the predictions and the
  ground truth of their pairs over the ground truth's total time, and precision that time over
  the time the predictions cover (overlapping predictions count once; a pair's ground-truth
  segments count towards the intersection only once some prediction overlaps them as a box).
  Recall and precision are the geometric means of the two axes', and the AP is
  ``sum precision_i * (recall_i - recall_{i-1})``.
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import numpy as np

from dns_tf.localization.segments import Pair, Segment

AXES = (("query_start", "query_end"), ("target_start", "target_end"))


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two intervals ``(start, end)``."""
    intersection = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return intersection / union if union > 0 else 0.0


def _interval(segment: Segment, axis: int) -> tuple[float, float]:
    start, end = AXES[axis]
    return getattr(segment, start), getattr(segment, end)


def segment_f1(truth: Mapping[Pair, Sequence[Segment]],
               predictions: Mapping[Pair, Sequence[Segment]], iou: float = 0.5) -> dict:
    """Precision, recall and F1 of predicted segments at temporal IoU >= ``iou`` on both axes.

    Returns:
        ``{"f1", "precision", "recall", "true_positives", "predictions", "ground_truth"}``
        (micro-averaged over all pairs; 0 where undefined).
    """
    true_positives = 0
    for pair, predicted in predictions.items():
        unmatched = list(truth.get(pair, ()))
        for prediction in sorted(predicted, key=lambda segment: -segment.score):
            overlaps = [min(temporal_iou(_interval(prediction, axis), _interval(actual, axis))
                            for axis in (0, 1)) for actual in unmatched]
            if overlaps and max(overlaps) >= iou:
                unmatched.pop(int(np.argmax(overlaps)))
                true_positives += 1
    num_predictions = sum(len(segments) for segments in predictions.values())
    num_truth = sum(len(segments) for segments in truth.values())
    precision = true_positives / num_predictions if num_predictions else 0.0
    recall = true_positives / num_truth if num_truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall,
            "true_positives": true_positives, "predictions": num_predictions,
            "ground_truth": num_truth}


def merge_intervals(intervals: Sequence[tuple[float, float]]) -> np.ndarray:
    """``[N, 2]`` disjoint intervals, sorted, covering the same time as ``intervals``."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return np.array(merged, np.float64).reshape(-1, 2)


def intersection_length(a: np.ndarray, b: np.ndarray) -> float:
    """Time covered by both of two sets of disjoint intervals ``[N, 2]`` and ``[M, 2]``."""
    overlap = (np.minimum(a[:, None, 1], b[None, :, 1])
               - np.maximum(a[:, None, 0], b[None, :, 0]))
    return float(np.clip(overlap, 0.0, None).sum())


def _overlaps(a: Segment, b: Segment) -> bool:
    """Whether two segments overlap as boxes (query x target) of positive area."""
    return all(min(_interval(a, axis)[1], _interval(b, axis)[1])
               > max(_interval(a, axis)[0], _interval(b, axis)[0]) for axis in (0, 1))


def segment_micro_ap(truth: Mapping[Pair, Sequence[Segment]],
                     predictions: Mapping[Pair, Sequence[Segment]]) -> float:
    """VSC22's segment-level micro average precision (module docstring); 0 without ground truth."""
    truth_total = [sum(float(np.diff(merge_intervals([_interval(s, axis) for s in segments]),
                                     axis=1).sum()) for segments in truth.values())
                   for axis in (0, 1)]
    if min(truth_total) <= 0:
        return 0.0
    ranked = sorted(((segment.score, pair, segment) for pair, segments in predictions.items()
                     for segment in segments), key=lambda item: -item[0])
    pair_predictions: dict[Pair, list[Segment]] = {}
    # Per pair and axis, the intersection and predicted time counted so far.
    pair_counted: dict[Pair, np.ndarray] = {}
    counted = np.zeros((2, 2))     # [axis, (intersection, predicted time)] over all pairs
    recall = average_precision = 0.0
    for _, group in itertools.groupby(ranked, key=lambda item: item[0]):
        for _, pair, segment in group:
            predicted = pair_predictions.setdefault(pair, [])
            predicted.append(segment)
            relevant = [actual for actual in truth.get(pair, ())
                        if any(_overlaps(actual, guess) for guess in predicted)]
            now = np.zeros((2, 2))
            for axis in (0, 1):
                covered = merge_intervals([_interval(s, axis) for s in predicted])
                actual = merge_intervals([_interval(s, axis) for s in relevant])
                now[axis] = (intersection_length(covered, actual),
                             float(np.diff(covered, axis=1).sum()))
            counted += now - pair_counted.get(pair, 0.0)
            pair_counted[pair] = now
        axis_recall = counted[:, 0] / np.array(truth_total)
        axis_precision = counted[:, 0] / counted[:, 1]
        new_recall = math.sqrt(axis_recall[0] * axis_recall[1])
        precision = math.sqrt(axis_precision[0] * axis_precision[1])
        average_precision += precision * (new_recall - recall)
        recall = new_recall
    return average_precision


def localization_metrics(truth: Mapping[Pair, Sequence[Segment]],
                         predictions: Mapping[Pair, Sequence[Segment]]) -> dict:
    """What results.json records: ``{"segment_f1_iou50", "segment_muap", "pairs"}`` (pairs: those
    with ground truth) plus the F1's precision and recall."""
    f1 = segment_f1(truth, predictions, 0.5)
    return {"segment_f1_iou50": round(f1["f1"], 4),
            "segment_muap": round(segment_micro_ap(truth, predictions), 4),
            "pairs": len(truth), "precision_iou50": round(f1["precision"], 4),
            "recall_iou50": round(f1["recall"], 4)}
