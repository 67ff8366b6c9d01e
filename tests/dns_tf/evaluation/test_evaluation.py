"""Evaluation protocols against the metrics the authors' code computes on the reference fixtures."""

import argparse
import json
import pickle

import numpy as np
import pytest

from dns_tf import cli
from dns_tf.evaluation import (FIVR, SVD, AnnotationFormatError, SimilarityMatrix,
                               UnsafeAnnotationError, load_annotation_pickle, load_dataset,
                               read_svd_ground_truth)
from dns_tf.cli import evaluate as command
from dns_tf.evaluation.metrics import (ranked_average_precision, threshold_average_precision,
                                       trapezoidal_average_precision)
from dns_tf.evaluation.similarities import Candidates, read_available_ids

REFERENCE_DATASETS = ("FIVR-5K", "CC_WEB_VIDEO", "EVVE", "SVD")


@pytest.fixture(scope="module")
def annotations(reference_dir):
    return reference_dir / "annotations"


def _reference_run(reference_dir, name):
    with np.load(reference_dir / "eval" / f"eval_{name}.npz") as data:
        run = {key: data[key] for key in data.files}
    run["expected"] = json.loads(str(run["expected"]))
    run["matrix"] = SimilarityMatrix(run["similarities"], run["queries"].tolist(),
                                     run["database"].tolist())
    run["all_db"] = set(run["database"][run["available"]].tolist())
    return run


def _assert_metrics(actual, expected):
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert abs(actual[name] - value) <= 1e-9, (name, actual[name], value)


@pytest.mark.parametrize("name", REFERENCE_DATASETS)
def test_metrics_match_the_reference_full_and_subset(reference_dir, annotations, name):
    dataset = load_dataset(name, annotations)
    run = _reference_run(reference_dir, name)
    _assert_metrics(dataset.evaluate(run["matrix"]), run["expected"]["full"])
    _assert_metrics(dataset.evaluate(run["matrix"], all_db=run["all_db"]),
                    run["expected"]["subset"])
    # The subset really is a different evaluation.
    assert any(abs(run["expected"]["full"][key] - run["expected"]["subset"][key]) > 1e-4
               for key in run["expected"]["full"])


@pytest.mark.parametrize("name", ("FIVR-5K", "CC_WEB_VIDEO", "EVVE"))
def test_plain_matrix_in_dataset_order(reference_dir, annotations, name):
    dataset = load_dataset(name, annotations)
    run = _reference_run(reference_dir, name)
    assert dataset.queries == run["queries"].tolist()
    assert dataset.database == run["database"].tolist()
    _assert_metrics(dataset.evaluate(run["similarities"], all_db=run["all_db"]),
                    run["expected"]["subset"])
    with pytest.raises(ValueError, match=r"\[queries, database\]"):
        dataset.evaluate(run["similarities"][:, :-1])


def test_dict_similarities_like_the_authors(reference_dir, annotations):
    dataset = load_dataset("fivr-5k", annotations)
    run = _reference_run(reference_dir, "FIVR-5K")
    database = run["database"].tolist()
    as_dict = {query: dict(zip(database, map(float, row)))
               for query, row in zip(run["queries"].tolist(), run["similarities"])}
    _assert_metrics(dataset.evaluate(as_dict), run["expected"]["full"])
    _assert_metrics(dataset.evaluate(as_dict, all_db=run["all_db"]), run["expected"]["subset"])
    # Queries that are missing are left out, not scored as zero.
    half = dict(list(as_dict.items())[:25])
    subset_of_queries = SimilarityMatrix(run["similarities"][:25], run["queries"][:25].tolist(),
                                         database)
    assert dataset.evaluate(half) == pytest.approx(dataset.evaluate(subset_of_queries), abs=1e-12)


def test_svd_duplicate_columns_keep_the_last_score(reference_dir, annotations):
    dataset = load_dataset("SVD", annotations)
    run = _reference_run(reference_dir, "SVD")
    # The reference database lists a target once per query that labels it.
    assert len(run["database"]) == 6355 and len(dataset.database) == len(set(run["database"])) == 5951
    assert dataset.queries == run["queries"].tolist()
    first_scores = {}
    for column, video in enumerate(run["database"].tolist()):
        first_scores.setdefault(video, column)
    columns = list(first_scores.values())
    first_wins = SimilarityMatrix(run["similarities"][:, columns], run["queries"].tolist(),
                                  list(first_scores))
    assert abs(dataset.evaluate(first_wins)["mAP"] - run["expected"]["full"]["mAP"]) > 1e-4


def test_candidates_resolve_duplicates_like_a_dict():
    candidates = Candidates(["a", "b", "a", "c", "b"])
    assert candidates.ids.tolist() == ["a", "b", "c"]
    assert candidates.columns.tolist() == [2, 4, 3]
    assert candidates.mask({"c", "x"}).tolist() == [False, False, True]


def test_fivr_200k_counts_and_perfect_ranking(annotations):
    dataset = load_dataset("FIVR-200K", annotations)
    assert dataset.name == "FIVR-200K"
    assert len(dataset.queries) == 100 and len(dataset.database) == 225_960
    assert set(dataset.queries) <= set(dataset.database)
    five_k = load_dataset("FIVR-5K", annotations)
    assert len(five_k.queries) == 50 and len(five_k.database) == 5000
    assert set(five_k.queries) <= set(dataset.queries)

    # Rank ND/DS above CS above IS above everything else: every task's ranking is perfect.
    grade = {"ND": 3, "DS": 3, "CS": 2, "IS": 1}
    position = {video: column for column, video in enumerate(dataset.database)}
    scores = np.zeros((len(dataset.queries), len(dataset.database)), np.float32)
    for row, query in enumerate(dataset.queries):
        for label, videos in dataset.labels[query].items():
            for video in videos:
                if label in grade and video in position:
                    scores[row, position[video]] = max(scores[row, position[video]], grade[label])
    metrics = dataset.evaluate(scores)
    assert metrics["DSVR"] == 1.0 and metrics["CSVR"] == 1.0
    # One query is annotated as IS-related to itself: the protocol counts it as relevant but never
    # ranks the query itself, so that query's ISVR AP is (n - 1) / n.
    self_related = [query for query in dataset.queries
                    if query in dataset.labels[query].get("IS", ())]
    assert len(self_related) == 1
    labels = dataset.labels[self_related[0]]
    relevant = {video for label in ("ND", "DS", "CS", "IS") for video in labels.get(label, ())}
    relevant &= set(dataset.database)
    expected_isvr = 1.0 - 1.0 / (len(relevant) * len(dataset.queries))
    assert metrics["ISVR"] == pytest.approx(expected_isvr, abs=1e-12)
    assert dataset.evaluate(-scores)["DSVR"] < 0.01


def test_average_precision_definitions():
    # Relevant at ranks 1 and 3 of 2 relevant: (1/1 + 2/3) / 2.
    assert ranked_average_precision(np.array([1, 0, 1, 0], bool), 2) == pytest.approx(5 / 6)
    # A relevant video never retrieved still counts in the denominator.
    assert ranked_average_precision(np.array([1, 0], bool), 4) == pytest.approx(1 / 4)
    # EVVE trapezoids: positives at ranks 0 and 2 of 2: (1+1)/2/2 + (1/2 + 2/3)/2/2.
    assert trapezoidal_average_precision(np.array([0, 2]), 2) == pytest.approx(0.5 + 7 / 24)
    assert trapezoidal_average_precision(np.array([]), 3) == 0.0
    # Threshold AP: scores [.9 pos, .8 neg, .8 pos, .1 neg]: thresholds .9 (P=1, R=.5),
    # .8 (P=2/3, R=1) -> .5 * 1 + .5 * 2/3; the tie is one threshold whatever the order.
    labels = np.array([1, 0, 1, 0], bool)
    assert threshold_average_precision(labels, np.array([.9, .8, .8, .1])) == pytest.approx(5 / 6)
    assert threshold_average_precision(labels[[0, 2, 1, 3]], np.array([.9, .8, .8, .1])) == \
        pytest.approx(5 / 6)
    assert threshold_average_precision(np.zeros(3, bool), np.arange(3.0)) == 0.0


def test_dataset_names_are_case_insensitive_and_checked(annotations):
    assert load_dataset("evve", annotations / "evve.pickle").name == "EVVE"
    with pytest.raises(ValueError, match="unknown dataset 'VCDB'"):
        load_dataset("VCDB", annotations)
    with pytest.raises(FileNotFoundError, match="nowhere.pickle"):
        load_dataset("EVVE", annotations / "nowhere.pickle")


class _Touch:
    """Unpickling this would create a file: the restricted unpickler must refuse it first."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


class _Eval:
    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return (eval, (self.source,))


def test_annotation_pickles_refuse_code(tmp_path):
    victim = tmp_path / "created_by_unpickling"
    hostile = tmp_path / "hostile.pickle"
    hostile.write_bytes(pickle.dumps({"queries": [_Touch(victim)]}))
    with pytest.raises(UnsafeAnnotationError, match=r"hostile\.pickle: refusing to load io\.open"):
        load_annotation_pickle(hostile)
    assert not victim.exists()
    # Builtins other than containers are refused too.
    hostile.write_bytes(pickle.dumps(_Eval(f"open({str(victim)!r}, 'w')")))
    with pytest.raises(UnsafeAnnotationError, match=r"refusing to load builtins\.eval"):
        load_annotation_pickle(hostile)
    assert not victim.exists()
    with pytest.raises(UnsafeAnnotationError, match="hostile.pickle"):
        load_dataset("EVVE", hostile)

    benign = tmp_path / "benign.pickle"
    content = {"a": [1, "x", (2.5, {3})], "b": frozenset({"y"})}
    benign.write_bytes(pickle.dumps(content, protocol=2))
    assert load_annotation_pickle(benign) == content

    truncated = tmp_path / "truncated.pickle"
    truncated.write_bytes(pickle.dumps(content)[:-5])
    with pytest.raises(AnnotationFormatError, match="truncated.pickle"):
        load_annotation_pickle(truncated)


def test_annotation_layout_errors_name_file_and_field(tmp_path):
    path = tmp_path / "fivr.pickle"
    path.write_bytes(pickle.dumps({"5k": {"queries": []}, "annotation": {}}))
    with pytest.raises(AnnotationFormatError, match=r"fivr\.pickle\['5k'\]: missing field.*'database'"):
        load_dataset("FIVR-5K", path)
    with pytest.raises(AnnotationFormatError, match=r"fivr\.pickle: missing field.*'200k'"):
        load_dataset("FIVR-200K", path)
    ground_truth = tmp_path / "test_groundtruth"
    ground_truth.write_text("q1 t1 1\nq1 t2 maybe\n")
    with pytest.raises(AnnotationFormatError, match=r"test_groundtruth:2: label 'maybe'"):
        read_svd_ground_truth(ground_truth)


def test_small_constructed_datasets():
    fivr = FIVR({"5k": {"queries": ["q"], "database": {"q", "a", "b", "c"}},
                 "annotation": {"q": {"ND": ["a"], "CS": ["c"]}}}, version="5k")
    # The query itself ranks first but is skipped; a (ND) 1st, c (CS) 3rd.
    metrics = fivr.evaluate({"q": {"q": 9.0, "a": 3.0, "b": 2.0, "c": 1.0}})
    assert metrics == {"DSVR": 1.0, "CSVR": pytest.approx((1 + 2 / 3) / 2),
                       "ISVR": pytest.approx((1 + 2 / 3) / 2)}
    # Without b among the available videos, c moves up to 2nd.
    assert fivr.evaluate({"q": {"q": 9.0, "a": 3.0, "b": 2.0, "c": 1.0}},
                         all_db={"a", "c"})["CSVR"] == 1.0
    svd = SVD({"q": {"p": 1, "n": 0}})
    assert svd.evaluate({"q": {"p": 0.2, "n": 0.7}})["mAP"] == pytest.approx(0.5)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="dns-tf")
    command.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_evaluate_json(reference_dir, capsys):
    assert "evaluate" in cli.COMMANDS
    npz = str(reference_dir / "eval" / "eval_CC_WEB_VIDEO.npz")
    args = _parse(["evaluate", "--dataset", "cc_web_video", "--annotations",
                   str(reference_dir / "annotations"), "--similarities", npz,
                   "--available", npz, "--json"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dataset"] == "CC_WEB_VIDEO" and printed["subset"] is True
    _assert_metrics(printed["metrics"], _reference_run(reference_dir, "CC_WEB_VIDEO")
                    ["expected"]["subset"])


def test_cli_evaluate_text_and_errors(reference_dir, tmp_path, capsys):
    annotations = str(reference_dir / "annotations")
    npz = str(reference_dir / "eval" / "eval_SVD.npz")
    args = _parse(["evaluate", "--dataset", "SVD", "--annotations", annotations,
                   "--similarities", npz])
    assert args.func(args) == 0
    assert "mAP: 0.6404" in capsys.readouterr().out

    broken = tmp_path / "broken.npz"
    np.savez(broken, similarities=np.zeros((2, 3)), queries=np.array(["a", "b"]))
    args = _parse(["evaluate", "--dataset", "SVD", "--annotations", annotations,
                   "--similarities", str(broken)])
    assert args.func(args) == 2
    assert "broken.npz: missing array(s) database" in capsys.readouterr().err

    ids = tmp_path / "available.txt"
    ids.write_text("a\n\nb\n")
    assert read_available_ids(ids) == {"a", "b"}
