"""VideoIndex: round trips, search over base + delta, concurrency, crash safety, clear errors."""

import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from dns_tf.fine_representation import pack_bits, unpack_bits
from dns_tf.index import (DuplicateVideoError, IndexCorruptError, IndexLockedError, NotAnIndexError,
                          ScannSearcher, VideoIndex, VideoIndexError)
from dns_tf.index.store import COARSE_FILE, FINE_FILE, SEARCHER_DIR

REPO = str(pathlib.Path(__file__).resolve().parents[3])
DIMS = 16


def _codes(rng, frames, regions=9, bits=64):
    return np.where(rng.standard_normal((frames, regions, bits)) > 0, 1.0, -1.0).astype(np.float32)


def _unit(rng, count, dims=DIMS):
    vectors = rng.standard_normal((count, dims)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _exact_ids(index, ids, vectors, queries, k):
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order]


@pytest.fixture
def bits_index(tmp_path):
    with VideoIndex.create(tmp_path / "bits.idx", coarse_dims=DIMS, fine_kind="bits",
                           fine_shape_tail=(9, 64), metadata={"student": "fg_bin"}) as index:
        yield index


def test_bits_round_trip_is_exact_and_survives_reopening(bits_index):
    rng = np.random.default_rng(0)
    codes = {f"video{i}": _codes(rng, frames) for i, frames in enumerate([1, 7, 30])}
    coarse = _unit(rng, 3)
    for i, (video_id, video_codes) in enumerate(codes.items()):
        bits_index.add(video_id, coarse[i], video_codes, selector_score=0.25 * i,
                       metadata={"file": f"{video_id}.mp4", "frames": len(video_codes)})
    # Already-packed codes are stored as they are.
    packed = pack_bits(_codes(rng, 4))
    bits_index.add("packed", coarse[0], packed, np.float32([0.5]))
    path = bits_index.path
    bits_index.close()
    with VideoIndex.open(path, readonly=True) as index:
        assert index.metadata == {"student": "fg_bin"}
        assert (index.coarse_dims, index.fine_kind, index.fine_shape_tail) == (DIMS, "bits", (9, 64))
        assert index.ids() == ["video0", "video1", "video2", "packed"] and len(index) == 4
        for i, (video_id, video_codes) in enumerate(codes.items()):
            record = index.get(video_id)
            assert record.fine.dtype == np.uint8 and record.fine.shape == (len(video_codes), 9, 8)
            np.testing.assert_array_equal(record.fine_float32(), video_codes)
            np.testing.assert_array_equal(record.coarse, coarse[i])
            assert record.selector_score == 0.25 * i and record.num_frames == len(video_codes)
            assert record.metadata == {"file": f"{video_id}.mp4", "frames": len(video_codes)}
        np.testing.assert_array_equal(index.get("packed").fine, packed)
        assert index.get("packed").metadata is None
        np.testing.assert_array_equal(index.selector_scores(["video2", "packed"]), [0.5, 0.5])
        assert [r.video_id for r in index.get_many(["video2", "video0"])] == ["video2", "video0"]


def test_float16_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    features = [rng.standard_normal((frames, 9, 24)).astype(np.float32) for frames in (3, 11)]
    with VideoIndex.create(tmp_path / "f16.idx", DIMS, "float16", (9, 24)) as index:
        index.add_many(["a", "b"], _unit(rng, 2), features, [0.1, 0.2],
                       metadata=[{"x": 1}, None])
        for video_id, video_features in zip(["a", "b"], features):
            record = index.get(video_id)
            assert record.fine.dtype == np.float16
            np.testing.assert_array_equal(record.fine, video_features.astype(np.float16))
            np.testing.assert_array_equal(record.fine_float32(),
                                          video_features.astype(np.float16).astype(np.float32))
        stats = index.stats()
    assert stats["videos"] == 2 and stats["frames"] == 14
    assert stats["fine_kb_per_video"] == pytest.approx(14 * 9 * 24 * 2 / 2 / 1024)
    assert stats["coarse_kb_per_video"] == DIMS * 4 / 1024
    assert stats["bytes_on_disk"] > 14 * 9 * 24 * 2


def test_pack_unpack_bits():
    codes = np.where(np.random.default_rng(2).standard_normal((2, 3, 16)) > 0, 1.0, -1.0)
    packed = pack_bits(codes)
    assert packed.shape == (2, 3, 2) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_bits(packed), codes)


def test_remove_and_replace(bits_index):
    rng = np.random.default_rng(3)
    vectors = _unit(rng, 20)
    ids = [f"v{i}" for i in range(20)]
    bits_index.add_many(ids, vectors, [_codes(rng, 2)] * 20, np.zeros(20))
    bits_index.remove("v3")
    assert "v3" not in bits_index and len(bits_index) == 19
    with pytest.raises(KeyError, match="'v3' is not in the index"):
        bits_index.get("v3")
    with pytest.raises(KeyError, match="'v3'"):
        bits_index.remove("v3")
    result = bits_index.search(vectors, k=19)
    assert all("v3" not in row for row in result.ids)
    assert result.ids[5][0] == "v5"
    # A duplicate id is an error unless replace=True, which swaps the video atomically.
    with pytest.raises(DuplicateVideoError, match="'v5' is already in the index"):
        bits_index.add("v5", vectors[0], _codes(rng, 2), 0.0)
    bits_index.add("v5", -vectors[5], _codes(rng, 2), 9.0, replace=True)
    assert len(bits_index) == 19 and bits_index.get("v5").selector_score == 9.0
    assert bits_index.search(-vectors[5], k=1).ids == [["v5"]]
    assert bits_index.search(vectors[5], k=1).ids != [["v5"]]
    assert bits_index.ids()[-1] == "v5"
    assert bits_index.verify()["videos"] == 19


def test_search_equals_exact_search(bits_index):
    rng = np.random.default_rng(4)
    vectors = _unit(rng, 300)
    ids = [f"v{i}" for i in range(300)]
    bits_index.add_many(ids, vectors, [_codes(rng, 1)] * 300, np.zeros(300))
    queries = _unit(rng, 20)
    result = bits_index.search(queries, k=25)
    assert result.ids == _exact_ids(bits_index, ids, vectors, queries, 25)
    np.testing.assert_allclose(result.scores, np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :25],
                               rtol=1e-5, atol=1e-6)
    scores, all_ids = bits_index.coarse_scores_all(queries)
    assert sorted(all_ids) == sorted(ids)
    columns = [ids.index(video_id) for video_id in all_ids]
    np.testing.assert_allclose(scores, (queries @ vectors.T)[:, columns], rtol=1e-5,
                               atol=1e-6)
    assert len(bits_index.search(queries[0], k=1000).ids[0]) == 300


def test_bad_inputs_are_clear_errors(bits_index, tmp_path):
    rng = np.random.default_rng(5)
    good = dict(coarse=_unit(rng, 1)[0], fine=_codes(rng, 2), selector_score=0.5)
    with pytest.raises(ValueError, match=r"coarse vectors must have shape \[1, 16\]"):
        bits_index.add("a", **{**good, "coarse": np.zeros(17)})
    with pytest.raises(ValueError, match=r"'a': fine representation must have shape \[T, 9, 64\]"):
        bits_index.add("a", **{**good, "fine": np.ones((2, 9, 32))})
    with pytest.raises(ValueError, match="no frames"):
        bits_index.add("a", **{**good, "fine": np.ones((0, 9, 64))})
    with pytest.raises(ValueError, match="selector_score must be one finite number"):
        bits_index.add("a", **{**good, "selector_score": [1.0, 2.0]})
    with pytest.raises(ValueError, match="finite"):
        bits_index.add("a", **{**good, "coarse": np.full(DIMS, np.nan)})
    with pytest.raises(TypeError, match="JSON"):
        bits_index.add("a", **good, metadata={"bad": object()})
    with pytest.raises(TypeError, match="non-empty strings"):
        bits_index.add(7, **good)
    with pytest.raises(DuplicateVideoError, match="same video id more than once"):
        bits_index.add_many(["x", "x"], np.zeros((2, DIMS)), [good["fine"]] * 2, [0, 0])
    with pytest.raises(ValueError, match=r"queries must have shape \[Q, 16\]"):
        bits_index.search(np.zeros(8), k=1)
    with pytest.raises(KeyError, match="'nope' is not in the index"):
        bits_index.get("nope")
    assert len(bits_index) == 0 and bits_index.verify()["garbage_bytes"] == 0  # nothing written
    # Opening: a second writer, a missing directory, a directory that is not an index.
    with pytest.raises(IndexLockedError, match="open for writing elsewhere"):
        VideoIndex.open(bits_index.path)
    with pytest.raises(FileNotFoundError, match="no video index"):
        VideoIndex.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAnIndexError, match="not a dns-tf video index"):
        VideoIndex.open(tmp_path / "plain", readonly=True)
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "index.sqlite").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(NotAnIndexError, match="not a dns-tf video index"):
        VideoIndex.open(tmp_path / "fake", readonly=True)
    with pytest.raises(FileExistsError, match="not an empty directory"):
        VideoIndex.create(tmp_path / "fake", DIMS, "bits", (9, 64))
    with pytest.raises(ValueError, match="fine_kind must be one of"):
        VideoIndex.create(tmp_path / "new", DIMS, "int8", (9, 64))
    with pytest.raises(ValueError, match="multiple of 8"):
        VideoIndex.create(tmp_path / "new", DIMS, "bits", (9, 60))
    with VideoIndex.open(bits_index.path, readonly=True) as reader:
        with pytest.raises(VideoIndexError, match="read-only"):
            reader.add("a", **good)
    bits_index.close()
    with pytest.raises(VideoIndexError, match="closed"):
        len(bits_index)


def test_corruption_is_detected(bits_index):
    rng = np.random.default_rng(6)
    bits_index.add_many(["a", "b"], _unit(rng, 2), [_codes(rng, 3)] * 2, [0, 0])
    with open(os.path.join(bits_index.path, FINE_FILE), "r+b") as f:
        f.seek(5)
        byte = f.read(1)
        f.seek(5)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IndexCorruptError, match="'a'.*CRC-32"):
        bits_index.get("a")
    bits_index.get("b")
    with pytest.raises(IndexCorruptError, match="fails verification"):
        bits_index.verify()


# ------------------------------------------------------------------------------ ScaNN collection
@pytest.fixture(scope="module")
def scann_index(tmp_path_factory):
    """30K videos: past brute_force_below, so the writer builds and persists a ScaNN generation."""
    rng = np.random.default_rng(7)
    centres = _unit(rng, 100, dims=32)
    vectors = centres[rng.integers(0, 100, 30_000)] + 0.2 * rng.standard_normal((30_000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"v{i:05d}" for i in range(30_000)]
    path = tmp_path_factory.mktemp("scann") / "videos.idx"
    fine = np.ones((1, 9, 8), np.uint8)
    with VideoIndex.create(path, 32, "bits", (9, 64)) as index:
        index.add_many(ids, vectors, [fine] * len(ids), np.zeros(len(ids)))
        assert index.stats()["searcher_kind"] == "scann"
    queries = vectors[rng.integers(0, 30_000, 40)] + 0.1 * rng.standard_normal((40, 32)).astype(
        np.float32)
    return path, ids, vectors, queries


@pytest.mark.slow
def test_scann_index_recall_delta_and_removals(scann_index, tmp_path):
    source, ids, vectors, queries = scann_index
    path = tmp_path / "copy.idx"
    shutil.copytree(source, path)
    true_top = _exact_ids(None, ids, vectors, queries, 10)
    with VideoIndex.open(path, readonly=True) as reader:
        found = reader.search(queries, k=10).ids
        assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, true_top)]) >= 0.9
        assert isinstance(reader.searcher.base, ScannSearcher)
        assert reader.stats()["searcher_kind"] == "scann"

        rng = np.random.default_rng(8)
        with VideoIndex.open(path) as writer:
            # New videos are searchable at once, by the writer and by readers: they are in the
            # delta, the ScaNN generation is unchanged.
            new = _unit(rng, 30, dims=32)
            writer.add_many([f"new{i}" for i in range(30)], new, [np.ones((1, 9, 8), np.uint8)] * 30,
                            np.zeros(30))
            generation = writer.stats()["searcher_generation"]
            for searcher_index in (writer, reader):
                assert searcher_index.search(new, k=1).ids == [[f"new{i}"] for i in range(30)]
                assert len(searcher_index.searcher.delta) == 30
            # Removed videos, old or new, are never returned.
            gone = [found[0][0], found[1][0], "new0", "new1"]
            for video_id in gone:
                writer.remove(video_id)
            for searcher_index in (writer, reader):
                result = searcher_index.search(np.concatenate([queries, new]), k=50)
                assert not set(gone) & {v for row in result.ids for v in row}
                assert result.ids[0][0] != found[0][0]
            # rebuild() starts a new generation; results stay right and removals stay gone.
            writer.rebuild()
            assert writer.stats()["searcher_generation"] == generation + 1
            assert len(os.listdir(os.path.join(path, SEARCHER_DIR))) == 1
            for searcher_index in (writer, reader):
                assert len(searcher_index.searcher.delta) == 0
                result = searcher_index.search(new[2:], k=1)
                assert result.ids == [[f"new{i}"] for i in range(2, 30)]
                assert not set(gone) & {v for row in
                                        searcher_index.search(queries, k=50).ids for v in row}
            assert writer.verify()["videos"] == 30_000 + 30 - 4


@pytest.mark.slow
def test_missing_scann_generation_is_rebuilt(scann_index, tmp_path):
    source, ids, vectors, queries = scann_index
    path = tmp_path / "copy.idx"
    shutil.copytree(source, path)
    expected = None
    with VideoIndex.open(path, readonly=True) as reader:
        expected = reader.search(queries, k=5).ids
    shutil.rmtree(os.path.join(path, SEARCHER_DIR))
    os.makedirs(os.path.join(path, SEARCHER_DIR))
    with VideoIndex.open(path, readonly=True) as reader:
        with pytest.raises(IndexCorruptError, match="searcher file .* is missing"):
            reader.verify()
        # The reader rebuilds in memory from coarse.f32, the source of truth.
        found = reader.search(queries, k=5).ids
        assert np.mean([len(set(f) & set(e)) / 5 for f, e in zip(found, expected)]) >= 0.9
    with VideoIndex.open(path) as writer:  # the writer rebuilds and persists on open
        assert writer.verify()["videos"] == 30_000


# --------------------------------------------------------------------------- concurrency, crashes
_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from dns_tf.index import VideoIndex

    def video(i):
        rng = np.random.default_rng(i)
        coarse = rng.standard_normal(16).astype(np.float32)
        coarse /= np.linalg.norm(coarse)  # unit: a video is its own best match
        fine = rng.standard_normal((int(rng.integers(20, 60)), 9, 64)).astype(np.float16)
        return coarse, fine

    path, mode, start, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with VideoIndex.open(path) as index:
        print("open", flush=True)
        if mode == "batches":  # batches of 10 videos, each batch one transaction
            for first in range(start, start + count, 10):
                batch = [video(i) for i in range(first, first + 10)]
                index.add_many([f"v{i:05d}" for i in range(first, first + 10)],
                               np.stack([c for c, _ in batch]), [f for _, f in batch],
                               np.arange(first, first + 10, dtype=np.float32))
                print(first, flush=True)
        else:  # one video at a time, printing each id once add() returned
            for i in range(start, start + count):
                coarse, fine = video(i)
                index.add(f"v{i:05d}", coarse, fine, float(i), metadata={"i": i})
                print(f"v{i:05d}", flush=True)
""")


def _expected_video(i):
    rng = np.random.default_rng(i)
    coarse = rng.standard_normal(16).astype(np.float32)
    coarse /= np.linalg.norm(coarse)
    fine = rng.standard_normal((int(rng.integers(20, 60)), 9, 64)).astype(np.float16)
    return coarse, fine


def _start_writer(path, mode, start, count):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), mode, str(start),
                                str(count)], stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().strip() == "open"
    return process


def _float16_index(path):
    VideoIndex.create(path, DIMS, "float16", (9, 64)).close()
    return path


def test_readers_see_only_committed_videos_while_a_writer_adds(tmp_path):
    path = _float16_index(tmp_path / "shared.idx")
    writer = _start_writer(path, "batches", 0, 200)
    seen_counts, errors = [], []

    def read(reader):
        while writer.poll() is None or len(seen_counts) < 3:
            try:
                count = len(reader)
                ids = reader.ids()
                assert len(ids) >= count and len(ids) % 10 == 0  # whole batches only
                if ids:
                    result = reader.search(_expected_video(int(ids[-1][1:]))[0], k=3)
                    assert result.ids[0][0] == ids[-1]
                    for video_id in result.ids[0]:
                        record = reader.get(video_id)
                        np.testing.assert_array_equal(
                            record.fine, _expected_video(int(video_id[1:]))[1])
                seen_counts.append(len(ids))
            except Exception as error:  # surfaced below, with the reader's traceback
                errors.append(error)
                return

    with VideoIndex.open(path, readonly=True) as shared_reader:
        threads = [threading.Thread(target=read, args=(shared_reader,)) for _ in range(2)]
        with VideoIndex.open(path, readonly=True) as own_reader:
            threads.append(threading.Thread(target=read, args=(own_reader,)))
            for thread in threads:
                thread.start()
            with pytest.raises(IndexLockedError):
                VideoIndex.open(path)
            for thread in threads:
                thread.join(timeout=60)
            assert writer.wait(timeout=60) == 0
    if errors:
        raise errors[0]
    assert seen_counts[-1] == 200 or max(seen_counts) <= 200
    with VideoIndex.open(path, readonly=True) as reader:
        assert len(reader) == 200 and reader.verify()["videos"] == 200


@pytest.mark.slow
def test_kill_9_mid_add_loses_nothing_committed(tmp_path):
    path = _float16_index(tmp_path / "crash.idx")
    trials = random.Random(1234)
    committed, next_video = [], 0
    for _ in range(6):
        writer = _start_writer(path, "single", next_video, 10_000)
        target = trials.randint(1, 12)
        lines = [writer.stdout.readline().strip() for _ in range(target)]
        threading.Event().wait(trials.uniform(0, 0.02))  # land anywhere inside the next add()
        writer.send_signal(signal.SIGKILL)
        lines += writer.stdout.read().split()  # ids printed (hence committed) before the kill
        writer.wait()
        assert writer.returncode == -signal.SIGKILL
        committed += lines
        in_flight = f"v{next_video + len(lines):05d}"
        with VideoIndex.open(path) as index:  # the writer's open truncates crash garbage
            report = index.verify()
            assert report["garbage_bytes"] == 0
            stored = index.ids()
            assert stored in (committed, committed + [in_flight]), (stored[-3:], committed[-3:])
            for video_id in stored[-3:]:
                record = index.get(video_id)
                coarse, fine = _expected_video(int(video_id[1:]))
                np.testing.assert_array_equal(record.coarse, coarse)
                np.testing.assert_array_equal(record.fine, fine)
                assert record.metadata == {"i": int(video_id[1:])}
            committed = stored
            next_video = int(stored[-1][1:]) + 1 if stored else 0
            index.search(np.ones(DIMS, np.float32), k=5)
    with VideoIndex.open(path, readonly=True) as index:
        assert index.verify()["videos"] == len(committed) >= 6
        for video_id in committed:
            np.testing.assert_array_equal(index.get(video_id).fine,
                                          _expected_video(int(video_id[1:]))[1])


def test_garbage_past_the_committed_end_is_harmless(tmp_path):
    """What a crash between the data fsync and the commit leaves behind."""
    path = _float16_index(tmp_path / "garbage.idx")
    rng = np.random.default_rng(9)
    with VideoIndex.open(path) as index:
        index.add("a", _unit(rng, 1)[0], rng.standard_normal((3, 9, 64)), 0.0)
    for name in (FINE_FILE, COARSE_FILE):
        with open(os.path.join(path, name), "ab") as f:
            f.write(b"\x7f" * 1000)
    with VideoIndex.open(path, readonly=True) as reader:
        assert reader.verify()["garbage_bytes"] == 2000 and reader.ids() == ["a"]
    with VideoIndex.open(path) as writer:
        assert writer.verify()["garbage_bytes"] == 0
        writer.add("b", _unit(rng, 1)[0], rng.standard_normal((2, 9, 64)), 0.0)
        assert writer.ids() == ["a", "b"] and writer.verify()["videos"] == 2


# ------------------------------------------------------------------------------------ integrity
def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def _small_index(path, count=6):
    rng = np.random.default_rng(12)
    vectors = _unit(rng, count)
    with VideoIndex.create(path, DIMS, "bits", (9, 64)) as index:
        index.add_many([f"v{i}" for i in range(count)], vectors, [_codes(rng, 2)] * count,
                       np.zeros(count))
    return vectors


def test_a_damaged_coarse_vector_is_never_served(tmp_path):
    path = tmp_path / "idx"
    vectors = _small_index(path)
    _flip(os.path.join(path, COARSE_FILE), 3 * DIMS * 4 + 2)  # video v3's vector
    with VideoIndex.open(path, readonly=True) as reader:
        with pytest.raises(IndexCorruptError, match="coarse vector of video 'v3' fails its CRC-32"):
            reader.search(vectors[0], k=3)
        with pytest.raises(IndexCorruptError, match="'v3'"):
            reader.coarse_scores_all(vectors[0])
        with pytest.raises(IndexCorruptError, match="'v3'"):
            reader.get("v3")
    # A writer refuses the damaged index, naming the way out.
    with pytest.raises(IndexCorruptError, match="not written to.*'v3'.*index verify"):
        VideoIndex.open(path)
    assert VideoIndex.repair(path) == ["v3"]
    with VideoIndex.open(path) as writer:  # repaired: writable again, v3 can be added again
        writer.add("v3", vectors[3], _codes(np.random.default_rng(0), 2), 0.0)
        assert writer.search(vectors[3], k=1).ids == [["v3"]]
        assert writer.verify()["videos"] == 6


def test_a_damaged_coarse_vector_added_since_the_searcher_was_built_is_caught(tmp_path):
    path = tmp_path / "idx"
    vectors = _small_index(path)
    with VideoIndex.open(path, readonly=True) as reader:
        reader.search(vectors[0], k=1)  # searcher built
        with VideoIndex.open(path) as writer:
            writer.add("new", vectors[1], _codes(np.random.default_rng(1), 2), 0.0)
        _flip(os.path.join(path, COARSE_FILE), 6 * DIMS * 4)
        with pytest.raises(IndexCorruptError, match="'new'"):
            reader.search(vectors[0], k=1)  # the delta reads it


def test_symlinked_index_files_are_refused_and_their_targets_untouched(tmp_path):
    path = tmp_path / "idx"
    _small_index(path)
    for name in (FINE_FILE, COARSE_FILE):
        victim = tmp_path / f"victim-{name}"
        victim.write_bytes(b"precious" * 1000)
        original = os.path.join(path, name)
        shutil.move(original, tmp_path / "moved")
        os.symlink(victim, original)
        for readonly in (True, False):
            with pytest.raises(OSError, match="is a symlink"):
                VideoIndex.open(path, readonly=readonly)
        assert victim.read_bytes() == b"precious" * 1000
        os.remove(original)
        shutil.move(tmp_path / "moved", original)
    shutil.move(os.path.join(path, "index.sqlite"), tmp_path / "db")
    os.symlink(tmp_path / "db", os.path.join(path, "index.sqlite"))
    with pytest.raises(VideoIndexError, match="is a symlink"):
        VideoIndex.open(path, readonly=True)


def test_a_damaged_sqlite_page_is_one_clear_error(tmp_path):
    path = tmp_path / "idx"
    vectors = _small_index(path, count=400)  # several pages of rows
    db = os.path.join(path, "index.sqlite")
    size = os.path.getsize(db)
    with open(db, "r+b") as f:  # wipe a page in the middle (4096-byte pages)
        f.seek(4096 * (size // 4096 // 2))
        f.write(b"\xff" * 4096)
    with pytest.raises(IndexCorruptError, match="index.sqlite is damaged"):
        with VideoIndex.open(path, readonly=True) as reader:
            reader.search(vectors[0], k=3)
            [reader.get(video_id) for video_id in reader.ids()]
    with pytest.raises(IndexCorruptError):
        VideoIndex.open(path)
