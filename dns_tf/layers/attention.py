"""Region attention: how much each region vector counts."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dns_tf")
class Attention(keras.layers.Layer):
    """Weights region vectors by a learned attention score in (0, 1).

    Two forms, as in the papers:

    - gated (DnS students and selector): ``w = sigmoid(u^T tanh(W x + b))``;
    - L2-constrained (the ViSiL teacher): ``w = u^T x / 2 + 1/2`` with ``||u|| = 1``, so for unit
      region vectors the weight stays in [0, 1] without a non-linearity.

    Args:
        l2_constrained: use the ViSiL form instead of the gated one.

    Call arguments:
        inputs: region vectors ``[..., D]``.
        return_weights: also return the weights ``[..., 1]``.

    Returns:
        ``inputs * w`` with the shape of ``inputs`` (and ``w`` if asked).

    Example:

    >>> x = keras.random.normal((2, 10, 9, 512))   # [B, T, R, D]
    >>> Attention()(x).shape
    (2, 10, 9, 512)

    References:
        Kordopatis-Zilos et al., "DnS: Distill-and-Select for Efficient and Accurate Video
        Indexing and Retrieval", IJCV 2022; "ViSiL: Fine-grained Spatio-Temporal Video Similarity
        Learning", ICCV 2019.
    """

    def __init__(self, l2_constrained=False, **kwargs):
        super().__init__(**kwargs)
        self.l2_constrained = l2_constrained

    def build(self, input_shape):
        dims = input_shape[-1]
        if self.l2_constrained:
            self.transform = None
            self.context_vector = keras.layers.Dense(
                1, use_bias=False, kernel_initializer="random_normal",
                kernel_constraint=keras.constraints.UnitNorm(axis=0), name="context_vector",
                dtype=self.dtype_policy)
        else:
            self.transform = keras.layers.Dense(
                dims, activation="tanh", kernel_initializer="glorot_uniform", name="transform",
                dtype=self.dtype_policy)
            self.transform.build(input_shape)
            self.context_vector = keras.layers.Dense(
                1, use_bias=False, kernel_initializer="glorot_uniform", name="context_vector",
                dtype=self.dtype_policy)
        self.context_vector.build(input_shape)

    def attention_weights(self, inputs):
        """The weights ``[..., 1]`` of ``inputs`` ``[..., D]``."""
        if self.l2_constrained:
            return self.context_vector(inputs) / 2.0 + 0.5
        return ops.sigmoid(self.context_vector(self.transform(inputs)))

    def call(self, inputs, return_weights=False):
        weights = self.attention_weights(inputs)
        if return_weights:
            return inputs * weights, weights
        return inputs * weights

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "l2_constrained": self.l2_constrained}
