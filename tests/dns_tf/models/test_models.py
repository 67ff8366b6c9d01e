"""Model behaviour beyond the fixtures: shapes, masks, unbatched inputs, serialization."""

import numpy as np
import pytest

from dns_tf.layers import VideoComparator
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


class _UnguardedComparator(VideoComparator):
    """The comparator without its short-video handling: the numbers before it existed."""

    def _at_least_min_frames(self, similarity, pair_mask):
        return similarity, pair_mask


def test_comparator_leaves_videos_of_min_frames_or_more_bit_for_bit_unchanged():
    rng = np.random.default_rng(5)
    comparator = VideoComparator()
    comparator.build((None, None, None))
    unguarded = _UnguardedComparator()
    unguarded.build((None, None, None))
    unguarded.set_weights(comparator.get_weights())
    lengths = np.array([4, 7, 12])
    mask = (np.arange(12)[None] < lengths[:, None]).astype(np.float32)
    pair_mask = mask[:, :, None] * mask[:, None, :]
    similarity = rng.uniform(-1, 1, (3, 12, 12)).astype(np.float32) * pair_mask
    for args in ((similarity, pair_mask), (similarity[:1, :4, :7], None)):
        got, got_mask = comparator(*args)
        expected, expected_mask = unguarded(*args)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
        if got_mask is not None:
            np.testing.assert_array_equal(np.asarray(got_mask), np.asarray(expected_mask))


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_comparator_treats_short_videos_as_padded_with_zero_similarity_frames(frames):
    rng = np.random.default_rng(frames)
    comparator = VideoComparator()
    comparator.build((None, None, None))
    similarity = rng.uniform(-1, 1, (1, frames, 9)).astype(np.float32)
    padded = np.zeros((1, 4, 9), np.float32)
    padded[:, :frames] = similarity
    output, mask = comparator(similarity, np.ones_like(similarity))
    expected, expected_mask = comparator(padded, np.ones_like(padded))
    assert output.shape == (1, 1, 2)
    np.testing.assert_array_equal(np.asarray(output), np.asarray(expected))
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(expected_mask))
    # Inside a padded batch (a longer video beside it) the short video scores as alone.
    batch = np.zeros((2, 10, 9), np.float32)
    batch[0, :frames] = similarity[0]
    batch_mask = np.zeros((2, 10, 9), np.float32)
    batch_mask[0, :frames] = 1
    batch_mask[1] = 1
    output, mask = comparator(batch, batch_mask)
    np.testing.assert_allclose(np.asarray(output)[0, :1], np.asarray(expected)[0], atol=1e-6)
    assert np.asarray(mask)[0, 0].tolist() == [1, 1] and not np.asarray(mask)[0, 1:].any()


def test_every_network_indexes_and_compares_videos_shorter_than_the_comparator_needs():
    rng = np.random.default_rng(6)
    selector = SelectorNetwork()
    coarse = CoarseGrainedStudent(netvlad_clusters=4, netvlad_outdims=64,
                                  transformer_feedforward_dims=128)
    fine = FineGrainedStudent()
    teacher = ViSiLTeacher(dims=64)
    long_video = _videos(rng, [9])[0][0]
    for frames in (1, 2, 3):
        video = _videos(rng, [frames])[0][0]
        padded = np.concatenate([video, np.zeros((4 - frames, 9, 512), np.float32)])
        score = np.asarray(selector.index_video(video))
        assert score.shape == (1, 1) and np.isfinite(score).all()
        # Alone or in a padded batch next to a longer video: the same self-similarity.
        batch, mask = _videos(rng, [frames, 9])
        batch[0, :frames] = video
        batched = np.asarray(selector.index_video(batch, mask))
        np.testing.assert_allclose(batched[0], score[0], atol=1e-6)
        assert np.isfinite(np.asarray(coarse.index_video(video))).all()
        # Zero feature frames have zero similarity with everything: the definition.
        similarity = np.asarray(fine.calculate_video_similarity(
            fine.index_video(video), fine.index_video(long_video)))
        expected = np.asarray(fine.calculate_video_similarity(
            fine.index_video(padded), fine.index_video(long_video)))
        np.testing.assert_allclose(similarity, expected, atol=1e-6)
        small = video[..., :64]
        teacher_score = np.asarray(teacher.calculate_video_similarity(
            teacher.index_video(small), teacher.index_video(long_video[..., :64])))
        assert np.isfinite(teacher_score).all() and np.abs(teacher_score).max() <= 1
