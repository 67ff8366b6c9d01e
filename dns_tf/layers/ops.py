"""Small tensor functions shared by the layers, written with ``keras.ops`` (any backend)."""

from keras import ops

# torch.nn.functional.normalize's default: divide by max(norm, eps), so zero vectors stay zero.
NORMALIZE_EPSILON = 1e-12


def l2_normalize(x, axis=-1):
    """``x / max(||x||_2, 1e-12)`` along ``axis``, as ``torch.nn.functional.normalize``."""
    norm = ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
    return x / ops.maximum(norm, NORMALIZE_EPSILON)


def hardtanh(x):
    """Clips to [-1, 1]: the range of a similarity."""
    return ops.clip(x, -1.0, 1.0)


def zero_masked(x, mask):
    """Sets entries of ``x`` whose ``mask`` (broadcastable, 0/1) is 0 to zero."""
    return ops.where(mask > 0, x, ops.zeros_like(x))
