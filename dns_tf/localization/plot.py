"""A picture of a pair: its frame-to-frame similarity matrix with true and predicted segments.

Example:

    plot_localization(matrix, "pair.png", predicted=segments, truth=true_segments,
                      title="q000 vs q000_ds1")
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
# A bare Figure on the Agg canvas: no pyplot, no global backend switch for the caller.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from dns_tf.localization.segments import Segment


def plot_localization(similarity: np.ndarray, path_png: str | os.PathLike,
                      predicted: Sequence[Segment] = (), truth: Sequence[Segment] = (),
                      title: str | None = None, query_fps: float = 1.0,
                      target_fps: float = 1.0) -> None:
    """Writes a PNG of ``similarity`` ``[Tq, Tt]`` (query seconds down, target seconds across).

    True segments are drawn as green boxes, predicted ones as dashed red boxes with their
    diagonal (the path from start to end) and score.

    Args:
        similarity: the pair's frame-to-frame matrix.
        path_png: where to write the figure.
        predicted, truth: :class:`Segment` s in seconds.
        title: figure title, e.g. the pair's ids.
        query_fps, target_fps: frames per second of each axis (frame i covers [i, i+1) / fps).
    """

    similarity = np.asarray(similarity, np.float32)
    if similarity.ndim != 2 or 0 in similarity.shape:
        raise ValueError(f"a frame-to-frame similarity matrix [Tq, Tt] is needed, got shape "
                         f"{similarity.shape}")
    rows, cols = similarity.shape
    query_seconds, target_seconds = rows / query_fps, cols / target_fps
    scale = 6.0 / max(query_seconds, target_seconds)
    figure = Figure(figsize=(max(4.0, target_seconds * scale + 2.6),
                             max(3.0, query_seconds * scale + 1.4)), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    image = axis.imshow(similarity, cmap="viridis", origin="upper", interpolation="nearest",
                        extent=(0, target_seconds, query_seconds, 0), aspect="equal")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="frame similarity")
    for segment in truth:
        axis.add_patch(Rectangle((segment.target_start, segment.query_start),
                                 segment.target_end - segment.target_start,
                                 segment.query_end - segment.query_start, fill=False,
                                 edgecolor="lime", linewidth=4, alpha=0.8))
    for segment in predicted:
        axis.add_patch(Rectangle((segment.target_start, segment.query_start),
                                 segment.target_end - segment.target_start,
                                 segment.query_end - segment.query_start, fill=False,
                                 edgecolor="red", linestyle="--", linewidth=1.5))
        axis.plot([segment.target_start, segment.target_end],
                  [segment.query_start, segment.query_end], color="red", linewidth=1)
        axis.annotate(f"{segment.score:.2f}", (segment.target_end, segment.query_start),
                      color="red", fontsize=8, ha="right", va="bottom")
    axis.set_xlabel("target (s)")
    axis.set_ylabel("query (s)")
    axis.legend(handles=[Line2D([], [], color="lime", linewidth=4, label="true"),
                         Line2D([], [], color="red", linestyle="--", label="predicted")],
                fontsize=7, loc="lower left", framealpha=0.7)
    if title:
        axis.set_title(title, fontsize=9)
    figure.savefig(os.fspath(path_png), dpi=100)
