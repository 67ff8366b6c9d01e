"""Training on (anchor, positive, negative) batches: the forward pass teacher and students share.

Both the teacher (triplet loss on labelled triplets) and the students (L1 to the teacher's
similarities of an anchor to its positive and its negative) compare each anchor with two videos.
:class:`TripletModel` is that common part; subclasses say only how the two similarities become
losses.
"""

from __future__ import annotations

from keras import ops

from dns_tf.models import CoarseGrainedStudent
from training.trainer import NetworkTrainer

ROLES = ("anchor", "positive", "negative")


def is_coarse(network) -> bool:
    """Whether ``network`` compares videos by one vector each (no comparator to regularise)."""
    return isinstance(network, CoarseGrainedStudent)


class TripletModel(NetworkTrainer):
    """Trains ``network`` on batches of ``anchor``, ``positive``, ``negative`` ``[B, T, R, D]``
    with their ``*_mask`` ``[B, T]`` (all three padded to one T), as the tf.data pipelines of
    :mod:`dns_tf.data.pipelines` produce them.

    Args:
        network: a fine-grained network (``index_video`` + ``paired_similarity``) or a
            :class:`~dns_tf.models.CoarseGrainedStudent` (``index_video``, dot products).
        loss_names: as in :class:`~training.trainer.NetworkTrainer`.
    """

    def __init__(self, network, loss_names=("loss",), **kwargs):
        super().__init__(network, loss_names, **kwargs)
        self.coarse = is_coarse(network)

    def call(self, batch, training=False):
        """Similarities of each anchor to its positive and its negative.

        Returns:
            ``(similarities [B, 2], regularization)``: column 0 the positive, column 1 the
            negative; ``regularization`` is the similarity-regularisation loss summed over the
            batch's comparator outputs (0 for the coarse student, which has no comparator).
        """
        videos = ops.concatenate([batch[role] for role in ROLES], axis=0)
        masks = ops.concatenate([batch[f"{role}_mask"] for role in ROLES], axis=0)
        anchors, positives, negatives = ops.split(
            self.network.index_video(videos, masks, training=training), 3, axis=0)
        if self.coarse:
            similarities = ops.stack([ops.sum(anchors * positives, axis=-1),
                                      ops.sum(anchors * negatives, axis=-1)], axis=1)
            return similarities, ops.zeros(())
        anchor_mask = batch["anchor_mask"]
        # One comparator call for both: [anchors; anchors] against [positives; negatives].
        similarity, regularization = self.network.paired_similarity(
            ops.concatenate([anchors, anchors], axis=0),
            ops.concatenate([positives, negatives], axis=0),
            ops.concatenate([anchor_mask, anchor_mask], axis=0),
            ops.concatenate([batch["positive_mask"], batch["negative_mask"]], axis=0))
        return ops.stack(ops.split(similarity, 2, axis=0), axis=1), regularization
