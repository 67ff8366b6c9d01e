"""The paper's DnS trade-off sweep: accuracy against search time and storage, model-independent.

For every query, the selector's scores rank the available database videos; the top ``p`` percent get
the fine-grained similarity, all others keep the coarse one (as ``evaluation_dns.py`` of the authors:
``floor(p * available / 100)`` videos per query, re-ranked within the same score list). The sweep
evaluates ``p = 0, 5, ..., 100`` plus the two students alone, and prices each row:

* coarse-only: coarse seconds per query, coarse KB per video;
* fine-only: fine seconds per query, fine KB per video;
* DnS at ``p``: ``p/100 * fine + coarse + selector`` seconds per query (the fine student runs on p%
  of the pairs) and ``coarse + fine + selector`` KB per video (any video may be re-ranked, so all
  three representations are stored).

The caller puts fine and coarse similarities on the scale they should be merged at; the authors map
the fine students' similarity from [-1, 1] to [0, 1] (``s / 2 + 0.5``) before merging.

Example:

    rows = dns_sweep(dataset, coarse, fine, selector_scores,
                     coarse_cost=Cost(0.01, 4.0), fine_cost=Cost(2.5, 2000.0),
                     selector_cost=Cost(0.001, 0.004))
    print(format_table(rows))
    plot_sweep(rows, "dns_sweep.png")
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Iterable, Sequence, Union

import numpy as np
from tqdm import tqdm

from dns_tf.evaluation.datasets import RetrievalDataset
from dns_tf.evaluation.similarities import SimilarityMatrix

DEFAULT_PERCENTAGES = tuple(range(0, 101, 5))

# fine(query_row, database_columns) -> float [len(database_columns)]: similarities computed on demand.
FineSimilarityFn = Callable[[int, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Cost:
    """What one method costs: search time per query and storage per database video."""

    seconds_per_query: float
    kb_per_video: float


@dataclasses.dataclass(frozen=True)
class SweepRow:
    """One operating point: ``method`` is 'coarse-only', 'fine-only' or 'DnS'; ``percentage`` is the
    share of the available database re-ranked by the fine student (None for the students alone)."""

    method: str
    percentage: float | None
    metrics: dict[str, float]
    seconds_per_query: float
    kb_per_video: float


def dns_sweep(dataset: RetrievalDataset,
              coarse: np.ndarray,
              fine: Union[np.ndarray, FineSimilarityFn],
              selector_scores: np.ndarray,
              *,
              coarse_cost: Cost,
              fine_cost: Cost,
              selector_cost: Cost,
              available: np.ndarray | None = None,
              queries: Sequence[str] | None = None,
              percentages: Iterable[float] = DEFAULT_PERCENTAGES,
              include_fine_only: bool = True,
              progress: bool = False) -> list[SweepRow]:
    """Evaluates coarse-only, fine-only and DnS at each percentage.

    Args:
        dataset: the benchmark whose ``evaluate`` scores each operating point.
        coarse: float [Q, N], coarse similarities; columns follow ``dataset.database``.
        fine: float [Q, N] fine similarities, or ``fine(query_row, columns) -> [len(columns)]``
            called once per query with the columns it needs, best selector score first: all
            available ones for the fine-only row, else as many as the largest percentage routes.
        selector_scores: float [Q, N], higher means "send this pair to the fine student".
        coarse_cost, fine_cost, selector_cost: each method's seconds per query and KB per video.
        available: bool [N], the database videos that were indexed (None: all). Only they are
            re-ranked and evaluated (the dataset's subset evaluation).
        queries: [Q] ids of the rows; default ``dataset.queries``.
        percentages: shares of the available database to re-rank, 0 to 100.
        include_fine_only: add the fine-only row (needs the fine similarity of every pair).
        progress: show a progress bar.

    Returns:
        ``[coarse-only, fine-only (if included), DnS at each percentage]``.
    """
    queries = list(dataset.queries if queries is None else queries)
    num_database = len(dataset.database)
    coarse = np.asarray(coarse)
    selector_scores = np.asarray(selector_scores)
    for name, matrix in (("coarse", coarse), ("selector_scores", selector_scores)):
        if matrix.shape != (len(queries), num_database):
            raise ValueError(f"{name} has shape {matrix.shape}; expected [queries, database] = "
                             f"[{len(queries)}, {num_database}]")
    if isinstance(fine, np.ndarray) and fine.shape != coarse.shape:
        raise ValueError(f"fine has shape {fine.shape}; expected {coarse.shape} like coarse")
    if available is None:
        available = np.ones(num_database, dtype=bool)
        all_db = None
    else:
        available = np.asarray(available, dtype=bool)
        if available.shape != (num_database,):
            raise ValueError(f"available has shape {available.shape}; expected [{num_database}]")
        all_db = set(np.asarray(dataset.database, dtype=object)[available])
    percentages = [float(p) for p in percentages]
    if any(not 0 <= p <= 100 for p in percentages):
        raise ValueError(f"percentages must lie in [0, 100], got {percentages}")

    available_columns = np.flatnonzero(available)
    num_available = available_columns.size
    counts = [math.floor(round(p * num_available / 100, 9)) for p in percentages]
    # Fine-only re-ranks every available pair; without it only the largest share is needed.
    num_needed = num_available if include_fine_only else max(counts, default=0)

    # Per query, the available columns by decreasing selector score, and their fine similarities.
    routed_columns = np.empty((len(queries), num_needed), dtype=np.int64)
    routed_fine = np.empty((len(queries), num_needed), dtype=np.float64)
    rows = tqdm(range(len(queries)), desc="fine similarities", disable=not progress)
    for row in rows:
        order = np.argsort(-selector_scores[row, available_columns], kind="stable")
        columns = available_columns[order[:num_needed]]
        routed_columns[row] = columns
        if isinstance(fine, np.ndarray):
            routed_fine[row] = fine[row, columns]
        else:
            values = np.asarray(fine(row, columns), dtype=np.float64)
            if values.shape != columns.shape:
                raise ValueError(f"fine similarity function returned shape {values.shape} for "
                                 f"{columns.size} columns of query row {row}")
            routed_fine[row] = values

    metrics_by_count: dict[int, dict[str, float]] = {}

    def metrics_at(count: int) -> dict[str, float]:
        if count not in metrics_by_count:
            merged = coarse.astype(np.float64, copy=True)
            np.put_along_axis(merged, routed_columns[:, :count], routed_fine[:, :count], axis=1)
            metrics_by_count[count] = dataset.evaluate(
                SimilarityMatrix(merged, queries, dataset.database), all_db)
        return metrics_by_count[count]

    dns_seconds = coarse_cost.seconds_per_query + selector_cost.seconds_per_query
    dns_kb = coarse_cost.kb_per_video + fine_cost.kb_per_video + selector_cost.kb_per_video
    results = [SweepRow("coarse-only", None, metrics_at(0), coarse_cost.seconds_per_query,
                        coarse_cost.kb_per_video)]
    if include_fine_only:
        results.append(SweepRow("fine-only", None, metrics_at(num_available),
                                fine_cost.seconds_per_query, fine_cost.kb_per_video))
    for percentage, count in tqdm(list(zip(percentages, counts)), desc="DnS sweep",
                                  disable=not progress):
        results.append(SweepRow(
            "DnS", percentage, metrics_at(count),
            dns_seconds + fine_cost.seconds_per_query * percentage / 100, dns_kb))
    return results


def _format_percentage(percentage: float | None) -> str:
    if percentage is None:
        return "-"
    return f"{percentage:g}%"


def format_table(rows: Sequence[SweepRow]) -> str:
    """The sweep as a markdown table: method, re-ranked share, each metric, s/query, KB/video."""
    metric_names = list(dict.fromkeys(name for row in rows for name in row.metrics))
    header = ["method", "re-ranked", *metric_names, "s/query", "KB/video"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.method, _format_percentage(row.percentage)]
        cells += [f"{row.metrics[name]:.4f}" if name in row.metrics else "" for name in metric_names]
        cells += [f"{row.seconds_per_query:.4g}", f"{row.kb_per_video:.4g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(rows: Sequence[SweepRow], path_png: str | os.PathLike,
               metric: str | None = None, title: str | None = None) -> None:
    """Draws the paper's trade-off figure into a PNG file.

    Left: ``metric`` against the share of the database re-ranked, with the two students alone as
    horizontal lines. Right: ``metric`` against seconds per query (log scale), DnS as a curve and
    the students as points, each labelled with its storage.

    Args:
        rows: the output of ``dns_sweep``.
        path_png: where to write the figure.
        metric: which metric to plot; default the first one of the rows.
        title: figure title, e.g. the dataset's name.
    """
    # A bare Figure on the Agg canvas: no pyplot, no global backend switch for the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("no sweep rows to plot")
    metric = metric or next(iter(rows[0].metrics))
    dns = sorted((row for row in rows if row.method == "DnS"), key=lambda row: row.percentage)
    students = [row for row in rows if row.method != "DnS"]
    if any(metric not in row.metrics for row in rows):
        raise ValueError(f"metric {metric!r} is missing from some rows; have "
                         f"{', '.join(rows[0].metrics)}")

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    by_share, by_time = figure.subplots(1, 2)
    colors = {"coarse-only": "tab:blue", "fine-only": "tab:red", "DnS": "tab:green"}
    if dns:
        by_share.plot([row.percentage for row in dns], [row.metrics[metric] for row in dns],
                      "o-", color=colors["DnS"], label=f"DnS ({dns[0].kb_per_video:.4g} KB/video)")
        by_time.plot([row.seconds_per_query for row in dns], [row.metrics[metric] for row in dns],
                     "o-", color=colors["DnS"], label="DnS")
        for row in dns:
            if row.percentage in (5, 10, 25, 50):
                by_time.annotate(_format_percentage(row.percentage),
                                 (row.seconds_per_query, row.metrics[metric]),
                                 textcoords="offset points", xytext=(4, -10), fontsize=8)
    for row in students:
        label = f"{row.method} ({row.kb_per_video:.4g} KB/video)"
        by_share.axhline(row.metrics[metric], linestyle="--", color=colors.get(row.method),
                         label=label)
        by_time.plot([row.seconds_per_query], [row.metrics[metric]], "s", markersize=8,
                     color=colors.get(row.method), label=label)
    by_share.set_xlabel("database re-ranked by the fine student (%)")
    by_time.set_xlabel("seconds per query")
    by_time.set_xscale("log")
    for axis in (by_share, by_time):
        axis.set_ylabel(metric)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    if title:
        figure.suptitle(title)
    figure.savefig(os.fspath(path_png), dpi=120)
