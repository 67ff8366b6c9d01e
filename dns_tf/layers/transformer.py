"""A post-norm Transformer encoder layer with PyTorch's arithmetic (S^c's temporal context)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dns_tf")
class TransformerEncoderLayer(keras.layers.Layer):
    """Self-attention and a feed-forward block, each with a residual and a LayerNorm after it.

    The arithmetic of ``torch.nn.TransformerEncoderLayer`` with its defaults (post-norm, ReLU,
    dropout 0.1, LayerNorm eps 1e-5), so the official coarse student's weights apply unchanged.

    Args:
        num_heads: attention heads (the model dimension must divide by it).
        feedforward_dims: hidden size of the feed-forward block (2048 in DnS).
        dropout: dropout rate of attention weights and of both residual branches.

    Call arguments:
        inputs: ``[B, T, D]`` frame vectors.
        padding_mask: optional ``[B, T]`` key padding mask, 1 for real frames.
        training: enables dropout.

    Returns:
        ``[B, T, D]``.

    References:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """

    def __init__(self, num_heads=8, feedforward_dims=2048, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.feedforward_dims = feedforward_dims
        self.dropout = dropout

    def build(self, input_shape):
        dims = input_shape[-1]
        if dims % self.num_heads:
            raise ValueError(f"model dims {dims} must be divisible by num_heads {self.num_heads}")
        self.self_attention = keras.layers.MultiHeadAttention(
            self.num_heads, dims // self.num_heads, dropout=self.dropout, name="self_attention",
            dtype=self.dtype_policy)
        self.self_attention.build(input_shape, input_shape)
        self.attention_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.attention_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="norm1",
                                                              dtype=self.dtype_policy)
        self.attention_norm.build(input_shape)
        self.feedforward_in = keras.layers.Dense(
            self.feedforward_dims, activation="relu", name="linear1", dtype=self.dtype_policy)
        self.feedforward_in.build(input_shape)
        self.feedforward_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.feedforward_out = keras.layers.Dense(dims, name="linear2", dtype=self.dtype_policy)
        self.feedforward_out.build((*input_shape[:-1], self.feedforward_dims))
        self.output_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.feedforward_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="norm2",
                                                                dtype=self.dtype_policy)
        self.feedforward_norm.build(input_shape)

    def call(self, inputs, padding_mask=None, training=False):
        attention_mask = None
        if padding_mask is not None:
            attention_mask = ops.cast(padding_mask, "bool")[:, None, :]  # every query sees real keys
        attended = self.self_attention(inputs, inputs, attention_mask=attention_mask,
                                       training=training)
        x = self.attention_norm(inputs + self.attention_dropout(attended, training=training))
        hidden = self.feedforward_dropout(self.feedforward_in(x), training=training)
        out = self.output_dropout(self.feedforward_out(hidden), training=training)
        return self.feedforward_norm(x + out)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads,
                "feedforward_dims": self.feedforward_dims, "dropout": self.dropout}
