"""``dns-tf beam``: feature extraction and indexing of a whole corpus as Apache Beam pipelines.

    dns-tf beam extract videos/ more/clip.mp4 --out features/ --model export/dns_features/1
    dns-tf beam index features/ --out videos.idx --model export/dns/1 [--num_shards 8]

``extract`` decodes the videos on the workers, runs the exported ``dns_features`` SavedModel on
their frames with Beam's RunInference and writes TFRecord feature shards (``dns-tf extract``'s
layout: ``open_features``, ``dns-tf index add`` and ``beam index`` read them) with a
``manifest.json``; videos that cannot be decoded go to ``failed.jsonl`` with the reason and the
others go on. ``index`` runs the ``index`` signature of the exported ``dns`` SavedModel on
feature shards and writes one video index per shard (``<out>/shard-NNNNN``, searched together by
``ShardedRetriever``, each by ``dns-tf search --server`` on the same model). Both resume: videos
already in the output are skipped.

Every option the command does not know is a Beam pipeline option (give them after the
positional arguments): ``--runner DataflowRunner --project P --region R --temp_location
gs://...``, ``--runner FlinkRunner --flink_master host:8081``, ``--runner SparkRunner``, ...
(DirectRunner by default). Paths must be the same for every worker (a shared mount on a cluster).
Needs the ``beam`` extra: ``pip install 'dns-tf[beam]'``. Exit codes: 0 success, 1 some videos
failed (listed) or an input is unusable (the message names it).
"""

from __future__ import annotations

import argparse
import os
import sys

from dns_tf.beam import FAILED_FILE
from dns_tf.beam.config import BeamExtractConfig, BeamIndexConfig
from dns_tf.cli import fail
from dns_tf.flags import add_arguments, from_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "beam", help="extract features and index a whole corpus as Apache Beam pipelines",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="beam_command", metavar="COMMAND", required=True)

    extract = commands.add_parser(
        "extract", allow_abbrev=False,
        help="video files -> TFRecord feature shards (dns_features SavedModel)")
    extract.add_argument("videos", nargs="+", help="video files and directories (searched "
                                                   "recursively); the video id is the file name "
                                                   "without extension")
    extract.add_argument("--out", required=True, help="output directory of feature shards")
    extract.add_argument("--model", required=True,
                         help="the dns_features SavedModel (<export>/dns_features/<version>)")
    add_arguments(extract, BeamExtractConfig)
    extract.set_defaults(func=run_extract, pipeline_args=[])

    index = commands.add_parser(
        "index", allow_abbrev=False,
        help="feature shards -> sharded video index (dns SavedModel, index signature)")
    index.add_argument("features", help="region features: TFRecord directory, .h5/.hdf5 file or "
                                        "a directory of them")
    index.add_argument("--out", required=True, help="output directory of index shards")
    index.add_argument("--model", required=True, help="the dns SavedModel (<export>/dns/<version>)")
    add_arguments(index, BeamIndexConfig)
    index.set_defaults(func=run_index, pipeline_args=[])


def _errors():
    """The exceptions that mean a bad input rather than a bug (Beam missing included)."""
    from dns_tf.data.feature_files import FeatureFileError
    from dns_tf.index.store import VideoIndexError

    return (ImportError, FeatureFileError, VideoIndexError, OSError, KeyError, ValueError)


def _report_failures(out: str, failed: int) -> int:
    if not failed:
        return 0
    with open(os.path.join(out, FAILED_FILE), encoding="utf-8") as file:
        for line in file:
            print(f"  failed: {line.strip()}", file=sys.stderr)
    return fail("beam", f"{failed} videos failed (listed in {os.path.join(out, FAILED_FILE)}); "
                        f"the others are in {out}")


def run_extract(args) -> int:
    from dns_tf.features.batch import find_videos

    config = from_arguments(BeamExtractConfig, args)
    videos, problems = find_videos(args.videos)
    try:
        from dns_tf.beam.extract import extract_features

        manifest = extract_features(videos, args.out, args.model, config, args.pipeline_args,
                                    problems)
    except _errors() as error:
        return fail("beam", error)
    print(f"extracted {manifest['videos']} videos ({manifest['frames']} frames) into "
          f"{len(manifest['shards'])} shards; {manifest['already_done']} already in {args.out}; "
          f"{manifest['failed']} failed", file=sys.stderr)
    return _report_failures(args.out, manifest["failed"])


def run_index(args) -> int:
    config = from_arguments(BeamIndexConfig, args)
    try:
        from dns_tf.beam.index import index_features

        manifest = index_features(args.features, args.out, args.model, config,
                                  args.pipeline_args)
    except _errors() as error:
        return fail("beam", error)
    print(f"indexed {manifest['added']} videos; {manifest['videos']} videos in "
          f"{len(manifest['shards'])} shards of {args.out}; {manifest['failed']} failed",
          file=sys.stderr)
    return _report_failures(args.out, manifest["failed"])
