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

    Videos shorter than ``MIN_FRAMES`` (where two poolings by 2 leave nothing) are compared as if
    padded with zero-similarity frames, counted as real, up to ``MIN_FRAMES``: the matrix is padded
    with zeros and the mask of every video with 1 to 3 real frames is extended to its first
    ``MIN_FRAMES`` frames. Videos of ``MIN_FRAMES`` frames or more are untouched (same numbers).

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
    # Two 2x2 poolings: the smallest matrix side with an output.
    MIN_FRAMES = 4
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
                                       name=f"conv{index}", dtype=self.dtype_policy)
            conv.build((None, None, None, channels))
            self.convolutions.append(conv)
            channels = filters
        self.final_convolution = keras.layers.Conv2D(
            1, 1, kernel_initializer="glorot_uniform", name="fconv", dtype=self.dtype_policy)
        self.final_convolution.build((None, None, None, channels))
        self.pool = keras.layers.MaxPooling2D(2, 2, dtype=self.dtype_policy)

    def _pad(self, x):
        """Pads ``[B, N, M, C]`` by one row and column on each side."""
        if self.padding == "zero":
            return ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        # Edge padding spelled out: not every backend's ops.pad supports mode="edge".
        x = ops.concatenate([x[:, :1], x, x[:, -1:]], axis=1)
        return ops.concatenate([x[:, :, :1], x, x[:, :, -1:]], axis=2)

    def _at_least_min_frames(self, similarity, pair_mask):
        """Pads ``similarity [B, N, M]`` with zero rows/columns up to ``MIN_FRAMES`` and, for
        videos with 1 to ``MIN_FRAMES - 1`` real frames (also inside a padded batch), marks their
        first ``MIN_FRAMES`` frames real with zero similarity. Frame masks are read back from the
        pair mask: a frame is real if it pairs with any real frame."""
        sides = []
        for axis in (1, 2):
            size = similarity.shape[axis]
            if size is None:
                size = ops.shape(similarity)[axis]
                sides.append(ops.maximum(self.MIN_FRAMES - size, 0))
            else:
                sides.append(max(self.MIN_FRAMES - size, 0))
        padding = ((0, 0), (0, sides[0]), (0, sides[1]))
        if not all(isinstance(side, int) and side == 0 for side in sides):
            similarity = ops.pad(similarity, padding)
            if pair_mask is not None:
                pair_mask = ops.pad(ops.cast(pair_mask, similarity.dtype), padding)
        if pair_mask is None:
            return similarity, None
        pair_mask = ops.cast(pair_mask, similarity.dtype)

        def added(frames, size):
            """``[B, size]`` 0/1 frames -> the frames added to short videos (first MIN_FRAMES)."""
            length = ops.sum(frames, axis=1, keepdims=True)
            short = ops.logical_and(length > 0, length < self.MIN_FRAMES)
            first = ops.arange(size)[None, :] < self.MIN_FRAMES
            return ops.logical_and(ops.logical_and(short, first), frames == 0)

        rows = ops.max(pair_mask, axis=2)     # [B, N] real query frames
        columns = ops.max(pair_mask, axis=1)  # [B, M] real target frames
        added_rows = added(rows, ops.shape(pair_mask)[1])
        added_columns = added(columns, ops.shape(pair_mask)[2])
        rows = ops.logical_or(rows > 0, added_rows)
        columns = ops.logical_or(columns > 0, added_columns)
        # Only pairs involving an added frame change (to zero similarity, real): a batch without
        # short videos keeps its numbers.
        new_pairs = ops.logical_or(
            ops.logical_and(added_rows[:, :, None], columns[:, None, :]),
            ops.logical_and(rows[:, :, None], added_columns[:, None, :]))
        return (ops.where(new_pairs, ops.zeros_like(similarity), similarity),
                ops.where(new_pairs, ops.ones_like(pair_mask), pair_mask))

    def call(self, similarity, pair_mask=None):
        similarity, pair_mask = self._at_least_min_frames(similarity, pair_mask)
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
            return None if n is None else max(n, self.MIN_FRAMES) // 4
        shape = (similarity_shape[0], pooled(similarity_shape[1]), pooled(similarity_shape[2]))
        return shape, (shape if pair_mask_shape is not None else None)

    def convolution_weights(self) -> list:
        """``[kernel, bias] * 4``: the three 3x3 convolutions, then the 1x1 one, as variables.

        The comparator's whole parameter set, for kernels that run it on other layouts
        (:func:`dns_tf.similarity_fast.compare_batch` batches many targets in one call).
        """
        return [weight for conv in (*self.convolutions, self.final_convolution)
                for weight in (conv.kernel, conv.bias)]

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}
