"""Region feature files: the authors' HDF5 layout and TFRecord shards, read and written safely.

Layouts:

- **HDF5** (``.h5`` / ``.hdf5``), the authors' layout: one dataset per video at the root, named by
  the video id, shape ``[T, R, D]`` (``R = 9`` regions), float32 or float16. Their training and
  evaluation code reads it with ``h5py.File(path)[video_id][:]``.
- **TFRecord** (a directory of ``features-NNNNN.tfrecord`` shards): one ``tf.train.Example`` per
  video with ``video_id`` (bytes), ``shape`` (3 int64), ``dtype`` (``float32``/``float16``) and
  ``features`` (the raw little-endian array). Each shard has a sidecar ``.ids`` file (JSON lines
  ``{"id", "offset", "length"}``) so that finding a video does not read the whole shard.

Writing is resumable and crash-safe: a rerun skips the videos already written, and a crash
(``kill -9``) loses at most the video being written; everything written before stays readable.

- TFRecord shards are append-only: each record is flushed to the OS before the next one starts, so
  a crash can only leave a torn *last* record, which the next writer cuts off (readers ignore it).
- HDF5 is not crash-safe on its own: it has no journal for its metadata, so a process killed
  while HDF5 updates the metadata of a file in place (the root group's links, heaps and B-trees,
  free space, the superblock) can leave the whole file unreadable, old videos included. SWMR
  (``libver="latest"``) does not help: it keeps a file readable while data is *appended to
  existing datasets*, but forbids creating datasets, and the authors' layout is one dataset per
  video. So an HDF5 file, once written, is never opened for writing again. New videos first go to
  an append-only journal (TFRecord shards in ``<file>.pending/``); on ``close()`` the journal's
  videos are *sealed* into one new HDF5 file, written under a temporary name, synced and renamed
  into place: the file itself on the first run, then ``<file>.parts/part-NNNNN.h5`` (a directory
  of HDF5 shards whose listing is the manifest: a part exists under its name only once
  complete). Only then is the journal removed. Appending costs the new videos' bytes only: the
  existing file keeps its inode and bytes, however large it is. :func:`open_features` reads the
  file, its parts and the journal as one; the authors' loaders, reading the file alone, see the
  videos of the first run (their own files, which have no parts, are unchanged).

Example:

    with open_writer("features.h5", dtype="float16") as writer:
        for video_id, features in work:                    # [T, 9, 512]
            if video_id not in writer:
                writer.write(video_id, features)

    with open_features("features.h5") as features:       # or a directory of shards, a glob
        features["video_1"]                               # [T, 9, 512] float32
        features.ids()

    dataset = tfrecord_dataset("features/")              # tf.data: (video_id, [T, R, D] float32)
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import struct
from collections.abc import Iterator, Mapping

import google_crc32c
import h5py
import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2

from dns_tf.durable import fsync_directory

HDF5_SUFFIXES = (".h5", ".hdf5")
TFRECORD_SUFFIX = ".tfrecord"
INDEX_SUFFIX = ".ids"
PROVENANCE_FILE = "provenance.json"
PROVENANCE_ATTR = "dns_tf_provenance"
PENDING_SUFFIX = ".pending"
PARTS_SUFFIX = ".parts"
DTYPES = ("float32", "float16")
DEFAULT_VIDEOS_PER_SHARD = 1000

_SHARD_PATTERN = re.compile(r"^features-(\d{5,})\.tfrecord$")
_PART_PATTERN = re.compile(r"^part-(\d{5,})\.h5$")
_SEALING_SUFFIX = ".sealing"
# TFRecord framing: uint64 length, uint32 masked CRC of the length, data, uint32 masked CRC of data.
_HEADER_BYTES = 12
_FOOTER_BYTES = 4


class FeatureFileError(ValueError):
    """A feature file, or a video in it, is not what the readers and writers expect."""


def check_provenance(where: str, recorded: Mapping | None, given: Mapping | None) -> None:
    """Refuses to append features made one way to a file of features made another.

    Provenance is a flat JSON-able dict, e.g. ``{"dims": 512, "backbone": "torchvision:<sha>",
    "pca": "<sha>", "fps": 1.0}``; every key both sides have must agree (a file written without
    provenance is described by the dims of its videos).
    """
    if not recorded or not given:
        return
    for key in sorted(set(recorded) & set(given)):
        if recorded[key] != given[key]:
            raise FeatureFileError(
                f"{where} holds features made with {key}={recorded[key]!r}, this run makes "
                f"{key}={given[key]!r}: appending would mix incompatible features; write them to "
                f"another file")


def file_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 (first 16 hex digits) of a file's bytes: which weights or PCA made the features."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _normalized(provenance: Mapping | None) -> dict | None:
    """Provenance as it reads back from JSON (tuples become lists, keys strings)."""
    return None if provenance is None else json.loads(json.dumps(dict(provenance)))


def _read_provenance_file(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            recorded = json.load(file)
    except (OSError, ValueError) as error:
        raise FeatureFileError(f"{path}: unreadable provenance ({error})") from None
    if not isinstance(recorded, dict):
        raise FeatureFileError(f"{path}: provenance must be a JSON object")
    return recorded


def write_json_atomically(path: str, value) -> None:
    """Writes ``value`` as JSON to ``path`` through a synced temporary file: all or nothing."""
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(value, file, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def feature_format(path: str | os.PathLike) -> str:
    """``"h5"`` for ``.h5``/``.hdf5`` paths, ``"tfrecord"`` for anything else (a directory, a
    shard, a glob)."""
    return "h5" if os.fspath(path).lower().endswith(HDF5_SUFFIXES) else "tfrecord"


def _check_video_id(video_id) -> str:
    if not isinstance(video_id, str) or not video_id or "/" in video_id or video_id in (".", ".."):
        raise FeatureFileError(
            f"video ids must be non-empty strings without '/', got {video_id!r}")
    return video_id


def _check_features(video_id, features, dtype) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 3 or 0 in features.shape or not np.issubdtype(features.dtype, np.floating):
        raise FeatureFileError(
            f"{video_id}: features must be a non-empty float array [T, R, D], got "
            f"{features.dtype} {features.shape}")
    return np.ascontiguousarray(features, dtype=np.dtype(dtype).newbyteorder("<"))


def _check_dtype(dtype) -> str:
    dtype = np.dtype(dtype).name
    if dtype not in DTYPES:
        raise FeatureFileError(f"feature dtype must be one of {DTYPES}, got {dtype}")
    return dtype


def _as_float32(video_id, array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:  # [T, D]: one region per frame, as the authors' loader reads it
        array = array[:, None, :]
    if array.ndim != 3:
        raise FeatureFileError(
            f"{video_id}: expected [T, R, D] features, found shape {array.shape}")
    return array.astype(np.float32, copy=False)


class _Lock:
    """An exclusive ``flock`` on the file ``path``: one writer per output at a time.

    The lock goes with the process (also when it is killed); the file is removed on release. A
    process that opened the file just before it was removed would lock a dead inode, so the lock
    counts only if ``path`` still names the locked file.
    """

    def __init__(self, path: str, what: str):
        self.path = path
        while True:
            self._file = open(path, "a")
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.close()
                raise FeatureFileError(f"{what} is being written by another process "
                                       f"(lock {path} is held)") from None
            try:
                if os.stat(path).st_ino == os.fstat(self._file.fileno()).st_ino:
                    return
            except FileNotFoundError:
                pass
            self._file.close()

    def release(self):
        if not self._file.closed:
            os.remove(self.path)
            self._file.close()


# ---------------------------------------------------------------------------------------------
# TFRecord records


def encode_example(video_id: str, features: np.ndarray) -> bytes:
    """One video as a serialised ``tf.train.Example`` (see the module docstring for its fields)."""
    example = example_pb2.Example()
    fields = example.features.feature
    fields["video_id"].bytes_list.value.append(video_id.encode("utf-8"))
    fields["shape"].int64_list.value.extend(features.shape)
    fields["dtype"].bytes_list.value.append(features.dtype.name.encode())
    fields["features"].bytes_list.value.append(features.tobytes())
    return example.SerializeToString()


def decode_example(record: bytes, where: str = "record") -> tuple[str, np.ndarray]:
    """``(video_id, features [T, R, D] float32)`` from :func:`encode_example`'s bytes."""
    try:
        fields = example_pb2.Example.FromString(record).features.feature
        video_id = fields["video_id"].bytes_list.value[0].decode("utf-8")
        shape = tuple(fields["shape"].int64_list.value)
        dtype = fields["dtype"].bytes_list.value[0].decode()
        raw = fields["features"].bytes_list.value[0]
    except Exception as error:  # protobuf raises its own DecodeError; missing fields IndexError
        raise FeatureFileError(f"{where}: not a feature record ({error})") from None
    if (dtype not in DTYPES or len(shape) != 3
            or np.prod(shape) * np.dtype(dtype).itemsize != len(raw)):
        raise FeatureFileError(f"{where}: inconsistent record for {video_id!r} "
                               f"(shape {shape}, dtype {dtype}, {len(raw)} bytes)")
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    return video_id, array.astype(np.float32)


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _scan_records(path: str) -> tuple[list[tuple[int, int]], int]:
    """``([(offset, total bytes) of each complete record], end of the last one)`` of a shard.

    Reads only the length headers (checking their CRCs). A record whose bytes run past the end of
    the file is the torn tail of a writer that was killed; it and anything after it are not
    returned.
    """
    records = []
    size = os.path.getsize(path)
    offset = 0
    with open(path, "rb") as file:
        while offset + _HEADER_BYTES <= size:
            file.seek(offset)
            header = file.read(_HEADER_BYTES)
            (length,), (crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            if _masked_crc(header[:8]) != crc:  # a killed writer leaves short headers, not bad ones
                raise FeatureFileError(f"{path} at byte {offset}: record header fails its CRC "
                                       f"check (corrupt file)")
            total = _HEADER_BYTES + length + _FOOTER_BYTES
            if offset + total > size:
                break
            records.append((offset, total))
            offset += total
    return records, offset


def _read_record(file, offset: int, total: int, where: str) -> bytes:
    """The data of the record at ``offset``, checked against its CRC-32C."""
    file.seek(offset + _HEADER_BYTES)
    data = file.read(total - _HEADER_BYTES - _FOOTER_BYTES)
    (crc,) = struct.unpack("<I", file.read(_FOOTER_BYTES))
    if _masked_crc(data) != crc:
        raise FeatureFileError(f"{where}: record data fails its CRC check (corrupt file)")
    return data


def _shard_index(path: str) -> list[tuple[str, int, int]]:
    """``[(video_id, offset, total bytes)]`` of the complete records of a shard, in file order.

    The sidecar ``.ids`` file gives the ids without reading the data; records it does not cover
    (the writer was killed between the two writes) are read to find their ids.
    """
    records, _ = _scan_records(path)
    known = {}
    index_path = path + INDEX_SUFFIX
    if os.path.exists(index_path):
        with open(index_path, encoding="utf-8") as file:
            for line in file:
                try:
                    entry = json.loads(line)
                    known[(entry["offset"], entry["length"])] = entry["id"]
                except (ValueError, KeyError, TypeError):
                    break  # a torn last line
    entries = []
    with open(path, "rb") as file:
        for offset, total in records:
            video_id = known.get((offset, total))
            if video_id is None:
                where = f"{path} at byte {offset}"
                video_id, _ = decode_example(_read_record(file, offset, total, where), where)
            entries.append((video_id, offset, total))
    return entries


def _shard_paths(location: str | os.PathLike) -> list[str]:
    """The shards of a TFRecord location: a directory, one file, or a glob pattern."""
    location = os.fspath(location)
    if os.path.isdir(location):
        paths = sorted(os.path.join(location, name) for name in os.listdir(location)
                       if name.endswith(TFRECORD_SUFFIX))
    elif os.path.isfile(location):
        paths = [location]
    else:
        paths = sorted(path for path in glob.glob(location) if os.path.isfile(path)
                       and not path.endswith(INDEX_SUFFIX))
        if not paths:
            raise FileNotFoundError(f"{location}: no such feature file, directory or shards")
    return paths


class _ShardAppender:
    """Appends records to one new TFRecord shard and its ``.ids`` sidecar.

    Each record is framed as TFRecord does (length, masked CRC-32C of the length, data, masked
    CRC-32C of the data) and flushed to the OS before the next one starts, then its sidecar line.
    """

    def __init__(self, path: str, index_path: str | None = None):
        self.path = path
        self._file = open(path, "wb")
        self._index_file = open(index_path or path + INDEX_SUFFIX, "w", encoding="utf-8")
        self.videos = 0
        self._bytes = 0

    def append(self, video_id: str, features: np.ndarray) -> None:
        """Appends one checked video ``[T, R, D]`` (already in its on-disk dtype)."""
        record = encode_example(video_id, features)
        length = struct.pack("<Q", len(record))
        self._file.write(length + struct.pack("<I", _masked_crc(length)) + record
                         + struct.pack("<I", _masked_crc(record)))
        self._file.flush()
        total = _HEADER_BYTES + len(record) + _FOOTER_BYTES
        self._index_file.write(json.dumps(
            {"id": video_id, "offset": self._bytes, "length": total}) + "\n")
        self._index_file.flush()
        self._bytes += total
        self.videos += 1

    def close(self, sync: bool = False) -> None:
        for file in (self._file, self._index_file):
            if file.closed:
                continue
            if sync:
                os.fsync(file.fileno())
            file.close()


def write_shard(path: str | os.PathLike, videos, dtype: str = "float32") -> int:
    """Writes one complete TFRecord shard (and its ``.ids`` sidecar) at once, atomically.

    For writers that produce whole shards side by side (the Beam pipelines, one task per shard):
    the shard is written under a temporary name, synced and renamed into place, so a task that is
    killed or retried leaves the shard either complete or absent, never torn; a rerun replaces it.

    Args:
        path: the shard, ``<directory>/features-NNNNN.tfrecord``.
        videos: iterable of ``(video_id, features [T, R, D])``, ids unique in the directory.
        dtype: ``"float32"`` or ``"float16"`` on disk.

    Returns:
        The number of videos written.
    """
    path = os.fspath(path)
    dtype = _check_dtype(dtype)
    if not _SHARD_PATTERN.match(os.path.basename(path)):
        raise FeatureFileError(f"{path}: shards are named features-NNNNN{TFRECORD_SUFFIX}")
    temporary = f"{path}.tmp-{os.getpid()}"
    shard = _ShardAppender(temporary, temporary + INDEX_SUFFIX)
    try:
        seen = set()
        for video_id, features in videos:
            video_id = _check_video_id(video_id)
            if video_id in seen:
                raise FeatureFileError(f"{path}: video {video_id!r} given twice")
            seen.add(video_id)
            shard.append(video_id, _check_features(video_id, features, dtype))
        shard.close(sync=True)
        os.replace(temporary + INDEX_SUFFIX, path + INDEX_SUFFIX)
        os.replace(temporary, path)
        fsync_directory(os.path.dirname(path) or ".")
    finally:
        shard.close()
        for leftover in (temporary, temporary + INDEX_SUFFIX):
            if os.path.exists(leftover):
                os.remove(leftover)
    return shard.videos


class TFRecordFeatureWriter:
    """Appends videos to TFRecord shards in ``directory``; resumable and crash-safe.

    Opening the directory again continues where the last writer stopped: its videos count as done
    (``video_id in writer``), a torn last record left by a killed writer is cut off, and new videos
    go to new shards (existing shards are never rewritten).

    Args:
        directory: where the ``features-NNNNN.tfrecord`` shards go (created if missing).
        dtype: ``"float32"`` or ``"float16"`` on disk.
        videos_per_shard: start a new shard after this many videos.
        provenance: how the features are made (see :func:`check_provenance`); recorded in
            ``provenance.json`` by the first writer, checked by the later ones.
    """

    def __init__(self, directory: str | os.PathLike, dtype: str = "float32",
                 videos_per_shard: int = DEFAULT_VIDEOS_PER_SHARD,
                 provenance: Mapping | None = None):
        self.directory = os.fspath(directory)
        self.dtype = _check_dtype(dtype)
        self.videos_per_shard = int(videos_per_shard)
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise FeatureFileError(f"{self.directory}: TFRecord output must be a directory")
        os.makedirs(self.directory, exist_ok=True)
        self._lock = _Lock(os.path.join(self.directory, ".lock"), self.directory)
        self._done: set[str] = set()
        # The number of the next shard this writer starts (one past the last on disk).
        self.next_shard = 0
        try:
            self._recover()
            self.provenance = self._settle_provenance(provenance)
        except BaseException:
            self._lock.release()
            raise
        self._shard = None

    def _recover(self) -> None:
        """Cuts torn tails off the shards of a killed writer and collects the finished videos."""
        for name in sorted(os.listdir(self.directory)):
            match = _SHARD_PATTERN.match(name)
            if not match:
                continue
            path = os.path.join(self.directory, name)
            self.next_shard = max(self.next_shard, int(match.group(1)) + 1)
            records, end = _scan_records(path)
            if end < os.path.getsize(path):
                os.truncate(path, end)
            entries = _shard_index(path)
            if not entries:
                os.remove(path)
                if os.path.exists(path + INDEX_SUFFIX):
                    os.remove(path + INDEX_SUFFIX)
                continue
            self._rewrite_index(path, entries)
            self._done.update(video_id for video_id, _, _ in entries)

    def _settle_provenance(self, given: Mapping | None) -> dict | None:
        """Checks ``given`` against what the directory records (or, for directories written
        without provenance, against the dims of a stored video) and records it if new."""
        path = os.path.join(self.directory, PROVENANCE_FILE)
        recorded = _read_provenance_file(path)
        if recorded is None and self._done:
            with TFRecordFeatures(self.directory) as existing:
                recorded = {"dims": int(existing[next(iter(existing))].shape[-1])}
        given = _normalized(given)
        check_provenance(self.directory, recorded, given)
        if given is not None and not os.path.exists(path):
            write_json_atomically(path, {**given, **(recorded or {})})
        return {**(given or {}), **(recorded or {})} or None

    @staticmethod
    def _rewrite_index(path, entries):
        temporary = path + INDEX_SUFFIX + ".tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            for video_id, offset, total in entries:
                file.write(json.dumps({"id": video_id, "offset": offset, "length": total}) + "\n")
        os.replace(temporary, path + INDEX_SUFFIX)

    def __contains__(self, video_id) -> bool:
        return video_id in self._done

    def __len__(self) -> int:
        return len(self._done)

    def ids(self) -> set[str]:
        """The videos written so far, by this writer and the ones before it."""
        return set(self._done)

    def write(self, video_id: str, features) -> None:
        """Appends one video ``[T, R, D]``; it is on disk (in the OS) when this returns."""
        video_id = _check_video_id(video_id)
        if video_id in self._done:
            raise FeatureFileError(f"{video_id}: already written to {self.directory}")
        features = _check_features(video_id, features, self.dtype)
        dims = (self.provenance or {}).get("dims")
        if dims is not None and features.shape[-1] != dims:
            raise FeatureFileError(f"{video_id}: {features.shape[-1]}-d features, but "
                                   f"{self.directory} holds {dims}-d ones")
        if dims is None:
            self.provenance = {**(self.provenance or {}), "dims": int(features.shape[-1])}
        if self._shard is None or self._shard.videos >= self.videos_per_shard:
            self._close_shard()
            self._shard = _ShardAppender(self._shard_name(self.next_shard))
            self.next_shard += 1
        self._shard.append(video_id, features)
        self._done.add(video_id)

    def _shard_name(self, number: int) -> str:
        return os.path.join(self.directory, f"features-{number:05d}{TFRECORD_SUFFIX}")

    def _close_shard(self) -> None:
        if self._shard is not None:
            self._shard.close()
            self._shard = None

    def close(self) -> None:
        self._close_shard()
        self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _part_paths(path: str) -> list[str]:
    """The sealed parts appended to the HDF5 file ``path``, in the order they were written."""
    directory = path + PARTS_SUFFIX
    if not os.path.isdir(directory):
        return []
    return [os.path.join(directory, name) for name in sorted(os.listdir(directory))
            if _PART_PATTERN.match(name)]


class HDF5FeatureWriter:
    """Writes the authors' HDF5 layout through a crash-safe journal; never rewrites a file.

    ``write`` appends to the journal ``<path>.pending/`` (TFRecord shards). ``close`` seals the
    journal's videos into one new HDF5 file, written under a temporary name and renamed into
    place: ``path`` itself if it does not exist yet, else the next part
    ``<path>.parts/part-NNNNN.h5``. Only then is the journal removed. A rerun after a crash finds
    the journal, skips its videos and seals everything when it closes. See the module docstring
    for why videos are not appended to the existing file.

    Args:
        path: the ``.h5`` / ``.hdf5`` file.
        dtype: ``"float32"`` or ``"float16"`` datasets.
        provenance: how the features are made (see :func:`check_provenance`); recorded in the
            ``dns_tf_provenance`` attribute of every file sealed, checked when appending.
    """

    def __init__(self, path: str | os.PathLike, dtype: str = "float32",
                 provenance: Mapping | None = None):
        self.path = os.fspath(path)
        self.dtype = _check_dtype(dtype)
        self._lock = _Lock(self.path + ".lock", self.path)
        try:
            parts = self.path + PARTS_SUFFIX
            for name in os.listdir(parts) if os.path.isdir(parts) else ():
                if name.endswith(_SEALING_SUFFIX):  # a seal that was killed: the journal has it
                    os.remove(os.path.join(parts, name))
            if os.path.exists(self.path + _SEALING_SUFFIX):
                os.remove(self.path + _SEALING_SUFFIX)
            self._existing = set()
            recorded = None
            if os.path.exists(self.path):
                with _sealed_features(self.path) as file:
                    self._existing = set(file.keys())
                    recorded = file.provenance
                    if recorded is None and len(file):
                        recorded = {"dims": int(file[file.ids()[0]].shape[-1])}
            given = _normalized(provenance)
            check_provenance(self.path, recorded, given)
            self._journal = TFRecordFeatureWriter(
                self.path + PENDING_SUFFIX, dtype=self.dtype,
                provenance={**(given or {}), **(recorded or {})} or None)
        except BaseException:
            self._lock.release()
            raise

    def __contains__(self, video_id) -> bool:
        return video_id in self._existing or video_id in self._journal

    def __len__(self) -> int:
        return len(self.ids())

    def ids(self) -> set[str]:
        return self._existing | self._journal.ids()

    def write(self, video_id: str, features) -> None:
        """Appends one video ``[T, R, D]`` to the journal; it survives a crash once this returns."""
        if video_id in self._existing:
            raise FeatureFileError(f"{video_id}: already in {self.path}")
        self._journal.write(video_id, features)

    def close(self) -> None:
        """Seals the journal's videos into a new file (``path`` or its next part), then removes
        the journal."""
        self._journal.close()
        try:
            self._seal()
        finally:
            self._lock.release()

    def _seal(self) -> None:
        journal_dir = self.path + PENDING_SUFFIX
        with TFRecordFeatures(journal_dir) as pending:
            new = [video_id for video_id in pending.ids() if video_id not in self._existing]
            if new:
                self._write_sealed(self._next_file(), pending, new)
        self._existing.update(new)
        shutil.rmtree(journal_dir)

    def _next_file(self) -> str:
        if not os.path.exists(self.path):
            return self.path
        parts = _part_paths(self.path)
        number = int(_PART_PATTERN.match(os.path.basename(parts[-1])).group(1)) + 1 if parts else 0
        os.makedirs(self.path + PARTS_SUFFIX, exist_ok=True)
        return os.path.join(self.path + PARTS_SUFFIX, f"part-{number:05d}.h5")

    def _write_sealed(self, target: str, pending: FeatureFile, video_ids: list[str]) -> None:
        """Writes ``video_ids`` to a new HDF5 file that appears at ``target`` complete or not at
        all (temporary name, flushed, synced, renamed, directory synced)."""
        temporary = target + _SEALING_SUFFIX
        with h5py.File(temporary, "w") as sealed:
            if self._journal.provenance:
                sealed.attrs[PROVENANCE_ATTR] = json.dumps(self._journal.provenance,
                                                           sort_keys=True)
            for video_id in video_ids:
                sealed.create_dataset(video_id, data=pending[video_id].astype(self.dtype))
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, target)
        fsync_directory(os.path.dirname(os.path.abspath(target)))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def open_writer(path: str | os.PathLike, dtype: str = "float32", format: str | None = None,
                provenance: Mapping | None = None):
    """A resumable writer: :class:`HDF5FeatureWriter` for ``.h5``/``.hdf5`` (or
    ``format="h5"``), :class:`TFRecordFeatureWriter` on a directory otherwise. ``provenance``
    is recorded with the features and checked against what an existing output records."""
    format = format or feature_format(path)
    if format == "h5":
        return HDF5FeatureWriter(path, dtype=dtype, provenance=provenance)
    if format == "tfrecord":
        return TFRecordFeatureWriter(path, dtype=dtype, provenance=provenance)
    raise FeatureFileError(f"unknown feature format {format!r}; expected 'h5' or 'tfrecord'")


# ---------------------------------------------------------------------------------------------
# Readers


def _open_hdf5(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise FeatureFileError(f"{path}: not a readable HDF5 file ({error})") from None


# Deflate, the strongest HDF5 filter h5py writes, expands at most ~1032x.
_MAX_FILTER_RATIO = 1032


def _check_dataset(path: str, video_id: str, dataset) -> None:
    """Refuses a dataset that is not float features, or declares more data than the file could
    hold (before anything is allocated: a 1 KB file must not make the reader allocate GBs)."""
    if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind != "f":
        raise FeatureFileError(f"{path}: {video_id!r} is not a float dataset "
                               f"({getattr(dataset, 'dtype', type(dataset).__name__)})")
    declared = int(np.prod(dataset.shape, dtype=np.float64) * dataset.dtype.itemsize)
    file_size = os.path.getsize(path)
    limit = file_size * (_MAX_FILTER_RATIO if dataset.compression else 1)
    if declared > limit:
        raise FeatureFileError(f"{path}: dataset {video_id!r} declares shape {dataset.shape} "
                               f"{dataset.dtype} ({declared} bytes), more than the "
                               f"{file_size}-byte file can hold")


class FeatureFile(Mapping):
    """Read-only mapping ``video_id -> features [T, R, D] float32``; a context manager."""

    provenance: dict | None = None  # how the features were made, if the writer recorded it

    def ids(self) -> list[str]:
        """The video ids, in file order."""
        return list(self)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _missing(self, video_id):
        return KeyError(f"video {video_id!r} is not in {self}")


class HDF5Features(FeatureFile):
    """The authors' HDF5 layout: one ``[T, R, D]`` (or ``[T, D]``) dataset per video id."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._file = _open_hdf5(self.path)
        self._ids = [key for key, item in self._file.items() if isinstance(item, h5py.Dataset)]
        recorded = self._file.attrs.get(PROVENANCE_ATTR)
        try:
            self.provenance = None if recorded is None else json.loads(recorded)
        except (TypeError, ValueError):
            raise FeatureFileError(f"{self.path}: unreadable {PROVENANCE_ATTR} attribute") from None

    def __getitem__(self, video_id) -> np.ndarray:
        if not isinstance(video_id, str) or video_id not in self._file:
            raise self._missing(video_id)
        dataset = self._file[video_id]
        _check_dataset(self.path, video_id, dataset)
        return _as_float32(video_id, dataset[()])

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, video_id) -> bool:
        return isinstance(video_id, str) and video_id in self._file

    def close(self) -> None:
        self._file.close()

    def __repr__(self):
        return f"HDF5Features({self.path!r})"


class TFRecordFeatures(FeatureFile):
    """TFRecord shards (a directory, one shard or a glob), indexed for random access.

    A video written twice (two runs into different shards) resolves to its last copy.
    """

    def __init__(self, location: str | os.PathLike):
        self.location = os.fspath(location)
        self._paths = _shard_paths(self.location)
        if os.path.isdir(self.location):
            self.provenance = _read_provenance_file(os.path.join(self.location, PROVENANCE_FILE))
        self._index: dict[str, tuple[int, int, int]] = {}
        for number, path in enumerate(self._paths):
            for video_id, offset, total in _shard_index(path):
                self._index[video_id] = (number, offset, total)
        self._files = {}

    def __getitem__(self, video_id) -> np.ndarray:
        if video_id not in self._index:
            raise self._missing(video_id)
        number, offset, total = self._index[video_id]
        if number not in self._files:
            self._files[number] = open(self._paths[number], "rb")
        where = f"{self._paths[number]} at byte {offset}"
        found, features = decode_example(
            _read_record(self._files[number], offset, total, where), where)
        if found != video_id:
            raise FeatureFileError(f"{where}: index says {video_id!r}, record holds {found!r}")
        return features

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, video_id) -> bool:
        return video_id in self._index

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()

    def __repr__(self):
        return f"TFRecordFeatures({self.location!r})"


class ShardedFeatures(FeatureFile):
    """Several feature files read as one (HDF5 parts, journal shards, a directory of shards).

    A video in more than one of them resolves to its copy in the last one.

    Args:
        files: :class:`FeatureFile` objects, oldest first; closed with this one.
        name: what to call them in messages.
    """

    def __init__(self, files: list[FeatureFile], name: str):
        self.files = list(files)
        self.name = name
        self.provenance = next((file.provenance for file in self.files if file.provenance), None)
        self._where = {video_id: file for file in self.files for video_id in file}

    def __getitem__(self, video_id) -> np.ndarray:
        if video_id not in self._where:
            raise self._missing(video_id)
        return self._where[video_id][video_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, video_id) -> bool:
        return video_id in self._where

    def close(self) -> None:
        for file in self.files:
            file.close()

    def __repr__(self):
        return f"ShardedFeatures({self.name!r}, {len(self.files)} files)"


def _opened_all(opener, locations) -> list[FeatureFile]:
    """``[opener(location)]``; those already opened are closed if one fails."""
    files = []
    try:
        for location in locations:
            files.append(opener(location))
    except BaseException:
        for file in files:
            file.close()
        raise
    return files


def _sealed_features(path: str) -> FeatureFile:
    """An HDF5 file with the parts appended to it (what finished writers sealed)."""
    parts = _part_paths(path)
    if not parts:
        return HDF5Features(path)
    return ShardedFeatures(_opened_all(HDF5Features, [path, *parts]), path)


def _hdf5_shards(directory: str) -> list[str]:
    return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                  if name.lower().endswith(HDF5_SUFFIXES))


def open_features(path: str | os.PathLike) -> FeatureFile:
    """Opens region features for reading.

    ``path`` is an ``.h5``/``.hdf5`` file (with the parts appended to it and the videos of an
    unfinished run still in its journal), a directory of HDF5 files (read as one), or TFRecord
    shards (a directory, a shard, a glob).
    """
    path = os.fspath(path)
    if feature_format(path) == "h5":
        journal = path + PENDING_SUFFIX
        if os.path.isdir(journal) and _shard_paths(journal):
            sealed = [path] if os.path.exists(path) else []
            return ShardedFeatures(_opened_all(
                lambda location: (TFRecordFeatures(location) if location == journal
                                  else _sealed_features(location)), [*sealed, journal]),
                f"{path} with its pending journal")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such feature file")
        return _sealed_features(path)
    if os.path.isdir(path) and not _shard_paths(path):
        shards = _hdf5_shards(path)
        if shards:
            return ShardedFeatures(_opened_all(_sealed_features, shards), path)
    return TFRecordFeatures(path)


def tfrecord_dataset(location: str | os.PathLike, num_parallel_reads: int | None = None):
    """A ``tf.data.Dataset`` of ``(video_id, features [T, R, D] float32)`` from TFRecord shards.

    Args:
        location: a directory of shards, one shard, or a glob.
        num_parallel_reads: shards read in parallel (``tf.data.AUTOTUNE`` when None).
    """
    spec = {
        "video_id": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "dtype": tf.io.FixedLenFeature([], tf.string),
        "features": tf.io.FixedLenFeature([], tf.string),
    }

    def parse(record):
        fields = tf.io.parse_single_example(record, spec)
        raw = fields["features"]
        features = tf.cond(
            tf.equal(fields["dtype"], "float16"),
            lambda: tf.cast(tf.io.decode_raw(raw, tf.float16), tf.float32),
            lambda: tf.io.decode_raw(raw, tf.float32))
        return fields["video_id"], tf.reshape(features, fields["shape"])

    return tf.data.TFRecordDataset(
        _shard_paths(location),
        num_parallel_reads=tf.data.AUTOTUNE if num_parallel_reads is None else num_parallel_reads,
    ).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
