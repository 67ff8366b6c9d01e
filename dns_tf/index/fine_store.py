"""Append-only byte stores of a video index.

A :class:`VideoIndex` keeps each video's bulky arrays (the fine representation ``[T, R, ...]`` and
the coarse vector ``[Dc]``) in append-only files. Writing follows one rule that makes a crash
harmless: bytes are appended and fsynced *before* the SQLite row that points at them is committed,
so a crash can leave unreferenced bytes past the committed end of a file, never a row pointing at
missing data. The writer truncates such garbage the next time it opens the index.

What the bytes of a fine representation mean is :mod:`dns_tf.fine_representation`'s business.
"""

from __future__ import annotations

import os
import stat
import zlib

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
