"""PCA whitening of region vectors: fitting it, storing it, applying it.

The authors whiten the 3840-d L3-iMAC region vectors with a PCA learned on 1M vectors of VCDB and
keep the first 512 components for the students. Their file holds ``{'mean': [D], 'V': [D, D],
'd': [D]}``: the mean, the eigenvectors as columns and the eigenvalues (in any order). Whitening
keeps the ``dims`` largest eigenvalues and maps
``x -> l2n((x - mean) V_k diag(1 / sqrt(d_k + 1e-7)))``.

- :class:`PCAComponents` holds such a file's content, loads ``.npz`` and ``.pth``, saves ``.npz``;
- :func:`fit_whitening` learns one in a single streaming pass over a feature collection (float64
  mean and covariance, memory ``O(D^2)`` whatever the number of vectors);
- :class:`PCAWhitening` is the Keras layer that applies it (used by the feature extractor).

Example:

    components = fit_whitening(features.values())          # features: video id -> [T, R, 3840]
    components.save("pca.npz")
    whitening = PCAWhitening.from_components(PCAComponents.load("pca.npz"), dims=512)
    whitening(regions)                                       # [..., 3840] -> [..., 512]
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import keras
import numpy as np
from keras import ops
from tqdm import tqdm

from dns_tf.convert.torch_pickle import load_torch_file
from dns_tf.layers.ops import l2_normalize

# Added to the eigenvalues before 1/sqrt, as the authors do, so null directions stay finite.
EIGENVALUE_EPSILON = 1e-7


@dataclasses.dataclass(frozen=True)
class PCAComponents:
    """A PCA in the authors' layout.

    Attributes:
        mean: ``[D]`` mean of the vectors.
        V: ``[D, D]`` eigenvectors of the covariance, one per column.
        d: ``[D]`` eigenvalues, ``d[i]`` belonging to ``V[:, i]``, in any order.
    """

    mean: np.ndarray
    V: np.ndarray
    d: np.ndarray

    def __post_init__(self):
        dims = np.shape(self.mean)[-1] if np.ndim(self.mean) == 1 else None
        if dims is None or np.shape(self.V) != (dims, dims) or np.shape(self.d) != (dims,):
            raise ValueError(
                "PCA components need mean [D], V [D, D] and d [D]; got mean "
                f"{np.shape(self.mean)}, V {np.shape(self.V)}, d {np.shape(self.d)}")

    @property
    def input_dims(self) -> int:
        return int(self.mean.shape[0])

    def projection(self, dims: int | None = None) -> np.ndarray:
        """The whitening matrix ``[D, dims]``: the ``dims`` largest components scaled by
        ``1 / sqrt(d + 1e-7)`` (all ``D`` when ``dims`` is None)."""
        dims = self.input_dims if dims is None else int(dims)
        if not 0 < dims <= self.input_dims:
            raise ValueError(f"dims must be in [1, {self.input_dims}], got {dims}")
        order = np.argsort(self.d, kind="stable")[::-1][:dims]
        scale = 1.0 / np.sqrt(self.d[order].astype(np.float64) + EIGENVALUE_EPSILON)
        return (self.V[:, order].astype(np.float64) * scale[None, :]).astype(np.float32)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PCAComponents:
        """Reads ``{'mean', 'V', 'd'}`` from an ``.npz`` or a ``torch.save`` ``.pth`` file."""
        path = os.fspath(path)
        if path.endswith(".npz"):
            with np.load(path) as data:
                content = {key: data[key] for key in data.files}
        elif path.endswith((".pth", ".pt")):
            content = load_torch_file(path)
        else:
            raise ValueError(
                f"{path}: PCA files are .npz or .pth, got {os.path.splitext(path)[1]!r}")
        if not isinstance(content, dict) or not {"mean", "V", "d"} <= set(content):
            found = sorted(content) if isinstance(content, dict) else type(content).__name__
            raise ValueError(f"{path}: expected the keys 'mean', 'V', 'd', found {found}")
        return cls(*(np.asarray(content[key], dtype=np.float32) for key in ("mean", "V", "d")))

    def save(self, path: str | os.PathLike) -> None:
        """Writes an ``.npz`` with ``mean``, ``V``, ``d`` (float32), atomically."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            raise ValueError(f"{path}: PCA files are written as .npz")
        temporary = path + ".tmp.npz"
        np.savez(temporary, mean=self.mean.astype(np.float32), V=self.V.astype(np.float32),
                 d=self.d.astype(np.float32))
        os.replace(temporary, path)


class CovarianceAccumulator:
    """Mean and covariance of a stream of vectors, in float64 with bounded memory.

    Sums are taken about a shift (the first batch's mean) so that the covariance does not come from
    the difference of two large numbers when the mean is far from zero (iMAC features are >= 0).

    Example:

        accumulator = CovarianceAccumulator()
        for batch in batches:                  # [..., D] each
            accumulator.update(batch)
        mean, covariance = accumulator.mean, accumulator.covariance
    """

    def __init__(self):
        self.count = 0
        self._shift = None
        self._sum = None
        self._outer = None

    def update(self, vectors) -> None:
        """Adds ``vectors`` ``[..., D]`` (any leading shape)."""
        vectors = np.asarray(vectors)
        if vectors.ndim == 0:
            raise ValueError("expected vectors [..., D], got a scalar")
        vectors = vectors.reshape(-1, vectors.shape[-1]).astype(np.float64)
        if len(vectors) == 0:
            return
        if self._shift is None:
            self._shift = vectors.mean(axis=0)
            dims = vectors.shape[1]
            self._sum = np.zeros(dims)
            self._outer = np.zeros((dims, dims))
        elif vectors.shape[1] != self._shift.shape[0]:
            raise ValueError(
                f"vectors of {vectors.shape[1]} dims after {self._shift.shape[0]}-d ones")
        centred = vectors - self._shift
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred
        self.count += len(vectors)

    @property
    def mean(self) -> np.ndarray:
        self._check_count(1)
        return self._shift + self._sum / self.count

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased (``1 / (N - 1)``) covariance ``[D, D]``, as ``np.cov``."""
        self._check_count(2)
        offset = self._sum / self.count
        return (self._outer - self.count * np.outer(offset, offset)) / (self.count - 1)

    def _check_count(self, needed):
        if self.count < needed:
            raise ValueError(f"need at least {needed} vectors, got {self.count}")


def pca_from_covariance(mean: np.ndarray, covariance: np.ndarray) -> PCAComponents:
    """Eigen-decomposes a covariance into :class:`PCAComponents`, largest eigenvalue first.

    Eigenvalues below zero (round-off on rank-deficient data) are clipped to zero.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    return PCAComponents(mean=mean.astype(np.float32),
                         V=eigenvectors[:, order].astype(np.float32),
                         d=np.maximum(eigenvalues[order], 0.0).astype(np.float32))


def fit_whitening(batches: Iterable, max_vectors: int | None = None,
                  progress: bool = False) -> PCAComponents:
    """Learns a PCA whitening from a stream of region vectors in one pass.

    Args:
        batches: arrays ``[..., D]`` (e.g. the ``[T, R, D]`` videos of a feature file).
        max_vectors: stop after this many vectors (the authors used 1M); None reads everything.
        progress: show a progress bar.

    Returns:
        The :class:`PCAComponents` (float64 statistics stored as float32).
    """
    accumulator = CovarianceAccumulator()
    if progress:
        batches = tqdm(batches, desc="whitening", unit="batch")
    for batch in batches:
        batch = np.asarray(batch)
        batch = batch.reshape(-1, batch.shape[-1])
        if max_vectors is not None:
            batch = batch[:max_vectors - accumulator.count]
        accumulator.update(batch)
        if max_vectors is not None and accumulator.count >= max_vectors:
            break
    return pca_from_covariance(accumulator.mean, accumulator.covariance)


@keras.saving.register_keras_serializable(package="dns_tf")
class PCAWhitening(keras.layers.Layer):
    """PCA whitening followed by L2 normalisation: ``l2n((x - mean) @ projection)``.

    The weights are not trainable; set them with :meth:`from_components` or
    :meth:`set_components` (they start at zero).

    Args:
        dims: number of output dimensions (components kept).

    Call arguments:
        inputs: region vectors ``[..., D]``.

    Returns:
        Whitened unit vectors ``[..., dims]``.

    Example:

    >>> layer = PCAWhitening.from_components(PCAComponents.load("pca_resnet50.npz"), dims=512)
    >>> layer(keras.random.uniform((2, 9, 3840))).shape
    (2, 9, 512)
    """

    def __init__(self, dims, **kwargs):
        super().__init__(**kwargs)
        self.dims = int(dims)

    def build(self, input_shape):
        input_dims = input_shape[-1]
        self.mean = self.add_weight(shape=(input_dims,), initializer="zeros", trainable=False,
                                    name="mean")
        self.projection = self.add_weight(shape=(input_dims, self.dims), initializer="zeros",
                                          trainable=False, name="projection")

    def call(self, inputs):
        return l2_normalize(ops.matmul(inputs - self.mean, self.projection), axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.dims,)

    def set_components(self, components: PCAComponents) -> None:
        if not self.built:
            self.build((None, components.input_dims))
        if self.mean.shape[0] != components.input_dims:
            raise ValueError(f"layer built for {self.mean.shape[0]}-d inputs, PCA is "
                             f"{components.input_dims}-d")
        self.mean.assign(components.mean.astype(np.float32))
        self.projection.assign(components.projection(self.dims))

    @classmethod
    def from_components(cls, components: PCAComponents, dims: int | None = None, **kwargs):
        """A built layer whitening with ``components``, keeping ``dims`` of them (all if None)."""
        layer = cls(components.input_dims if dims is None else dims, **kwargs)
        layer.set_components(components)
        return layer

    def get_config(self):
        return {**super().get_config(), "dims": self.dims}
