"""The demo's evaluation: serve the exported models, index through the server, search, report.

Each method answers every query of the held-out collection against its whole database; accuracy is
FIVR's DSVR mAP (near-duplicates and duplicate scenes are relevant), time is the search's wall
time per query (the query already indexed), storage is what the index keeps per database video.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np

from dns_tf.data.padding import padded_batch_from_arrays
from dns_tf.demo import say
from dns_tf.evaluation.datasets import FIVR
from dns_tf.evaluation.similarities import SimilarityMatrix
from dns_tf.evaluation.sweep import Cost, dns_sweep, format_table, plot_sweep
from dns_tf.retrieval import DnSRetriever, SearchConfig

SELECTOR_BYTES = 4  # one float32 self-similarity score per video


def _kb(nbytes: float) -> float:
    return nbytes / 1024.0


def build_index(path: pathlib.Path, backend, features, database, batch: int = 8):
    """Indexes the database videos through ``backend`` into a :class:`VideoIndex` at ``path``."""
    from dns_tf.index.store import VideoIndex
    from dns_tf.retrieval import index_metadata

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
    return index


def _timed_matrix(score_row, queries, database):
    """``[Q, N]`` similarities from ``score_row(query) -> [N]`` and mean seconds per query."""
    rows, seconds = [], []
    for query in queries:
        start = time.perf_counter()
        rows.append(np.asarray(score_row(query), np.float32))
        seconds.append(time.perf_counter() - start)
    return np.stack(rows), float(np.mean(seconds))


def evaluate_demo(root: pathlib.Path, collection, teacher, teacher_features, students, selector,
                  features, models_config, percentages) -> dict:
    from serving.client import RemoteBackend
    from serving.server import ModelServer
    from training.scoring import PairScorer

    dataset = FIVR(collection.fivr_annotation(), version="demo")
    # Matrices follow the dataset's order of queries and database videos.
    queries, database = list(dataset.queries), list(dataset.database)

    def accuracy(matrix):
        return dataset.evaluate(SimilarityMatrix(matrix, queries, database))["DSVR"]

    frames = np.array([len(features[v]) for v in database], np.float64)
    rows, matrices = [], {}

    # The teacher and the binarization student, in process (the server hosts the DnS model).
    for name, model, source, bytes_per_frame in (
            ("ViSiL teacher", teacher, teacher_features, 9 * teacher.dims * 4),
            ("S^f_B (binarization)", students["fg_bin"], features, 9 * 512 // 8)):
        scorer = PairScorer(model, source)
        scorer.score(queries[0], database[:2])  # trace once, outside the timing
        matrix, seconds = _timed_matrix(lambda q: scorer.score(q, database), queries, database)
        rows.append({"method": name, "DSVR": accuracy(matrix), "ms_per_query": 1e3 * seconds,
                     "kb_per_video": _kb(frames.mean() * bytes_per_frame)})

    # XLA on CPU: the binarization student's popcount kernel, as tensorflow_model_server needs.
    server = ModelServer(str(models_config), port=0, xla_cpu_compilation_enabled=True)
    port = server.start()
    say(f"embedded TF Serving API on 127.0.0.1:{port}")
    try:
        backend = RemoteBackend(f"127.0.0.1:{port}")
        index = build_index(root / "index" / "eval", backend, features, database)
        retriever = DnSRetriever(index, backend)
        stats = index.stats()
        indexed = {q: retriever.index_query(features[q]) for q in queries}
        everything = len(database)

        def searched(config):
            def row(query):
                ranking = retriever.search_indexed(indexed[query], 0, config)
                scores = dict(zip(ranking.ids, ranking.scores.tolist()))
                return [scores[v] for v in database]
            retriever.search_indexed(indexed[queries[0]], 0, config)  # warm-up
            return _timed_matrix(row, queries, database)

        coarse_kb = _kb(4 * index.coarse_dims)
        fine_kb = _kb(frames.mean() * 9 * 512 * 2)
        operating_points = [("S^c (coarse)", SearchConfig(mode="coarse", top=everything),
                             coarse_kb, None),
                            ("S^f_A (attention)", SearchConfig(mode="fine", top=everything),
                             fine_kb, None)]
        operating_points += [(f"DnS S^c + S^f_A, {p:g}%",
                              SearchConfig(mode="dns", percentage=p, top=everything),
                              coarse_kb + fine_kb + _kb(SELECTOR_BYTES), p) for p in percentages]
        for name, config, kb, percentage in operating_points:
            matrix, seconds = searched(config)
            matrices[config.mode if percentage is None else percentage] = matrix
            rows.append({"method": name, "DSVR": accuracy(matrix),
                         "ms_per_query": 1e3 * seconds, "kb_per_video": kb})

        # The sweep of the paper: every p from 0 to 100 on the same similarities.
        coarse, fine_mapped = matrices["coarse"], matrices["fine"]
        targets = index.selector_scores(database)
        routing = np.stack([retriever.routing_scores(indexed[q].selector[0], targets, coarse[i])
                            for i, q in enumerate(queries)])
        by_name = {row["method"]: row for row in rows}
        sweep = dns_sweep(
            dataset, coarse, fine_mapped, routing,
            coarse_cost=Cost(by_name["S^c (coarse)"]["ms_per_query"] / 1e3, coarse_kb),
            fine_cost=Cost(by_name["S^f_A (attention)"]["ms_per_query"] / 1e3, fine_kb),
            selector_cost=Cost(0.0, _kb(SELECTOR_BYTES)))
        plot_sweep(sweep, root / "dns_sweep.png")
    finally:
        server.stop(grace=2)

    table = format_rows(rows)
    report = root / "report.md"
    report.write_text(
        "# dns-tf demo report\n\n"
        f"Held-out collection: {len(queries)} queries, {len(database)} database videos "
        f"({frames.mean():.1f} frames on average). Accuracy: FIVR DSVR mAP. Time: search per "
        "query, query already indexed, over gRPC for S^c, S^f_A and DnS (embedded TF Serving "
        "API), in process for the teacher and S^f_B.\n\n"
        f"{table}\n\n## DnS sweep\n\nThe generated collection labels near-duplicates and duplicate scenes "
        "only, so CSVR and ISVR equal DSVR.\n\n"
        f"{format_table(sweep)}\n\n![DnS sweep](dns_sweep.png)\n\n"
        f"Index: {json.dumps(stats, default=str)}\n", encoding="utf-8")
    (root / "results.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return {"rows": rows, "table": table, "report": str(report)}


def format_rows(rows) -> str:
    lines = ["| method | DSVR mAP | ms / query | KB / video |", "|---|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['DSVR']:.3f} | {r['ms_per_query']:.1f} | "
              f"{r['kb_per_video']:.2f} |" for r in rows]
    return "\n".join(lines)
