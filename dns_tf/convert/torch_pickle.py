"""Reads PyTorch ``torch.save`` files without torch and without running their code.

A ``.pth`` file from the internet is a pickle, and unpickling can call any importable function. This
reader opens the zip container that ``torch.save`` writes (``<top>/data.pkl`` plus one raw storage per
tensor under ``<top>/data/``) with an unpickler that admits only the handful of classes such files
use — the tensor rebuild function, typed storages, ``OrderedDict`` and ``argparse.Namespace`` — and
refuses everything else before it is called. Tensors come back as numpy arrays.

Example:

    checkpoint = load_torch_file("fg_att_student.pth")
    checkpoint["model"]["attention.context_vector.weight"].shape  # (1, 512)
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import zipfile
from typing import Any

import numpy as np

from dns_tf.safe_pickle import RestrictedUnpickler

try:  # ml_dtypes ships with TensorFlow; only bfloat16 storages need it.
    from ml_dtypes import bfloat16 as _bfloat16
except ImportError:  # pragma: no cover
    _bfloat16 = None


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asked the unpickler for something outside the allow-list."""


class CheckpointFormatError(ValueError):
    """A file is not a checkpoint this reader understands."""


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


class _StorageType:
    """Stands in for ``torch.<X>Storage``: only its element type matters here."""

    def __init__(self, name: str):
        if name not in _STORAGE_DTYPES or _STORAGE_DTYPES[name] is None:
            raise CheckpointFormatError(f"unsupported tensor storage type torch.{name}")
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, storage_offset: int, size, stride, *_unused) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` for numpy: a strided view copied into a new array."""
    size, stride = tuple(size), tuple(stride)
    if not size:
        return storage[storage_offset].copy()
    needed = storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
    if any(n == 0 for n in size):
        return np.zeros(size, dtype=storage.dtype)
    if needed > storage.size:
        raise CheckpointFormatError(
            f"tensor of size {size} at offset {storage_offset} overruns its storage of "
            f"{storage.size} elements")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=[s * item for s in stride])
    return np.ascontiguousarray(view)


def _rebuild_parameter(data: np.ndarray, *_unused) -> np.ndarray:
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name)
       for name, dtype in _STORAGE_DTYPES.items() if dtype is not None},
}


class _CheckpointUnpickler(RestrictedUnpickler):
    """Resolves tensor storages from the zip archive; every global must be on the allow-list."""

    def __init__(self, file, archive: zipfile.ZipFile, top: str, byteorder: str, path: str):
        super().__init__(
            file, path, _ALLOWED_GLOBALS, UnsafeCheckpointError,
            "checkpoints may only contain tensors, OrderedDict, argparse.Namespace and plain "
            "Python values (a pickle that names other callables could run code)")
        self._archive = archive
        self._top = top
        self._byteorder = byteorder
        self._path = path
        self._storages: dict[str, np.ndarray] = {}

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointFormatError(f"{self._path}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"{self._path}: storage of unknown type {storage_type!r}")
        key = str(key)
        if key not in self._storages:
            name = f"{self._top}/data/{key}"
            try:
                raw = self._archive.read(name)
            except KeyError:
                raise CheckpointFormatError(f"{self._path}: missing tensor storage {name}") from None
            dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            array = np.frombuffer(raw, dtype=dtype)
            if array.size < numel:
                raise CheckpointFormatError(
                    f"{self._path}: storage {name} holds {array.size} elements, expected {numel}")
            self._storages[key] = array[:numel].astype(storage_type.dtype.newbyteorder("="))
        return self._storages[key]


def load_torch_file(path: str | os.PathLike) -> Any:
    """Loads a zip-format ``torch.save`` file; tensors become numpy arrays.

    Args:
        path: a ``.pth``/``.pt`` file written by ``torch.save`` (PyTorch >= 1.6 zip format).

    Returns:
        The saved object: dicts, lists, numbers, ``argparse.Namespace``, numpy arrays.

    Raises:
        UnsafeCheckpointError: the pickle references anything outside the allow-list.
        CheckpointFormatError: the file is not a zip-format torch checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointFormatError(
            f"{path}: not a zip-format torch checkpoint (legacy tar/pickle checkpoints are not "
            "read; re-save it with torch >= 1.6, or convert it to .npz)")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(f"{path}: expected one '<top>/data.pkl', found {pickles}")
        top = pickles[0].split("/")[0]
        byteorder = "little"
        if f"{top}/byteorder" in archive.namelist():
            byteorder = archive.read(f"{top}/byteorder").decode().strip()
        if byteorder not in ("little", "big"):
            raise CheckpointFormatError(f"{path}: unknown byteorder {byteorder!r}")
        with archive.open(pickles[0]) as file:
            return _CheckpointUnpickler(file, archive, top, byteorder, path).load()
