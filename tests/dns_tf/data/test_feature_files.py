"""Feature files: both layouts round trip, resume, and survive a writer killed mid-write."""

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from dns_tf.data.feature_files import (FeatureFileError, HDF5Features, TFRecordFeatures,
                                       _masked_crc, open_features, open_writer, tfrecord_dataset,
                                       write_shard)


def _videos(count, seed=0, dims=16):
    rng = np.random.default_rng(seed)
    return {f"video_{index}": rng.standard_normal((int(rng.integers(1, 6)), 9, dims)).astype(
        np.float32) for index in range(count)}


@pytest.mark.parametrize("name", ["features.h5", "shards"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path, name, dtype):
    videos = _videos(5)
    path = tmp_path / name
    with open_writer(path, dtype=dtype) as writer:
        for video_id, features in videos.items():
            writer.write(video_id, features)
    with open_features(path) as features:
        assert features.ids() == list(videos)
        for video_id, expected in videos.items():
            got = features[video_id]
            assert got.dtype == np.float32 and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected.astype(dtype).astype(np.float32))
        with pytest.raises(KeyError, match="missing"):
            features["missing"]


def test_hdf5_is_the_authors_layout(tmp_path):
    videos = _videos(3)
    path = tmp_path / "features.hdf5"
    with open_writer(path, dtype="float16") as writer:
        for video_id, features in videos.items():
            writer.write(video_id, features)
    assert os.listdir(tmp_path) == ["features.hdf5"]   # no journal, no lock left behind
    with h5py.File(path, "r") as file:  # what the authors' loaders do
        assert sorted(file.keys()) == sorted(videos)
        assert file["video_1"].dtype == np.float16
        assert file["video_1"].shape == videos["video_1"].shape


def test_tfrecord_dataset(tmp_path):
    videos = _videos(4)
    with open_writer(tmp_path / "shards", dtype="float16") as writer:
        for video_id, features in videos.items():
            writer.write(video_id, features)
    read = {video_id.numpy().decode(): features.numpy()
            for video_id, features in tfrecord_dataset(tmp_path / "shards", num_parallel_reads=1)}
    assert read.keys() == videos.keys()
    for video_id, expected in videos.items():
        np.testing.assert_array_equal(read[video_id],
                                      expected.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("name", ["features.h5", "shards"])
def test_resume_adds_only_new_videos(tmp_path, name):
    videos = _videos(6)
    ids = list(videos)
    path = tmp_path / name
    with open_writer(path) as writer:
        for video_id in ids[:3]:
            writer.write(video_id, videos[video_id])
    with open_writer(path) as writer:
        assert [video_id in writer for video_id in ids] == [True] * 3 + [False] * 3
        with pytest.raises(FeatureFileError, match="video_0"):
            writer.write("video_0", videos["video_0"])
        for video_id in ids[3:]:
            writer.write(video_id, videos[video_id])
    with open_features(path) as features:
        assert sorted(features.ids()) == sorted(ids)
        for video_id in ids:
            np.testing.assert_array_equal(features[video_id], videos[video_id])


def test_bad_input_is_refused_with_the_video_named(tmp_path):
    with open_writer(tmp_path / "features.h5") as writer:
        with pytest.raises(FeatureFileError, match="clip.*T, R, D"):
            writer.write("clip", np.zeros((4, 512), np.float32))
        with pytest.raises(FeatureFileError, match="'/'"):
            writer.write("a/b", np.zeros((1, 9, 4), np.float32))
    with pytest.raises(FeatureFileError, match="dtype"):
        open_writer(tmp_path / "other.h5", dtype="int8")
    (tmp_path / "broken.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(FeatureFileError, match="broken.h5"):
        open_features(tmp_path / "broken.h5")


def test_second_writer_on_the_same_output_is_refused(tmp_path):
    with open_writer(tmp_path / "features.h5"):
        with pytest.raises(FeatureFileError, match="another process"):
            open_writer(tmp_path / "features.h5")


def test_torn_tail_and_unindexed_records_are_recovered(tmp_path):
    """What a killed writer can leave: a record not yet in the .ids file, a partial record."""
    videos = _videos(3)
    directory = tmp_path / "shards"
    with open_writer(directory) as writer:
        for video_id, features in videos.items():
            writer.write(video_id, features)
    shard = next(directory.glob("*.tfrecord"))
    index = shard.with_name(shard.name + ".ids")
    lines = index.read_text().splitlines(keepends=True)
    index.write_text(lines[0] + lines[1][:7])            # last record unindexed, torn line
    length = struct.pack("<Q", 64)
    with open(shard, "ab") as file:  # the header of a record never finished, and 4 of its bytes
        file.write(length + struct.pack("<I", _masked_crc(length)) + b"junk")
    with open_features(directory) as features:          # readers ignore the torn tail
        assert features.ids() == list(videos)
    with open_writer(directory) as writer:              # the next writer cuts it off
        assert writer.ids() == set(videos)
        writer.write("video_9", videos["video_0"])
    assert [json.loads(line)["id"] for line in index.read_text().splitlines()] == list(videos)
    with open_features(directory) as features:
        assert sorted(features.ids()) == sorted([*videos, "video_9"])
        np.testing.assert_array_equal(features["video_2"], videos["video_2"])


_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from dns_tf.data.feature_files import open_writer

    writer = open_writer(sys.argv[1])
    for index in range(10_000):
        video_id = f"video_{index}"
        if video_id in writer:
            continue
        # Large enough that the kill lands inside a write.
        writer.write(video_id, np.full((40, 9, 512), index, np.float32))
        print(video_id, flush=True)
""")


@pytest.mark.parametrize("name", ["features.h5", "shards"])
def test_writer_killed_mid_write_loses_at_most_the_video_in_flight(tmp_path, name):
    path = tmp_path / name
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    reported = [child.stdout.readline().strip() for _ in range(12)]
    child.send_signal(signal.SIGKILL)
    child.wait()
    reported += [line.strip() for line in child.stdout.read().splitlines()]
    assert reported[-1].startswith("video_")

    def check(features, ids):
        for video_id in ids:
            np.testing.assert_array_equal(features[video_id][:, 0, 0], int(video_id[6:]))

    with open_features(path) as features:   # readable right after the crash, nothing lost
        ids = features.ids()
        assert set(reported) <= set(ids) and len(ids) <= len(reported) + 1
        check(features, ids)
    with open_writer(path) as writer:          # a rerun skips them and completes cleanly
        assert writer.ids() == set(ids)
        writer.write("after_crash", np.zeros((2, 9, 512), np.float32))
    reader = HDF5Features(path) if name.endswith(".h5") else TFRecordFeatures(path)
    with reader as features:
        assert set(features.ids()) == set(ids) | {"after_crash"}
        check(features, ids)


def test_interrupted_seal_leaves_the_file_intact_and_the_journal_whole(tmp_path, monkeypatch):
    videos = _videos(4)
    path = tmp_path / "features.h5"
    with open_writer(path) as writer:
        writer.write("video_0", videos["video_0"])
    writer = open_writer(path)
    for video_id in ("video_1", "video_2", "video_3"):
        writer.write(video_id, videos[video_id])
    calls = []

    def dying_create_dataset(self, name, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full")   # the seal stops half-way, as a crash would
        return original(self, name, **kwargs)

    original = h5py.Group.create_dataset
    monkeypatch.setattr(h5py.Group, "create_dataset", dying_create_dataset)
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    monkeypatch.setattr(h5py.Group, "create_dataset", original)
    with h5py.File(path, "r") as file:                    # the file, untouched
        assert list(file.keys()) == ["video_0"]
    assert os.listdir(str(path) + ".parts") == ["part-00000.h5.sealing"]  # never read
    with open_features(path) as features:                 # plus the journal
        assert sorted(features.ids()) == sorted(videos)
    with open_writer(path) as writer:                     # the next run seals everything
        assert writer.ids() == set(videos)
    assert sorted(os.listdir(tmp_path)) == ["features.h5", "features.h5.parts"]
    assert os.listdir(str(path) + ".parts") == ["part-00000.h5"]
    with h5py.File(str(path) + ".parts/part-00000.h5", "r") as part:   # the authors' layout
        assert sorted(part.keys()) == ["video_1", "video_2", "video_3"]
    with open_features(path) as features:
        assert sorted(features.ids()) == sorted(videos)
        np.testing.assert_array_equal(features["video_3"], videos["video_3"])


_SEAL_CHILD = textwrap.dedent("""
    import sys, time
    import h5py
    import numpy as np
    from dns_tf.data.feature_files import open_writer

    original = h5py.Group.create_dataset

    def slow_create_dataset(self, name, **kwargs):   # the kill lands inside the seal, mid-file
        dataset = original(self, name, **kwargs)
        if len(self) == 3:
            print("sealing", flush=True)
            time.sleep(60)
        return dataset

    h5py.Group.create_dataset = slow_create_dataset
    writer = open_writer(sys.argv[1])
    for index in range(int(sys.argv[2]), int(sys.argv[3])):
        writer.write(f"video_{index}", np.full((20, 9, 64), index, np.float32))
        print(f"video_{index}", flush=True)
    writer.close()
""")


def test_writer_killed_while_sealing_an_append_loses_nothing_acknowledged(tmp_path):
    path = tmp_path / "features.h5"
    _write(path, {f"video_{index}": np.full((20, 9, 64), index, np.float32)
                  for index in range(5)})
    before = os.stat(path)
    child = subprocess.Popen([sys.executable, "-c", _SEAL_CHILD, str(path), "5", "10"],
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    acknowledged = []
    for line in child.stdout:
        if line.strip() == "sealing":
            break
        acknowledged.append(line.strip())
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert acknowledged == [f"video_{index}" for index in range(5, 10)]
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)

    def check(features):
        assert sorted(features.ids()) == sorted(f"video_{index}" for index in range(10))
        for video_id in features.ids():
            np.testing.assert_array_equal(features[video_id][:, 0, 0], int(video_id[6:]))

    with open_features(path) as features:                 # readable right after the kill
        check(features)
    with open_writer(path) as writer:                      # the rerun seals the journal
        assert len(writer) == 10
    assert os.listdir(str(path) + ".parts") == ["part-00000.h5"]
    assert not os.path.exists(str(path) + ".pending")
    with open_features(path) as features:
        check(features)


def _bytes_written() -> int:
    with open("/proc/self/io") as file:
        return next(int(line.split()[1]) for line in file if line.startswith("wchar"))


def test_appending_to_a_large_file_does_not_rewrite_it(tmp_path):
    path = tmp_path / "features.h5"
    big = {f"video_{index}": np.full((100, 9, 512), index, np.float32) for index in range(40)}
    _write(path, big)                                      # 74 MB
    before = os.stat(path)
    with open(path, "rb") as file:
        head = file.read(1 << 20)
    new = {f"new_{index}": video for index, video in enumerate(_videos(3, dims=512).values())}
    written = _bytes_written()
    _write(path, new)
    written = _bytes_written() - written
    # The journal and the new part: a few times the new videos' bytes, not the file's 74 MB.
    assert written < 16 * sum(video.nbytes for video in new.values()) + (1 << 20) < before.st_size // 10
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)
    with open(path, "rb") as file:
        assert file.read(1 << 20) == head
    with open_features(path) as features:
        assert sorted(features.ids()) == sorted([*big, *new])
        np.testing.assert_array_equal(features["video_39"], big["video_39"])
        np.testing.assert_array_equal(features["new_2"], new["new_2"])


def test_open_features_reads_a_directory_of_hdf5_shards(tmp_path):
    videos = _videos(6)
    ids = list(videos)
    for shard, chunk in enumerate((ids[:2], ids[2:5], ids[5:])):
        _write(tmp_path / f"shard-{shard}.h5", {video_id: videos[video_id] for video_id in chunk})
    _write(tmp_path / "shard-1.h5", {"extra": videos["video_0"]})   # shards with parts too
    with open_features(tmp_path) as features:
        assert sorted(features.ids()) == sorted([*ids, "extra"])
        for video_id in ids:
            np.testing.assert_array_equal(features[video_id], videos[video_id])
        with pytest.raises(KeyError, match="missing"):
            features["missing"]


def _write(path, videos, **kwargs):
    with open_writer(path, **kwargs) as writer:
        for video_id, features in videos.items():
            writer.write(video_id, features)


def test_flipped_bits_in_a_tfrecord_are_caught_by_its_crcs(tmp_path):
    videos = _videos(2)
    directory = tmp_path / "shards"
    _write(directory, videos)
    shard = next(directory.glob("*.tfrecord"))
    data = bytearray(shard.read_bytes())
    data[-40] ^= 0x01                                     # inside the last record's features
    shard.write_bytes(bytes(data))
    with open_features(directory) as features:
        np.testing.assert_array_equal(features["video_0"], videos["video_0"])
        with pytest.raises(FeatureFileError, match="fails its CRC check"):
            features["video_1"]
    data[0] ^= 0x01                                       # the first record's length
    shard.write_bytes(bytes(data))
    with pytest.raises(FeatureFileError, match="at byte 0: record header fails its CRC"):
        open_features(directory)


def test_hdf5_dataset_larger_than_its_file_is_refused_before_allocating(tmp_path):
    path = tmp_path / "hostile.h5"
    with h5py.File(path, "w") as file:                    # 7.4 GB declared, nothing stored
        file.create_dataset("video", shape=(200_000, 9, 1024), dtype=np.float32)
        file.create_dataset("labels", data=np.zeros((2, 9, 4), np.int64))
    assert os.path.getsize(path) < 10_000
    with open_features(path) as features:
        with pytest.raises(FeatureFileError, match="'video' declares shape .* more than the"):
            features["video"]
        with pytest.raises(FeatureFileError, match="'labels' is not a float dataset"):
            features["labels"]


@pytest.mark.parametrize("name", ["features.h5", "shards"])
def test_provenance_is_recorded_and_a_mismatched_append_refused(tmp_path, name):
    path = tmp_path / name
    made = {"dims": 16, "backbone": "torchvision:0123", "pca": "abcd", "fps": 1.0}
    _write(path, _videos(2), provenance=made)
    with open_features(path) as features:
        assert features.provenance == made
    _write(path, {"video_7": _videos(1, seed=3)["video_0"]}, provenance=made)  # same: appends
    with pytest.raises(FeatureFileError, match=r"made with fps=1.0, this run makes fps=2.0"):
        open_writer(path, provenance={**made, "fps": 2.0})
    with pytest.raises(FeatureFileError, match="made with dims=16, this run makes dims=3840"):
        open_writer(path, provenance={**made, "dims": 3840})
    with open_writer(path) as writer:                     # no provenance: the dims still hold
        with pytest.raises(FeatureFileError, match="video_9: 32-d features, but .* 16-d ones"):
            writer.write("video_9", _videos(1, dims=32)["video_0"])
    with open_features(path) as features:
        assert sorted(features.ids()) == ["video_0", "video_1", "video_7"]


def test_a_file_without_provenance_is_described_by_its_dims(tmp_path):
    path = tmp_path / "authors.h5"
    with h5py.File(path, "w") as file:                    # the authors' files record nothing
        file["video_0"] = np.zeros((3, 9, 512), np.float32)
    with pytest.raises(FeatureFileError, match="made with dims=512, this run makes dims=3840"):
        open_writer(path, provenance={"dims": 3840, "fps": 1.0})
    _write(path, {"video_1": np.ones((2, 9, 512), np.float32)}, provenance={"dims": 512})
    with open_features(path) as features:
        assert features.provenance == {"dims": 512} and len(features) == 2


def test_whole_shards_written_at_once_are_read_and_resumed(tmp_path):
    videos = _videos(5)
    ids = list(videos)
    directory = tmp_path / "shards"
    directory.mkdir()
    assert write_shard(directory / "features-00003.tfrecord",
                       ((video_id, videos[video_id]) for video_id in ids[:3])) == 3
    with pytest.raises(FeatureFileError, match="'video_0' given twice"):
        write_shard(directory / "features-00007.tfrecord",
                    [("video_0", videos["video_0"])] * 2)
    with pytest.raises(FeatureFileError, match="named features-NNNNN"):
        write_shard(directory / "other.tfrecord", [])
    assert sorted(os.listdir(directory)) == ["features-00003.tfrecord",
                                             "features-00003.tfrecord.ids"]  # nothing torn
    with open_writer(directory) as writer:                 # a writer resumes after them
        assert writer.ids() == set(ids[:3]) and writer.next_shard == 4
        for video_id in ids[3:]:
            writer.write(video_id, videos[video_id])
    assert (directory / "features-00004.tfrecord").exists()
    with open_features(directory) as features:
        assert sorted(features.ids()) == sorted(ids)
        for video_id in ids:
            np.testing.assert_array_equal(features[video_id], videos[video_id])
    read = {video_id.numpy().decode() for video_id, _ in tfrecord_dataset(directory)}
    assert read == set(ids)                               # TF reads the framing too
