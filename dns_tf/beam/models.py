"""Beam ``ModelHandler``s for the exported DnS SavedModels (:mod:`serving.export`).

Beam's ``TFModelHandlerTensor`` does not fit these models: it loads with
``tf.keras.models.load_model``, which in Keras 3 reads ``.keras`` files only, and it stacks a
batch into one tensor, which videos of different lengths are not. These handlers load the
SavedModel with ``tf.saved_model.load``, call one named signature, and pack a batch of whole
videos into the signature's batch-major inputs:

- :class:`FeaturesModelHandler`: ``dns_features``' ``features`` signature, frames
  ``[T, S, S, 3]`` uint8 -> region features ``[T, R, D]`` float32. The frames of the batch's
  videos run in chunks of exactly ``batch_size`` (the last one zero-padded), as
  :meth:`dns_tf.features.extractor.FeatureExtractor.extract_videos` runs them in process.
- :class:`IndexModelHandler`: ``dns``' ``index`` signature, features ``[T, R, D]`` -> ``{"coarse":
  [Dc] float32, "fine": [T, R, C] (uint8 packed bits | float16), "selector": float}``.

Wrap them in ``KeyedModelHandler`` to carry video ids through ``RunInference``.
"""

from __future__ import annotations

import os

import numpy as np

from dns_tf.beam import require_beam

require_beam()

import tensorflow as tf  # noqa: E402
from apache_beam.ml.inference.base import ModelHandler  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402

from dns_tf.data.padding import padded_batch_from_arrays  # noqa: E402


def signature_spec(path: str | os.PathLike, signature: str) -> dict:
    """``{"inputs"|"outputs": {name: (shape, dtype)}}`` of a SavedModel signature, read from
    ``saved_model.pb`` alone (no variables loaded); unknown sizes are None."""
    path = os.fspath(path)
    proto = saved_model_pb2.SavedModel()
    try:
        with open(os.path.join(path, "saved_model.pb"), "rb") as file:
            proto.ParseFromString(file.read())
    except OSError as error:
        raise FileNotFoundError(f"{path}: not a SavedModel directory ({error})") from None
    signatures = proto.meta_graphs[0].signature_def
    if signature not in signatures:
        raise ValueError(f"{path} has no signature {signature!r} (it has "
                         f"{', '.join(sorted(signatures))}); export it with 'dns-tf export'")

    def specs(tensors):
        return {name: (tuple(None if dim.size < 0 else dim.size for dim in info.tensor_shape.dim),
                       tf.dtypes.as_dtype(info.dtype).name)
                for name, info in tensors.items()}

    found = signatures[signature]
    return {"inputs": specs(found.inputs), "outputs": specs(found.outputs)}


class _Signature:
    """One signature of a loaded SavedModel; keeps the loaded object (its variables) alive."""

    def __init__(self, path: str, name: str):
        self.loaded = tf.saved_model.load(path)
        self.function = self.loaded.signatures[name]

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        outputs = self.function(**{key: tf.constant(value) for key, value in inputs.items()})
        return {key: value.numpy() for key, value in outputs.items()}


class SavedModelSignatureHandler(ModelHandler):
    """Loads signature ``signature`` of the SavedModel at ``path`` (one copy per worker process).

    Args:
        path: the SavedModel's version directory (``<export>/<model>/<version>``).
        signature: the signature called.
        **batching: ``ModelHandler``'s batching arguments (``max_batch_size``,
            ``element_size_fn``, ...).
    """

    def __init__(self, path: str | os.PathLike, signature: str, **batching):
        super().__init__(**batching)
        self.path = os.fspath(path)
        self.signature = signature
        self.spec = signature_spec(self.path, signature)

    def load_model(self) -> _Signature:
        return _Signature(self.path, self.signature)

    def get_num_bytes(self, batch) -> int:
        return sum(np.asarray(example).nbytes for example in batch)

    def get_metrics_namespace(self) -> str:
        return "dns_tf"


class FeaturesModelHandler(SavedModelSignatureHandler):
    """Frames of videos ``[T, S, S, 3]`` uint8 -> region features ``[T, R, D]`` float32.

    Args:
        path: a ``dns_features`` SavedModel.
        batch_size: frames per signature call.
        videos_per_inference: videos gathered into one RunInference batch.
    """

    def __init__(self, path: str | os.PathLike, batch_size: int = 32,
                 videos_per_inference: int = 8):
        # Batches count videos: BatchElements' element sizes (frames) emit empty batches when
        # one video has more frames than the current target (Beam 2.77).
        super().__init__(path, "features", max_batch_size=videos_per_inference)
        self.batch_size = int(batch_size)
        shape, _ = self.spec["inputs"]["frames"]
        self.frame_size = shape[1]
        self.dims = self.spec["outputs"]["features"][0][-1]

    def run_inference(self, batch, model, inference_args=None):
        for frames in batch:
            if frames.shape[1:] != (self.frame_size, self.frame_size, 3):
                raise ValueError(f"{self.path} takes frames [T, {self.frame_size}, "
                                 f"{self.frame_size}, 3], got {frames.shape}")
        frames = np.concatenate(batch)
        outputs = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start:start + self.batch_size]
            padded = np.zeros((self.batch_size, *chunk.shape[1:]), np.uint8)
            padded[:len(chunk)] = chunk
            outputs.append(model(frames=padded)["features"][:len(chunk)])
        return np.split(np.concatenate(outputs), np.cumsum([len(f) for f in batch])[:-1])


class IndexModelHandler(SavedModelSignatureHandler):
    """Region features ``[T, R, D]`` -> ``{"coarse", "fine", "selector"}`` (see the module
    docstring): one padded batch per call, each video's fine representation cut to its length.

    Args:
        path: a ``dns`` SavedModel.
        batch_size: videos per signature call.
    """

    def __init__(self, path: str | os.PathLike, batch_size: int = 16):
        super().__init__(path, "index", max_batch_size=batch_size)
        self.dims = self.spec["inputs"]["features"][0][-1]

    def run_inference(self, batch, model, inference_args=None):
        padded, mask = padded_batch_from_arrays(batch)
        lengths = mask.sum(axis=1).astype(np.int32)
        outputs = model(features=padded, lengths=lengths)
        return [{"coarse": outputs["coarse"][row], "fine": outputs["fine"][row, :length],
                 "selector": float(outputs["selector"][row])}
                for row, length in enumerate(lengths)]
