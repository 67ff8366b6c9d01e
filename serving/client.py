"""Clients of the exported DnS models over TF Serving's gRPC API (stock ``tensorflow_serving`` stubs).

:class:`ServingClient` is one channel to a server (``tensorflow_model_server`` or ``dns-tf serve``)
with what a production caller needs around ``Predict``: a deadline per attempt, retries with
exponential backoff on UNAVAILABLE only (a server restarting, a connection refused), and one
:class:`ServingRequestError` naming the server, model, signature and status for everything else.
On top of it:

- :class:`RemoteBackend`: the :class:`dns_tf.retrieval.Backend` interface over the ``dns`` model,
  so ``DnSRetriever(index, RemoteBackend("host:8500"))`` searches a local :class:`VideoIndex`
  (coarse retrieval in process, ScaNN) with indexing, selector and fine re-ranking on the server;
- :class:`RemoteFeatureExtractor`: uint8 frames -> region features over ``dns_features``;
- :class:`RemoteTeacher`: ViSiL similarities of video pairs over ``dns_teacher``.

The signatures they call are documented in :mod:`serving.export`.

Example:

    backend = RemoteBackend("localhost:8500", timeout=10.0)
    with VideoIndex.open("videos.idx", readonly=True) as index:
        ranking = DnSRetriever(index, backend).search(query_features)   # [T, 9, 512]
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from dns_tf.fine_representation import kind_of_dtype, stored_dtype
from dns_tf.data.padding import padded_batch_from_arrays
from dns_tf.retrieval import IndexedVideos
from serving.config import ClientConfig, ServeConfig
from serving.export import DNS_MODEL, FEATURES_MODEL, TEACHER_MODEL
from serving.resident_store import STORE_MODEL, ResidentStore
from serving.tls import channel_credentials

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
_SIGNATURE_DEF = "signature_def"


class ServingRequestError(RuntimeError):
    """A request the server did not answer successfully.

    Attributes:
        code: the final ``grpc.StatusCode``.
        details: the server's (or gRPC's) message.
        attempts: how many times the request was sent.
    """

    def __init__(self, message: str, code: grpc.StatusCode, details: str, attempts: int):
        super().__init__(message)
        self.code = code
        self.details = details
        self.attempts = attempts


def _lengths_of(mask: np.ndarray) -> np.ndarray:
    """Lengths ``[B]`` of a prefix frame mask ``[B, T]`` (real frames first, then padding)."""
    mask = np.asarray(mask) > 0
    lengths = mask.sum(axis=1)
    if not np.array_equal(mask, np.arange(mask.shape[1])[None] < lengths[:, None]):
        raise ValueError("frame masks must mark a prefix of each video (real frames, then padding)")
    if np.any(lengths < 1):
        raise ValueError(f"every video needs at least one frame; lengths {lengths.tolist()}")
    return lengths.astype(np.int32)


def _requests(lengths: Sequence[int], per_request: int, frame_elements: int,
              max_elements: int) -> list[slice]:
    """Consecutive slices of videos with ``lengths``, each at most ``per_request`` videos whose
    padded tensor (videos x longest x ``frame_elements``) stays within ``max_elements``: the
    server's per-input limit. A video over the limit alone goes alone (the server refuses it)."""
    slices, start, longest = [], 0, 0
    for stop, length in enumerate(lengths):
        longest_with = max(longest, int(length))
        if stop > start and (stop - start == per_request
                             or (stop - start + 1) * longest_with * frame_elements > max_elements):
            slices.append(slice(start, stop))
            start, longest_with = stop, int(length)
        longest = longest_with
    if len(lengths):
        slices.append(slice(start, len(lengths)))
    return slices


class ServingClient:
    """``Predict`` and ``GetModelMetadata`` against one TF Serving endpoint.

    Args:
        target: ``"host:port"`` of the gRPC API.
        timeout: seconds each attempt may take (its gRPC deadline).
        retries: how many times a request failing with a retryable code (UNAVAILABLE) is resent.
        backoff: seconds before the first retry; doubling each time (with ±25% jitter, so
            clients that failed together do not come back together), at most ``max_backoff``.
        max_message_bytes: largest message sent or received.
        ssl_ca, ssl_cert, ssl_key: PEM files; any of them connects over TLS (``ssl_ca``: the CA
            of the server's certificate, else the system's roots; ``ssl_cert`` and ``ssl_key``: a
            client certificate for servers that verify clients). See :mod:`serving.tls`.
        channel: an existing ``grpc.Channel`` to use instead of opening one to ``target``.
    """

    def __init__(self, target: str, timeout: float = ClientConfig.timeout,
                 retries: int = ClientConfig.retries, backoff: float = ClientConfig.backoff,
                 max_backoff: float = ClientConfig.max_backoff, max_message_bytes: int = 1 << 30,
                 ssl_ca: str | None = None, ssl_cert: str | None = None, ssl_key: str | None = None,
                 channel: grpc.Channel | None = None):
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(f"need timeout > 0, retries >= 0, backoff >= 0; got {timeout}, "
                             f"{retries}, {backoff}")
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._owns_channel = channel is None
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        if channel is None and (ssl_ca or ssl_cert or ssl_key):
            channel = grpc.secure_channel(target, channel_credentials(ssl_ca, ssl_cert, ssl_key),
                                          options=options)
        self._channel = channel or grpc.insecure_channel(target, options=options)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "ServingClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _call(self, method, request, what: str):
        for attempt in range(1, self.retries + 2):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as error:
                code, details = error.code(), error.details() or ""
                if code in RETRYABLE_CODES and attempt <= self.retries:
                    delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                    time.sleep(delay * random.uniform(0.75, 1.25))
                    continue
                raise ServingRequestError(self._explain(what, code, details, attempt),
                                          code, details, attempt) from None

    def _explain(self, what: str, code: grpc.StatusCode, details: str, attempts: int) -> str:
        where = f"{what} at {self.target}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return (f"{where}: no answer within the {self.timeout:g} s deadline "
                    f"(DEADLINE_EXCEEDED); raise the timeout for large requests or a busy server")
        if code in RETRYABLE_CODES:
            return (f"{where}: server unavailable after {attempts} attempts ({code.name}: "
                    f"{details}); is it running and reachable?")
        return f"{where} failed: {code.name}: {details}"

    @staticmethod
    def _model_spec(spec, model_name: str, version: int | None, signature: str = "") -> None:
        spec.name = model_name
        if version is not None:
            spec.version.value = version
        if signature:
            spec.signature_name = signature

    def predict(self, model_name: str, signature: str, inputs: Mapping[str, np.ndarray],
                version: int | None = None, output_filter: Sequence[str] = ()
                ) -> tuple[dict[str, np.ndarray], int]:
        """Runs one signature; returns ``({output name: array}, version that answered)``.

        Raises:
            ServingRequestError: any status but OK, after retries where the code allows them.
        """
        request = predict_pb2.PredictRequest(output_filter=list(output_filter))
        self._model_spec(request.model_spec, model_name, version, signature)
        for name, array in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(np.ascontiguousarray(array)))
        response = self._call(self._stub.Predict, request,
                              f"model {model_name!r} signature {signature!r}")
        outputs = {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}
        return outputs, response.model_spec.version.value

    def signature_defs(self, model_name: str, version: int | None = None):
        """``(SignatureDefMap, version)`` of a served model (``GetModelMetadata``)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[_SIGNATURE_DEF])
        self._model_spec(request.model_spec, model_name, version)
        response = self._call(self._stub.GetModelMetadata, request,
                              f"metadata of model {model_name!r}")
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[_SIGNATURE_DEF].Unpack(signature_defs)
        return signature_defs, response.model_spec.version.value


class _RemoteModel:
    """A served model pinned to one version: the one asked for, else the newest at first contact.

    Pinning keeps every call of an object on the same networks even if the server rolls out a
    new version meanwhile (representations of two versions must never be compared).
    """

    def __init__(self, client: ServingClient | str, model_name: str, version: int | None,
                 **client_options):
        self._owns_client = not isinstance(client, ServingClient)
        self.client = ServingClient(client, **client_options) if self._owns_client else client
        self.model_name = model_name
        self._version = version
        self._signature_defs = None
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        """The served version this object talks to."""
        self._metadata()
        return self._version

    def _metadata(self):
        with self._lock:
            if self._signature_defs is None:
                self._signature_defs, self._version = self.client.signature_defs(
                    self.model_name, self._version)
            return self._signature_defs

    def signature(self, name: str):
        signature_defs = self._metadata().signature_def
        if name not in signature_defs:
            raise ValueError(f"model {self.model_name!r} version {self._version} at "
                             f"{self.client.target} has no signature {name!r} (has "
                             f"{sorted(signature_defs)}); was it exported by serving.export?")
        return signature_defs[name]

    def predict(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        outputs, _ = self.client.predict(self.model_name, signature, inputs, self.version)
        return outputs

    def close(self) -> None:
        """Closes the channel this object opened (a shared :class:`ServingClient` stays open)."""
        if self._owns_client:
            self.client.close()


class RemoteBackend(_RemoteModel):
    """The DnS networks of a served ``dns`` model, as a :class:`dns_tf.retrieval.Backend`.

    Args:
        target: ``"host:port"``, or a :class:`ServingClient` to share its channel.
        model_name: the served model (``dns``).
        version: the version to use; None pins the newest at first contact.
        timeout, retries: per-attempt deadline in seconds and retries on UNAVAILABLE
            (see :class:`ServingClient`; ignored when ``target`` is a client).
        client_options: other :class:`ServingClient` options (``ssl_ca``, ``ssl_cert``,
            ``ssl_key``, ...), when ``target`` is an address.
        videos_per_request: videos per ``index`` request, at most.
        targets_per_request: target videos per ``fine_similarity`` request, and candidates per
            resident-store ``rerank`` request, at most.
        parallel_requests: re-ranking requests in flight at once.
        max_input_elements: requests are cut so that no input tensor declares more elements
            than this (the server's ``--max_input_elements``).
        store_models: served resident stores (:mod:`serving.resident_store`) to look for an
            index's store in (one per shard); an index without one has its targets shipped.
    """

    def __init__(self, target: ServingClient | str, model_name: str = DNS_MODEL,
                 version: int | None = None, timeout: float = ClientConfig.timeout,
                 retries: int = ClientConfig.retries,
                 videos_per_request: int = 8, targets_per_request: int = 64,
                 parallel_requests: int = 4,
                 max_input_elements: int = ServeConfig.max_input_elements,
                 store_models: Sequence[str] = (STORE_MODEL,), **client_options):
        super().__init__(target, model_name, version, timeout=timeout, retries=retries,
                         **client_options)
        if min(videos_per_request, targets_per_request, parallel_requests, max_input_elements) < 1:
            raise ValueError("videos_per_request, targets_per_request, parallel_requests and "
                             "max_input_elements must be >= 1")
        self.max_input_elements = max_input_elements
        self.videos_per_request = videos_per_request
        self.targets_per_request = targets_per_request
        self.parallel_requests = parallel_requests
        self.store_models = tuple(store_models)
        self._stores: dict[str, ResidentStore | None] = {}

    @property
    def description(self) -> str:
        return f"model {self.model_name!r} version {self.version} at {self.client.target}"

    @functools.cached_property
    def fingerprints(self) -> dict[str, str]:
        """``{"coarse", "fine", "selector": weight fingerprint}`` of the served networks."""
        outputs = self.predict("model_identity", batch=np.zeros(1, np.int32))
        return {network: value[0].decode() for network, value in outputs.items()}

    @property
    def provenance(self) -> dict:
        """What an index built through this backend records about where its networks ran."""
        return {"served_model": {"server": self.client.target, "name": self.model_name,
                                 "version": self.version}}

    def store_for(self, index) -> ResidentStore | None:
        """The resident store found for ``index`` so far (None: none, or not looked for yet)."""
        with self._lock:
            return self._stores.get(index.uid)

    def _resident_store(self, index, query: np.ndarray) -> ResidentStore | None:
        """The served store holding ``index`` (None: none does, targets are shipped)."""
        with self._lock:
            if index.uid in self._stores:
                return self._stores[index.uid]
        found = None
        for name in self.store_models:
            model = _RemoteModel(self.client, name, None)
            try:
                model.signature("rerank")
            except (ServingRequestError, ValueError):  # not served, or not a store
                continue
            store = ResidentStore(model, index.uid, self.fingerprints["fine"],
                                  self.targets_per_request, self.parallel_requests)
            if store.held_index(query) == index.uid:
                found = store
                break
        with self._lock:
            self._stores[index.uid] = found
        return found

    def fine_scores_in_index(self, query_fine: np.ndarray, index,
                             video_ids: Sequence[str]) -> np.ndarray:
        """Fine similarities ``[N]`` of a stored query with videos of ``index``: by row key from
        the index's resident store when the server has one (8 bytes per candidate), else, and
        for videos added since the store was exported, by shipping their representations."""
        query = self._stored(query_fine, "query")
        store = self._resident_store(index, query) if len(video_ids) else None
        if store is None:
            return self.fine_similarity(query, [r.fine for r in index.get_many(video_ids)])
        scores, resident = store.scores(query, index.keys(video_ids))
        missing = np.flatnonzero(~resident)
        if len(missing):
            records = index.get_many([video_ids[i] for i in missing])
            scores[missing] = self.fine_similarity(query, [r.fine for r in records])
        return scores

    @functools.cached_property
    def fine_kind(self) -> str:
        """``"bits"`` (packed uint8 codes) or ``"float16"``, from the ``index`` signature."""
        dtype = self.signature("index").outputs["fine"].dtype
        return kind_of_dtype(tf.dtypes.as_dtype(dtype).as_numpy_dtype)

    @functools.cached_property
    def fine_dtype(self) -> np.dtype:
        return stored_dtype(self.fine_kind)

    def _stored(self, fine, what: str) -> np.ndarray:
        """A stored fine representation ``[T, R, C]`` in the wire dtype, checked."""
        fine = np.asarray(fine)
        bits = self.fine_kind == "bits"
        if fine.ndim != 3 or not len(fine) or (fine.dtype != np.uint8 if bits else
                                               not np.issubdtype(fine.dtype, np.floating)):
            expected = "packed codes uint8" if bits else "float features"
            raise ValueError(f"{what} must be a stored fine representation [T >= 1, R, C] "
                             f"({expected}), got {fine.dtype} {fine.shape}")
        return fine.astype(self.fine_dtype, copy=False)

    def index(self, videos: np.ndarray, mask: np.ndarray) -> IndexedVideos:
        """Indexes region features ``[B, T, R, D]`` with prefix frame masks ``[B, T]``."""
        videos = np.asarray(videos, np.float32)
        if videos.ndim != 4 or np.shape(mask) != videos.shape[:2]:
            raise ValueError(f"expected videos [B, T, R, D] and a mask [B, T], got "
                             f"{videos.shape} and {np.shape(mask)}")
        lengths = _lengths_of(mask)
        coarse, fine, selector = [], [], []
        for request in _requests(lengths, self.videos_per_request, int(np.prod(videos.shape[2:])),
                                 self.max_input_elements):
            chunk = lengths[request]
            outputs = self.predict("index", features=videos[request, :chunk.max()], lengths=chunk)
            coarse.append(outputs["coarse"])
            fine += [video[:length] for video, length in zip(outputs["fine"], chunk)]
            selector.append(outputs["selector"])
        return IndexedVideos(coarse=np.concatenate(coarse), fine=fine,
                             selector=np.concatenate(selector))

    def fine_similarity(self, query_fine: np.ndarray,
                        target_fines: Sequence[np.ndarray]) -> np.ndarray:
        """Fine similarities ``[N]`` of one stored query representation to stored targets."""
        scores = np.empty(len(target_fines), np.float32)
        if not len(target_fines):
            return scores
        query = self._stored(query_fine, "query")[None]
        target_fines = [self._stored(target, f"target {i}") for i, target in enumerate(target_fines)]
        # Sorting by length keeps padding, and so wasted bytes and work, small.
        order = np.argsort([len(t) for t in target_fines], kind="stable")
        chunks = [order[request] for request in _requests(
            [len(target_fines[i]) for i in order], self.targets_per_request,
            int(np.prod(query.shape[2:])), self.max_input_elements)]

        def score(chosen: np.ndarray) -> None:
            lengths = np.array([len(target_fines[i]) for i in chosen], np.int32)
            targets = np.zeros((1, len(chosen), lengths.max(), *query.shape[2:]), self.fine_dtype)
            for row, i in enumerate(chosen):
                targets[0, row, :lengths[row]] = target_fines[i]
            outputs = self.predict("fine_similarity", query=query,
                                   query_length=np.array([len(query[0])], np.int32),
                                   targets=targets, target_lengths=lengths[None])
            # A batching server may pad the target axis; the first len(chosen) are ours.
            scores[chosen] = outputs["similarity"][0, :len(chosen)]

        if len(chunks) == 1:
            score(chunks[0])
        else:
            with futures.ThreadPoolExecutor(min(self.parallel_requests, len(chunks))) as pool:
                list(pool.map(score, chunks))  # list(): re-raises the first failure
        return scores

    def frame_to_frame(self, query_fine: np.ndarray,
                       target_fines: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The fine student's frame-to-frame matrices ``[Tq, Tt_i]`` of one stored query
        representation with stored targets (the served ``frame_to_frame`` signature), from which
        :mod:`dns_tf.localization` finds copied segments."""
        query = self._stored(query_fine, "query")[None]
        target_fines = [self._stored(target, f"target {i}") for i, target in enumerate(target_fines)]
        matrices = [None] * len(target_fines)
        for request in _requests([len(target) for target in target_fines],
                                 self.targets_per_request, int(np.prod(query.shape[2:])),
                                 self.max_input_elements):
            start, chosen = request.start, target_fines[request]
            lengths = np.array([len(target) for target in chosen], np.int32)
            targets = np.zeros((1, len(chosen), lengths.max(), *query.shape[2:]), self.fine_dtype)
            for row, target in enumerate(chosen):
                targets[0, row, :len(target)] = target
            outputs = self.predict("frame_to_frame", query=query,
                                   query_length=np.array([len(query[0])], np.int32),
                                   targets=targets, target_lengths=lengths[None])
            for row, length in enumerate(lengths):
                matrices[start + row] = outputs["similarity"][0, row, :len(query[0]), :length]
        return matrices

    def selector_scores(self, mlp_input: np.ndarray) -> np.ndarray:
        """Selector scores ``[N]`` of ``[N, 3]`` rows (query score, target score, coarse sim)."""
        mlp_input = np.asarray(mlp_input, np.float32)
        outputs = self.predict("selector_scores", mlp_input=mlp_input[None])
        return outputs["score"][0, :len(mlp_input)]

    def coarse_similarity(self, query: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Coarse similarities ``[N]`` of one coarse vector ``[Dc]`` to ``[N, Dc]``."""
        targets = np.asarray(targets, np.float32)
        outputs = self.predict("coarse_similarity", query=np.asarray(query, np.float32)[None],
                               targets=targets[None])
        return outputs["similarity"][0, :len(targets)]


class RemoteFeatureExtractor(_RemoteModel):
    """Region features of uint8 frames from a served ``dns_features`` model.

    Args:
        target, model_name, version, timeout, retries, client_options: as :class:`RemoteBackend`.
        frames_per_request: frames sent per request (the server runs them as one CNN batch).
    """

    def __init__(self, target: ServingClient | str, model_name: str = FEATURES_MODEL,
                 version: int | None = None, timeout: float = ClientConfig.timeout,
                 retries: int = ClientConfig.retries,
                 frames_per_request: int = 32, **client_options):
        super().__init__(target, model_name, version, timeout=timeout, retries=retries,
                         **client_options)
        self.frames_per_request = frames_per_request

    @property
    def frame_size(self) -> int:
        """The side of the square frames the model takes."""
        return self.signature("features").inputs["frames"].tensor_shape.dim[1].size

    def extract(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB frames ``[T, S, S, 3]`` -> region features ``[T, R, D]`` float32."""
        frames = np.asarray(frames)
        size = self.frame_size
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (size, size, 3) \
                or not len(frames):
            raise ValueError(f"frames must be uint8 [T >= 1, {size}, {size}, 3] for model "
                             f"{self.model_name!r}, got {frames.dtype} {frames.shape}")
        return np.concatenate([
            self.predict("features", frames=frames[start:start + self.frames_per_request])["features"]
            for start in range(0, len(frames), self.frames_per_request)])


class RemoteTeacher(_RemoteModel):
    """ViSiL similarities of video pairs from a served ``dns_teacher`` model (pair labelling).

    Args:
        target, model_name, version, timeout, retries, client_options: as :class:`RemoteBackend`.
        pairs_per_request: pairs sent per request.
    """

    def __init__(self, target: ServingClient | str, model_name: str = TEACHER_MODEL,
                 version: int | None = None, timeout: float = ClientConfig.timeout,
                 retries: int = ClientConfig.retries,
                 pairs_per_request: int = 8, **client_options):
        super().__init__(target, model_name, version, timeout=timeout, retries=retries,
                         **client_options)
        self.pairs_per_request = pairs_per_request

    def similarity(self, queries: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> np.ndarray:
        """Similarities ``[P]`` of pairs ``(queries[i] [Tq, R, D], targets[i] [Tt, R, D])``."""
        if len(queries) != len(targets):
            raise ValueError(f"{len(queries)} queries but {len(targets)} targets: give pairs")
        scores = []
        for start in range(0, len(queries), self.pairs_per_request):
            stop = start + self.pairs_per_request
            query, query_mask = padded_batch_from_arrays(queries[start:stop])
            target, target_mask = padded_batch_from_arrays(targets[start:stop])
            outputs = self.predict("similarity", query=query,
                                   query_length=_lengths_of(query_mask), target=target,
                                   target_length=_lengths_of(target_mask))
            scores.append(outputs["similarity"])
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)
