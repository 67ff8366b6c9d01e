"""Loaded SavedModel versions, and finding the one a request's ``ModelSpec`` names.

Lookups fail with the status codes and messages of ``tensorflow_model_server``, so a client written
against TF Serving handles our errors unchanged:

* unknown model or version: ``NOT_FOUND`` ("Servable not found for request: Latest(name)");
* unknown version label: ``INVALID_ARGUMENT`` ("Unrecognized servable version label: ...");
* unknown signature: ``FAILED_PRECONDITION`` ('Serving signature key "x" not found.').
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from serving.model_config import ServableModel
from serving.status import ServingError
from serving.tensors import InputLimits, decode_inputs, encode_outputs

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
SERVE_TAGS = (tf.saved_model.SERVING,)

logger = logging.getLogger(__name__)


def read_signature_defs(export_dir: pathlib.Path,
                        tags: Sequence[str] = SERVE_TAGS) -> get_model_metadata_pb2.SignatureDefMap:
    """The SignatureDefs of the MetaGraph tagged ``tags`` in the SavedModel at ``export_dir``."""
    saved_model = saved_model_pb2.SavedModel()
    binary = export_dir / "saved_model.pb"
    if binary.is_file():
        saved_model.ParseFromString(binary.read_bytes())
    else:
        text_format.Parse((export_dir / "saved_model.pbtxt").read_text(encoding="utf-8"), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            signature_defs = get_model_metadata_pb2.SignatureDefMap()
            for name, signature_def in meta_graph.signature_def.items():
                signature_defs.signature_def[name].CopyFrom(signature_def)
            return signature_defs
    found = [list(meta_graph.meta_info_def.tags) for meta_graph in saved_model.meta_graphs]
    raise ValueError(f"{export_dir}: no MetaGraph tagged {list(tags)}; the SavedModel has {found}")


@dataclasses.dataclass(frozen=True)
class LoadedVersion:
    """One version of a model, loaded and ready to run.

    Attributes:
        name: the model name.
        version: the version number.
        path: the SavedModel directory.
        saved_model: the object ``tf.saved_model.load`` returned (owns the variables).
        signature_defs: the SignatureDefs, as ``GetModelMetadata`` reports them.
    """

    name: str
    version: int
    path: pathlib.Path
    saved_model: Any
    signature_defs: get_model_metadata_pb2.SignatureDefMap

    def signature(self, signature_name: str) -> tf.types.experimental.ConcreteFunction:
        """The signature ``signature_name`` ("" means ``serving_default``)."""
        signature_name = signature_name or DEFAULT_SIGNATURE
        try:
            return self.saved_model.signatures[signature_name]
        except KeyError:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{signature_name}" not found.') from None

    def predict(self, signature_name: str, inputs: Mapping[str, tensor_pb2.TensorProto],
                output_filter: Sequence[str], limits: InputLimits) -> dict[str, tensor_pb2.TensorProto]:
        """Runs a signature on request tensors; the heart of ``Predict``.

        Args:
            signature_name: the signature to run ("" means ``serving_default``).
            inputs: the request's ``inputs`` map, exactly the signature's inputs.
            output_filter: the outputs to return; empty means all.
            limits: what one input may declare and decode to.

        Returns:
            The requested outputs as ``TensorProto``s.
        """
        function = self.signature(signature_name)
        output_names = _select_outputs(function.structured_outputs.keys(), output_filter)
        _, input_specs = function.structured_input_signature
        arrays = decode_inputs(inputs, input_specs, limits)
        try:
            outputs = function(**{name: tf.constant(array) for name, array in arrays.items()})
        except tf.errors.OpError as error:
            raise ServingError.from_tensorflow(error) from error
        except Exception as error:  # a model bug must answer the request, not kill the worker
            raise ServingError(
                grpc.StatusCode.INTERNAL,
                f"model {self.name} version {self.version} signature "
                f"{signature_name or DEFAULT_SIGNATURE} failed: {type(error).__name__}: {error}") from error
        return encode_outputs({name: outputs[name] for name in output_names})


def _select_outputs(available: Iterable[str], output_filter: Sequence[str]) -> list[str]:
    available = sorted(available)
    if not output_filter:
        return available
    seen = set()
    for alias in output_filter:
        if alias not in available:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output tensor alias not found in signature: {alias} Outputs expected "
                               f"to be in the set {{{','.join(available)}}}.")
        if alias in seen:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return list(output_filter)


def load_version(name: str, version: int, path: pathlib.Path,
                 tags: Sequence[str] = SERVE_TAGS) -> LoadedVersion:
    """Loads one SavedModel version; errors name the model, version and directory."""
    try:
        signature_defs = read_signature_defs(path, tags)
        saved_model = tf.saved_model.load(str(path), tags=list(tags))
    except Exception as error:
        raise RuntimeError(f"cannot load model {name!r} version {version} from {path}: "
                           f"{type(error).__name__}: {error}") from error
    return LoadedVersion(name, version, path, saved_model, signature_defs)


def _servable_request(model_spec: model_pb2.ModelSpec) -> str:
    """How TF Serving prints the servable a request asked for."""
    if model_spec.HasField("version"):
        return f"Specific({model_spec.name}, {model_spec.version.value})"
    return f"Latest({model_spec.name})"


class ModelRepository:
    """The loaded versions of every served model; immutable once loaded, so safe across threads.

    Args:
        versions: model name → version → loaded version.
        version_labels: model name → label → version.
    """

    def __init__(self, versions: Mapping[str, Mapping[int, LoadedVersion]],
                 version_labels: Mapping[str, Mapping[str, int]] | None = None):
        self._versions = {name: dict(sorted(by_version.items())) for name, by_version in versions.items()}
        self._labels = {name: dict(labels) for name, labels in (version_labels or {}).items()}

    @classmethod
    def load(cls, models: Iterable[ServableModel], tags: Sequence[str] = SERVE_TAGS) -> "ModelRepository":
        """Loads every version of ``models``; a directory listed twice is loaded once."""
        loaded_by_path: dict[pathlib.Path, LoadedVersion] = {}
        versions: dict[str, dict[int, LoadedVersion]] = {}
        labels = {}
        for model in models:
            versions[model.name] = {}
            labels[model.name] = model.version_labels
            for version in model.versions:
                path = model.version_path(version).resolve()
                if path not in loaded_by_path:
                    logger.info("loading model %s version %d from %s", model.name, version, path)
                    loaded_by_path[path] = load_version(model.name, version, path, tags)
                versions[model.name][version] = dataclasses.replace(
                    loaded_by_path[path], name=model.name, version=version)
        return cls(versions, labels)

    @property
    def model_names(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> list[int]:
        """The served versions of model ``name``, ascending (empty if unknown)."""
        return list(self._versions.get(name, {}))

    def lookup(self, model_spec: model_pb2.ModelSpec) -> LoadedVersion:
        """The version ``model_spec`` asks for: its ``version``, its ``version_label``, or the newest."""
        by_version = self._versions.get(model_spec.name)
        if not by_version:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: {_servable_request(model_spec)}")
        which = model_spec.WhichOneof("version_choice")
        if which == "version_label":
            label = model_spec.version_label
            if label not in self._labels.get(model_spec.name, {}):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {label}")
            return by_version[self._labels[model_spec.name][label]]
        if which == "version":
            try:
                return by_version[model_spec.version.value]
            except KeyError:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: {_servable_request(model_spec)}") from None
        return by_version[max(by_version)]
