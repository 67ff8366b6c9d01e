"""The settings of the ``dns-tf beam`` pipelines (importable without Apache Beam)."""

from __future__ import annotations

import dataclasses

from dns_tf.flags import field


@dataclasses.dataclass(frozen=True)
class BeamExtractConfig:
    """How ``dns-tf beam extract`` turns videos into feature shards."""

    fps: float = field(1.0, "frames sampled per second of video")
    max_frames: int | None = field(None, "keep at most this many frames per video")
    batch_size: int = field(32, "frames per run of the feature model (the last one padded)")
    videos_per_inference: int = field(8, "videos gathered into one RunInference batch (their "
                                         "frames run batch_size at a time)")
    videos_per_shard: int = field(1000, "videos per output shard (sets the number of shards)")
    dtype: str = field("float32", "feature dtype on disk", choices=("float32", "float16"))


@dataclasses.dataclass(frozen=True)
class BeamIndexConfig:
    """How ``dns-tf beam index`` indexes feature shards."""

    batch_size: int = field(16, "videos per run of the index signature")
    num_shards: int | None = field(None, "index shards (videos assigned by a hash of their id); "
                                         "None: the existing output's, else one per "
                                         "videos_per_shard videos")
    videos_per_shard: int = field(50_000, "videos per index shard when --num_shards is not set")
