"""PCA whitening: streaming fit equals a one-shot numpy PCA; files round trip; the layer."""

import keras
import numpy as np
import pytest

from dns_tf.features.whitening import (CovarianceAccumulator, PCAComponents, PCAWhitening,
                                       fit_whitening)


def _data(seed=0, count=3000, dims=12):
    """Correlated vectors far from the origin (like iMAC features, all >= 0)."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((dims, dims)) * np.linspace(2.0, 0.05, dims)[:, None]
    return (rng.standard_normal((count, dims)) @ mixing + 50.0).astype(np.float32)


def _same_up_to_sign(a, b, atol):
    signs = np.sign(np.sum(a * b, axis=0))
    np.testing.assert_allclose(a * signs, b, atol=atol)


def test_streaming_fit_equals_one_shot_numpy_pca():
    data = _data()
    mean = data.astype(np.float64).mean(axis=0)
    covariance = np.cov(data.astype(np.float64), rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]

    # Uneven chunks, shaped like videos [T, R, D].
    chunks = [data[:7].reshape(7, 1, -1), data[7:1807].reshape(200, 9, -1), data[1807:]]
    components = fit_whitening(chunks)
    np.testing.assert_allclose(components.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(components.d, eigenvalues[order], rtol=1e-5)
    _same_up_to_sign(components.V, eigenvectors[:, order], atol=1e-5)

    one_shot = fit_whitening([data])
    np.testing.assert_allclose(components.d, one_shot.d, rtol=1e-6)
    _same_up_to_sign(components.V, one_shot.V, atol=1e-6)


def test_whitened_vectors_are_decorrelated():
    data = _data(seed=1)
    components = fit_whitening([data])
    centred = (data - components.mean) @ components.projection()
    np.testing.assert_allclose(np.cov(centred, rowvar=False), np.eye(data.shape[1]), atol=1e-3)


def test_max_vectors_stops_the_stream():
    data = _data()
    components = fit_whitening(np.array_split(data, 10), max_vectors=1000)
    np.testing.assert_allclose(components.mean, data[:1000].astype(np.float64).mean(0), rtol=1e-6)


def test_accumulator_refuses_changing_dims():
    accumulator = CovarianceAccumulator()
    accumulator.update(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="5 dims after 4-d"):
        accumulator.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        CovarianceAccumulator().covariance


def test_save_load_round_trip_and_the_official_files(tmp_path, checkpoints):
    components = fit_whitening([_data()])
    components.save(tmp_path / "pca.npz")
    loaded = PCAComponents.load(tmp_path / "pca.npz")
    for key in ("mean", "V", "d"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(components, key))
    official = PCAComponents.load(checkpoints / "pca_resnet50.npz")
    assert official.V.shape == (3840, 3840)
    with pytest.raises(ValueError, match="'mean', 'V', 'd'"):
        PCAComponents.load(checkpoints / "itq_resnet50W.pth")
    with pytest.raises(ValueError, match=r"mean \[D\]"):
        PCAComponents(np.zeros(3), np.zeros((3, 4)), np.zeros(3))


def test_layer_is_the_authors_pca():
    """``l2n((x - mean) @ (diag(1 / sqrt(d + 1e-7)) @ V[:, top].T).T)``, top by eigenvalue."""
    rng = np.random.default_rng(0)
    dims = 8
    V = np.linalg.qr(rng.standard_normal((dims, dims)))[0].astype(np.float32)
    d = rng.uniform(0.1, 2.0, dims).astype(np.float32)       # unsorted, as in the official file
    components = PCAComponents(mean=rng.standard_normal(dims).astype(np.float32), V=V, d=d)
    x = rng.standard_normal((2, 9, dims)).astype(np.float32)

    top = np.argsort(d)[::-1][:5]
    DVt = np.dot(np.diag(1.0 / np.sqrt(d[top] + 1e-7)), V[:, top].T).T
    expected = (x - components.mean) @ DVt
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)

    layer = PCAWhitening.from_components(components, dims=5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, atol=1e-6)
    restored = PCAWhitening.from_config(layer.get_config())
    restored.build((None, dims))
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x)), expected, atol=1e-6)
