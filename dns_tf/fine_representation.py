"""The stored fine representation: what a video index keeps of each video for the fine student,
and how it is packed, in numpy (index, in-process search) and in TensorFlow graphs (SavedModels).

Two kinds, after the fine student that produces them (:func:`stored_kind`):

* ``"bits"``: the binarization student's (S^f_B) ±1 codes ``[T, R, B]``, stored packed 8 per byte
  as ``np.packbits(x > 0)``: ``[T, R, B / 8]`` uint8 (:func:`unpack_bits` turns them back);
* ``"float16"``: the attention / no-attention students' region features ``[T, R, D]``, stored as
  float16.

``R`` is :data:`REGIONS`, the 3x3 grid of L3-iMAC regions every DnS network reads.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

REGIONS = 9  # L3-iMAC: a 3x3 grid of regions per frame
FINE_KINDS = ("bits", "float16")


def pack_bits(codes: np.ndarray) -> np.ndarray:
    """Packs binary codes ``[..., B]`` (sign of any real or bool array) into ``[..., B / 8]`` uint8.

    A code is 1 where ``codes > 0`` and 0 elsewhere, so ±1 codes round-trip exactly through
    :func:`unpack_bits`.
    """
    codes = np.asarray(codes)
    if codes.shape[-1] % 8:
        raise ValueError(f"the last axis of binary codes must be a multiple of 8, got shape "
                         f"{codes.shape}")
    return np.packbits(codes > 0, axis=-1)


def unpack_bits(packed: np.ndarray) -> np.ndarray:
    """Unpacks ``[..., B / 8]`` uint8 codes into ±1 float32 codes ``[..., B]``."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed codes must be uint8, got {packed.dtype}")
    bits = np.unpackbits(packed, axis=-1).astype(np.float32)
    return bits * 2.0 - 1.0


class FineCodec:
    """Turns fine representations ``[T, *shape_tail]`` into bytes and back.

    Args:
        kind: ``"bits"`` or ``"float16"``.
        shape_tail: the per-frame shape in the model's terms: ``(R, B)`` codes per frame for
            ``"bits"`` (B a multiple of 8), ``(R, D)`` features per frame for ``"float16"``.

    Example:

        codec = FineCodec("bits", (9, 512))
        data = codec.encode(np.sign(np.random.randn(30, 9, 512)))   # 30 * 9 * 64 bytes
        packed = codec.decode(data, num_frames=30)                   # uint8 [30, 9, 64]
    """

    def __init__(self, kind: str, shape_tail: tuple[int, ...]):
        if kind not in FINE_KINDS:
            raise ValueError(f"fine_kind must be one of {FINE_KINDS}, got {kind!r}")
        shape_tail = tuple(int(d) for d in shape_tail)
        if not shape_tail or any(d <= 0 for d in shape_tail):
            raise ValueError(f"fine_shape_tail must be positive sizes, got {shape_tail}")
        if kind == "bits" and shape_tail[-1] % 8:
            raise ValueError(f"fine_shape_tail for 'bits' is (regions, bits) with bits a multiple "
                             f"of 8, got {shape_tail}")
        self.kind = kind
        self.shape_tail = shape_tail

    @property
    def stored_shape_tail(self) -> tuple[int, ...]:
        """Per-frame shape as stored: bits packed 8 per byte, features as they are."""
        if self.kind == "bits":
            return self.shape_tail[:-1] + (self.shape_tail[-1] // 8,)
        return self.shape_tail

    @property
    def stored_dtype(self) -> np.dtype:
        return stored_dtype(self.kind)

    @property
    def frame_nbytes(self) -> int:
        return int(np.prod(self.stored_shape_tail)) * self.stored_dtype.itemsize

    def encode(self, fine: np.ndarray) -> tuple[bytes, int]:
        """Returns ``(bytes, num_frames)`` for one video's representation ``[T, *shape_tail]``.

        For ``"bits"`` the input is either real/bool codes ``[T, R, B]`` (packed as ``x > 0``) or
        codes already packed by :func:`pack_bits`, uint8 ``[T, R, B / 8]``.
        """
        fine = np.asarray(fine)
        packed = fine.dtype == np.uint8 and fine.shape[1:] == self.stored_shape_tail
        if self.kind == "bits" and packed:
            stored = fine
        elif fine.ndim == len(self.shape_tail) + 1 and fine.shape[1:] == self.shape_tail:
            if not (np.issubdtype(fine.dtype, np.number) or fine.dtype == np.bool_):
                raise TypeError(f"fine representation must be numeric, got {fine.dtype}")
            stored = pack_bits(fine) if self.kind == "bits" else fine.astype(np.float16)
        else:
            expected = f"[T, {', '.join(map(str, self.shape_tail))}]"
            if self.kind == "bits":
                expected += (f" codes or uint8 [T, {', '.join(map(str, self.stored_shape_tail))}]"
                             f" packed codes")
            raise ValueError(f"fine representation must have shape {expected}, got "
                             f"{fine.shape} {fine.dtype}")
        if stored.shape[0] < 1:
            raise ValueError("fine representation has no frames (T = 0)")
        if self.kind == "float16" and not np.all(np.isfinite(stored)):
            raise ValueError("fine representation has non-finite values (in float16)")
        return np.ascontiguousarray(stored).tobytes(), int(stored.shape[0])

    def decode(self, data: bytes, num_frames: int) -> np.ndarray:
        """Inverse of :meth:`encode`: ``[T, *stored_shape_tail]`` uint8 (bits) or float16."""
        array = np.frombuffer(data, dtype=self.stored_dtype)
        return array.reshape((num_frames,) + self.stored_shape_tail)


def stored_kind(fine_student) -> str:
    """The stored kind of a fine student's representations: ``"bits"`` or ``"float16"``."""
    return "bits" if fine_student.kind == "binarization" else "float16"


def stored_dtype(kind: str) -> np.dtype:
    """The dtype a kind is stored in: uint8 packed codes or float16 features."""
    if kind not in FINE_KINDS:
        raise ValueError(f"fine_kind must be one of {FINE_KINDS}, got {kind!r}")
    return np.dtype(np.uint8 if kind == "bits" else np.float16)


def kind_of_dtype(dtype) -> str:
    """The kind whose stored dtype is ``dtype`` (uint8: ``"bits"``, else ``"float16"``)."""
    return "bits" if np.dtype(dtype) == np.uint8 else "float16"


_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits order: the first code is the high bit


def pack_bits_tf(codes: tf.Tensor) -> tf.Tensor:
    """Binary codes ``[..., bits]`` (a code is 1 where > 0) -> ``[..., bits / 8]`` uint8.

    The graph twin of :func:`pack_bits`: the same bytes, so stores written
    in process and through the server are interchangeable.
    """
    bits = codes.shape[-1]
    grouped = tf.reshape(tf.cast(codes > 0, tf.int32),
                         tf.concat([tf.shape(codes)[:-1], [bits // 8, 8]], axis=0))
    return tf.cast(tf.reduce_sum(grouped * tf.constant(_BIT_WEIGHTS), axis=-1), tf.uint8)


def unpack_bits_tf(packed: tf.Tensor) -> tf.Tensor:
    """``[..., bits / 8]`` uint8 -> ±1 float32 codes ``[..., bits]``: :func:`unpack_bits` in the
    graph."""
    shifts = tf.constant([7, 6, 5, 4, 3, 2, 1, 0], tf.uint8)
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(packed[..., None], shifts), 1)
    bits = tf.reshape(bits, tf.concat([tf.shape(packed)[:-1], [packed.shape[-1] * 8]], axis=0))
    return tf.cast(bits, tf.float32) * 2.0 - 1.0
