"""Served fine similarity: the in-process fast path's arithmetic as one graph of standard ops.

:class:`~dns_tf.similarity_fast.FastFineSimilarity` scores one query against many stored targets
with one matmul (float16 features) or one XOR-popcount kernel (packed codes) for the whole batch,
then the video comparator on ``[B, Tq, Tt]`` with exact per-pair masks. The graphs here call the
*same* kernels (``float_frame_similarity``, ``hamming_region_sums``, ``compare_batch``), so a
served score is the fast path's score, bit for bit, and the cost per pair is the fast path's::

    query [Tq, R, C] (stored form) ──padded to padded_length(Tq)──┐
    targets' frames, flat [F, R, C] ──────────────────────────────┴─> frame similarity [Tq', F]
      float16: one matmul; codes: XOR-popcount over 64-bit words in XLA, CHUNK_FRAMES at a time
    targets sorted by length, GROUP at a time (two groups in flight):
      columns of each target's frames ──> compare_batch ──> [GROUP] scores ──> back in order

Only stock TensorFlow ops run (``MatMul``, ``BitwiseXor``, ``PopulationCount``, ``Conv2D``, ...),
so ``tensorflow_model_server`` serves these graphs unchanged. The popcount kernel is an
XLA-compiled function (``jit_compile``), like the fast path's, because graph ops would
materialise the XOR of every word pair (~60x slower): TF Serving runs it on GPU as it is and on
CPU with ``--xla_cpu_compilation_enabled=true``. Shapes seen by XLA are bounded: the query is
padded to a multiple of FRAME_MULTIPLE frames and targets' frames are cut in chunks of
CHUNK_FRAMES, so a server compiles the kernel once per query length bucket.

The region axis is static (:data:`REGIONS`): the kernel unrolls its region loops.
"""

from __future__ import annotations

import tensorflow as tf

from dns_tf.fine_representation import REGIONS
from dns_tf.similarity_fast import (CHUNK_UNIT, FRAME_MULTIPLE, MIN_FRAMES, compare_batch,
                                    float_frame_similarity, hamming_region_sums,
                                    hamming_similarity)

# Regions per frame: the feature extractor's 3x3 grid (dns_tf.features.extractor).
# Target frames per XLA popcount call: one compiled shape per query length bucket.
CHUNK_FRAMES = 4 * CHUNK_UNIT
# Targets per comparator batch after sorting by length (padding stays small); the fast path's
# batches of 64 split over its two workers.
GROUP = 32
# Comparator batches in flight at once, as the fast path's two workers.
GROUPS_IN_FLIGHT = 2
# Queries of one merged batch scored at once: one, so a server's concurrency stays
# num_batch_threads x GROUPS_IN_FLIGHT (each query's frame similarities alone are tens of MB).
QUERIES_IN_FLIGHT = 1


def padded_frames(length: tf.Tensor) -> tf.Tensor:
    """Graph twin of :func:`dns_tf.similarity_fast.padded_length`: at least MIN_FRAMES, a multiple
    of FRAME_MULTIPLE."""
    length = tf.maximum(length, MIN_FRAMES)
    return (length + FRAME_MULTIPLE - 1) // FRAME_MULTIPLE * FRAME_MULTIPLE


def _words(packed: tf.Tensor) -> tf.Tensor:
    """Packed codes ``[..., C]`` uint8 as ``[..., C / 8]`` uint64 words (XOR and popcount do not
    care about byte order; the fast path's ``packed_words`` view)."""
    size = packed.shape[-1]
    if size % 8:
        raise ValueError(f"packed codes of {size} bytes per region are not whole 64-bit words")
    grouped = tf.reshape(packed, tf.concat([tf.shape(packed)[:-1], [size // 8, 8]], axis=0))
    return tf.bitcast(grouped, tf.uint64)


class FineGraph:
    """Fine similarity of one query with many targets in their stored form, in graph.

    Args:
        bits: code length of a binarization student; None for float16 features.
        weights: the comparator's weights (:func:`~dns_tf.similarity_fast.comparator_weights`),
            variables of the module that owns them.
    """

    def __init__(self, bits: int | None, weights):
        if bits is not None and bits >= 2 ** 15:
            raise ValueError(f"codes of {bits} bits overflow the int16 popcount sums")
        self.bits = bits
        self.weights = list(weights)

    def frame_similarity(self, query: tf.Tensor, frames: tf.Tensor) -> tf.Tensor:
        """``[Tq', F]`` float32 similarities of query frames ``[Tq', R, C]`` with target frames
        ``[F, R, C]``, both stored (uint8 codes | float16)."""
        if self.bits is None:
            return float_frame_similarity(tf.cast(query, tf.float32),
                                          tf.transpose(frames, [1, 0, 2]))
        query = tf.reshape(_words(query), [-1, query.shape[-1] // 8])         # [Tq'·R, W]
        frames = _words(frames)                                               # [F, R, W]
        count, words = tf.shape(frames)[0], frames.shape[-1]
        chunks = (count + CHUNK_FRAMES - 1) // CHUNK_FRAMES
        frames = tf.pad(frames, [[0, chunks * CHUNK_FRAMES - count], [0, 0], [0, 0]])
        # Region-major chunks [K, W, R·S], the kernel's layout.
        frames = tf.transpose(tf.reshape(frames, [chunks, CHUNK_FRAMES, REGIONS, words]),
                              [0, 3, 2, 1])
        frames = tf.reshape(frames, [chunks, words, REGIONS * CHUNK_FRAMES])
        bits = tf.constant(self.bits, tf.int32)
        sums = tf.map_fn(lambda chunk: hamming_region_sums(query, chunk, bits, REGIONS), frames,
                         fn_output_signature=tf.TensorSpec([None, CHUNK_FRAMES], tf.int32),
                         parallel_iterations=GROUPS_IN_FLIGHT)                # [K, Tq', S]
        sums = tf.reshape(tf.transpose(sums, [1, 0, 2]), [tf.shape(sums)[1], -1])[:, :count]
        return hamming_similarity(sums, REGIONS, self.bits)

    def scores(self, query: tf.Tensor, query_length: tf.Tensor, frames: tf.Tensor,
               starts: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
        """``[N]`` similarities of one query with N targets whose frames lie in ``frames``.

        Args:
            query: ``[T, R, C]`` stored query (rows past ``query_length`` are ignored).
            query_length: Tq, within ``[1, T]``.
            frames: ``[F, R, C]`` stored frames of every target.
            starts: ``[N]`` int32 row of each target's first frame in ``frames``.
            lengths: ``[N]`` int32 frames of each target (>= 1).
        """
        rows = padded_frames(query_length)
        query = query[:query_length]
        query = tf.pad(query, [[0, rows - query_length], [0, 0], [0, 0]])
        similarity = self.frame_similarity(query, frames)
        # Targets by length, GROUP at a time: comparator widths follow the group's longest.
        order = tf.argsort(lengths, stable=True)
        count = tf.shape(order)[0]
        groups = (count + GROUP - 1) // GROUP
        # The last group is filled up with the longest target; those repeats are dropped below.
        padded_order = tf.reshape(tf.pad(order, [[0, groups * GROUP - count]],
                                         constant_values=tf.reduce_max(order)), [groups, GROUP])

        def compare(chosen):
            group_lengths = tf.gather(lengths, chosen)
            width = padded_frames(tf.reduce_max(group_lengths))
            steps = tf.minimum(tf.range(width)[None, :], group_lengths[:, None] - 1)
            columns = tf.gather(starts, chosen)[:, None] + steps             # [G, Tt']
            return compare_batch(similarity, columns, query_length, group_lengths, self.weights)

        grouped = tf.map_fn(compare, padded_order, parallel_iterations=GROUPS_IN_FLIGHT,
                            fn_output_signature=tf.TensorSpec([GROUP], tf.float32))
        return tf.scatter_nd(order[:, None], tf.reshape(grouped, [-1])[:count], [count])

    def padded_batch_scores(self, query, query_length, targets, target_lengths) -> tf.Tensor:
        """``[N]`` similarities of one query with padded targets ``[N, T', R, C]`` and their
        lengths ``[N]`` (frames past a length are never read)."""
        shape = tf.shape(targets)
        frames = tf.reshape(targets, tf.concat([[shape[0] * shape[1]], shape[2:]], axis=0))
        return self.scores(query, query_length, frames, tf.range(shape[0]) * shape[1],
                           target_lengths)
