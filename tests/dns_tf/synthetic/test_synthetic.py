"""The synthetic FIVR: structure, determinism, evaluation, and a difficulty that rewards chamfer."""

import numpy as np
import pytest

from dns_tf.synthetic.features import (LABELS, SyntheticConfig, SyntheticFeatures,
                                   make_synthetic_collection)

CONFIG = SyntheticConfig(seed=0, dims=32, queries=6, distractors=60, training_incidents=3,
                         training_distractors=10)


@pytest.fixture(scope="module")
def collection():
    return make_synthetic_collection(CONFIG)


@pytest.fixture(scope="module")
def evaluation_videos(collection):
    return {v: collection.features[v] for v in collection.queries + collection.database}


def test_videos_look_like_whitened_region_features(collection):
    lengths = []
    for video_id in collection.queries + collection.database[:20]:
        video = collection.features[video_id]
        assert video.dtype == np.float32 and video.ndim == 3 and video.shape[1:] == (9, 32)
        np.testing.assert_allclose(np.linalg.norm(video, axis=-1), 1.0, atol=1e-5)
        lengths.append(len(video))
    assert min(lengths) >= 2 and max(lengths) > CONFIG.min_frames


def test_structure_follows_fivr(collection):
    queries, database, pool = map(set, (collection.queries, collection.database,
                                         collection.training_pool))
    assert len(queries) == 6 and not queries & database and not (queries | database) & pool
    assert set(collection.features.ids()) == queries | database | pool
    assert len(database) == 6 * 8 + 60 and len(pool) == 3 * 9 + 10
    for query in collection.queries:
        labels = collection.labels[query]
        assert sorted(labels.values()) == sorted(LABELS * 2)
        assert set(labels) <= database
    assert isinstance(collection.features, SyntheticFeatures)


def test_deterministic_per_seed(collection):
    again = make_synthetic_collection(CONFIG)
    assert again.queries == collection.queries and again.labels == collection.labels
    for video_id in collection.database[:10]:
        np.testing.assert_array_equal(again.features[video_id], collection.features[video_id])
        np.testing.assert_array_equal(collection.features[video_id],
                                      collection.features[video_id])
    other = make_synthetic_collection(SyntheticConfig(**{**CONFIG.__dict__, "seed": 1}))
    first = collection.queries[0]
    assert (first not in other.features
            or other.features[first].shape != collection.features[first].shape
            or not np.allclose(other.features[first], collection.features[first]))


def test_evaluate_follows_fivr_relevance_rules(collection):
    grade = {"ND": 4, "DS": 3, "CS": 2, "IS": 1}
    oracle = {q: {v: grade.get(collection.labels[q].get(v), 0) for v in collection.database}
              for q in collection.queries}
    assert collection.evaluate(oracle) == {"DSVR": 1.0, "CSVR": 1.0, "ISVR": 1.0}
    # IS ranked first: perfect for ISVR only.
    swapped = {q: {v: {4: 1, 1: 4}.get(s, s) for v, s in scores.items()}
               for q, scores in oracle.items()}
    results = collection.evaluate(swapped)
    assert results["ISVR"] == 1.0 and results["DSVR"] < 0.7 and results["CSVR"] < 0.9
    matrix = np.array([[oracle[q][v] for v in collection.database] for q in collection.queries],
                      dtype=float)
    assert collection.evaluate(matrix) == collection.evaluate(oracle)
    with pytest.raises(ValueError, match="lack 1 of 6 queries"):
        collection.evaluate({q: oracle[q] for q in collection.queries[1:]})
    with pytest.raises(ValueError, match="shape"):
        collection.evaluate(matrix[:, 1:])


def global_average_similarities(collection, videos):
    def descriptor(video):
        mean = video.mean(axis=(0, 1))
        return mean / np.linalg.norm(mean)
    database = np.stack([descriptor(videos[v]) for v in collection.database])
    return np.stack([database @ descriptor(videos[q]) for q in collection.queries])


def chamfer_similarities(collection, videos):
    """ViSiL without learning: region chamfer per frame pair, then frame chamfer per video pair."""
    lengths = [len(videos[v]) for v in collection.database]
    frames = np.concatenate([videos[v] for v in collection.database])    # [F, R, D]
    ends = np.cumsum(lengths)
    rows = []
    for q in collection.queries:
        regions = np.einsum("ird,fsd->ifrs", videos[q], frames)
        frame_pairs = regions.max(axis=3).mean(axis=2)                   # [Tq, F]
        best = np.maximum.reduceat(frame_pairs, ends - lengths, axis=1)  # [Tq, videos]
        rows.append(best.mean(axis=0))
    return np.stack(rows)


def test_chamfer_matching_beats_global_averaging(collection, evaluation_videos):
    global_average = collection.evaluate(global_average_similarities(collection,
                                                                     evaluation_videos))
    chamfer = collection.evaluate(chamfer_similarities(collection, evaluation_videos))
    for task in ("CSVR", "ISVR"):
        assert chamfer[task] > global_average[task] + 0.1, (task, chamfer, global_average)
    assert chamfer["ISVR"] < 0.97  # fine-grained matching is good, not perfect


def test_relatedness_decreases_from_nd_to_is(collection, evaluation_videos):
    similarities = chamfer_similarities(collection, evaluation_videos)
    by_label = {label: [] for label in (*LABELS, "unrelated")}
    for row, query in zip(similarities, collection.queries):
        for score, video in zip(row, collection.database):
            by_label[collection.labels[query].get(video, "unrelated")].append(score)
    means = [np.mean(by_label[label]) for label in (*LABELS, "unrelated")]
    assert means == sorted(means, reverse=True), dict(zip((*LABELS, "unrelated"), means))


def test_training_triplets_come_from_the_pool(collection):
    triplets = collection.training_triplets(seed=3)
    assert len(triplets) == 3 * 4 and triplets == collection.training_triplets(seed=3)
    pool = set(collection.training_pool)
    assert all({a, p, n} <= pool and len({a, p, n}) == 3 for a, p, n in triplets)
    videos = collection.features
    for anchor, positive, negative in triplets[:4]:
        def score(other):
            sims = np.einsum("ird,jsd->ijrs", videos[anchor], videos[other]).max(-1).mean(-1)
            return sims.max(axis=1).mean()
        assert score(positive) > score(negative)


def test_config_rejects_inconsistent_values():
    with pytest.raises(ValueError, match="object_regions"):
        SyntheticConfig(object_regions=10)
    with pytest.raises(ValueError, match="min_frames"):
        SyntheticConfig(min_frames=50, max_frames=40)
    with pytest.raises(ValueError, match="related_fraction"):
        SyntheticConfig(related_fraction=(0.6, 0.2))
