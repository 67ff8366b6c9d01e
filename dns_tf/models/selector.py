"""The DnS selector: decides per query-target pair whether the fine student is needed."""

import keras
from keras import ops

from dns_tf.layers import Attention, VideoComparator
from dns_tf.layers.ops import zero_masked
from dns_tf.layers.similarity import paired_mask
from dns_tf.models.inputs import video_batch
from dns_tf.models.students import FEATURE_DIMS


@keras.saving.register_keras_serializable(package="dns_tf")
class SelectorNetwork(keras.Model):
    """Scores how much a pair would gain from fine-grained re-ranking.

    Each video is summarised once, at indexing time, by a self-similarity score: attention over
    regions, the frame-to-frame similarity of the video with itself, the video comparator, and a
    masked mean. The MLP reads ``[query score, target score, coarse similarity]`` and outputs a
    probability that the coarse similarity is far from the fine one.

    Args:
        dims: region feature dimensions D.
        hidden_size: width of the MLP (100).
        num_layers: hidden blocks after the first (1).
        dropout: dropout rate of the MLP while training (0.5).
    """

    def __init__(self, dims=FEATURE_DIMS, hidden_size=100, num_layers=1, dropout=0.5, **kwargs):
        super().__init__(**kwargs)
        self.dims = dims
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.attention = Attention(name="attention")
        self.comparator = VideoComparator(name="comparator")
        blocks = []
        for i in range(num_layers + 1):
            blocks += [
                keras.layers.Dense(hidden_size, use_bias=False,
                                   kernel_initializer="glorot_uniform", name=f"dense_{i}"),
                keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                                name=f"batch_norm_{i}"),
                keras.layers.ReLU(),
                keras.layers.Dropout(dropout),
            ]
        blocks.append(keras.layers.Dense(1, activation="sigmoid",
                                         kernel_initializer="glorot_uniform", name="output"))
        self.mlp = keras.Sequential(blocks, name="mlp")
        self.build((None, None, None, dims))

    def build(self, input_shape):
        self.attention.build(input_shape)
        self.comparator.build((None, None, None))
        self.mlp.build((None, 3))
        self.built = True

    def index_video(self, videos, mask=None):
        """Region features ``[B, T, R, D]`` (or ``[T, R, D]``) -> self-similarity ``[B, 1]``."""
        videos, mask = video_batch(videos, mask)
        # Mean over all region pairs of dot products = dot product of region means.
        frames = ops.mean(self.attention(videos), axis=2)  # [B, T, D]
        similarity = ops.matmul(frames, ops.transpose(frames, (0, 2, 1)))
        pair_mask = paired_mask(mask, mask)
        similarity = zero_masked(similarity, pair_mask)
        refined, pooled_mask = self.comparator(similarity, pair_mask)
        refined = zero_masked(refined, pooled_mask)
        score = ops.sum(refined, axis=(1, 2)) / ops.sum(pooled_mask, axis=(1, 2))
        return score[:, None]

    def score(self, mlp_input, training=False):
        """``[N, 3]`` rows of (query score, target score, coarse similarity) -> ``[N, 1]``."""
        return self.mlp(ops.convert_to_tensor(mlp_input, dtype="float32"), training=training)

    def call(self, mlp_input, training=False):
        return self.score(mlp_input, training=training)

    def get_config(self):
        return {**super().get_config(), "dims": self.dims, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "dropout": self.dropout}
