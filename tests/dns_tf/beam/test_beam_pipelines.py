"""``dns-tf beam extract`` and ``beam index`` on the DirectRunner: tiny generated videos, one of
them corrupt, through the exported SavedModels of the reference networks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dns_tf.cli import main
from dns_tf.convert import load_official
from dns_tf.data.feature_files import open_features, open_writer
from dns_tf.features.batch import ExtractConfig, extract_to_writer, find_videos
from dns_tf.features.extractor import FeatureExtractor
from dns_tf.features.video import load_video
from dns_tf.index.store import VideoIndex
from dns_tf.retrieval import DnSRetriever, LocalBackend, SearchConfig, ShardedRetriever
from serving.export import export_models
from tests.videos import make_video

pytestmark = pytest.mark.slow  # a ResNet50 on a few frames, twice, and an export (~1 min)

BATCH = 4


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "one.mp4", seconds=2, fps=5)
    make_video(root / "two.mp4", seconds=1, fps=5, pattern="mandelbrot")
    make_video(root / "three.mkv", seconds=3, fps=5, pattern="smptebars")
    (root / "corrupt.mp4").write_bytes((root / "one.mp4").read_bytes()[:300])  # no frames
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory, checkpoints):
    extractor = FeatureExtractor.from_official(checkpoints / "resnet50_torchvision.npz",
                                               checkpoints / "pca_resnet50.npz")
    networks = [load_official(checkpoints / name)
                for name in ("cg_student.pth", "fg_bin_student.pth", "selector.pth")]
    export = export_models(tmp_path_factory.mktemp("export"), *networks, extractor=extractor,
                           version=1)
    return extractor, LocalBackend(*networks), export.models


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, collection, models):
    out = tmp_path_factory.mktemp("beam") / "features"
    code = main(["beam", "extract", str(collection), str(collection / "missing.mp4"),
                 "--out", str(out), "--model", str(models[2]["dns_features"]),
                 "--batch_size", str(BATCH), "--videos_per_shard", "2",
                 "--runner", "DirectRunner"])
    return code, out


def test_extract_equals_the_in_process_extraction(extracted, collection, models, tmp_path):
    code, out = extracted
    assert code == 1                                       # 1: some videos failed
    videos, _ = find_videos([str(collection)])
    with open_writer(tmp_path / "in_process.h5") as writer:
        extract_to_writer(models[0], videos, writer, ExtractConfig(batch_size=BATCH),
                          progress=False)
    with open_features(out) as beam_features, \
            open_features(tmp_path / "in_process.h5") as expected:
        assert sorted(beam_features.ids()) == sorted(expected.ids()) == ["one", "three", "two"]
        assert beam_features.provenance["dims"] == 512
        for video_id in expected.ids():
            assert beam_features[video_id].shape == expected[video_id].shape
            np.testing.assert_allclose(beam_features[video_id], expected[video_id], atol=1e-5)


def test_failures_go_to_the_dead_letter_and_nothing_else_is_lost(extracted):
    _, out = extracted
    failed = {os.path.basename(record["path"]): record["reason"]
              for record in map(json.loads, (out / "failed.jsonl").read_text().splitlines())}
    assert set(failed) == {"corrupt.mp4", "missing.mp4"}
    assert "no such file" in failed["missing.mp4"] and failed["corrupt.mp4"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["videos"] == 3 and manifest["frames"] == 2 + 1 + 3
    assert manifest["failed"] == 2
    shards = sorted(shard["path"] for shard in manifest["shards"])
    assert shards == sorted(path.name for path in out.glob("*.tfrecord"))
    assert all((out / (shard + ".ids")).exists() for shard in shards)


def test_a_rerun_skips_the_videos_already_extracted(extracted, collection, models, capsys):
    _, out = extracted
    assert main(["beam", "extract", str(collection / "one.mp4"), "--out", str(out),
                 "--model", str(models[2]["dns_features"])]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["already_done"], manifest["videos"], manifest["failed"]) == (1, 0, 0)
    assert "0 failed" in capsys.readouterr().err


def test_index_shards_open_and_find_the_query_first(extracted, collection, models, tmp_path):
    _, features = extracted
    out = tmp_path / "videos.idx"
    assert main(["beam", "index", str(features), "--out", str(out),
                 "--model", str(models[2]["dns"]), "--num_shards", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"] == ["shard-00000", "shard-00001"]
    assert (manifest["videos"], manifest["failed"]) == (3, 0)
    extractor, backend, _ = models
    make_video(tmp_path / "one_again.webm", seconds=2, fps=5, codec="libvpx-vp9")  # a re-encode
    query = extractor.extract(load_video(tmp_path / "one_again.webm"), batch_size=BATCH)
    shards = [VideoIndex.open(str(out / name), readonly=True) for name in manifest["shards"]]
    try:
        assert sorted(video_id for shard in shards for video_id in shard.ids()) == [
            "one", "three", "two"]
        retriever = ShardedRetriever([DnSRetriever(shard, backend) for shard in shards])
        ranking = retriever.search(query, SearchConfig(mode="coarse", merge="paper"))
        assert ranking.ids[0] == "one", ranking.ids
        # What the shards hold is what the networks give in process.
        with open_features(features) as stored:
            for shard in shards:
                for video_id in shard.ids():
                    video = stored[video_id]
                    expected = backend.index(video[None], np.ones((1, len(video)), np.float32))
                    record = shard.get(video_id)
                    np.testing.assert_allclose(record.coarse, expected.coarse[0], atol=1e-5)
                    np.testing.assert_allclose(record.selector_score, expected.selector[0],
                                               atol=1e-4)
                    bits = np.unpackbits(record.fine) == np.unpackbits(expected.fine[0])
                    assert record.fine.shape == expected.fine[0].shape and bits.mean() > 0.999
    finally:
        for shard in shards:
            shard.close()
    # A rerun adds nothing and keeps the shard count; another count is refused.
    assert main(["beam", "index", str(features), "--out", str(out),
                 "--model", str(models[2]["dns"])]) == 0
    assert json.loads((out / "manifest.json").read_text())["added"] == 0
    assert main(["beam", "index", str(features), "--out", str(out),
                 "--model", str(models[2]["dns"]), "--num_shards", "3"]) == 1


def test_without_apache_beam_the_command_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['apache_beam'] = None; from dns_tf.cli import main; "
            f"sys.exit(main(['beam', 'index', {str(tmp_path)!r}, '--out', 'x', '--model', 'm']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "install dns-tf[beam]" in result.stderr


def test_unknown_options_are_refused_by_other_commands(capsys):
    with pytest.raises(SystemExit):
        main(["extract", "videos/", "--out", "f.h5", "--runner", "DirectRunner"])
    assert "unrecognized arguments: --runner DirectRunner" in capsys.readouterr().err
