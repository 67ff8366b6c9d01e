"""Teacher-labelled training pairs: the authors' ``trainset_similarities_*.pk`` layout.

The students learn from a pickle written once by a teacher over the unlabelled training collection::

    {'index': ['<video id>', ...],                   # position -> video id
     'pairs': {q: {'positives': {t: similarity, ...},  # q, t: int positions into 'index'
                   'negatives': {t: similarity, ...}},
               ...}}

Queries and targets are integer positions into ``index`` (the reference loads ``index[q]`` from the
feature file and filters with ``q in video_set`` over ``range(len(index))``); similarities are the
teacher's outputs in ``[-1, 1]`` (Python or numpy floats). Each epoch the reference draws one
positive and one negative per query from these pools.

Pickles can run code, so :func:`load_pairs` unpickles with an allow-list: builtin containers,
numbers and strings, plus this module's own public-API versions of the few numpy functions that
rebuild scalars and arrays, which accept only plain number and string dtypes (an object or
structured dtype would let the file's bytes be read as pointers). Anything else is refused before it
is called. The released files load unchanged.

Example:

    save_pairs("pairs.pk", ["a", "b", "c"], {0: {"positives": {1: 0.8}, "negatives": {2: -0.3}}})
    pairs = load_pairs("pairs.pk")
    pairs.index[0], pairs.pairs[0]["positives"]   # 'a', {1: 0.8}
    merged = merge_pairs(["shard0.pk", "shard1.pk"])
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import pickle
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from dns_tf.safe_pickle import RestrictedUnpickler, Sealed

POOLS = ("positives", "negatives")


class PairsFormatError(ValueError):
    """A pairs file or structure does not follow the layout above (the error for any bad file)."""


class UnsafePairsError(PairsFormatError, pickle.UnpicklingError):
    """A pairs file asked the unpickler for something outside the allow-list."""


# The largest pairs pickle read (the released files are far smaller).
MAX_PAIRS_BYTES = 8 * 2**30
# numpy values are rebuilt from plain descriptors only: booleans, numbers and fixed-width strings.
# Object, structured, sub-array and void dtypes (which could make numpy read pointers from the
# file's bytes) are refused.
_PLAIN_KINDS = "biufcSU"
_MAX_STRING_ITEMSIZE = 2**20


class _PickledDtype:
    """What a pickle's ``numpy.dtype(...)`` plus its state become: a validated plain dtype."""

    __slots__ = ("dtype",)

    def __init__(self, descriptor: Any, align: Any = False, copy: Any = False):
        if not isinstance(descriptor, str) or len(descriptor) > 8:
            raise PairsFormatError(f"numpy dtype {descriptor!r:.40} is not a plain descriptor")
        dtype = np.dtype(descriptor)
        if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None or dtype.subdtype:
            raise PairsFormatError(f"numpy dtype {descriptor!r} is not a plain number or string "
                                   "type")
        self.dtype = dtype

    def __repr__(self):
        return f"numpy dtype {self.dtype}"

    def __setstate__(self, state: Any) -> None:
        """numpy's dtype state ``(version, byteorder, subarray, names, fields, elsize, ...)``."""
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise PairsFormatError(f"numpy dtype state {state!r:.80} is not a plain dtype's")
        _, byteorder, subarray, names, fields, elsize = state[:6]
        if subarray is not None or names is not None or fields is not None:
            raise PairsFormatError(f"numpy dtype state {state!r:.80} declares fields or "
                                   "sub-arrays; only plain numbers and strings are read")
        if byteorder not in ("<", ">", "=", "|"):
            raise PairsFormatError(f"numpy dtype byteorder {byteorder!r:.20}")
        if self.dtype.kind in "SU":
            width = 4 if self.dtype.kind == "U" else 1
            if not isinstance(elsize, int) or not 0 < elsize <= _MAX_STRING_ITEMSIZE \
                    or elsize % width:
                raise PairsFormatError(f"numpy string dtype item size {elsize!r:.20}")
            self.dtype = np.dtype(f"{self.dtype.kind}{elsize // width}")
        if byteorder in "<>":
            self.dtype = self.dtype.newbyteorder(byteorder)


def _plain_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, _PickledDtype):
        raise PairsFormatError(f"expected a numpy dtype, got {type(dtype).__name__}")
    return dtype.dtype


def _raw_bytes(data: Any, dtype: np.dtype, shape: tuple[int, ...]) -> bytes | bytearray:
    if not isinstance(data, (bytes, bytearray)):
        raise PairsFormatError(f"numpy data is {type(data).__name__}, expected bytes")
    if not isinstance(shape, tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise PairsFormatError(f"numpy shape {shape!r:.80} is not a tuple of sizes")
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise PairsFormatError(f"numpy data of {len(data)} bytes for shape {shape} of {dtype}")
    return data


def _scalar(dtype: Any, data: Any) -> np.generic:
    """``numpy.core.multiarray.scalar``: one value of a plain dtype from its bytes."""
    dtype = _plain_dtype(dtype)
    return np.frombuffer(_raw_bytes(data, dtype, ()), dtype=dtype)[0]


def _frombuffer(data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """``numpy.core.numeric._frombuffer`` (protocol-5 arrays), copied out of the pickle's bytes."""
    dtype = _plain_dtype(dtype)
    if order not in ("C", "F"):
        raise PairsFormatError(f"numpy array order {order!r:.20}")
    flat = np.frombuffer(_raw_bytes(data, dtype, shape), dtype=dtype)
    return flat.reshape(shape, order=order).copy(order="K")


class _PickledArray(np.ndarray):
    """What ``numpy.core.multiarray._reconstruct`` hands a pickle: it accepts only plain state."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise PairsFormatError(f"numpy array state {state!r:.80}")
        version, shape, dtype, fortran, data = state
        dtype = _plain_dtype(dtype)
        super().__setstate__((version, shape, dtype, bool(fortran),
                              bytes(_raw_bytes(data, dtype, shape))))


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _PickledArray:
    if subtype is not _NDARRAY:
        raise PairsFormatError(f"numpy array of type {subtype!r:.40}")
    return _PickledArray((0,), np.uint8)


def _latin1(text: Any, encoding: Any) -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it: str -> bytes in latin-1, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PairsFormatError(f"_codecs.encode of {type(text).__name__} to {encoding!r:.20}; "
                               "only str to latin1 is read")
    return text.encode("latin-1")


_NDARRAY = Sealed()  # ``numpy.ndarray`` as a pickle sees it: _reconstruct's marker, not callable

# (module, name) -> the object the unpickler may hand out. numpy is listed under both its 1.x
# (``numpy.core``) and 2.x (``numpy._core``) module names so files written by either load; the
# functions are this module's own, built on numpy's public API.
_ALLOWED_GLOBALS = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("collections", "OrderedDict"): dict,
    ("_codecs", "encode"): _latin1,  # protocol-2 pickles wrap bytes this way
    ("numpy", "dtype"): _PickledDtype,
    ("numpy", "ndarray"): _NDARRAY,
}
for _module in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_module}.multiarray", "scalar")] = _scalar
    _ALLOWED_GLOBALS[(f"{_module}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED_GLOBALS[(f"{_module}.numeric", "_frombuffer")] = _frombuffer


@dataclasses.dataclass(frozen=True, eq=False)
class TeacherPairs:
    """Validated teacher-labelled pairs.

    Attributes:
        index: video ids; position ``i`` is the video that the integers in ``pairs`` call ``i``.
        pairs: ``{query: {"positives": {target: similarity}, "negatives": {target: similarity}}}``
            with int positions and float similarities.
        source: where the pairs came from, for error messages.
    """

    index: tuple[str, ...]
    pairs: dict[int, dict[str, dict[int, float]]]
    source: str = "<pairs>"

    @classmethod
    def from_raw(cls, index: Any, pairs: Any, source: str = "<pairs>") -> "TeacherPairs":
        """Checks and normalises (numpy keys and scalars to int and float) a raw structure."""
        return cls(_clean_index(index, source), _clean_pairs(pairs, len(index), source), source)

    @property
    def num_pairs(self) -> int:
        """Labelled (query, target) pairs over both pools."""
        return sum(len(pools[pool]) for pools in self.pairs.values() for pool in POOLS)

    def to_dict(self) -> dict:
        """The on-disk layout: ``{'index': [...], 'pairs': {...}}``."""
        return {"index": list(self.index), "pairs": self.pairs}


def _clean_index(index: Any, source: str) -> tuple[str, ...]:
    if isinstance(index, np.ndarray):
        index = index.tolist()
    if not isinstance(index, (list, tuple)):
        raise PairsFormatError(f"{source}: 'index' must be a list of video ids, "
                               f"got {type(index).__name__}")
    ids = []
    for position, video_id in enumerate(index):
        if isinstance(video_id, bytes):
            video_id = video_id.decode("utf-8")
        if not isinstance(video_id, str):
            raise PairsFormatError(f"{source}: index[{position}] must be a video id string, "
                                   f"got {type(video_id).__name__} {video_id!r}")
        ids.append(str(video_id))
    if len(set(ids)) != len(ids):
        seen, duplicates = set(), []
        for video_id in ids:
            if video_id in seen:
                duplicates.append(video_id)
            seen.add(video_id)
        raise PairsFormatError(f"{source}: 'index' lists video ids more than once: "
                               f"{duplicates[:5]}")
    return tuple(ids)


def _position(value: Any, size: int, source: str, where: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise PairsFormatError(f"{source}: {where} must be an integer position into 'index', "
                               f"got {type(value).__name__} {value!r}")
    if not 0 <= int(value) < size:
        raise PairsFormatError(f"{source}: {where} = {int(value)} is out of range for an index of "
                               f"{size} videos")
    return int(value)


def _clean_pairs(pairs: Any, size: int, source: str) -> dict[int, dict[str, dict[int, float]]]:
    if not isinstance(pairs, Mapping):
        raise PairsFormatError(f"{source}: 'pairs' must be a dict query -> pools, "
                               f"got {type(pairs).__name__}")
    clean = {}
    for raw_query, pools in pairs.items():
        query = _position(raw_query, size, source, f"query {raw_query!r}")
        if not isinstance(pools, Mapping) or any(pool not in pools for pool in POOLS):
            raise PairsFormatError(f"{source}: pairs[{query}] must be a dict with 'positives' and "
                                   f"'negatives', got {pools!r:.80}")
        clean[query] = {}
        for pool in POOLS:
            if not isinstance(pools[pool], Mapping):
                raise PairsFormatError(f"{source}: pairs[{query}]['{pool}'] must be a dict "
                                       f"target -> similarity")
            entries = {}
            for raw_target, similarity in pools[pool].items():
                where = f"pairs[{query}]['{pool}'] target {raw_target!r}"
                target = _position(raw_target, size, source, where)
                if np.ndim(similarity) != 0 or not isinstance(np.asarray(similarity).item(),
                                                              numbers.Real):
                    raise PairsFormatError(f"{source}: {where} has similarity {similarity!r}, "
                                           "expected a number")
                value = float(np.asarray(similarity).item())
                if not math.isfinite(value):
                    raise PairsFormatError(f"{source}: {where} has non-finite similarity {value}")
                entries[target] = value
            clean[query][pool] = entries
    return clean


def load_pairs(path: str | os.PathLike) -> TeacherPairs:
    """Reads and validates a pairs pickle (ours or the authors' released files).

    Raises:
        PairsFormatError: the file is not a readable pickle of ``{'index': [...], 'pairs': {...}}``
            as described in the module docstring (positions out of range, non-numeric
            similarities, numpy values of other than plain number/string dtypes, ...), or
            (:class:`UnsafePairsError`) the pickle references anything but containers, numbers,
            strings and numpy scalars/arrays, modifies what it did not create, or exceeds the
            size, depth or expansion limits of :mod:`dns_tf.safe_pickle`.
    """
    source = os.fspath(path)
    with open(source, "rb") as f:
        try:
            raw = RestrictedUnpickler(
                f, source, _ALLOWED_GLOBALS, UnsafePairsError,
                "a pairs file holds only dicts, lists, numbers, strings and numpy "
                "scalars/arrays of plain number or string types",
                size=os.fstat(f.fileno()).st_size, max_bytes=MAX_PAIRS_BYTES).load()
        except (UnsafePairsError, MemoryError):
            raise
        except Exception as error:  # truncated, not a pickle at all, or a refused numpy value
            raise PairsFormatError(f"{source}: not a readable pairs pickle "
                                   f"({type(error).__name__}: {error})") from error
    if not isinstance(raw, Mapping) or "index" not in raw or "pairs" not in raw:
        found = sorted(map(str, raw)) if isinstance(raw, Mapping) else type(raw).__name__
        raise PairsFormatError(f"{source}: expected a dict with keys 'index' and 'pairs', "
                               f"found {found}")
    return TeacherPairs.from_raw(raw["index"], raw["pairs"], source)


def save_pairs(path: str | os.PathLike, index: Sequence[str], pairs: Mapping) -> TeacherPairs:
    """Validates and writes pairs in the authors' layout; the file appears whole or not at all.

    Returns:
        The validated :class:`TeacherPairs` that was written.
    """
    path = os.fspath(path)
    checked = TeacherPairs.from_raw(index, pairs, path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".pairs-", dir=directory)
    try:
        with os.fdopen(handle, "wb") as f:
            pickle.dump(checked.to_dict(), f, protocol=4)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return dataclasses.replace(checked, source=path)


def merge_pairs(shards: Iterable[TeacherPairs | str | os.PathLike]) -> TeacherPairs:
    """Joins pairs labelled in shards (paths or :class:`TeacherPairs`) into one set.

    The merged index lists every video once, in order of first appearance; each shard's positions
    are remapped onto it. A (query, target) pair may appear in several shards only with the same
    pool and similarity (within 1e-6); anything else is a conflict and raises
    :class:`PairsFormatError` naming both shards.
    """
    index: list[str] = []
    position_of: dict[str, int] = {}
    merged: dict[int, dict[str, dict[int, float]]] = {}
    origin: dict[tuple[int, int], tuple[str, str, float]] = {}
    count = 0
    for shard in shards:
        count += 1
        if not isinstance(shard, TeacherPairs):
            shard = load_pairs(shard)
        remap = []
        for video_id in shard.index:
            if video_id not in position_of:
                position_of[video_id] = len(index)
                index.append(video_id)
            remap.append(position_of[video_id])
        for query, pools in shard.pairs.items():
            merged_pools = merged.setdefault(remap[query], {pool: {} for pool in POOLS})
            for pool in POOLS:
                for target, similarity in pools[pool].items():
                    key = (remap[query], remap[target])
                    if key in origin:
                        first_source, first_pool, first_similarity = origin[key]
                        if first_pool != pool or abs(first_similarity - similarity) > 1e-6:
                            raise PairsFormatError(
                                f"conflicting labels for pair ({shard.index[query]!r}, "
                                f"{shard.index[target]!r}): {first_pool} {first_similarity:.6f} in "
                                f"{first_source}, {pool} {similarity:.6f} in {shard.source}")
                        continue
                    origin[key] = (shard.source, pool, similarity)
                    merged_pools[pool][key[1]] = similarity
    if count == 0:
        raise PairsFormatError("merge_pairs: no shards given")
    return TeacherPairs(tuple(index), merged, source=f"<merge of {count} shards>")
