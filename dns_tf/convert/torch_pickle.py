"""Reads PyTorch ``torch.save`` files without torch and without running their code.

A ``.pth`` file from the internet is a pickle, and unpickling can call any importable function. This
reader opens the zip container that ``torch.save`` writes (``<top>/data.pkl`` plus one raw storage per
tensor under ``<top>/data/``) with an unpickler that admits only the handful of classes such files
use — the tensor rebuild function, typed storages, ``OrderedDict`` and ``argparse.Namespace`` — and
refuses everything else before it is called. Tensors come back as numpy arrays, each a copy of
elements checked to lie inside its storage (non-negative offset and strides, no more elements than
the zip entry holds); the pickle and the storages are size-capped before they are read, and the
pickle cannot modify the classes or storages it is handed (see :mod:`dns_tf.safe_pickle`). Every
problem with a file raises :class:`CheckpointFormatError` naming the file and the field.

Example:

    checkpoint = load_torch_file("fg_att_student.pth")
    checkpoint["model"]["attention.context_vector.weight"].shape  # (1, 512)
"""

from __future__ import annotations

import argparse
import collections
import io
import math
import os
import pickle
import zipfile
from typing import Any

import numpy as np

from dns_tf.safe_pickle import RefusedBuild, RestrictedUnpickler, Sealed, SealedType

try:  # ml_dtypes ships with TensorFlow; only bfloat16 storages need it.
    from ml_dtypes import bfloat16 as _bfloat16
except ImportError:  # pragma: no cover
    _bfloat16 = None


class CheckpointFormatError(ValueError):
    """A file is not a checkpoint this reader understands (the one error type for bad files)."""


class UnsafeCheckpointError(CheckpointFormatError, pickle.UnpicklingError):
    """A checkpoint asked the unpickler for something outside the allow-list."""


# Bounds checked before anything is allocated: the pickle itself, and all tensor storages together
# (ResNet-50, the largest network these files hold, is ~100 MB).
MAX_PICKLE_BYTES = 64 * 2**20
MAX_STORAGE_BYTES = 4 * 2**30
_MAX_TENSOR_DIMS = 32

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": _bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType(Sealed):
    """Stands in for ``torch.<X>Storage``: only its element type matters here."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage(Sealed):
    """One tensor storage as handed to the pickle: a fresh, unmodifiable handle on the elements."""

    __slots__ = ("name", "elements")

    def __init__(self, name: str, elements: np.ndarray):
        self.name = name
        self.elements = elements

    def __repr__(self):
        return f"storage {self.name}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any,
                    *_unused) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` for numpy: a bounds-checked strided copy.

    Every element the tensor addresses must lie inside its storage: offset and strides are
    non-negative, the last addressed element is within the storage and the tensor has no more
    elements than the storage holds (no stride-0 expansion beyond what the file contains).
    """
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(f"tensor storage is {type(storage).__name__}, not a storage")
    where = f"tensor in {storage.name}"
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride) \
            or len(size) > _MAX_TENSOR_DIMS:
        raise CheckpointFormatError(f"{where}: size {size!r:.80} and stride {stride!r:.80} must be "
                                    f"tuples of equal length <= {_MAX_TENSOR_DIMS}")
    fields = {"storage_offset": (storage_offset,), "size": size, "stride": stride}
    for field, values in fields.items():
        if not all(_is_int(value) and value >= 0 for value in values):
            raise CheckpointFormatError(f"{where}: {field} {values!r:.80} must be non-negative "
                                        "integers")
    elements = storage.elements
    count = math.prod(size)
    if count > elements.size:
        raise CheckpointFormatError(
            f"{where}: size {size} has {count:,} elements, more than the {elements.size:,} its "
            "storage holds")
    if count == 0:
        return np.zeros(size, dtype=elements.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= elements.size:
        raise CheckpointFormatError(
            f"{where}: size {size}, stride {stride} at storage_offset {storage_offset} reaches "
            f"element {last:,}, past the end of its storage of {elements.size:,} elements")
    if not size:
        return elements[storage_offset:storage_offset + 1].reshape(()).copy()
    view = np.lib.stride_tricks.as_strided(
        elements[storage_offset:], shape=size, strides=[s * elements.itemsize for s in stride],
        writeable=False)
    return np.array(view, order="C")  # a copy: tensors never share memory with the file's bytes


def _rebuild_parameter(data: Any, *_unused) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise CheckpointFormatError(f"parameter data is {type(data).__name__}, not a tensor")
    return data


class CheckpointNamespace(argparse.Namespace, metaclass=SealedType):
    """A checkpoint's ``argparse.Namespace`` (training arguments): its own attributes only."""

    def __setstate__(self, state: Any = RefusedBuild) -> None:
        if state is RefusedBuild:  # BUILD onto the class itself calls this unbound, with one value
            raise RefusedBuild("an attribute update (BUILD) onto class argparse.Namespace")
        if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
            raise CheckpointFormatError(f"argparse.Namespace state {state!r:.80} is not a dict "
                                        "of names")
        self.__dict__.update(state)

    def __reduce__(self):
        return argparse.Namespace, (), dict(vars(self))


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): CheckpointNamespace,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name)
       for name, dtype in _STORAGE_DTYPES.items() if dtype is not None},
}


class _CheckpointUnpickler(RestrictedUnpickler):
    """Resolves tensor storages from the zip archive; every global must be on the allow-list."""

    def __init__(self, file, size: int, archive: zipfile.ZipFile, top: str, byteorder: str,
                 path: str):
        super().__init__(
            file, path, _ALLOWED_GLOBALS, UnsafeCheckpointError,
            "checkpoints may only contain tensors, OrderedDict, argparse.Namespace and plain "
            "Python values (a pickle that names other callables could run code)",
            size=size, max_bytes=MAX_PICKLE_BYTES)
        self._archive = archive
        self._top = top
        self._byteorder = byteorder
        self._path = path
        self._storages: dict[tuple[str, str], np.ndarray] = {}
        self._storage_bytes = 0

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointFormatError(f"{self._path}: unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(
                f"{self._path}: storage of unknown type {storage_type!r:.80}")
        if not isinstance(key, (str, int)) or not _is_int(numel) or numel < 0:
            raise CheckpointFormatError(
                f"{self._path}: storage key {key!r:.40} with element count {numel!r:.40} (a name "
                "and a non-negative integer expected)")
        name = f"{self._top}/data/{key}"
        if (name, storage_type.name) not in self._storages:
            self._storages[name, storage_type.name] = self._read_storage(name, storage_type, numel)
        elements = self._storages[name, storage_type.name]
        if elements.size < numel:
            raise CheckpointFormatError(f"{self._path}: storage {name} is declared with {numel:,} "
                                        f"elements and with {elements.size:,}")
        return _Storage(name, elements[:numel])

    def _read_storage(self, name: str, storage_type: _StorageType, numel: int) -> np.ndarray:
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            raise CheckpointFormatError(f"{self._path}: missing tensor storage {name}") from None
        needed = numel * storage_type.dtype.itemsize
        if info.file_size < needed:
            raise CheckpointFormatError(
                f"{self._path}: storage {name} holds {info.file_size:,} bytes, fewer than the "
                f"{needed:,} of {numel:,} {storage_type!r} elements")
        self._storage_bytes += info.file_size
        if self._storage_bytes > MAX_STORAGE_BYTES:
            raise CheckpointFormatError(f"{self._path}: tensor storages exceed "
                                        f"{MAX_STORAGE_BYTES:,} bytes")
        dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
        raw = self._archive.read(name)
        return np.frombuffer(raw, dtype=dtype, count=numel).astype(
            storage_type.dtype.newbyteorder("="))


def load_torch_file(path: str | os.PathLike) -> Any:
    """Loads a zip-format ``torch.save`` file; tensors become numpy arrays.

    Args:
        path: a ``.pth``/``.pt`` file written by ``torch.save`` (PyTorch >= 1.6 zip format).

    Returns:
        The saved object: dicts, lists, numbers, ``argparse.Namespace``, numpy arrays.

    Raises:
        FileNotFoundError: there is no such file.
        CheckpointFormatError: the file is not a readable zip-format torch checkpoint: a broken
            container or pickle, a tensor outside its storage, a size past the limits above, or
            (:class:`UnsafeCheckpointError`) a pickle referencing anything outside the allow-list
            or modifying what it did not create. The message names the file and the field.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return _load_zip_checkpoint(path)
    except (CheckpointFormatError, MemoryError):
        raise
    except Exception as error:  # anything a damaged zip or pickle raises deep inside
        raise CheckpointFormatError(f"{path}: damaged checkpoint ({type(error).__name__}: "
                                    f"{error})") from error


def _load_zip_checkpoint(path: str) -> Any:
    if not zipfile.is_zipfile(path):
        raise CheckpointFormatError(
            f"{path}: not a zip-format torch checkpoint (legacy tar/pickle checkpoints are not "
            "read; re-save it with torch >= 1.6, or convert it to .npz)")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(f"{path}: expected one '<top>/data.pkl', found "
                                        f"{pickles[:5]}")
        top = pickles[0].split("/")[0]
        byteorder = "little"
        if f"{top}/byteorder" in archive.namelist():
            byteorder = archive.read(f"{top}/byteorder")[:16].decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointFormatError(f"{path}: unknown byteorder {byteorder!r}")
        size = archive.getinfo(pickles[0]).file_size
        if size > MAX_PICKLE_BYTES:  # before reading it
            raise CheckpointFormatError(f"{path}: {pickles[0]} is {size:,} bytes, more than the "
                                        f"{MAX_PICKLE_BYTES:,} this reader accepts")
        data = archive.read(pickles[0])
        unpickler = _CheckpointUnpickler(io.BytesIO(data), len(data), archive, top, byteorder,
                                         path)
        try:
            return unpickler.load()
        except CheckpointFormatError as error:
            if str(error).startswith(path):
                raise
            raise type(error)(f"{path}: {error}") from error
