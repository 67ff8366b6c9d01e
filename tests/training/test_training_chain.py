"""The DnS training chain learns: teacher from triplets, teacher labels pairs, students distil it,
the selector learns where the students disagree. All on a small synthetic FIVR (D = 64), seeded.

Each stage is checked on what it is for: retrieval mAP on held-out queries (teacher, students),
agreement with the teacher (relabelled pairs), routing quality (selector).
"""

import keras
import numpy as np
import pytest

from dns_tf.data.pairs import POOLS, load_pairs, merge_pairs, save_pairs
from dns_tf.synthetic.features import SyntheticConfig, make_synthetic_collection
from dns_tf.models import ViSiLTeacher
from training.config import (DistillationConfig, PairsConfig, SelectorTrainingConfig,
                             TeacherTrainingConfig)
from training.distill import build_student, train_student
from training.pairs import label_pairs, relabel_pairs
from training.scoring import PairScorer, evaluate_model
from training.selector import SelectorScorer, routing_recall, selector_pairs, split_pairs, \
    train_selector
from training.teacher import train_teacher

pytestmark = pytest.mark.slow

DIMS = 64
MAX_FRAMES = 48
COLLECTION = SyntheticConfig(seed=0, dims=DIMS, queries=6, distractors=30, training_incidents=8,
                             training_distractors=16, max_frames=30)
SMALL_COARSE = dict(transformer_heads=4, transformer_feedforward_dims=128, netvlad_clusters=8,
                    netvlad_outdims=64)


@pytest.fixture(scope="module")
def collection():
    return make_synthetic_collection(COLLECTION)


@pytest.fixture(scope="module")
def features(collection):
    return {video: collection.features[video] for video in collection.features.ids()}


@pytest.fixture(scope="module")
def pool(collection, features):
    return {video: features[video] for video in collection.training_pool}


def held_out_triplet_loss(collection, similarities, margin=0.5):
    """The triplet loss over the evaluation queries: every ND/DS video against every unrelated
    one, from similarities [queries, database]."""
    losses = []
    for row, query in enumerate(collection.queries):
        labels = collection.labels[query]
        positives = [j for j, v in enumerate(collection.database) if labels.get(v) in ("ND", "DS")]
        negatives = [j for j, v in enumerate(collection.database) if v not in labels]
        scores = similarities[row]
        losses.append(np.maximum(
            0.0, scores[negatives][None, :] - scores[positives][:, None] + margin).mean())
    return float(np.mean(losses))


@pytest.fixture(scope="module")
def teacher_run(collection, features):
    """(result, {"mAP", "triplet_loss"} untrained, the same trained)."""
    keras.utils.set_random_seed(0)
    teacher = ViSiLTeacher(dims=DIMS)

    def measure():
        similarities = PairScorer(teacher, features, max_frames=MAX_FRAMES).matrix(
            collection.queries, collection.database)
        return {"mAP": float(np.mean(list(collection.evaluate(similarities).values()))),
                "triplet_loss": held_out_triplet_loss(collection, similarities)}

    untrained = measure()
    config = TeacherTrainingConfig(dims=DIMS, learning_rate=1e-3, batch_size=8, epochs=8,
                                   max_frames=MAX_FRAMES)
    result = train_teacher(features, collection.training_triplets(seed=0), config,
                           teacher=teacher, verbose=0)
    assert result.network is teacher  # trained in place under the default strategy
    return result, untrained, measure()


@pytest.fixture(scope="module")
def teacher_pairs(teacher_run, pool):
    config = PairsConfig(candidates=8, random_negatives=4, max_frames=MAX_FRAMES)
    return label_pairs(teacher_run[0].network, pool, config, progress=False)


@pytest.fixture(scope="module")
def fine_run(collection, features, teacher_pairs):
    keras.utils.set_random_seed(0)
    config = DistillationConfig(dims=DIMS, learning_rate=1e-3, batch_size=16, epochs=5,
                                max_frames=MAX_FRAMES, validate_every=5)
    student = build_student(config)
    untrained = evaluate_model(student, features, collection, max_frames=MAX_FRAMES)
    result = train_student(features, teacher_pairs, config, student=student,
                           validation=(collection, features), verbose=0)
    return result, untrained


@pytest.fixture(scope="module")
def coarse_run(features, teacher_pairs):
    keras.utils.set_random_seed(0)
    config = DistillationConfig(student_type="coarse-grained", dims=DIMS, learning_rate=1e-3,
                                batch_size=16, epochs=4, max_frames=MAX_FRAMES, **SMALL_COARSE)
    untrained = build_student(config)
    untrained_pairs = relabel_pairs(untrained, features, teacher_pairs, progress=False)
    result = train_student(features, teacher_pairs, config, verbose=0)
    return result, untrained_pairs


def pair_scores(pairs):
    """{(query id, target id): similarity} over both pools."""
    return {(pairs.index[q], pairs.index[t]): s for q, pools in pairs.pairs.items()
            for pool in POOLS for t, s in pools[pool].items()}


def test_teacher_learns_from_triplets(teacher_run):
    """Chamfer matching makes even an untrained ViSiL rank this collection well; training is seen
    in the margins: the triplet loss on held-out queries falls several-fold."""
    result, untrained, trained = teacher_run
    print(f"teacher: untrained {untrained}, trained {trained}")
    assert trained["triplet_loss"] < 0.3 * untrained["triplet_loss"]
    assert trained["mAP"] >= max(0.85, untrained["mAP"])
    assert result.history["triplet_loss"][-1] < 0.3 * result.history["triplet_loss"][0]


def test_teacher_labels_every_pool_video(teacher_pairs, pool, tmp_path):
    assert sorted(teacher_pairs.index) == sorted(pool)
    assert sorted(teacher_pairs.pairs) == list(range(len(pool)))
    usable = 0
    for query, pools in teacher_pairs.pairs.items():
        targets = {**pools["positives"], **pools["negatives"]}
        assert len(targets) == 12 and query not in targets
        assert all(s >= 0.0 for s in pools["positives"].values())
        assert all(s < 0.0 for s in pools["negatives"].values())
        usable += bool(pools["positives"]) and bool(pools["negatives"])
    assert usable >= 0.8 * len(pool)  # most queries can train a student
    path = tmp_path / "pairs.pk"
    save_pairs(path, teacher_pairs.index, teacher_pairs.pairs)
    again = load_pairs(path)
    assert again.index == teacher_pairs.index and again.pairs == teacher_pairs.pairs


def test_shards_merge_into_the_unsharded_labelling(pool):
    keras.utils.set_random_seed(1)
    teacher = ViSiLTeacher(dims=DIMS)
    videos = sorted(pool)[:16]
    config = dict(candidates=3, random_negatives=2, max_frames=16)
    whole = label_pairs(teacher, pool, PairsConfig(**config), videos, progress=False)
    shards = [label_pairs(teacher, pool, PairsConfig(**config, shard=i, num_shards=3), videos,
                          progress=False) for i in range(3)]
    assert [sorted(s.pairs) for s in shards] == [list(range(i, 16, 3)) for i in range(3)]
    merged = merge_pairs(shards)
    assert merged.index == whole.index
    assert merged.pairs.keys() == whole.pairs.keys()
    for query, pools in whole.pairs.items():
        for pool_name in POOLS:
            assert merged.pairs[query][pool_name].keys() == pools[pool_name].keys()
            np.testing.assert_allclose(list(merged.pairs[query][pool_name].values()),
                                       list(pools[pool_name].values()), atol=1e-5)


def test_fine_student_reaches_the_teachers_map(fine_run, teacher_run):
    result, untrained = fine_run
    teacher = teacher_run[2]
    (epoch, trained), = result.validation
    print(f"fine student mAP: untrained {untrained}, trained {trained}, teacher {teacher}")
    assert epoch == 5
    assert trained["mAP"] >= 0.9 * teacher["mAP"]
    assert trained["mAP"] >= untrained["mAP"] + 0.3
    losses = result.history["distillation_loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert result.history["val_mAP"] == [trained["mAP"]]


def test_coarse_student_moves_towards_the_teacher(coarse_run, teacher_pairs, features):
    result, untrained_pairs = coarse_run
    trained_pairs = relabel_pairs(result.network, features, teacher_pairs, progress=False)
    teacher = pair_scores(teacher_pairs)

    def l1_to_teacher(pairs):  # coarse students learn the teacher's s / 2 + 0.5
        scores = pair_scores(pairs)
        return np.mean([abs(scores[key] - (teacher[key] / 2 + 0.5)) for key in teacher])

    before, after = l1_to_teacher(untrained_pairs), l1_to_teacher(trained_pairs)
    print(f"coarse student L1 to the teacher: {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before
    assert "regularization_loss" not in result.history  # nothing to regularise


@pytest.fixture(scope="module")
def student_pairs(fine_run, coarse_run, features, teacher_pairs):
    fine = relabel_pairs(fine_run[0].network, features, teacher_pairs, progress=False)
    coarse = relabel_pairs(coarse_run[0].network, features, teacher_pairs, progress=False)
    return fine, coarse


def test_a_student_labels_pairs_for_the_next_round(student_pairs, teacher_pairs):
    fine, _ = student_pairs
    assert fine.index == teacher_pairs.index
    for query, pools in teacher_pairs.pairs.items():
        for pool in POOLS:
            assert fine.pairs[query][pool].keys() == pools[pool].keys()
    teacher, student = pair_scores(teacher_pairs), pair_scores(fine)
    keys = sorted(teacher)
    correlation = np.corrcoef([teacher[k] for k in keys], [student[k] for k in keys])[0, 1]
    print(f"student vs teacher similarity correlation: {correlation:.3f}")
    assert correlation > 0.9


def test_selector_routes_better_than_random(student_pairs, features):
    pairs = selector_pairs(*student_pairs, threshold=0.2)
    train, held_out = split_pairs(pairs, held_out_fraction=0.25, seed=0)
    keras.utils.set_random_seed(0)
    # Small batches: the MLP's BatchNorm statistics need steps to forget their initial values.
    config = SelectorTrainingConfig(dims=DIMS, learning_rate=1e-3, batch_size=16, epochs=6,
                                    pairs_per_class=150, max_frames=MAX_FRAMES)
    result = train_selector(features, train, held_out, config, verbose=0)
    probabilities = SelectorScorer(result.network, features,
                                   max_frames=MAX_FRAMES).probabilities(held_out)
    share = 0.2
    caught = routing_recall(held_out.labels, probabilities, share)
    print(f"selector: {held_out.labels.mean():.2f} of held-out pairs to re-rank; its top "
          f"{share:.0%} catch {caught:.2f} of them (random: {share:.2f}); per epoch "
          f"{result.validation}")
    assert caught >= share + 0.1
    final = result.validation[-1][1]  # accuracy and F1 on a class-balanced held-out sample
    assert final["accuracy"] > 0.65 and final["f1"] > 0.6
