"""FastFineSimilarity: exactly the student's per-pair similarity, for many targets at once."""

import numpy as np
import pytest

from dns_tf.convert import load_official
from dns_tf.fine_representation import pack_bits, unpack_bits
from dns_tf.similarity_fast import (MIN_FRAMES, FastFineSimilarity, _chunk_sizes, length_batches,
                                    packed_words)

# Lengths around every pooling boundary, plus videos shorter than the comparator's minimum.
TARGET_LENGTHS = (1, 3, 4, 5, 6, 7, 8, 9, 12, 17, 30, 33)


@pytest.fixture(scope="module", params=["fg_att", "fg_bin"])
def student(request, checkpoints):
    return load_official(checkpoints / f"{request.param}_student.pth")


def unit_regions(rng, frames):
    """Random region vectors of unit norm, like PCA-whitened L3-iMAC features ``[T, 9, 512]``."""
    features = rng.standard_normal((frames, 9, 512), dtype=np.float32)
    return features / np.linalg.norm(features, axis=-1, keepdims=True)


def stored(student, features):
    """What an index keeps: packed codes for S^f_B, float16 features otherwise."""
    indexed = np.asarray(student.index_video(features))
    return pack_bits(indexed) if student.kind == "binarization" else indexed.astype(np.float16)


def as_model_input(student, stored_video):
    return (unpack_bits(stored_video) if student.kind == "binarization"
            else stored_video.astype(np.float32))


def per_pair(student, query, target):
    """The student's own similarity of one unpadded pair (the authors' evaluation)."""
    return float(np.asarray(student.calculate_video_similarity(
        as_model_input(student, query), as_model_input(student, target)))[0, 0])


@pytest.fixture(scope="module")
def videos(student):
    rng = np.random.default_rng(7)
    query_features = unit_regions(rng, 11)
    targets = []
    for length in TARGET_LENGTHS:
        # Half the targets share frames with the query, so similarities are not all near 0.
        features = unit_regions(rng, length)
        if length % 2:
            take = min(length, len(query_features))
            features[:take] += query_features[:take]
        targets.append(stored(student, features))
    return stored(student, query_features), targets


def test_hamming_frame_similarity_equals_float_path_bit_for_bit(checkpoints):
    student = load_official(checkpoints / "fg_bin_student.pth")
    rng = np.random.default_rng(0)
    query = stored(student, unit_regions(rng, 13))
    targets = [stored(student, unit_regions(rng, length))
               for length in (1, 4, 7, 40, 300)]  # 300 frames span several XLA chunks
    matrices = FastFineSimilarity(student, batch_size=2).frame_to_frame(query, targets)
    for target, matrix in zip(targets, matrices):
        expected, _ = student.frame_to_frame_similarity(unpack_bits(query), unpack_bits(target))
        expected = np.asarray(expected)[0]
        assert matrix.shape == expected.shape
        assert matrix.dtype == np.float32
        np.testing.assert_array_equal(matrix, expected)


def test_float_frame_similarity_matches_student(checkpoints):
    student = load_official(checkpoints / "fg_att_student.pth")
    rng = np.random.default_rng(1)
    query = stored(student, unit_regions(rng, 6))
    targets = [stored(student, unit_regions(rng, n))
               for n in (3, 9)]
    for target, matrix in zip(targets, FastFineSimilarity(student).frame_to_frame(query, targets)):
        expected, _ = student.frame_to_frame_similarity(query.astype(np.float32),
                                                        target.astype(np.float32))
        np.testing.assert_allclose(matrix, np.asarray(expected)[0], atol=1e-6)


def test_equal_length_targets_match_per_pair_similarity(student):
    rng = np.random.default_rng(2)
    query = stored(student, unit_regions(rng, 20))
    targets = [stored(student, unit_regions(rng, 16))
               for _ in range(5)]
    scores = FastFineSimilarity(student, batch_size=2)(query, targets)
    expected = [per_pair(student, query, target) for target in targets]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_any_length_matches_per_pair_similarity(student, videos):
    """Padding in a batch never changes a score: each equals the unpadded pair's."""
    query, targets = videos
    scores = FastFineSimilarity(student, batch_size=4)(query, targets)
    for length, target, score in zip(TARGET_LENGTHS, targets, scores):
        assert score == pytest.approx(per_pair(student, query, target), abs=1e-5), length
    assert np.all(np.abs(scores) < 1) and np.ptp(scores) > 0.02  # not saturated, not constant


def test_scores_do_not_depend_on_batching(student, videos):
    query, targets = videos
    one_by_one = FastFineSimilarity(student, batch_size=1)(query, targets)
    batched = FastFineSimilarity(student, batch_size=64)(query, targets[::-1])[::-1]
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)


def test_short_videos_compare_as_if_padded_with_zero_similarity_frames(checkpoints):
    # S^f_A features of zero frames have zero dot products: padding the stored video with
    # zero frames (counted as real) is exactly the definition for videos under MIN_FRAMES.
    student = load_official(checkpoints / "fg_att_student.pth")
    rng = np.random.default_rng(3)
    query = stored(student, unit_regions(rng, 9))
    for length in (1, 2, 3):
        target = stored(student, unit_regions(rng, length))
        padded = np.concatenate([target, np.zeros((MIN_FRAMES - length, 9, 512), np.float16)])
        score = FastFineSimilarity(student)(query, [target])[0]
        assert score == pytest.approx(per_pair(student, query, padded), abs=1e-5)
        # the student itself (whose comparator pads) gives the same number
        assert score == pytest.approx(per_pair(student, query, target), abs=1e-5)
        # and the same holds for a short query
        score = FastFineSimilarity(student)(target, [query])[0]
        assert score == pytest.approx(per_pair(student, padded, query), abs=1e-5)
        assert score == pytest.approx(per_pair(student, target, query), abs=1e-5)


def test_unpadded_pair_matches_the_authors_number(checkpoints, parity):
    """parity's video 1 is the longest of its batch, so the authors' padded batch did not pad it."""
    student = load_official(checkpoints / "fg_bin_student.pth")
    index = np.asarray(parity["fg_bin.index"])
    query = pack_bits(np.asarray(parity["fg_bin.query_index"])[0])
    target = pack_bits(index[1, :int(parity["inputs.masks"][1].sum())])
    score = FastFineSimilarity(student)(query, [target])[0]
    assert score == pytest.approx(float(parity["fg_bin.similarity"][0, 1]), abs=1e-5)


def test_wrong_representation_is_refused(checkpoints):
    attention = FastFineSimilarity(load_official(checkpoints / "fg_att_student.pth"))
    binary = FastFineSimilarity(load_official(checkpoints / "fg_bin_student.pth"))
    codes = np.zeros((5, 9, 64), np.uint8)
    features = np.zeros((5, 9, 512), np.float16)
    with pytest.raises(ValueError, match="packed codes"):
        attention(codes, [codes])
    with pytest.raises(ValueError, match=r"\[T, R, 64\] uint8"):
        binary(features, [features])
    with pytest.raises(ValueError, match="target 1"):
        binary(codes, [codes, codes[:, :, :32]])
    with pytest.raises(ValueError, match="T >= 1"):
        binary(codes, [codes[:0]])


def test_length_batches_group_similar_lengths():
    lengths = [50, 3, 200, 7, 51, 52, 8, 210]
    batches = length_batches(lengths, batch_size=2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert all(len(batch) <= 2 for batch in batches)
    for batch in batches:
        members = [lengths[i] for i in batch]
        assert max(members) <= 1.25 * min(members) + 4


def test_chunks_cover_frames_with_few_calls():
    for frames in (1, 127, 128, 129, 3840, 15360, 20000):
        sizes = _chunk_sizes(frames)
        assert frames <= sum(sizes) < frames + 128
        assert len(sizes) <= frames // 2048 + 5


def test_packed_words_view_the_same_bytes():
    packed = np.random.default_rng(0).integers(0, 256, (3, 9, 64), dtype=np.uint8)
    words = packed_words(packed)
    assert words.dtype == np.uint64 and words.shape == (3, 9, 8)
    assert words.tobytes() == packed.tobytes()
    assert packed_words(packed[..., :12]).dtype == np.uint32


def test_no_targets(checkpoints):
    similarity = FastFineSimilarity(load_official(checkpoints / "fg_bin_student.pth"))
    assert similarity(np.zeros((5, 9, 64), np.uint8), []).shape == (0,)
