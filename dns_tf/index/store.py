"""``VideoIndex``: an on-disk, crash-safe collection of indexed videos, searchable by coarse vector.

Layout of an index directory::

    index.sqlite        SQLite (WAL): one row per video (id, metadata JSON, selector score, frame
                        count, offsets and CRC-32s of its blobs), the index's settings, tombstones
    fine.bin            append-only fine representations, [T, R, B/8] uint8 or [T, R, D] float16
    coarse.f32          append-only coarse vectors, fixed rows of [Dc] float32
    searcher/gen-N/     the trained ScaNN searcher of generation N (collections >= 20K videos)
    writer.lock         held (flock) by the one process that opened the index for writing

Guarantees:

* Crash safety: blobs are appended and fsynced before the SQLite transaction that points at them
  commits (``synchronous=FULL``). A crash (even ``kill -9`` mid-``add``) leaves at most unreferenced
  bytes past the committed ends recorded in SQLite, which the next writer truncates; every row
  points at complete data, checked by CRC-32 on every read and by :meth:`VideoIndex.verify`.
* Integrity: every coarse vector is verified against its CRC-32 wherever it is read or a searcher
  is built or loaded (:class:`~dns_tf.index.coarse_store.CoarseVectorStore`); files are opened
  without following symlinks; a writer checks the index on open and refuses to write to a damaged
  one (:meth:`VideoIndex.verify` lists problems, :meth:`VideoIndex.repair` drops damaged videos); a
  damaged SQLite page is an :class:`IndexCorruptError`.
* One writer, many readers: the writer holds ``writer.lock``; readers (other processes or other
  ``VideoIndex`` objects, ``readonly=True``) see exactly the committed videos, consistently within
  each call, and new videos are searchable at once.
* Search: the coarse vectors of the last *generation* are in a searcher sized to the collection
  (brute force below ``CoarseConfig.brute_force_below`` videos, ScaNN above); videos added since sit
  in an exact delta, removed ones are filtered out. ``rebuild()`` (automatic once the delta and
  removals pass ``CoarseConfig.rebuild_*``) starts a new generation. The writer persists a ScaNN
  generation in ``searcher/gen-N`` so that readers load it instead of retraining; if it is missing or
  unreadable the searcher is rebuilt from ``coarse.f32``, which stays the source of truth.

Example:

    with VideoIndex.create("videos.idx", coarse_dims=1024, fine_kind="bits",
                           fine_shape_tail=(9, 512), metadata={"student": "fg_bin"}) as index:
        index.add("v1", coarse=c1, fine=codes1, selector_score=0.8, metadata={"file": "v1.mp4"})
    with VideoIndex.open("videos.idx", readonly=True) as index:
        result = index.search(query_coarse, k=100)     # result.ids[0], result.scores[0]
        record = index.get(result.ids[0][0])           # record.fine_float32() -> ±1 [T, 9, 512]
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from dns_tf.durable import fsync_directory
from dns_tf.index.coarse import (BruteForceSearcher, CoarseConfig, CoarseSearcher, MergedSearcher,
                                 ScannSearcher, as_queries, build_searcher)
from dns_tf.index.coarse_store import CoarseVectorStore
from dns_tf.index.errors import (DuplicateVideoError, IndexCorruptError, IndexLockedError,
                                 NotAnIndexError, VideoIndexError)
from dns_tf.fine_representation import FineCodec, unpack_bits
from dns_tf.index.fine_store import AppendOnlyFile, checksum, open_no_follow

INDEX_FORMAT = "dns-tf-video-index"
FORMAT_VERSION = 1
DB_FILE = "index.sqlite"
FINE_FILE = "fine.bin"
COARSE_FILE = "coarse.f32"
LOCK_FILE = "writer.lock"
SEARCHER_DIR = "searcher"
_SQL_CHUNK = 900  # parameters per IN (...) query
# A video's row as _read_record takes it.
_RECORD_COLUMNS = ("video_id, num_frames, selector_score, coarse_row, coarse_crc32, fine_offset, "
                   "fine_nbytes, fine_crc32, metadata")

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE videos (
    key INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: searchers refer to videos by key
    video_id TEXT NOT NULL UNIQUE,
    num_frames INTEGER NOT NULL,
    selector_score REAL NOT NULL,
    coarse_row INTEGER NOT NULL,
    coarse_crc32 INTEGER NOT NULL,
    fine_offset INTEGER NOT NULL,
    fine_nbytes INTEGER NOT NULL,
    fine_crc32 INTEGER NOT NULL,
    metadata TEXT
);
CREATE TABLE tombstones (seq INTEGER PRIMARY KEY AUTOINCREMENT, key INTEGER NOT NULL);
"""


@dataclasses.dataclass(frozen=True)
class VideoRecord:
    """One stored video.

    Attributes:
        video_id: its id.
        coarse: ``[Dc]`` float32 coarse vector.
        fine: ``[T, R, B/8]`` uint8 packed codes (``"bits"``) or ``[T, R, D]`` float16 features.
        selector_score: the selector's self-similarity score of the video.
        metadata: the JSON-able dict given to ``add`` (or None).
        fine_kind: ``"bits"`` or ``"float16"``.
    """

    video_id: str
    coarse: np.ndarray
    fine: np.ndarray
    selector_score: float
    metadata: dict | None
    fine_kind: str

    @property
    def num_frames(self) -> int:
        return int(self.fine.shape[0])

    def fine_float32(self) -> np.ndarray:
        """The fine representation as the model produced it: ±1 codes ``[T, R, B]`` or ``[T, R, D]``."""
        if self.fine_kind == "bits":
            return unpack_bits(self.fine)
        return self.fine.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Top-k coarse search results of ``Q`` queries: ``ids[q][j]`` scored ``scores[q, j]``, best
    first, with ``k' = min(k, len(index))`` columns."""

    ids: list[list[str]]
    scores: np.ndarray


class _Delta:
    """Vectors added since the searcher's generation was built: a growable ``[n, D]`` buffer."""

    def __init__(self, dims: int):
        self.keys = np.empty(0, np.int64)
        self.vectors = np.empty((0, dims), np.float32)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        needed = self.size + len(keys)
        if needed > len(self.keys):
            capacity = max(needed, 2 * len(self.keys), 64)
            self.keys = np.resize(self.keys, capacity)
            grown = np.empty((capacity, self.vectors.shape[1]), np.float32)
            grown[:self.size] = self.vectors[:self.size]
            self.vectors = grown
        self.keys[self.size:needed] = keys
        self.vectors[self.size:needed] = vectors
        self.size = needed

    def remove(self, key: int) -> bool:
        where = np.flatnonzero(self.keys[:self.size] == key)
        if not len(where):
            return False
        last = self.size - 1
        self.keys[where[0]] = self.keys[last]
        self.vectors[where[0]] = self.vectors[last]
        self.size = last
        return True

    def searcher(self) -> BruteForceSearcher:
        return BruteForceSearcher(self.vectors[:self.size], self.keys[:self.size])


def _chunks(items: Sequence, size: int = _SQL_CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class VideoIndex:
    """An on-disk collection of indexed videos (see the module docstring for layout and guarantees).

    Create with :meth:`create`, open with :meth:`open`; use as a context manager or call
    :meth:`close`. A ``VideoIndex`` object is safe to share between threads.
    """

    # ----------------------------------------------------------------------------------- lifecycle
    def __init__(self, path: str, readonly: bool, config: CoarseConfig | None, auto_rebuild: bool,
                 repairing: bool = False):
        """Use :meth:`create`, :meth:`open` or :meth:`repair`."""
        self.path = os.path.abspath(path)
        self.readonly = readonly
        self._repairing = repairing
        self.config = config or CoarseConfig()
        self.auto_rebuild = auto_rebuild
        self._lock = threading.RLock()
        self._lock_fd = -1
        self._db: sqlite3.Connection | None = None
        self._fine: AppendOnlyFile | None = None
        self._coarse: CoarseVectorStore | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    @classmethod
    def create(cls, path: str, coarse_dims: int, fine_kind: str, fine_shape_tail: Sequence[int],
               metadata: Mapping[str, Any] | None = None, config: CoarseConfig | None = None,
               auto_rebuild: bool = True) -> "VideoIndex":
        """Creates an empty index at ``path`` (missing or an empty directory) and opens it for
        writing.

        Args:
            path: the index directory.
            coarse_dims: ``Dc``, size of the coarse vectors.
            fine_kind: ``"bits"`` (binary codes, stored packed) or ``"float16"`` (features).
            fine_shape_tail: per-frame shape of the fine representation as the model produces it:
                ``(R, B)`` for bits, ``(R, D)`` for float16.
            metadata: JSON-able facts about the whole index (models, settings), see ``.metadata``.
            config: coarse search settings (not stored; every ``open`` may pass its own).
            auto_rebuild: rebuild the searcher when the delta grows past the config's threshold.
        """
        path = os.path.abspath(path)
        codec = FineCodec(fine_kind, fine_shape_tail)
        if int(coarse_dims) <= 0:
            raise ValueError(f"coarse_dims must be positive, got {coarse_dims}")
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise FileExistsError(f"cannot create a video index at {path}: it exists and is not an "
                                  f"empty directory")
        try:
            metadata_json = json.dumps(dict(metadata or {}), sort_keys=True)
        except TypeError as error:
            raise TypeError(f"index metadata must be JSON-serialisable: {error}") from None
        # Build in a sibling directory and rename it into place: a crash leaves no half index.
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        staging = os.path.join(parent, f".{os.path.basename(path)}.creating-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(os.path.join(staging, SEARCHER_DIR))
        db = sqlite3.connect(os.path.join(staging, DB_FILE), isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            settings = {
                "format": INDEX_FORMAT, "version": FORMAT_VERSION, "coarse_dims": int(coarse_dims),
                "fine_kind": codec.kind, "fine_shape_tail": list(codec.shape_tail),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "metadata": metadata_json,
                "uid": uuid.uuid4().hex,
                "fine_end": 0, "coarse_rows": 0,
                "searcher_generation": 0, "searcher_kind": "brute_force",
                "searcher_max_key": 0, "searcher_size": 0,
            }
            db.executemany("INSERT INTO meta VALUES (?, ?)",
                           [(name, json.dumps(value)) for name, value in settings.items()])
        finally:
            db.close()
        for name in (FINE_FILE, COARSE_FILE, LOCK_FILE):
            open(os.path.join(staging, name), "wb").close()
        fsync_directory(staging)
        os.rename(staging, path)
        fsync_directory(parent)
        return cls(path, readonly=False, config=config, auto_rebuild=auto_rebuild)

    @classmethod
    def open(cls, path: str, readonly: bool = False, config: CoarseConfig | None = None,
             auto_rebuild: bool = True) -> "VideoIndex":
        """Opens an existing index; ``readonly=False`` takes the writer lock (one writer at a time,
        :class:`IndexLockedError` otherwise), readers need no lock."""
        return cls(path, readonly=readonly, config=config, auto_rebuild=auto_rebuild)

    def _open(self) -> None:
        db_path = os.path.join(self.path, DB_FILE)
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"no video index at {self.path}: not a directory")
        if not os.path.isfile(db_path):
            raise NotAnIndexError(f"{self.path} is not a dns-tf video index (no {DB_FILE})")
        for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", LOCK_FILE):
            if os.path.islink(os.path.join(self.path, name)):
                # SQLite follows symlinks; the blob files are opened with O_NOFOLLOW.
                raise VideoIndexError(f"{os.path.join(self.path, name)} is a symlink; an index's "
                                      f"files must be regular files (symlinks are not followed)")
        if not self.readonly:
            self._take_writer_lock()
        uri = f"file:{db_path}?mode={'ro' if self.readonly else 'rw'}"
        self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=30000")
        if not self.readonly:
            self._db.execute("PRAGMA synchronous=FULL")
        try:
            settings = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
            settings = {name: json.loads(value) for name, value in settings.items()}
        except sqlite3.DatabaseError as error:
            raise NotAnIndexError(f"{self.path} is not a dns-tf video index ({db_path}: {error})") \
                from None
        if settings.get("format") != INDEX_FORMAT:
            raise NotAnIndexError(f"{self.path} is not a dns-tf video index ({db_path} has no "
                                  f"'{INDEX_FORMAT}' format marker)")
        if settings.get("version") != FORMAT_VERSION:
            raise NotAnIndexError(f"{self.path}: index format version {settings.get('version')}, "
                                  f"this code reads version {FORMAT_VERSION}")
        self.coarse_dims = int(settings["coarse_dims"])
        self.codec = FineCodec(settings["fine_kind"], settings["fine_shape_tail"])
        self.metadata = json.loads(settings["metadata"])
        # Identifies this index wherever it is moved (indexes made before uids: their creation).
        self.uid = settings.get("uid") or f"created-{settings['created']}"
        self._coarse_row_bytes = 4 * self.coarse_dims
        self._fine = AppendOnlyFile(os.path.join(self.path, FINE_FILE), writable=not self.readonly)
        self._coarse = CoarseVectorStore(os.path.join(self.path, COARSE_FILE), self.coarse_dims,
                                         writable=not self.readonly)
        self._reset_search_state()
        if not self.readonly and not self._repairing:
            with self._sqlite_errors():
                self._recover()
            self._check_before_writing()
            if self._generation_files_missing(self._meta()):
                self.rebuild()
            else:
                self._maybe_rebuild()

    @classmethod
    def repair(cls, path: str) -> list[str]:
        """Removes the videos whose stored data fails its CRC-32 checks (they can be added again)
        and rebuilds the searcher; returns their ids. A damaged SQLite file cannot be repaired
        this way (:class:`IndexCorruptError`): build a new index."""
        index = cls(path, readonly=False, config=None, auto_rebuild=False, repairing=True)
        try:
            with index._lock:
                with index._sqlite_errors():
                    index._recover()
                    check = index._db.execute("PRAGMA quick_check").fetchall()
                if check != [("ok",)]:
                    raise IndexCorruptError(f"{os.path.join(index.path, DB_FILE)} is damaged "
                                            f"({check[0][0]}); build a new index")
                damaged = []
                with index._transaction() as db:
                    for row in db.execute(f"SELECT {_RECORD_COLUMNS} FROM videos").fetchall():
                        try:
                            index._read_record(*row)
                        except (IndexCorruptError, OSError, ValueError):
                            damaged.append(row[0])
                with index._transaction(write=True) as db:
                    for video_id in damaged:
                        key = index._key_of(db, video_id)
                        db.execute("DELETE FROM videos WHERE key = ?", (key,))
                        db.execute("INSERT INTO tombstones (key) VALUES (?)", (key,))
                index.rebuild()
            return damaged
        finally:
            index.close()

    def _take_writer_lock(self) -> None:
        lock_path = os.path.join(self.path, LOCK_FILE)
        self._lock_fd = open_no_follow(lock_path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise IndexLockedError(
                f"{self.path} is open for writing elsewhere ({lock_path} is locked); open it with "
                f"readonly=True or wait for the writer to close it") from None

    def _recover(self) -> None:
        """Writer start-up: drop crash leftovers (bytes past the committed ends, unreferenced
        searcher generations) and count the changes pending since the searcher's generation."""
        settings = self._meta()
        self._fine_end = int(settings["fine_end"])
        self._coarse_rows = int(settings["coarse_rows"])
        self._fine.truncate(self._fine_end)
        self._coarse.truncate(self._coarse_rows)
        current = self._generation_dir(settings["searcher_generation"])
        searcher_root = os.path.join(self.path, SEARCHER_DIR)
        os.makedirs(searcher_root, exist_ok=True)
        for name in os.listdir(searcher_root):
            if os.path.join(searcher_root, name) != current:
                shutil.rmtree(os.path.join(searcher_root, name), ignore_errors=True)
        max_key, size = int(settings["searcher_max_key"]), int(settings["searcher_size"])
        newer, = self._db.execute("SELECT count(*) FROM videos WHERE key > ?", (max_key,)).fetchone()
        older, = self._db.execute("SELECT count(*) FROM videos WHERE key <= ?", (max_key,)).fetchone()
        self._pending = newer + (size - older)

    def close(self) -> None:
        """Closes the files and the database and releases the writer lock (idempotent)."""
        with self._lock:
            for store in (self._fine, self._coarse):
                if store is not None:
                    store.close()
            self._fine = self._coarse = None
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1

    def __enter__(self) -> "VideoIndex":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "writable"
        return (f"VideoIndex({self.path!r}, {mode}, coarse_dims={self.coarse_dims}, "
                f"fine_kind={self.codec.kind!r}, fine_shape_tail={self.codec.shape_tail})")

    @property
    def fine_kind(self) -> str:
        return self.codec.kind

    @property
    def fine_shape_tail(self) -> tuple[int, ...]:
        return self.codec.shape_tail

    # ------------------------------------------------------------------------------------- sqlite
    def _check_open(self) -> sqlite3.Connection:
        if self._db is None:
            raise VideoIndexError(f"the video index at {self.path} is closed")
        return self._db

    @contextlib.contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One SQLite transaction: a consistent snapshot for reads, atomic commit for writes."""
        db = self._check_open()
        with self._sqlite_errors():
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextlib.contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """A damaged database file becomes one clear :class:`IndexCorruptError`."""
        try:
            yield
        except sqlite3.DatabaseError as error:
            if getattr(error, "sqlite_errorcode", None) not in (sqlite3.SQLITE_CORRUPT,
                                                                sqlite3.SQLITE_NOTADB):
                raise
            raise IndexCorruptError(
                f"{os.path.join(self.path, DB_FILE)} is damaged ({error}); 'dns-tf index verify "
                f"{self.path}' reports it; rebuild the index from the feature files") from None

    def _meta(self) -> dict[str, Any]:
        with self._sqlite_errors():
            rows = self._check_open().execute("SELECT name, value FROM meta").fetchall()
        return {name: json.loads(value) for name, value in rows}

    def _key_of(self, db: sqlite3.Connection, video_id: str) -> int:
        row = db.execute("SELECT key FROM videos WHERE video_id = ?", (video_id,)).fetchone()
        if row is None:
            raise KeyError(f"video {video_id!r} is not in the index at {self.path}")
        return row[0]

    # ------------------------------------------------------------------------------------- writes
    def add(self, video_id: str, coarse: np.ndarray, fine: np.ndarray, selector_score: float,
            metadata: Mapping[str, Any] | None = None, replace: bool = False) -> None:
        """Adds one video; durable when it returns.

        Args:
            video_id: a non-empty string, unique in the index.
            coarse: ``[Dc]`` coarse vector.
            fine: ``[T, *fine_shape_tail]``; for ``"bits"`` also packed uint8 ``[T, R, B/8]``.
            selector_score: the selector's self-similarity score (a float or a size-1 array).
            metadata: JSON-able dict stored with the video.
            replace: overwrite an existing ``video_id`` (atomically) instead of raising
                :class:`DuplicateVideoError`.
        """
        self.add_many([video_id], np.asarray(coarse)[None], [fine], [selector_score],
                      None if metadata is None else [metadata], replace=replace)

    def add_many(self, video_ids: Sequence[str], coarse: np.ndarray, fine: Sequence[np.ndarray],
                 selector_scores: Sequence[float], metadata: Sequence[Mapping | None] | None = None,
                 replace: bool = False) -> None:
        """Adds ``N`` videos in one transaction (all or none); arguments as in :meth:`add`, batched:
        ``coarse [N, Dc]``, ``fine`` N arrays, ``selector_scores [N]``, ``metadata`` N dicts."""
        with self._lock:
            if self.readonly:
                raise VideoIndexError(f"the video index at {self.path} is open read-only")
            self._check_open()
            rows, fine_blobs, coarse = self._encode(video_ids, coarse, fine, selector_scores,
                                                    metadata)
            ids = [row[0] for row in rows]
            existing = []
            for chunk in _chunks(ids):
                existing += self._db.execute(
                    f"SELECT key, video_id FROM videos WHERE video_id IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
            if existing and not replace:
                raise DuplicateVideoError(
                    f"video {existing[0][1]!r} is already in the index at {self.path} "
                    f"({len(existing)} of the {len(ids)} ids are); pass replace=True to overwrite")
            # Data first, fsynced; only then the rows pointing at it (crash safety).
            fine_offsets = self._fine.append(fine_blobs, at=self._fine_end)
            coarse_crcs = self._coarse.append(coarse, first_row=self._coarse_rows)
            fine_end = fine_offsets[-1] + len(fine_blobs[-1])
            coarse_rows = self._coarse_rows + len(rows)
            records = [
                (video_id, frames, score, self._coarse_rows + i, coarse_crcs[i],
                 fine_offsets[i], len(fine_blobs[i]), checksum(fine_blobs[i]), meta_json)
                for i, (video_id, frames, score, meta_json) in enumerate(rows)]
            with self._transaction(write=True) as db:
                for key, _ in existing:
                    db.execute("DELETE FROM videos WHERE key = ?", (key,))
                    db.execute("INSERT INTO tombstones (key) VALUES (?)", (key,))
                db.executemany(
                    "INSERT INTO videos (video_id, num_frames, selector_score, coarse_row, "
                    "coarse_crc32, fine_offset, fine_nbytes, fine_crc32, metadata) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
                db.executemany("UPDATE meta SET value = ? WHERE name = ?",
                               [(json.dumps(fine_end), "fine_end"),
                                (json.dumps(coarse_rows), "coarse_rows")])
            self._fine_end, self._coarse_rows = fine_end, coarse_rows
            self._pending += len(rows) + len(existing)
            self._maybe_rebuild()

    def _encode(self, video_ids, coarse, fine, selector_scores, metadata):
        """Validates a batch and encodes it: rows ``(id, T, score, metadata JSON)``, fine blobs and
        coarse vectors ``[N, Dc]`` float32."""
        count = len(video_ids)
        coarse = np.asarray(coarse)
        if coarse.shape != (count, self.coarse_dims):
            raise ValueError(f"coarse vectors must have shape [{count}, {self.coarse_dims}] "
                             f"(this index's coarse_dims is {self.coarse_dims}), got {coarse.shape}")
        if not np.issubdtype(coarse.dtype, np.number) or not np.all(np.isfinite(coarse)):
            raise ValueError(f"coarse vectors must be finite numbers, got {coarse.dtype} with "
                             f"non-finite values" if np.issubdtype(coarse.dtype, np.number)
                             else f"coarse vectors must be numbers, got {coarse.dtype}")
        if len(fine) != count or len(selector_scores) != count or (
                metadata is not None and len(metadata) != count):
            raise ValueError(f"add_many got {count} ids, {len(fine)} fine representations, "
                             f"{len(selector_scores)} selector scores"
                             + ("" if metadata is None else f", {len(metadata)} metadata"))
        if count == 0:
            raise ValueError("add_many got no videos")
        if len(set(video_ids)) != count:
            raise DuplicateVideoError("add_many got the same video id more than once")
        coarse = coarse.astype(np.float32)
        rows, fine_blobs = [], []
        for i, video_id in enumerate(video_ids):
            if not isinstance(video_id, str) or not video_id:
                raise TypeError(f"video ids must be non-empty strings, got {video_id!r}")
            try:
                blob, frames = self.codec.encode(fine[i])
            except (ValueError, TypeError) as error:
                raise type(error)(f"video {video_id!r}: {error}") from None
            score = np.asarray(selector_scores[i], dtype=np.float64)
            if score.size != 1 or not np.isfinite(score).all():
                raise ValueError(f"video {video_id!r}: selector_score must be one finite number, "
                                 f"got {selector_scores[i]!r}")
            video_metadata = None if metadata is None else metadata[i]
            if video_metadata is not None and not isinstance(video_metadata, Mapping):
                raise TypeError(f"video {video_id!r}: metadata must be a dict or None, got "
                                f"{type(video_metadata).__name__}")
            try:
                meta_json = None if video_metadata is None else json.dumps(dict(video_metadata))
            except (TypeError, ValueError) as error:
                raise TypeError(f"video {video_id!r}: metadata must be JSON-serialisable: "
                                f"{error}") from None
            rows.append((video_id, frames, float(score.reshape(-1)[0]), meta_json))
            fine_blobs.append(blob)
        return rows, fine_blobs, coarse

    def remove(self, video_id: str) -> None:
        """Removes a video (``KeyError`` if unknown); it is never returned by search again. Its
        bytes stay in the append-only files until the index is rewritten."""
        with self._lock:
            if self.readonly:
                raise VideoIndexError(f"the video index at {self.path} is open read-only")
            with self._transaction(write=True) as db:
                key = self._key_of(db, video_id)
                db.execute("DELETE FROM videos WHERE key = ?", (key,))
                db.execute("INSERT INTO tombstones (key) VALUES (?)", (key,))
            self._pending += 1
            self._maybe_rebuild()

    # -------------------------------------------------------------------------------------- reads
    def __len__(self) -> int:
        with self._lock, self._sqlite_errors():
            return self._check_open().execute("SELECT count(*) FROM videos").fetchone()[0]

    def __contains__(self, video_id: object) -> bool:
        with self._lock, self._sqlite_errors():
            return self._check_open().execute(
                "SELECT 1 FROM videos WHERE video_id = ?", (video_id,)).fetchone() is not None

    def ids(self) -> list[str]:
        """All video ids, in the order they were added."""
        with self._lock, self._sqlite_errors():
            return [row[0] for row in self._check_open().execute(
                "SELECT video_id FROM videos ORDER BY key")]

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def get(self, video_id: str) -> VideoRecord:
        """The stored video (``KeyError`` naming it if unknown)."""
        return self.get_many([video_id])[0]

    def get_many(self, video_ids: Sequence[str]) -> list[VideoRecord]:
        """Stored videos in the order of ``video_ids``, read from one consistent snapshot."""
        with self._lock, self._transaction() as db:
            found = {}
            for chunk in _chunks(list(video_ids)):
                for row in db.execute(f"SELECT {_RECORD_COLUMNS} FROM videos WHERE video_id IN "
                                      f"({','.join('?' * len(chunk))})", chunk):
                    found[row[0]] = row
            records = []
            for video_id in video_ids:
                if video_id not in found:
                    raise KeyError(f"video {video_id!r} is not in the index at {self.path}")
                records.append(self._read_record(*found[video_id]))
            return records

    def _read_record(self, video_id, num_frames, selector_score, coarse_row, coarse_crc,
                     fine_offset, fine_nbytes, fine_crc, metadata) -> VideoRecord:
        coarse = self._coarse.read(coarse_row, coarse_crc, video_id)
        fine = self._fine.read(fine_offset, fine_nbytes)
        if checksum(fine) != fine_crc:
            raise IndexCorruptError(f"video {video_id!r} in {self.path}: stored data fails its "
                                    f"CRC-32 check")
        return VideoRecord(
            video_id=video_id, coarse=coarse,
            fine=self.codec.decode(fine, num_frames), selector_score=selector_score,
            metadata=None if metadata is None else json.loads(metadata),
            fine_kind=self.codec.kind)

    def selector_scores(self, video_ids: Sequence[str]) -> np.ndarray:
        """``[N]`` float32 selector scores of ``video_ids`` (without reading the fine data)."""
        with self._lock, self._transaction() as db:
            found = {}
            for chunk in _chunks(list(video_ids)):
                found.update(db.execute(f"SELECT video_id, selector_score FROM videos WHERE "
                                        f"video_id IN ({','.join('?' * len(chunk))})", chunk))
        missing = [v for v in video_ids if v not in found]
        if missing:
            raise KeyError(f"video {missing[0]!r} is not in the index at {self.path}")
        return np.array([found[v] for v in video_ids], np.float32)

    def keys(self, video_ids: Sequence[str]) -> np.ndarray:
        """``[N]`` int64 row keys of ``video_ids``: stable for a video's lifetime in this index
        (never reused; replacing a video gives it a new key), as resident fine stores name rows."""
        with self._lock, self._transaction() as db:
            found = {}
            for chunk in _chunks(list(video_ids)):
                found.update(db.execute(f"SELECT video_id, key FROM videos WHERE "
                                        f"video_id IN ({','.join('?' * len(chunk))})", chunk))
        missing = [v for v in video_ids if v not in found]
        if missing:
            raise KeyError(f"video {missing[0]!r} is not in the index at {self.path}")
        return np.array([found[v] for v in video_ids], np.int64)

    # ------------------------------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top ``k`` videos by coarse similarity (inner product) for each of ``queries [Q, Dc]``
        (or one ``[Dc]``), over exactly the videos committed when the call starts."""
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        with self._lock, self._transaction() as db:
            searcher = self._synced_searcher(db)
            scores, keys = searcher.search(as_queries(queries, self.coarse_dims), int(k))
            names = self._names(db, np.unique(keys))
        return SearchResult(ids=[[names[key] for key in row] for row in keys.tolist()],
                            scores=scores)

    def coarse_scores_all(self, queries: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Exact coarse similarity of ``queries [Q, Dc]`` with every video: ``(scores [Q, N],
        ids [N])``."""
        with self._lock, self._transaction() as db:
            searcher = self._synced_searcher(db)
            scores = searcher.scores_all(as_queries(queries, self.coarse_dims))
            names = self._names(db, searcher.keys)
        return scores, [names[key] for key in searcher.keys.tolist()]

    @property
    def searcher(self) -> CoarseSearcher:
        """The current coarse searcher (keys are internal row keys; :meth:`search` maps them to
        ids)."""
        with self._lock, self._transaction() as db:
            return self._synced_searcher(db)

    def rebuild(self) -> None:
        """Builds a new searcher generation over all current videos (merging the delta and
        dropping removed videos); a writer persists it for readers."""
        with self._lock:
            with self._transaction() as db:
                self._rebuild(db)
            if not self.readonly:
                self._persist_generation()

    def _names(self, db: sqlite3.Connection, keys: np.ndarray) -> dict[int, str]:
        names = {}
        keys = [int(key) for key in keys]
        for chunk in _chunks(keys):
            names.update(db.execute(f"SELECT key, video_id FROM videos WHERE key IN "
                                    f"({','.join('?' * len(chunk))})", chunk))
        return names

    def _reset_search_state(self) -> None:
        self._generation = -1
        self._base: CoarseSearcher | None = None
        self._base_max_key = 0        # keys <= this are in the base or removed, > are delta
        self._last_key = 0            # newest key taken into the base or delta
        self._last_tombstone = 0
        self._delta = _Delta(self.coarse_dims)
        self._removed: list[int] = []  # base keys removed since the base was built
        self._merged: MergedSearcher | None = None
        self._base_rows = np.empty(0, np.int64)  # coarse rows of a freshly built base
        self._needs_persist = False

    def _synced_searcher(self, db: sqlite3.Connection) -> MergedSearcher:
        """Brings the in-memory search state up to the snapshot of ``db`` and returns it.

        Called inside a read transaction, so the state matches exactly the committed videos of
        that snapshot: a new generation is loaded, then newer rows join the delta and tombstones
        remove keys from the delta or filter them out of the base.
        """
        settings = dict(db.execute(
            "SELECT name, value FROM meta WHERE name IN ('searcher_generation', 'searcher_kind', "
            "'searcher_max_key')").fetchall())
        generation = int(settings["searcher_generation"])
        if generation != self._generation or self._base is None:
            self._load_generation(db, generation, json.loads(settings["searcher_kind"]),
                                  int(settings["searcher_max_key"]))
        new_rows = db.execute("SELECT key, coarse_row, coarse_crc32, video_id FROM videos "
                              "WHERE key > ? ORDER BY key", (self._last_key,)).fetchall()
        tombstones = db.execute("SELECT seq, key FROM tombstones WHERE seq > ? ORDER BY seq",
                                (self._last_tombstone,)).fetchall()
        if new_rows or tombstones:
            self._merged = None
        if new_rows:
            keys, rows, crcs, ids = zip(*new_rows)
            self._delta.add(np.array(keys, np.int64),
                            self._coarse.verified(np.array(rows, np.int64), crcs, ids))
            self._last_key = int(keys[-1])
        for seq, key in tombstones:
            self._last_tombstone = seq
            if key <= self._base_max_key:
                self._removed.append(key)
            else:
                self._delta.remove(key)
        if self.readonly and self.auto_rebuild and self.config.needs_rebuild(
                len(self._base), len(self._delta) + len(self._removed)):
            self._rebuild(db)  # in memory; the writer persists its own rebuilds (_maybe_rebuild)
        if self._merged is None:
            self._merged = MergedSearcher(self._base, self._delta.searcher(),
                                          np.array(self._removed, np.int64))
        return self._merged

    def _load_generation(self, db: sqlite3.Connection, generation: int, kind: str,
                         max_key: int) -> None:
        """Starts the search state from a generation: ScaNN loaded from its directory, brute force
        (or a ScaNN directory that cannot be read) built from the stored vectors."""
        self._reset_search_state()
        self._last_tombstone = db.execute(
            "SELECT coalesce(max(seq), 0) FROM tombstones").fetchone()[0]
        if kind == "scann":
            directory = self._generation_dir(generation)
            try:
                rows = np.load(os.path.join(directory, "rows.npy"))
                base = ScannSearcher.load(directory, self._coarse.view(rows), self.config)
            except (OSError, ValueError, RuntimeError):
                base = None  # unreadable or already replaced: rebuild from the vectors below
            if base is not None:
                live_rows = db.execute("SELECT key, coarse_row, coarse_crc32, video_id FROM videos "
                                       "WHERE key <= ?", (max_key,)).fetchall()
                self._check_coarse_rows(live_rows)
                live = np.array([key for key, *_ in live_rows], np.int64)
                self._base, self._base_max_key, self._last_key = base, max_key, max_key
                self._removed = np.setdiff1d(base.keys, live).tolist()
                self._generation = generation
                return
        self._rebuild(db)
        self._generation = generation

    def _rebuild(self, db: sqlite3.Connection) -> None:
        """Builds the base searcher over all videos of ``db``'s snapshot; empties the delta."""
        videos = db.execute("SELECT key, coarse_row, coarse_crc32, video_id FROM videos "
                            "ORDER BY key").fetchall()
        self._check_coarse_rows(videos)
        keys = np.array([key for key, *_ in videos], np.int64)
        rows = np.array([row for _, row, *_ in videos], np.int64)
        last_tombstone = db.execute("SELECT coalesce(max(seq), 0) FROM tombstones").fetchone()[0]
        generation = self._generation
        self._reset_search_state()
        self._generation = generation
        self._base = build_searcher(self._coarse.view(rows), keys, self.config)
        self._base_rows, self._needs_persist = rows, True
        self._base_max_key = self._last_key = int(keys[-1]) if len(keys) else int(
            db.execute("SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'videos'")
            .fetchone()[0])
        self._last_tombstone = last_tombstone

    def _check_coarse_rows(self, videos: Sequence[tuple]) -> None:
        """Verifies the coarse vectors of ``(key, coarse_row, coarse_crc32, video_id)`` rows
        before a searcher is built or loaded over them."""
        if videos:
            _, rows, crcs, ids = zip(*videos)
            self._coarse.check(np.array(rows, np.int64), crcs, ids)

    def _check_before_writing(self) -> None:
        """A writer's start-up check (SQLite structure, files as long as their committed ends,
        every coarse vector's CRC-32): new videos are never added to a damaged index."""
        try:
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()
                        if row[0] != "ok"]
            if self._fine.size() < self._fine_end:
                problems.append(f"{FINE_FILE} has {self._fine.size()} bytes, {self._fine_end} "
                                f"are committed")
            if self._coarse.size() < self._coarse_rows * self._coarse_row_bytes:
                problems.append(f"{COARSE_FILE} has {self._coarse.size()} bytes, "
                                f"{self._coarse_rows} rows are committed")
            if not problems:
                self._check_coarse_rows(self._db.execute(
                    "SELECT key, coarse_row, coarse_crc32, video_id FROM videos").fetchall())
        except (IndexCorruptError, sqlite3.DatabaseError) as error:
            problems = [str(error)]
        if problems:
            raise IndexCorruptError(
                f"{self.path} fails its integrity check, so it is not written to: "
                f"{'; '.join(problems[:3])}. 'dns-tf index verify {self.path}' lists every "
                f"problem; 'dns-tf index verify --repair' removes the damaged videos (add them "
                f"again with 'dns-tf index add'); a damaged {DB_FILE} needs a new index")

    def _maybe_rebuild(self) -> None:
        """Writer side of the rebuild policy, checked after every change."""
        built = int(self._meta()["searcher_size"])
        if self.auto_rebuild and self.config.needs_rebuild(built, self._pending):
            self.rebuild()

    def _generation_files_missing(self, settings: Mapping[str, Any]) -> list[str]:
        if settings["searcher_kind"] != "scann":
            return []
        directory = self._generation_dir(settings["searcher_generation"])
        return [os.path.join(directory, name)
                for name in ("keys.npy", "rows.npy", "num_leaves", "scann_assets.pbtxt")
                if not os.path.isfile(os.path.join(directory, name))]

    def _generation_dir(self, generation: int) -> str:
        return os.path.join(self.path, SEARCHER_DIR, f"gen-{int(generation):06d}")

    def _persist_generation(self) -> None:
        """Commits the writer's freshly built base as the next generation (ScaNN artifacts first,
        fsynced and renamed into place, then the SQLite row naming them)."""
        if not self._needs_persist:
            return
        generation = int(self._meta()["searcher_generation"]) + 1
        kind = "scann" if isinstance(self._base, ScannSearcher) else "brute_force"
        if kind == "scann":
            directory = self._generation_dir(generation)
            staging = directory + ".tmp"
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
            self._base.save(staging)
            np.save(os.path.join(staging, "rows.npy"), self._base_rows)
            for name in os.listdir(staging):
                with open(os.path.join(staging, name), "rb") as f:
                    os.fsync(f.fileno())
            fsync_directory(staging)
            os.rename(staging, directory)
            fsync_directory(os.path.dirname(directory))
        with self._transaction(write=True) as db:
            db.executemany("UPDATE meta SET value = ? WHERE name = ?", [
                (json.dumps(generation), "searcher_generation"),
                (json.dumps(kind), "searcher_kind"),
                (json.dumps(self._base_max_key), "searcher_max_key"),
                (json.dumps(len(self._base)), "searcher_size")])
        self._generation = generation
        self._needs_persist = False
        self._pending = len(self._delta) + len(self._removed)
        root = os.path.join(self.path, SEARCHER_DIR)
        for name in os.listdir(root):
            if name != os.path.basename(self._generation_dir(generation)):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    # ------------------------------------------------------------------------------ maintenance
    def stats(self) -> dict[str, Any]:
        """Size facts: videos, bytes on disk, KB per video (fine / coarse), searcher state."""
        with self._lock, self._transaction() as db:
            count, fine_bytes, frames = db.execute(
                "SELECT count(*), coalesce(sum(fine_nbytes), 0), coalesce(sum(num_frames), 0) "
                "FROM videos").fetchone()
            settings = self._meta()
        disk = sum(os.path.getsize(os.path.join(root, name))
                   for root, _, names in os.walk(self.path) for name in names)
        live_bytes = fine_bytes + count * self._coarse_row_bytes
        stored_bytes = settings["fine_end"] + settings["coarse_rows"] * self._coarse_row_bytes
        return {
            "videos": count,
            "frames": frames,
            "bytes_on_disk": disk,
            "fine_kb_per_video": fine_bytes / 1024 / count if count else 0.0,
            "coarse_kb_per_video": self._coarse_row_bytes / 1024,
            "dead_bytes": stored_bytes - live_bytes,  # removed videos' blobs
            "fine_kind": self.codec.kind,
            "fine_shape_tail": list(self.codec.shape_tail),
            "coarse_dims": self.coarse_dims,
            "searcher_kind": settings["searcher_kind"],
            "searcher_generation": settings["searcher_generation"],
            "searcher_size": settings["searcher_size"],
        }

    def verify(self) -> dict[str, Any]:
        """Checks everything stored: SQLite integrity, every row's blobs inside the committed ends
        and matching their CRC-32, no two rows sharing bytes, the searcher generation's files.

        Returns a summary ``{"videos": N, "garbage_bytes": ...}``; raises
        :class:`IndexCorruptError` listing every problem found.
        """
        problems = []
        with self._lock, self._transaction() as db:
            check = db.execute("PRAGMA integrity_check").fetchall()
            if check != [("ok",)]:
                problems.append(f"SQLite integrity_check: {check[:5]}")
            settings = self._meta()
            fine_end, coarse_rows = settings["fine_end"], settings["coarse_rows"]
            fine_size, coarse_size = self._fine.size(), self._coarse.size()
            if fine_size < fine_end:
                problems.append(f"{FINE_FILE} has {fine_size} bytes, {fine_end} are committed")
            if coarse_size < coarse_rows * self._coarse_row_bytes:
                problems.append(f"{COARSE_FILE} has {coarse_size} bytes, {coarse_rows} rows of "
                                f"{self._coarse_row_bytes} are committed")
            rows = db.execute(
                "SELECT video_id, num_frames, selector_score, coarse_row, coarse_crc32, "
                "fine_offset, fine_nbytes, fine_crc32, metadata FROM videos ORDER BY fine_offset"
            ).fetchall()
            previous_end, coarse_seen = 0, set()
            for row in rows:
                video_id, frames, _, coarse_row, _, offset, nbytes, _, _ = row
                if nbytes != frames * self.codec.frame_nbytes:
                    problems.append(f"video {video_id!r}: {nbytes} fine bytes for {frames} frames")
                if offset < previous_end or offset + nbytes > fine_end:
                    problems.append(f"video {video_id!r}: fine bytes [{offset}, {offset + nbytes}) "
                                    f"overlap another video or pass the committed end {fine_end}")
                if coarse_row in coarse_seen or not 0 <= coarse_row < coarse_rows:
                    problems.append(f"video {video_id!r}: coarse row {coarse_row} is shared or "
                                    f"past the {coarse_rows} committed rows")
                previous_end = max(previous_end, offset + nbytes)
                coarse_seen.add(coarse_row)
                if not problems:
                    try:
                        self._read_record(*row)
                    except (IndexCorruptError, OSError, ValueError) as error:
                        problems.append(str(error))
            for missing in self._generation_files_missing(settings):
                problems.append(f"searcher file {missing} is missing (a writer rebuilds it from "
                                f"{COARSE_FILE})")
        if problems:
            raise IndexCorruptError(f"{self.path} fails verification:\n  " + "\n  ".join(problems))
        return {"videos": len(rows),
                "garbage_bytes": (fine_size - fine_end)
                + (coarse_size - coarse_rows * self._coarse_row_bytes)}
