"""Losses of DnS: distillation (L1), similarity regularisation and the triplet loss."""

from keras import ops


def distillation_loss(student_similarity, teacher_similarity):
    """Mean absolute difference between student and teacher similarities (the L1 of DnS)."""
    return ops.mean(ops.abs(student_similarity - teacher_similarity))


def similarity_regularization(similarity, min_value=-1.0, max_value=1.0):
    """Sum of how far comparator outputs leave ``[min_value, max_value]``.

    Applied to the comparator output before hardtanh, it keeps scores where hardtanh still passes
    gradients (ViSiL, Sec. 3.4).
    """
    return (ops.sum(ops.relu(min_value - similarity))
            + ops.sum(ops.relu(similarity - max_value)))


def triplet_loss(positive_similarity, negative_similarity, margin=1.0):
    """``mean(max(0, s(a, n) - s(a, p) + margin))`` over triplets."""
    return ops.mean(ops.relu(negative_similarity - positive_similarity + margin))
