"""``dns-tf extract`` end to end on tiny generated videos, one of them corrupt."""

import json

import numpy as np
import pytest

from dns_tf.cli import main
from dns_tf.data.feature_files import file_fingerprint, open_features
from dns_tf.features.extractor import FeatureExtractor
from dns_tf.features.video import load_video
from tests.videos import make_video


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "nested").mkdir()
    make_video(root / "one.mp4", seconds=2, fps=5)
    make_video(root / "nested" / "two.webm", seconds=1, fps=5, codec="libvpx-vp9",
               pattern="mandelbrot")
    make_video(root / "three.mkv", seconds=3, fps=5, pattern="smptebars")
    # Two frames 200,000 s apart: refused by the decoder's frame bound, not 200,000 frames.
    make_video(root / "gap.mkv", seconds=400_000, fps=1, pattern="color",
               output_args=("-vf", "setpts=N*200000/TB", "-fps_mode", "passthrough",
                            "-frames:v", "2"))
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes((root / "one.mp4").read_bytes()[:300])   # header only, no frames
    (root / "notes.txt").write_text("not a video, not picked from a directory")
    return root


def _extract(collection, checkpoints, out, *extra):
    return main(["extract", str(collection), str(collection / "missing.mp4"), "--out", str(out),
                 "--resnet", str(checkpoints / "resnet50_torchvision.npz"),
                 "--pca", str(checkpoints / "pca_resnet50.npz"),
                 "--batch_size", "4", "--workers", "2", "--no-progress", *extra])


def test_extract_writes_every_readable_video_and_reports_the_rest(collection, checkpoints,
                                                                 tmp_path, capsys):
    out = tmp_path / "features.h5"
    assert _extract(collection, checkpoints, out) == 1   # 1: some videos were skipped
    report = json.loads((tmp_path / "features.h5.report.json").read_text())
    assert report["extracted"] == 3 and report["frames"] == 2 + 1 + 3
    reasons = {failure["path"].rsplit("/", 1)[-1]: failure["reason"]
               for failure in report["failed"]}
    assert set(reasons) == {"corrupt.mp4", "missing.mp4", "gap.mkv"}
    assert "no such file" in reasons["missing.mp4"]
    assert "timestamps span more than 86400 s" in reasons["gap.mkv"]
    assert "corrupt.mp4" in capsys.readouterr().err

    extractor = FeatureExtractor.from_official(checkpoints / "resnet50_torchvision.npz",
                                               checkpoints / "pca_resnet50.npz")
    with open_features(out) as features:
        assert sorted(features.ids()) == ["one", "three", "two"]
        for video_id, path in [("one", "one.mp4"), ("two", "nested/two.webm")]:
            expected = extractor.extract(load_video(collection / path), batch_size=4)
            assert features[video_id].shape == expected.shape == (len(expected), 9, 512)
            np.testing.assert_allclose(features[video_id], expected, atol=1e-5)

    # A rerun finds everything done and decodes nothing but the failures again.
    assert _extract(collection, checkpoints, out) == 1
    report = json.loads((tmp_path / "features.h5.report.json").read_text())
    assert report["extracted"] == 0 and report["already_done"] == 3
    assert len(report["failed"]) == 3


def test_extract_to_tfrecord_with_frame_limit(collection, checkpoints, tmp_path):
    out = tmp_path / "shards"
    assert _extract(collection, checkpoints, out, "--max_frames", "1", "--dtype", "float16",
                    "--dims", "64") == 1
    with open_features(out) as features:  # with max_frames, gap.mkv gives its first frame
        assert sorted(features.ids()) == ["gap", "one", "three", "two"]
        assert {features[video_id].shape for video_id in features} == {(1, 9, 64)}
    assert json.loads((tmp_path / "shards.report.json").read_text())["frames"] == 4


def test_extract_refuses_to_append_features_made_otherwise(collection, checkpoints, tmp_path,
                                                           capsys):
    out = tmp_path / "shards"
    assert _extract(collection, checkpoints, out, "--max_frames", "1", "--dims", "64") == 1
    with open_features(out) as features:
        assert features.provenance["dims"] == 64 and features.provenance["fps"] == 1.0
        assert features.provenance["pca"] == file_fingerprint(checkpoints / "pca_resnet50.npz")
    capsys.readouterr()
    assert _extract(collection, checkpoints, out, "--max_frames", "1", "--dims", "128") == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"dns-tf extract: error: {out} holds features made with dims=64, this run makes "
        f"dims=128: appending would mix incompatible features; write them to another file"]


def test_extract_needs_the_backbone(collection, tmp_path, monkeypatch):
    monkeypatch.delenv("DNS_TF_RESNET50", raising=False)
    with pytest.raises(SystemExit, match="--resnet"):
        main(["extract", str(collection), "--out", str(tmp_path / "f.h5")])


def test_fit_whitening_command(tmp_path):
    from dns_tf.data.feature_files import open_writer
    from dns_tf.features.whitening import PCAComponents, fit_whitening

    rng = np.random.default_rng(0)
    videos = {f"v{index}": rng.standard_normal((5, 9, 6)).astype(np.float32) for index in range(4)}
    with open_writer(tmp_path / "features.h5") as writer:
        for video_id, features in videos.items():
            writer.write(video_id, features)
    assert main(["fit-whitening", str(tmp_path / "features.h5"), "--out",
                 str(tmp_path / "pca.npz"), "--max_vectors", "100"]) == 0
    fitted = PCAComponents.load(tmp_path / "pca.npz")
    expected = fit_whitening(videos.values(), max_vectors=100)
    np.testing.assert_allclose(fitted.mean, expected.mean, atol=1e-6)
    np.testing.assert_allclose(fitted.d, expected.d, atol=1e-5)
