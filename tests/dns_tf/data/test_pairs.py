"""The teacher-pairs pickle: authors' layout, restricted unpickling, validation and merging."""

import os
import pickle

import numpy as np
import pytest

from dns_tf.data.pairs import (PairsFormatError, TeacherPairs, UnsafePairsError, load_pairs,
                               merge_pairs, save_pairs)
from pickle_exploit import ShellExploit

INDEX = ["vid_a", "vid_b", "vid_c", "vid_d"]
PAIRS = {0: {"positives": {1: 0.8, 2: 0.4}, "negatives": {3: -0.25}},
         2: {"positives": {0: 0.41}, "negatives": {1: -0.5, 3: 0.1}}}


def test_save_then_load_round_trip(tmp_path):
    path = tmp_path / "pairs.pk"
    saved = save_pairs(path, INDEX, PAIRS)
    loaded = load_pairs(path)
    assert loaded.index == tuple(INDEX)
    assert loaded.pairs == PAIRS
    assert loaded.num_pairs == saved.num_pairs == 6
    assert loaded.source == str(path)
    # The file is the authors' plain layout, readable by a plain unpickler.
    with open(path, "rb") as f:
        assert pickle.load(f) == {"index": INDEX, "pairs": PAIRS}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_loads_numpy_scalars_keys_and_index_like_the_released_files(tmp_path, protocol):
    raw = {"index": np.array(INDEX),
           "pairs": {np.int64(0): {"positives": {np.int64(1): np.float32(0.75)},
                                   "negatives": {3: np.array(-0.5, np.float32)}}}}
    path = tmp_path / "released.pk"
    path.write_bytes(pickle.dumps(raw, protocol=protocol))
    loaded = load_pairs(path)
    assert loaded.index == tuple(INDEX)
    assert loaded.pairs == {0: {"positives": {1: 0.75}, "negatives": {3: -0.5}}}
    query, pools = next(iter(loaded.pairs.items()))
    assert type(query) is int and type(pools["positives"][1]) is float


def test_loads_pickles_written_by_numpy_1(tmp_path):
    # numpy 1.x names its modules numpy.core.*; protocol 2 spells globals as plain text.
    data = pickle.dumps({"index": INDEX, "pairs": {0: {"positives": {1: np.float32(0.5)},
                                                        "negatives": {}}}}, protocol=2)
    assert b"numpy._core.multiarray" in data
    path = tmp_path / "old.pk"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert load_pairs(path).pairs[0]["positives"] == {1: 0.5}


def test_refuses_code_in_the_pickle_before_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pk"
    path.write_bytes(pickle.dumps({"index": INDEX, "pairs": {0: ShellExploit(marker)}}))
    with pytest.raises(UnsafePairsError, match=r"evil\.pk.*(posix|os)\.system"):
        load_pairs(path)
    assert not marker.exists()


@pytest.mark.parametrize("raw, message", [
    ({"index": INDEX}, "keys 'index' and 'pairs'"),
    ([1, 2], "expected a dict"),
    ({"index": INDEX, "pairs": {4: {"positives": {}, "negatives": {}}}},
     r"query 4.*out of range for an index of 4"),
    ({"index": INDEX, "pairs": {0: {"positives": {9: 0.1}, "negatives": {}}}},
     r"positives.*9.*out of range"),
    ({"index": INDEX, "pairs": {"vid_a": {"positives": {}, "negatives": {}}}},
     "integer position"),
    ({"index": INDEX, "pairs": {0: {"positives": {1: 0.3}}}}, "'positives' and 'negatives'"),
    ({"index": INDEX, "pairs": {0: {"positives": {1: "high"}, "negatives": {}}}},
     "expected a number"),
    ({"index": INDEX, "pairs": {0: {"positives": {1: float("nan")}, "negatives": {}}}},
     "non-finite"),
    ({"index": ["a", "b", "a"], "pairs": {}}, "more than once"),
    ({"index": ["a", 3], "pairs": {}}, r"index\[1\]"),
])
def test_rejects_malformed_content_naming_the_file(tmp_path, raw, message):
    path = tmp_path / "bad.pk"
    path.write_bytes(pickle.dumps(raw))
    with pytest.raises(PairsFormatError, match=message) as error:
        load_pairs(path)
    assert "bad.pk" in str(error.value)


def test_rejects_a_truncated_file(tmp_path):
    path = tmp_path / "cut.pk"
    path.write_bytes(pickle.dumps({"index": INDEX, "pairs": PAIRS})[:-10])
    with pytest.raises(PairsFormatError, match="cut.pk"):
        load_pairs(path)


def test_invalid_pairs_never_replace_an_existing_file(tmp_path):
    path = tmp_path / "pairs.pk"
    save_pairs(path, INDEX, PAIRS)
    with pytest.raises(PairsFormatError, match="out of range"):
        save_pairs(path, INDEX, {0: {"positives": {7: 0.1}, "negatives": {}}})
    assert load_pairs(path).pairs == PAIRS
    assert sorted(os.listdir(tmp_path)) == ["pairs.pk"]


def test_merge_remaps_positions_onto_one_index(tmp_path):
    first = TeacherPairs.from_raw(["a", "b", "c"], {0: {"positives": {1: 0.9},
                                                        "negatives": {2: -0.1}}}, "first")
    save_pairs(tmp_path / "second.pk", ["c", "d", "a"],
               {0: {"positives": {2: 0.3}, "negatives": {1: -0.7}},
                2: {"positives": {}, "negatives": {1: -0.2}}})
    merged = merge_pairs([first, tmp_path / "second.pk"])
    assert merged.index == ("a", "b", "c", "d")
    named = {merged.index[q]: {pool: {merged.index[t]: s for t, s in pools[pool].items()}
                               for pool in pools}
             for q, pools in merged.pairs.items()}
    assert named == {"a": {"positives": {"b": 0.9}, "negatives": {"c": -0.1, "d": -0.2}},
                     "c": {"positives": {"a": 0.3}, "negatives": {"d": -0.7}}}


def test_merge_accepts_repeats_and_refuses_conflicts():
    one = TeacherPairs.from_raw(["a", "b"], {0: {"positives": {1: 0.5}, "negatives": {}}}, "one")
    same = TeacherPairs.from_raw(["b", "a"], {1: {"positives": {0: 0.5}, "negatives": {}}}, "same")
    assert merge_pairs([one, same]).num_pairs == 1
    other = TeacherPairs.from_raw(["a", "b"], {0: {"positives": {1: 0.2}, "negatives": {}}}, "two")
    with pytest.raises(PairsFormatError, match=r"\('a', 'b'\).*in one.*in two"):
        merge_pairs([one, other])
    flipped = TeacherPairs.from_raw(["a", "b"], {0: {"positives": {}, "negatives": {1: 0.5}}}, "x")
    with pytest.raises(PairsFormatError, match="positives 0.500000 in one, negatives"):
        merge_pairs([one, flipped])
    with pytest.raises(PairsFormatError, match="no shards"):
        merge_pairs([])
