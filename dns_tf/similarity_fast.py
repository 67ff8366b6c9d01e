"""Fast fine-grained similarity: one query against many stored videos, batched and compiled.

The fine-grained student's similarity is the cost centre of DnS: every re-ranked pair costs a
frame-to-frame matrix (``[Tq·R, D] x [D, Tt·R]``, ~300 MFLOP for two 60-frame videos) and the video
comparator CNN (~70 MFLOP). :class:`FastFineSimilarity` computes, for one query and many targets in
their stored form (what a :class:`~dns_tf.index.VideoIndex` keeps), the numbers the authors'
evaluation gets by comparing the query with each target on its own::

    targets ──sorted by length, batched──> for each batch (two batches in flight):
      frame-to-frame similarity of the query with all the batch's frames, flat [Tq, F]:
        float16 features: one matmul [Tq·R, D] x [D, R·F], max over target regions, mean over
                          query regions (TensorFlow graph; oneDNN runs the matmul);
        packed codes:     XOR and popcount of 64-bit words, compiled with XLA: the dot product of
                          two ±1 codes is ``bits - 2·popcount(q xor t)``, so codes are never
                          unpacked and the result equals the float path bit for bit;
      ──gathered into [B, Tq, Tt]──> video comparator CNN ──> hardtanh ──> chamfer ──> [B]

Padding never changes a score. A padded batch would normally let pooling windows that straddle a
video's last frame count as real (``max``-pooled masks); here a pooled cell is real only when its
whole window is, and pooled features outside are zeroed, which is exactly what the comparator sees
when it runs on one unpadded pair. Scores therefore do not depend on how targets are batched.

Videos shorter than :data:`MIN_FRAMES` frames (where the comparator, which pools twice by 2, has no
output) are compared as if padded with zero-similarity frames to :data:`MIN_FRAMES`.

Where XLA goes, measured on a 2-core AVX-512 CPU (``dns-tf bench similarity``): only the popcount
kernel, which XLA fuses and vectorises (``vpopcntq``) into ~3000 pairs per CPU-second, where graph
ops materialise the XOR of every word pair (~50). The float matmul and the comparator stay in the
graph, where oneDNN is faster than XLA's CPU dot and convolutions (the comparator ~1.5x), and
dynamic shapes need no recompilation. Shapes are still bucketed (query and batch widths to
multiples of FRAME_MULTIPLE, popcount chunks to CHUNK_UNIT * 2^k frames) to bound XLA compilations
and oneDNN primitive caches.

This module is TensorFlow-specific (``tf.function``, XLA, ``PopulationCount``) and knows the
index's stored formats, so it sits next to ``retrieval`` rather than in ``layers``, which stay
backend-neutral ``keras.ops``.

Example:

    similarity = FastFineSimilarity(fine_student)
    scores = similarity(query_stored, [record.fine for record in records])   # [N] float32
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from dns_tf.fine_representation import stored_kind
from dns_tf.layers.comparator import VideoComparator

MIN_FRAMES = VideoComparator.MIN_FRAMES
# Frame counts are padded to multiples of this, which keeps the number of distinct shapes (traces,
# XLA compilations, oneDNN primitives) small.
FRAME_MULTIPLE = 4
# The XLA popcount kernel runs on fixed-size chunks of target frames: CHUNK_UNIT * 2^k frames.
CHUNK_UNIT = 128
MAX_CHUNK_UNITS = 16
# A batch is cut when the next target is this much longer than its first (padding waste).
LENGTH_SLACK = 1.25


def padded_length(length: int) -> int:
    """Frames a video occupies in a batch: at least MIN_FRAMES, a multiple of FRAME_MULTIPLE."""
    length = max(int(length), MIN_FRAMES)
    return -(-length // FRAME_MULTIPLE) * FRAME_MULTIPLE


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Groups videos into batches of similar length: indices into ``lengths``, shortest first.

    A batch holds at most ``batch_size`` videos and is cut early when the next video is longer
    than ``LENGTH_SLACK`` times the batch's first one (plus one padding step), so little compute
    goes to padding.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        full = end - start == batch_size
        last = end == len(order)
        too_long = not last and (lengths[order[end]]
                                 > LENGTH_SLACK * lengths[order[start]] + FRAME_MULTIPLE)
        if full or last or too_long:
            batches.append(order[start:end])
            start = end
    return batches


def packed_words(packed: np.ndarray) -> np.ndarray:
    """Views packed codes ``[..., B/8]`` uint8 as the widest unsigned words that divide them.

    XOR and popcount do not care about byte order, so the view needs no copy beyond making the
    array contiguous: ``[..., B/64]`` uint64 for 512-bit codes.
    """
    packed = np.ascontiguousarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed codes must be uint8, got {packed.dtype}")
    for dtype in (np.uint64, np.uint32, np.uint16):
        if packed.shape[-1] % np.dtype(dtype).itemsize == 0:
            return packed.view(dtype)
    return packed


def _chunk_sizes(frames: int) -> list[int]:
    """Splits ``frames`` (rounded up to CHUNK_UNIT) into few chunks of CHUNK_UNIT * 2^k frames."""
    units = -(-frames // CHUNK_UNIT)
    sizes = [MAX_CHUNK_UNITS] * (units // MAX_CHUNK_UNITS)
    rest = units % MAX_CHUNK_UNITS
    sizes += [1 << bit for bit in reversed(range(MAX_CHUNK_UNITS.bit_length())) if rest >> bit & 1]
    return [size * CHUNK_UNIT for size in sizes]


def _valid(size, length):
    """``[size]`` bool, True for the first ``length`` positions (``length`` may be ``[B]``)."""
    return tf.range(size)[None, :] < tf.reshape(length, [-1, 1])


def _mask_pooled(x, query_frames, target_frames):
    """Zeroes pooled cells ``[B, H, W, C]`` whose window was not wholly real, as on the unpadded
    pair (where such windows do not exist)."""
    row_mask = _valid(tf.shape(x)[1], query_frames)[:, :, None, None]
    col_mask = _valid(tf.shape(x)[2], target_frames)[:, None, :, None]
    return tf.where(row_mask & col_mask, x, 0.0)


# The kernels are module-level functions (weights are arguments, not captured), so every
# FastFineSimilarity shares their traces; dynamic dimensions keep those to one per kind.
@tf.function(reduce_retracing=True)
def float_frame_similarity(query, frames):
    """Region chamfer of query frames ``[Tq, R, D]`` float32 with F frames, region-major
    ``[R', F, D]`` float16 (as stored) or float32.

    Returns ``[Tq, F]``: ``mean_r max_r' <q_r, t_r'>`` as the student computes it, from one
    matmul. Region-major target rows make the max over regions a reduction over a middle axis
    (vectorised along F). float16 is converted here, faster than numpy does it.
    """
    frames = tf.cast(frames, tf.float32)
    frames_count, regions, dims = tf.unstack(tf.shape(query))
    target_regions = tf.shape(frames)[0]
    products = tf.matmul(tf.reshape(query, [-1, dims]), tf.reshape(frames, [-1, dims]),
                         transpose_b=True)                               # [Tq·R, R'·F]
    best = tf.reduce_max(tf.reshape(products, [frames_count * regions, target_regions, -1]), axis=1)
    return tf.reduce_mean(tf.reshape(best, [frames_count, regions, -1]), axis=1)


@tf.function(jit_compile=True)
def hamming_region_sums(query, frames, bits, regions):
    """Region chamfer of ±1 codes read from packed words, in XLA, before the final division.

    Args:
        query: ``[Tq·R, W]`` words of the query's codes, frame-major.
        frames: ``[W, R·X]`` words of X target frames, region-major.
        bits: code length (int32 scalar).
        regions: R (a Python int).

    Returns:
        ``[Tq, X]`` int32 ``sum_r max_r' <q_r, t_r'>`` with ``<q, t> = bits - 2 popcount(q xor t)``,
        exact. The division by ``R`` happens outside XLA, which would turn it into a
        multiplication by the rounded ``1 / R`` and lose bit equality with the float path.
    """
    width = frames.shape[1] // regions
    # Two-dimensional operands and int64 sums let XLA vectorise the popcounts (vpopcntq); the
    # distances are stored as int16 (at most `bits`), a quarter of the memory traffic.
    xor = tf.bitwise.bitwise_xor(query[:, :, None], frames[None])
    distances = tf.cast(tf.reduce_sum(tf.cast(tf.raw_ops.PopulationCount(x=xor), tf.int64),
                                      axis=1), tf.int16)                       # [Tq·R, R·X]
    # Best target region = fewest differing bits. Elementwise minima of the R slabs vectorise;
    # XLA's reduce over a middle axis does not.
    nearest = distances[:, :width]
    for region in range(1, regions):
        nearest = tf.minimum(nearest, distances[:, region * width:(region + 1) * width])
    dots = tf.reshape(bits - 2 * tf.cast(nearest, tf.int32), [-1, regions, width])
    total = dots[:, 0]
    for region in range(1, regions):
        total += dots[:, region]
    return total


def hamming_similarity(sums, regions: int, bits):
    """``[Tq, X]`` float32 frame similarities from :func:`hamming_region_sums`: as ``reduce_mean``
    on the float path, the exact sum divided by R, then scaled by ``1 / bits``."""
    return tf.cast(sums, tf.float32) / regions * (1.0 / bits)


def comparator_weights(student) -> list:
    """Kernel and bias of the comparator's three 3x3 convolutions and its 1x1 one, in the order
    :func:`compare_batch` takes them (Keras variables)."""
    if student.comparator.padding != "zero":
        raise ValueError("the fast path runs zero-padded comparators (the DnS students'), not "
                         f"{student.comparator.padding!r} ones")
    return student.comparator.convolution_weights()


_WEIGHT_SPECS = [tf.TensorSpec([None, None, None, None], tf.float32),
                 tf.TensorSpec([None], tf.float32)] * 4


@tf.function(input_signature=[
    tf.TensorSpec([None, None], tf.float32),   # flat frame similarities [Tq', F]
    tf.TensorSpec([None, None], tf.int32),     # columns [B, Tt'] into F
    tf.TensorSpec([], tf.int32),               # query frames
    tf.TensorSpec([None], tf.int32),           # target frames [B]
    _WEIGHT_SPECS])
def compare_batch(similarity, columns, query_frames, target_frames, weights):
    """Video comparator, hardtanh and chamfer of one batch, exactly as on each unpadded pair.

    Args:
        similarity: ``[Tq', F]`` flat frame-to-frame similarities.
        columns: ``[B, Tt']`` column of each target frame in ``similarity`` (any column past a
            target's end: it is masked).
        query_frames: Tq.
        target_frames: ``[B]`` Tt of each target.
        weights: kernel, bias of the comparator's three 3x3 convolutions and its 1x1 one.

    Returns:
        ``[B]`` similarities.
    """
    x = tf.transpose(tf.gather(similarity, columns, axis=1), [1, 0, 2])  # [B, Tq', Tt']
    rows, cols = tf.shape(x)[1], tf.shape(x)[2]
    x = tf.where(_valid(rows, query_frames)[:, :, None] & _valid(cols, target_frames)[:, None],
                 x, 0.0)[..., None]
    # Zero-similarity frames stand in for the missing ones of videos shorter than MIN_FRAMES.
    query_frames = tf.maximum(query_frames, MIN_FRAMES)
    target_frames = tf.maximum(target_frames, MIN_FRAMES)
    # Without padding (every video as long as the batch is wide) the masks below change nothing.
    padded = (query_frames != rows) | tf.reduce_any(target_frames != cols)
    for index in range(3):
        kernel, bias = weights[2 * index:2 * index + 2]
        x = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "SAME"), bias))
        if index < 2:
            x = tf.nn.max_pool2d(x, 2, 2, "VALID")
            query_frames //= 2
            target_frames //= 2
            x = tf.cond(padded, lambda: _mask_pooled(x, query_frames, target_frames), lambda: x)
    kernel, bias = weights[6:]
    x = tf.clip_by_value(tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "VALID"), bias)[..., 0],
                         -1.0, 1.0)                                        # [B, Tq'/4, Tt'/4]
    col_mask = _valid(tf.shape(x)[2], target_frames)[:, None, :]
    best = tf.reduce_max(tf.where(col_mask, x, -np.inf), axis=2)            # [B, Tq'/4]
    row_mask = tf.cast(_valid(tf.shape(x)[1], query_frames), tf.float32)    # [1, Tq'/4]
    return tf.reduce_sum(best * row_mask, axis=1) / tf.reduce_sum(row_mask)


class FastFineSimilarity:
    """Scores one query against many targets with a fine-grained student, fast and exactly.

    Args:
        student: a :class:`~dns_tf.models.FineGrainedStudent` (its comparator weights and kind).
        batch_size: targets per comparator batch.
        workers: batches in flight at once; two keep both cores busy while one batch is between
            stages (gathering, host-side chunking).

    Call arguments:
        query: the query's stored fine representation: ``[Tq, R, D]`` float16/float32 features,
            or ``[Tq, R, B/8]`` uint8 packed codes for a binarization student.
        targets: the targets' stored representations, same kind.

    Returns:
        ``[N]`` float32 similarities in [-1, 1], equal to the student's
        ``calculate_video_similarity`` of the query with each target alone.
    """

    def __init__(self, student, batch_size: int = 64, workers: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.kind = stored_kind(student)
        self.bits = student.bits if self.kind == "bits" else None
        if self.kind == "bits" and student.bits >= 2 ** 15:
            raise ValueError(f"codes of {student.bits} bits overflow the int16 popcount sums")
        self.batch_size = batch_size
        self.workers = workers or min(2, os.cpu_count() or 1)
        self._weights = [tf.constant(weight.numpy()) for weight in comparator_weights(student)]
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers)

    def __call__(self, query: np.ndarray, targets: Sequence[np.ndarray]) -> np.ndarray:
        query_length = len(query)
        query, targets = self._prepare_all(query, targets)
        scores = np.empty(len(targets), np.float32)

        def score(batch):
            lengths = np.array([len(targets[i]) for i in batch])
            similarity = self._frame_similarity(query, [targets[i] for i in batch])
            scores[batch] = compare_batch(similarity, _columns(lengths), np.int32(query_length),
                                          lengths.astype(np.int32), self._weights)

        list(self._pool.map(score, self._batches(targets)))
        return scores

    def frame_to_frame(self, query: np.ndarray, targets: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The frame-to-frame matrices ``[Tq, Tt_i]`` the comparator reads, one per target."""
        query_length = len(query)
        query, targets = self._prepare_all(query, targets)
        matrices = [None] * len(targets)

        def frame_similarity(batch):
            flat = np.asarray(self._frame_similarity(query, [targets[i] for i in batch]))
            start = 0
            for i in batch:
                matrices[i] = flat[:query_length, start:start + len(targets[i])]
                start += len(targets[i])

        list(self._pool.map(frame_similarity, self._batches(targets)))
        return matrices

    def _batches(self, targets: list[np.ndarray]) -> list[np.ndarray]:
        """Length batches, at least one per worker when there are enough targets."""
        size = min(self.batch_size, -(-len(targets) // self.workers))
        return length_batches([len(t) for t in targets], max(size, 1))

    def _prepare(self, video: np.ndarray, what: str, regions: int | None = None) -> np.ndarray:
        """Checks a stored representation; codes are viewed as words, features stay as stored
        (float16 is converted once, while batches are assembled)."""
        video = np.asarray(video)
        if video.ndim != 3 or len(video) == 0:
            raise ValueError(f"{what} must be a stored fine representation [T, R, ...] with "
                             f"T >= 1, got shape {video.shape}")
        if regions is not None and video.shape[1] != regions:
            raise ValueError(f"{what} has {video.shape[1]} regions per frame, the query {regions}")
        if self.kind == "bits":
            if video.dtype != np.uint8 or video.shape[-1] * 8 != self.bits:
                raise ValueError(f"{what}: a binarization student compares packed codes "
                                 f"[T, R, {self.bits // 8}] uint8, got {video.dtype} "
                                 f"{video.shape}")
            return packed_words(video)
        if not np.issubdtype(video.dtype, np.floating):
            raise ValueError(f"{what}: {video.dtype} data given to a student that compares float "
                             f"features (packed codes are for binarization)")
        return video

    def _prepare_all(self, query, targets) -> tuple[np.ndarray, list[np.ndarray]]:
        """The query padded to ``padded_length`` frames (the comparator needs MIN_FRAMES rows;
        the XLA kernel compiles per query length, so few lengths keep compilations few; the
        padded rows are masked) and the checked targets."""
        query = self._prepare(query, "query")
        padding = padded_length(len(query)) - len(query)
        query = np.concatenate([query, np.zeros((padding, *query.shape[1:]), query.dtype)])
        if self.kind == "float16":
            query = query.astype(np.float32)
        return query, [self._prepare(target, f"target {i}", query.shape[1])
                       for i, target in enumerate(targets)]

    def _frame_similarity(self, query: np.ndarray, targets: list[np.ndarray]):
        """``[Tq', F]`` similarities of the prepared query with the targets' frames, in order.

        ``Tq'`` is the query padded to FRAME_MULTIPLE frames and, for codes, ``F`` is padded to
        whole kernel chunks; the extra rows and columns hold garbage that the comparator masks.
        """
        # Region-major frames [R, F, ...], assembled in one copy.
        frames = np.concatenate([target.transpose(1, 0, 2) for target in targets], axis=1)
        if self.kind == "float16":
            return float_frame_similarity(query, frames)
        regions, count, words = frames.shape
        sums, start = [], 0
        for size in _chunk_sizes(count):
            chunk = np.zeros((words, regions, size), frames.dtype)
            filled = min(size, count - start)
            chunk[:, :, :filled] = frames[:, start:start + filled].transpose(2, 0, 1)
            sums.append(hamming_region_sums(query.reshape(-1, words), chunk.reshape(words, -1),
                                            np.int32(self.bits), regions))
            start += size
        return hamming_similarity(tf.concat(sums, axis=1), regions, self.bits)


def _columns(lengths: np.ndarray) -> np.ndarray:
    """``[B, Tt']`` columns of each target's frames in the batch's flat matrix (0 past its end)."""
    width = padded_length(lengths.max())
    starts = np.cumsum(lengths) - lengths
    positions = np.arange(width)
    return np.where(positions < lengths[:, None], starts[:, None] + positions, 0).astype(np.int32)
