"""ViSiL's video comparator: a small CNN reading frame-to-frame similarity matrices."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dns_tf")
class VideoComparator(keras.layers.Layer):
    """Refines a frame-to-frame similarity matrix with a four-layer CNN.

    Three blocks of (pad 1, 3x3 conv, ReLU), the first two followed by 2x2 max pooling
    (32, 64, 128 channels), then a 1x1 convolution to one channel. The frame mask is pooled
    alongside, and convolution outputs on padded frames are zeroed before each ReLU, so padding
    never leaks into real frames' scores. The output is not clipped: callers apply hardtanh.

    Args:
        padding: ``"zero"`` (the DnS students and selector) or ``"replicate"`` (the original
            ViSiL teacher, which repeats the border rows and columns).

    Call arguments:
        similarity: ``[B, N, M]`` frame-to-frame similarities.
        pair_mask: optional ``[B, N, M]`` 0/1 mask of real frame pairs.

    Returns:
        ``(output [B, N', M'], pooled_mask [B, N', M'] or None)`` with
        ``N' = floor(floor(N / 2) / 2)`` and likewise ``M'``.

    References:
        Kordopatis-Zilos et al., "ViSiL: Fine-grained Spatio-Temporal Video Similarity
        Learning", ICCV 2019.
    """

    FILTERS = (32, 64, 128)
    PADDING_MODES = ("zero", "replicate")

    def __init__(self, padding="zero", **kwargs):
        super().__init__(**kwargs)
        if padding not in self.PADDING_MODES:
            raise ValueError(f"padding must be one of {sorted(self.PADDING_MODES)}, got {padding!r}")
        self.padding = padding

    def build(self, similarity_shape, pair_mask_shape=None):
        self.convolutions = []
        channels = 1
        for index, filters in enumerate(self.FILTERS, start=1):
            conv = keras.layers.Conv2D(filters, 3, kernel_initializer="glorot_uniform",
                                       name=f"conv{index}")
            conv.build((None, None, None, channels))
            self.convolutions.append(conv)
            channels = filters
        self.final_convolution = keras.layers.Conv2D(
            1, 1, kernel_initializer="glorot_uniform", name="fconv")
        self.final_convolution.build((None, None, None, channels))
        self.pool = keras.layers.MaxPooling2D(2, 2)

    def _pad(self, x):
        """Pads ``[B, N, M, C]`` by one row and column on each side."""
        if self.padding == "zero":
            return ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        # Edge padding spelled out: not every backend's ops.pad supports mode="edge".
        x = ops.concatenate([x[:, :1], x, x[:, -1:]], axis=1)
        return ops.concatenate([x[:, :, :1], x, x[:, :, -1:]], axis=2)

    def call(self, similarity, pair_mask=None):
        x = similarity[..., None]
        mask = None if pair_mask is None else ops.cast(pair_mask, x.dtype)[..., None]
        for index, conv in enumerate(self.convolutions):
            x = conv(self._pad(x))
            if mask is not None:
                x = x * mask
            x = ops.relu(x)
            if index < len(self.convolutions) - 1:
                x = self.pool(x)
                if mask is not None:
                    mask = self.pool(mask)
        x = self.final_convolution(x)[..., 0]
        return x, (mask[..., 0] if mask is not None else None)

    def compute_output_shape(self, similarity_shape, pair_mask_shape=None):
        def pooled(n):
            return None if n is None else n // 4
        shape = (similarity_shape[0], pooled(similarity_shape[1]), pooled(similarity_shape[2]))
        return shape, (shape if pair_mask_shape is not None else None)

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}
