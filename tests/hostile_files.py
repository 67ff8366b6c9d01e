"""Hand-assembled hostile checkpoints and pairs files, and a runner that loads them in a subprocess.

Each case writes a file that once crashed, leaked memory into its result, asked for tens of GiB or
poisoned later loads, loads it with the project's reader and reports one line of JSON. The tests
run the cases with ``python tests/hostile_files.py DIR CASE...`` so that a segfault fails a test
instead of killing pytest::

    python tests/hostile_files.py /tmp/x negative_stride   # {"case": ..., "error": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import zipfile

import numpy as np

REFERENCE = os.path.join(os.environ.get("DNS_TF_REFERENCE", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "reference")), "checkpoints")

# pickle opcodes used below
MARK, TUPLE, REDUCE, BUILD, BINPERSID, SETITEM, EMPTY_DICT, EMPTY_LIST, APPEND, DUP, STOP = (
    b"(", b"t", b"R", b"b", b"Q", b"s", b"}", b"]", b"a", b"2", b".")


def value(obj) -> bytes:
    """The opcodes that push a plain value (protocol 2, without PROTO and STOP)."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def global_(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def tensor(key: str, numel: int, offset: int, size, stride, storage: str = "FloatStorage") -> bytes:
    """``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    pid = (MARK + value("storage") + global_("torch", storage) + value(key) + value("cpu")
           + value(numel) + TUPLE + BINPERSID)
    return (global_("torch._utils", "_rebuild_tensor_v2") + MARK + pid + value(offset)
            + value(tuple(size)) + value(tuple(stride)) + value(False)
            + global_("collections", "OrderedDict") + value(()) + REDUCE + TUPLE + REDUCE)


def dict_pickle(entries: dict[str, bytes]) -> bytes:
    """A protocol-2 pickle of ``{key: <the object the opcodes push>}``."""
    body = b"\x80\x02" + EMPTY_DICT
    for key, opcodes in entries.items():
        body += value(key) + opcodes + SETITEM
    return body + STOP


def write_checkpoint(path: str, data_pkl: bytes, storages: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
    return path


def itq_checkpoint(path: str, offset: int, size, stride, numel: int = 16) -> str:
    """An ITQ-shaped ``{'proj': tensor}`` over a storage of ``numel`` float32 ones."""
    return write_checkpoint(path, dict_pickle({"proj": tensor("0", numel, offset, size, stride)}),
                            {"0": np.ones(numel, np.float32).tobytes()})


def _plain_dtype_state(byteorder="<", fields=None, names=None, elsize=-1, alignment=-1, flags=0):
    return value((3, byteorder, None, names, fields, elsize, alignment, flags))


def numpy_dtype(descriptor: str, state: bytes | None = None) -> bytes:
    """``numpy.dtype(descriptor, False, True)`` with BUILD ``state``."""
    return (global_("numpy", "dtype") + value((descriptor, False, True)) + REDUCE
            + (state if state is not None else _plain_dtype_state()) + BUILD)


def object_field_dtype() -> bytes:
    """A void dtype whose one field is a Python object, its flags claiming it holds none."""
    object_dtype = numpy_dtype("O8", _plain_dtype_state("|", flags=63))
    fields = EMPTY_DICT + value("f") + MARK + object_dtype + value(0) + TUPLE + SETITEM
    state = (MARK + value(3) + value("|") + value(None) + value(("f",)) + fields + value(8)
             + value(1) + value(0) + TUPLE)
    return numpy_dtype("V8", state)


def pairs_pickle(similarity: bytes) -> bytes:
    """``{'index': ['a'], 'pairs': {0: {'positives': {0: <similarity>}, 'negatives': {}}}}``."""
    pools = (EMPTY_DICT + value("positives") + EMPTY_DICT + value(0) + similarity + SETITEM
             + SETITEM + value("negatives") + EMPTY_DICT + SETITEM)
    return dict_pickle({"index": value(["a"]), "pairs": EMPTY_DICT + value(0) + pools + SETITEM})


def reconstructed_array(dtype: bytes, raw: bytes, shape=()) -> bytes:
    """``_reconstruct(ndarray, (0,), b'b')`` then BUILD ``(1, shape, dtype, False, raw)``."""
    return (global_("numpy._core.multiarray", "_reconstruct")
            + MARK + global_("numpy", "ndarray") + value((0,)) + value(b"b") + TUPLE + REDUCE
            + MARK + value(1) + value(tuple(shape)) + dtype + value(False) + value(raw) + TUPLE
            + BUILD)


def _nested_lists(depth: int) -> bytes:
    return EMPTY_LIST * depth + APPEND * (depth - 1)


def _doubling(levels: int) -> bytes:
    body = EMPTY_LIST
    for _ in range(levels):
        body = MARK + body + DUP + b"l"  # LIST from the two references on the stack
    return body


def _cycle() -> bytes:
    return EMPTY_LIST + b"q\x00" + b"h\x00" + APPEND  # a list that contains itself


def _after_load_real_checkpoint() -> str:
    from dns_tf.convert.torch_pickle import load_torch_file
    checkpoint = load_torch_file(os.path.join(REFERENCE, "fg_att_student.pth"))
    args = vars(checkpoint["args"])
    return f"real checkpoint loads ({len(checkpoint['model'])} tensors, {len(args)} args)"


def _checkpoint_case(directory: str, name: str) -> tuple[str, str | None]:
    path = os.path.join(directory, name + ".pth")
    crafted = {
        # the 628-byte file that segfaulted `dns-tf convert`
        "negative_stride": lambda: itq_checkpoint(path, 15, (4, 4), (-(2**40), 1)),
        # heap bytes came back as an "ITQ projection"
        "negative_offset": lambda: itq_checkpoint(path, -4096, (64, 64), (64, 1)),
        "stride_zero_32gib": lambda: itq_checkpoint(path, 0, (2**33,), (0,)),
        "huge_length": lambda: itq_checkpoint(path, 0, (2**17, 2**16), (2**16, 1)),
        "past_the_end": lambda: itq_checkpoint(path, 10, (8,), (1,)),
        "build_onto_namespace_class": lambda: write_checkpoint(path, dict_pickle({
            "args": global_("argparse", "Namespace") + value((None, {"__init__": None})) + BUILD}),
            {}),
        "build_onto_storage_type": lambda: write_checkpoint(path, dict_pickle({
            "x": global_("torch", "FloatStorage") + value({"dtype": "object"}) + BUILD}), {}),
        "build_onto_rebuild_function": lambda: write_checkpoint(path, dict_pickle({
            "x": global_("torch._utils", "_rebuild_tensor_v2")
            + value((None, {"__defaults__": (1,)})) + BUILD}), {}),
        "deep_nesting": lambda: write_checkpoint(path, dict_pickle({"x": _nested_lists(200)}), {}),
        "expanding_structure": lambda: write_checkpoint(path, dict_pickle({"x": _doubling(25)}),
                                                        {}),
        "self_reference": lambda: write_checkpoint(path, dict_pickle({"x": _cycle()}), {}),
    }[name]
    from dns_tf.convert.torch_pickle import CheckpointFormatError, load_torch_file
    crafted()
    try:
        result = load_torch_file(path)
    except CheckpointFormatError as error:
        return f"{type(error).__name__}: {error}", None
    return "", f"loaded {result!r:.200}"


def _pairs_case(directory: str, name: str) -> tuple[str, str | None]:
    path = os.path.join(directory, name + ".pk")
    similarity = {
        # the 187-byte file whose similarity dereferenced a chosen pointer in `load_pairs`
        "object_field_array": reconstructed_array(object_field_dtype(),
                                                  (0x4141414141414141).to_bytes(8, "little")),
        "object_field_scalar": global_("numpy._core.multiarray", "scalar") + MARK
        + object_field_dtype() + value((0x4141414141414141).to_bytes(8, "little")) + TUPLE + REDUCE,
        "object_dtype_array": reconstructed_array(
            numpy_dtype("O8", _plain_dtype_state("|", flags=63)), b"A" * 8),
        "build_onto_shared_dtype": global_("numpy", "dtype") + value(("f8", False, False)) + REDUCE
        + _plain_dtype_state(">") + BUILD,
        "ndarray_called_directly": global_("numpy", "ndarray") + value(((1,), "f8")) + REDUCE,
        "codecs_other_than_latin1": global_("_codecs", "encode") + value(("x" * 10, "zlib"))
        + REDUCE,
        "expanding_structure": _doubling(25),
    }[name]
    with open(path, "wb") as f:
        f.write(pairs_pickle(similarity))
    from dns_tf.data.pairs import PairsFormatError, load_pairs
    try:
        result = load_pairs(path)
    except PairsFormatError as error:
        return f"{type(error).__name__}: {error}", None
    return "", f"loaded {result.pairs!r:.200}"


def run_case(directory: str, case: str) -> dict:
    """``case`` is ``reader:name``; returns the reader's error and what a later load still does."""
    reader, name = case.split(":")
    error, loaded = (_checkpoint_case if reader == "checkpoint" else _pairs_case)(directory, name)
    after = {"namespace_works": argparse.Namespace(a=1).a == 1,
             "float64_native": np.dtype("f8").byteorder == "=" and float(np.ones(3).sum()) == 3.0}
    if reader == "checkpoint":
        after["later_load"] = _after_load_real_checkpoint()
    return {"case": case, "error": error, "loaded": loaded, "after": after}


if __name__ == "__main__":
    out_dir = sys.argv[1]
    for case_name in sys.argv[2:]:
        print(json.dumps({"start": case_name}), flush=True)
        try:
            report = run_case(out_dir, case_name)
        except Exception as error:  # noqa: BLE001 - reported, the test fails on it
            report = {"case": case_name, "error": "", "loaded": None,
                      "raised": f"{type(error).__name__}: {error}"}
        print(json.dumps(report), flush=True)
