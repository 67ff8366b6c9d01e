"""Where is the copy: temporal localisation of the segments a pair of videos shares.

From a pair's frame-to-frame similarity matrix (what the fine students and the teacher compute),
the matched segments ``(query_start, query_end, target_start, target_end, score)`` in seconds,
found as a temporal network's longest paths (:mod:`.temporal_network`); segment F1 and VSC22's
segment µAP to score them (:mod:`.metrics`); a picture of a pair's matrix with its segments
(:mod:`.plot`).

Example:

    segments = localize(student, student.index_video(query), student.index_video(target))
    localization_metrics(read_segments("segments.json"), predictions)
"""

from dns_tf.localization.metrics import (localization_metrics, segment_f1, segment_micro_ap,
                                         temporal_iou)
from dns_tf.localization.networks import frame_to_frame, localize, localize_hits
from dns_tf.localization.plot import plot_localization
from dns_tf.localization.segments import (Segment, SegmentFormatError, group_segments,
                                          read_segments, segment_entries, write_segments)
from dns_tf.localization.temporal_network import LocalizationConfig, localize_matrix

__all__ = [
    "localization_metrics", "segment_f1", "segment_micro_ap", "temporal_iou", "frame_to_frame",
    "localize", "localize_hits", "plot_localization", "Segment", "SegmentFormatError",
    "group_segments",
    "read_segments", "segment_entries", "write_segments", "LocalizationConfig", "localize_matrix",
]
