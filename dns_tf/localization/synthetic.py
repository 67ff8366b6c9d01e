"""Synthetic frame-to-frame similarity matrices with known copied segments, to test localisation.

A copied segment is a line from ``(query_start, target_start)`` to ``(query_end, target_end)``
seconds: every query frame on it matches the target frame(s) it maps to, at any speed. The
background is noise around a base similarity, like unrelated frames.

Example:

    similarity, truth = synthetic_matrix(30, 40, [Segment(5, 15, 20, 25)], seed=0)  # 2x faster
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dns_tf.localization.segments import Segment


def synthetic_matrix(query_frames: int, target_frames: int, segments: Sequence[Segment],
                     match: float = 0.8, background: float = 0.2, noise: float = 0.05,
                     seed: int = 0) -> tuple[np.ndarray, list[Segment]]:
    """A ``[Tq, Tt]`` matrix (1 frame per second) with ``segments`` drawn on it.

    Args:
        segments: the copied segments, in seconds (frame ``i`` covers ``[i, i + 1)``).
        match: similarity of matching frames; background: of the others; noise: the standard
            deviation of Gaussian noise added everywhere.

    Returns:
        ``(similarity, segments)``.
    """
    rng = np.random.default_rng(seed)
    similarity = background + noise * rng.standard_normal((query_frames, target_frames))
    for segment in segments:
        query_seconds = segment.query_end - segment.query_start
        target_seconds = segment.target_end - segment.target_start
        # Sample the line finely so that every frame it passes through on either axis matches.
        steps = int(4 * max(query_seconds, target_seconds)) + 1
        fraction = (np.arange(steps) + 0.5) / steps
        rows = np.floor(segment.query_start + fraction * query_seconds).astype(int)
        cols = np.floor(segment.target_start + fraction * target_seconds).astype(int)
        inside = (rows < query_frames) & (cols < target_frames)
        similarity[rows[inside], cols[inside]] = match + noise * rng.standard_normal(inside.sum())
    return similarity.astype(np.float32), list(segments)
