"""Similarity functions of ViSiL/DnS: chamfer similarity with masks, region-level frame matching.

Shapes: a video is ``[T, R, D]`` (frames, regions, dims); batches carry a leading axis and a frame
mask ``[B, T]``.
"""

from keras import ops


def chamfer_similarity(similarity, mask=None, max_axis=-1, mean_axis=-2):
    """Max over ``max_axis``, then a (masked) mean over ``mean_axis``; both axes are removed.

    With a 0/1 ``mask`` of the same shape, masked entries never win the max and rows whose mask
    is all zero do not count in the mean.
    """
    ndim = len(similarity.shape)
    max_axis %= ndim
    mean_axis %= ndim
    if mask is None:
        reduced = ops.max(similarity, axis=max_axis, keepdims=True)
        reduced = ops.mean(reduced, axis=mean_axis, keepdims=True)
    else:
        mask = ops.cast(mask, similarity.dtype)
        reduced = ops.where(mask > 0, similarity, float("-inf"))
        reduced = ops.max(reduced, axis=max_axis, keepdims=True)
        mask = ops.max(mask, axis=max_axis, keepdims=True)
        reduced = ops.where(mask > 0, reduced, ops.zeros_like(reduced))
        reduced = (ops.sum(reduced, axis=mean_axis, keepdims=True)
                   / ops.sum(mask, axis=mean_axis, keepdims=True))
    return ops.squeeze(reduced, axis=(min(max_axis, mean_axis), max(max_axis, mean_axis)))


def region_chamfer_all_pairs(query, target):
    """Frame-to-frame similarity of every query video against every target video.

    Each frame pair scores the chamfer similarity of its regions: for each query region its best
    target region, averaged over query regions.

    Args:
        query: ``[Nq, Tq, R, D]``.
        target: ``[Nt, Tt, R', D]``.

    Returns:
        ``[Nq, Nt, Tq, Tt]``.
    """
    nq, tq, r, d = ops.shape(query)
    nt, tt, rt, _ = ops.shape(target)
    # One large matrix product: [Nq*Tq*R, D] x [D, Nt*Tt*R'].
    products = ops.matmul(ops.reshape(query, (-1, d)),
                          ops.transpose(ops.reshape(target, (-1, d))))
    products = ops.reshape(products, (nq, tq, r, nt, tt, rt))
    frame_pairs = ops.mean(ops.max(products, axis=5), axis=2)  # [Nq, Tq, Nt, Tt]
    return ops.transpose(frame_pairs, (0, 2, 1, 3))


def region_chamfer_paired(query, target):
    """Frame-to-frame similarity of query video i against target video i.

    Args:
        query: ``[B, Tq, R, D]``.
        target: ``[B, Tt, R', D]``.

    Returns:
        ``[B, Tq, Tt]``.
    """
    b, tq, r, d = ops.shape(query)
    _, tt, rt, _ = ops.shape(target)
    products = ops.matmul(ops.reshape(query, (b, tq * r, d)),
                          ops.transpose(ops.reshape(target, (b, tt * rt, d)), (0, 2, 1)))
    products = ops.reshape(products, (b, tq, r, tt, rt))
    return ops.mean(ops.max(products, axis=4), axis=2)


def pair_mask(query_mask, target_mask):
    """``[Nq, Tq]`` x ``[Nt, Tt]`` frame masks -> ``[Nq, Nt, Tq, Tt]`` frame-pair mask."""
    return query_mask[:, None, :, None] * target_mask[None, :, None, :]


def paired_mask(query_mask, target_mask):
    """``[B, Tq]`` x ``[B, Tt]`` -> ``[B, Tq, Tt]`` frame-pair mask of paired videos."""
    return query_mask[:, :, None] * target_mask[:, None, :]
