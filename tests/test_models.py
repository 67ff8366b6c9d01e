"""Model behaviour beyond the fixtures: shapes, masks, unbatched inputs, serialization."""

import numpy as np
import pytest

from dns_tf.models import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork, ViSiLTeacher


def _videos(rng, lengths, regions=9, dims=512):
    videos = np.zeros((len(lengths), max(lengths), regions, dims), np.float32)
    masks = np.zeros((len(lengths), max(lengths)), np.float32)
    for i, length in enumerate(lengths):
        x = rng.normal(size=(length, regions, dims)).astype(np.float32)
        videos[i, :length] = x / np.linalg.norm(x, axis=-1, keepdims=True)
        masks[i, :length] = 1
    return videos, masks


@pytest.mark.parametrize("kind", ["attention", "binarization", "none"])
def test_fine_student_shapes_and_padding(kind):
    rng = np.random.default_rng(0)
    student = FineGrainedStudent(attention=kind == "attention", binarization=kind == "binarization")
    videos, masks = _videos(rng, [8, 5, 11], regions=12)  # a 3x4 region grid
    index = np.asarray(student.index_video(videos, masks))
    assert index.shape == (3, 11, 12, 512)
    assert not index[1, 5:].any()  # padded frames are zeroed
    similarity = np.asarray(student.calculate_video_similarity(index[:2], index, masks[:2], masks))
    assert similarity.shape == (2, 3) and np.all(np.abs(similarity) <= 1)
    # A single unbatched video equals its row of the batch when it is the longest one.
    single = student.calculate_video_similarity(index[0, :8], index[2], None, None)
    batched = student.calculate_video_similarity(index[0:1, :8], index[2:3])
    np.testing.assert_allclose(single, batched, atol=1e-6)


def test_coarse_student_masks_make_padding_irrelevant():
    rng = np.random.default_rng(1)
    student = CoarseGrainedStudent(netvlad_clusters=4, netvlad_outdims=64,
                                   transformer_feedforward_dims=128)
    videos, masks = _videos(rng, [6, 9])
    batched = np.asarray(student.index_video(videos, masks))
    alone = np.asarray(student.index_video(videos[0, :6]))
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert np.asarray(student.calculate_video_similarity(batched, batched)).shape == (2, 2)


def test_selector_and_teacher_shapes():
    rng = np.random.default_rng(2)
    videos, masks = _videos(rng, [7, 4], dims=512)
    selector = SelectorNetwork()
    assert np.asarray(selector.index_video(videos, masks)).shape == (2, 1)
    scores = np.asarray(selector.score(rng.normal(size=(5, 3))))
    assert scores.shape == (5, 1) and np.all((scores > 0) & (scores < 1))
    teacher = ViSiLTeacher(dims=64)
    small, small_masks = _videos(rng, [6, 8], dims=64)
    indexed = teacher.index_video(small, small_masks)
    assert np.asarray(teacher.calculate_video_similarity(indexed, indexed, small_masks,
                                                          small_masks)).shape == (2, 2)


def test_configs_round_trip():
    for model in (FineGrainedStudent(binarization=True, bits=256),
                  CoarseGrainedStudent(netvlad_clusters=4, netvlad_outdims=32,
                                       transformer_feedforward_dims=64),
                  SelectorNetwork(hidden_size=16, num_layers=2), ViSiLTeacher(dims=32)):
        clone = type(model).from_config(model.get_config())
        assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in model.weights]


def test_bad_input_shapes_are_explained():
    student = FineGrainedStudent()
    with pytest.raises(ValueError, match=r"\[T, R, D\] or \[B, T, R, D\]"):
        student.index_video(np.zeros((4, 512), np.float32))
