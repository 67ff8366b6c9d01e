"""A synthetic FIVR at the feature level: region features with incidents, scenes and viewpoints.

Real collections are hundreds of gigabytes; this one is generated from a seed and exercises the same
code paths (indexing, distillation, selection, evaluation) with the same shapes: every video is
``[T, R, D]`` float32 region features, each region vector of unit L2 norm like PCA-whitened L3-iMAC
features.

How videos are made. A *topic* (say, street protests) is a few background vectors shared by all its
videos. An *incident* (one protest) belongs to a topic and owns a few object vectors. A *scene* is
one moment of an incident: a long timeline of frames whose object regions mix the incident's
objects with scene detail, whose background regions mix the topic's backgrounds with scene detail,
and which drifts slowly over time. A video renders windows of scene timelines (temporal crops,
speed changes, dropped frames, per-region noise), possibly from another *viewpoint* (regions
permuted and partly replaced), possibly between windows of unrelated *filler* scenes.

Relative to a query, which is a window of an incident's first scene:

* ND, near-duplicate: the same window, cropped and re-timed, little noise, nothing else;
* DS, duplicate scene: part of the same window, noisier, inside unrelated filler;
* CS, complementary scene: the same window from another viewpoint, inside filler;
* IS, incident scene: another scene of the same incident, inside filler;
* distractors: filler scenes only, mostly from the query topics (hard negatives).

Because related content fills only part of a DS/CS/IS video and topic backgrounds are shared by
unrelated videos, averaging a video into one vector blurs exactly what tells them apart, while
frame-and-region matching (chamfer, as in ViSiL) finds it: a global-average baseline is clearly
worse than chamfer matching on CSVR and ISVR, which leaves fine-grained teachers something to teach.

Features are rendered on access from per-video seeds, so a collection costs almost no memory and the
same seed always gives the same arrays.

Example:

    collection = make_synthetic_collection(SyntheticConfig(seed=0, dims=32))
    video = collection.features[collection.queries[0]]          # [T, 9, 32] float32
    scores = {q: {v: my_similarity(q, v) for v in collection.database} for q in collection.queries}
    collection.evaluate(scores)     # {"DSVR": ..., "CSVR": ..., "ISVR": ...}
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Mapping, Sequence

import numpy as np

from dns_tf.flags import field
from dns_tf.evaluation.datasets import FIVR

#: Labels of related videos, from most to least related.
LABELS = ("ND", "DS", "CS", "IS")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """How large and how hard the synthetic collection is. Similarities are cosines."""

    seed: int = field(0, "seed of everything in the collection")
    dims: int = field(512, "feature dimensions D (512 for students, small for tests)")
    regions: int = field(9, "regions per frame R")
    object_regions: int = field(2, "regions per frame that show the incident (the others show "
                                   "background)")
    topics: int = field(3, "topics; videos of a topic share background vectors")
    background_vectors: int = field(3, "background vectors per topic")
    hard_negative_share: float = field(0.9, "share of unrelated content drawn from the query's "
                                             "topic")
    queries: int = field(10, "evaluation queries, one incident each")
    near_duplicates: int = field(2, "ND videos per query")
    duplicate_scenes: int = field(2, "DS videos per query")
    complementary_scenes: int = field(2, "CS videos per query")
    incident_scenes: int = field(2, "IS videos per query")
    distractors: int = field(80, "unrelated videos in the evaluation database")
    training_incidents: int = field(20, "incidents in the training pool, each with a cluster of "
                                        "related videos")
    training_distractors: int = field(80, "unrelated videos in the training pool")
    scenes_per_incident: int = field(3, "scenes (moments) per incident")
    min_frames: int = field(10, "shortest query window, in frames")
    max_frames: int = field(40, "longest query window, in frames")
    object_similarity: float = field(0.7, "cosine of an object region to its incident object")
    background_similarity: float = field(0.9, "cosine of a background region to its topic vector")
    viewpoint_similarity: float = field(0.6, "cosine of a scene's detail to the same detail seen "
                                             "from another viewpoint (CS)")
    drift: float = field(0.6, "how far a scene wanders from its start over time")
    near_duplicate_noise: float = field(0.2, "per-region noise of ND videos")
    noise: float = field(0.6, "per-region noise of all other videos")
    related_fraction: tuple[float, ...] = field((0.15, 0.5), "range of the share of a DS/CS/IS "
                                                            "video that is related to the query")

    def __post_init__(self):
        if not 0 < self.object_regions <= self.regions:
            raise ValueError(f"object_regions must be in [1, regions={self.regions}], "
                             f"got {self.object_regions}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 1 <= min_frames <= max_frames, got {self.min_frames}, "
                             f"{self.max_frames}")
        if self.scenes_per_incident < 2 and self.incident_scenes:
            raise ValueError("incident_scenes need scenes_per_incident >= 2")
        if len(self.related_fraction) != 2:
            raise ValueError(f"related_fraction must be (low, high), got {self.related_fraction}")
        low, high = self.related_fraction
        if not 0 < low <= high <= 1:
            raise ValueError(f"related_fraction must be 0 < low <= high <= 1, got "
                             f"{self.related_fraction}")
        for name in ("object_similarity", "background_similarity", "viewpoint_similarity",
                     "hard_negative_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a cosine in [0, 1], got {getattr(self, name)}")


# First spawn-key entry of each kind of random draw, so every draw has its own stream.
_WORLD, _TOPIC, _INCIDENT, _SCENE, _KNOT, _VIEW, _VIDEO = range(7)
# Scene timelines are this many times max_frames long; drift knots every _KNOT_SPACING frames.
_TIMELINE_FACTOR = 3
_KNOT_SPACING = 8


@dataclasses.dataclass(frozen=True)
class _Window:
    """A stretch of a scene timeline as one video shows it."""

    scene: int            # global scene number: incident * scenes_per_incident + scene in incident
    start: float          # timeline position of the first frame
    frames: int           # frames rendered
    step: float = 1.0     # timeline positions per frame (speed)
    viewpoint: int = -1   # -1: the scene's own viewpoint
    noise: float = 0.0
    drop_rate: float = 0.0


def _rng(config: SyntheticConfig, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=key))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _unit_vectors(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return _normalize(rng.standard_normal(shape))


def _mix(anchor: np.ndarray, other: np.ndarray, cosine: float) -> np.ndarray:
    """Unit vectors at about ``cosine`` to ``anchor`` (``other``: unit, roughly orthogonal)."""
    return _normalize(cosine * anchor + np.sqrt(1.0 - cosine ** 2) * other)


class _Renderer:
    """Turns windows into region features; scene content is derived from seeds when needed."""

    def __init__(self, config: SyntheticConfig, incident_topics: np.ndarray):
        self.config = config
        self.incident_topics = incident_topics
        self.timeline = config.max_frames * _TIMELINE_FACTOR

    @functools.lru_cache(maxsize=64)
    def _topic(self, topic: int) -> np.ndarray:
        """[background_vectors, D]: what every video of the topic shows in its background."""
        c = self.config
        return _unit_vectors(_rng(c, _TOPIC, topic), c.background_vectors, c.dims)

    @functools.lru_cache(maxsize=256)
    def _scene_base(self, scene: int, viewpoint: int) -> tuple[np.ndarray, np.ndarray]:
        """The scene's regions before drift ``[R, D]`` and their spatial layout (a permutation of
        the R regions), as seen from a viewpoint (-1: the scene's own)."""
        c = self.config
        incident = scene // c.scenes_per_incident
        objects = _unit_vectors(_rng(c, _INCIDENT, incident), c.object_regions, c.dims)
        backgrounds = self._topic(int(self.incident_topics[incident]))
        rng = _rng(c, _SCENE, scene)
        detail = _unit_vectors(rng, c.regions, c.dims)
        layout = rng.permutation(c.regions)
        background_choice = rng.integers(0, c.background_vectors, c.regions - c.object_regions)
        if viewpoint >= 0:
            # Another camera at the same moment: same objects and backgrounds, partly different
            # detail, and a different spatial layout.
            view = _rng(c, _VIEW, viewpoint)
            detail = _mix(detail, _unit_vectors(view, c.regions, c.dims), c.viewpoint_similarity)
            layout = view.permutation(c.regions)
        n = c.object_regions
        base = np.empty((c.regions, c.dims))
        base[:n] = _mix(objects, detail[:n], c.object_similarity)
        base[n:] = _mix(backgrounds[background_choice], detail[n:], c.background_similarity)
        return base, layout

    def _knot(self, scene: int, knot: int) -> np.ndarray:
        c = self.config
        return _rng(c, _KNOT, scene, knot).standard_normal((c.regions, c.dims)) / np.sqrt(c.dims)

    def scene_frames(self, scene: int, positions: np.ndarray, viewpoint: int = -1) -> np.ndarray:
        """[len(positions), R, D] unit regions at (fractional) timeline positions."""
        positions = np.clip(positions, 0, self.timeline - 1)
        left = np.floor(positions / _KNOT_SPACING).astype(int)
        knots = {k: self._knot(scene, k) for k in np.unique(np.concatenate([left, left + 1]))}
        weight = positions / _KNOT_SPACING - left
        weight = weight * weight * (3 - 2 * weight)  # smooth between knots
        drift = np.stack([(1 - w) * knots[a] + w * knots[a + 1] for a, w in zip(left, weight)])
        base, layout = self._scene_base(scene, viewpoint)
        return _normalize(base[None] + self.config.drift * drift)[:, layout]

    def render(self, windows: Sequence[_Window], video_key: int) -> np.ndarray:
        """[T, R, D] float32: the windows one after the other."""
        rng = _rng(self.config, _VIDEO, video_key)
        parts = []
        for window in windows:
            positions = window.start + window.step * np.arange(window.frames)
            if window.drop_rate:
                keep = rng.random(window.frames) >= window.drop_rate
                keep[rng.integers(window.frames)] = True  # never drop a whole window
                positions = positions[keep]
            frames = self.scene_frames(window.scene, positions, window.viewpoint)
            if window.noise:
                noise = rng.standard_normal(frames.shape) / np.sqrt(self.config.dims)
                frames = _normalize(frames + window.noise * noise)
            parts.append(frames)
        return np.concatenate(parts).astype(np.float32)


class SyntheticFeatures(Mapping):
    """Read-only Mapping video id -> region features ``[T, R, D]`` float32, rendered on access."""

    def __init__(self, renderer: _Renderer, recipes: dict[str, tuple[int, tuple[_Window, ...]]]):
        self._renderer = renderer
        self._recipes = recipes

    def __getitem__(self, video_id: str) -> np.ndarray:
        try:
            key, windows = self._recipes[video_id]
        except KeyError:
            raise KeyError(f"no synthetic video {video_id!r}") from None
        return self._renderer.render(windows, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._recipes)

    def __len__(self) -> int:
        return len(self._recipes)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._recipes

    def ids(self) -> list[str]:
        """Every video id, in a fixed order."""
        return list(self._recipes)


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticCollection:
    """A generated collection with FIVR's structure.

    Attributes:
        config: what it was generated from.
        features: Mapping video id -> ``[T, R, D]`` float32 over every video below.
        queries: evaluation query ids, sorted.
        database: evaluation database ids, sorted (every labelled video plus distractors; no
            queries).
        labels: ``{query: {video: "ND" | "DS" | "CS" | "IS"}}``; unlisted videos are irrelevant.
        training_pool: ids of unlabelled training videos, disjoint from queries and database, with
            the same make-up (clusters of related videos among distractors).
    """

    config: SyntheticConfig
    features: SyntheticFeatures
    queries: tuple[str, ...]
    database: tuple[str, ...]
    labels: Mapping[str, Mapping[str, str]]
    training_pool: tuple[str, ...]
    # (anchor, its ND/DS positives, every member of its cluster) per training cluster.
    _training_clusters: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = \
        dataclasses.field(repr=False)

    @functools.cached_property
    def fivr(self) -> FIVR:
        """The collection as a FIVR benchmark (:class:`dns_tf.evaluation.datasets.FIVR`)."""
        annotation = {q: {label: [v for v, l in self.labels[q].items() if l == label]
                          for label in LABELS} for q in self.queries}
        return FIVR({"synthetic": {"queries": self.queries, "database": self.database},
                     "annotation": annotation}, version="synthetic", source="synthetic collection")

    def evaluate(self, similarities) -> dict[str, float]:
        """FIVR's mAPs: DSVR (ND, DS relevant), CSVR (+CS) and ISVR (+IS), by FIVR's protocol.

        Args:
            similarities: ``{query: {video: score}}`` covering every query, or an array
                ``[len(queries), len(database)]`` in the order of ``queries`` and ``database``.

        Returns:
            ``{"DSVR": mAP, "CSVR": mAP, "ISVR": mAP}``.
        """
        if not isinstance(similarities, np.ndarray):
            missing = [q for q in self.queries if q not in similarities]
            if missing:  # FIVR would skip them; here that is a mistake worth hearing about
                raise ValueError(f"similarities lack {len(missing)} of {len(self.queries)} "
                                 f"queries, e.g. {missing[:3]}")
        return self.fivr.evaluate(similarities)

    def training_triplets(self, seed: int = 0) -> list[tuple[str, str, str]]:
        """Labelled (anchor, positive, negative) triplets from the training pool, for teachers.

        Anchors are the pool's cluster centres; every ND/DS video of a cluster is the positive of
        one triplet, with a negative drawn (seeded) from the pool outside that cluster.
        """
        rng = np.random.default_rng(seed)
        triplets = []
        for anchor, positives, cluster in self._training_clusters:
            outside = [v for v in self.training_pool if v not in set(cluster)]
            for positive in positives:
                triplets.append((anchor, positive, outside[rng.integers(len(outside))]))
        return triplets


def make_synthetic_collection(config: SyntheticConfig = SyntheticConfig()) -> SyntheticCollection:
    """Generates the collection described in the module docstring; deterministic per config."""
    c = config
    rng = _rng(c, _WORLD)
    evaluation_incidents, training_incidents = c.queries, c.training_incidents
    filler_incidents = max(4, (c.distractors + c.training_distractors) // 4)
    total_incidents = evaluation_incidents + training_incidents + 2 * filler_incidents
    incident_topics = rng.integers(0, c.topics, total_incidents)
    renderer = _Renderer(c, incident_topics)
    timeline = renderer.timeline
    viewpoints = iter(range(10 ** 9))
    # Filler incidents: the first half serve the evaluation side, the second the training pool.
    first_filler = evaluation_incidents + training_incidents
    filler_pools = (np.arange(first_filler, first_filler + filler_incidents),
                    np.arange(first_filler + filler_incidents, total_incidents))

    def window_in(scene: int, frames: int, **kwargs) -> _Window:
        start = rng.uniform(0, max(timeline - frames, 1))
        return _Window(scene, start, frames, **kwargs)

    def filler(pool: np.ndarray, topic: int, frames: int) -> list[_Window]:
        """Unrelated windows totalling ``frames``, mostly (hard_negative_share) from ``topic``."""
        windows = []
        while frames > 0:
            same_topic = pool[incident_topics[pool] == topic]
            candidates = (same_topic if rng.random() < c.hard_negative_share and same_topic.size
                          else pool)
            incident = int(rng.choice(candidates))
            scene = incident * c.scenes_per_incident + int(rng.integers(c.scenes_per_incident))
            length = int(min(frames, rng.integers(c.min_frames, c.max_frames + 1)))
            windows.append(window_in(scene, length, noise=c.noise))
            frames -= length
        return windows

    def embed(related: _Window, pool: np.ndarray, topic: int) -> tuple[_Window, ...]:
        """Puts a related window between filler so it makes up ``related_fraction`` of the video."""
        share = rng.uniform(*c.related_fraction)
        extra = int(round(related.frames * (1 - share) / share))
        before = int(rng.integers(0, extra + 1))
        return (*filler(pool, topic, before), related, *filler(pool, topic, extra - before))

    def cluster(incident: int, pool: np.ndarray) -> tuple[tuple[_Window, ...], dict]:
        """A query's windows and its related videos' windows, grouped by label."""
        topic = int(incident_topics[incident])
        scene = incident * c.scenes_per_incident
        frames = int(rng.integers(c.min_frames, c.max_frames + 1))
        query = window_in(scene, frames, noise=c.noise)
        related = {label: [] for label in LABELS}
        for _ in range(c.near_duplicates):
            crop = rng.uniform(0.7, 1.0)
            step = rng.uniform(0.8, 1.25)
            start = query.start + rng.uniform(0, (1 - crop) * frames)
            related["ND"].append((_Window(scene, start, max(2, int(crop * frames / step)), step,
                                          noise=c.near_duplicate_noise, drop_rate=0.1),))
        for _ in range(c.duplicate_scenes):
            crop = rng.uniform(0.5, 1.0)
            step = rng.uniform(0.7, 1.4)
            start = query.start + rng.uniform(0, (1 - crop) * frames)
            window = _Window(scene, start, max(2, int(crop * frames / step)), step, noise=c.noise,
                             drop_rate=0.1)
            related["DS"].append(embed(window, pool, topic))
        for _ in range(c.complementary_scenes):
            crop = rng.uniform(0.5, 1.0)
            start = query.start + rng.uniform(-0.25, 0.25) * frames
            window = _Window(scene, start, max(2, int(crop * frames)), rng.uniform(0.8, 1.25),
                             viewpoint=next(viewpoints), noise=c.noise, drop_rate=0.1)
            related["CS"].append(embed(window, pool, topic))
        for _ in range(c.incident_scenes):
            other_scene = scene + int(rng.integers(1, c.scenes_per_incident))
            window = window_in(other_scene, int(rng.integers(c.min_frames, c.max_frames + 1)),
                               noise=c.noise, drop_rate=0.1)
            related["IS"].append(embed(window, pool, topic))
        return (query,), related

    def distractor(pool: np.ndarray, topics: Sequence[int]) -> tuple[_Window, ...]:
        topic = int(rng.choice(topics))
        return tuple(filler(pool, topic, int(rng.integers(c.min_frames, 2 * c.max_frames + 1))))

    recipes: list[tuple[str, tuple[_Window, ...]]] = []  # (role, windows), renamed below
    evaluation_queries, evaluation_labels = [], []
    for incident in range(evaluation_incidents):
        query, related = cluster(incident, filler_pools[0])
        evaluation_queries.append(len(recipes))
        recipes.append(("query", query))
        labels = {}
        for label, videos in related.items():
            for windows in videos:
                labels[len(recipes)] = label
                recipes.append(("database", windows))
        evaluation_labels.append(labels)
    query_topics = sorted({int(incident_topics[i]) for i in range(evaluation_incidents)}) or [0]
    for _ in range(c.distractors):
        recipes.append(("database", distractor(filler_pools[0], query_topics)))

    training_clusters = []
    training_topics = sorted({int(incident_topics[evaluation_incidents + i])
                              for i in range(training_incidents)}) or [0]
    for incident in range(evaluation_incidents, evaluation_incidents + training_incidents):
        query, related = cluster(incident, filler_pools[1])
        anchor = len(recipes)
        recipes.append(("training", query))
        members = {label: [] for label in LABELS}
        for label, videos in related.items():
            for windows in videos:
                members[label].append(len(recipes))
                recipes.append(("training", windows))
        training_clusters.append((anchor, members["ND"] + members["DS"],
                                  [anchor] + sum(members.values(), [])))
    for _ in range(c.training_distractors):
        recipes.append(("training", distractor(filler_pools[1], training_topics)))

    # Ids in a random order, so that neither an id nor its position tells what a video is.
    names = [f"syn{number:06d}" for number in rng.permutation(len(recipes))]
    features = SyntheticFeatures(renderer, {names[i]: (i, windows)
                                            for i, (_, windows) in enumerate(recipes)})
    by_role = {role: tuple(sorted(names[i] for i, (r, _) in enumerate(recipes) if r == role))
               for role in ("database", "training")}
    clusters = tuple((names[anchor], tuple(names[p] for p in positives),
                      tuple(names[m] for m in members))
                     for anchor, positives, members in training_clusters)
    return SyntheticCollection(
        config=c,
        features=features,
        queries=tuple(sorted(names[i] for i in evaluation_queries)),
        database=by_role["database"],
        labels={names[q]: {names[v]: label for v, label in labels.items()}
                for q, labels in zip(evaluation_queries, evaluation_labels)},
        training_pool=by_role["training"],
        _training_clusters=clusters,
    )
