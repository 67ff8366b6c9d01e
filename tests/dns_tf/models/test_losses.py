"""Losses against the reference values."""

import numpy as np

from dns_tf.models.losses import distillation_loss, similarity_regularization, triplet_loss


def test_similarity_regularization(parity):
    value = float(similarity_regularization(parity["losses.sim"]))
    assert abs(value - float(parity["losses.similarity_regularization"])) <= 1e-5
    assert value > 0  # the fixture has scores outside [-1, 1]


def test_triplet_loss(parity):
    positive, negative = parity["losses.sim_pos"], parity["losses.sim_neg"]
    for margin, key in ((1.0, "losses.triplet_gamma1"), (0.5, "losses.triplet_gamma05")):
        assert abs(float(triplet_loss(positive, negative, margin)) - float(parity[key])) <= 1e-6


def test_distillation_loss_is_mean_absolute_error():
    student = np.array([0.2, 0.9, -0.5], np.float32)
    teacher = np.array([0.0, 1.0, -0.5], np.float32)
    assert abs(float(distillation_loss(student, teacher)) - 0.1) < 1e-7
