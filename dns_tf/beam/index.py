"""Feature shards to a sharded DnS video index with Beam's ``RunInference`` (``dns-tf beam
index``).

Workers read videos from a feature location (:func:`dns_tf.data.feature_files.open_features`:
TFRecord shards, an HDF5 file, a directory of either), run the ``index`` signature of the ``dns``
SavedModel and write index shards, one :class:`~dns_tf.index.store.VideoIndex` per shard, each
written by one task (videos assigned by a hash of their id)::

    <out>/shard-NNNNN/     a VideoIndex (searchable on its own)
    <out>/manifest.json    {"shards": [...], "num_shards", "videos", "failed", "model", ...}
    <out>/failed.jsonl     videos that could not be indexed, with the reason

The shards record the networks' fingerprints (the signature ``model_identity``), so ``dns-tf
search --server`` on the same model, or a :class:`~dns_tf.retrieval.DnSRetriever` on the same
networks, accepts them; :class:`~dns_tf.retrieval.ShardedRetriever` searches them together. A rerun
into the same ``out`` keeps the shard assignment (the manifest's ``num_shards``) and adds only
videos the shards do not hold yet.

Example:

    manifest = index_features("features/", "videos.idx", "export/dns/1", BeamIndexConfig())
    shards = [VideoIndex.open(os.path.join("videos.idx", s), readonly=True)
              for s in manifest["shards"]]
    retriever = ShardedRetriever([DnSRetriever(shard, backend) for shard in shards])
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from dns_tf.beam import MANIFEST_FILE, keyed_by_shard, require_beam

require_beam()

import apache_beam as beam  # noqa: E402
import tensorflow as tf  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from dns_tf.beam.config import BeamIndexConfig  # noqa: E402
from dns_tf.beam.extract import FAILED, WriteFailures  # noqa: E402
from dns_tf.beam.models import IndexModelHandler  # noqa: E402
from dns_tf.data.feature_files import open_features, write_json_atomically  # noqa: E402
from dns_tf.fine_representation import REGIONS, kind_of_dtype  # noqa: E402
from dns_tf.index.store import VideoIndex  # noqa: E402
from dns_tf.indexing import checked_features  # noqa: E402

# Videos added to an index shard per transaction.
_COMMIT_EVERY = 64


def index_settings(handler: IndexModelHandler) -> dict:
    """What an index shard for the ``dns`` SavedModel of ``handler`` is created with:
    ``coarse_dims``, ``fine_kind``, ``fine_shape_tail`` and ``metadata`` (the networks'
    fingerprints, the model). Loads the model and indexes one blank frame to read the sizes."""
    model = handler.load_model()
    identity = model.loaded.signatures["model_identity"](batch=tf.zeros([1], tf.int32))
    (outputs,) = handler.run_inference([np.zeros((1, REGIONS, handler.dims), np.float32)], model)
    fine_kind = kind_of_dtype(outputs["fine"].dtype)
    regions, size = outputs["fine"].shape[1:]
    return {"coarse_dims": int(outputs["coarse"].shape[-1]), "fine_kind": fine_kind,
            "fine_shape_tail": (regions, size * 8 if fine_kind == "bits" else size),
            "metadata": {"fingerprints": {name: value.numpy()[0].decode()
                                          for name, value in identity.items()},
                         "saved_model": handler.path}}


class _Read(beam.DoFn):
    def __init__(self, location, dims):
        self.location, self.dims = location, dims

    def setup(self):
        self.features = open_features(self.location)

    def process(self, video_id):
        try:
            yield video_id, checked_features(self.features[video_id], video_id, self.dims,
                                             self.location)
        except (KeyError, ValueError) as error:  # a bad video must not stop the others
            yield beam.pvalue.TaggedOutput(FAILED, {"video_id": video_id,
                                                    "reason": str(error)})

    def teardown(self):
        self.features.close()


class ReadFeatures(beam.PTransform):
    """Video ids -> ``(video_id, features [T, R, D] float32)`` read from ``location`` and checked
    (``dims`` features, finite); a bad video goes to the ``failed`` output."""

    def __init__(self, location: str, dims: int):
        super().__init__()
        self.read = _Read(location, dims)

    def expand(self, video_ids):
        return video_ids | beam.ParDo(self.read).with_outputs(FAILED, main="features")


def _finite(indexed):
    video_id, outputs = indexed
    if all(np.isfinite(np.asarray(outputs[name], np.float32)).all()
           for name in ("coarse", "fine", "selector")):
        yield indexed
    else:
        yield beam.pvalue.TaggedOutput(FAILED, {
            "video_id": video_id,
            "reason": "the networks gave non-finite outputs for it (are its features finite?)"})


class IndexVideos(beam.PTransform):
    """``(video_id, features [T, R, D])`` -> ``(indexed, failed)``: ``(video_id, {"coarse",
    "fine", "selector"})`` from the ``dns`` SavedModel at ``model``, and the videos whose outputs
    are not finite."""

    def __init__(self, model: str, batch_size: int = 16):
        super().__init__()
        self.handler = IndexModelHandler(model, batch_size)

    def expand(self, features):
        indexed = (features
                   | "Index" >> RunInference(KeyedModelHandler(self.handler))
                   | "Finite" >> beam.FlatMap(_finite).with_outputs(FAILED, main="indexed"))
        return indexed.indexed, indexed[FAILED]


def _write_index_shard(group, directory, settings):
    shard, videos = group
    name = f"shard-{shard:05d}"
    path = os.path.join(directory, name)
    if os.path.isdir(path):  # a rerun, or a retried task: add what is missing
        index = VideoIndex.open(path)
    else:
        index = VideoIndex.create(path, **settings)
    added = 0
    with index:
        batch = []
        for video_id, outputs in videos:
            if video_id not in index:
                batch.append((video_id, outputs))
            if len(batch) == _COMMIT_EVERY:
                added += _add(index, batch)
                batch = []
        added += _add(index, batch)
        return {"shard": name, "added": added}


def _add(index, batch) -> int:
    if batch:
        index.add_many([video_id for video_id, _ in batch],
                       np.stack([outputs["coarse"] for _, outputs in batch]),
                       [outputs["fine"] for _, outputs in batch],
                       np.array([outputs["selector"] for _, outputs in batch], np.float32))
    return len(batch)


class WriteIndexShards(beam.PTransform):
    """``(video_id, {"coarse", "fine", "selector"})`` -> ``<directory>/shard-NNNNN`` indexes.

    Outputs one ``{"shard", "added"}`` per shard that received videos.

    Args:
        directory: the output directory (it exists).
        num_shards: the number of shards videos are assigned to.
        settings: :func:`index_settings` of the model.
    """

    def __init__(self, directory: str, num_shards: int, settings: dict):
        super().__init__()
        self.directory, self.num_shards, self.settings = directory, num_shards, settings

    def expand(self, indexed):
        return (indexed
                | "Assign" >> beam.Map(keyed_by_shard, self.num_shards)
                | "Group" >> beam.GroupByKey()
                | "Write" >> beam.Map(_write_index_shard, self.directory, self.settings))


def _write_manifest(shards, failed, directory, run):
    names = sorted(name for name in os.listdir(directory) if name.startswith("shard-"))
    videos = 0
    for name in names:
        with VideoIndex.open(os.path.join(directory, name), readonly=True) as index:
            videos += len(index)
    write_json_atomically(os.path.join(directory, MANIFEST_FILE), {
        **run, "shards": names, "videos": videos,
        "added": sum(shard["added"] for shard in shards), "failed": failed})


def _num_shards(out: str, config: BeamIndexConfig, videos: int) -> int:
    """The shard count: the existing output's (assignments must not change), else the config's."""
    path = os.path.join(out, MANIFEST_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            recorded = json.load(file)["num_shards"]
        if config.num_shards not in (None, recorded):
            raise ValueError(f"{out} holds {recorded} index shards; --num_shards "
                             f"{config.num_shards} would move videos between them")
        return recorded
    return config.num_shards or max(1, math.ceil(videos / config.videos_per_shard))


def index_features(features: str, out: str, model: str, config: BeamIndexConfig,
                   pipeline_args=()) -> dict:
    """Runs the indexing pipeline; returns the manifest it wrote.

    Args:
        features: a feature location (see :func:`~dns_tf.data.feature_files.open_features`).
        out: the output directory.
        model: a ``dns`` SavedModel version directory.
        config: a :class:`~dns_tf.beam.config.BeamIndexConfig`.
        pipeline_args: Beam pipeline options (``--runner``, ``--project``, ...).
    """
    with open_features(features) as opened:
        ids = opened.ids()
    index_videos = IndexVideos(model, config.batch_size)
    settings = index_settings(index_videos.handler)
    num_shards = _num_shards(out, config, len(ids))
    os.makedirs(out, exist_ok=True)
    run = {"model": os.path.abspath(model), "features": os.path.abspath(features),
           "num_shards": num_shards, "config": dataclasses.asdict(config)}
    with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
        read = (pipeline
                | "Ids" >> beam.Create(ids)
                | "Spread" >> beam.Reshuffle()
                | "Read" >> ReadFeatures(os.path.abspath(features), index_videos.handler.dims))
        indexed, unusable = read.features | "Index" >> index_videos
        shards = indexed | "Shards" >> WriteIndexShards(out, num_shards, settings)
        failed = (read[FAILED], unusable) | "AllFailed" >> beam.Flatten()
        count = failed | "DeadLetter" >> WriteFailures(out)
        _ = (shards
             | "Listed" >> beam.combiners.ToList()
             | "Manifest" >> beam.Map(_write_manifest, beam.pvalue.AsSingleton(count),
                                      out, run))
    with open(os.path.join(out, MANIFEST_FILE), encoding="utf-8") as file:
        return json.load(file)
