"""Temporal augmentations of the students' training videos, as in the authors' pair generator.

The reference (``datasets/generators.py``, ``StudentPairGenerator.augment``) perturbs the positive
and the negative of each training triplet, never the anchor. A video longer than 8 frames draws
``u ~ U[0, 1)`` and gets

====================  ==========================================================================
``u < 0.1``           windows of 4-15 frames, each dropped with probability 0.3
``0.1 <= u < 0.2``    the same windows, shuffled
``0.2 <= u < 0.3``    every second frame kept (double speed)
``0.3 <= u < 0.4``    every frame duplicated (half speed), only for videos under 150 frames
``0.4 <= u < 0.5``    time reversed
``u >= 0.5``          unchanged
====================  ==========================================================================

and is then cut to its first 300 frames. Window operations first pad the video to a multiple of the
window size with its own first frames (wrapping around), as the reference does.

Every function works along axis 0 of any array, so ``temporal_augment(np.arange(n), rng)`` gives the
frame order that the same draw applies to a video ``[T, R, D]``. Randomness comes only from the
``np.random.Generator`` passed in: the same generator state gives the same augmentation.
"""

from __future__ import annotations

import numpy as np

#: Videos with this many frames or fewer are never augmented.
MIN_FRAMES = 8
#: Window sizes are drawn from [MIN_WINDOW, MAX_WINDOW].
MIN_WINDOW, MAX_WINDOW = 4, 15
#: Probability of dropping each window in :func:`drop_windows`.
WINDOW_DROP_RATE = 0.3
#: Only videos shorter than this get their frames duplicated.
DUPLICATE_BELOW = 150
#: The reference cuts augmented videos to this many frames.
MAX_FRAMES = 300


def _windows(video: np.ndarray, window_size: int) -> np.ndarray:
    """Splits ``[T, ...]`` into ``[ceil(T / w), w, ...]``, padding with the video's first frames."""
    if window_size < 1:
        raise ValueError(f"window_size must be positive, got {window_size}")
    frames = video.shape[0]
    missing = -frames % window_size
    if missing:
        wrap = np.resize(np.arange(frames), missing)  # 0, 1, ... cycling when the video is short
        video = np.concatenate([video, video[wrap]], axis=0)
    return video.reshape(-1, window_size, *video.shape[1:])


def drop_windows(video: np.ndarray, rng: np.random.Generator, window_size: int,
                 drop_rate: float = WINDOW_DROP_RATE) -> np.ndarray:
    """Removes whole windows of ``window_size`` frames, each with probability ``drop_rate``.

    If every window would be dropped, the (window-padded) video is returned whole.
    """
    windows = _windows(video, window_size)
    keep = rng.random(windows.shape[0]) > drop_rate
    if keep.any():
        windows = windows[keep]
    return windows.reshape(-1, *video.shape[1:])


def shuffle_windows(video: np.ndarray, rng: np.random.Generator, window_size: int) -> np.ndarray:
    """Permutes windows of ``window_size`` frames; frame order inside a window is kept."""
    windows = _windows(video, window_size)
    windows = windows[rng.permutation(windows.shape[0])]
    return windows.reshape(-1, *video.shape[1:])


def keep_every_second_frame(video: np.ndarray) -> np.ndarray:
    """Frames 0, 2, 4, ...: the video played at double speed."""
    return video[::2]


def duplicate_frames(video: np.ndarray, below: int = DUPLICATE_BELOW) -> np.ndarray:
    """Frames 0, 0, 1, 1, ...: half speed; videos of ``below`` frames or more stay unchanged."""
    if video.shape[0] >= below:
        return video
    return np.repeat(video, 2, axis=0)


def reverse(video: np.ndarray) -> np.ndarray:
    """The video played backwards."""
    return video[::-1]


def temporal_augment(video: np.ndarray, rng: np.random.Generator,
                     max_frames: int | None = MAX_FRAMES) -> np.ndarray:
    """Applies one of the reference's augmentations (or none) and cuts to ``max_frames``.

    Args:
        video: ``[T, ...]``, e.g. region features ``[T, R, D]``.
        rng: source of every random choice.
        max_frames: frames kept from the start of the result; ``None`` keeps all.

    Returns:
        ``[T', ...]`` with the same trailing shape and dtype.
    """
    if video.shape[0] > MIN_FRAMES:
        draw = rng.uniform()
        if draw < 0.2:
            window_size = int(rng.integers(MIN_WINDOW, MAX_WINDOW + 1))
            if draw < 0.1:
                video = drop_windows(video, rng, window_size)
            else:
                video = shuffle_windows(video, rng, window_size)
        elif draw < 0.3:
            video = keep_every_second_frame(video)
        elif draw < 0.4:
            video = duplicate_frames(video)
        elif draw < 0.5:
            video = reverse(video)
    return truncate(video, max_frames)


def truncate(video: np.ndarray, max_frames: int | None) -> np.ndarray:
    """The first ``max_frames`` frames (all of them when ``max_frames`` is ``None``)."""
    if max_frames is None:
        return video
    if max_frames < 1:
        raise ValueError(f"max_frames must be positive or None, got {max_frames}")
    return video[:max_frames]
