"""Corpus-scale feature extraction and indexing as Apache Beam pipelines (``dns-tf beam``).

The pipelines are small composite transforms on Beam's own ``RunInference``, so they run
wherever Beam runs (DirectRunner, Dataflow with GPU workers, Flink, Spark):

    (video_id, path) ──DecodeVideos──> (video_id, frames [T, S, S, 3] uint8)   failures: dead letter
      ──RunInference(dns_features SavedModel)──> (video_id, features [T, R, D] float32)
      ──WriteFeatureShards──> <out>/features-NNNNN.tfrecord (+ .ids), manifest.json

    feature shards ──ReadFeatures──> (video_id, features [T, R, D])
      ──RunInference(dns SavedModel, index signature)──> (video_id, coarse, fine, selector)
      ──WriteIndexShards──> <out>/shard-NNNNN/ (one VideoIndex each), manifest.json

Apache Beam is an optional extra (``pip install 'dns-tf[beam]'``): only this package and the
``dns-tf beam`` command import it; :mod:`dns_tf.beam.config` and this module work without it.
"""

from __future__ import annotations

import zlib

MISSING_BEAM = ("Apache Beam is not installed; the pipelines need it: "
                "install dns-tf[beam] (pip install 'dns-tf[beam]')")
FAILED_FILE = "failed.jsonl"
MANIFEST_FILE = "manifest.json"


def require_beam():
    """Imports Apache Beam, or raises ImportError saying how to install it."""
    try:
        import apache_beam
    except ImportError as error:
        raise ImportError(MISSING_BEAM) from error
    return apache_beam


def shard_of(video_id: str, num_shards: int) -> int:
    """The shard of a video, ``[0, num_shards)``: a stable hash of its id (the same on every
    worker and every run, unlike Python's ``hash``)."""
    return zlib.crc32(video_id.encode("utf-8")) % num_shards


def keyed_by_shard(item: tuple, num_shards: int) -> tuple[int, tuple]:
    """``(video_id, value)`` -> ``(shard, (video_id, value))``, for a ``GroupByKey`` by shard."""
    return shard_of(item[0], num_shards), item
