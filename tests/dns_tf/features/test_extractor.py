"""The feature extractor against the authors' PyTorch outputs (parity.npz, fe.*)."""

import keras
import numpy as np
import pytest

from dns_tf.features.extractor import FeatureExtractor, L3iMAC, load_state_dict
from dns_tf.features.resnet import load_torchvision_weights, resnet50_torchvision
from dns_tf.features.whitening import PCAComponents, PCAWhitening

# The reference README's agreement for the extractor (50 layers of float32).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def backbone(checkpoints):
    model = resnet50_torchvision()
    load_torchvision_weights(model, load_state_dict(checkpoints / "resnet50_torchvision.npz"))
    return model


@pytest.fixture(scope="module")
def pca(checkpoints):
    return PCAComponents.load(checkpoints / "pca_resnet50.npz")


@pytest.mark.parametrize("frames_key, output_key, dims", [
    ("fe.frames", "fe.regions_3840", None),
    ("fe.frames", "fe.regions_white3840", 3840),
    ("fe.frames", "fe.regions_pca512", 512),
    ("fe.frames_256x320", "fe.regions_pca512_256x320", 512),
])
def test_matches_the_reference(backbone, pca, parity, frames_key, output_key, dims):
    whitening = None if dims is None else PCAWhitening.from_components(pca, dims=dims)
    extractor = FeatureExtractor(backbone, whitening=whitening)
    expected = parity[output_key]
    got = keras.ops.convert_to_numpy(extractor(parity[frames_key]))
    assert got.shape == expected.shape
    error = np.abs(got - expected).max()
    print(f"{output_key}: max abs error {error:.2e}")
    assert error <= TOLERANCE


def test_extract_packs_videos_into_fixed_batches(backbone, parity):
    extractor = FeatureExtractor(backbone)
    frames = parity["fe.frames"]
    videos = [("a", frames[:1]), ("b", frames), ("c", frames[1:])]
    # Batches of 3 frames: [a0 b0 b1] [c0 + padding]; results come back per video, in order.
    results = list(extractor.extract_videos(videos, batch_size=3))
    assert [key for key, _ in results] == ["a", "b", "c"]
    expected = parity["fe.regions_3840"]
    for (_, got), want in zip(results, (expected[:1], expected, expected[1:])):
        np.testing.assert_allclose(got, want, atol=TOLERANCE)
    np.testing.assert_allclose(extractor.extract(frames, batch_size=3), expected, atol=TOLERANCE)


def test_from_official_reads_the_checkpoints(checkpoints, parity):
    extractor = FeatureExtractor.from_official(checkpoints / "resnet50_torchvision.npz",
                                               checkpoints / "pca_resnet50.npz")
    assert extractor.dims == 512
    got = keras.ops.convert_to_numpy(extractor(parity["fe.frames"][:1]))
    np.testing.assert_allclose(got, parity["fe.regions_pca512"][:1], atol=TOLERANCE)
    with pytest.raises(ValueError, match="needs a PCA"):
        FeatureExtractor.from_official(checkpoints / "resnet50_torchvision.npz", dims=512)


def test_weight_mapping_errors_name_the_key(checkpoints, backbone):
    state = load_state_dict(checkpoints / "resnet50_torchvision.npz")
    model = resnet50_torchvision()
    broken = dict(state)
    broken["layer2.0.conv2.weight"] = broken["layer2.0.conv2.weight"][:, :64]
    with pytest.raises(ValueError, match=r"layer2\.0\.conv2\.weight.*\(128, 128, 3, 3\).*"
                                         r"\(128, 64, 3, 3\)"):
        load_torchvision_weights(model, broken)
    missing = {key: value for key, value in state.items() if key != "layer4.2.bn3.running_var"}
    with pytest.raises(ValueError, match=r"missing.*layer4\.2\.bn3\.running_var"):
        load_torchvision_weights(model, missing)
    with pytest.raises(ValueError, match=r"unexpected.*layer5\.0\.conv1\.weight"):
        load_torchvision_weights(model, {**state, "layer5.0.conv1.weight": np.zeros(1)})


def test_region_grid_follows_the_last_stage():
    """Stages whose pooled grid is larger than layer4's are adaptive-max-pooled onto it."""
    maps = [keras.random.uniform((1, size_h, size_w, channels), seed=index)
            for index, (size_h, size_w, channels) in enumerate(
                [(64, 80, 4), (32, 40, 4), (16, 20, 4), (8, 10, 4)])]
    regions = keras.ops.convert_to_numpy(L3iMAC()(maps))
    assert regions.shape == (1, 12, 16)  # a 3x4 grid (layer3 alone would give 4x5)
    np.testing.assert_allclose(np.linalg.norm(regions, axis=-1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="at least 112x112"):
        L3iMAC()([keras.ops.zeros((1, 20, 20, 4))] * 4)


def test_frames_are_checked():
    extractor = FeatureExtractor(resnet50_torchvision())
    with pytest.raises(ValueError, match="uint8"):
        extractor.extract(np.zeros((2, 224, 224, 3), np.float32))
    with pytest.raises(ValueError, match=r"T >= 1"):
        extractor.extract(np.zeros((0, 224, 224, 3), np.uint8))


def test_keras_applications_backbone_builds_offline():
    extractor = FeatureExtractor.from_keras_applications(weights=None)
    assert extractor.dims == 3840
    frames = np.random.default_rng(0).integers(0, 256, (1, 112, 144, 3), dtype=np.uint8)
    regions = keras.ops.convert_to_numpy(extractor(frames))
    assert regions.shape == (1, 2, 3840)   # 112x144: a 1x2 grid
    np.testing.assert_allclose(np.linalg.norm(regions, axis=-1), 1.0, atol=1e-5)


def _tiny_backbone():
    """Four stages at strides 4, 8, 16, 32, like ResNet50's layer1..layer4, but 2 channels."""
    images = keras.Input((None, None, 3))
    x, stages = images, []
    for strides in (4, 2, 2, 2):
        x = keras.layers.Conv2D(2, 1, strides=strides, activation="relu")(x)
        stages.append(x)
    return keras.Model(images, stages)


def test_saved_extractor_loads_back(tmp_path):
    rng = np.random.default_rng(0)
    components = PCAComponents(rng.standard_normal(8).astype(np.float32),
                               np.linalg.qr(rng.standard_normal((8, 8)))[0].astype(np.float32),
                               rng.uniform(0.5, 1.5, 8).astype(np.float32))
    extractor = FeatureExtractor(_tiny_backbone(), PCAWhitening.from_components(components, dims=4),
                                 normalization="caffe")
    frames = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    expected = keras.ops.convert_to_numpy(extractor(frames))
    assert expected.shape == (2, 9, 4)
    extractor.save(tmp_path / "extractor.keras")
    restored = keras.saving.load_model(tmp_path / "extractor.keras")
    assert isinstance(restored, FeatureExtractor) and restored.dims == 4
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(frames)), expected)
