"""Hostile and damaged checkpoints and pairs files: a clear error or a valid result, never a crash.

The crafted files of issue 13 (a segfaulting negative stride, heap bytes read through a negative
offset, 32 GiB asked for by a stride-0 tensor, BUILD onto shared classes, an object field read as
a pointer) load in a subprocess, so a regression fails a test instead of killing pytest. Random
mutations of the reference checkpoints and of a pairs file are fuzzed in-process with hypothesis.
"""

import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dns_tf.convert import torch_pickle
from dns_tf.convert.torch_pickle import CheckpointFormatError, load_torch_file
from dns_tf.data.pairs import PairsFormatError, load_pairs, save_pairs
from hostile_files import (MARK, REDUCE, TUPLE, dict_pickle, global_, itq_checkpoint, numpy_dtype,
                           pairs_pickle, reconstructed_array, tensor, value, write_checkpoint)

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where hostile_files.py is

# case -> what the reader must say (the error names the file, and the field where there is one)
EXPECTED = {
    "checkpoint:negative_stride": r"CheckpointFormatError: .*negative_stride\.pth: tensor in "
                                  r"archive/data/0: stride .* must be non-negative",
    "checkpoint:negative_offset": r"CheckpointFormatError: .*negative_offset\.pth: "
                                  r".*storage_offset \(-4096,\) must be non-negative",
    "checkpoint:stride_zero_32gib": r"size \(8589934592,\) has 8,589,934,592 elements, more than "
                                    r"the 16 its storage holds",
    "checkpoint:huge_length": r"size \(131072, 65536\) has 8,589,934,592 elements, more than",
    "checkpoint:past_the_end": r"storage_offset 10 reaches element 17, past the end of its "
                               r"storage of 16",
    "checkpoint:build_onto_namespace_class": r"UnsafeCheckpointError: .*build_onto_namespace_class"
                                             r"\.pth: refusing to load an attribute update "
                                             r"\(BUILD\) onto class argparse\.Namespace",
    "checkpoint:build_onto_storage_type": r"UnsafeCheckpointError: .*refusing to load an "
                                          r"attribute update \(BUILD\) onto torch\.FloatStorage",
    "checkpoint:build_onto_rebuild_function": r"UnsafeCheckpointError: .*BUILD\) onto "
                                              r"torch\._utils\._rebuild_tensor_v2",
    "checkpoint:deep_nesting": r"UnsafeCheckpointError: .*nested deeper than 32",
    "checkpoint:expanding_structure": r"UnsafeCheckpointError: .*expand to more than",
    "checkpoint:self_reference": r"UnsafeCheckpointError: .*self-referencing",
    "pairs:object_field_array": r"PairsFormatError: .*object_field_array\.pk: .*numpy dtype 'V8' "
                                r"is not a plain number or string type",
    "pairs:object_field_scalar": r"PairsFormatError: .*numpy dtype 'V8' is not a plain",
    "pairs:object_dtype_array": r"PairsFormatError: .*numpy dtype 'O8' is not a plain",
    "pairs:build_onto_shared_dtype": r"PairsFormatError: .*has similarity numpy dtype >f8, "
                                     r"expected a number",
    "pairs:ndarray_called_directly": r"PairsFormatError: .*'Sealed' object is not callable",
    "pairs:codecs_other_than_latin1": r"PairsFormatError: .*only str to latin1 is read",
    "pairs:expanding_structure": r"UnsafePairsError: .*expand to more than",
}


@pytest.fixture(scope="module")
def hostile_reports(tmp_path_factory, reference_dir):
    """Runs every case in subprocesses; one that crashes is reported and the rest go on."""
    directory = tmp_path_factory.mktemp("hostile")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(TESTS), TESTS]),
                   "DNS_TF_REFERENCE": str(reference_dir)}
    pending, reports = list(EXPECTED), {}
    while pending:
        run = subprocess.run([sys.executable, os.path.join(TESTS, "hostile_files.py"),
                              str(directory), *pending], capture_output=True, text=True,
                             env=environment, timeout=300)
        started = None
        for line in run.stdout.splitlines():
            report = json.loads(line)
            if "start" in report:
                started = report["start"]
            else:
                reports[report["case"]] = report
                started = None
        if started is not None:  # the process died in this case
            reports[started] = {"crashed": run.returncode, "stderr": run.stderr[-2000:]}
        elif run.returncode:
            pytest.fail(f"hostile_files.py exited {run.returncode}: {run.stderr[-2000:]}")
        pending = [case for case in pending if case not in reports]
    return reports


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_hostile_file_gives_a_clear_error_and_leaves_the_process_intact(hostile_reports, case):
    report = hostile_reports[case]
    assert "crashed" not in report, f"{case} killed the reader (exit {report.get('crashed')})"
    assert "raised" not in report, report
    assert report["loaded"] is None, f"{case} loaded: {report['loaded']}"
    assert re.search(EXPECTED[case], report["error"]), report["error"]
    # Nothing the file did outlives the load: argparse, numpy's float64 and later loads still work.
    assert report["after"]["namespace_works"] and report["after"]["float64_native"], report
    if case.startswith("checkpoint:"):
        assert report["after"]["later_load"].startswith("real checkpoint loads (11 tensors")


def test_crafted_tensors_read_exactly_what_torch_would(tmp_path):
    """The builders make valid files: a transposed view, a 0-d tensor and a tensor at an offset."""
    storage = np.arange(12, dtype=np.float32)
    data = dict_pickle({"t": tensor("0", 12, 0, (4, 3), (1, 4)), "s": tensor("0", 12, 5, (), ()),
                        "o": tensor("0", 12, 6, (3,), (2,)),
                        "e": tensor("0", 12, 0, (0, 5), (5, 1))})
    path = write_checkpoint(str(tmp_path / "ok.pth"), data, {"0": storage.tobytes()})
    loaded = load_torch_file(path)
    np.testing.assert_array_equal(loaded["t"], storage.reshape(3, 4).T)
    assert loaded["s"].shape == () and loaded["s"] == 5
    np.testing.assert_array_equal(loaded["o"], [6, 8, 10])
    assert loaded["e"].shape == (0, 5)
    loaded["t"][0, 0] = -1  # tensors are copies, not views of one another
    assert load_torch_file(path)["t"][0, 0] == 0 and loaded["s"] == 5


def test_storage_smaller_than_declared_and_pickle_size_cap(tmp_path, checkpoints, monkeypatch):
    short = write_checkpoint(str(tmp_path / "short.pth"), dict_pickle(
        {"proj": tensor("0", 16, 0, (16,), (1,))}), {"0": np.ones(4, np.float32).tobytes()})
    with pytest.raises(CheckpointFormatError, match=r"short\.pth: storage archive/data/0 holds 16 "
                                                    r"bytes, fewer than the 64 of 16"):
        load_torch_file(short)
    monkeypatch.setattr(torch_pickle, "MAX_PICKLE_BYTES", 1000)
    with pytest.raises(CheckpointFormatError, match=r"data\.pkl is 4,485 bytes, more than the "
                                                    r"1,000"):
        load_torch_file(checkpoints / "fg_att_student.pth")


def test_convert_reports_a_hostile_file_in_one_line(tmp_path, capsys):
    from dns_tf.cli import main
    hostile = itq_checkpoint(str(tmp_path / "itq.pth"), -4096, (64, 64), (64, 1))
    assert main(["convert", hostile, str(tmp_path / "itq.npz")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(
        f"dns-tf convert: error: {hostile}: tensor in archive/data/0: storage_offset (-4096,)")
    assert not (tmp_path / "itq.npz").exists()
    (tmp_path / "cut.pth").write_bytes(open(hostile, "rb").read()[:300])
    assert main(["convert", str(tmp_path / "cut.pth"), str(tmp_path / "x.npz")]) == 1
    assert capsys.readouterr().err.startswith(f"dns-tf convert: error: {tmp_path / 'cut.pth'}: ")


def test_pairs_with_numpy_scalars_and_arrays_of_plain_dtypes_load(tmp_path):
    """numpy values as numpy 1.x/2.x pickle them (protocols 2 and 5) still load."""
    raw = {"index": np.array(["a", "bb", "c"]),
           "pairs": {np.int64(0): {"positives": {1: np.float32(0.5)},
                                   "negatives": {2: np.float64(-0.25), 1: np.array(0.125, ">f8")}}}}
    for protocol in (2, 5):
        path = tmp_path / f"numpy-{protocol}.pk"
        path.write_bytes(pickle.dumps(raw, protocol=protocol))
        pairs = load_pairs(path)
        assert pairs.index == ("a", "bb", "c")
        assert pairs.pairs == {0: {"positives": {1: 0.5}, "negatives": {2: -0.25, 1: 0.125}}}
    # Hand-assembled as numpy 1.x wrote them (module numpy.core, bytes via _codecs.encode).
    latin1 = global_("_codecs", "encode") + value(("\x00\x00\x00?", "latin1")) + REDUCE
    scalar = (global_("numpy.core.multiarray", "scalar") + MARK + numpy_dtype("f4") + latin1
              + TUPLE + REDUCE)
    (tmp_path / "v1.pk").write_bytes(pairs_pickle(scalar))
    assert load_pairs(tmp_path / "v1.pk").pairs[0]["positives"] == {0: 0.5}
    array = reconstructed_array(numpy_dtype("f8"), np.float64(0.75).tobytes())
    (tmp_path / "array.pk").write_bytes(pairs_pickle(array))
    assert load_pairs(tmp_path / "array.pk").pairs[0]["positives"] == {0: 0.75}


# ---- fuzzing: every mutation gives the reader's error type or a valid result -----------------

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
_CHECKPOINTS = ("fg_att_student.pth", "selector.pth", "itq_resnet50W.pth", "visil_teacher.pth")


@pytest.fixture(scope="module")
def pickles(reference_dir):
    """Each small reference checkpoint's data.pkl, byteorder and storages."""
    result = {}
    for name in _CHECKPOINTS:
        with zipfile.ZipFile(reference_dir / "checkpoints" / name) as archive:
            top = archive.namelist()[0].split("/")[0]
            storages = {n.split("/")[-1]: archive.read(n) for n in archive.namelist()
                        if n.startswith(f"{top}/data/")}
            result[name] = (archive.read(f"{top}/data.pkl"), storages)
    return result


def _mutate(data: bytes, edits, cut) -> bytes:
    data = bytearray(data)
    for position, byte in edits:
        data[position % len(data)] = byte
    return bytes(data[:max(1, len(data) - cut)])


def _valid_checkpoint(result) -> None:
    plain = (dict, list, tuple, int, float, str, bytes, type(None), np.ndarray)
    assert isinstance(result, plain), type(result)


@FUZZ
@given(name=st.sampled_from(_CHECKPOINTS),
       edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                      max_size=6),
       cut=st.sampled_from([0, 0, 0, 1, 17, 500]))
def test_fuzzed_checkpoint_pickles_give_a_clear_error_or_a_checkpoint(tmp_path, pickles, name,
                                                                      edits, cut):
    data, storages = pickles[name]
    path = write_checkpoint(str(tmp_path / "fuzz.pth"), _mutate(data, edits, cut), storages)
    try:
        _valid_checkpoint(load_torch_file(path))
    except CheckpointFormatError as error:
        assert str(error).startswith(path)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                      max_size=4),
       region=st.sampled_from(["head", "tail"]))
def test_fuzzed_checkpoint_containers_give_a_clear_error_or_a_checkpoint(tmp_path, reference_dir,
                                                                         edits, region):
    """Byte flips in the zip's local headers (head) or its central directory (tail)."""
    data = (reference_dir / "checkpoints" / "visil_teacher.pth").read_bytes()
    window = 4096
    start = 0 if region == "head" else len(data) - window
    mutated = bytearray(data)
    for position, byte in edits:
        mutated[start + position % window] = byte
    path = tmp_path / "fuzz.pth"
    path.write_bytes(bytes(mutated))
    try:
        _valid_checkpoint(load_torch_file(path))
    except CheckpointFormatError as error:
        assert str(error).startswith(str(path))


@pytest.fixture(scope="module")
def pairs_bytes(tmp_path_factory):
    """Pairs files as we write them (protocol 4) and with numpy values (protocol 2)."""
    path = tmp_path_factory.mktemp("pairs") / "pairs.pk"
    save_pairs(path, ["a", "b", "c", "d"], {0: {"positives": {1: 0.9}, "negatives": {2: -0.1}},
                                             3: {"positives": {0: 0.5}, "negatives": {1: 0.0}}})
    numpy_valued = pickle.dumps({"index": np.array(["a", "b", "c"]), "pairs": {
        0: {"positives": {1: np.float32(0.8)}, "negatives": {2: np.array(-0.3)}}}}, protocol=2)
    return {"ours": path.read_bytes(), "numpy": numpy_valued}


@FUZZ
@given(kind=st.sampled_from(["ours", "numpy"]),
       edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                      max_size=6),
       cut=st.sampled_from([0, 0, 0, 1, 9]))
def test_fuzzed_pairs_files_give_a_clear_error_or_valid_pairs(tmp_path, pairs_bytes, kind, edits,
                                                               cut):
    path = tmp_path / "fuzz.pk"
    path.write_bytes(_mutate(pairs_bytes[kind], edits, cut))
    try:
        pairs = load_pairs(path)
    except PairsFormatError as error:
        assert str(error).startswith(str(path))
        return
    assert all(isinstance(video_id, str) for video_id in pairs.index)
    for pools in pairs.pairs.values():
        for pool in pools.values():
            assert all(0 <= target < len(pairs.index) and np.isfinite(similarity)
                       for target, similarity in pool.items())

