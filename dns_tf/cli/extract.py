"""``dns-tf extract``: video files to a region feature file.

    dns-tf extract videos/ more/clip.mp4 --out features.h5 \\
        --resnet resnet50-0676ba61.pth --pca pca_resnet50_vcdb_1M.pth --dims 512

Videos are decoded by ``--workers`` threads while the CNN runs batches of ``--batch_size`` frames
packed across videos. The output is resumable: a rerun skips the videos already in it, and a crash
loses at most the videos in flight (see :mod:`dns_tf.data.feature_files`). Files that cannot be
decoded are skipped; the run goes on and ends with a report of what was skipped and why, also
written as JSON next to the output (``<out>.report.json``). The exit code is 0 when every video is
in the output, 1 when some failed.

The backbone is the authors' torchvision ResNet50: ``--resnet`` or ``$DNS_TF_RESNET50`` points at
its ``state_dict`` (torchvision's ``resnet50-0676ba61.pth``, zip format, or an ``.npz`` of its
arrays). ``--pca`` / ``$DNS_TF_PCA`` adds the authors' whitening (``pca_resnet50_vcdb_1M.pth``);
without it the features are the 3840-d L3-iMAC vectors the ViSiL teacher takes.
``--backbone keras`` uses keras.applications' ResNet50 instead (downloads ImageNet weights); its
features do not match the official DnS weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from dns_tf.features.batch import (ExtractConfig, build_extractor, extract_to_writer,
                                   find_videos, provenance, resnet_path)
from dns_tf.flags import add_arguments, from_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract", help="extract region features (ResNet50 L3-iMAC) from video files",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="+", help="video files and directories (searched "
                                                  "recursively); the video id is the file name "
                                                  "without extension")
    parser.add_argument("--out", required=True, help="output: a .h5/.hdf5 file or a TFRecord "
                                                     "directory")
    parser.add_argument("--report", default=None, help="JSON report (default: <out>.report.json)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")
    add_arguments(parser, ExtractConfig)
    parser.set_defaults(func=run)



def run(args) -> int:
    from dns_tf.data.feature_files import FeatureFileError, open_writer

    config = from_arguments(ExtractConfig, args)
    report_path = args.report or os.path.normpath(args.out) + ".report.json"
    if config.backbone == "torchvision":
        resnet_path(config)
    videos, problems = find_videos(args.videos)
    try:
        writer = open_writer(args.out, dtype=config.dtype, format=config.format,
                             provenance=provenance(config))
    except (FeatureFileError, OSError) as error:
        print(f"dns-tf extract: error: {error}", file=sys.stderr)
        return 1
    with writer:
        todo = sum(video_id not in writer for video_id, _ in videos)
        # A finished collection is checked without loading the CNN.
        extractor = build_extractor(config) if todo else None
        print(f"{len(videos)} videos, {todo} to extract -> {args.out}"
              + (f" ({extractor.dims}-d region features, {config.dtype})" if extractor else ""),
              file=sys.stderr)
        report = extract_to_writer(extractor, videos, writer, config, progress=args.progress)
    report = {"output": args.out, "videos": len(videos), **report,
              "failed": problems + report["failed"], "config": dataclasses.asdict(config)}
    with open(report_path, "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2)
    print(f"extracted {report['extracted']} videos ({report['frames']} frames, "
          f"{report['frames_per_second'] or 0:.1f} frames/s); {report['already_done']} already in "
          f"the output; {len(report['failed'])} skipped", file=sys.stderr)
    for failure in report["failed"]:
        print(f"  skipped {failure['path']}: {failure['reason']}", file=sys.stderr)
    print(f"report: {report_path}", file=sys.stderr)
    return 1 if report["failed"] else 0
