"""``dns-tf generate-videos OUT_DIR``: the demo's collection of real video files with labels.

    dns-tf generate-videos demo_videos --num_queries 5 --seconds 12

Writes ``OUT_DIR/videos/*.mp4`` and ``OUT_DIR/collection.json`` (see
:mod:`dns_tf.synthetic.videos`). Running it again completes an interrupted run and skips the
videos already made. Exit code 0 on success, 1 when ffmpeg failed on a video, 2 on a bad flag.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import time

from dns_tf.flags import add_arguments, from_arguments
from dns_tf.synthetic.videos import CollectionConfig, generate_collection


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate-videos", help="generate a labelled collection of synthetic video files",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=pathlib.Path, help="folder for the videos and "
                                                           "collection.json")
    add_arguments(parser, CollectionConfig)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = from_arguments(CollectionConfig, args)
    except ValueError as error:
        print(f"generate-videos: {error}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        collection = generate_collection(args.out_dir, config, progress=not args.quiet)
    except RuntimeError as error:
        print(f"generate-videos: {error}", file=sys.stderr)
        return 1
    counts = collections.Counter(
        label for labels in collection.ground_truth().values() for label in labels.values())
    print(f"{len(collection.videos)} videos in {args.out_dir} "
          f"({time.perf_counter() - start:.1f} s): {len(collection.queries)} queries, "
          f"{len(collection.database)} database videos; query-database pairs: "
          f"{counts['ND']} ND, {counts['DS']} DS, {counts['unrelated']} unrelated; "
          f"labels in {args.out_dir / 'collection.json'}")
    return 0
