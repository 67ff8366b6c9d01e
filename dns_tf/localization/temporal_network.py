"""Copied segments from a frame-to-frame similarity matrix: a temporal network's longest paths.

Method (the temporal network of Tan et al. 2009, as VCSL and the VSC22 matching baseline run it):

1. **Nodes**: frame pairs that match. Each cell is first averaged with its ``diagonal_radius``
   neighbours along the diagonal (a copy is a line of matches, the background is not; within a
   scene of near-identical frames this favours the copy's diagonal over the scene's block), and
   the matrix is put on a common scale, its own
   background: each cell's contrast is ``min(z_row, z_col)``, its similarity in standard
   deviations above its row's mean and above its column's mean (students, the teacher and binary
   codes give raw similarities on different scales, some frames resemble every other, and what is
   "similar" within a video of one scene is not within a video of many). A cell is a node when
   its contrast is at least ``min_contrast``, its similarity at least ``min_similarity``, and it
   is among the ``top_k`` best of both its row and its column (mutual nearest neighbours: a query
   frame keeps its few best target frames and vice versa; ``top_k`` > 1 because a speed change
   matches one frame to several, and mutuality because in a long video the best of many unrelated
   frames stands out by chance).
2. **Edges**: node ``(i, j)`` may follow node ``(i', j')`` when ``1 <= i - i' <= max_step`` and
   ``0 <= j - j' <= max_step``: time runs forward in both videos, at any speed between
   ``1 / max_step`` and ``max_step`` (a frame repeated or dropped by a frame-rate change is a step
   of 0 or 2), and up to ``max_step - 1`` frames may be skipped where a logo, a flash or a re-encode
   lowers one frame's similarity; each skipped query frame costs ``gap_penalty``.
3. **Longest paths**: a node is worth its contrast less ``node_cost``; the path of greatest worth
   is found by dynamic programming over query frames (each row vectorised over target frames,
   predecessors kept for the path) and is one segment if it is worth ``min_path_score``. Its box,
   grown by ``max_step`` frames, is removed from the network and the next path is sought, so a
   derivative reusing several parts of the query (a splice, a loop) gives several segments, and a
   band of near-identical frames (a slow scene) gives one.
4. **Ends and filters**: leading and trailing nodes weaker than ``tail_fraction`` of the path's
   median contrast are dropped (background nodes that continue a copy by chance); a segment needs
   ``min_frames`` nodes and a slope (target seconds per query second) within
   ``[1 / max_speed, max_speed]``; its score is the mean raw similarity along its path (on the
   network's scale: comparable between pairs of one network, not between networks).

The defaults were chosen on synthetic matrices (tests/test_localization.py) and on real
derivatives made with FFmpeg (tests/copies.py: trims, 2x and 0.5x speed, a splice,
picture-in-picture) under the reference checkpoints' students.

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

from dns_tf.flags import field
from dns_tf.localization.segments import Segment

@dataclasses.dataclass(frozen=True)
class LocalizationConfig:
    """How segments are found in a frame-to-frame similarity matrix (1 frame per second)."""

    min_contrast: float = field(0.75, "a node's similarity above its row's and its column's mean, "
                                     "in standard deviations")
    min_similarity: float = field(0.0, "a node's least raw similarity")
    diagonal_radius: int = field(1, "cells averaged along the diagonal on each side first")
    top_k: int = field(2, "a node is among the top_k of its row and of its column")
    max_step: int = field(3, "largest step between consecutive path nodes, in frames, on either "
                             "axis (bounds the speed change and the frames skipped)")
    node_cost: float = field(0.65, "subtracted from a node's contrast: its worth on a path")
    gap_penalty: float = field(1.0, "cost of each query frame skipped, in contrast units")
    min_path_score: float = field(3.0, "least summed node worth of a segment's path (a few "
                                       "background cells that line up by chance score less)")
    tail_fraction: float = field(0.6, "a path's first and last nodes are dropped while their "
                                      "contrast is below this fraction of the path's median")
    min_frames: int = field(4, "least nodes on a segment's path (frames of its query side)")
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
    """How much each cell of ``[Tq, Tt]`` stands out in its row *and* in its column.

    ``min(z_row, z_col)``, each the cell's similarity in standard deviations above the mean of
    its row (resp. column). A cell is high only when the query frame matches that target frame
    better than the target's other frames, and the target frame matches that query frame better
    than the query's other frames: a query frame that resembles everything (a dark frame, a title)
    or a similarity scale that varies between networks does not make false nodes.
    """
    similarity = similarity.astype(np.float64)
    standardized = []
    for axis in (1, 0):
        mean = similarity.mean(axis=axis, keepdims=True)
        # A row of one still frame has no spread: a floor keeps it finite (and not salient).
        spread = np.maximum(similarity.std(axis=axis, keepdims=True),
                            1e-6 * max(np.abs(similarity).max(), 1e-12))
        standardized.append((similarity - mean) / spread)
    return np.minimum(*standardized)


def diagonal_mean(similarity: np.ndarray, radius: int) -> np.ndarray:
    """Each cell averaged with its ``radius`` neighbours along the main diagonal direction
    (cells outside the matrix are left out): a copy's line gains on scattered background."""
    if radius == 0:
        return similarity
    rows, cols = similarity.shape
    padded = np.pad(similarity.astype(np.float64), radius, constant_values=np.nan)
    shifted = np.stack([padded[radius + k:radius + k + rows, radius + k:radius + k + cols]
                        for k in range(-radius, radius + 1)])
    return np.nanmean(shifted, axis=0)


def candidate_nodes(similarity: np.ndarray, config: LocalizationConfig) -> np.ndarray:
    """``[Tq, Tt]`` bool: the temporal network's nodes (step 1 of the module docstring)."""
    rows, cols = similarity.shape
    k_row, k_col = min(config.top_k, cols), min(config.top_k, rows)
    row_kth = np.partition(similarity, cols - k_row, axis=1)[:, cols - k_row][:, None]
    col_kth = np.partition(similarity, rows - k_col, axis=0)[rows - k_col][None, :]
    return ((contrast(similarity) >= config.min_contrast)
            & (similarity >= config.min_similarity)
            & (similarity >= row_kth) & (similarity >= col_kth))


def longest_path(weight: np.ndarray, max_step: int, gap_penalty: float) -> np.ndarray | None:
    """The monotone path of greatest summed ``weight`` through the finite cells of ``weight``.

    Args:
        weight: ``[Tq, Tt]`` node weights, ``-inf`` where there is no node.
        max_step: consecutive path nodes step ``1..max_step`` rows and ``0..max_step`` columns.
        gap_penalty: the cost of each skipped row.

    Returns:
        ``[N, 2]`` (row, column) of the path's nodes in order, or None without nodes.
    """
    rows, cols = weight.shape
    if not np.isfinite(weight).any():
        return None
    columns = np.arange(cols)
    # window[i + max_step, j]: the best path ending in row i within columns [j - max_step, j],
    # and window_cell its last cell (flat index); the first max_step rows are empty.
    window = np.full((rows + max_step, cols), -np.inf)
    window_cell = np.zeros((rows + max_step, cols), np.int64)
    best = np.full((rows, cols), -np.inf)
    previous = np.full((rows, cols), -1, np.int64)     # the path's preceding cell, -1 at a start
    # Reaching row i from row i - d skips d - 1 rows.
    penalties = gap_penalty * np.arange(max_step - 1, -1, -1)[:, None]
    padding = np.full(max_step, -np.inf)
    for row in range(rows):
        carried = window[row:row + max_step] - penalties                  # [max_step, Tt]
        step = np.argmax(carried, axis=0)
        carried = carried[step, columns]
        extend = carried > 0
        best[row] = weight[row] + np.where(extend, carried, 0.0)
        previous[row] = np.where(extend, window_cell[row + step, columns], -1)
        # Windowed maximum over columns j - max_step .. j (a step of 0..max_step columns).
        views = np.lib.stride_tricks.sliding_window_view(
            np.concatenate([padding, best[row]]), max_step + 1)            # [Tt, max_step + 1]
        source = columns - np.argmax(views[:, ::-1], axis=1)               # nearest on ties
        valid = source >= 0
        source = np.maximum(source, 0)
        window[row + max_step] = np.where(valid, best[row, source], -np.inf)
        window_cell[row + max_step] = row * cols + source
    cell, path = int(np.argmax(best)), []
    while cell >= 0:
        path.append(divmod(cell, cols))
        cell = int(previous[path[-1]])
    return np.array(path[::-1], np.int64)


def trimmed(path: np.ndarray, node_contrast: np.ndarray, fraction: float) -> np.ndarray:
    """The path without its leading and trailing nodes of contrast below ``fraction`` times the
    path's median: a copy's path can run on through background nodes that pass by chance."""
    keep = np.flatnonzero(node_contrast >= fraction * np.median(node_contrast))
    return path[keep[0]:keep[-1] + 1]


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
    smoothed = diagonal_mean(similarity, config.diagonal_radius)
    node_contrast = contrast(similarity)
    # Nodes stand out both after the diagonal mean (a copy's line) and on their own (the mean
    # also draws short diagonal streaks out of background noise, which raw contrast breaks up).
    nodes = candidate_nodes(smoothed, config) & (node_contrast >= config.min_contrast)
    # A node is worth its contrast less node_cost: weak nodes may bridge a gap at a small cost.
    weight = np.where(nodes, node_contrast - config.node_cost, -np.inf)
    segments = []
    # Paths come out in decreasing worth, so rejected ones (too short, too steep) are chance
    # alignments after the copies: a bound on the rounds bounds the time on long unrelated pairs.
    for _ in range(2 * config.max_segments):
        if len(segments) == config.max_segments:
            break
        path = longest_path(weight, config.max_step, config.gap_penalty)
        if path is None:
            break
        rows, cols = path[:, 0], path[:, 1]
        # Skipped rows cost what the dynamic program charged for them.
        score = weight[rows, cols].sum() - config.gap_penalty * np.sum(np.diff(rows) - 1)
        if score < config.min_path_score:
            break  # removing nodes never lengthens a path: every later one scores less
        # The path's box, grown by max_step, leaves the network (a band of near-identical frames
        # along a copy would otherwise come back as parallel paths).
        grow = config.max_step
        weight[max(rows[0] - grow, 0):rows[-1] + grow + 1,
               max(cols[0] - grow, 0):cols[-1] + grow + 1] = -np.inf
        path = trimmed(path, node_contrast[rows, cols], config.tail_fraction)
        (row0, col0), (row1, col1) = path[0].tolist(), path[-1].tolist()
        slope = ((col1 + 1 - col0) / target_fps) / ((row1 + 1 - row0) / query_fps)
        if len(path) < config.min_frames or not 1 / config.max_speed <= slope <= config.max_speed:
            continue
        segments.append(Segment(row0 / query_fps, (row1 + 1) / query_fps, col0 / target_fps,
                                (col1 + 1) / target_fps,
                                float(similarity[path[:, 0], path[:, 1]].mean())))
    return sorted(segments, key=lambda segment: -segment.score)
