"""Append-only byte stores and the codecs of the fine-grained video representations.

A :class:`VideoIndex` keeps each video's bulky arrays (the fine representation ``[T, R, ...]`` and
the coarse vector ``[Dc]``) in append-only files. Writing follows one rule that makes a crash
harmless: bytes are appended and fsynced *before* the SQLite row that points at them is committed,
so a crash can leave unreferenced bytes past the committed end of a file, never a row pointing at
missing data. The writer truncates such garbage the next time it opens the index.

Fine representations come in two kinds:

* ``"bits"``: the binarization student's ±1 codes ``[T, R, B]``, stored packed 8 per byte as
  ``np.packbits(x > 0)`` of shape ``[T, R, B / 8]`` uint8 (``unpack_bits`` turns them back).
* ``"float16"``: the attention / no-attention students' region features ``[T, R, D]``, stored as
  float16.
"""

from __future__ import annotations

import os
import stat
import zlib

import numpy as np

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
        return np.dtype(np.uint8 if self.kind == "bits" else np.float16)

    @property
    def frame_nbytes(self) -> int:
        return int(np.prod(self.stored_shape_tail)) * self.stored_dtype.itemsize

    def encode(self, fine: np.ndarray) -> tuple[bytes, int]:
        """Returns ``(bytes, num_frames)`` for one video's representation ``[T, *shape_tail]``.

        For ``"bits"`` the input is either real/bool codes ``[T, R, B]`` (packed as ``x > 0``) or
        codes already packed by :func:`pack_bits`, uint8 ``[T, R, B / 8]``.
        """
        fine = np.asarray(fine)
        if self.kind == "bits" and fine.dtype == np.uint8 and fine.shape[1:] == self.stored_shape_tail:
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


class AppendOnlyFile:
    """A file that only grows: append bytes, fsync, read back ranges by offset.

    The committed length is owned by the caller (it lives in SQLite next to the rows that point
    into the file); ``truncate`` drops bytes past it, which only a crash can leave behind.

    The file is opened without following symlinks (``O_NOFOLLOW``): an index's files are its own,
    and a symlink planted in their place must not let a writer truncate the file it points to.

    Args:
        path: the file; created if missing when ``writable``.
        writable: open for appending (exactly one writer may hold an index at a time).
    """

    def __init__(self, path: str, writable: bool):
        self.path = path
        self.writable = writable
        self._fd = open_no_follow(path, os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY)

    def fileno(self) -> int:
        return self._fd

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def append(self, chunks: list[bytes], at: int) -> list[int]:
        """Writes ``chunks`` back to back starting at offset ``at``, fsyncs, returns their offsets.

        ``at`` is the committed end; anything past it is crash garbage and gets overwritten.
        """
        offsets = []
        position = at
        for chunk in chunks:
            view = memoryview(chunk)
            offsets.append(position)
            while view:
                written = os.pwrite(self._fd, view, position)
                view = view[written:]
                position += written
        os.fsync(self._fd)
        return offsets

    def read(self, offset: int, nbytes: int) -> bytes:
        data = os.pread(self._fd, nbytes, offset)
        if len(data) != nbytes:
            raise OSError(f"{self.path}: wanted {nbytes} bytes at offset {offset}, file ends "
                          f"after {len(data)}")
        return data

    def truncate(self, length: int) -> None:
        if self.size() > length:
            os.ftruncate(self._fd, length)
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_no_follow(path: str, flags: int) -> int:
    """``os.open`` of a regular file that refuses symlinks and anything else (clear ``OSError``)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if os.path.islink(path):
            raise OSError(error.errno, f"{path} is a symlink; an index's files must be regular "
                                       f"files (symlinks are not followed)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return fd


def checksum(data: bytes) -> int:
    """CRC-32 of a stored blob, kept in its row so reads and ``verify()`` detect corruption."""
    return zlib.crc32(data)
