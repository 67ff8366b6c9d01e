"""``dns-tf index create|add|remove|stats|search`` and ``dns-tf evaluate --index`` on tiny files."""

import json
import pickle

import h5py
import numpy as np
import pytest

from dns_tf.cli import main
from dns_tf.convert import load_official
from dns_tf.index import VideoIndex
from dns_tf.retrieval import DnSRetriever, LocalBackend, SearchConfig

QUERIES = ["q0", "q1"]


def unit_regions(rng, frames, dims=512):
    features = rng.standard_normal((frames, 9, dims), dtype=np.float32)
    return features / np.linalg.norm(features, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def videos():
    """Two queries and 14 database videos; d{q}_{k} are noisy copies of query q."""
    rng = np.random.default_rng(5)
    videos = {query: unit_regions(rng, 10 + 3 * i) for i, query in enumerate(QUERIES)}
    for i, query in enumerate(QUERIES):
        for k in range(2):
            copy = videos[query] + 0.3 * unit_regions(rng, len(videos[query]))
            videos[f"d{i}_{k}"] = copy / np.linalg.norm(copy, axis=-1, keepdims=True)
    for k in range(10):
        videos[f"x{k}"] = unit_regions(rng, int(rng.integers(3, 20)))
    return videos


@pytest.fixture(scope="module")
def features_h5(tmp_path_factory, videos):
    """The authors' layout: one dataset per video id, [T, 9, 512] float32."""
    path = tmp_path_factory.mktemp("features") / "features.h5"
    with h5py.File(path, "w") as file:
        for video_id, features in videos.items():
            file.create_dataset(video_id, data=features)
    return path


@pytest.fixture(scope="module")
def networks(checkpoints):
    return {"coarse": checkpoints / "cg_student.pth", "fine": checkpoints / "fg_bin_student.pth",
            "selector": checkpoints / "selector.pth"}


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def create(capsys, path, networks):
    return run(capsys, "index", "create", path, "--coarse", networks["coarse"],
               "--fine", networks["fine"], "--selector", networks["selector"])


@pytest.fixture(scope="module")
def filled_index(tmp_path_factory, features_h5, networks):
    """An index of every database video (not the queries), built through the CLI."""
    path = tmp_path_factory.mktemp("indexes") / "videos.idx"
    database = [video_id for video_id in h5py.File(features_h5, "r") if video_id not in QUERIES]
    assert main(["index", "create", str(path), "--coarse", str(networks["coarse"]),
                 "--fine", str(networks["fine"]), "--selector", str(networks["selector"])]) == 0
    assert main(["index", "add", str(path), "--features", str(features_h5), "--ids",
                 *database]) == 0
    return path, database


def test_create_records_the_networks(tmp_path, capsys, networks):
    code, out, _ = create(capsys, tmp_path / "new.idx", networks)
    assert code == 0 and "binarization" in out
    code, out, _ = run(capsys, "index", "stats", tmp_path / "new.idx", "--json")
    stats = json.loads(out)
    assert code == 0 and stats["videos"] == 0
    assert stats["networks"]["fine"] == str(networks["fine"])
    assert (stats["fine_student"], stats["fine_kind"]) == ("binarization", "bits")
    assert stats["coarse_dims"] == 128 and stats["searcher_kind"] == "brute_force"


def test_create_accepts_keras_files_and_refuses_wrong_networks(tmp_path, capsys, networks):
    fine = tmp_path / "fg_att.keras"
    load_official(networks["fine"].parent / "fg_att_student.pth").save(fine)
    code, out, _ = create(capsys, tmp_path / "att.idx", {**networks, "fine": fine})
    assert code == 0 and "float16" in out
    code, _, err = create(capsys, tmp_path / "wrong.idx", {**networks, "coarse": networks["fine"]})
    assert code == 1 and "holds a FineGrainedStudent, expected a CoarseGrainedStudent" in err
    code, _, err = create(capsys, tmp_path / "att.idx", networks)  # exists, not empty
    assert code == 1 and "not an empty directory" in err


def test_add_is_resumable(tmp_path, capsys, networks, features_h5, videos):
    path = tmp_path / "resume.idx"
    create(capsys, path, networks)
    code, out, _ = run(capsys, "index", "add", path, "--features", features_h5, "--ids", "x0",
                       "x1", "x2", "--batch_size", "2")
    assert code == 0 and "added 3 videos (0 already indexed)" in out
    code, out, _ = run(capsys, "index", "add", path, "--features", features_h5,
                       "--batch_size", "5")
    assert code == 0 and f"added {len(videos) - 3} videos (3 already indexed)" in out
    code, out, _ = run(capsys, "index", "add", path, "--features", features_h5)
    assert code == 0 and f"added 0 videos ({len(videos)} already indexed)" in out
    with VideoIndex.open(str(path), readonly=True) as index:
        assert sorted(index.ids()) == sorted(videos)
        assert index.get("x1").num_frames == len(videos["x1"])


def test_add_names_missing_videos_and_bad_features(tmp_path, capsys, networks, features_h5):
    path = tmp_path / "bad.idx"
    create(capsys, path, networks)
    code, _, err = run(capsys, "index", "add", path, "--features", features_h5, "--ids", "x0",
                       "nope")
    assert code == 1 and "has no video 'nope'" in err and "features.h5" in err
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as file:
        file.create_dataset("good", data=np.ones((5, 9, 512), np.float32))
        file.create_dataset("teacher", data=np.ones((5, 9, 3840), np.float32))
    code, _, err = run(capsys, "index", "add", path, "--features", wrong, "--batch_size", "1")
    assert code == 1 and "'teacher'" in err and "(5, 9, 3840)" in err
    assert "1 videos were added before the error" in err
    with VideoIndex.open(str(path), readonly=True) as index:
        assert index.ids() == ["good"]  # the batch before the bad one is kept


def test_search_matches_the_library(capsys, filled_index, features_h5, networks, videos):
    path, database = filled_index
    code, out, _ = run(capsys, "index", "search", path, "--features", features_h5, "--query",
                       *QUERIES, "--percentage", "50", "--top", "5", "--json")
    assert code == 0
    result = json.loads(out)
    assert [query["query"] for query in result["queries"]] == QUERIES
    assert result["config"]["percentage"] == 50
    backend = LocalBackend.from_files(*(str(networks[n]) for n in ("coarse", "fine", "selector")))
    with VideoIndex.open(str(path), readonly=True) as index:
        retriever = DnSRetriever(index, backend, SearchConfig(percentage=50, top=5))
        for query in result["queries"]:
            expected = retriever.search(videos[query["query"]])
            assert [hit["video_id"] for hit in query["hits"]] == expected.ids
            np.testing.assert_allclose([hit["score"] for hit in query["hits"]],
                                       expected.scores, atol=1e-6)
            assert query["num_candidates"] == len(database)
            assert query["num_reranked"] == len(database) // 2


def test_search_prints_a_table(capsys, filled_index, features_h5):
    path, database = filled_index
    code, out, _ = run(capsys, "index", "search", path, "--features", features_h5, "--query",
                       "q0", "--mode", "fine", "--top", "3")
    assert code == 0
    assert f"query q0: {len(database)} candidates, {len(database)} re-ranked" in out
    assert len([line for line in out.splitlines() if line.strip().endswith("*")]) == 3


def test_search_reports_an_unknown_query(capsys, filled_index, features_h5):
    code, _, err = run(capsys, "index", "search", filled_index[0], "--features", features_h5,
                       "--query", "missing")
    assert code == 1 and "missing" in err


def test_remove_and_stats(tmp_path, capsys, networks, features_h5):
    path = tmp_path / "remove.idx"
    create(capsys, path, networks)
    run(capsys, "index", "add", path, "--features", features_h5, "--ids", "x0", "x1", "x2")
    code, out, err = run(capsys, "index", "remove", path, "x1", "ghost")
    assert code == 1 and "removed 1 videos; 2 videos" in out and "ghost" in err
    code, out, _ = run(capsys, "index", "stats", path)
    assert code == 0 and "videos: 2" in out
    stats = dict(line.split(": ", 1) for line in out.splitlines())
    # 9 regions x 512 bits = 576 bytes per frame
    frames = sum(len(np.asarray(h5py.File(features_h5, "r")[i])) for i in ("x0", "x2"))
    assert float(stats["fine_kb_per_video"]) == pytest.approx(frames * 576 / 1024 / 2, abs=1e-3)
    assert float(stats["coarse_kb_per_video"]) == pytest.approx(0.5)
    assert stats["searcher_kind"] == "brute_force"


def test_evaluate_index_reports_coarse_fine_and_dns(tmp_path, capsys, filled_index, features_h5):
    path, database = filled_index
    annotation = {"5k": {"queries": QUERIES, "database": database + ["never_extracted"]},
                  "annotation": {query: {"ND": [f"d{i}_0"], "DS": [f"d{i}_1"]}
                                 for i, query in enumerate(QUERIES)}}
    annotations = tmp_path / "fivr.pickle"
    annotations.write_bytes(pickle.dumps(annotation))
    plot = tmp_path / "sweep.png"
    code, out, err = run(capsys, "evaluate", "--dataset", "FIVR-5K", "--annotations", annotations,
                         "--index", path, "--features", features_h5, "--percentages", "0", "50",
                         "100", "--sweep", plot, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["queries"] == 2 and result["available"] == len(database)
    rows = {(row["method"], row["percentage"]): row for row in result["rows"]}
    assert set(rows) == {("coarse-only", None), ("fine-only", None), ("DnS", 0.0),
                         ("DnS", 50.0), ("DnS", 100.0)}
    assert rows["DnS", 0.0]["metrics"] == rows["coarse-only", None]["metrics"]
    assert rows["DnS", 100.0]["metrics"] == rows["fine-only", None]["metrics"]
    assert set(rows["DnS", 50.0]["metrics"]) == {"DSVR", "CSVR", "ISVR"}
    seconds = result["seconds_per_query"]
    assert seconds["fine"] > 0 and seconds["coarse"] > 0
    assert rows["fine-only", None]["seconds_per_query"] == pytest.approx(seconds["fine"])
    assert rows["DnS", 50.0]["seconds_per_query"] == pytest.approx(
        seconds["coarse"] + seconds["selector"] + seconds["fine"] / 2)
    assert rows["fine-only", None]["kb_per_video"] > rows["coarse-only", None]["kb_per_video"]
    assert plot.stat().st_size > 10_000


def test_evaluate_needs_similarities_or_an_index(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["evaluate", "--dataset", "FIVR-5K", "--annotations", str(tmp_path)])
    assert "either --similarities or --index" in capsys.readouterr().err


def test_search_localises_the_copies_of_reranked_hits(capsys, filled_index, features_h5, videos):
    path, database = filled_index

    def hits(*settings):
        code, out, _ = run(capsys, "index", "search", path, "--features", features_h5, "--query",
                           "q0", "--top", str(len(database)), "--segments", "--json", *settings)
        assert code == 0
        return json.loads(out)["queries"][0]["hits"]

    # Segments exactly for the hits the fine student re-ranked.
    assert all(("segments" in hit) == hit["reranked"] for hit in hits("--percentage", "50"))
    copies = [hit for hit in hits("--mode", "fine") if hit["video_id"].startswith("d0_")]
    length = len(videos["q0"])
    assert len(copies) == 2
    for hit in copies:  # whole copies of q0
        [segment] = hit["segments"]
        assert [segment[key] for key in ("query_start", "query_end", "target_start",
                                         "target_end")] == [0, length, 0, length]
    code, out, _ = run(capsys, "index", "search", path, "--features", features_h5, "--query",
                       "q0", "--mode", "fine", "--segments")
    assert code == 0 and f"query 0.0-{length}.0 s = target 0.0-{length}.0 s" in out
