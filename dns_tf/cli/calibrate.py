"""``dns-tf calibrate``: the score from which a hit is a match, fitted on labelled pairs, stored
with the index.

    dns-tf calibrate --index videos.idx --features features.h5 --dataset FIVR-5K \\
        --annotations fivr.pickle [--target_precision 0.95] [--plot pr.png] [search flags]

The dataset's queries found in ``--features`` are searched against its database videos in the
index, scored exactly as ``search`` scores them with the same flags (merge, routing, percentage);
every (query, database video) pair the annotation labels (``RetrievalDataset.pair_labels``: e.g.
FIVR's near-duplicates and duplicate scenes against every other video) is a labelled pair. The
lowest score whose pairs are ``--target_precision`` precise becomes the match threshold in
``<index>/calibration.json``: ``search --matches_only`` and ``Hit.is_match`` use it. ``--plot``
draws precision against recall for the search's scores, the fine student's alone and the coarse
student's mapped onto the fine scale. Exit codes: 0, 1 (a file, index or threshold problem),
2 (usage).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from dns_tf.calibration import MatchThreshold
from dns_tf.cli import fail
from dns_tf.evaluation.annotations import AnnotationFormatError, UnsafeAnnotationError
from dns_tf.evaluation.datasets import DATASET_NAMES, canonical_dataset_name, load_dataset
from dns_tf.evaluation.thresholds import calibrate_threshold
from dns_tf.flags import add_arguments, field, from_arguments
from dns_tf.retrieval import SearchConfig


@dataclasses.dataclass(frozen=True)
class ThresholdConfig:
    """What the threshold must achieve."""

    target_precision: float = field(0.95, "precision the matches must reach on the labelled "
                                          "pairs")

    def __post_init__(self):
        if not 0.0 < self.target_precision <= 1.0:
            raise ValueError(f"--target_precision must be in (0, 1], got {self.target_precision}")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="fit the match threshold on labelled pairs and store it with an index",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="video index directory")
    parser.add_argument("--features", required=True,
                        help="region features holding the dataset's query videos")
    parser.add_argument("--dataset", required=True, type=canonical_dataset_name,
                        help=f"benchmark whose labels are used: {', '.join(DATASET_NAMES)}")
    parser.add_argument("--annotations", required=True,
                        help="the dataset's annotation file (or a folder holding it)")
    parser.add_argument("--plot", metavar="OUT.png", help="draw the precision-recall curves here")
    parser.add_argument("--json", action="store_true", help="print the threshold as JSON")
    add_arguments(parser, ThresholdConfig)
    add_arguments(parser, SearchConfig)
    parser.set_defaults(func=run, parser=parser)


def run(args) -> int:
    try:
        search = from_arguments(SearchConfig, args)
        config = from_arguments(ThresholdConfig, args)
    except ValueError as error:
        args.parser.error(str(error))

    from dns_tf.data.feature_files import FeatureFileError, open_features
    from dns_tf.index.store import VideoIndex, VideoIndexError
    from dns_tf.indexing import open_backend

    try:
        dataset = load_dataset(args.dataset, args.annotations)
        with VideoIndex.open(args.index, readonly=True) as index, \
                open_features(args.features) as features:
            queries = {query: features[query] for query in dataset.queries if query in features}
            calibration, _ = calibrate_threshold(index, open_backend(index), dataset, queries,
                                                 search, config.target_precision, args.plot)
    except (OSError, ValueError, KeyError, AnnotationFormatError, UnsafeAnnotationError,
            FeatureFileError, VideoIndexError) as error:
        return fail("calibrate", error)
    threshold: MatchThreshold = calibration.threshold
    if args.json:
        print(json.dumps(dataclasses.asdict(threshold), indent=2))
    else:
        print(f"match threshold {threshold.score:.4f}: precision {threshold.precision:.3f}, "
              f"recall {threshold.recall:.3f} on {threshold.pairs} labelled pairs "
              f"({threshold.positives} matches, {threshold.source}); stored in {args.index}")
    return 0
