"""Video files to TFRecord feature shards with Beam's ``RunInference`` (``dns-tf beam extract``).

Workers decode the videos (:func:`dns_tf.features.video.load_video`), run the ``dns_features``
SavedModel on their frames and write whole shards (:func:`dns_tf.data.feature_files.write_shard`,
atomic, so a retried task rewrites its shard instead of tearing it). The output directory is the
TFRecord layout of :mod:`dns_tf.data.feature_files` (``open_features(out)`` reads it, ``dns-tf
extract`` and this pipeline can resume it) plus:

- ``manifest.json``: the run's shards (``{"path", "videos", "frames"}``), counts, model and
  settings;
- ``failed.jsonl``: the dead letter, one ``{"video_id", "path", "reason"}`` per video that could
  not be decoded (or was not found); the other videos go on.

Paths (videos, model, output) must be readable and writable by every worker under the same names:
local paths for the DirectRunner, a shared mount (NFS, a bucket mounted with Cloud Storage FUSE)
for a cluster.

Example:

    report = extract_features(find_videos(["videos/"]), "features/",
                              "export/dns_features/1", BeamExtractConfig(),
                              ["--runner", "DirectRunner"])
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from dns_tf.beam import FAILED_FILE, MANIFEST_FILE, keyed_by_shard, require_beam

require_beam()

import apache_beam as beam  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from dns_tf.beam.config import BeamExtractConfig  # noqa: E402
from dns_tf.beam.models import FeaturesModelHandler  # noqa: E402
from dns_tf.data.feature_files import (TFRecordFeatureWriter, file_fingerprint,  # noqa: E402
                                       write_json_atomically, write_shard)
from dns_tf.features.batch import decode_failure  # noqa: E402
from dns_tf.features.video import load_video  # noqa: E402

FAILED = "failed"


class _Decode(beam.DoFn):
    def __init__(self, fps, max_frames, frame_size):
        self.options = {"fps": fps, "max_frames": max_frames, "crop": frame_size}

    def process(self, video):
        video_id, path = video
        try:
            yield video_id, load_video(path, **self.options)
        except Exception as error:  # a broken file must not stop the collection
            yield beam.pvalue.TaggedOutput(FAILED, decode_failure(video_id, path, error))


class DecodeVideos(beam.PTransform):
    """``(video_id, path)`` -> ``(video_id, frames [T, S, S, 3] uint8)``; a video that cannot be
    decoded goes to the ``failed`` output as ``{"video_id", "path", "reason"}``.

    Args:
        fps, max_frames: frame sampling, as :func:`~dns_tf.features.video.load_video`.
        frame_size: the side S of the centre crop.
    """

    def __init__(self, fps: float = 1.0, max_frames: int | None = None, frame_size: int = 224):
        super().__init__()
        self.decode = _Decode(fps, max_frames, frame_size)

    def expand(self, videos):
        return videos | beam.ParDo(self.decode).with_outputs(FAILED, main="frames")


class ExtractFeatures(beam.PTransform):
    """``(video_id, path)`` -> ``(features, failed)``: ``(video_id, [T, R, D] float32)`` from the
    ``dns_features`` SavedModel at ``model``, and the dead letter of :class:`DecodeVideos`."""

    def __init__(self, model: str, config: BeamExtractConfig = BeamExtractConfig()):
        super().__init__()
        self.handler = FeaturesModelHandler(model, config.batch_size, config.videos_per_inference)
        self.decode = DecodeVideos(config.fps, config.max_frames, self.handler.frame_size)

    def expand(self, videos):
        decoded = videos | "Decode" >> self.decode
        features = decoded.frames | "Features" >> RunInference(KeyedModelHandler(self.handler))
        return features, decoded[FAILED]


def _write_shard(group, first_shard, directory, dtype):
    shard, videos = group
    path = os.path.join(directory, f"features-{first_shard + shard:05d}.tfrecord")
    frames = 0

    def counted():
        nonlocal frames
        for video_id, features in videos:
            frames += len(features)
            yield video_id, features

    count = write_shard(path, counted(), dtype)
    return {"path": os.path.basename(path), "videos": count, "frames": frames}


class WriteFeatureShards(beam.PTransform):
    """``(video_id, features [T, R, D])`` -> shards ``<directory>/features-NNNNN.tfrecord``.

    Videos go to one of ``num_shards`` shards by a hash of their id; each shard is written whole
    by one task. Outputs one ``{"path", "videos", "frames"}`` per shard written.

    Args:
        directory: the output directory (it exists).
        num_shards: shards written.
        first_shard: the number of the first (after the shards already in ``directory``).
        dtype: ``"float32"`` or ``"float16"`` on disk.
    """

    def __init__(self, directory: str, num_shards: int, first_shard: int = 0,
                 dtype: str = "float32"):
        super().__init__()
        self.directory, self.num_shards = directory, num_shards
        self.first_shard, self.dtype = first_shard, dtype

    def expand(self, features):
        return (features
                | "Assign" >> beam.Map(keyed_by_shard, self.num_shards)
                | "Group" >> beam.GroupByKey()
                | "Write" >> beam.Map(_write_shard, self.first_shard, self.directory, self.dtype))


class WriteFailures(beam.PTransform):
    """Failure records (dicts) -> ``<directory>/failed.jsonl``, one JSON object a line; outputs
    how many were written."""

    def __init__(self, directory: str):
        super().__init__()
        self.prefix = os.path.join(directory, os.path.splitext(FAILED_FILE)[0])

    def expand(self, failures):
        _ = (failures
             | "Json" >> beam.Map(json.dumps, sort_keys=True)
             | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl",
                                              shard_name_template=""))
        return failures | "Count" >> beam.combiners.Count.Globally()


def _write_manifest(shards, failed, path, run):
    write_json_atomically(path, {
        **run, "shards": sorted(shards, key=lambda shard: shard["path"]),
        "videos": sum(shard["videos"] for shard in shards),
        "frames": sum(shard["frames"] for shard in shards), "failed": failed})


def extract_features(videos, out: str, model: str, config: BeamExtractConfig,
                     pipeline_args=(), problems=()) -> dict:
    """Runs the extraction pipeline; returns the manifest it wrote.

    Videos already in ``out`` are skipped; a missing model or a ``out`` holding features made
    otherwise (another frame rate or model dims) is refused before the pipeline starts.

    Args:
        videos: ``[(video_id, path)]`` (:func:`dns_tf.features.batch.find_videos`).
        out: the output directory.
        model: a ``dns_features`` SavedModel version directory.
        config: a :class:`~dns_tf.beam.config.BeamExtractConfig`.
        pipeline_args: Beam pipeline options (``--runner``, ``--project``, ...).
        problems: failure records found before the pipeline (missing files), added to the dead
            letter.
    """
    extract = ExtractFeatures(model, config)
    provenance = {"dims": extract.handler.dims, "fps": float(config.fps),
                  "features_model": file_fingerprint(os.path.join(model, "saved_model.pb"))}
    # Held for the run: resumes `out`, checks provenance, keeps other writers out.
    with TFRecordFeatureWriter(out, dtype=config.dtype, provenance=provenance) as existing:
        todo = [(video_id, path) for video_id, path in videos if video_id not in existing]
        run = {"model": os.path.abspath(model), "already_done": len(videos) - len(todo),
               "provenance": existing.provenance, "config": dataclasses.asdict(config)}
        num_shards = max(1, math.ceil(len(todo) / config.videos_per_shard))
        with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
            features, failed = (pipeline
                                | "Videos" >> beam.Create(todo)
                                | "Spread" >> beam.Reshuffle()
                                | "Extract" >> extract)
            shards = features | "Shards" >> WriteFeatureShards(out, num_shards,
                                                              existing.next_shard, config.dtype)
            failed = ((failed, pipeline | "Problems" >> beam.Create(list(problems)))
                      | "AllFailed" >> beam.Flatten())
            count = failed | "DeadLetter" >> WriteFailures(out)
            _ = (shards
                 | "Listed" >> beam.combiners.ToList()
                 | "Manifest" >> beam.Map(_write_manifest, beam.pvalue.AsSingleton(count),
                                          os.path.join(out, MANIFEST_FILE), run))
    with open(os.path.join(out, MANIFEST_FILE), encoding="utf-8") as file:
        return json.load(file)
