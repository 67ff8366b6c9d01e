"""One score scale for DnS: the coarse student's similarities mapped onto the fine student's, and
the score above which a hit is a match.

DnS merges two students' scores in one ranking: re-ranked candidates carry the fine similarity
(``s / 2 + 1/2``, in [0, 1]), the others keep their coarse one. The students are trained to
reproduce the same teacher, but nothing ties their scales together: on unseen videos the fine
student's unrelated pairs sit at its floor (~0.5) while the coarse student's spread lower, so every
unrelated video the fine student re-ranks jumps over relevant videos that it did not re-rank.

:class:`ScoreMap` is a strictly increasing piecewise-linear map of coarse similarities onto the fine
scale. :func:`fit_coarse_to_fine` learns it *without labels* from pairs of the indexed videos
themselves (each sampled video with its coarse nearest neighbours, which covers the high scores,
and with random others, which covers the unrelated bulk), scored by both students: the pairs met at
search time, unlike the training pairs. Being monotone it never changes the coarse order; it only
puts the coarse scores where the fine student would put them.

:class:`MatchThreshold` is the other calibration, which needs labels: the score at which pairs of a
labelled collection reach a target precision (:func:`fit_match_threshold`).

Both are stored with an index as ``<index>/calibration.json`` (:class:`IndexCalibration`).

Example:

    calibration = refresh_calibration(index, backend)           # after adding videos
    mapped = calibration.coarse_to_fine(coarse_similarities)    # on the fine scale
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Sequence

import numpy as np
# A bare Figure on the Agg canvas: no pyplot, no global backend switch for the caller.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.isotonic import IsotonicRegression

from dns_tf.flags import field

CALIBRATION_FILE = "calibration.json"
CALIBRATION_METHODS = ("isotonic", "quantile")
# Coarse similarities are dot products of unit vectors: the map's end knots sit just outside
# [-1, 1], so that every similarity is interpolated, never clamped to a constant (ties would
# throw away the coarse order).
COARSE_RANGE = (-1.0 - 1e-3, 1.0 + 1e-3)


@dataclasses.dataclass(frozen=True)
class ScoreMap:
    """A strictly increasing piecewise-linear map given by its knots ``x [K]`` -> ``y [K]``.

    Scores between knots are interpolated linearly; scores outside ``[x[0], x[-1]]`` take the end
    values (the knots of a fitted map span the whole coarse range, see ``COARSE_RANGE``). The same
    map runs in the exported ``dns`` SavedModel (signature ``calibrate``).
    """

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __post_init__(self):
        x, y = np.asarray(self.x, np.float64), np.asarray(self.y, np.float64)
        if x.ndim != 1 or x.shape != y.shape or x.size < 2:
            raise ValueError(f"a score map needs two equally long lists of >= 2 knots, got "
                             f"{x.size} x and {y.size} y")
        if not (np.all(np.diff(x) > 0) and np.all(np.diff(y) > 0)):
            raise ValueError("a score map's knots must be strictly increasing in x and in y")

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """Mapped ``scores`` (any shape), float32."""
        return np.interp(np.asarray(scores, np.float64), self.x, self.y).astype(np.float32)

    def as_dict(self) -> dict:
        return {"x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, data: dict) -> "ScoreMap":
        return cls(tuple(map(float, data["x"])), tuple(map(float, data["y"])))


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """How the coarse-to-fine map is fitted on an index's own videos (no labels)."""

    method: str = field("isotonic", "isotonic: the fine score expected at each coarse score; "
                                    "quantile: coarse quantiles onto fine quantiles",
                        choices=CALIBRATION_METHODS)
    max_pairs: int = field(4096, "at most this many database pairs scored by both students")
    neighbours: int = field(8, "coarse nearest neighbours per sampled video (the same number of "
                               "random videos is added)")
    seed: int = field(0, "seed of the pair sample")

    def __post_init__(self):
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {self.method!r}")
        if self.max_pairs < 2 or self.neighbours < 1:
            raise ValueError("max_pairs must be >= 2 and neighbours >= 1")


def _strictly_increasing(x: np.ndarray, y: np.ndarray) -> ScoreMap:
    """Knots through ``(x, y)`` (both non-decreasing), reduced to a strictly increasing map and
    extended to ``COARSE_RANGE`` along the fit's overall slope."""
    keep = np.concatenate([[True], (np.diff(x) > 0) & (np.diff(y) > 0)])
    x, y = x[keep], y[keep]
    if x.size < 2:
        # Every sampled pair has the same score on either side: nothing but the identity's slope.
        x, y = np.array([x[0], x[0] + 1.0]), np.array([y[0], y[0] + 1.0])
    slope = (y[-1] - y[0]) / (x[-1] - x[0])
    low, high = COARSE_RANGE
    if x[0] > low:
        x, y = np.r_[low, x], np.r_[y[0] - slope * (x[0] - low), y]
    if x[-1] < high:
        x, y = np.r_[x, high], np.r_[y, y[-1] + slope * (high - x[-1])]
    return ScoreMap(tuple(x.tolist()), tuple(y.tolist()))


def fit_coarse_to_fine(coarse: np.ndarray, fine: np.ndarray,
                       method: str = "isotonic", max_knots: int = 256) -> ScoreMap:
    """A strictly increasing map of coarse similarities onto the fine scale.

    Args:
        coarse: ``[P]`` coarse similarities of P pairs.
        fine: ``[P]`` fine similarities of the same pairs on the merge scale (``s / 2 + 1/2``).
        method: ``isotonic`` (least-squares monotone regression: the fine score expected at each
            coarse score; knots at the centres of its constant blocks) or ``quantile`` (the coarse
            score at quantile q goes to the fine score at quantile q).
        max_knots: quantile knots (isotonic uses its blocks).
    """
    coarse, fine = np.asarray(coarse, np.float64), np.asarray(fine, np.float64)
    if coarse.shape != fine.shape or coarse.ndim != 1 or coarse.size < 2:
        raise ValueError(f"need >= 2 pairs with both scores, got shapes {coarse.shape} and "
                         f"{fine.shape}")
    if method == "quantile":
        levels = np.linspace(0.0, 1.0, min(max_knots, coarse.size))
        return _strictly_increasing(np.quantile(coarse, levels), np.quantile(fine, levels))
    if method != "isotonic":
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    order = np.argsort(coarse, kind="stable")
    x, target = coarse[order], fine[order]
    fitted = IsotonicRegression(increasing=True).fit_transform(x, target)
    # One knot per constant block, at its mean coarse score: piecewise linear between blocks.
    starts = np.flatnonzero(np.r_[True, np.diff(fitted) != 0])
    centres = np.add.reduceat(x, starts) / np.diff(np.r_[starts, x.size])
    return _strictly_increasing(centres, fitted[starts])


@dataclasses.dataclass(frozen=True)
class MatchThreshold:
    """The score from which a hit counts as a match, fitted on labelled pairs.

    Attributes:
        score: the threshold (a hit matches when its score is >= it).
        target_precision: the precision asked for.
        precision, recall: measured on the labelled pairs at ``score``.
        pairs, positives: how many labelled pairs (and positives among them) it was fitted on.
        source: what the labels were (e.g. the annotation file and dataset).
    """

    score: float
    target_precision: float
    precision: float
    recall: float
    pairs: int
    positives: int
    source: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> "MatchThreshold":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def precision_recall(scores: np.ndarray, labels: np.ndarray):
    """Precision and recall of ``scores >= t`` at every distinct score t, highest t first.

    Returns:
        ``(thresholds [M], precision [M], recall [M])``.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be equally long 1-d arrays, got "
                         f"{scores.shape} and {labels.shape}")
    if not labels.any():
        raise ValueError("the labelled pairs hold no positive pair")
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_value = np.r_[scores[1:] != scores[:-1], True]  # ties are kept or dropped together
    true_positives = np.cumsum(labels)[last_of_value]
    kept = np.flatnonzero(last_of_value) + 1
    return scores[last_of_value], true_positives / kept, true_positives / labels.sum()


def fit_match_threshold(scores: np.ndarray, labels: np.ndarray, target_precision: float,
                        source: str = "") -> MatchThreshold:
    """The lowest score whose matches (``score >= it``) are at least ``target_precision`` precise:
    the most recall at that precision.

    Args:
        scores: ``[P]`` scores of labelled pairs, as search returns them.
        labels: ``[P]`` bool, True for the pairs that match.
        target_precision: in (0, 1].
        source: where the labels come from (kept with the threshold).

    Raises:
        ValueError: no threshold reaches the target precision.
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target_precision}")
    thresholds, precision, recall = precision_recall(scores, labels)
    good = np.flatnonzero(precision >= target_precision)
    if not good.size:
        raise ValueError(f"no score threshold reaches precision {target_precision} on these "
                         f"{len(labels)} pairs (best: {precision.max():.3f})")
    best = good[-1]
    return MatchThreshold(float(thresholds[best]), float(target_precision),
                          float(precision[best]), float(recall[best]), int(len(labels)),
                          int(np.sum(labels)), source)


@dataclasses.dataclass(frozen=True)
class IndexCalibration:
    """What an index stores about its scores (``<index>/calibration.json``).

    Attributes:
        coarse_to_fine: the coarse-to-fine map fitted on the index's videos.
        fitted_on: how it was fitted (videos in the index, pairs, method).
        threshold: the match threshold fitted on labelled pairs, if any.
    """

    coarse_to_fine: ScoreMap
    fitted_on: dict
    threshold: MatchThreshold | None = None

    def as_dict(self) -> dict:
        return {"coarse_to_fine": self.coarse_to_fine.as_dict(), "fitted_on": self.fitted_on,
                "threshold": None if self.threshold is None
                else dataclasses.asdict(self.threshold)}

    @classmethod
    def load(cls, index_path: str | os.PathLike) -> "IndexCalibration | None":
        """The calibration stored with the index at ``index_path`` (None if there is none)."""
        path = os.path.join(os.fspath(index_path), CALIBRATION_FILE)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as file:
                data = json.load(file)
            return cls(ScoreMap.from_dict(data["coarse_to_fine"]), dict(data["fitted_on"]),
                       None if data.get("threshold") is None
                       else MatchThreshold.from_dict(data["threshold"]))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a valid score calibration: {error}") from None

    def save(self, index_path: str | os.PathLike) -> str:
        """Writes ``calibration.json`` into the index directory atomically; returns its path."""
        folder = os.fspath(index_path)
        path = os.path.join(folder, CALIBRATION_FILE)
        handle, partial = tempfile.mkstemp(prefix=f".{CALIBRATION_FILE}.", dir=folder)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(self.as_dict(), file, indent=1)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise
        return path


def sample_database_pairs(index, config: CalibrationConfig = CalibrationConfig()
                          ) -> list[tuple[str, str]]:
    """Unordered pairs of indexed videos to fit the map on: every pair of a small index, else
    sampled videos with their ``neighbours`` coarse nearest neighbours and as many random others,
    at most ``config.max_pairs``."""
    ids = index.ids()
    if len(ids) < 2:
        raise ValueError(f"the index at {index.path} holds {len(ids)} videos; calibrating its "
                         f"scores needs at least 2")
    if len(ids) * (len(ids) - 1) // 2 <= config.max_pairs:
        return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
    rng = np.random.default_rng(config.seed)
    per_anchor = 2 * config.neighbours
    anchors = [ids[i] for i in rng.choice(len(ids), min(len(ids), config.max_pairs // per_anchor),
                                          replace=False)]
    coarse = np.stack([record.coarse for record in index.get_many(anchors)])
    found = index.search(coarse, min(len(ids), config.neighbours + 1))
    pairs = set()
    for anchor, neighbours in zip(anchors, found.ids):
        others = [ids[i] for i in rng.choice(len(ids), config.neighbours, replace=False)]
        pairs.update(tuple(sorted((anchor, other))) for other in [*neighbours, *others]
                     if other != anchor)
    return sorted(pairs)


def score_pairs(index, backend, pairs: Sequence[tuple[str, str]]):
    """Coarse and fine (merge scale, ``s / 2 + 1/2``) similarities ``[P]`` of indexed pairs,
    the fine ones through ``backend`` (in process or on a server)."""
    by_first: dict[str, list[int]] = {}
    for position, (first, _) in enumerate(pairs):
        by_first.setdefault(first, []).append(position)
    coarse = np.empty(len(pairs), np.float64)
    fine = np.empty(len(pairs), np.float64)
    for first, positions in by_first.items():
        query = index.get(first)
        targets = index.get_many([pairs[p][1] for p in positions])
        coarse[positions] = np.stack([t.coarse for t in targets]) @ query.coarse
        fine[positions] = np.asarray(backend.fine_similarity(
            query.fine, [t.fine for t in targets]), np.float64) / 2.0 + 0.5
    return coarse, fine


def fit_index_calibration(index, backend, config: CalibrationConfig = CalibrationConfig(),
                          threshold: MatchThreshold | None = None) -> IndexCalibration:
    """Fits the coarse-to-fine map on the index's own videos (no labels, no queries)."""
    pairs = sample_database_pairs(index, config)
    coarse, fine = score_pairs(index, backend, pairs)
    return IndexCalibration(fit_coarse_to_fine(coarse, fine, config.method),
                            {"videos": len(index), "pairs": len(pairs), "method": config.method,
                             "seed": config.seed}, threshold)


def refresh_calibration(index, backend,
                        config: CalibrationConfig = CalibrationConfig()) -> IndexCalibration:
    """Refits the coarse-to-fine map of ``index`` (after videos were added) and stores it; a match
    threshold stored before is kept."""
    previous = IndexCalibration.load(index.path)
    calibration = fit_index_calibration(index, backend, config,
                                        None if previous is None else previous.threshold)
    calibration.save(index.path)
    return calibration


def plot_precision_recall(curves: dict, threshold: MatchThreshold | None,
                          path_png: str | os.PathLike, title: str | None = None) -> None:
    """Precision against recall of each ``{name: (scores [P], labels [P])}``, with the fitted
    threshold marked on the first curve."""

    figure = Figure(figsize=(6, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    for name, (scores, labels) in curves.items():
        _, precision, recall = precision_recall(scores, labels)
        axis.plot(recall, precision, "-", label=name)
    if threshold is not None:
        axis.plot([threshold.recall], [threshold.precision], "o", color="black",
                  label=f"threshold {threshold.score:.3f} (target precision "
                        f"{threshold.target_precision:g})")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1.02)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    if title:
        axis.set_title(title)
    figure.savefig(os.fspath(path_png), dpi=120)
