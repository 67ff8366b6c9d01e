"""``dns-tf evaluate``: scores a similarity file, or a video index searched coarse-only, fine-only
and with DnS, with a benchmark's protocol.

With ``--index`` the DnS sweep runs twice on the same similarities: with the default search
(``SearchConfig()``: calibrated merge, coarse routing) and with the authors' protocol
(``PAPER_SEARCH``: raw coarse scores beside fine ones, selector routing, ``evaluation_dns.py``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from dns_tf.evaluation.annotations import AnnotationFormatError, UnsafeAnnotationError
from dns_tf.evaluation.datasets import DATASET_NAMES, canonical_dataset_name, load_dataset
from dns_tf.evaluation.index_scores import database_scores
from dns_tf.evaluation.similarities import SimilarityMatrix, read_available_ids
from dns_tf.evaluation.sweep import DEFAULT_PERCENTAGES
from dns_tf.localization.metrics import localization_metrics
from dns_tf.localization.segments import SegmentFormatError, read_segments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate query-database similarities on a benchmark",
        description="Scores similarities with the protocol of FIVR-5K, FIVR-200K, CC_WEB_VIDEO, "
                    "EVVE or SVD, as the authors' evaluation code does.")
    parser.add_argument("--dataset", type=canonical_dataset_name,
                        help=f"benchmark: {', '.join(DATASET_NAMES)} (any case)")
    parser.add_argument("--annotations",
                        help="the dataset's annotation file (fivr.pickle, cc_web_video.pickle, "
                             "evve.pickle, SVD's test_groundtruth) or a folder holding it")
    parser.add_argument("--similarities",
                        help=".npz with 'similarities' [queries, database], 'queries', 'database'")
    index = parser.add_argument_group(
        "or a video index (dns-tf index): the dataset's queries found in --features are searched "
        "coarse-only, fine-only and with DnS at each --percentages, with the default search and "
        "with the paper's merge and routing")
    index.add_argument("--index", help="video index directory, instead of --similarities")
    index.add_argument("--features", help="region features holding the query videos")
    index.add_argument("--percentages", nargs="+", type=float, default=list(DEFAULT_PERCENTAGES),
                       help="shares of the database re-ranked by DnS (default: 0 5 ... 100)")
    index.add_argument("--sweep", metavar="OUT.png", help="also plot the trade-off sweep here")
    parser.add_argument("--available", default=None,
                        help="evaluate on the available subset: .npz with a bool 'available' per "
                             "database video, or a text file of video ids")
    parser.add_argument("--segments", nargs=2, metavar=("GROUND_TRUTH.json", "PREDICTIONS.json"),
                        help="instead of a benchmark: score predicted copied segments with "
                             "segment F1 at temporal IoU >= 0.5 on both axes and VSC22's segment "
                             "micro-AP (dns_tf.localization)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.segments:

        return run_segments(*args.segments, as_json=args.json)
    if not args.dataset or not args.annotations:
        args.parser.error("--dataset and --annotations are required (or --segments)")
    if bool(args.similarities) == bool(args.index):
        args.parser.error("give either --similarities or --index")
    if args.index:
        if not args.features:
            args.parser.error("--index needs --features (the query videos)")
        return run_index(args)
    try:
        dataset = load_dataset(args.dataset, args.annotations)
        similarities = SimilarityMatrix.from_npz(args.similarities)
        all_db = (None if args.available is None
                  else read_available_ids(args.available, similarities.database))
        metrics = dataset.evaluate(similarities, all_db, verbose=not args.json)
    except (OSError, ValueError, TypeError, AnnotationFormatError, UnsafeAnnotationError) as error:
        print(f"dns-tf evaluate: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"dataset": dataset.name, "subset": all_db is not None,
                          "metrics": metrics}, indent=2))
    return 0


def run_index(args: argparse.Namespace) -> int:
    """Coarse-only, fine-only and DnS at each percentage on the queries found in --features,
    with measured seconds per query and the index's KB per video."""
    from dns_tf.data.feature_files import FeatureFileError, open_features
    from dns_tf.evaluation.sweep import Cost, dns_sweep, format_table, plot_sweep
    from dns_tf.index.store import VideoIndex, VideoIndexError
    from dns_tf.indexing import open_backend
    from dns_tf.retrieval import PAPER_SEARCH, DnSRetriever, SearchConfig

    try:
        dataset = load_dataset(args.dataset, args.annotations)
        with VideoIndex.open(args.index, readonly=True) as index, \
                open_features(args.features) as features:
            queries = [query for query in dataset.queries if query in features]
            if not queries:
                raise ValueError(f"{args.features} holds none of the {len(dataset.queries)} "
                                 f"{dataset.name} queries")
            retriever = DnSRetriever(index, open_backend(index))
            scores = database_scores(retriever, [features[query] for query in queries],
                                     dataset.database, progress=not args.json)
            coarse_to_fine = retriever.coarse_to_fine
            stats = index.stats()
        seconds = scores.seconds_per_query
        costs = dict(coarse_cost=Cost(seconds["coarse"], stats["coarse_kb_per_video"]),
                     fine_cost=Cost(seconds["fine"], stats["fine_kb_per_video"]),
                     selector_cost=Cost(seconds["selector"], 4 / 1024))
        sweeps = {name: dns_sweep(dataset, scores.coarse, scores.fine, scores.selector, **costs,
                                  search=search, coarse_to_fine=coarse_to_fine,
                                  available=scores.available, queries=queries,
                                  percentages=args.percentages)
                  for name, search in (("sweep", SearchConfig()), ("sweep_paper", PAPER_SEARCH))}
        if args.sweep:
            default = SearchConfig()
            plot_sweep(sweeps["sweep"], args.sweep, title=f"{dataset.name}, {len(queries)} queries",
                       label=f"DnS ({default.merge} merge, {default.routing} routing)",
                       others={"DnS, paper (raw coarse, selector routing)": sweeps["sweep_paper"]})
    except (OSError, ValueError, TypeError, KeyError, AnnotationFormatError,
            UnsafeAnnotationError, FeatureFileError, VideoIndexError) as error:
        print(f"dns-tf evaluate: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"dataset": dataset.name, "queries": len(queries),
                          "available": int(scores.available.sum()),
                          "seconds_per_query": seconds,
                          **{name: [dataclasses.asdict(row) for row in rows]
                             for name, rows in sweeps.items()}}, indent=2))
    else:
        print(f"{dataset.name}: {len(queries)} queries, {int(scores.available.sum())} of "
              f"{len(dataset.database)} database videos in {args.index}")
        default = SearchConfig()
        print(f"\nDefault search (merge {default.merge}, routing {default.routing}):")
        print(format_table(sweeps["sweep"]))
        print("Paper (merge paper, routing selector; the authors' evaluation_dns.py):")
        print(format_table(sweeps["sweep_paper"]))
    return 0


def run_segments(truth_path: str, predictions_path: str, as_json: bool = False) -> int:
    """Prints segment F1 at IoU 0.5 and the segment µAP; exit code 1 on a bad file."""
    try:
        truth = read_segments(truth_path)
        predictions = read_segments(predictions_path, scored=True)
    except (OSError, SegmentFormatError) as error:
        print(f"dns-tf evaluate: error: {error}", file=sys.stderr)
        return 1
    metrics = localization_metrics(truth, predictions)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{metrics['pairs']} pairs with ground truth: segment F1@IoU0.5 "
              f"{metrics['segment_f1_iou50']:.4f} (precision {metrics['precision_iou50']:.4f}, "
              f"recall {metrics['recall_iou50']:.4f}), segment muAP {metrics['segment_muap']:.4f}")
    return 0
