"""The demo's evaluation: serve the exported models, index through the server, search, report.

Each method answers every query of the held-out collection against its whole database; accuracy is
FIVR's mAP (DSVR, CSVR, ISVR: the collection labels near-duplicates and duplicate scenes only, so
the three agree), time is the search's wall time per query (the query already indexed), storage is
what the index keeps per database video.

Everything the report and the plot show is in ``results.json`` first:

    {"merge": "calibrated",
     "methods": {"teacher": M, "fine_attention": M, "fine_binarization": M, "coarse": M},
     "sweep": [{"percentage": 0, "DSVR": x, "CSVR": x, "ISVR": x, "ms_per_query": x}, ...],
     "sweep_paper": [...]}

with ``M = {"DSVR", "CSVR", "ISVR", "ms_per_query", "kb_per_video"}``; ``sweep`` is DnS with the
default search (calibrated merge, coarse routing) at every 5 % from 0 to 100, ``sweep_paper`` the
same with the paper's merge and routing (``evaluation_dns.py``). Beside them, ``coarse_reach``
(:func:`coarse_reach`) says what bounds DnS at 10 % on the collection and ``localization`` how well
the fine students find the copied segments. :func:`write_report` renders ``report.md`` and
``dns_sweep.png`` from it alone.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dns_tf.calibration import IndexCalibration, refresh_calibration
from dns_tf.data.padding import padded_batch_from_arrays
from dns_tf.demo import say
from dns_tf.evaluation.datasets import FIVR
from dns_tf.evaluation.index_scores import database_scores
from dns_tf.evaluation.similarities import SimilarityMatrix
from dns_tf.evaluation.sweep import Cost, dns_sweep, routed_columns
from dns_tf.index.store import VideoIndex
from dns_tf.localization import (LocalizationConfig, frame_to_frame, group_segments,
                                 localization_metrics, localize_matrix, plot_localization,
                                 write_segments)
from dns_tf.retrieval import PAPER_SEARCH, DnSRetriever, SearchConfig, index_metadata
from serving.client import RemoteBackend
from serving.server import ModelServer
from training.scoring import PairScorer

SELECTOR_BYTES = 4  # one float32 self-similarity score per video
METRICS = ("DSVR", "CSVR", "ISVR")
METHODS = {"teacher": "ViSiL teacher", "fine_attention": "S^f_A (attention)",
           "fine_binarization": "S^f_B (binarization)", "coarse": "S^c (coarse)"}


def _kb(nbytes: float) -> float:
    return nbytes / 1024.0


def build_index(path: pathlib.Path, backend, features, database, batch: int = 8):
    """Indexes the database videos through ``backend`` into a :class:`VideoIndex` at ``path`` and
    fits the index's label-free calibration of coarse onto fine scores (database pairs only)."""
    if path.exists():
        index = VideoIndex.open(str(path))
    else:
        probe = backend.index(features[database[0]][None],
                              np.ones((1, len(features[database[0]])), np.float32))
        regions, width = probe.fine[0].shape[1:]
        index = VideoIndex.create(
            str(path), coarse_dims=probe.coarse.shape[1], fine_kind=backend.fine_kind,
            fine_shape_tail=(regions, width * 8 if backend.fine_kind == "bits" else width),
            metadata=index_metadata(backend))  # the networks' fingerprints (and server)
    todo = [video_id for video_id in database if video_id not in index]
    for start in range(0, len(todo), batch):
        chosen = todo[start:start + batch]
        videos, mask = padded_batch_from_arrays([features[v] for v in chosen])
        indexed = backend.index(videos, mask)
        index.add_many(chosen, indexed.coarse, indexed.fine, indexed.selector)
    if todo or not (path / "calibration.json").is_file():
        refresh_calibration(index, backend)
    return index


def _timed_matrix(score_row, queries):
    """``[Q, N]`` similarities from ``score_row(query) -> [N]`` and mean seconds per query."""
    rows, seconds = [], []
    for query in queries:
        start = time.perf_counter()
        rows.append(np.asarray(score_row(query), np.float32))
        seconds.append(time.perf_counter() - start)
    return np.stack(rows), float(np.mean(seconds))


def _method(metrics: dict, seconds: float, kb: float) -> dict:
    return {**{name: float(metrics[name]) for name in METRICS},
            "ms_per_query": 1e3 * seconds, "kb_per_video": kb}


def _sweep_points(rows) -> list:
    return [{"percentage": row.percentage, **{name: float(row.metrics[name]) for name in METRICS},
             "ms_per_query": 1e3 * row.seconds_per_query}
            for row in rows if row.method == "DnS"]


def evaluate_demo(root: pathlib.Path, collection, teacher, teacher_features, students, selector,
                  features, models_config, percentages) -> dict:
    """Scores every method on the held-out collection; writes ``results.json``,
    ``similarities.npz`` (every matrix, for offline analysis), ``report.md`` and the plot."""
    dataset = FIVR(collection.fivr_annotation(), version="demo")
    # Matrices follow the dataset's order of queries and database videos.
    queries, database = list(dataset.queries), list(dataset.database)

    def metrics(matrix):
        return dataset.evaluate(SimilarityMatrix(matrix, queries, database))

    frames = np.array([len(features[v]) for v in database], np.float64)
    methods, matrices = {}, {}

    # The teacher and the binarization student, in process (the server hosts the DnS model).
    for key, model, source, bytes_per_frame in (
            ("teacher", teacher, teacher_features, 9 * teacher.dims * 4),
            ("fine_binarization", students["fg_bin"], features, 9 * 512 // 8)):
        scorer = PairScorer(model, source)
        scorer.score(queries[0], database[:2])  # trace once, outside the timing
        matrix, seconds = _timed_matrix(lambda q: scorer.score(q, database), queries)
        matrices[key] = matrix
        methods[key] = _method(metrics(matrix), seconds, _kb(frames.mean() * bytes_per_frame))

    # XLA on CPU: the binarization student's popcount kernel, as tensorflow_model_server needs.
    server = ModelServer(str(models_config), port=0, xla_cpu_compilation_enabled=True)
    port = server.start()
    say(f"embedded TF Serving API on 127.0.0.1:{port}")
    try:
        backend = RemoteBackend(f"127.0.0.1:{port}")
        index = build_index(root / "index" / "eval", backend, features, database)
        retriever = DnSRetriever(index, backend)
        stats = index.stats()
        # Coarse, fine (s / 2 + 1/2) and selector scores of every pair, each stage timed.
        scores = database_scores(retriever, [features[q] for q in queries], database)
        matrices.update(coarse=scores.coarse, fine_attention=scores.fine, selector=scores.selector)
        coarse_kb = _kb(4 * index.coarse_dims)
        fine_kb = _kb(frames.mean() * 9 * 512 * 2)
        methods["coarse"] = _method(metrics(scores.coarse), scores.seconds_per_query["coarse"],
                                    coarse_kb)
        methods["fine_attention"] = _method(metrics(scores.fine),
                                            scores.seconds_per_query["fine"], fine_kb)

        # A few operating points searched for real, to time them and to check the sweep.
        indexed = {q: retriever.index_query(features[q]) for q in queries}
        searched = []
        for percentage in percentages:
            config = SearchConfig(mode="dns", percentage=percentage, top=len(database))
            retriever.search_indexed(indexed[queries[0]], 0, config)  # warm-up

            def row(query):
                ranking = retriever.search_indexed(indexed[query], 0, config)
                found = dict(zip(ranking.ids, ranking.scores.tolist()))
                return [found[v] for v in database]
            matrix, seconds = _timed_matrix(row, queries)
            searched.append({"percentage": percentage, "DSVR": metrics(matrix)["DSVR"],
                             "ms_per_query": 1e3 * seconds})

        # The sweeps: every 5 % on the same matrices, priced from the measured stage times.
        costs = dict(coarse_cost=Cost(scores.seconds_per_query["coarse"], coarse_kb),
                     fine_cost=Cost(scores.seconds_per_query["fine"], fine_kb),
                     selector_cost=Cost(scores.seconds_per_query["selector"],
                                        _kb(SELECTOR_BYTES)))
        calibration = IndexCalibration.load(index.path)
        sweep = dns_sweep(dataset, scores.coarse, scores.fine, scores.selector, **costs,
                          search=SearchConfig(), coarse_to_fine=calibration.coarse_to_fine)
        sweep_paper = dns_sweep(dataset, scores.coarse, scores.fine, scores.selector, **costs,
                                search=PAPER_SEARCH)
    finally:
        server.stop(grace=2)

    results = {"merge": SearchConfig().merge, "methods": methods,
               "sweep": _sweep_points(sweep), "sweep_paper": _sweep_points(sweep_paper),
               "coarse_reach": coarse_reach(dataset, scores.coarse, {
                   "fine_attention": scores.fine, "teacher": matrices["teacher"]}),
               "localization": localize_copies(root, collection, students, features)}
    _write_json(root / "results.json", results)
    np.savez_compressed(root / "similarities.npz", queries=np.array(queries),
                        database=np.array(database), **matrices)
    description = (
        f"Held-out collection: {len(queries)} queries, {len(database)} database videos "
        f"({frames.mean():.1f} s on average; {int(frames.sum())} s in all). Accuracy: FIVR mAP "
        "(the collection labels near-duplicates and duplicate scenes only, so DSVR = CSVR = "
        "ISVR). Time: search per query, query already indexed, over gRPC for S^c, S^f_A and DnS "
        "(embedded TF Serving API), in process for the teacher and S^f_B.")
    report = write_report(root, description, searched, stats)
    return {"results": results, "table": format_methods(results), "report": str(report)}


def coarse_reach(dataset: FIVR, coarse: np.ndarray, fine_stages: dict,
                 percentage: float = 10.0) -> dict:
    """What bounds DnS at ``percentage`` on this collection, in ``results.json``:

    ``relevant_share``, the mean share of a query's relevant videos inside the coarse top
    ``percentage`` % (all that re-ranking them can reach), and for each fine stage the DSVR of
    re-ranking exactly those, ordered first by the fine score (the cascade order). With the
    ViSiL teacher as the fine stage it says whether any student could do better there.

    Args:
        coarse: float [Q, N] in the dataset's order of queries and database videos.
        fine_stages: name -> float [Q, N] on any scale (only the order among the re-ranked
            videos counts).
    """
    queries, database = list(dataset.queries), list(dataset.database)
    count = SearchConfig(percentage=percentage).rerank_count(len(database))
    every_column = np.arange(len(database))
    reached = np.zeros(coarse.shape, bool)
    for row, scores in enumerate(coarse):  # the columns the default (coarse) routing re-ranks
        reached[row, routed_columns("coarse", count, scores, None, every_column)] = True
    shares = []
    for query, row in zip(queries, reached):
        relevant = dataset.pair_labels(query)[0]
        shares.append(len(relevant & {database[i] for i in np.flatnonzero(row)}) / len(relevant))
    reranked = {}
    for name, fine in fine_stages.items():
        above_all = fine - fine.min() + coarse.max() + 1.0  # the re-ranked ones come first
        order = SimilarityMatrix(np.where(reached, above_all, coarse), queries, database)
        reranked[name] = dataset.evaluate(order)["DSVR"]
    return {"percentage": percentage, "relevant_share": float(np.mean(shares)),
            "DSVR_reranked_by": reranked}


def localize_copies(root: pathlib.Path, collection, students, features,
                    pictures: int = 3) -> dict:
    """Where is the copy: every ND and DS pair of the collection localised with each fine student
    (:func:`~dns_tf.localization.localize` on its frame-to-frame matrix) against the segments the
    collection recorded when it cut them. Writes ``localization/<student>.json`` (predicted
    segments) and, for S^f_A, ``pictures`` PNGs of matrices with both sets of segments drawn;
    returns ``{student: localization_metrics}``. The pictures are of the pairs whose copy is the
    smallest share of the target (a few seconds inside long footage)."""
    truth = group_segments(collection.segments(), source="segments.json")
    share = {pair: sum(s.target_end - s.target_start for s in segments)
             / collection.videos[pair[1]].duration for pair, segments in truth.items()}
    drawn = set(sorted(truth, key=share.get)[:pictures])
    folder = root / "localization"
    folder.mkdir(exist_ok=True)
    metrics = {}
    for key, name in (("fine_attention", "fg_att"), ("fine_binarization", "fg_bin")):
        student = students[name]
        indexed = {}

        def stored(video_id):
            if video_id not in indexed:
                indexed[video_id] = student.index_video(features[video_id])
            return indexed[video_id]

        predictions = {}
        for query, target in sorted(truth):
            matrix = frame_to_frame(student, stored(query), stored(target))
            predictions[query, target] = localize_matrix(matrix, LocalizationConfig())
            if key == "fine_attention" and (query, target) in drawn:
                plot_localization(matrix, folder / f"{query}_{target}.png",
                                  predictions[query, target], truth[query, target],
                                  title=f"{query} in {target} ({METHODS[key]})")
        write_segments(folder / f"{key}.json", predictions)
        metrics[key] = localization_metrics(truth, predictions)
        say(f"localisation, {METHODS[key]}: segment F1@IoU0.5 "
            f"{metrics[key]['segment_f1_iou50']:.3f} over {len(truth)} ND/DS pairs")
    return metrics


def write_report(root: pathlib.Path, description: str = "", searched=(),
                 stats=None) -> pathlib.Path:
    """``report.md`` and ``dns_sweep.png`` from ``root/results.json`` (and ``timings.json``)."""
    results = json.loads((root / "results.json").read_text(encoding="utf-8"))
    plot_results(results, root / "dns_sweep.png")
    parts = ["# dns-tf demo report", description,
             format_methods(results),
             "## DnS sweep: default search and the paper's, side by side",
             f"Default: `SearchConfig()` (merge `{results['merge']}`, its default routing); "
             "paper: `PAPER_SEARCH` (raw coarse scores next to fine ones, selector routing, as "
             "the authors' `evaluation_dns.py`). Time is priced from the measured coarse, "
             "selector and fine times (the fine student runs on the re-ranked share).",
             format_sweeps(results), "![DnS sweep](dns_sweep.png)",
             "## What DnS should show", format_conclusions(conclusions(results)),
             format_reach(results)]
    if "localization" in results:
        lines = ["| student | segment F1@IoU0.5 | precision | recall | segment µAP | pairs |",
                 "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {METHODS[key]} | {m['segment_f1_iou50']:.3f} | {m['precision_iou50']:.3f} | "
                  f"{m['recall_iou50']:.3f} | {m['segment_muap']:.3f} | {m['pairs']} |"
                  for key, m in results["localization"].items()]
        parts += ["## Where is the copy (ND and DS pairs, `localization/`)", "\n".join(lines)]
    if searched:
        lines = ["| re-ranked | DSVR | ms / query |", "|---:|---:|---:|"]
        lines += [f"| {p['percentage']:g} % | {p['DSVR']:.3f} | {p['ms_per_query']:.1f} |"
                  for p in searched]
        parts += ["## DnS searched through the server (default search)", "\n".join(lines)]
    timings = root / "timings.json"
    if timings.is_file():
        stages = json.loads(timings.read_text(encoding="utf-8"))
        lines = ["| stage | wall s | CPU s |", "|---|---:|---:|"]
        lines += [f"| {name} | {t['wall_s']:.0f} | {t['cpu_s']:.0f} |"
                  for name, t in stages.items()]
        parts += ["## Stages of this run", "\n".join(lines)]
    if stats is not None:
        parts.append(f"Index: {json.dumps(stats, default=str)}")
    report = root / "report.md"
    report.write_text("\n\n".join(part for part in parts if part) + "\n", encoding="utf-8")
    return report


def format_methods(results: dict) -> str:
    lines = ["| method | DSVR | CSVR | ISVR | ms / query | KB / video |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, name in METHODS.items():
        m = results["methods"][key]
        lines.append(f"| {name} | {m['DSVR']:.3f} | {m['CSVR']:.3f} | {m['ISVR']:.3f} | "
                     f"{m['ms_per_query']:.1f} | {m['kb_per_video']:.2f} |")
    return "\n".join(lines)


def format_sweeps(results: dict) -> str:
    lines = ["| re-ranked | DSVR default | DSVR paper | ms / query |", "|---:|---:|---:|---:|"]
    for mine, paper in zip(results["sweep"], results["sweep_paper"]):
        lines.append(f"| {mine['percentage']:g} % | {mine['DSVR']:.3f} | {paper['DSVR']:.3f} | "
                     f"{mine['ms_per_query']:.1f} |")
    return "\n".join(lines)


def conclusions(results: dict, metric: str = "DSVR") -> dict:
    """What DnS has to show on the demo (issue 11): the fine student clearly better than the
    coarse one; DnS at 10 % recovering 80 % of the gap; no default point below coarse - 0.005."""
    coarse = results["methods"]["coarse"][metric]
    fine = results["methods"]["fine_attention"][metric]
    at = {point["percentage"]: point[metric] for point in results["sweep"]}
    lowest = min(results["sweep"], key=lambda point: point[metric])
    recovered = (at[10] - coarse) / (fine - coarse) if fine != coarse else float("nan")
    return {
        "fine beats coarse by 0.05": (fine - coarse >= 0.05,
                                      f"S^f_A {fine:.3f} - S^c {coarse:.3f} = "
                                      f"{fine - coarse:+.3f}"),
        "DnS at 10 % recovers 80 % of the gap": (
            at[10] >= coarse + 0.8 * (fine - coarse),
            f"{at[10]:.3f}, {100 * recovered:.0f} % of the gap"),
        "no default point below coarse - 0.005": (
            lowest[metric] >= coarse - 0.005,
            f"lowest {lowest[metric]:.3f} at {lowest['percentage']:g} %"),
    }


def format_conclusions(checks: dict) -> str:
    return "\n".join(f"- {'yes' if held else 'NO'}: {name} ({detail})"
                     for name, (held, detail) in checks.items())


def format_reach(results: dict) -> str:
    """One sentence on what the coarse stage lets the re-ranking reach (empty if not measured)."""
    reach = results.get("coarse_reach")
    if not reach:
        return ""
    reranked = reach["DSVR_reranked_by"]
    stages = "; ".join(f"{METHODS[name]} {value:.3f}" for name, value in reranked.items())
    return (f"What bounds DnS at {reach['percentage']:g} % here: S^c's top "
            f"{reach['percentage']:g} % holds {100 * reach['relevant_share']:.0f} % of the "
            f"queries' relevant videos; re-ranking exactly those with each fine stage (re-ranked "
            f"first, by its score) gives DSVR {stages}.")


def plot_results(results: dict, path_png: str | os.PathLike, metric: str = "DSVR") -> None:
    """Both sweeps against the share re-ranked and against time, the students as references."""
    # A bare Figure on the Agg canvas: no pyplot, no global backend switch for the caller.
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    by_share, by_time = figure.subplots(1, 2)
    for key, label, color in (("sweep", f"DnS, {results['merge']} merge (default)", "tab:green"),
                              ("sweep_paper", "DnS, paper's merge and routing", "tab:orange")):
        points = results[key]
        values = [p[metric] for p in points]
        by_share.plot([p["percentage"] for p in points], values, "o-", color=color, label=label,
                      markersize=4)
        by_time.plot([p["ms_per_query"] for p in points], values, "o-", color=color,
                     label=label, markersize=4)
    for key, color, style in (("coarse", "tab:blue", "--"), ("fine_attention", "tab:red", "--"),
                              ("teacher", "tab:gray", ":")):
        method = results["methods"][key]
        label = f"{METHODS[key]} ({method['kb_per_video']:.4g} KB/video)"
        by_share.axhline(method[metric], linestyle=style, color=color, label=label)
        by_time.plot([method["ms_per_query"]], [method[metric]], "s", markersize=7, color=color,
                     label=label)
    by_share.set_xlabel("database re-ranked by the fine student (%)")
    by_time.set_xlabel("ms per query")
    by_time.set_xscale("log")
    for axis in (by_share, by_time):
        axis.set_ylabel(f"{metric} mAP")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    figure.savefig(os.fspath(path_png), dpi=120)


def _write_json(path: pathlib.Path, content: dict) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)
