"""``dns-tf extract``: video files to a region feature file; ``dns-tf fit-whitening``: a PCA.

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
import concurrent.futures
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence

from dns_tf.config import add_arguments, field, from_arguments

RESNET_ENV = "DNS_TF_RESNET50"
PCA_ENV = "DNS_TF_PCA"
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".wmv", ".mpg", ".mpeg", ".ts",
    ".3gp", ".ogv"})


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """How ``dns-tf extract`` turns videos into features (authors' defaults)."""

    resnet: str | None = field(None, f"torchvision resnet50 state_dict, .pth or .npz; "
                                     f"None reads ${RESNET_ENV}")
    pca: str | None = field(None, f"PCA whitening {{'mean','V','d'}}, .pth or .npz; None reads "
                                  f"${PCA_ENV}, if unset: 3840-d features")
    dims: int | None = field(None, "PCA components kept; None: 512 with a PCA, else 3840")
    backbone: str = field("torchvision", "torchvision (the authors') or keras (keras.applications "
                                         "ImageNet ResNet50, not compatible with official weights)",
                          choices=("torchvision", "keras"))
    fps: float = field(1.0, "frames sampled per second of video")
    max_frames: int | None = field(None, "keep at most this many frames per video")
    batch_size: int = field(32, "frames per CNN batch")
    workers: int = field(2, "video decoding threads")
    format: str | None = field(None, "output format; None: h5 for .h5/.hdf5, else tfrecord",
                               choices=("h5", "tfrecord"))
    dtype: str = field("float32", "feature dtype on disk", choices=("float32", "float16"))


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

    fit = subparsers.add_parser(
        "fit-whitening", help="fit a PCA whitening on a feature file",
        description="Learns the PCA whitening ({'mean','V','d'}, the authors' layout) of the "
                    "region vectors of a feature file in one streaming pass, e.g. to use "
                    "`extract --backbone keras` features with 512-d networks.")
    fit.add_argument("features", help="a .h5/.hdf5 feature file or TFRecord shards")
    fit.add_argument("--out", required=True, help="output .npz")
    fit.add_argument("--max_vectors", type=int, default=1_000_000,
                     help="region vectors used (default: 1000000, as the authors)")
    fit.set_defaults(func=run_fit_whitening)


def find_videos(inputs: Sequence[str]) -> tuple[list[tuple[str, str]], list[dict]]:
    """``([(video_id, path)], [problems])`` from files and directories.

    Directories are searched recursively for video extensions; files given by name are taken
    whatever their extension. Missing paths and a second file with an id already seen are
    problems (reported, not fatal).
    """
    videos, problems, seen = [], [], {}
    for entry in inputs:
        if os.path.isdir(entry):
            paths = sorted(os.path.join(root, name) for root, _, names in os.walk(entry)
                           for name in names
                           if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS)
        elif os.path.exists(entry):
            paths = [entry]
        else:
            problems.append({"video_id": None, "path": entry,
                             "reason": "no such file or directory"})
            continue
        for path in paths:
            video_id = os.path.splitext(os.path.basename(path))[0]
            if video_id in seen:
                problems.append({"video_id": video_id, "path": path,
                                 "reason": f"duplicate video id (same name as {seen[video_id]})"})
                continue
            seen[video_id] = path
            videos.append((video_id, path))
    return videos, problems


def decoded_videos(videos: Sequence[tuple[str, str]], workers: int, failures: list,
                   **decode_options) -> Iterator[tuple[str, object]]:
    """``(video_id, frames [T, 224, 224, 3] uint8)`` in input order, decoded by ``workers``
    threads a few videos ahead; videos that fail to decode go to ``failures`` instead."""
    from dns_tf.features.video import load_video

    lookahead = max(1, workers) + 1
    with concurrent.futures.ThreadPoolExecutor(max(1, workers), "decode") as pool:
        queue = []
        for video_id, path in videos:
            queue.append((video_id, path, pool.submit(load_video, path, **decode_options)))
            if len(queue) >= lookahead:
                yield from _take_first(queue, failures)
        while queue:
            yield from _take_first(queue, failures)


def _take_first(queue, failures):
    from dns_tf.features.video import VideoDecodeError

    video_id, path, future = queue.pop(0)
    try:
        frames = future.result()
    except VideoDecodeError as error:
        failures.append({"video_id": video_id, "path": path, "reason": error.reason})
        return
    except Exception as error:  # a broken file must not stop the collection
        failures.append({"video_id": video_id, "path": path,
                         "reason": f"{type(error).__name__}: {error}"})
        return
    yield video_id, frames


def extract_to_writer(extractor, videos: Sequence[tuple[str, str]], writer,
                      config: ExtractConfig, progress: bool = True) -> dict:
    """Extracts ``videos`` not yet in ``writer`` and writes them; returns the run's report.

    ``extractor`` may be None when every video is already in ``writer``.

    Returns:
        ``{"extracted", "already_done", "frames", "seconds", "frames_per_second", "failed":
        [{"video_id", "path", "reason"}]}``.
    """
    from tqdm import tqdm

    todo = [(video_id, path) for video_id, path in videos if video_id not in writer]
    failures: list[dict] = []
    if not todo:
        return {"extracted": 0, "already_done": len(videos), "frames": 0, "seconds": 0.0,
                "frames_per_second": None, "failed": failures}
    frames = extracted = 0
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="video", desc="extract", disable=not progress)
    decoded = decoded_videos(todo, config.workers, failures, fps=config.fps,
                             max_frames=config.max_frames)

    def counted(stream):
        # Failed videos leave the stream here; count them as done for the bar.
        reported = 0
        for item in stream:
            bar.update(len(failures) - reported)
            reported = len(failures)
            yield item
        bar.update(len(failures) - reported)

    try:
        for video_id, features in extractor.extract_videos(counted(decoded),
                                                           batch_size=config.batch_size):
            writer.write(video_id, features)
            extracted += 1
            frames += len(features)
            bar.update(1)
            bar.set_postfix(frames_per_s=f"{frames / (time.perf_counter() - start):.1f}",
                            failed=len(failures))
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return {"extracted": extracted, "already_done": len(videos) - len(todo), "frames": frames,
            "seconds": round(seconds, 3),
            "frames_per_second": round(frames / seconds, 3) if seconds > 0 else None,
            "failed": failures}


def build_extractor(config: ExtractConfig):
    """The :class:`~dns_tf.features.extractor.FeatureExtractor` a config asks for."""
    from dns_tf.features.extractor import FeatureExtractor

    pca = config.pca or os.environ.get(PCA_ENV) or None
    if config.backbone == "keras":
        return FeatureExtractor.from_keras_applications(pca, dims=config.dims)
    return FeatureExtractor.from_official(resnet_path(config), pca, dims=config.dims)


def resnet_path(config: ExtractConfig) -> str:
    """The torchvision checkpoint: ``--resnet``, else ``$DNS_TF_RESNET50``; exits if neither."""
    path = config.resnet or os.environ.get(RESNET_ENV)
    if not path:
        raise SystemExit(
            "dns-tf extract: the torchvision ResNet50 checkpoint is needed: pass --resnet PATH or "
            f"set ${RESNET_ENV} (torchvision's resnet50-0676ba61.pth, "
            "https://download.pytorch.org/models/resnet50-0676ba61.pth), or use --backbone keras")
    return path


def provenance(config: ExtractConfig) -> dict:
    """What decides the features' values, recorded with them so that a run with other settings
    cannot append to the same file: dims, backbone weights, PCA and frame rate."""
    from dns_tf.data.feature_files import file_fingerprint

    pca = config.pca or os.environ.get(PCA_ENV) or None
    backbone = ("keras-applications-imagenet" if config.backbone == "keras"
                else f"torchvision:{file_fingerprint(resnet_path(config))}")
    return {"dims": config.dims or (512 if pca else 3840), "backbone": backbone,
            "pca": file_fingerprint(pca) if pca else None, "fps": float(config.fps)}


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


def run_fit_whitening(args) -> int:
    from dns_tf.data.feature_files import open_features
    from dns_tf.features.whitening import fit_whitening

    with open_features(args.features) as features:
        components = fit_whitening((features[video_id] for video_id in features.ids()),
                                   max_vectors=args.max_vectors, progress=True)
    components.save(args.out)
    print(f"{args.features} -> {args.out}: PCA of {components.input_dims}-d vectors",
          file=sys.stderr)
    return 0
