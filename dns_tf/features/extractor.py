"""Frames to region features: ResNet50, L3-iMAC region pooling, PCA whitening.

The DnS networks do not see pixels: every frame becomes ``R`` region vectors (a 3x3 grid, ``R = 9``,
for 224x224 frames). Following the authors (ViSiL's L3-iMAC), a frame goes through an
ImageNet ResNet50; the outputs of its four residual stages are max-pooled over a grid of regions,
each stage's region vectors are L2-normalised, concatenated (256 + 512 + 1024 + 2048 = 3840 dims),
L2-normalised again and, for the students, PCA-whitened down to 512 dims.

Example:

    extractor = FeatureExtractor.from_official("resnet50.pth", "pca_resnet50_vcdb_1M.pth", dims=512)
    frames = load_video("clip.mp4")              # [T, 224, 224, 3] uint8
    features = extractor.extract(frames)         # [T, 9, 512] float32 (numpy), batches of 32
    features = extractor(frames)                 # the same as a Keras call (a tensor)

References:
    Kordopatis-Zilos et al., "ViSiL: Fine-grained Spatio-Temporal Video Similarity Learning",
    ICCV 2019 (L3-iMAC); "DnS: Distill-and-Select for Efficient and Accurate Video Indexing and
    Retrieval", IJCV 2022.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Hashable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from dns_tf.convert.torch_pickle import load_torch_file
from dns_tf.features.resnet import load_torchvision_weights, resnet50_torchvision
from dns_tf.features.whitening import PCAComponents, PCAWhitening
from dns_tf.layers.ops import l2_normalize

# Region pooling window of each residual stage (layer1..layer4): a 3x3 grid on 224x224 frames.
L3_IMAC_POOL_SIZES = (28, 14, 6, 3)
FULL_DIMS = 3840
DEFAULT_PCA_DIMS = 512
DEFAULT_BATCH_SIZE = 32

# torchvision's ImageNet normalisation, on [0, 1] RGB.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# keras.applications' ResNet50 ("caffe" mode): BGR, minus these means, on [0, 255].
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

# Outputs of the four residual stages in keras.applications' ResNet50.
KERAS_APPLICATIONS_STAGES = ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
                             "conv5_block3_out")


@keras.saving.register_keras_serializable(package="dns_tf")
class FrameNormalization(keras.layers.Layer):
    """uint8 RGB frames to the input a backbone was trained on.

    Args:
        mode: ``"torch"``: ``(x / 255 - mean) / std`` with ImageNet's statistics (torchvision);
            ``"caffe"``: RGB to BGR minus the ImageNet BGR means (keras.applications' ResNet50).

    Call arguments:
        inputs: frames ``[B, H, W, 3]``, uint8 or float in [0, 255].

    Returns:
        float32 ``[B, H, W, 3]``.
    """

    MODES = ("torch", "caffe")

    def __init__(self, mode="torch", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.mode == "torch":
            return (x / 255.0 - np.array(IMAGENET_MEAN, "float32")) / np.array(IMAGENET_STD,
                                                                                 "float32")
        return ops.flip(x, axis=-1) - np.array(CAFFE_BGR_MEAN, "float32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _adaptive_max_pool(x, grid: tuple[int, int]):
    """torch's ``adaptive_max_pool2d`` on ``[B, h, w, C]`` with static ``h, w``: cell ``i`` of
    ``n`` over ``m`` positions covers ``[floor(i m / n), ceil((i + 1) m / n))``."""
    height, width = x.shape[1], x.shape[2]
    if (height, width) == tuple(grid):
        return x

    def bounds(size, cells):
        return [(index * size // cells, -(-(index + 1) * size // cells)) for index in range(cells)]

    rows = [ops.concatenate([ops.max(x[:, top:bottom, left:right], axis=(1, 2), keepdims=True)
                             for left, right in bounds(width, grid[1])], axis=2)
            for top, bottom in bounds(height, grid[0])]
    return ops.concatenate(rows, axis=1)


@keras.saving.register_keras_serializable(package="dns_tf")
class L3iMAC(keras.layers.Layer):
    """Region vectors from several CNN stages (L3-iMAC): max-pooled grids, normalised, concatenated.

    For stage ``k`` with window ``s_k``: max pooling ``s_k x s_k`` with stride ``ceil(s_k / 2)``
    (no padding), L2 normalisation over channels. Grids that come out larger than the last stage's
    (e.g. layer3 gives 4x5 on 256x320 frames where layer4 gives 3x4) are brought to its size by
    adaptive max pooling and normalised again. The stages are concatenated along channels, the
    grid is flattened row-major and each region vector is L2-normalised.

    Args:
        pool_sizes: pooling window of each stage, ``(28, 14, 6, 3)`` for ResNet50's layer1..layer4.

    Call arguments:
        inputs: list of stage outputs ``[B, H_k, W_k, C_k]`` with static ``H_k, W_k``.

    Returns:
        ``[B, R, sum(C_k)]`` with ``R`` the last stage's grid (9 for 224x224 frames, 3840 dims for
        ResNet50).
    """

    def __init__(self, pool_sizes=L3_IMAC_POOL_SIZES, **kwargs):
        super().__init__(**kwargs)
        self.pool_sizes = tuple(int(size) for size in pool_sizes)

    def _pooled_size(self, size, pool):
        return (size - pool) // math.ceil(pool / 2) + 1

    def _grids(self, input_shapes):
        grids = []
        for shape, pool in zip(input_shapes, self.pool_sizes):
            height, width = shape[1], shape[2]
            if height is None or width is None:
                return None
            if height < pool or width < pool:
                raise ValueError(
                    f"L3-iMAC: a {height}x{width} stage output is smaller than its {pool}x{pool} "
                    "pooling window; frames must be at least 112x112")
            grids.append((self._pooled_size(height, pool), self._pooled_size(width, pool)))
        return grids

    def call(self, inputs):
        if len(inputs) != len(self.pool_sizes):
            raise ValueError(f"L3-iMAC expects {len(self.pool_sizes)} stage outputs, "
                             f"got {len(inputs)}")
        grids = self._grids([x.shape for x in inputs])
        if grids is None:
            raise ValueError("L3-iMAC needs static spatial sizes (call it on frames of known size)")
        grid = grids[-1]
        regions = []
        for x, pool, stage_grid in zip(inputs, self.pool_sizes, grids):
            x = l2_normalize(ops.max_pool(x, pool, strides=math.ceil(pool / 2), padding="valid"))
            if stage_grid != grid:
                x = l2_normalize(_adaptive_max_pool(x, grid))
            regions.append(x)
        x = ops.concatenate(regions, axis=-1)
        x = ops.reshape(x, (-1, grid[0] * grid[1], x.shape[-1]))
        return l2_normalize(x)

    def compute_output_shape(self, input_shapes):
        grids = self._grids(input_shapes)
        regions = None if grids is None else grids[-1][0] * grids[-1][1]
        return (input_shapes[0][0], regions, sum(shape[-1] for shape in input_shapes))

    def get_config(self):
        return {**super().get_config(), "pool_sizes": self.pool_sizes}


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``state_dict`` of numpy arrays from a ``.pth`` (``torch.save``) or ``.npz`` file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no such file (expected a torchvision resnet50 checkpoint)")
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    content = load_torch_file(path)
    if isinstance(content, Mapping) and "state_dict" in content and isinstance(
            content["state_dict"], Mapping):
        content = content["state_dict"]
    if not isinstance(content, Mapping):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors), "
                         f"found {type(content).__name__}")
    return dict(content)


@keras.saving.register_keras_serializable(package="dns_tf")
class FeatureExtractor(keras.Model):
    """uint8 frames ``[T, H, W, 3]`` to region features ``[T, R, dims]``.

    Normalisation -> backbone (four stage outputs) -> :class:`L3iMAC` -> optional
    :class:`PCAWhitening`. Build one with :meth:`from_official` (the authors' torchvision ResNet50
    and PCA: the features the official DnS weights expect) or :meth:`from_keras_applications`.

    Args:
        backbone: a ``keras.Model`` from normalised images ``[B, H, W, 3]`` to the list of its
            stage outputs.
        whitening: a :class:`PCAWhitening`, or None for the raw L3-iMAC vectors.
        normalization: ``"torch"`` or ``"caffe"``, see :class:`FrameNormalization`.
        pool_sizes: :class:`L3iMAC` windows, one per backbone output.

    Call arguments:
        frames: ``[B, H, W, 3]`` uint8 RGB (H, W >= 112; 224x224 gives R = 9).

    Returns:
        ``[B, R, dims]`` float32 unit vectors (``dims`` = 3840 without whitening).
    """

    def __init__(self, backbone, whitening=None, normalization="torch",
                 pool_sizes=L3_IMAC_POOL_SIZES, **kwargs):
        super().__init__(**kwargs)
        self.normalization = FrameNormalization(normalization, name="normalization")
        self.backbone = backbone
        self.region_pooling = L3iMAC(pool_sizes, name="l3_imac")
        self.whitening = whitening
        self._batch_function = None

    @property
    def dims(self) -> int:
        """Size of each region vector."""
        if self.whitening is not None:
            return self.whitening.dims
        return sum(int(shape[-1]) for shape in _output_shapes(self.backbone))

    def call(self, frames):
        x = self.backbone(self.normalization(frames), training=False)
        x = self.region_pooling(list(x))
        if self.whitening is not None:
            x = self.whitening(x)
        return x

    def extract(self, frames, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Region features of one video's frames, ``[T, H, W, 3]`` uint8 -> ``[T, R, dims]``.

        Runs compiled batches of exactly ``batch_size`` frames (the last one zero-padded), so
        videos of any length reuse one traced graph per frame size.
        """
        ((_, features),) = self.extract_videos([(None, frames)], batch_size=batch_size)
        return features

    def extract_videos(self, videos: Iterable[tuple[Hashable, Any]],
                       batch_size: int = DEFAULT_BATCH_SIZE
                       ) -> Iterator[tuple[Hashable, np.ndarray]]:
        """Region features of a stream of videos, with batches packed across videos.

        Short videos share a batch instead of each padding its own, so the CNN runs full batches
        of ``batch_size`` frames (only the very last one, or one before a change of frame size,
        is padded).

        Args:
            videos: ``(key, frames)`` pairs, frames ``[T, H, W, 3]`` uint8 with ``T >= 1``.
            batch_size: frames per CNN batch.

        Yields:
            ``(key, features [T, R, dims] float32)`` in input order, each as soon as its last
            frame has been through the network.
        """
        pending = []      # (key, frames, [feature chunks]) not yet complete, in order
        batch = []        # (index into pending, frames slice)
        batch_frames = 0

        def run_batch():
            nonlocal batch, batch_frames
            inputs = np.concatenate([chunk for _, chunk in batch])
            outputs = self._run_batch(inputs, batch_size)
            offset = 0
            for entry, chunk in batch:
                entry[2].append(outputs[offset:offset + len(chunk)])
                offset += len(chunk)
            batch, batch_frames = [], 0

        def completed():
            while pending and sum(len(c) for c in pending[0][2]) == len(pending[0][1]):
                key, _, chunks = pending.pop(0)
                yield key, np.concatenate(chunks)

        for key, frames in videos:
            frames = _check_frames(key, frames)
            if batch and batch[0][1].shape[1:] != frames.shape[1:]:
                run_batch()
                yield from completed()
            entry = (key, frames, [])
            pending.append(entry)
            start = 0
            while start < len(frames):
                take = min(batch_size - batch_frames, len(frames) - start)
                batch.append((entry, frames[start:start + take]))
                batch_frames += take
                start += take
                if batch_frames == batch_size:
                    run_batch()
                    yield from completed()
        if batch:
            run_batch()
        yield from completed()

    def _run_batch(self, frames: np.ndarray, batch_size: int) -> np.ndarray:
        """Runs the compiled network on ``frames`` padded to ``batch_size``; returns numpy."""
        if self._batch_function is None:
            self._batch_function = tf.function(lambda x: self(x, training=False))
        count = len(frames)
        if count < batch_size:
            padding = np.zeros((batch_size - count,) + frames.shape[1:], frames.dtype)
            frames = np.concatenate([frames, padding])
        return self._batch_function(tf.constant(frames)).numpy()[:count]

    @classmethod
    def from_official(cls, resnet_path: str | os.PathLike,
                      pca_path: str | os.PathLike | None = None,
                      dims: int | None = None) -> FeatureExtractor:
        """The authors' extractor: torchvision's ResNet50 and (optionally) their PCA whitening.

        Args:
            resnet_path: a torchvision ``resnet50`` ``state_dict`` as ``.pth`` (e.g. torchvision's
                ``resnet50-0676ba61.pth`` / ``resnet50-19c8e357.pth``) or ``.npz`` of its arrays.
            pca_path: ``{'mean', 'V', 'd'}`` as ``.pth`` (``pca_resnet50_vcdb_1M.pth``) or
                ``.npz``; None for the raw 3840-d L3-iMAC vectors (the teacher's input).
            dims: PCA components kept; default 512 with a PCA (the students' input), 3840 without.
        """
        backbone = resnet50_torchvision()
        load_torchvision_weights(backbone, load_state_dict(resnet_path))
        return cls(backbone, whitening=_whitening(pca_path, dims), normalization="torch")

    @classmethod
    def from_keras_applications(cls, pca_path: str | os.PathLike | None = None,
                                dims: int | None = None, weights: str | None = "imagenet"
                                ) -> FeatureExtractor:
        """An extractor on ``keras.applications.ResNet50`` (ImageNet weights, downloaded by Keras).

        For users without the torchvision checkpoint. Its features are **not** those the official
        DnS/ViSiL weights were trained on (another network: ResNet v1, caffe preprocessing, other
        training), so use it with networks trained on its own features, and with a PCA fitted on
        them (:func:`dns_tf.features.whitening.fit_whitening`), not the authors' PCA.

        Args:
            pca_path: as in :meth:`from_official`.
            dims: as in :meth:`from_official`.
            weights: ``"imagenet"``, None (random) or a weights file, as keras.applications.
        """
        base = keras.applications.ResNet50(include_top=False, weights=weights,
                                           input_shape=(None, None, 3))
        backbone = keras.Model(base.inputs,
                               [base.get_layer(name).output for name in KERAS_APPLICATIONS_STAGES],
                               name="resnet50_keras_applications")
        return cls(backbone, whitening=_whitening(pca_path, dims), normalization="caffe")

    def get_config(self):
        return {**super().get_config(),
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "whitening": (None if self.whitening is None
                              else keras.saving.serialize_keras_object(self.whitening)),
                "normalization": self.normalization.mode,
                "pool_sizes": self.region_pooling.pool_sizes}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("whitening") is not None:
            config["whitening"] = keras.saving.deserialize_keras_object(config["whitening"])
        return cls(**config)


def _whitening(pca_path, dims) -> PCAWhitening | None:
    if pca_path is None:
        if dims not in (None, FULL_DIMS):
            raise ValueError(f"dims={dims} needs a PCA file (pca_path); without one the features "
                             f"are the {FULL_DIMS}-d L3-iMAC vectors")
        return None
    return PCAWhitening.from_components(PCAComponents.load(pca_path),
                                        dims=DEFAULT_PCA_DIMS if dims is None else dims,
                                        name="whitening")


def _output_shapes(model: keras.Model) -> Sequence[tuple]:
    return [tuple(output.shape) for output in model.outputs]


def _check_frames(key, frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        name = "frames" if key is None else f"frames of {key!r}"
        raise ValueError(f"{name}: expected uint8 [T >= 1, H, W, 3], got {frames.dtype} "
                         f"{frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames of {key!r}: expected uint8 RGB, got {frames.dtype}")
    return frames
