"""The ViSiL teacher: L2-constrained attention on 3840-d regions and the fine-grained head."""

import keras
from keras import ops

from dns_tf.layers import Attention, VideoComparator
from dns_tf.layers.ops import zero_masked
from dns_tf.models.fine_grained import FineGrainedSimilarityModel
from dns_tf.models.inputs import video_batch

TEACHER_DIMS = 3840  # L3-iMAC regions, whitened but not reduced


@keras.saving.register_keras_serializable(package="dns_tf")
class ViSiLTeacher(FineGrainedSimilarityModel):
    """ViSiL: the fine-grained teacher that labels pairs for the students.

    Args:
        dims: region feature dimensions (3840).
        attention: apply the L2-constrained region attention in ``index_video``.

    Example:

    >>> teacher = ViSiLTeacher()
    >>> q, t = teacher.index_video(query_features), teacher.index_video(target_features)
    >>> teacher.calculate_video_similarity(q, t)   # [1, 1]

    References:
        Kordopatis-Zilos et al., "ViSiL: Fine-grained Spatio-Temporal Video Similarity
        Learning", ICCV 2019.
    """

    def __init__(self, dims=TEACHER_DIMS, attention=True, **kwargs):
        kwargs.setdefault("name", "visil_teacher")
        super().__init__(**kwargs)
        self.dims = dims
        self.attention = Attention(l2_constrained=True, name="attention") if attention else None
        self.comparator = VideoComparator(padding="replicate", name="comparator")
        self.build((None, None, None, dims))

    def build(self, input_shape):
        if self.attention is not None:
            self.attention.build(input_shape)
        self.comparator.build((None, None, None))
        self.built = True

    def index_video(self, features, mask=None, training=False):
        """Region features ``[B, T, R, D]`` (or ``[T, R, D]``) with attention applied."""
        squeeze = len(ops.shape(features)) == 3
        features, mask = video_batch(features, mask)
        if self.attention is not None:
            features = self.attention(features)
        features = zero_masked(features, mask[:, :, None, None])
        return features[0] if squeeze else features

    def call(self, features, padding_mask=None, training=False):
        return self.index_video(features, padding_mask, training=training)

    def get_config(self):
        return {**super().get_config(), "dims": self.dims,
                "attention": self.attention is not None}
