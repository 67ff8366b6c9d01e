"""tf.data pipelines: padding and masks, per-epoch sampling, augmentation roles, determinism."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from dns_tf.data.padding import padded_batch_from_arrays
from dns_tf.data.pairs import TeacherPairs
from dns_tf.data.pipelines import (DistillationSampler, balanced_indices, distillation_dataset,
                                   selector_dataset, triplet_dataset)

R, D = 2, 4


def make_video(number, frames):
    """Frames that name themselves: [t, r] = (video number + 1, t, r, 1)."""
    video = np.zeros((frames, R, D), np.float32)
    video[:, :, 0] = number + 1
    video[:, :, 1] = np.arange(frames)[:, None]
    video[:, :, 2] = np.arange(R)[None, :]
    video[:, :, 3] = 1
    return video


def decode(videos, masks):
    """[(video number, frame indices)] of a padded batch, checking the padding on the way."""
    out = []
    for video, mask in zip(videos.numpy(), masks.numpy()):
        real = mask > 0
        length = int(real.sum())
        assert length > 0 and real[:length].all()  # real frames first, then padding
        np.testing.assert_array_equal(video[~real], 0)
        frames = video[real]
        assert (frames[:, :, 0] == frames[0, 0, 0]).all()
        out.append((int(frames[0, 0, 0]) - 1, frames[:, 0, 1].astype(int).tolist()))
    return out


LENGTHS = [12 + (7 * i) % 23 for i in range(30)]
FEATURES = {f"v{i:02d}": make_video(i, n) for i, n in enumerate(LENGTHS)}
INDEX = [f"v{i:02d}" for i in range(30)]


def teacher_similarity(query, target, positive):
    return (0.5 if positive else -0.5) + (query * 30 + target) / 10000


def make_pairs(queries=range(10)):
    pairs = {}
    for q in queries:
        positives = [(q + k) % 30 for k in (1, 2, 3)]
        negatives = [(q + k) % 30 for k in (10, 11, 12, 13)]
        pairs[q] = {"positives": {t: teacher_similarity(q, t, True) for t in positives},
                    "negatives": {t: teacher_similarity(q, t, False) for t in negatives}}
    return TeacherPairs.from_raw(INDEX, pairs, "test pairs")


PAIRS = make_pairs()


def batches(dataset):
    return list(dataset.as_numpy_iterator())


def test_padded_batch_from_arrays():
    videos = [make_video(0, 3), make_video(1, 5), make_video(2, 1)]
    padded, mask = padded_batch_from_arrays(videos)
    assert padded.shape == (3, 5, R, D) and mask.shape == (3, 5) and mask.dtype == np.float32
    np.testing.assert_array_equal(mask.sum(1), [3, 5, 1])
    for video, row, m in zip(videos, padded, mask):
        np.testing.assert_array_equal(row[:len(video)], video)
        np.testing.assert_array_equal(row[len(video):], 0)
        np.testing.assert_array_equal(m, np.arange(5) < len(video))
    assert padded_batch_from_arrays(videos, length=8)[0].shape == (3, 8, R, D)
    with pytest.raises(ValueError, match="shorter than the longest"):
        padded_batch_from_arrays(videos, length=4)
    with pytest.raises(ValueError, match=r"video 1 has shape \(3, 2, 5\)"):
        padded_batch_from_arrays([make_video(0, 3), np.zeros((3, 2, 5))])
    with pytest.raises(ValueError, match="video 0 has no frames"):
        padded_batch_from_arrays([np.zeros((0, R, D))])
    with pytest.raises(ValueError, match="at least one video"):
        padded_batch_from_arrays([])


def test_distillation_batches_shapes_and_masks():
    dataset = distillation_dataset(FEATURES, PAIRS, batch_size=4, seed=0, augment=False)
    spec = dataset.element_spec
    assert spec["anchor"].shape.as_list() == [None, None, R, D]
    assert spec["anchor_mask"].shape.as_list() == [None, None]
    assert spec["similarity"].shape.as_list() == [None, 2]
    assert int(dataset.cardinality()) == 3
    sizes = []
    for batch in dataset:
        lengths = {role: batch[role].shape[1] for role in ("anchor", "positive", "negative")}
        assert len(set(lengths.values())) == 1  # one padded length for the whole batch
        for role in ("anchor", "positive", "negative"):
            for number, frames in decode(batch[role], batch[f"{role}_mask"]):
                assert frames == list(range(LENGTHS[number]))  # no augmentation: whole videos
        sizes.append(batch["anchor"].shape[0])
    assert sizes == [4, 4, 2]


def epoch_triplets(dataset):
    """[(anchor, positive, negative, similarity row)] over a dataset's batches."""
    rows = []
    for batch in dataset:
        roles = [decode(batch[r], batch[f"{r}_mask"]) for r in ("anchor", "positive", "negative")]
        for (a, _), (p, _), (n, _), sims in zip(*roles, batch["similarity"].numpy()):
            rows.append((a, p, n, tuple(sims)))
    return rows


def test_one_positive_and_one_negative_per_anchor_per_epoch():
    seen_positives = collections.defaultdict(set)
    for epoch in range(3):
        rows = epoch_triplets(distillation_dataset(FEATURES, PAIRS, batch_size=4, seed=1,
                                                   first_epoch=epoch, augment=False))
        assert sorted(a for a, *_ in rows) == list(range(10))
        for anchor, positive, negative, (sim_p, sim_n) in rows:
            assert positive in PAIRS.pairs[anchor]["positives"]
            assert negative in PAIRS.pairs[anchor]["negatives"]
            assert sim_p == pytest.approx(teacher_similarity(anchor, positive, True), abs=1e-6)
            assert sim_n == pytest.approx(teacher_similarity(anchor, negative, False), abs=1e-6)
            seen_positives[anchor].add(positive)
    assert sum(len(s) for s in seen_positives.values()) > 10  # a new draw each epoch


def test_coarse_students_get_similarities_in_unit_range():
    fine = DistillationSampler(PAIRS, seed=0).sample(0)
    coarse = DistillationSampler(PAIRS, seed=0, coarse=True).sample(0)
    np.testing.assert_array_equal(fine.anchors, coarse.anchors)
    np.testing.assert_allclose(coarse.similarities, fine.similarities / 2 + 0.5, atol=1e-6)


def test_only_available_videos_take_part():
    # Anchor 0 loses all its positives; anchors 1, 2, 3 and 12 lose their own video.
    missing = {"v01", "v02", "v03", "v12"}
    features = {k: v for k, v in FEATURES.items() if k not in missing}
    sampler = DistillationSampler(make_pairs(range(13)), set(features), seed=0)
    assert sorted(sampler.anchors.tolist()) == [4, 5, 6, 7, 8, 9, 10, 11]
    for epoch in range(5):
        drawn = sampler.sample(epoch)
        assert not {INDEX[i] for i in np.concatenate([drawn.positives, drawn.negatives])} & missing
    assert len(DistillationSampler(PAIRS, seed=0, fraction=0.5)) < 10
    with pytest.raises(ValueError, match="no query has both a positive and a negative"):
        DistillationSampler(PAIRS, {"v00"}, seed=0)


def test_augmentation_touches_positives_and_negatives_only():
    changed = collections.Counter()
    for seed in range(4):
        dataset = distillation_dataset(FEATURES, PAIRS, batch_size=5, seed=seed, augment=True)
        for batch in dataset:
            for role in ("anchor", "positive", "negative"):
                for number, frames in decode(batch[role], batch[f"{role}_mask"]):
                    changed[role] += frames != list(range(LENGTHS[number]))
    assert changed["anchor"] == 0
    # About half of the 40 positives and 40 negatives are augmented.
    assert 8 < changed["positive"] < 32 and 8 < changed["negative"] < 32


def test_every_video_is_cut_to_max_frames():
    features = {**FEATURES, "v05": make_video(5, 400), "v06": make_video(6, 90)}
    for batch in distillation_dataset(features, PAIRS, batch_size=10, seed=0, max_frames=40):
        for role in ("anchor", "positive", "negative"):
            assert batch[role].shape[1] <= 40
            for number, frames in decode(batch[role], batch[f"{role}_mask"]):
                if number == 5:
                    assert len(frames) == 40  # 400 frames stay over 40 after any augmentation


def test_frame_multiple_cuts_videos_to_whole_pooling_windows():
    features = {**FEATURES, "v05": make_video(5, 3)}  # shorter than the multiple: kept whole
    lengths = collections.Counter()
    for batch in distillation_dataset(features, PAIRS, batch_size=10, seed=0, frame_multiple=4):
        for role in ("anchor", "positive", "negative"):
            for number, frames in decode(batch[role], batch[f"{role}_mask"]):
                length = len(FEATURES[f"v{number:02d}"]) if number != 5 else 3
                assert len(frames) % 4 == 0 or len(frames) == 3
                if role == "anchor":  # never augmented: its first frames, cut
                    assert frames == list(range(length - length % 4 if length > 4 else length))
                lengths[len(frames) % 4] += 1
    assert lengths[0] > 0


def test_same_seed_same_batches_whatever_the_parallelism():
    def run(seed, parallel):
        return batches(distillation_dataset(FEATURES, PAIRS, batch_size=3, seed=seed, epochs=2,
                                            num_parallel_calls=parallel))
    first, again = run(7, tf.data.AUTOTUNE), run(7, 1)
    assert len(first) == len(again) == 8
    for a, b in zip(first, again):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other = run(8, tf.data.AUTOTUNE)
    assert any(not np.array_equal(a["similarity"], b["similarity"]) for a, b in zip(first, other))


def test_resuming_at_an_epoch_repeats_it_exactly():
    both = batches(distillation_dataset(FEATURES, PAIRS, batch_size=4, seed=2, epochs=2))
    second = batches(distillation_dataset(FEATURES, PAIRS, batch_size=4, seed=2, first_epoch=1))
    assert len(both) == 6 and len(second) == 3
    for a, b in zip(both[3:], second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not all(np.array_equal(a["similarity"], b["similarity"])
                   for a, b in zip(both[:3], second))


def test_triplet_dataset_visits_every_triplet_once_per_epoch():
    triplets = [(f"v{a:02d}", f"v{a + 1:02d}", f"v{a + 15:02d}") for a in range(7)]
    dataset = triplet_dataset(FEATURES, triplets, batch_size=3, seed=0, epochs=2)
    assert "similarity" not in dataset.element_spec
    seen = []
    for batch in dataset:
        roles = [decode(batch[r], batch[f"{r}_mask"]) for r in ("anchor", "positive", "negative")]
        seen += [(f"v{a:02d}", f"v{p:02d}", f"v{n:02d}") for (a, _), (p, _), (n, _) in zip(*roles)]
    assert sorted(seen[:7]) == sorted(seen[7:]) == sorted(triplets)
    assert seen[:7] != seen[7:]  # reshuffled each epoch
    with pytest.raises(ValueError, match="not in the features"):
        triplet_dataset(FEATURES, [("v00", "v01", "nope")])


def test_balanced_indices():
    labels = np.array([0] * 50 + [1] * 8 + [2] * 20)
    first = balanced_indices(labels, seed=0, epoch=0)
    assert len(first) == 24 and len(set(first.tolist())) == 24
    assert collections.Counter(labels[first].tolist()) == {0: 8, 1: 8, 2: 8}
    np.testing.assert_array_equal(first, balanced_indices(labels, seed=0, epoch=0))
    assert set(balanced_indices(labels, 0, 1).tolist()) != set(first.tolist())
    assert len(balanced_indices(labels, 0, 0, per_class=3)) == 9
    assert len(balanced_indices(labels, 0, 0, per_class=100)) == 24
    with pytest.raises(ValueError, match="non-empty"):
        balanced_indices([], 0)


def test_selector_dataset_balances_classes_each_epoch():
    queries = [f"v{i % 30:02d}" for i in range(40)]
    targets = [f"v{(i * 7 + 3) % 30:02d}" for i in range(40)]
    similarities = np.linspace(0, 1, 40, dtype=np.float32)
    labels = np.array([1] * 10 + [0] * 30)
    dataset = selector_dataset(FEATURES, queries, targets, similarities, labels, batch_size=8,
                               seed=0, epochs=2)
    assert int(dataset.cardinality()) == 6
    for epoch in range(2):
        epoch_labels = []
        for batch in batches(dataset)[epoch * 3:(epoch + 1) * 3]:
            assert batch["query"].shape[1] == batch["target"].shape[1]
            for label, sim, q, t in zip(batch["label"], batch["similarity"],
                                        batch["query"][:, 0, 0, 0], batch["target"][:, 0, 0, 0]):
                i = int(round(sim * 39))
                assert (label, f"v{int(q) - 1:02d}", f"v{int(t) - 1:02d}") == (
                    labels[i], queries[i], targets[i])
                epoch_labels.append(int(label))
        assert collections.Counter(epoch_labels) == {0: 10, 1: 10}
    with pytest.raises(ValueError, match="differ in length"):
        selector_dataset(FEATURES, queries, targets[:-1], similarities, labels)


def test_reads_feature_files_and_synthetic_collections(tmp_path):
    from dns_tf.data.feature_files import open_features, open_writer
    from dns_tf.synthetic.features import SyntheticConfig, make_synthetic_collection

    with open_writer(tmp_path / "features.h5") as writer:
        for video_id, video in FEATURES.items():
            writer.write(video_id, video)
    with open_features(tmp_path / "features.h5") as features:
        from_file = batches(distillation_dataset(features, PAIRS, batch_size=3, seed=4))
    from_dict = batches(distillation_dataset(FEATURES, PAIRS, batch_size=3, seed=4))
    for a, b in zip(from_file, from_dict, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])

    collection = make_synthetic_collection(SyntheticConfig(dims=8, queries=1, distractors=2,
                                                           training_incidents=1,
                                                           training_distractors=2))
    pool = list(collection.training_pool)
    triplets = collection.training_triplets(seed=0)
    batch = next(iter(triplet_dataset(collection.features, triplets, batch_size=2)))
    assert batch["anchor"].shape[2:] == (9, 8) and len(pool) == 11
