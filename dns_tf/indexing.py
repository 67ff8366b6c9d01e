"""The networks of an index and putting videos into it: the backend an index records, batches
of videos indexed so that one bad video costs only itself, and the score calibration kept fresh.

Used by ``dns-tf index``, ``evaluate``, ``calibrate`` and ``export``.
"""

from __future__ import annotations

import os

import numpy as np

from dns_tf.calibration import IndexCalibration, refresh_calibration
from dns_tf.data.padding import padded_batch_from_arrays
from dns_tf.retrieval import IndexedVideos, LocalBackend, check_fingerprints

NETWORKS = ("coarse", "fine", "selector")
NETWORKS_DIR = "networks"
FINE_BATCH_SIZE = 64


def open_backend(index, batch_size: int = FINE_BATCH_SIZE):
    """The :class:`~dns_tf.retrieval.LocalBackend` of the networks recorded in ``index`` (paths
    relative to the index, or absolute in indexes made before networks were copied in)."""
    networks = index.metadata.get("networks")
    if not isinstance(networks, dict) or set(networks) != set(NETWORKS):
        raise ValueError(f"{index.path} records no networks (was it made by 'dns-tf index "
                         f"create'?); its metadata is {index.metadata}")
    networks = {name: os.path.join(index.path, path) for name, path in networks.items()}
    backend = LocalBackend.from_files(networks["coarse"], networks["fine"],
                                      networks["selector"], batch_size=batch_size)
    check_fingerprints(index, backend)
    if backend.fine_kind != index.fine_kind:
        raise ValueError(f"{networks['fine']} produces '{backend.fine_kind}' fine "
                         f"representations, {index.path} stores '{index.fine_kind}'")
    return backend


def refresh_calibration_if_stale(index, backend, config, force: bool):
    """Refits and stores the coarse-to-fine map when videos were added (``force``) or none is
    stored; None for an index of fewer than two videos (nothing to calibrate)."""
    if len(index) < 2 or not force and IndexCalibration.load(index.path) is not None:
        return None
    return refresh_calibration(index, backend, config)


def index_videos(backend, ids: list[str], videos: list, failed: list):
    """Indexes ``videos`` (``[T, R, D]`` each) as one padded batch; if the batch fails, each
    video alone, so that one bad video costs only itself. Returns ``(ids, IndexedVideos)`` of the
    videos indexed, with finite outputs; the others go to ``failed`` as ``(id, reason)``."""
    if not ids:
        return [], None
    try:
        batches = [backend.index(*padded_batch_from_arrays(videos))]
        batch_ids = [ids]
    except Exception:  # noqa: BLE001 - retried video by video below, which names the culprit
        batches, batch_ids = [], []
        for video_id, video in zip(ids, videos):
            try:
                batches.append(backend.index(video[None], np.ones((1, len(video)), np.float32)))
                batch_ids.append([video_id])
            except Exception as error:  # noqa: BLE001 - a bad video must not stop the others
                failed.append((video_id, f"the networks failed on it: "
                                         f"{type(error).__name__}: {str(error).splitlines()[0]}"))
    kept, coarse, fine, selector = [], [], [], []
    for batch, video_ids in zip(batches, batch_ids):
        for row, video_id in enumerate(video_ids):
            outputs = (batch.coarse[row], batch.fine[row], batch.selector[row])
            if not all(np.isfinite(np.asarray(x, np.float32)).all() for x in outputs):
                failed.append((video_id, "the networks gave non-finite outputs for it (are its "
                                         "features finite?)"))
                continue
            kept.append(video_id)
            coarse.append(outputs[0])
            fine.append(outputs[1])
            selector.append(outputs[2])
    if not kept:
        return [], None
    return kept, IndexedVideos(coarse=np.stack(coarse), fine=fine, selector=np.array(selector))


def checked_features(video, video_id: str, dims: int, path: str):
    """A video's features ``[T, R, D]`` after checking their shape against the networks and that
    they are finite."""
    if video.ndim != 3 or video.shape[0] < 1 or video.shape[2] != dims:
        raise ValueError(f"{path}: video {video_id!r} has features of shape {video.shape}; the "
                         f"networks expect [T >= 1, regions, {dims}]")
    if not np.isfinite(video).all():
        raise ValueError(f"{path}: video {video_id!r} has non-finite features (NaN or inf)")
    return video
