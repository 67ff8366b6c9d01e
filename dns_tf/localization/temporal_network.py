"""Copied segments from a frame-to-frame similarity matrix: a temporal network's longest paths.

Method (the temporal network of Tan et al. 2009, as VCSL and the VSC22 matching baseline run it):

1. **Nodes**: frame pairs that match. The matrix is first put on a common scale, its own
   background: ``z = (s - median(s)) / (1.4826 * MAD(s))`` (students, the teacher and the binary
   codes give raw similarities on different scales, and what is "similar" for a video of one
   scene is not for a video of many). A cell is a node when ``z >= min_contrast``, ``s >=
   min_similarity``, and it is among the ``top_k`` best of its row or its column (a query frame
   keeps its few best target frames, and vice versa: a speed change matches one frame to several).
2. **Edges**: node ``(i, j)`` may follow node ``(i', j')`` when ``1 <= i - i' <= max_step`` and
   ``0 <= j - j' <= max_step``: time runs forward in both videos, at any speed between
   ``1 / max_step`` and ``max_step`` (a frame repeated or dropped by a frame-rate change is a step
   of 0 or 2), and up to ``max_step - 1`` frames may be skipped where a logo, a flash or a re-encode
   lowers one frame's similarity; each skipped query frame costs ``gap_penalty``.
3. **Longest paths**: the path of greatest summed contrast is found by dynamic programming over
   query frames (each row vectorised over target frames, with the path's start and length carried
   along); its bounding box is one segment. The box, grown by ``max_step`` frames, is removed from
   the network and the next path is sought, so a derivative reusing several parts of the query
   (a splice, a loop) gives several segments, and a band of near-identical frames (a slow scene)
   gives one.
4. **Filters**: a path needs ``min_frames`` frames and a slope (target seconds per query second)
   within ``[1 / max_speed, max_speed]``; its score is the mean similarity along the path.

Why this method. VCSL (He et al., CVPR 2022) compares the classic localisation methods on
copied segments of real videos: Hough voting (votes for one temporal offset, so it breaks on speed
changes), DTW (one monotone alignment of whole sequences, so it cannot return several segments or
skip what was inserted), dynamic programming over diagonal runs (Chou et al. 2015) and the
temporal network. The temporal network was the best of the non-learned methods there, and it is
what the VSC22 matching track's baseline localises with (VCSL's ``TN`` behind
``vsc/baseline/localization.py``); the winning matching solutions of VSC22 replaced it with
detectors trained on similarity matrices, which need labelled copies we do not have. Its
properties are the ones asked for: any slope within bounds (speed changes), several segments per
pair (splices), partial paths (trims), and tolerance of weak frames (picture-in-picture and
overlays lower similarities, the contrast normalisation keeps them above the background).

Unlike the original (a graph of top-k matches searched path by path), the longest paths are
found by one dynamic program over the whole matrix, ``O(Tq · Tt · max_step)`` numpy work with a
Python loop over query frames only.

References:
    H.-K. Tan, C.-W. Ngo, R. Hong, T.-S. Chua, "Scalable detection of partial near-duplicate
    videos by visual-temporal consistency", ACM Multimedia 2009.
    S. He et al., "A Large-scale Comprehensive Dataset and Copy-overlap Aware Evaluation Protocol
    for Segment-level Video Copy Detection" (VCSL), CVPR 2022.
    E. Pizzi et al., "The 2023 Video Similarity Dataset and Challenge", 2023 (VSC22).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dns_tf.config import field
from dns_tf.localization.segments import Segment

# MAD of a normal distribution times this is its standard deviation.
_MAD_TO_STD = 1.4826


@dataclasses.dataclass(frozen=True)
class LocalizationConfig:
    """How segments are found in a frame-to-frame similarity matrix (1 frame per second)."""

    min_contrast: float = field(3.0, "a node's similarity above the matrix's median, in robust "
                                     "standard deviations (1.4826 MAD)")
    min_similarity: float = field(0.0, "a node's least raw similarity")
    top_k: int = field(3, "nodes kept per query frame and per target frame")
    max_step: int = field(3, "largest step between consecutive path nodes, in frames, on either "
                             "axis (bounds the speed change and the frames skipped)")
    gap_penalty: float = field(0.5, "cost of each query frame skipped, in contrast units")
    min_frames: int = field(2, "least nodes on a segment's path")
    max_speed: float = field(3.0, "largest speed change accepted (slope and its inverse)")
    max_segments: int = field(8, "most segments per pair")

    def __post_init__(self):
        if self.top_k < 1 or self.max_step < 1 or self.min_frames < 1 or self.max_segments < 1:
            raise ValueError("top_k, max_step, min_frames and max_segments must be >= 1")
        if self.max_speed < 1:
            raise ValueError(f"max_speed must be >= 1, got {self.max_speed}")
        if self.gap_penalty < 0:
            raise ValueError(f"gap_penalty must be >= 0, got {self.gap_penalty}")


def contrast(similarity: np.ndarray) -> np.ndarray:
    """``[Tq, Tt]`` similarities in robust standard deviations above the matrix's median."""
    median = np.median(similarity)
    spread = _MAD_TO_STD * np.median(np.abs(similarity - median))
    # A flat matrix (one still frame each) has no spread: a tiny floor keeps it finite.
    return (similarity - median) / max(spread, 1e-6 * max(np.abs(similarity).max(), 1e-12))


def candidate_nodes(similarity: np.ndarray, config: LocalizationConfig) -> np.ndarray:
    """``[Tq, Tt]`` bool: the temporal network's nodes (step 1 of the module docstring)."""
    rows, cols = similarity.shape
    k_row, k_col = min(config.top_k, cols), min(config.top_k, rows)
    row_kth = np.partition(similarity, cols - k_row, axis=1)[:, cols - k_row][:, None]
    col_kth = np.partition(similarity, rows - k_col, axis=0)[rows - k_col][None, :]
    return ((contrast(similarity) >= config.min_contrast)
            & (similarity >= config.min_similarity)
            & ((similarity >= row_kth) | (similarity >= col_kth)))


def longest_path(weight: np.ndarray, values: np.ndarray, max_step: int, gap_penalty: float):
    """The monotone path of greatest summed ``weight`` through the finite cells of ``weight``.

    Args:
        weight: ``[Tq, Tt]`` positive node weights, ``-inf`` where there is no node.
        values: ``[Tq, Tt]`` summed along the path too (the raw similarities).

    Returns:
        ``(score, (start_row, start_col), (end_row, end_col), nodes, sum of values)`` or None
        without nodes.
        Consecutive path nodes step ``1..max_step`` rows and ``0..max_step`` columns; each
        skipped row costs ``gap_penalty``.
    """
    rows, cols = weight.shape
    if not np.isfinite(weight).any():
        return None
    columns = np.arange(cols)
    # window[i + max_step]: for row i, the best path ending within columns [j - max_step, j],
    # with its start (flat index) and node count; the first max_step rows are empty.
    window = np.full((rows + max_step, cols), -np.inf)
    window_start = np.zeros((rows + max_step, cols), np.int64)
    window_count = np.zeros((rows + max_step, cols), np.int64)
    window_sum = np.zeros((rows + max_step, cols))
    best = np.full((rows, cols), -np.inf)
    start = np.zeros((rows, cols), np.int64)
    count = np.zeros((rows, cols), np.int64)
    total = np.zeros((rows, cols))
    # Reaching row i from row i - d skips d - 1 rows.
    penalties = gap_penalty * np.arange(max_step - 1, -1, -1)[:, None]
    padding = np.full(max_step, -np.inf)
    for row in range(rows):
        previous = window[row:row + max_step] - penalties                 # [max_step, Tt]
        step = np.argmax(previous, axis=0)
        carried = previous[step, columns]
        extend = carried > 0
        best[row] = weight[row] + np.where(extend, carried, 0.0)
        start[row] = np.where(extend, window_start[row + step, columns], row * cols + columns)
        count[row] = np.where(extend, window_count[row + step, columns] + 1, 1)
        total[row] = values[row] + np.where(extend, window_sum[row + step, columns], 0.0)
        # Windowed maximum over columns j - max_step .. j (a step of 0..max_step columns).
        views = np.lib.stride_tricks.sliding_window_view(
            np.concatenate([padding, best[row]]), max_step + 1)            # [Tt, max_step + 1]
        shift = max_step - np.argmax(views[:, ::-1], axis=1)               # nearest on ties
        source = columns - max_step + shift
        valid = source >= 0
        source = np.maximum(source, 0)
        window[row + max_step] = np.where(valid, best[row, source], -np.inf)
        window_start[row + max_step] = start[row, source]
        window_count[row + max_step] = count[row, source]
        window_sum[row + max_step] = total[row, source]
    end = int(np.argmax(best))
    end_row, end_col = divmod(end, cols)
    start_row, start_col = divmod(int(start[end_row, end_col]), cols)
    return (float(best[end_row, end_col]), (start_row, start_col), (end_row, end_col),
            int(count[end_row, end_col]), float(total[end_row, end_col]))


def localize_matrix(similarity: np.ndarray, config: LocalizationConfig = LocalizationConfig(),
                    query_fps: float = 1.0, target_fps: float = 1.0) -> list[Segment]:
    """The copied segments of one pair, best first.

    Args:
        similarity: ``[Tq, Tt]`` frame-to-frame similarity of the query's and the target's frames
            (the fine students' and the teacher's ``frame_to_frame_similarity``).
        config: the method's parameters.
        query_fps, target_fps: frames per second of each axis; frame ``i`` covers
            ``[i / fps, (i + 1) / fps)`` seconds.

    Returns:
        :class:`Segment` s in seconds, highest score first (at most ``config.max_segments``).
    """
    similarity = np.asarray(similarity, np.float32)
    if similarity.ndim != 2 or 0 in similarity.shape:
        raise ValueError(f"a frame-to-frame similarity matrix [Tq, Tt] is needed, got shape "
                         f"{similarity.shape}")
    if not np.isfinite(similarity).all():
        raise ValueError("the similarity matrix holds NaN or infinite values")
    nodes = candidate_nodes(similarity, config)
    weight = np.where(nodes, contrast(similarity), -np.inf)
    rows, cols = similarity.shape
    segments = []
    # Each round removes at least one node; rejected paths do not count towards max_segments.
    while len(segments) < config.max_segments:
        path = longest_path(weight, similarity, config.max_step, config.gap_penalty)
        if path is None:
            break
        _, (row0, col0), (row1, col1), count, similarity_sum = path
        grow = config.max_step
        weight[max(row0 - grow, 0):row1 + grow + 1, max(col0 - grow, 0):col1 + grow + 1] = -np.inf
        query_seconds = (row1 + 1 - row0) / query_fps
        target_seconds = (col1 + 1 - col0) / target_fps
        slope = target_seconds / query_seconds
        if count < config.min_frames or not 1 / config.max_speed <= slope <= config.max_speed:
            continue
        segments.append(Segment(row0 / query_fps, (row1 + 1) / query_fps, col0 / target_fps,
                                (col1 + 1) / target_fps, similarity_sum / count))
    return sorted(segments, key=lambda segment: -segment.score)
