"""``dns-tf index``: build and inspect a DnS video index with the networks in process (``dns-tf
search --index`` searches it).

    dns-tf index create videos.idx --coarse cg.keras --fine fg_bin.keras --selector selector.pth
    dns-tf index add videos.idx --features features.h5 [--ids v1 v2 ...] [--batch_size 16]
    dns-tf index remove videos.idx v1 v2
    dns-tf index calibrate videos.idx [--method isotonic --max_pairs 4096]
    dns-tf index stats videos.idx [--json]
    dns-tf index verify videos.idx [--repair]

``create`` copies the three networks (``.keras`` files or the authors' ``.pth``) into the index's
``networks/`` folder and records their paths relative to the index, their weight fingerprints and
the fine student's kind, so later commands need only the index, wherever it is moved; networks
whose weights differ from the recorded fingerprints are refused. ``add`` indexes the
videos of a feature file (the authors' HDF5 layout or TFRecord shards) in batches, each committed
on its own: an interrupted run loses at most one batch, and a rerun skips the videos already in the
index. A video that cannot be indexed (bad features, networks failing on it) is reported on one
line naming it and skipped; the rest of its batch is committed. After adding, ``add`` refits the
index's label-free coarse-to-fine score map (a bounded sample of pairs of its videos, scored by
both students; ``calibration.json``), which puts coarse and fine scores on one scale for DnS's
merge; ``calibrate`` refits it on demand. Exit codes: 0 success, 1 an index, file or video problem
(the message names it; with skipped videos, after committing the others).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys

from dns_tf.calibration import CalibrationConfig
from dns_tf.cli import error_message, fail
from dns_tf.flags import add_arguments, field, from_arguments
from dns_tf.indexing import (NETWORKS, NETWORKS_DIR, checked_features, index_videos, open_backend,
                             refresh_calibration_if_stale)


@dataclasses.dataclass(frozen=True)
class AddConfig:
    """How ``index add`` reads and indexes videos."""

    batch_size: int = field(16, "videos indexed (and committed) per batch")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "index", help="create, fill and inspect a DnS video index (dns-tf search searches it)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="index_command", metavar="COMMAND", required=True)

    create = commands.add_parser("create", help="create an empty index for three networks")
    create.add_argument("index", help="index directory (must not exist or be empty)")
    for network in NETWORKS:
        create.add_argument(f"--{network}", required=True,
                            help=f"the {network} network: .keras file or official .pth")
    create.set_defaults(func=run_create)

    add = commands.add_parser("add", help="index the videos of a feature file")
    add.add_argument("index", help="index directory")
    add.add_argument("--features", required=True,
                     help="region features: .h5/.hdf5 file or TFRecord directory")
    add.add_argument("--ids", nargs="+", default=None,
                     help="index only these video ids (default: every video of the file)")
    add_arguments(add, AddConfig)
    add.set_defaults(func=run_add)

    calibrate = commands.add_parser(
        "calibrate", help="refit the coarse-to-fine score map on the index's own videos")
    calibrate.add_argument("index", help="index directory")
    add_arguments(calibrate, CalibrationConfig)
    calibrate.set_defaults(func=run_calibrate)

    remove = commands.add_parser("remove", help="remove videos from the index")
    remove.add_argument("index", help="index directory")
    remove.add_argument("ids", nargs="+", metavar="ID", help="video ids to remove")
    remove.set_defaults(func=run_remove)

    stats = commands.add_parser("stats", help="size and settings of the index")
    stats.add_argument("index", help="index directory")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=run_stats)

    verify = commands.add_parser("verify", help="check every stored byte against its checksum")
    verify.add_argument("index", help="index directory")
    verify.add_argument("--repair", action="store_true",
                        help="remove the videos whose data is damaged (then 'index add' them "
                             "again)")
    verify.set_defaults(func=run_verify)


def _fail(error) -> int:
    return fail("index", error)


def _errors():
    """The exceptions that mean a bad index, file or video rather than a bug."""
    from dns_tf.data.feature_files import FeatureFileError
    from dns_tf.index.store import VideoIndexError

    return (VideoIndexError, FeatureFileError, OSError, KeyError, ValueError)


def run_create(args) -> int:
    from dns_tf.index.store import VideoIndex
    from dns_tf.retrieval import LocalBackend, index_metadata

    paths = {network: getattr(args, network) for network in NETWORKS}
    # Copies travel with the index: kept relative to it, a moved index still finds them.
    copies = {network: os.path.join(NETWORKS_DIR, network + os.path.splitext(path)[1])
              for network, path in paths.items()}
    try:
        backend = LocalBackend.from_files(paths["coarse"], paths["fine"], paths["selector"])
        metadata = {"networks": copies, "fine_student": backend.fine_student.kind,
                    **index_metadata(backend)}
        with VideoIndex.create(args.index, coarse_dims=backend.coarse_student.output_dims,
                               fine_kind=backend.fine_kind,
                               fine_shape_tail=backend.fine_shape_tail, metadata=metadata) as index:
            os.makedirs(os.path.join(index.path, NETWORKS_DIR))
            for network, path in paths.items():
                shutil.copyfile(path, os.path.join(index.path, copies[network]))
    except _errors() as error:
        return _fail(error)
    print(f"created {os.path.abspath(args.index)}: {backend.fine_student.kind} fine student "
          f"({backend.fine_kind}), {backend.coarse_student.output_dims}-d coarse vectors")
    return 0


def run_add(args) -> int:
    from tqdm import tqdm

    from dns_tf.data.feature_files import open_features
    from dns_tf.index.store import VideoIndex

    config = from_arguments(AddConfig, args)
    if config.batch_size < 1:
        return _fail(f"--batch_size must be at least 1, got {config.batch_size}")
    added, failed = 0, []
    try:
        with VideoIndex.open(args.index) as index, open_features(args.features) as features:
            wanted = list(dict.fromkeys(args.ids)) if args.ids else features.ids()
            missing = [video_id for video_id in wanted if video_id not in features]
            if missing:
                return _fail(f"{args.features} has no video {missing[0]!r} ({len(missing)} of "
                             f"the {len(wanted)} requested ids are missing)")
            present = set(index.ids())
            pending = [video_id for video_id in wanted if video_id not in present]
            skipped = len(wanted) - len(pending)
            backend = open_backend(index)
            dims = backend.coarse_student.dims
            with tqdm(total=len(pending), desc="indexing", unit="video") as progress:
                for start in range(0, len(pending), config.batch_size):
                    batch, ids, videos = pending[start:start + config.batch_size], [], []
                    for video_id in batch:
                        try:
                            videos.append(checked_features(features[video_id], video_id,
                                                           dims, args.features))
                            ids.append(video_id)
                        except _errors() as error:
                            failed.append((video_id, error_message(error)))
                    ids, indexed = index_videos(backend, ids, videos, failed)
                    if ids:
                        index.add_many(ids, indexed.coarse, indexed.fine, indexed.selector)
                    added += len(ids)
                    progress.update(len(batch))
            total = len(index)
            calibration = refresh_calibration_if_stale(index, backend, CalibrationConfig(),
                                                       force=added > 0)
    except _errors() as error:
        if added:
            print(f"dns-tf index: {added} videos were added before the error; a rerun resumes "
                  f"after them", file=sys.stderr)
        return _fail(error)
    print(f"added {added} videos ({skipped} already indexed); {total} videos in {args.index}")
    if calibration is not None:
        print(_describe(calibration))
    for video_id, reason in failed:
        print(f"dns-tf index: skipped video {video_id!r}: {reason}", file=sys.stderr)
    if failed:
        return _fail(f"{len(failed)} videos of {args.features} could not be indexed (listed "
                     f"above); the other {added} are committed")
    return 0


def _describe(calibration) -> str:
    fitted = calibration.fitted_on
    return (f"score calibration: coarse-to-fine map ({fitted['method']}) fitted on "
            f"{fitted['pairs']} pairs of the {fitted['videos']} videos")


def run_calibrate(args) -> int:
    from dns_tf.index.store import VideoIndex

    try:
        config = from_arguments(CalibrationConfig, args)
        with VideoIndex.open(args.index, readonly=True) as index:
            if len(index) < 2:
                return _fail(f"{args.index} holds {len(index)} videos; calibrating needs >= 2")
            calibration = refresh_calibration_if_stale(index, open_backend(index), config,
                                                       force=True)
    except _errors() as error:
        return _fail(error)
    print(_describe(calibration))
    return 0


def run_remove(args) -> int:
    from dns_tf.index.store import VideoIndex

    unknown = []
    try:
        with VideoIndex.open(args.index) as index:
            for video_id in dict.fromkeys(args.ids):
                try:
                    index.remove(video_id)
                except KeyError:
                    unknown.append(video_id)
            total = len(index)
    except _errors() as error:
        return _fail(error)
    removed = len(set(args.ids)) - len(unknown)
    print(f"removed {removed} videos; {total} videos in {args.index}")
    if unknown:
        return _fail(f"{len(unknown)} ids are not in {args.index}: {', '.join(unknown[:10])}")
    return 0


def run_stats(args) -> int:
    from dns_tf.index.store import VideoIndex

    try:
        with VideoIndex.open(args.index, readonly=True) as index:
            stats = {"index": index.path, **index.stats(), **index.metadata}
    except _errors() as error:
        return _fail(error)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    for name, value in stats.items():
        if isinstance(value, float):
            value = f"{value:.3f}"
        elif isinstance(value, dict):
            value = ", ".join(f"{key}={item}" for key, item in value.items())
        print(f"{name}: {value}")
    return 0


def run_verify(args) -> int:
    from dns_tf.index.store import VideoIndex

    try:
        if args.repair:
            removed = VideoIndex.repair(args.index)
            print(f"removed {len(removed)} damaged videos: {', '.join(removed) or '-'}; add them "
                  f"again with 'dns-tf index add'")
        with VideoIndex.open(args.index, readonly=True) as index:
            summary = index.verify()
    except _errors() as error:
        return _fail(error_message(error).replace("\n", " "))
    print(f"{args.index}: {summary['videos']} videos verified, no problems")
    return 0
