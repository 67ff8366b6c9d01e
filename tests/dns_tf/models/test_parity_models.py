"""Every network against the tensors the authors' PyTorch code computes (reference/parity.npz)."""

import math

import numpy as np
import pytest

from dns_tf.convert import load_official

TOLERANCE = 1e-5


def max_error(actual, expected):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)))


@pytest.fixture(scope="module")
def inputs(parity):
    return (parity["inputs.videos"], parity["inputs.masks"],
            parity["inputs.query"], parity["inputs.query_mask"])


@pytest.fixture(scope="module", params=["fg_att", "fg_bin", "fg_none"])
def fine_student(request, checkpoints):
    return request.param, load_official(checkpoints / f"{request.param}_student.pth")


def test_fine_student_kind_detected(fine_student):
    name, student = fine_student
    assert student.kind == {"fg_att": "attention", "fg_bin": "binarization",
                            "fg_none": "none"}[name]


def test_fine_student_inference(fine_student, parity, inputs):
    name, student = fine_student
    videos, masks, query, query_mask = inputs
    index = student.index_video(videos, masks)
    query_index = student.index_video(query, query_mask)
    assert max_error(index, parity[f"{name}.index"]) <= TOLERANCE
    assert max_error(query_index, parity[f"{name}.query_index"]) <= TOLERANCE

    similarity = student.calculate_video_similarity(query_index, index, query_mask, masks)
    assert max_error(similarity, parity[f"{name}.similarity"]) <= TOLERANCE

    f2f, _ = student.frame_to_frame_similarity(query_index, index[:1], query_mask, masks[:1])
    assert max_error(f2f, parity[f"{name}.f2f"]) <= TOLERANCE
    matrix, matrix_mask = student.similarity_matrix(query_index, index[:1], query_mask, masks[:1])
    assert max_error(matrix, parity[f"{name}.sim_matrix"]) <= TOLERANCE
    assert max_error(matrix_mask, parity[f"{name}.sim_matrix_mask"]) == 0.0


def test_fine_student_training_forward(fine_student, parity, inputs):
    """(anchor, positive, negative) = videos (0, 1, 2), indexed in training mode."""
    name, student = fine_student
    videos, masks, _, _ = inputs
    index = student.index_video(videos, masks, training=True)
    positive, positive_reg = student.paired_similarity(index[0:1], index[1:2], masks[0:1], masks[1:2])
    negative, negative_reg = student.paired_similarity(index[0:1], index[2:3], masks[0:1], masks[2:3])
    assert max_error(np.reshape(positive, (1, 1)), parity[f"{name}.train_pos"]) <= TOLERANCE
    assert max_error(np.reshape(negative, (1, 1)), parity[f"{name}.train_neg"]) <= TOLERANCE
    assert abs(float(positive_reg + negative_reg) - float(parity[f"{name}.train_reg"])) <= TOLERANCE


def test_binarization_training_mode(checkpoints, parity, inputs):
    """erf(x / sqrt(2 sigma)) with sigma 1e-6 has slope up to 564 at 0, so float32 rounding of
    the projection (~5e-8, summation order of any BLAS) is amplified there. We hold 1e-5 wherever
    the slope times 1e-7 stays below it, and the slope-scaled bound everywhere else."""
    student = load_official(checkpoints / "fg_bin_student.pth")
    videos, masks, _, _ = inputs
    relaxed = np.asarray(student.index_video(videos, masks, training=True))
    expected = parity["fg_bin.index_train"]
    sigma = student.binarization.sigma
    projection = np.asarray(student.binarization.projection)
    unit = videos / np.maximum(np.linalg.norm(videos, axis=-1, keepdims=True), 1e-12)
    pre_activation = (unit @ projection) / math.sqrt(2 * sigma)
    slope = 2 / math.sqrt(math.pi) * np.exp(-pre_activation ** 2) / math.sqrt(2 * sigma)
    error = np.abs(relaxed - expected)
    assert np.all(error <= TOLERANCE + slope * 1e-7)
    assert np.mean(error <= TOLERANCE) > 0.99
    assert np.all(np.abs(relaxed) <= 1.0)
    # Inference mode gives the signs of the same projection.
    assert np.array_equal(np.asarray(student.index_video(videos, masks)), parity["fg_bin.index"])


def test_coarse_student(checkpoints, parity, inputs):
    student = load_official(checkpoints / "cg_student.pth")
    assert student.netvlad_clusters == 8 and student.netvlad_outdims == 128
    assert student.transformer_feedforward_dims == 256 and student.transformer_heads == 8
    videos, masks, query, query_mask = inputs
    index = student.index_video(videos, masks)
    query_index = student.index_video(query, query_mask)
    assert max_error(index, parity["cg.index"]) <= TOLERANCE
    assert max_error(query_index, parity["cg.query_index"]) <= TOLERANCE
    similarity = student.calculate_video_similarity(query_index, index)
    assert max_error(similarity, parity["cg.similarity"]) <= TOLERANCE
    # Each video alone, unpadded and without a mask, equals its row of the masked batch.
    single = np.concatenate([student.index_video(videos[i, :int(masks[i].sum())])
                             for i in range(len(videos))])
    assert max_error(single, parity["cg.index_single"]) <= TOLERANCE


def test_selector(checkpoints, parity, inputs):
    selector = load_official(checkpoints / "selector.pth")
    videos, masks, query, query_mask = inputs
    assert max_error(selector.index_video(videos, masks), parity["selector.index"]) <= TOLERANCE
    assert max_error(selector.index_video(query, query_mask),
                     parity["selector.query_index"]) <= TOLERANCE
    assert max_error(selector.score(parity["selector.mlp_input"]),
                     parity["selector.score"]) <= TOLERANCE


def test_teacher(checkpoints, parity):
    teacher = load_official(checkpoints / "visil_teacher.pth")
    assert teacher.dims == 3840
    query = teacher.index_video(parity["teacher.query_features"][None])
    target = teacher.index_video(parity["teacher.target_features"][None])
    assert max_error(query, parity["teacher.query_prepared"]) <= TOLERANCE
    assert max_error(target, parity["teacher.target_prepared"]) <= TOLERANCE
    f2f, mask = teacher.frame_to_frame_similarity(query, target)
    assert max_error(f2f, parity["teacher.f2f"]) <= TOLERANCE
    output, _ = teacher.comparator(f2f, mask)
    assert max_error(np.reshape(output, (1, 2, 1)), parity["teacher.visil_output"]) <= TOLERANCE
    similarity = teacher.calculate_video_similarity(query, target)
    assert max_error(np.reshape(similarity, (1,)), parity["teacher.similarity"]) <= TOLERANCE
    # Unbatched [T, R, D] inputs work too.
    unbatched = teacher.calculate_video_similarity(
        teacher.index_video(parity["teacher.query_features"]),
        teacher.index_video(parity["teacher.target_features"]))
    assert max_error(np.reshape(unbatched, (1,)), parity["teacher.similarity"]) <= TOLERANCE
