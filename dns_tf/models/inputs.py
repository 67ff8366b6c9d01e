"""Normalising model inputs: numpy or tensors, single videos or padded batches."""

from keras import ops


def video_batch(videos, mask=None):
    """Returns ``(videos [B, T, R, D] float32, mask [B, T] float32)``.

    Accepts one video ``[T, R, D]`` (with an optional ``[T]`` mask) or a padded batch
    ``[B, T, R, D]`` with ``[B, T]``; a missing mask means every frame is real.
    """
    videos = ops.convert_to_tensor(videos, dtype="float32")
    if len(videos.shape) == 3:
        videos = videos[None]
        if mask is not None:
            mask = ops.convert_to_tensor(mask)[None]
    if len(videos.shape) != 4:
        raise ValueError(
            f"expected videos of shape [T, R, D] or [B, T, R, D], got {tuple(videos.shape)}")
    if mask is None:
        mask = ops.ones(ops.shape(videos)[:2], dtype="float32")
    else:
        mask = ops.cast(ops.convert_to_tensor(mask), "float32")
        if len(mask.shape) != 2:
            raise ValueError(f"expected a frame mask of shape [B, T], got {tuple(mask.shape)}")
    return videos, mask
