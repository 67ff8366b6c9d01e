"""``dns-tf evaluate``: scores a similarity file with a benchmark's protocol."""

from __future__ import annotations

import argparse
import json
import sys

from dns_tf.evaluation.annotations import AnnotationFormatError, UnsafeAnnotationError
from dns_tf.evaluation.datasets import DATASET_NAMES, canonical_dataset_name, load_dataset
from dns_tf.evaluation.similarities import SimilarityMatrix, read_available_ids


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate query-database similarities on a benchmark",
        description="Scores similarities with the protocol of FIVR-5K, FIVR-200K, CC_WEB_VIDEO, "
                    "EVVE or SVD, as the authors' evaluation code does.")
    parser.add_argument("--dataset", required=True, type=canonical_dataset_name,
                        help=f"benchmark: {', '.join(DATASET_NAMES)} (any case)")
    parser.add_argument("--annotations", required=True,
                        help="the dataset's annotation file (fivr.pickle, cc_web_video.pickle, "
                             "evve.pickle, SVD's test_groundtruth) or a folder holding it")
    parser.add_argument("--similarities", required=True,
                        help=".npz with 'similarities' [queries, database], 'queries', 'database'")
    parser.add_argument("--available", default=None,
                        help="evaluate on the available subset: .npz with a bool 'available' per "
                             "database video, or a text file of video ids")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
