"""Video files to a feature file, many at a time: finding videos, decoding them ahead on threads,
batching frames across videos through the CNN, and the run's report.

Used by ``dns-tf extract`` and the demo. The output is resumable: videos already in the writer are
skipped, and a crash loses at most the videos in flight (see :mod:`dns_tf.data.feature_files`).
Files that cannot be decoded are reported and skipped; the others go on.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence

from tqdm import tqdm

from dns_tf.data.feature_files import file_fingerprint
from dns_tf.features.extractor import FeatureExtractor
from dns_tf.features.video import VideoDecodeError, load_video
from dns_tf.flags import field

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
    lookahead = max(1, workers) + 1
    with concurrent.futures.ThreadPoolExecutor(max(1, workers), "decode") as pool:
        queue = []
        for video_id, path in videos:
            queue.append((video_id, path, pool.submit(load_video, path, **decode_options)))
            if len(queue) >= lookahead:
                yield from _take_first(queue, failures)
        while queue:
            yield from _take_first(queue, failures)


def decode_failure(video_id: str, path: str, error: Exception) -> dict:
    """``{"video_id", "path", "reason"}``: the report of a video that could not be decoded."""
    reason = (error.reason if isinstance(error, VideoDecodeError)
              else f"{type(error).__name__}: {error}")
    return {"video_id": video_id, "path": path, "reason": reason}


def _take_first(queue, failures):
    video_id, path, future = queue.pop(0)
    try:
        frames = future.result()
    except Exception as error:  # a broken file must not stop the collection
        failures.append(decode_failure(video_id, path, error))
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
    pca = config.pca or os.environ.get(PCA_ENV) or None
    backbone = ("keras-applications-imagenet" if config.backbone == "keras"
                else f"torchvision:{file_fingerprint(resnet_path(config))}")
    return {"dims": config.dims or (512 if pca else 3840), "backbone": backbone,
            "pca": file_fingerprint(pca) if pca else None, "fps": float(config.fps)}
