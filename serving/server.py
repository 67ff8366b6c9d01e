"""An embedded server speaking TF Serving's gRPC API over the same SavedModel layout and config.

It implements ``tensorflow.serving.PredictionService`` (``Predict``, ``GetModelMetadata``) and
``tensorflow.serving.ModelService`` (``GetModelStatus``) with the stock protos of the
``tensorflow-serving-api`` package, so any TF Serving client (``PredictionServiceStub``, ...) talks
to it unchanged. ``Classify``, ``Regress``, ``MultiInference`` and ``HandleReloadConfigRequest``
answer ``UNIMPLEMENTED``.

Requests run concurrently on a thread pool (TensorFlow releases the GIL while a signature runs).
Every bad request is answered with a status code and a message, never a crash:

=============================================  =====================
unknown model, or unknown version              NOT_FOUND
unknown version label                          INVALID_ARGUMENT
unknown signature                              FAILED_PRECONDITION (as TF Serving)
missing/extra input, wrong dtype or shape      INVALID_ARGUMENT
NaN or Inf in a floating-point input           INVALID_ARGUMENT (our policy)
request larger than ``max_request_bytes``      RESOURCE_EXHAUSTED
an input decoding to more than that, or        RESOURCE_EXHAUSTED (checked on the declared
declaring more than ``max_input_elements``     shape, before anything is allocated)
inputs of a batched signature (every input     INVALID_ARGUMENT (as TF Serving's batching)
``[None, ...]``) with different batch sizes
the model failing while it runs                TensorFlow's code (INVALID_ARGUMENT for a failed
                                               assertion), INTERNAL for anything else
=============================================  =====================

Example:

    with ModelServer("models.config") as server:
        channel = grpc.insecure_channel(f"localhost:{server.port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, status_pb2)
from tensorflow_serving.config import model_server_config_pb2

from serving.config import ServeConfig, check_server_settings
from serving.model_config import models_config, read_model_server_config, resolve_servable_models
from serving.servables import DEFAULT_SIGNATURE, SERVE_TAGS, LoadedVersion, ModelRepository
from serving.status import ServingError
from serving.tensors import InputLimits
from serving.tls import read_ssl_config, server_credentials

SIGNATURE_DEF_FIELD = "signature_def"

logger = logging.getLogger(__name__)
Response = TypeVar("Response")


class _InFlight:
    """Counts the requests being handled, so that a shutdown knows whether any outlived its grace."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0

    def __enter__(self) -> None:
        with self._lock:
            self.count += 1

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            self.count -= 1


def _answer(context: grpc.ServicerContext, method: str, handle: Callable[[], Response],
            in_flight: _InFlight) -> Response:
    """Runs ``handle``; any failure becomes the request's status instead of escaping the worker."""
    try:
        with in_flight:
            return handle()
    except ServingError as error:
        logger.debug("%s failed: %s %s", method, error.code.name, error.message)
        context.abort(error.code, error.message)
    except Exception as error:  # a server bug: log it whole, answer INTERNAL, keep serving
        logger.exception("%s failed", method)
        context.abort(grpc.StatusCode.INTERNAL, f"{method} failed: {type(error).__name__}: {error}")


def _require_model_spec(request) -> model_pb2.ModelSpec:
    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    return request.model_spec


def _unimplemented(context: grpc.ServicerContext, method: str) -> None:
    context.abort(grpc.StatusCode.UNIMPLEMENTED,
                  f"{method} is not implemented by the embedded dns-tf server; use Predict")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService`` over a ``ModelRepository``."""

    def __init__(self, repository: ModelRepository, limits: InputLimits, in_flight: _InFlight):
        self._repository = repository
        self._limits = limits
        self._in_flight = in_flight

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        def handle():
            model_spec = _require_model_spec(request)
            loaded = self._repository.lookup(model_spec)
            outputs = loaded.predict(model_spec.signature_name, request.inputs,
                                     list(request.output_filter), self._limits)
            response = predict_pb2.PredictResponse()
            _fill_model_spec(response.model_spec, loaded)
            response.model_spec.signature_name = model_spec.signature_name or DEFAULT_SIGNATURE
            for name, tensor in outputs.items():
                response.outputs[name].CopyFrom(tensor)
            return response
        return _answer(context, "Predict", handle, self._in_flight)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        def handle():
            model_spec = _require_model_spec(request)
            if not request.metadata_field:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != SIGNATURE_DEF_FIELD:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"Metadata field {field} is not supported")
            loaded = self._repository.lookup(model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            _fill_model_spec(response.model_spec, loaded)
            response.metadata[SIGNATURE_DEF_FIELD].Pack(loaded.signature_defs)
            return response
        return _answer(context, "GetModelMetadata", handle, self._in_flight)

    def Classify(self, request, context):
        _unimplemented(context, "Classify")

    def Regress(self, request, context):
        _unimplemented(context, "Regress")

    def MultiInference(self, request, context):
        _unimplemented(context, "MultiInference")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: every loaded version reports AVAILABLE."""

    def __init__(self, repository: ModelRepository, in_flight: _InFlight):
        self._repository = repository
        self._in_flight = in_flight

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                       context) -> get_model_status_pb2.GetModelStatusResponse:
        def handle():
            model_spec = _require_model_spec(request)
            versions = self._repository.versions(model_spec.name)
            which = model_spec.WhichOneof("version_choice")
            if which == "version":
                if model_spec.version.value not in versions:
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version "
                                       f"{model_spec.version.value} of model {model_spec.name}")
                versions = [model_spec.version.value]
            elif not versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {model_spec.name}")
            elif which == "version_label":
                versions = [self._repository.lookup(model_spec).version]
            response = get_model_status_pb2.GetModelStatusResponse()
            for version in versions:
                response.model_version_status.add(
                    version=version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE,
                    status=status_pb2.StatusProto())
            return response
        return _answer(context, "GetModelStatus", handle, self._in_flight)

    def HandleReloadConfigRequest(self, request, context):
        _unimplemented(context, "HandleReloadConfigRequest")


def _fill_model_spec(model_spec: model_pb2.ModelSpec, loaded: LoadedVersion) -> None:
    model_spec.name = loaded.name
    model_spec.version.value = loaded.version


def _as_config(models) -> model_server_config_pb2.ModelServerConfig:
    if isinstance(models, model_server_config_pb2.ModelServerConfig):
        return models
    if isinstance(models, Mapping):
        return models_config(models)
    return read_model_server_config(models)


class ModelServer:
    """TF Serving's gRPC API for the models of a ``models.config``, in this process.

    Args:
        models: a ``models.config`` path, a ``ModelServerConfig``, or ``{name: base_path}`` (newest
            version of each).
        port: the port to listen on, 0-65535; 0 picks a free one (``start`` returns it).
        host: the address to listen on; "0.0.0.0" for every interface.
        ssl_config: an ``SSLConfig`` text proto path or message (:mod:`serving.tls`): serve
            over TLS; None serves plaintext.
        max_workers: threads answering requests (TF Serving's default: 4 per CPU).
        max_request_bytes: the largest request accepted, and the most bytes one input may decode
            to; beyond it requests fail with RESOURCE_EXHAUSTED.
        max_input_elements: the most elements one input may declare; beyond it RESOURCE_EXHAUSTED.
        saved_model_tags: the MetaGraph tags to load.
    """

    def __init__(self, models: str | os.PathLike | model_server_config_pb2.ModelServerConfig
                 | Mapping[str, str | os.PathLike], *, port: int = 0, host: str = ServeConfig.host,
                 ssl_config: str | os.PathLike | Message | None = None,
                 max_workers: int | None = None, max_request_bytes: int = ServeConfig.max_request_bytes,
                 max_input_elements: int = ServeConfig.max_input_elements,
                 saved_model_tags: Sequence[str] = SERVE_TAGS):
        check_server_settings(port, max_request_bytes, max_input_elements)
        self._config = _as_config(models)
        self._ssl_config = (read_ssl_config(ssl_config) if isinstance(ssl_config, (str, os.PathLike))
                            else ssl_config)
        self._address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        self._max_workers = max_workers or 4 * (os.cpu_count() or 1)
        self._max_request_bytes = max_request_bytes
        self._limits = InputLimits(max_request_bytes, max_input_elements)
        self._tags = tuple(saved_model_tags)
        self._in_flight = _InFlight()
        self._server: grpc.Server | None = None
        self.repository: ModelRepository | None = None
        self.port: int | None = None

    def start(self) -> int:
        """Loads every configured version, then listens; returns the port.

        Raises:
            ValueError, FileNotFoundError: a bad config or a missing model directory.
            RuntimeError: a SavedModel that cannot be loaded, or an address that cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self.repository = ModelRepository.load(resolve_servable_models(self._config), self._tags)
        server = grpc.server(
            futures.ThreadPoolExecutor(self._max_workers, thread_name_prefix="dns-tf-serve"),
            options=[("grpc.max_receive_message_length", self._max_request_bytes),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.repository, self._limits, self._in_flight), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.repository, self._in_flight), server)
        try:
            port = (server.add_secure_port(self._address, server_credentials(self._ssl_config))
                    if self._ssl_config is not None else server.add_insecure_port(self._address))
        except RuntimeError as error:
            raise RuntimeError(f"cannot listen on {self._address}: {error}") from error
        if port == 0:
            raise RuntimeError(f"cannot listen on {self._address}")
        server.start()
        self._server, self.port = server, port
        logger.info("serving %s on port %d%s", ", ".join(
            f"{name} {self.repository.versions(name)}" for name in self.repository.model_names), port,
            " over TLS" if self._ssl_config is not None else "")
        return port

    @property
    def requests_in_flight(self) -> int:
        """Requests being handled now (after ``stop``: those still running past the grace)."""
        return self._in_flight.count

    def stop(self, grace: float | None = ServeConfig.shutdown_grace_seconds) -> None:
        """Stops accepting requests, lets those in flight finish for ``grace`` seconds, then returns.

        ``grace=None`` cancels in-flight requests at once. Requests still running then are
        answered CANCELLED, but their worker threads finish the model run they are in
        (``requests_in_flight`` counts them).
        """
        if self._server is None:
            return
        self._server.stop(grace).wait()
        self._server = None

    def __enter__(self) -> "ModelServer":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
