"""``coarse.f32``: the index's coarse vectors, fixed rows of ``[Dc]`` float32, each checksummed.

Rows are appended (and fsynced) before the SQLite rows that point at them commit, like the fine
store's records; each row's CRC-32 lives in its video's SQLite row. A row is verified against it
wherever it leaves the file: read with its video (:meth:`CoarseVectorStore.read`), gathered for a
searcher (:meth:`CoarseVectorStore.verified`, the delta and brute force) and before a searcher is
built or loaded over a memory-mapped view (:meth:`CoarseVectorStore.check`), so a damaged vector
is an :class:`~dns_tf.index.errors.IndexCorruptError` naming the video, never a silent wrong score.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from dns_tf.index.coarse import RowsView
from dns_tf.index.errors import IndexCorruptError
from dns_tf.index.fine_store import AppendOnlyFile, checksum

_CHECK_CHUNK = 8192  # rows checked at a time (bounded memory over a memory-mapped file)


class CoarseVectorStore:
    """Append-only ``[rows, dims]`` float32 file whose rows are verified by their CRC-32.

    Args:
        path: the file (opened without following symlinks, see :class:`AppendOnlyFile`).
        dims: ``Dc``.
        writable: open for appending.
    """

    def __init__(self, path: str, dims: int, writable: bool):
        self.file = AppendOnlyFile(path, writable)
        self.path = path
        self.dims = int(dims)
        self.row_bytes = 4 * self.dims
        self._map = np.zeros((0, self.dims), np.float32)

    def size(self) -> int:
        return self.file.size()

    def append(self, vectors: np.ndarray, first_row: int) -> list[int]:
        """Writes ``vectors [N, Dc]`` as rows ``first_row...``, fsyncs, returns their CRC-32s."""
        blobs = [np.ascontiguousarray(row, np.float32).tobytes() for row in vectors]
        self.file.append(blobs, at=first_row * self.row_bytes)
        return [checksum(blob) for blob in blobs]

    def truncate(self, rows: int) -> None:
        self.file.truncate(rows * self.row_bytes)

    def read(self, row: int, crc: int, video_id: str) -> np.ndarray:
        """Row ``row`` as ``[Dc]`` float32, verified against ``crc``."""
        data = self.file.read(row * self.row_bytes, self.row_bytes)
        if checksum(data) != crc:
            raise self._corrupt([video_id])
        return np.frombuffer(data, np.float32)

    def view(self, rows: np.ndarray) -> RowsView:
        """Rows ``rows`` as a lazily read ``[N, Dc]`` view of the memory-mapped file (call
        :meth:`check` on them first)."""
        rows = np.asarray(rows, np.int64)
        needed = int(rows.max()) + 1 if len(rows) else 0
        if needed > len(self._map):
            committed = self.size() // self.row_bytes
            if needed > committed:
                raise IndexCorruptError(f"{self.path} has {committed} rows, row {needed - 1} is "
                                        f"committed")
            # Mapped from the open descriptor, not the path: the file checked at open is the one
            # read.
            with os.fdopen(os.dup(self.file.fileno()), "rb") as f:
                self._map = np.memmap(f, np.float32, "r", shape=(committed, self.dims))
        return RowsView(self._map, rows)

    def check(self, rows: np.ndarray, crcs: Sequence[int], video_ids: Sequence[str]) -> None:
        """Verifies rows ``rows [N]`` against ``crcs [N]``; raises naming the damaged videos."""
        view = self.view(rows)
        damaged = []
        for start in range(0, len(view), _CHECK_CHUNK):
            chunk = np.ascontiguousarray(view[start:start + _CHECK_CHUNK])
            for i, row in enumerate(chunk, start=start):
                if checksum(row.tobytes()) != crcs[i]:
                    damaged.append(video_ids[i])
        if damaged:
            raise self._corrupt(damaged)

    def verified(self, rows: np.ndarray, crcs: Sequence[int],
                 video_ids: Sequence[str]) -> np.ndarray:
        """Rows ``rows [N]`` copied into memory as ``[N, Dc]`` float32, each verified."""
        vectors = np.ascontiguousarray(self.view(rows)[0:len(rows)], np.float32)
        damaged = [video_ids[i] for i, row in enumerate(vectors)
                   if checksum(row.tobytes()) != crcs[i]]
        if damaged:
            raise self._corrupt(damaged)
        return vectors

    def _corrupt(self, video_ids: Sequence[str]) -> IndexCorruptError:
        names = ", ".join(repr(v) for v in video_ids[:5])
        more = f" and {len(video_ids) - 5} more" if len(video_ids) > 5 else ""
        return IndexCorruptError(
            f"{self.path}: the coarse vector of video {names}{more} fails its CRC-32 check (the "
            f"file was damaged); run 'dns-tf index verify' on the index, then rebuild it from the "
            f"feature files")

    def close(self) -> None:
        self._map = np.zeros((0, self.dims), np.float32)
        self.file.close()
