"""The DnS students: fine-grained (S^f_A, S^f_B, plain) and coarse-grained (S^c)."""

import keras
from keras import ops

from dns_tf.layers import Attention, Binarization, NetVLAD, TransformerEncoderLayer, VideoComparator
from dns_tf.layers.ops import l2_normalize, zero_masked
from dns_tf.models.fine_grained import FineGrainedSimilarityModel
from dns_tf.models.inputs import video_batch

FEATURE_DIMS = 512  # PCA-whitened L3-iMAC region vectors


@keras.saving.register_keras_serializable(package="dns_tf")
class FineGrainedStudent(FineGrainedSimilarityModel):
    """S^f: region vectors kept per frame, compared with ViSiL's similarity head.

    ``index_video`` turns region features into the stored representation — attention-weighted
    (S^f_A), binary codes (S^f_B), or the features unchanged — and ``calculate_video_similarity``
    compares two such representations.

    Args:
        dims: region feature dimensions D.
        attention: S^f_A, gated attention over regions.
        binarization: S^f_B, ``bits`` binary codes per region (takes precedence over attention).
        bits: code length of S^f_B.

    Example:

    >>> student = FineGrainedStudent(attention=True)
    >>> index = student.index_video(features, mask)               # [B, T, 9, 512]
    >>> student.calculate_video_similarity(query, index, None, mask)  # [1, B]
    """

    def __init__(self, dims=FEATURE_DIMS, attention=False, binarization=False, bits=512,
                 **kwargs):
        super().__init__(**kwargs)
        self.dims = dims
        self.attention = Attention(name="attention") if attention and not binarization else None
        self.binarization = Binarization(bits, name="binarization") if binarization else None
        self.bits = bits
        self.comparator = VideoComparator(name="comparator")
        self.build((None, None, None, dims))

    @property
    def kind(self):
        """``"attention"``, ``"binarization"`` or ``"none"``."""
        if self.binarization is not None:
            return "binarization"
        return "attention" if self.attention is not None else "none"

    @property
    def frame_scale(self):
        # Dot products of +-1 codes range over [-bits, bits].
        return 1.0 / self.bits if self.binarization is not None else 1.0

    def build(self, input_shape):
        for layer in (self.attention, self.binarization):
            if layer is not None:
                layer.build(input_shape)
        self.comparator.build((None, None, None))
        self.built = True

    def index_video(self, videos, mask=None, training=False):
        """Region features ``[B, T, R, D]`` (or ``[T, R, D]``) -> stored representation.

        Padded frames (mask 0) are zeroed. Returns ``[B, T, R, D]`` (``[B, T, R, bits]`` codes).
        """
        squeeze = len(ops.shape(videos)) == 3
        videos, mask = video_batch(videos, mask)
        if self.binarization is not None:
            videos = self.binarization(videos, training=training)
        elif self.attention is not None:
            videos = self.attention(videos)
        videos = zero_masked(videos, mask[:, :, None, None])
        return videos[0] if squeeze else videos

    def call(self, videos, padding_mask=None, training=False):
        return self.index_video(videos, padding_mask, training=training)

    def get_config(self):
        return {**super().get_config(), "dims": self.dims,
                "attention": self.attention is not None,
                "binarization": self.binarization is not None, "bits": self.bits}


@keras.saving.register_keras_serializable(package="dns_tf")
class CoarseGrainedStudent(keras.Model):
    """S^c: one vector per video, compared by a dot product.

    Region attention, sum over regions, a Transformer encoder over frames (with its final
    LayerNorm), NetVLAD over frames, L2 normalisation.

    Args:
        dims: region feature dimensions D.
        attention, transformer, netvlad: switch each stage (all on in DnS).
        transformer_heads, transformer_feedforward_dims, transformer_layers: the encoder.
        netvlad_clusters, netvlad_outdims: NetVLAD size; ``netvlad_outdims`` is the output size.
        dropout: dropout of the encoder while training.
    """

    def __init__(self, dims=FEATURE_DIMS, attention=True, transformer=True, transformer_heads=8,
                 transformer_feedforward_dims=2048, transformer_layers=1, netvlad=True,
                 netvlad_clusters=64, netvlad_outdims=1024, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.dims = dims
        self.attention = Attention(name="attention") if attention else None
        self.transformer_heads = transformer_heads
        self.transformer_feedforward_dims = transformer_feedforward_dims
        self.dropout = dropout
        self.encoder_layers = [
            TransformerEncoderLayer(transformer_heads, transformer_feedforward_dims, dropout,
                                    name=f"encoder_layer_{i}")
            for i in range(transformer_layers if transformer else 0)]
        self.encoder_norm = (keras.layers.LayerNormalization(epsilon=1e-5, name="encoder_norm")
                             if transformer else None)
        self.netvlad = NetVLAD(netvlad_clusters, netvlad_outdims, name="netvlad") if netvlad else None
        self.netvlad_clusters = netvlad_clusters
        self.netvlad_outdims = netvlad_outdims
        self.build((None, None, None, dims))

    @property
    def output_dims(self):
        return self.netvlad_outdims if self.netvlad is not None else self.dims

    def build(self, input_shape):
        frames_shape = (None, None, self.dims)
        if self.attention is not None:
            self.attention.build(input_shape)
        for layer in self.encoder_layers:
            layer.build(frames_shape)
        if self.encoder_norm is not None:
            self.encoder_norm.build(frames_shape)
        if self.netvlad is not None:
            self.netvlad.build(frames_shape)
        self.built = True

    def index_video(self, videos, mask=None, training=False):
        """Region features ``[B, T, R, D]`` (or ``[T, R, D]``) -> unit vectors ``[B, out]``."""
        videos, mask = video_batch(videos, mask)
        if self.attention is not None:
            videos = self.attention(videos)
        frames = l2_normalize(ops.sum(videos, axis=2))  # [B, T, D]
        for layer in self.encoder_layers:
            frames = layer(frames, padding_mask=mask, training=training)
        if self.encoder_norm is not None:
            frames = self.encoder_norm(frames)
        if self.netvlad is not None:
            video = self.netvlad(frames, padding_mask=mask)
        else:
            video = (ops.sum(zero_masked(frames, mask[..., None]), axis=1)
                     / ops.sum(mask, axis=1, keepdims=True))
        return l2_normalize(video)

    def calculate_video_similarity(self, query, target):
        """Dot products ``[Nq, Nt]`` of indexed videos ``[Nq, out]`` and ``[Nt, out]``."""
        query = ops.convert_to_tensor(query, dtype="float32")
        target = ops.convert_to_tensor(target, dtype="float32")
        return ops.matmul(query, ops.transpose(target))

    def call(self, videos, padding_mask=None, training=False):
        return self.index_video(videos, padding_mask, training=training)

    def get_config(self):
        return {**super().get_config(), "dims": self.dims,
                "attention": self.attention is not None,
                "transformer": self.encoder_norm is not None,
                "transformer_heads": self.transformer_heads,
                "transformer_feedforward_dims": self.transformer_feedforward_dims,
                "transformer_layers": len(self.encoder_layers),
                "netvlad": self.netvlad is not None,
                "netvlad_clusters": self.netvlad_clusters,
                "netvlad_outdims": self.netvlad_outdims, "dropout": self.dropout}
