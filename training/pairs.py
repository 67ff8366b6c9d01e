"""Teacher-labelled pairs of an unlabelled collection, in the authors' pickle layout.

Scoring every pair of a 100K-video collection with ViSiL is out of reach, so each video (query)
gets a short list of candidates that a cheap global descriptor finds — the mean of its region
vectors, L2-normalised, searched exactly or with ScaNN (:func:`dns_tf.index.coarse.build_searcher`
picks by collection size) — plus a few random videos. The model scores every (query, candidate)
pair; pairs scoring at least ``positive_threshold`` form the query's positives pool, the rest its
negatives. The result is written with :func:`dns_tf.data.pairs.save_pairs` in the layout of the
authors' ``trainset_similarities_*.pk``, so their released files and ours train students alike.

Work splits over machines by query: ``shard i of n`` labels queries ``i, i + n, i + 2n, ...`` of
the sorted video ids, every shard writes the whole ``index``, and
:func:`dns_tf.data.pairs.merge_pairs` joins the shards.

Any network that scores pairs can label: the teacher, or a trained student for the next round of
iterative distillation (the authors' ``fg_att_student_iter1/2`` files). :func:`relabel_pairs`
re-scores an existing set of pairs, pools unchanged, with another network — which is also how the
selector's training data is made (the same pairs scored by the fine and the coarse student).

Example:

    teacher = dns_tf.models.load_model("teacher.keras")
    with open_features("dns_100k_teacher.hdf5") as features:
        pairs = label_pairs(teacher, features, PairsConfig(shard=0, num_shards=4))
    save_pairs("pairs-0.pk", pairs.index, pairs.pairs)
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from dns_tf.data.pairs import POOLS, TeacherPairs
from dns_tf.index.coarse import CoarseConfig, build_searcher
from training.config import PairsConfig
from training.scoring import PairScorer


def global_descriptors(features: Mapping, video_ids: Sequence[str],
                       max_frames: int | None = None, progress: bool = True) -> np.ndarray:
    """The candidate-search descriptor of each video: mean region vector, L2-normalised.

    Returns:
        float32 ``[len(video_ids), D]``.
    """
    descriptors = []
    for video_id in tqdm(video_ids, desc="descriptors", unit="video", disable=not progress):
        video = np.asarray(features[video_id], dtype=np.float32)
        if video.ndim != 3 or len(video) == 0:
            raise ValueError(f"video {video_id!r} has shape {video.shape}, expected [T, R, D] "
                             "with T >= 1")
        mean = video[:max_frames].mean(axis=(0, 1))
        descriptors.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
    return np.stack(descriptors).astype(np.float32)


def shard_queries(num_queries: int, shard: int, num_shards: int) -> np.ndarray:
    """Positions of the queries that shard ``shard`` of ``num_shards`` labels."""
    return np.arange(shard, num_queries, num_shards)


def _video_ids(features: Mapping) -> list[str]:
    return sorted(features.ids() if hasattr(features, "ids") else features.keys())


def label_pairs(model, features: Mapping, config: PairsConfig = PairsConfig(),
                video_ids: Sequence[str] | None = None, progress: bool = True) -> TeacherPairs:
    """Finds candidates for this shard's queries and labels them with ``model``.

    Args:
        model: the labelling network: a :class:`~dns_tf.models.ViSiLTeacher` or a trained student.
        features: Mapping video id -> ``[T, R, D]`` region features that ``model`` reads.
        config: candidates, threshold and sharding.
        video_ids: the collection (default: every video in ``features``); sorted, it becomes the
            pickle's ``index``.

    Returns:
        The labelled pairs of this shard's queries, over the whole collection's index.
    """
    ids = sorted(video_ids) if video_ids is not None else _video_ids(features)
    if len(ids) < 2:
        raise ValueError(f"a collection of {len(ids)} video(s) has no pairs to label")
    descriptors = global_descriptors(features, ids, config.max_frames, progress)
    searcher = build_searcher(descriptors, np.arange(len(ids), dtype=np.int64), CoarseConfig())
    scorer = PairScorer(model, features, config.batch_size, config.max_frames)
    pairs = {}
    queries = shard_queries(len(ids), config.shard, config.num_shards)
    for query in tqdm(queries, desc=f"labelling shard {config.shard}/{config.num_shards}",
                      unit="query", disable=not progress):
        targets = _candidates(int(query), descriptors, searcher, config)
        similarities = scorer.score(ids[query], [ids[t] for t in targets])
        positive = similarities >= config.positive_threshold
        pairs[int(query)] = {
            "positives": {int(t): float(s) for t, s in zip(targets[positive],
                                                           similarities[positive])},
            "negatives": {int(t): float(s) for t, s in zip(targets[~positive],
                                                           similarities[~positive])},
        }
    return TeacherPairs.from_raw(ids, pairs, source=f"<labelled by {model.name}>")


def _candidates(query: int, descriptors: np.ndarray, searcher, config: PairsConfig) -> np.ndarray:
    """The query's nearest neighbours by descriptor and its random extras, without itself."""
    total = len(descriptors)
    _, neighbours = searcher.search(descriptors[query], min(config.candidates + 1, total))
    neighbours = [int(t) for t in neighbours[0] if t != query][:config.candidates]
    # Seeded per query, so that any sharding draws the same extras.
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(query,)))
    taken = set(neighbours) | {query}
    rest = np.setdiff1d(np.arange(total), np.fromiter(taken, np.int64), assume_unique=True)
    extras = rng.choice(rest, min(config.random_negatives, len(rest)), replace=False)
    return np.array(neighbours + sorted(int(t) for t in extras), dtype=np.int64)


def relabel_pairs(model, features: Mapping, pairs: TeacherPairs,
                  config: PairsConfig = PairsConfig(), progress: bool = True) -> TeacherPairs:
    """Scores this shard's queries of existing ``pairs`` with ``model``; pools stay as they are.

    Only ``config.batch_size``, ``max_frames``, ``shard`` and ``num_shards`` apply. Pairs whose
    videos are missing from ``features`` are dropped.
    """
    scorer = PairScorer(model, features, config.batch_size, config.max_frames)
    available = set(_video_ids(features))
    queries = sorted(pairs.pairs)
    mine = [queries[i] for i in shard_queries(len(queries), config.shard, config.num_shards)]
    relabelled = {}
    for query in tqdm(mine, desc=f"relabelling shard {config.shard}/{config.num_shards}",
                      unit="query", disable=not progress):
        if pairs.index[query] not in available:
            continue
        targets = {pool: [t for t in pairs.pairs[query][pool] if pairs.index[t] in available]
                   for pool in POOLS}
        together = targets[POOLS[0]] + targets[POOLS[1]]
        similarities = scorer.score(pairs.index[query], [pairs.index[t] for t in together])
        scores = dict(zip(together, similarities.tolist()))
        relabelled[query] = {pool: {t: scores[t] for t in targets[pool]} for pool in POOLS}
    return TeacherPairs.from_raw(pairs.index, relabelled, source=f"<relabelled by {model.name}>")
