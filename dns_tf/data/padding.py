"""Batches of variable-length videos: zero padding along time plus a mask of real frames.

Every network in the project takes videos as ``[B, T, R, D]`` with a ``[B, T]`` mask, so every
producer of batches (training pipelines, indexing, evaluation) pads through this one helper.

Example:

    videos = [np.ones((7, 9, 512), np.float32), np.ones((12, 9, 512), np.float32)]
    padded, mask = padded_batch_from_arrays(videos)
    padded.shape, mask.shape   # (2, 12, 9, 512), (2, 12)
    mask.sum(axis=1)           # [7., 12.]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def padded_batch_from_arrays(videos: Sequence[np.ndarray], length: int | None = None,
                             dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Stacks videos of different lengths into one zero-padded batch.

    Args:
        videos: B arrays ``[T_i, ...]`` with equal trailing shapes (``[T_i, R, D]`` for region
            features), each with at least one frame.
        length: the padded length T; at least the longest video. Defaults to the longest video.
        dtype: dtype of the padded batch and of the mask.

    Returns:
        ``(padded, mask)``: ``padded`` ``[B, T, ...]`` with zeros after each video's last frame,
        ``mask`` ``[B, T]`` with 1 on real frames and 0 on padding (the reference's float masks).
    """
    if len(videos) == 0:
        raise ValueError("padded_batch_from_arrays: expected at least one video, got none")
    frame_shape = np.shape(videos[0])[1:]
    lengths = []
    for i, video in enumerate(videos):
        shape = np.shape(video)
        if len(shape) == 0 or shape[1:] != frame_shape:
            raise ValueError(f"padded_batch_from_arrays: video {i} has shape {shape}, expected "
                             f"[T, {', '.join(map(str, frame_shape))}] like video 0")
        if shape[0] == 0:
            raise ValueError(f"padded_batch_from_arrays: video {i} has no frames")
        lengths.append(shape[0])
    longest = max(lengths)
    if length is None:
        length = longest
    elif length < longest:
        raise ValueError(f"padded_batch_from_arrays: length={length} is shorter than the longest "
                         f"video ({longest} frames)")
    padded = np.zeros((len(videos), length, *frame_shape), dtype=dtype)
    mask = np.zeros((len(videos), length), dtype=dtype)
    for i, (video, frames) in enumerate(zip(videos, lengths)):
        padded[i, :frames] = video
        mask[i, :frames] = 1
    return padded, mask
