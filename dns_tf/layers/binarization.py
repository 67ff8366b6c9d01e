"""Binarization of region vectors into hash codes (the S^f_B student)."""

import math

import keras
from keras import ops

from dns_tf.layers.ops import l2_normalize


@keras.saving.register_keras_serializable(package="dns_tf")
class Binarization(keras.layers.Layer):
    """Projects unit region vectors and binarizes them to {-1, +1}.

    At inference ``sign(W^T x)``; while training the sign is relaxed to
    ``erf(W^T x / sqrt(2 sigma))`` so gradients flow (sigma 1e-6, as in the paper). The projection
    is usually initialised from ITQ (``itq_resnet50W.pth``'s ``proj``).

    Args:
        bits: code length per region (512 in the paper).
        sigma: variance of the erf relaxation used while training.
        projection_initializer: initializer of ``W`` ``[D, bits]`` (e.g. the ITQ projection
            wrapped in ``keras.initializers.Constant``).

    Call arguments:
        inputs: region vectors ``[..., D]``.
        training: relaxed codes when True, signs otherwise.

    Returns:
        Codes ``[..., bits]`` in {-1, 0, +1} (0 only where the projection is exactly 0).

    References:
        Kordopatis-Zilos et al., "DnS", IJCV 2022, Sec. 4.2.
    """

    def __init__(self, bits=512, sigma=1e-6, projection_initializer="random_uniform", **kwargs):
        super().__init__(**kwargs)
        self.bits = bits
        self.sigma = sigma
        self.projection_initializer = keras.initializers.get(projection_initializer)

    def build(self, input_shape):
        self.projection = self.add_weight(
            name="projection", shape=(input_shape[-1], self.bits),
            initializer=self.projection_initializer)

    def call(self, inputs, training=False):
        projected = ops.matmul(l2_normalize(inputs), self.projection)
        if training:
            return ops.erf(projected / math.sqrt(2.0 * self.sigma))
        return ops.sign(projected)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.bits)

    def get_config(self):
        return {
            **super().get_config(),
            "bits": self.bits,
            "sigma": self.sigma,
            "projection_initializer": keras.initializers.serialize(self.projection_initializer),
        }
