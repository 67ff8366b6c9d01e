"""NetVLAD pooling of frame vectors into one video vector (the S^c student)."""

import math

import keras
from keras import ops

from dns_tf.layers.ops import l2_normalize


@keras.saving.register_keras_serializable(package="dns_tf")
class NetVLAD(keras.layers.Layer):
    """Aggregates a set of descriptors into residuals around learned cluster centres.

    Soft-assigns each descriptor to ``clusters`` centres, sums the assignment-weighted residuals
    per centre, intra-normalises each centre's residual, L2-normalises the whole, reduces it
    linearly to ``output_dims`` and applies LayerNorm. Padded descriptors (mask 0) contribute
    nothing.

    Args:
        clusters: number of cluster centres K (64 in the paper).
        output_dims: size of the linear reduction of the ``K * D`` vector (1024 in the paper);
            None keeps ``K * D``.

    Call arguments:
        inputs: descriptors ``[B, N, D]``.
        padding_mask: optional ``[B, N]``, 1 for real descriptors, 0 for padding.

    Returns:
        ``[B, output_dims]``.

    References:
        Arandjelovic et al., "NetVLAD: CNN architecture for weakly supervised place
        recognition", CVPR 2016.
    """

    def __init__(self, clusters=64, output_dims=1024, **kwargs):
        super().__init__(**kwargs)
        self.clusters = clusters
        self.output_dims = output_dims

    def build(self, input_shape):
        dims = input_shape[-1]
        self.centroids = self.add_weight(
            name="centroids", shape=(self.clusters, dims),
            initializer=keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(dims)))
        # The assignment is a separate 1x1 convolution (initialised like the centroids in the
        # reference, then trained independently), so it is its own weight.
        self.assignment = self.add_weight(
            name="assignment", shape=(dims, self.clusters),
            initializer=keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(dims)))
        vlad_dims = self.clusters * dims
        if self.output_dims is not None:
            self.reduction = keras.layers.Dense(
                self.output_dims, use_bias=False, name="reduction",
                kernel_initializer=keras.initializers.RandomNormal(
                    stddev=1.0 / math.sqrt(vlad_dims)), dtype=self.dtype_policy)
            self.reduction.build((None, vlad_dims))
        else:
            self.reduction = None
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5, name="norm",
                                                    dtype=self.dtype_policy)
        self.norm.build((None, self.output_dims or vlad_dims))

    def call(self, inputs, padding_mask=None):
        assignment = ops.softmax(ops.matmul(inputs, self.assignment), axis=-1)  # [B, N, K]
        if padding_mask is not None:
            assignment = assignment * ops.cast(padding_mask, assignment.dtype)[..., None]
        # sum_n a_nk (x_n - c_k) = sum_n a_nk x_n - (sum_n a_nk) c_k
        vlad = ops.einsum("bnk,bnd->bkd", assignment, inputs)
        vlad = vlad - ops.sum(assignment, axis=1)[..., None] * self.centroids[None]
        vlad = l2_normalize(vlad, axis=-1)
        vlad = ops.reshape(vlad, (ops.shape(vlad)[0], -1))
        vlad = l2_normalize(vlad, axis=-1)
        if self.reduction is not None:
            vlad = self.reduction(vlad)
        return self.norm(vlad)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dims or self.clusters * input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "clusters": self.clusters,
                "output_dims": self.output_dims}
