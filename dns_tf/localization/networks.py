"""Localisation with the networks: the fine students', the teacher's and a search's matrices.

``localize`` reads the frame-to-frame similarity a fine-grained network computes for a pair (the
region chamfer matrix its video comparator refines) and finds the copied segments in it with
:func:`~dns_tf.localization.temporal_network.localize_matrix`. The raw matrix is used, not the
comparator's output: the comparator pools twice by 2, so its cells span 4 seconds, too coarse to
place the ends of a few-second copy.

Example:

    student = load_network("fg_att_student.pth", FineGrainedStudent)
    segments = localize(student, student.index_video(query), student.index_video(target))
    # [Segment(query_start=4.0, query_end=12.0, target_start=3.0, target_end=11.0, score=0.9)]
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from dns_tf.localization.segments import Segment
from dns_tf.localization.temporal_network import LocalizationConfig, localize_matrix

# Frames per second of the decoder (dns_tf.features.video samples 1 frame a second).
FRAMES_PER_SECOND = 1.0


def frame_to_frame(network, query, target) -> np.ndarray:
    """``[Tq, Tt]`` frame-to-frame similarity of two indexed videos ``[T, R, D]`` (what the
    network's ``index_video`` returns) under a fine student or the teacher."""
    similarity, _ = network.frame_to_frame_similarity(query, target)
    return np.asarray(similarity)[0]


def localize(network, query, target, config: LocalizationConfig = LocalizationConfig(),
             fps: float = FRAMES_PER_SECOND) -> list[Segment]:
    """The segments of ``query`` copied in ``target``, best first.

    Args:
        network: a :class:`~dns_tf.models.FineGrainedStudent` or
            :class:`~dns_tf.models.ViSiLTeacher`.
        query, target: indexed videos ``[T, R, D]`` (the network's ``index_video``).
        config: the localisation's parameters.
        fps: frames per second of both videos' features.

    Returns:
        :class:`Segment` s in seconds.
    """
    return localize_matrix(frame_to_frame(network, query, target), config, fps, fps)


def localize_hits(hits: Sequence, query_fine: np.ndarray, index, backend,
                  config: LocalizationConfig = LocalizationConfig(),
                  fps: float = FRAMES_PER_SECOND) -> list:
    """Search hits with the segments of their re-ranked ones filled in.

    Args:
        hits: :class:`~dns_tf.retrieval.Hit` s.
        query_fine: the query's stored fine representation.
        index: the :class:`~dns_tf.index.VideoIndex` the hits come from.
        backend: a retrieval backend with ``frame_to_frame(query_fine, target_fines)``.

    Returns:
        The hits, re-ranked ones with ``segments`` (a tuple of :class:`Segment`, maybe empty),
        the others unchanged (``segments`` None: the fine student never compared them).
    """
    chosen = [position for position, hit in enumerate(hits) if hit.reranked]
    if not chosen:
        return list(hits)
    records = index.get_many([hits[position].video_id for position in chosen])
    matrices = backend.frame_to_frame(query_fine, [record.fine for record in records])
    hits = list(hits)
    for position, matrix in zip(chosen, matrices):
        hits[position] = dataclasses.replace(
            hits[position], segments=tuple(localize_matrix(matrix, config, fps, fps)))
    return hits
