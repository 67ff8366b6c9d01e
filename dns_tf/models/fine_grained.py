"""ViSiL's fine-grained similarity head, shared by the teacher and the fine-grained students.

frames x regions of two videos -> region chamfer per frame pair -> frame-to-frame matrix
-> video comparator CNN -> hardtanh -> chamfer over the matrix -> one similarity.
"""

import keras
from keras import ops

from dns_tf.layers.ops import hardtanh, zero_masked
from dns_tf.layers.similarity import (chamfer_similarity, pair_mask, paired_mask,
                                      region_chamfer_all_pairs, region_chamfer_paired)
from dns_tf.localization.networks import localize
from dns_tf.localization.temporal_network import LocalizationConfig
from dns_tf.models.inputs import video_batch
from dns_tf.models.losses import similarity_regularization


class FineGrainedSimilarityModel(keras.Model):
    """Base of the models that compare videos frame by frame and region by region.

    Subclasses create ``self.comparator`` (a :class:`~dns_tf.layers.VideoComparator`) and implement
    ``index_video``; ``frame_scale`` rescales raw region dot products (1/bits for binary codes).
    Inputs are indexed videos ``[T, R, D]`` or padded batches ``[N, T, R, D]`` with masks
    ``[N, T]``.
    """

    frame_scale = 1.0

    def frame_to_frame_similarity(self, query, target, query_mask=None, target_mask=None,
                                  batched=False):
        """Region-chamfer similarity of every frame pair.

        Returns:
            ``(similarity, mask)``, each ``[Nq * Nt, Tq, Tt]`` (query-major) or, when
            ``batched``, ``[N, Tq, Tt]`` for query i against target i.
        """
        query, query_mask = video_batch(query, query_mask)
        target, target_mask = video_batch(target, target_mask)
        if batched:
            similarity = region_chamfer_paired(query, target)
            mask = paired_mask(query_mask, target_mask)
        else:
            similarity = region_chamfer_all_pairs(query, target)
            mask = pair_mask(query_mask, target_mask)
            new_shape = (-1, ops.shape(similarity)[2], ops.shape(similarity)[3])
            similarity = ops.reshape(similarity, new_shape)
            mask = ops.reshape(mask, new_shape)
        if self.frame_scale != 1.0:
            similarity = similarity * self.frame_scale
        return zero_masked(similarity, mask), mask

    def similarity_matrix(self, query, target, query_mask=None, target_mask=None, batched=False):
        """The comparator's refined matrix after hardtanh, and its pooled mask."""
        similarity, mask = self.frame_to_frame_similarity(
            query, target, query_mask, target_mask, batched=batched)
        refined, mask = self.comparator(similarity, mask)
        return hardtanh(refined), mask

    def calculate_video_similarity(self, query, target, query_mask=None, target_mask=None):
        """Similarity of every query against every target video: ``[Nq, Nt]``."""
        num_queries = 1 if len(ops.shape(query)) == 3 else ops.shape(query)[0]
        similarity, mask = self.similarity_matrix(query, target, query_mask, target_mask)
        return ops.reshape(chamfer_similarity(similarity, mask, max_axis=2, mean_axis=1),
                           (num_queries, -1))

    def localize(self, query, target, config=None, fps=1.0):
        """Copied segments of indexed ``query`` ``[Tq, R, D]`` in ``target`` ``[Tt, R, D]``, in
        seconds, best first (:func:`dns_tf.localization.localize`)."""
        return localize(self, query, target, config or LocalizationConfig(), fps)

    def paired_similarity(self, query, target, query_mask, target_mask):
        """Training forward on indexed pairs: query i against target i.

        Returns:
            ``(similarity [N], regularization)`` where ``regularization`` is the
            similarity-regularisation loss of the comparator outputs.
        """
        similarity, mask = self.frame_to_frame_similarity(
            query, target, query_mask, target_mask, batched=True)
        refined, mask = self.comparator(similarity, mask)
        regularization = similarity_regularization(refined)
        return chamfer_similarity(hardtanh(refined), mask, max_axis=2, mean_axis=1), regularization
