"""tf.data input pipelines for distillation, teacher training and selector training.

All three read region features from any Mapping ``video id -> [T, R, D]`` (a feature file from
:mod:`dns_tf.data.feature_files`, a :class:`~dns_tf.synthetic.features.SyntheticFeatures`, a dict) and
yield dicts of padded batches. Videos in one batch share one padded length T, so a trainer may run
them through ``index_video`` together (``[3B, T, R, D]``, as the reference does) or one role at a
time. Masks are float32, 1 on real frames and 0 on padding.

================  ==============================  ==============================================
pipeline          element                         sampling per epoch
================  ==============================  ==============================================
distillation      ``anchor`` ``[B, T, R, D]``,    every anchor of the teacher's pairs once, with
                  ``positive``, ``negative`` (same one random positive and one random negative;
                  shape), ``*_mask`` ``[B, T]``,  positives and negatives augmented temporally
                  ``similarity`` ``[B, 2]``       (:mod:`dns_tf.data.augment`); similarity =
                  (teacher: positive, negative)   teacher's (positive, negative) similarities
triplet           as distillation, without        every labelled triplet once, shuffled
                  ``similarity``
selector          ``query``, ``target``           a class-balanced sample of the pairs
                  ``[B, T, R, D]``, ``*_mask``,   (:func:`balanced_indices`), shuffled
                  ``similarity`` ``[B]`` (coarse),
                  ``label`` ``[B]``
================  ==============================  ==============================================

Batch sizes count triplets (distillation, triplet) or pairs (selector). A distillation batch of 32
triplets holds 64 teacher-labelled pairs: the reference's ``--batch_sz 64``.

Determinism: every random choice comes from a generator seeded by ``(seed, epoch)`` (the epoch's
sample and order) or ``(seed, epoch, batch)`` (that batch's augmentations), so batches are
identical for the same seed whatever the parallelism, and an interrupted run resumes exactly with
``first_epoch``. Loading, augmenting and padding run in numpy inside ``tf.numpy_function``, several
batches in parallel (``num_parallel_calls``), in order, with prefetching.

One deliberate difference from the reference: it cuts only augmented videos to 300 frames, here
``max_frames`` bounds every video (anchors and selector pairs too) so that a batch's memory is
bounded; ``max_frames=None`` keeps whole videos.

Example:

    pairs = load_pairs("trainset_similarities_teacher.pk")
    with open_features("dns_100k.hdf5") as features:
        dataset = distillation_dataset(features, pairs, batch_size=32, seed=0, epochs=300)
        for batch in dataset:
            batch["anchor"].shape, batch["similarity"].shape   # (32, T, 9, 512), (32, 2)
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from dns_tf.data.augment import MAX_FRAMES, temporal_augment, truncate
from dns_tf.data.padding import padded_batch_from_arrays
from dns_tf.data.pairs import TeacherPairs

# First spawn-key entry of each kind of random draw, so that no two draws share a stream.
_SUBSET, _EPOCH, _BATCH, _BALANCE = range(4)
_TRIPLET_ROLES = ("anchor", "positive", "negative")


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _video_ids(features: Mapping) -> set[str]:
    return set(features.ids() if hasattr(features, "ids") else features.keys())


def balanced_indices(labels, seed: int = 0, epoch: int = 0,
                     per_class: int | None = None) -> np.ndarray:
    """Indices of a class-balanced sample of ``labels``, shuffled; new each epoch, seeded.

    Every class contributes the same number of examples, drawn without replacement: ``per_class``,
    or fewer if the smallest class is smaller (the reference's ``sample_pairs``).

    Args:
        labels: ``[N]`` class of each example (any hashable numpy dtype).
        seed, epoch: the sample is a function of both.
        per_class: examples per class; ``None`` takes the size of the smallest class.

    Returns:
        int64 ``[num_classes * per_class]`` indices into ``labels``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"balanced_indices: labels must be a non-empty 1-D array, got shape "
                         f"{labels.shape}")
    classes, counts = np.unique(labels, return_counts=True)
    size = int(counts.min()) if per_class is None else min(int(per_class), int(counts.min()))
    if size < 1:
        raise ValueError(f"balanced_indices: per_class must be positive, got {per_class}")
    rng = _rng(seed, _BALANCE, epoch)
    chosen = [rng.choice(np.flatnonzero(labels == c), size, replace=False) for c in classes]
    return rng.permutation(np.concatenate(chosen)).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class DistillationSample:
    """One epoch's training triplets, in training order (positions into ``TeacherPairs.index``).

    Attributes:
        anchors, positives, negatives: int64 ``[A]``.
        similarities: float32 ``[A, 2]``: the teacher's (anchor, positive) and (anchor, negative)
            similarities, mapped to ``[0, 1]`` for coarse students.
    """

    anchors: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray
    similarities: np.ndarray


class DistillationSampler:
    """Draws one positive and one negative per anchor each epoch, as the reference does.

    Only videos present in ``videos`` take part (the reference's check against the feature file);
    ``fraction`` keeps a seeded random share of them (its ``--trainset_percentage / 100``). An
    anchor needs at least one positive and one negative left to be used.
    """

    def __init__(self, pairs: TeacherPairs, videos: set[str] | None = None, seed: int = 0,
                 fraction: float = 1.0, coarse: bool = False):
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.seed = seed
        self.coarse = coarse
        eligible = np.array([i for i, video_id in enumerate(pairs.index)
                             if videos is None or video_id in videos], dtype=np.int64)
        keep = _rng(seed, _SUBSET).permutation(eligible)[:int(len(eligible) * fraction)]
        subset = set(keep.tolist())
        anchors, pools = [], {"positives": [], "negatives": []}
        for query, query_pools in pairs.pairs.items():
            if query not in subset:
                continue
            kept = {pool: [(t, s) for t, s in query_pools[pool].items() if t in subset]
                    for pool in pools}
            if kept["positives"] and kept["negatives"]:
                anchors.append(query)
                for pool in pools:
                    pools[pool].append(kept[pool])
        if not anchors:
            raise ValueError(f"{pairs.source}: no query has both a positive and a negative among "
                             f"the {len(subset)} available videos; are these the right features?")
        self.anchors = np.array(anchors, dtype=np.int64)
        # Each pool as flat arrays plus per-anchor [start, count): a draw is start + U{0..count-1}.
        self._pools = {}
        for pool, entries in pools.items():
            counts = np.array([len(e) for e in entries])
            targets = np.array([t for e in entries for t, _ in e], dtype=np.int64)
            similarities = np.array([s for e in entries for _, s in e], dtype=np.float64)
            self._pools[pool] = (np.cumsum(counts) - counts, counts, targets, similarities)

    def __len__(self) -> int:
        return len(self.anchors)

    def _draw(self, pool: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        starts, counts, targets, similarities = self._pools[pool]
        chosen = starts + rng.integers(0, counts)
        return targets[chosen], similarities[chosen]

    def sample(self, epoch: int) -> DistillationSample:
        """The epoch's triplets: every anchor once, in a seeded random order."""
        rng = _rng(self.seed, _EPOCH, epoch)
        positives, positive_similarities = self._draw("positives", rng)
        negatives, negative_similarities = self._draw("negatives", rng)
        similarities = np.stack([positive_similarities, negative_similarities], axis=1)
        if self.coarse:  # coarse students output similarities in [0, 1]
            similarities = similarities / 2.0 + 0.5
        order = rng.permutation(len(self.anchors))
        return DistillationSample(self.anchors[order], positives[order], negatives[order],
                                  similarities[order].astype(np.float32))


class _VideoLoader:
    """Reads videos, augments the ones asked for, cuts them to ``max_frames``, pads batches.

    Reads go one at a time: feature readers share file handles (seek + read) across calls, and
    h5py serialises access anyway; augmenting and padding run in parallel.
    """

    def __init__(self, features: Mapping, max_frames: int | None, frame_multiple: int = 1):
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be positive or None, got {max_frames}")
        if frame_multiple < 1:
            raise ValueError(f"frame_multiple must be positive, got {frame_multiple}")
        self.features = features
        self.max_frames = max_frames
        self.frame_multiple = frame_multiple
        self._read_lock = threading.Lock()

    def load(self, video_id: str, rng: np.random.Generator | None = None) -> np.ndarray:
        with self._read_lock:
            video = np.asarray(self.features[video_id], dtype=np.float32)
        if video.ndim != 3 or len(video) == 0:
            raise ValueError(f"video {video_id!r} has shape {video.shape}, expected [T, R, D] "
                             "with T >= 1")
        video = (truncate(video, self.max_frames) if rng is None
                 else temporal_augment(video, rng, self.max_frames))
        if len(video) > self.frame_multiple:
            video = video[:len(video) - len(video) % self.frame_multiple]
        return video

    def padded(self, groups: Sequence[list[np.ndarray]]) -> list[np.ndarray]:
        """Pads all videos of all groups to one length; returns video, mask per group."""
        padded, mask = padded_batch_from_arrays([v for group in groups for v in group])
        outputs, start = [], 0
        for group in groups:
            outputs += [padded[start:start + len(group)], mask[start:start + len(group)]]
            start += len(group)
        return outputs

    def frame_shape(self, video_id: str) -> tuple[int, int]:
        """(R, D) of the collection, read from one of its videos."""
        with self._read_lock:
            shape = np.shape(self.features[video_id])
        if len(shape) != 3:
            raise ValueError(f"video {video_id!r} has shape {shape}, expected [T, R, D]")
        return int(shape[1]), int(shape[2])


def _batched_dataset(load_batch: Callable[[int, int], tuple], steps_per_epoch: int,
                     shapes: Mapping[str, tuple], epochs: int, first_epoch: int,
                     num_parallel_calls: int) -> tf.data.Dataset:
    """``epochs * steps_per_epoch`` batches; batch ``i`` is ``load_batch(epoch, step)``.

    ``shapes`` names the float32 outputs of ``load_batch``, in order, with their static shapes.
    """
    if epochs < 1 or first_epoch < 0:
        raise ValueError(f"need epochs >= 1 and first_epoch >= 0, got {epochs}, {first_epoch}")

    def fetch(step):
        epoch, batch = divmod(int(step), steps_per_epoch)
        return tuple(np.asarray(x, np.float32) for x in load_batch(first_epoch + epoch, batch))

    def to_dict(step):
        tensors = tf.numpy_function(fetch, [step], [tf.float32] * len(shapes), name="load_batch")
        for tensor, shape in zip(tensors, shapes.values()):
            tensor.set_shape(shape)
        return dict(zip(shapes, tensors))

    dataset = tf.data.Dataset.range(epochs * steps_per_epoch)
    dataset = dataset.map(to_dict, num_parallel_calls=num_parallel_calls, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _batch_bounds(batch: int, batch_size: int, total: int) -> slice:
    return slice(batch * batch_size, min((batch + 1) * batch_size, total))


def _steps(total: int, batch_size: int, drop_remainder: bool) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    steps = total // batch_size if drop_remainder else -(-total // batch_size)
    if steps == 0:
        raise ValueError(f"{total} examples make no batch of {batch_size} with drop_remainder")
    return steps


def _shapes(frame_shape: tuple[int, int], videos: Sequence[str], **others: tuple) -> dict:
    """Static shapes: each video ``[B, T, R, D]`` followed by its mask ``[B, T]``, then others."""
    shapes = {}
    for name in videos:
        shapes[name] = (None, None, *frame_shape)
        shapes[f"{name}_mask"] = (None, None)
    return {**shapes, **others}


def _load_triplets(loader: _VideoLoader, ids: Sequence[tuple[str, str, str]], augment: bool,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """Anchors as they are, positives and negatives augmented (if asked), padded together."""
    groups = [[], [], []]
    for anchor, positive, negative in ids:
        groups[0].append(loader.load(anchor))
        groups[1].append(loader.load(positive, rng if augment else None))
        groups[2].append(loader.load(negative, rng if augment else None))
    return loader.padded(groups)


def distillation_dataset(features: Mapping, pairs: TeacherPairs, *, batch_size: int = 32,
                         seed: int = 0, epochs: int = 1, first_epoch: int = 0,
                         augment: bool = True, max_frames: int | None = MAX_FRAMES,
                         coarse: bool = False, fraction: float = 1.0,
                         frame_multiple: int = 1, drop_remainder: bool = False,
                         num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Batches of (anchor, positive, negative) triplets with the teacher's similarities.

    Args:
        features: Mapping video id -> ``[T, R, D]`` over (at least part of) ``pairs.index``.
        pairs: the teacher's labelled pairs (:func:`dns_tf.data.pairs.load_pairs`).
        batch_size: triplets per batch (each gives two labelled pairs).
        seed: seeds the subset, every epoch's sample and order, and every augmentation.
        epochs, first_epoch: the dataset covers epochs ``first_epoch .. first_epoch + epochs - 1``
            (``dataset.cardinality() == epochs * steps per epoch``).
        augment: temporal augmentations on positives and negatives (never on anchors).
        max_frames: frames kept per video (see the module docstring); ``None`` keeps all.
        coarse: map teacher similarities from ``[-1, 1]`` to ``[0, 1]`` (coarse students).
        fraction: share of the available videos used for training.
        frame_multiple: cut every video (after augmenting) to a multiple of this many frames
            (videos shorter than that to their own length); see
            :attr:`training.config.DistillationConfig.align_frames`.
        drop_remainder: drop each epoch's last, smaller batch.
        num_parallel_calls: batches prepared in parallel.

    Returns:
        A dataset of dicts: ``anchor``, ``positive``, ``negative`` float32 ``[B, T, R, D]``,
        ``anchor_mask``, ``positive_mask``, ``negative_mask`` float32 ``[B, T]``, ``similarity``
        float32 ``[B, 2]`` (teacher's similarity to the positive, to the negative).
    """
    sampler = DistillationSampler(pairs, _video_ids(features), seed, fraction, coarse)
    loader = _VideoLoader(features, max_frames, frame_multiple)
    index = pairs.index
    steps = _steps(len(sampler), batch_size, drop_remainder)
    sample = functools.lru_cache(maxsize=4)(sampler.sample)

    def load_batch(epoch: int, batch: int):
        drawn = sample(epoch)
        rows = _batch_bounds(batch, batch_size, len(sampler))
        ids = [(index[a], index[p], index[n]) for a, p, n in
               zip(drawn.anchors[rows], drawn.positives[rows], drawn.negatives[rows])]
        arrays = _load_triplets(loader, ids, augment, _rng(seed, _BATCH, epoch, batch))
        return (*arrays, drawn.similarities[rows])

    shapes = _shapes(loader.frame_shape(index[int(sampler.anchors[0])]), _TRIPLET_ROLES,
                     similarity=(None, 2))
    return _batched_dataset(load_batch, steps, shapes, epochs, first_epoch, num_parallel_calls)


def triplet_dataset(features: Mapping, triplets: Sequence[tuple[str, str, str]], *,
                    batch_size: int = 32, seed: int = 0, epochs: int = 1, first_epoch: int = 0,
                    augment: bool = False, max_frames: int | None = MAX_FRAMES,
                    drop_remainder: bool = False,
                    num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Batches of labelled (anchor, positive, negative) video id triplets, for teacher training.

    Every triplet appears once per epoch, in a seeded order. Arguments as in
    :func:`distillation_dataset`; ``augment`` (off by default) perturbs positives and negatives.

    Returns:
        A dataset of dicts: ``anchor``, ``positive``, ``negative`` float32 ``[B, T, R, D]`` and
        ``anchor_mask``, ``positive_mask``, ``negative_mask`` float32 ``[B, T]``.
    """
    triplets = [tuple(t) for t in triplets]
    if not triplets or any(len(t) != 3 for t in triplets):
        raise ValueError("triplet_dataset: expected a non-empty list of (anchor, positive, "
                         "negative) video ids")
    available = _video_ids(features)
    missing = sorted({v for t in triplets for v in t if v not in available})
    if missing:
        raise ValueError(f"triplet_dataset: {len(missing)} videos of the triplets are not in the "
                         f"features, e.g. {missing[:3]}")
    loader = _VideoLoader(features, max_frames)
    steps = _steps(len(triplets), batch_size, drop_remainder)

    @functools.lru_cache(maxsize=4)
    def order(epoch: int) -> np.ndarray:
        return _rng(seed, _EPOCH, epoch).permutation(len(triplets))

    def load_batch(epoch: int, batch: int):
        rows = order(epoch)[_batch_bounds(batch, batch_size, len(triplets))]
        return _load_triplets(loader, [triplets[i] for i in rows], augment,
                              _rng(seed, _BATCH, epoch, batch))

    shapes = _shapes(loader.frame_shape(triplets[0][0]), _TRIPLET_ROLES)
    return _batched_dataset(load_batch, steps, shapes, epochs, first_epoch, num_parallel_calls)


def selector_dataset(features: Mapping, queries: Sequence[str], targets: Sequence[str],
                     similarities, labels, *, batch_size: int = 64, seed: int = 0,
                     epochs: int = 1, first_epoch: int = 0, per_class: int | None = None,
                     max_frames: int | None = MAX_FRAMES, drop_remainder: bool = False,
                     num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Class-balanced batches of video pairs for the selector.

    Args:
        features: Mapping video id -> ``[T, R, D]``.
        queries, targets: ``[N]`` video ids of each pair.
        similarities: ``[N]`` the coarse student's similarity of each pair (an input of the
            selector's MLP).
        labels: ``[N]`` 0/1 target of each pair (1: the fine and coarse students disagree).
        per_class: pairs per class per epoch (see :func:`balanced_indices`).
        Other arguments as in :func:`distillation_dataset`.

    Returns:
        A dataset of dicts: ``query``, ``target`` float32 ``[B, T, R, D]``, ``query_mask``,
        ``target_mask`` float32 ``[B, T]``, ``similarity`` and ``label`` float32 ``[B]``.
    """
    similarities = np.asarray(similarities, dtype=np.float32)
    labels = np.asarray(labels)
    if not len(queries) == len(targets) == len(similarities) == len(labels):
        raise ValueError(f"selector_dataset: queries, targets, similarities and labels differ in "
                         f"length ({len(queries)}, {len(targets)}, {len(similarities)}, "
                         f"{len(labels)})")
    available = _video_ids(features)
    missing = sorted({v for v in (*queries, *targets) if v not in available})
    if missing:
        raise ValueError(f"selector_dataset: {len(missing)} videos of the pairs are not in the "
                         f"features, e.g. {missing[:3]}")
    loader = _VideoLoader(features, max_frames)
    per_epoch = len(balanced_indices(labels, seed, first_epoch, per_class))
    steps = _steps(per_epoch, batch_size, drop_remainder)
    sample = functools.lru_cache(maxsize=4)(
        lambda epoch: balanced_indices(labels, seed, epoch, per_class))

    def load_batch(epoch: int, batch: int):
        rows = sample(epoch)[_batch_bounds(batch, batch_size, per_epoch)]
        pair_videos = [[loader.load(queries[i]) for i in rows],
                       [loader.load(targets[i]) for i in rows]]
        return (*loader.padded(pair_videos), similarities[rows], labels[rows].astype(np.float32))

    shapes = _shapes(loader.frame_shape(queries[0]), ("query", "target"), similarity=(None,),
                     label=(None,))
    return _batched_dataset(load_batch, steps, shapes, epochs, first_epoch, num_parallel_calls)
