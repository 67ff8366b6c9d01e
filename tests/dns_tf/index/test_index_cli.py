"""``dns-tf index create|add|remove|stats|search`` and ``dns-tf evaluate --index`` on tiny files."""

import json
import pickle
import shutil

import h5py
import keras
import numpy as np
import pytest

from dns_tf.cli import main
from dns_tf.convert import load_official
from dns_tf.index import VideoIndex
from dns_tf.models import FineGrainedStudent
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
    # The networks are copied into the index, recorded relative to it, with their fingerprints.
    assert stats["networks"] == {name: f"networks/{name}.pth" for name in networks}
    assert (tmp_path / "new.idx" / "networks" / "fine.pth").read_bytes() == \
        networks["fine"].read_bytes()
    backend = LocalBackend.from_files(*(str(networks[n]) for n in ("coarse", "fine", "selector")))
    assert stats["fingerprints"] == backend.fingerprints
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
    assert "the other 1 are committed" in err
    with VideoIndex.open(str(path), readonly=True) as index:
        assert index.ids() == ["good"]


def test_one_bad_or_short_video_never_fails_its_batch(tmp_path, capsys, networks, videos):
    """Videos of 1-3 frames index like any other; a video with NaN features or the wrong shape
    is skipped with a one-line reason naming it and the rest of its batch is committed."""
    features = tmp_path / "mixed.h5"
    nan = videos["x0"].copy()
    nan[1, 2, 3] = np.nan
    with h5py.File(features, "w") as file:
        for frames in (1, 2, 3):
            file.create_dataset(f"short{frames}", data=videos["x1"][:frames])
        file.create_dataset("nan", data=nan)
        file.create_dataset("wrong", data=np.ones((4, 9, 100), np.float32))
        file.create_dataset("long", data=videos["x2"])
    path = tmp_path / "mixed.idx"
    create(capsys, path, networks)
    code, out, err = run(capsys, "index", "add", path, "--features", features,
                         "--batch_size", "16")
    assert code == 1 and "added 4 videos" in out
    lines = err.strip().splitlines()
    assert any("skipped video 'nan'" in line and "non-finite" in line for line in lines)
    assert any("skipped video 'wrong'" in line and "(4, 9, 100)" in line for line in lines)
    assert lines[-1] == (f"dns-tf index: error: 2 videos of {features} could not be indexed "
                         f"(listed above); the other 4 are committed")
    assert "Traceback" not in err
    with VideoIndex.open(str(path), readonly=True) as index:
        assert sorted(index.ids()) == ["long", "short1", "short2", "short3"]
        assert index.get("short1").num_frames == 1
        assert np.isfinite(index.selector_scores(index.ids())).all()
    # A rerun retries only the bad ones.
    code, out, _ = run(capsys, "index", "add", path, "--features", features)
    assert code == 1 and "added 0 videos (4 already indexed)" in out
    # A one-frame query answers in every search mode.
    for mode in ("coarse", "fine", "dns"):
        code, out, err = run(capsys, "search", "--index", path, "--features", features,
                             "--query", "short1", "--mode", mode, "--json")
        hits = json.loads(out)["queries"][0]["hits"]
        assert code == 0 and len(hits) == 4 and all(np.isfinite(h["score"]) for h in hits), err


def test_search_matches_the_library(capsys, filled_index, features_h5, networks, videos):
    path, database = filled_index
    code, out, _ = run(capsys, "search", "--index", path, "--features", features_h5, "--query",
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


def test_a_moved_index_still_searches(tmp_path, capsys, filled_index, features_h5):
    path, _ = filled_index
    moved = tmp_path / "elsewhere" / "moved.idx"
    shutil.copytree(path, moved)
    argv = ["search", "--index", path, "--features", features_h5, "--query", "q0",
            "--percentage", "50", "--json"]
    _, expected, _ = run(capsys, *argv)
    argv[2] = moved
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    [got], [expected] = json.loads(out)["queries"], json.loads(expected)["queries"]
    assert got["hits"] == expected["hits"] and got["num_reranked"] == 7


def test_networks_with_other_weights_are_refused(tmp_path, capsys, networks, features_h5):
    fine = tmp_path / "fg_bin.keras"
    load_official(networks["fine"]).save(fine)
    path = tmp_path / "keras.idx"
    create(capsys, path, {**networks, "fine": fine})
    run(capsys, "index", "add", path, "--features", features_h5, "--ids", "x0", "x1")
    recorded = json.loads(run(capsys, "index", "stats", path, "--json")[1])["fingerprints"]
    # Another binarization student's weights where the index keeps its copy.
    keras.utils.set_random_seed(3)
    FineGrainedStudent(binarization=True).save(path / "networks" / "fine.keras")
    code, _, err = run(capsys, "search", "--index", path, "--features", features_h5,
                       "--query", "q0")
    assert code == 1 and "other networks" in err and recorded["fine"] in err


def test_search_prints_a_table(capsys, filled_index, features_h5):
    path, database = filled_index
    code, out, _ = run(capsys, "search", "--index", path, "--features", features_h5, "--query",
                       "q0", "--mode", "fine", "--top", "3")
    assert code == 0
    assert f"query q0: {len(database)} candidates, {len(database)} re-ranked" in out
    assert len([line for line in out.splitlines() if line.strip().endswith("*")]) == 3


def test_search_reports_an_unknown_query(capsys, filled_index, features_h5):
    code, _, err = run(capsys, "search", "--index", filled_index[0], "--features", features_h5,
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


def write_annotations(tmp_path, database):
    annotation = {"5k": {"queries": QUERIES, "database": database + ["never_extracted"]},
                  "annotation": {query: {"ND": [f"d{i}_0"], "DS": [f"d{i}_1"]}
                                 for i, query in enumerate(QUERIES)}}
    annotations = tmp_path / "fivr.pickle"
    annotations.write_bytes(pickle.dumps(annotation))
    return annotations


def test_add_stores_the_score_calibration(filled_index):
    path, database = filled_index
    calibration = json.loads((path / "calibration.json").read_text())
    n = len(database)
    assert calibration["fitted_on"] == {"videos": n, "pairs": n * (n - 1) // 2,
                                        "method": "isotonic", "seed": 0}
    assert calibration["threshold"] is None
    assert np.all(np.diff(calibration["coarse_to_fine"]["x"]) > 0)


def test_evaluate_index_reports_both_merges(tmp_path, capsys, filled_index, features_h5):
    path, database = filled_index
    annotations = write_annotations(tmp_path, database)
    plot = tmp_path / "sweep.png"
    code, out, err = run(capsys, "evaluate", "--dataset", "FIVR-5K", "--annotations", annotations,
                         "--index", path, "--features", features_h5, "--percentages", "0", "50",
                         "100", "--sweep", plot, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["queries"] == 2 and result["available"] == len(database)
    seconds = result["seconds_per_query"]
    assert seconds["fine"] > 0 and seconds["coarse"] > 0
    for name in ("sweep", "sweep_paper"):
        rows = {(row["method"], row["percentage"]): row for row in result[name]}
        assert set(rows) == {("coarse-only", None), ("fine-only", None), ("DnS", 0.0),
                             ("DnS", 50.0), ("DnS", 100.0)}
        assert rows["DnS", 0.0]["metrics"] == rows["coarse-only", None]["metrics"]
        assert rows["DnS", 100.0]["metrics"] == rows["fine-only", None]["metrics"]
        assert set(rows["DnS", 50.0]["metrics"]) == {"DSVR", "CSVR", "ISVR"}
        assert rows["fine-only", None]["seconds_per_query"] == pytest.approx(seconds["fine"])
        # The default routing re-ranks the coarse top without running the selector.
        selector = seconds["selector"] if name == "sweep_paper" else 0.0
        assert rows["DnS", 50.0]["seconds_per_query"] == pytest.approx(
            seconds["coarse"] + selector + seconds["fine"] / 2)
        assert rows["fine-only", None]["kb_per_video"] > rows["coarse-only", None]["kb_per_video"]
    assert plot.stat().st_size > 10_000
    code, out, _ = run(capsys, "evaluate", "--dataset", "FIVR-5K", "--annotations", annotations,
                       "--index", path, "--features", features_h5, "--percentages", "0", "50")
    assert code == 0 and "Default search (merge calibrated" in out and "Paper (merge paper" in out


def test_calibrate_stores_a_threshold_that_search_uses(tmp_path, capsys, filled_index,
                                                       features_h5):
    import shutil

    path = tmp_path / "calibrated.idx"
    shutil.copytree(filled_index[0], path)
    annotations = write_annotations(tmp_path, filled_index[1])
    plot = tmp_path / "pr.png"
    code, out, err = run(capsys, "calibrate", "--index", path, "--features", features_h5,
                         "--dataset", "fivr-5k", "--annotations", annotations,
                         "--target_precision", "0.5", "--plot", plot, "--json")
    assert code == 0, err
    threshold = json.loads(out)
    # 2 queries x 14 database videos, 2 near-duplicates (ND, DS) each.
    assert (threshold["pairs"], threshold["positives"]) == (28, 4)
    assert threshold["precision"] >= 0.5 and threshold["target_precision"] == 0.5
    stored = json.loads((path / "calibration.json").read_text())["threshold"]
    assert stored == threshold
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run(capsys, "search", "--index", path, "--features", features_h5, "--query",
                       "q0", "--matches_only", "--json")
    hits = json.loads(out)["queries"][0]["hits"]
    assert hits and all(hit["is_match"] and hit["score"] >= threshold["score"] for hit in hits)
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--index", str(path), "--features", str(features_h5), "--dataset",
              "fivr-5k", "--annotations", str(annotations), "--target_precision", "1.5"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        "dns-tf calibrate: error: --target_precision must be in (0, 1], got 1.5")


def test_evaluate_needs_similarities_or_an_index(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["evaluate", "--dataset", "FIVR-5K", "--annotations", str(tmp_path)])
    assert "either --similarities or --index" in capsys.readouterr().err


def test_search_localises_the_copies_of_reranked_hits(capsys, filled_index, features_h5, videos):
    path, database = filled_index

    def hits(*settings):
        code, out, _ = run(capsys, "search", "--index", path, "--features", features_h5, "--query",
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
    code, out, _ = run(capsys, "search", "--index", path, "--features", features_h5, "--query",
                       "q0", "--mode", "fine", "--segments")
    assert code == 0 and f"query 0.0-{length}.0 s = target 0.0-{length}.0 s" in out


def test_a_batch_the_networks_fail_on_is_retried_video_by_video():
    from dns_tf.indexing import index_videos
    from dns_tf.retrieval import IndexedVideos

    class Backend:
        """Fails on any batch holding a 7-frame video; NaN coarse vectors for 5-frame ones."""

        def index(self, videos, mask):
            lengths = mask.sum(axis=1).astype(int)
            if 7 in lengths:
                raise RuntimeError("Aborted: pooling failed\nsecond line")
            coarse = np.where(lengths[:, None] == 5, np.nan, lengths[:, None] * np.ones((1, 4)))
            return IndexedVideos(coarse=coarse, fine=[v[:n] for v, n in zip(videos, lengths)],
                                 selector=lengths.astype(np.float32))

    videos = [np.ones((n, 2, 3), np.float32) for n in (3, 7, 5, 9)]
    failed = []
    ids, indexed = index_videos(Backend(), ["a", "b", "c", "d"], videos, failed)
    assert ids == ["a", "d"] and indexed.selector.tolist() == [3, 9]
    assert [f[0] for f in failed] == ["b", "c"]
    assert failed[0][1] == "the networks failed on it: RuntimeError: Aborted: pooling failed"
    assert "non-finite" in failed[1][1]


def test_verify_repair_and_a_damaged_index_are_one_line_errors(tmp_path, capsys, networks,
                                                               features_h5):
    path = tmp_path / "damaged.idx"
    create(capsys, path, networks)
    run(capsys, "index", "add", path, "--features", features_h5, "--ids", "x0", "x1", "x2")
    code, out, _ = run(capsys, "index", "verify", path)
    assert code == 0 and "3 videos verified, no problems" in out
    with open(path / "coarse.f32", "r+b") as f:  # x1's vector (128-d float32 rows)
        f.seek(128 * 4 + 7)
        byte = f.read(1)
        f.seek(128 * 4 + 7)
        f.write(bytes([byte[0] ^ 1]))
    code, _, err = run(capsys, "search", "--index", path, "--features", features_h5, "--query", "q0")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("dns-tf search: error: ") and "'x1' fails its CRC-32 check" in err
    code, _, err = run(capsys, "index", "add", path, "--features", features_h5, "--ids", "x3")
    assert code == 1 and "not written to" in err and "index verify" in err
    code, _, err = run(capsys, "index", "verify", path)
    assert code == 1 and "'x1'" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "index", "verify", path, "--repair")
    assert code == 0 and "removed 1 damaged videos: x1" in out and "2 videos verified" in out
    code, out, _ = run(capsys, "index", "add", path, "--features", features_h5, "--ids", "x1", "x3")
    assert code == 0 and "added 2 videos" in out
