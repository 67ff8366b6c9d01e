"""The paper's DnS trade-off sweep: accuracy against search time and storage, model-independent.

For every query, a routing (``SearchConfig.routing``) chooses the available database videos that
the fine student re-ranks, ``p`` percent of them; they get the fine-grained similarity, all others
keep the coarse one, raw (the ``paper`` merge) or mapped onto the fine scale by the index's
coarse-to-fine map (the ``calibrated`` and ``cascade`` merges; ``cascade`` ranks the re-ranked ones
first), exactly as :class:`~dns_tf.retrieval.DnSRetriever` answers with the same configuration.
With ``PAPER_SEARCH`` (selector routing, paper merge) it is the authors' ``evaluation_dns.py``:
the top ``int(p / 100 * available)`` videos by selector score per query, re-ranked within the same
score list. The sweep evaluates ``p = 0, 5, ..., 100`` plus the two students alone, and prices
each row:

* coarse-only: coarse seconds per query, coarse KB per video;
* fine-only: fine seconds per query, fine KB per video;
* DnS at ``p``: ``p/100 * fine + coarse + selector`` seconds per query (the fine student runs on p%
  of the pairs; no selector time with coarse routing) and ``coarse + fine + selector`` KB per
  video (any video may be re-ranked, so all three representations are stored).

Fine similarities come on the merge scale: the authors map the fine students' similarity from
[-1, 1] to [0, 1] (``s / 2 + 0.5``).

Example:

    rows = dns_sweep(dataset, coarse, fine, selector_scores,
                     coarse_cost=Cost(0.01, 4.0), fine_cost=Cost(2.5, 2000.0),
                     selector_cost=Cost(0.001, 0.004),
                     search=SearchConfig(), coarse_to_fine=calibration.coarse_to_fine)
    print(format_table(rows))
    plot_sweep(rows, "dns_sweep.png")
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterable, Mapping, Sequence, Union

import numpy as np
# A bare Figure on the Agg canvas: no pyplot, no global backend switch for the caller.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from dns_tf.calibration import ScoreMap
from dns_tf.evaluation.datasets import RetrievalDataset
from dns_tf.evaluation.similarities import SimilarityMatrix
from dns_tf.retrieval import CALIBRATED_MERGES, PAPER_SEARCH, SearchConfig, route

DEFAULT_PERCENTAGES = tuple(range(0, 101, 5))
CASCADE_OFFSET = 2.0

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


def routed_columns(routing: str, count: int, coarse: np.ndarray, selector: np.ndarray | None,
                   available_columns: np.ndarray) -> np.ndarray:
    """The columns of one query's row that ``routing`` re-ranks when ``count`` of the available
    ones are (``coarse``, ``selector``: the row ``[N]``)."""
    if count >= available_columns.size:
        return available_columns
    return available_columns[route(routing, count, coarse[available_columns],
                                   None if selector is None else selector[available_columns])]


def dns_similarities(coarse: np.ndarray, fine: np.ndarray, selector_scores: np.ndarray | None,
                     search: SearchConfig, coarse_to_fine: ScoreMap | None = None,
                     available: np.ndarray | None = None) -> np.ndarray:
    """The ``[Q, N]`` scores :class:`~dns_tf.retrieval.DnSRetriever` gives with ``search`` (its
    mode, percentage or budget, routing and merge) over every available database video, from the
    matrices of :func:`~dns_tf.evaluation.index_scores.database_scores` (``fine`` on the merge
    scale). Unavailable columns keep their (zero) coarse score."""
    coarse = np.asarray(coarse)
    _check_calibration(search, coarse_to_fine)
    available_columns = np.flatnonzero(
        np.ones(coarse.shape[1], bool) if available is None else np.asarray(available, bool))
    merged = (coarse if search.merge == "paper" else coarse_to_fine(coarse)).astype(np.float64)
    count = search.rerank_count(available_columns.size)
    for row in range(coarse.shape[0]):
        columns = routed_columns(search.routing, count, coarse[row], None if selector_scores is None
                                 else selector_scores[row], available_columns)
        merged[row, columns] = fine[row, columns]
    return merged


def _check_calibration(search: SearchConfig, coarse_to_fine: ScoreMap | None) -> None:
    if search.merge in CALIBRATED_MERGES and coarse_to_fine is None:
        raise ValueError(f"the {search.merge} merge needs the index's coarse_to_fine map")


def _rank_offset(search: SearchConfig, count: int, available: int) -> float:
    """What lifts re-ranked scores above all others under the cascade merge, which ranks them
    first (scores on the fine scale lie in [0, 1]), so that the evaluated matrix ranks as the
    search does."""
    return CASCADE_OFFSET if search.merge == "cascade" and count < available else 0.0


def dns_sweep(dataset: RetrievalDataset,
              coarse: np.ndarray,
              fine: Union[np.ndarray, FineSimilarityFn],
              selector_scores: np.ndarray | None,
              *,
              coarse_cost: Cost,
              fine_cost: Cost,
              selector_cost: Cost,
              search: SearchConfig = PAPER_SEARCH,
              coarse_to_fine: ScoreMap | None = None,
              available: np.ndarray | None = None,
              queries: Sequence[str] | None = None,
              percentages: Iterable[float] = DEFAULT_PERCENTAGES,
              include_fine_only: bool = True,
              progress: bool = False) -> list[SweepRow]:
    """Evaluates coarse-only, fine-only and DnS at each percentage.

    Args:
        dataset: the benchmark whose ``evaluate`` scores each operating point.
        coarse: float [Q, N], raw coarse similarities; columns follow ``dataset.database``.
        fine: float [Q, N] fine similarities on the merge scale (``s / 2 + 1/2``), or
            ``fine(query_row, columns) -> [len(columns)]`` called once per query with the columns
            it needs: all available ones for the fine-only row, else those some percentage routes.
        selector_scores: float [Q, N] selector scores (None when ``search.routing`` is
            ``coarse``).
        coarse_cost, fine_cost, selector_cost: each method's seconds per query and KB per video.
        search: its ``routing`` chooses the pairs re-ranked and its ``merge`` the scale of the
            others (``calibrated`` maps them with ``coarse_to_fine``), as
            :class:`~dns_tf.retrieval.DnSRetriever` does. Default: the authors' protocol.
        coarse_to_fine: the index's coarse-to-fine map (needed by the calibrated merge).
        available: bool [N], the database videos that were indexed (None: all). Only they are
            re-ranked and evaluated (the dataset's subset evaluation).
        queries: [Q] ids of the rows; default ``dataset.queries``.
        percentages: shares of the available database to re-rank, 0 to 100.
        include_fine_only: add the fine-only row (needs the fine similarity of every pair).
        progress: show a progress bar.

    Returns:
        ``[coarse-only, fine-only (if included), DnS at each percentage]``; with the calibrated
        merge, coarse-only is the coarse similarities mapped onto the fine scale (the same
        ranking).
    """
    queries = list(dataset.queries if queries is None else queries)
    num_database = len(dataset.database)
    coarse = np.asarray(coarse)
    matrices = [("coarse", coarse)]
    if search.routing != "coarse":
        if selector_scores is None:
            raise ValueError(f"routing {search.routing!r} needs the selector scores")
        selector_scores = np.asarray(selector_scores)
        matrices.append(("selector_scores", selector_scores))
    for name, matrix in matrices:
        if matrix.shape != (len(queries), num_database):
            raise ValueError(f"{name} has shape {matrix.shape}; expected [queries, database] = "
                             f"[{len(queries)}, {num_database}]")
    if isinstance(fine, np.ndarray) and fine.shape != coarse.shape:
        raise ValueError(f"fine has shape {fine.shape}; expected {coarse.shape} like coarse")
    _check_calibration(search, coarse_to_fine)
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
    counts = [dataclasses.replace(search, mode="dns", percentage=p, budget=0)
              .rerank_count(num_available) for p in percentages]
    base = (coarse if search.merge == "paper" else coarse_to_fine(coarse)).astype(np.float64)

    def routed(row: int, count: int) -> np.ndarray:
        return routed_columns(search.routing, count, coarse[row], None if selector_scores is None
                              else selector_scores[row], available_columns)

    # The fine similarities of every pair some operating point re-ranks.
    if isinstance(fine, np.ndarray):
        known_fine = np.asarray(fine, np.float64)
    else:
        known_fine = np.zeros(coarse.shape, np.float64)
        needed_counts = sorted(set(counts) | ({num_available} if include_fine_only else set()))
        for row in tqdm(range(len(queries)), desc="fine similarities", disable=not progress):
            columns = np.unique(np.concatenate(
                [np.zeros(0, np.int64), *(routed(row, count) for count in needed_counts)]))
            values = np.asarray(fine(row, columns), dtype=np.float64)
            if values.shape != columns.shape:
                raise ValueError(f"fine similarity function returned shape {values.shape} for "
                                 f"{columns.size} columns of query row {row}")
            known_fine[row, columns] = values

    metrics_by_count: dict[int, dict[str, float]] = {}

    def metrics_at(count: int) -> dict[str, float]:
        if count not in metrics_by_count:
            merged = base.copy()
            for row in range(len(queries)):
                columns = routed(row, count)
                merged[row, columns] = (known_fine[row, columns]
                                        + _rank_offset(search, count, num_available))
            metrics_by_count[count] = dataset.evaluate(
                SimilarityMatrix(merged, queries, dataset.database), all_db)
        return metrics_by_count[count]

    dns_seconds = coarse_cost.seconds_per_query + (
        selector_cost.seconds_per_query if search.routing != "coarse" else 0.0)
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
               metric: str | None = None, title: str | None = None,
               label: str = "DnS", others: Mapping[str, Sequence[SweepRow]] | None = None
               ) -> None:
    """Draws the paper's trade-off figure into a PNG file.

    Left: ``metric`` against the share of the database re-ranked, with the two students alone as
    horizontal lines. Right: ``metric`` against seconds per query (log scale), DnS as a curve and
    the students as points, each labelled with its storage.

    Args:
        rows: the output of ``dns_sweep``.
        path_png: where to write the figure.
        metric: which metric to plot; default the first one of the rows.
        title: figure title, e.g. the dataset's name.
        label: the legend of the DnS curve of ``rows``.
        others: more DnS curves to draw beside it, ``{legend: sweep rows}`` (e.g. the paper's
            merge and routing next to the default).
    """

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
    colors = {"coarse-only": "tab:blue", "fine-only": "tab:red"}
    curves = {label: dns}
    curves.update({name: sorted((row for row in other if row.method == "DnS"),
                                key=lambda row: row.percentage)
                   for name, other in (others or {}).items()})
    if any(metric not in row.metrics for curve in curves.values() for row in curve):
        raise ValueError(f"metric {metric!r} is missing from some rows")
    palette = iter(["tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:gray"])
    for name, curve in curves.items():
        if not curve:
            continue
        color = next(palette)
        by_share.plot([row.percentage for row in curve], [row.metrics[metric] for row in curve],
                      "o-", color=color, label=f"{name} ({curve[0].kb_per_video:.4g} KB/video)")
        by_time.plot([row.seconds_per_query for row in curve],
                     [row.metrics[metric] for row in curve], "o-", color=color, label=name)
        for row in curve if name == label else ():
            if row.percentage in (5, 10, 25, 50):
                by_time.annotate(_format_percentage(row.percentage),
                                 (row.seconds_per_query, row.metrics[metric]),
                                 textcoords="offset points", xytext=(4, -10), fontsize=8)
    for row in students:
        legend = f"{row.method} ({row.kb_per_video:.4g} KB/video)"
        by_share.axhline(row.metrics[metric], linestyle="--", color=colors.get(row.method),
                         label=legend)
        by_time.plot([row.seconds_per_query], [row.metrics[metric]], "s", markersize=8,
                     color=colors.get(row.method), label=legend)
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
