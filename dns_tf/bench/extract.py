"""Feature extraction: frames/s of video decoding and of the CNN, measured separately.

Decoding: one thread decodes a video at 1 fps with the extractor's sampling (shorter side 256,
centre crop 224); the video is ``--video`` or a synthetic H.264 one (FFmpeg's ``testsrc2``,
``--video_size`` at 25 fps for ``--seconds``). Reported: sampled frames/s (what the CNN gets) and
source frames/s (what the decoder went through).

CNN: ``--batches`` timed batches of ``--batch_size`` random 224x224 uint8 frames (after one
warm-up batch that traces the graph) through ``FeatureExtractor``: torchvision's ResNet50, L3-iMAC
and a 512-d PCA. Weights come from ``--resnet`` when given, else they are random (the speed does
not depend on them). Runs on the device TensorFlow picks (a GPU if there is one).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from typing import Any

import numpy as np


_SOURCE_FPS = 25


def add_arguments(parser) -> None:
    parser.add_argument("--batch_size", type=int, default=32, help="frames per CNN batch")
    parser.add_argument("--batches", type=int, default=3, help="timed CNN batches")
    parser.add_argument("--resnet", default=None, help="torchvision resnet50 .pth/.npz "
                                                       "(default: random weights)")
    parser.add_argument("--video", default=None, help="video to decode (default: synthetic)")
    parser.add_argument("--seconds", type=float, default=20.0, help="synthetic video length")
    parser.add_argument("--video_size", default="640x360", help="synthetic video WxH")


def synthetic_video(path: str, seconds: float, size: str) -> str:
    """Writes an H.264 ``testsrc2`` video of ``seconds`` at 25 fps and ``size`` (``WxH``)."""
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=s={size}:r={_SOURCE_FPS}", "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", path],
                   check=True, capture_output=True)
    return path


def measure_decode(path: str) -> dict[str, Any]:
    """Sampled and source frames/s of decoding ``path`` at 1 fps, 256 -> 224, one thread."""
    from dns_tf.features.video import iter_frames, probe_video

    source_frames = probe_video(path)["frames"]
    start = time.perf_counter()
    sampled = sum(1 for _ in iter_frames(path, fps=1.0))
    seconds = time.perf_counter() - start
    return {"decode_sampled_frames_per_second": round(sampled / seconds, 2),
            "decode_source_frames_per_second": round(source_frames / seconds, 1),
            "decode_sampled_frames": sampled}


def measure_cnn(extractor, batch_size: int, batches: int, seed: int = 0) -> dict[str, Any]:
    """Frames/s of ``extractor`` on full batches of random 224x224 frames (after a warm-up)."""
    frames = np.random.default_rng(seed).integers(0, 256, (batch_size, 224, 224, 3), np.uint8)
    extractor.extract(frames, batch_size=batch_size)  # traces the graph
    start = time.perf_counter()
    for _ in range(batches):
        extractor.extract(frames, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {"cnn_frames_per_second": round(batches * batch_size / seconds, 2),
            "cnn_seconds_per_batch": round(seconds / batches, 3)}


def _extractor(resnet: str | None):
    from dns_tf.features.extractor import FeatureExtractor
    from dns_tf.features.resnet import resnet50_torchvision
    from dns_tf.features.whitening import PCAComponents, PCAWhitening

    dims = 3840
    identity = PCAComponents(np.zeros(dims, np.float32), np.eye(dims, dtype=np.float32),
                             np.ones(dims, np.float32))
    whitening = PCAWhitening.from_components(identity, dims=512)
    if resnet is not None:
        extractor = FeatureExtractor.from_official(resnet)
        return FeatureExtractor(extractor.backbone, whitening=whitening)
    return FeatureExtractor(resnet50_torchvision(), whitening=whitening)


def measure(args) -> dict[str, Any]:
    import tensorflow as tf

    batches = 1 if args.quick else args.batches
    gpus = tf.config.list_physical_devices("GPU")
    result: dict[str, Any] = {
        "device": "GPU: " + tf.config.experimental.get_device_details(gpus[0]).get(
            "device_name", gpus[0].name) if gpus else f"CPU ({os.cpu_count()} cores)",
        "batch_size": args.batch_size,
    }
    result.update(measure_cnn(_extractor(args.resnet), args.batch_size, batches))
    with tempfile.TemporaryDirectory() as directory:
        video = args.video or synthetic_video(os.path.join(directory, "bench.mp4"),
                                              5.0 if args.quick else args.seconds, args.video_size)
        result["video"] = args.video or f"synthetic H.264 {args.video_size} {_SOURCE_FPS} fps"
        result.update(measure_decode(video))
    return result
