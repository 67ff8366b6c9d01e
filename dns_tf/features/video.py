"""Video decoding with PyAV: frames sampled by presentation time, resized and centre-cropped.

This is the first step of the data's way through the system: a video file becomes uint8 RGB frames
``[T, crop, crop, 3]`` that the feature extractor turns into region features. The defaults follow
the authors' loader (1 frame per second, shorter side resized to 256 with bicubic interpolation,
centre crop of 224), with two deliberate differences:

- **Frames are chosen by presentation timestamp, not by frame index.** For the target times
  ``t_k = k / fps`` (``k = 0, 1, 2, ...``), measured from the first decoded frame, we take the frame
  *on screen* at ``t_k``: the last frame whose timestamp is at or before ``t_k``. A video of
  duration ``D`` (last frame's timestamp plus its duration) gives ``ceil(D * fps)`` frames. This
  is exact for variable frame rate streams and streams whose first timestamp is not 0 (MPEG-TS
  starts at 1.4 s), where counting frames drifts. For constant frame rates that are a multiple of
  ``fps`` (25 or 30 fps at 1 fps) it picks the same frames as the authors' ``count % fps`` rule.
  Container timestamps are rounded to their time base, so a frame up to half a time-base tick after
  ``t_k`` still counts as being at ``t_k``. A frame that stays on screen over several targets (a
  gap, a slide show) is returned once per target, so ``T`` follows the duration.
- **The frame count is bounded before frames are made.** It never exceeds the duration the
  headers declare (plus one second of rounding slack; frames whose timestamps run past it are
  dropped with a warning), nor :data:`MAX_VIDEO_SECONDS` (24 h) at ``fps``: a video whose
  timestamps span more, and whose headers do not declare less, is a :class:`VideoDecodeError`
  unless ``max_frames`` asks for its first frames. A frame is only copied once its repeats are
  known to fit.
- **Resizing runs in FFmpeg's swscale** (bicubic, combined with the YUV to RGB conversion) instead
  of OpenCV's ``INTER_CUBIC``: no extra dependency, one pass per frame. swscale widens its filter
  when downscaling (less aliasing), so pixels differ slightly from OpenCV's; output sizes match
  (``round(side * resize / shorter_side)``). Frames are turned upright by the stream's display
  rotation (phone videos); pixel aspect ratio is ignored, as in the authors' loader.

Decoding is streamed: :func:`iter_frames` holds one decoded frame at a time, whatever the length of
the video. A damaged packet in an otherwise readable video is skipped (as the ``ffmpeg`` command
does) and logged; a file from which no frame at all can be decoded raises :class:`VideoDecodeError`.

Example:

    frames = load_video("clip.mp4")                    # [T, 224, 224, 3] uint8, T = ceil(duration)
    for frame in iter_frames("long.mp4", fps=2.0):    # [224, 224, 3] uint8, bounded memory
        ...
    probe_video("clip.mp4")  # {'duration': 12.0, 'fps': 25.0, 'width': 320, 'height': 240,
                             #  'frames': 300}
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

logger = logging.getLogger(__name__)

# Longest video decoded without max_frames (a day): bounds the frames sampled from hostile or broken
# timestamps (two frames 200,000 s apart would otherwise be 200,000 frames in memory).
MAX_VIDEO_SECONDS = 24 * 3600


class VideoDecodeError(Exception):
    """A file that cannot be read as a video: missing, empty, corrupt, audio-only, unsupported.

    Attributes:
        path: the file, as given.
        reason: what is wrong with it, in words.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        # Both go to Exception.args so the error survives pickling (worker processes).
        super().__init__(os.fspath(path), reason)
        self.path = os.fspath(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot decode video {self.path}: {self.reason}"


def iter_frames(path: str | os.PathLike, fps: float = 1.0, resize: int | None = 256,
                crop: int | None = 224, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yields the frames on screen at times ``0, 1/fps, 2/fps, ...`` of a video file.

    Args:
        path: the video file.
        fps: frames per second to sample (targets ``k / fps`` from the first frame's timestamp).
        resize: length of the shorter side after resizing (aspect ratio kept); None keeps the size.
        crop: side of the centre square crop; None keeps the whole frame.
        max_frames: stop after this many frames; None reads to the end.

    Yields:
        uint8 RGB arrays ``[crop, crop, 3]`` (``[H, W, 3]`` when ``crop`` is None).

    Raises:
        VideoDecodeError: the file is missing, empty, not a video, or has no decodable frame.
        ValueError: invalid arguments.
    """
    _check_sampling(fps, resize, crop, max_frames)  # now, not at the first frame
    return _sampled_frames(path, fps, resize, crop, max_frames)


def _sampled_frames(path, fps, resize, crop, max_frames) -> Iterator[np.ndarray]:
    period = 1 / Fraction(fps).limit_denominator(1_000_000)
    target = Fraction(0)
    count = 0
    with _open_video(path) as (container, stream):
        limit, declared = _frame_bound(container, stream, fps, max_frames)
        # Rounding slack of timestamps stored in whole time-base ticks.
        slack = stream.time_base / 2
        for frame, end in _frames_with_end_times(path, container, stream):
            # How often this frame is sampled, known before any copy is made.
            repeats = max(0, math.ceil((end - slack - target) / period))
            if count + repeats > limit:
                if max_frames is None and declared is None:
                    raise VideoDecodeError(
                        path, f"its timestamps span more than {MAX_VIDEO_SECONDS} s "
                              f"(frame at {float(target):.0f} s stays on screen until "
                              f"{float(end):.0f} s); pass max_frames (--max_frames) to take its "
                              f"first frames")
                if max_frames is None:
                    logger.warning("%s: timestamps run past the declared duration (%.1f s); "
                                   "stopping there", path, declared)
                repeats = limit - count
            image = None
            for _ in range(repeats):
                image = _to_rgb(path, frame, resize, crop) if image is None else image.copy()
                yield image
                count += 1
                target += period
            if count >= limit:
                return


def _frame_bound(container, stream, fps, max_frames) -> tuple[int, float | None]:
    """The most frames a video may give, fixed before decoding: ``max_frames`` when given, else
    its declared duration (plus a second of rounding slack) at ``fps`` when the headers declare
    one under MAX_VIDEO_SECONDS, else ``MAX_VIDEO_SECONDS`` at ``fps`` (then exceeding it is an
    error). Returns ``(limit, declared duration (s) or None when the limit is not from it)``."""
    if max_frames is not None:
        return max_frames, None
    declared = (float(stream.duration * stream.time_base) if stream.duration
                else container.duration / av.time_base if container.duration else None)
    if declared is not None and 0 < declared < MAX_VIDEO_SECONDS:
        return math.ceil((declared + 1) * fps), declared
    return math.ceil(MAX_VIDEO_SECONDS * fps), None


def load_video(path: str | os.PathLike, fps: float = 1.0, resize: int | None = 256,
               crop: int | None = 224, max_frames: int | None = None) -> np.ndarray:
    """Decodes a whole video: uint8 ``[T, crop, crop, 3]``; arguments as :func:`iter_frames`."""
    return np.stack(list(iter_frames(path, fps=fps, resize=resize, crop=crop,
                                     max_frames=max_frames)))


def probe_video(path: str | os.PathLike) -> dict:
    """Reads a video's properties from its headers (and its packets where headers lack them).

    Returns:
        ``{'duration': seconds (float), 'fps': average frame rate (float), 'width': int,
        'height': int, 'frames': int}``; width and height as displayed (after rotation).

    Raises:
        VideoDecodeError: as :func:`iter_frames`, including a video whose first frame cannot be
        decoded.
    """
    with _open_video(path) as (container, stream):
        first = next(_decoded_frames(path, container, stream), None)
        if first is None:
            raise VideoDecodeError(path, "no decodable video frame")
        rotated = _quarter_turns(first) % 2 == 1
        width, height = (first.height, first.width) if rotated else (first.width, first.height)
    with _open_video(path) as (container, stream):
        frames = stream.frames
        duration = (float(stream.duration * stream.time_base) if stream.duration
                    else container.duration / av.time_base if container.duration else None)
        if not frames or duration is None:
            packet_count, packet_span = _scan_packets(container, stream)
            frames = frames or packet_count
            duration = duration if duration is not None else packet_span
        rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else (frames / duration if duration else 0.0)
    return {"duration": duration, "fps": fps, "width": width, "height": height, "frames": frames}


def _scan_packets(container, stream) -> tuple[int, float]:
    """Counts a stream's packets and the time they span (s), without decoding them."""
    count, first, last = 0, None, None
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None:
            continue
        count += 1
        first = packet.pts if first is None else min(first, packet.pts)
        end = packet.pts + (packet.duration or 0)
        last = end if last is None else max(last, end)
    return count, float((last - first) * stream.time_base) if count else 0.0


def _check_sampling(fps, resize, crop, max_frames) -> None:
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if resize is not None and resize < 1:
        raise ValueError(f"resize must be a positive side length or None, got {resize}")
    if crop is not None and crop < 1:
        raise ValueError(f"crop must be a positive side length or None, got {crop}")
    if resize is not None and crop is not None and crop > resize:
        raise ValueError(f"crop ({crop}) cannot exceed resize ({resize})")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be positive or None, got {max_frames}")


@contextlib.contextmanager
def _open_video(path):
    """Opens ``path``, yields ``(container, video_stream)``; any failure is a VideoDecodeError."""
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file not found")
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    try:
        container = av.open(os.fspath(path), metadata_errors="ignore")
    except av.error.EOFError:
        raise VideoDecodeError(path, "container holds no streams (ends before any data)") from None
    except av.error.InvalidDataError:
        raise VideoDecodeError(
            path, "not a video file FFmpeg can read (unknown format, or a damaged or incomplete "
                  "header)"
        ) from None
    except (av.error.FFmpegError, OSError) as error:
        raise VideoDecodeError(path, f"cannot open: {error}") from None
    with container:
        if not container.streams.video:
            others = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise VideoDecodeError(path, f"no video stream (file holds: {others})")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise VideoDecodeError(path, "video stream uses a codec FFmpeg cannot decode")
        stream.thread_type = "AUTO"
        yield container, stream


def _decoded_frames(path, container, stream) -> Iterator[av.VideoFrame]:
    """Decodes every frame of ``stream``, skipping damaged packets instead of giving up."""
    codec = stream.codec_context
    errors = []
    decoded = 0
    try:
        for packet in container.demux(stream):
            try:
                # An empty packet at the end of the stream flushes the decoder.
                for frame in codec.decode(packet):
                    decoded += 1
                    yield frame
            except av.error.FFmpegError as error:
                errors.append(error)
    except av.error.FFmpegError as error:
        # The file ends early or its container is damaged past this point: keep what was read.
        errors.append(error)
    if errors:
        if not decoded:
            raise VideoDecodeError(path, f"no decodable video frame ({len(errors)} damaged "
                                         f"packets; first error: {errors[0]})")
        logger.warning("%s: skipped %d damaged packets (first error: %s)", path, len(errors),
                       errors[0])


def _frames_with_end_times(path, container, stream) -> Iterator[tuple[av.VideoFrame, Fraction]]:
    """Yields ``(frame, end)``: each frame and when (s after the first frame) it leaves the screen.

    A frame's end is the next frame's timestamp; the last frame's is its timestamp plus its
    duration. Missing timestamps are filled in from the previous frame, timestamps going backwards
    (broken muxers) are clamped, so the frames' intervals are contiguous and ordered.
    """
    time_base = stream.time_base
    rate = stream.average_rate or stream.guessed_rate
    nominal_length = 1 / Fraction(rate) if rate else None
    origin = None  # presentation time (s) taken as 0
    pending, pending_start, pending_length = None, Fraction(0), None
    for frame in _decoded_frames(path, container, stream):
        expected = pending_start + pending_length if pending is not None else Fraction(0)
        if frame.pts is None:
            start = expected
        else:
            if origin is None:
                origin = frame.pts * time_base - expected
            start = max(frame.pts * time_base - origin, pending_start)
        if pending is not None:
            yield pending, start
        own_length = frame.duration * time_base if frame.duration else None
        interval = start - pending_start if pending is not None else None
        pending, pending_start = frame, start
        pending_length = own_length or nominal_length or interval or time_base
    if pending is None:
        raise VideoDecodeError(path, "no decodable video frame (the video stream is empty)")
    yield pending, pending_start + pending_length


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that make the frame upright (its display rotation)."""
    return round((frame.rotation or 0) / 90) % 4


def _to_rgb(path, frame: av.VideoFrame, resize: int | None, crop: int | None) -> np.ndarray:
    """Converts a decoded frame to an upright uint8 RGB array, resized and centre-cropped."""
    turns = _quarter_turns(frame)
    width, height = frame.width, frame.height
    if resize is not None:
        # Sizes are those of the upright picture; swscale works on the stored one.
        upright_w, upright_h = (height, width) if turns % 2 else (width, height)
        scale = resize / min(upright_w, upright_h)
        upright_w = max(1, round(upright_w * scale))
        upright_h = max(1, round(upright_h * scale))
        width, height = (upright_h, upright_w) if turns % 2 else (upright_w, upright_h)
    image = frame.reformat(width=width, height=height, format="rgb24",
                           interpolation="BICUBIC").to_ndarray()
    if turns:
        image = np.rot90(image, k=turns)
    if crop is not None:
        rows, cols = image.shape[:2]
        if rows < crop or cols < crop:
            raise VideoDecodeError(path, f"frame {cols}x{rows} is smaller than the crop size "
                                         f"{crop} (resize to at least {crop} first)")
        top, left = (rows - crop) // 2, (cols - crop) // 2
        image = image[top:top + crop, left:left + crop]
    return np.ascontiguousarray(image)
