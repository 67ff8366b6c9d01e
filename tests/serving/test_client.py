"""Serving the exported DnS models: stock TF Serving stubs, the DnS clients, retries, deadlines, and
``dns-tf search``, all against the embedded server started inside the tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from dns_tf.cli import main as cli_main
from dns_tf.data.feature_files import open_writer
from dns_tf.features.extractor import FeatureExtractor
from dns_tf.features.video import load_video
from dns_tf.index.store import VideoIndex
from dns_tf.retrieval import DnSRetriever, LocalBackend, SearchConfig
from export_fixtures import load_networks
from serving.client import (RemoteBackend, RemoteFeatureExtractor, RemoteTeacher, ServingClient,
                            ServingRequestError, _requests)
from serving.export import export_models
from serving.server import ModelServer
from tls_fixtures import self_signed, ssl_config
from videos import make_video

Code = grpc.StatusCode
pytestmark = pytest.mark.slow  # the tests share an export and a server (~10 s to set up)


@pytest.fixture(scope="module")
def networks(checkpoints):
    return load_networks(checkpoints, "coarse", "bin", "selector", "teacher")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, networks, checkpoints):
    extractor = FeatureExtractor.from_official(checkpoints / "resnet50_torchvision.npz",
                                               checkpoints / "pca_resnet50.npz", dims=512)
    return export_models(tmp_path_factory.mktemp("export"), networks["coarse"], networks["bin"],
                         networks["selector"], teacher=networks["teacher"], extractor=extractor)


@pytest.fixture(scope="module")
def server(exported):
    with ModelServer(exported.models_config, max_workers=8,
                     xla_cpu_compilation_enabled=True) as server:
        yield server


@pytest.fixture(scope="module")
def target(server):
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def stub(target):
    with grpc.insecure_channel(target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def local(networks):
    return LocalBackend(networks["coarse"], networks["bin"], networks["selector"])


@pytest.fixture()
def rng():
    return np.random.default_rng(0)


def random_videos(rng, lengths, dims=512):
    videos = rng.standard_normal((len(lengths), max(lengths), 9, dims)).astype(np.float32)
    mask = (np.arange(max(lengths))[None] < np.array(lengths)[:, None]).astype(np.float32)
    return videos * mask[:, :, None, None], mask


def request(signature, **inputs):
    message = predict_pb2.PredictRequest()
    message.model_spec.name = "dns"
    message.model_spec.signature_name = signature
    for name, value in inputs.items():
        message.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return message


def predict(stub, signature, **inputs):
    response = stub.Predict(request(signature, **inputs), timeout=60)
    return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}


def test_stock_stubs_get_the_in_process_numbers(stub, exported, networks, rng):
    in_process = tf.saved_model.load(str(exported.models["dns"])).signatures
    videos, mask = random_videos(rng, [8, 5, 6])
    lengths = mask.sum(1).astype(np.int32)
    calls = {
        "index": dict(features=videos, lengths=lengths),
        "selector_scores": dict(mlp_input=rng.random((1, 7, 3)).astype(np.float32)),
        "coarse_similarity": dict(query=rng.standard_normal((1, 128)).astype(np.float32),
                                  targets=rng.standard_normal((1, 4, 128)).astype(np.float32)),
    }
    indexed = predict(stub, "index", **calls["index"])
    calls["fine_similarity"] = dict(query=indexed["fine"][:1], query_length=lengths[:1],
                                    targets=indexed["fine"][None], target_lengths=lengths[None])
    for signature, inputs in calls.items():
        got = predict(stub, signature, **inputs)
        expected = in_process[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        assert sorted(got) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value.numpy(), err_msg=f"{signature}.{name}")
    # ...and those are the Keras networks' numbers.
    np.testing.assert_allclose(indexed["coarse"], networks["coarse"].index_video(videos, mask),
                               atol=1e-6)
    similarity = predict(stub, "fine_similarity", **calls["fine_similarity"])["similarity"]
    student = networks["bin"]
    alone = [student.calculate_video_similarity(student.index_video(videos[0]),
                                                student.index_video(video[:length]))[0, 0]
             for video, length in zip(videos, lengths)]
    np.testing.assert_allclose(similarity[0], alone, atol=1e-5)


def test_remote_backend_matches_local_backend(target, networks, rng):
    remote = RemoteBackend(target, videos_per_request=2, targets_per_request=3)
    local = LocalBackend(networks["coarse"], networks["bin"], networks["selector"], batch_size=3)
    assert remote.fine_kind == local.fine_kind == "bits" and remote.version == 1
    videos, mask = random_videos(rng, [8, 5, 6, 9, 4, 7, 8])
    got, expected = remote.index(videos, mask), local.index(videos, mask)
    np.testing.assert_allclose(got.coarse, expected.coarse, atol=1e-6)
    for remote_fine, local_fine in zip(got.fine, expected.fine, strict=True):
        np.testing.assert_array_equal(remote_fine, local_fine)
    # The server scores each video alone, as the authors index collections.
    alone = [local.index(video[None, :len(fine)], np.ones((1, len(fine)), np.float32)).selector[0]
             for video, fine in zip(videos, got.fine)]
    np.testing.assert_allclose(got.selector, alone, atol=1e-6)
    # 7 targets in 3 parallel requests of at most 3, sorted by length like LocalBackend's batches.
    np.testing.assert_allclose(remote.fine_similarity(got.fine[0], got.fine),
                               local.fine_similarity(expected.fine[0], expected.fine), atol=1e-5)
    mlp_input = rng.random((9, 3)).astype(np.float32)
    np.testing.assert_allclose(remote.selector_scores(mlp_input), local.selector_scores(mlp_input),
                               atol=1e-6)
    np.testing.assert_allclose(remote.coarse_similarity(got.coarse[0], got.coarse),
                               got.coarse @ got.coarse[0], atol=1e-6)
    assert remote.fine_similarity(got.fine[0], []).shape == (0,)


def test_remote_frame_to_frame_matrices_are_the_local_ones(target, local, rng):
    remote = RemoteBackend(target, targets_per_request=2)
    videos, mask = random_videos(rng, [8, 5, 6, 9, 4])
    fine = local.index(videos, mask).fine
    got = remote.frame_to_frame(fine[0], fine)
    expected = local.frame_to_frame(fine[0], fine)
    assert [matrix.shape for matrix in got] == [(8, len(video)) for video in fine]
    for remote_matrix, local_matrix in zip(got, expected, strict=True):
        np.testing.assert_allclose(remote_matrix, local_matrix, atol=1e-6)


@pytest.fixture(scope="module")
def video_index(tmp_path_factory, local):
    """40 random videos (4 to 12 frames) indexed one by one, and a query near-copied by four."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("index") / "videos.idx"
    with VideoIndex.create(str(path), coarse_dims=128, fine_kind="bits",
                           fine_shape_tail=(9, 512)) as index:
        base, _ = random_videos(rng, [12])
        for number in range(40):
            length = int(rng.integers(4, 13))
            video = rng.standard_normal((length, 9, 512)).astype(np.float32)
            if number % 10 == 0:  # near-duplicates of the query
                video = base[0, :length] + 0.1 * video
            indexed = local.index(video[None], np.ones((1, length), np.float32))
            index.add(f"v{number:02d}", indexed.coarse[0], indexed.fine[0], indexed.selector[0])
    return path, base[0]


@pytest.mark.parametrize("config", [SearchConfig(percentage=25, top=40),
                                    SearchConfig(mode="fine", top=10),
                                    SearchConfig(candidates=12, budget=4, top=12, segments=True)])
def test_dns_retriever_ranks_the_same_remotely_and_locally(target, local, video_index, config):
    path, query = video_index
    with VideoIndex.open(str(path), readonly=True) as index:
        remote = DnSRetriever(index, RemoteBackend(target), config).search(query)
        in_process = DnSRetriever(index, local, config).search(query)
    assert remote.ids == in_process.ids
    np.testing.assert_allclose(remote.scores, in_process.scores, atol=1e-5)
    if config.segments:  # localised from the served matrices as from the local ones
        for remote_hit, local_hit in zip(remote.hits, in_process.hits, strict=True):
            assert (remote_hit.segments is None) == (local_hit.segments is None)
            np.testing.assert_allclose([tuple(s) for s in remote_hit.segments or ()],
                                       [tuple(s) for s in local_hit.segments or ()], atol=1e-5)
        assert any(hit.segments for hit in remote.hits)
    assert remote.num_reranked == in_process.num_reranked == config.rerank_count(
        remote.num_candidates) > 0


class FakePredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Fails the first ``failures`` calls with ``code``, sleeps ``delay`` s, then answers."""

    def __init__(self, failures=0, code=Code.UNAVAILABLE, delay=0.0):
        self.failures, self.code, self.delay, self.calls = failures, code, delay, 0

    def Predict(self, request, context):
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(self.code, f"failure {self.calls}")
        time.sleep(self.delay)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 7
        response.outputs["score"].CopyFrom(tf.make_tensor_proto(np.array([[0.5]], np.float32)))
        return response


@pytest.fixture()
def fake_server():
    servers = []

    def start(servicer):
        server = grpc.server(futures.ThreadPoolExecutor(2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


def call(client):
    return client.predict("dns", "selector_scores", {"mlp_input": np.zeros((1, 1, 3), np.float32)})


def test_unavailable_is_retried_with_backoff(fake_server):
    service = FakePredictionService(failures=2)
    with ServingClient(fake_server(service), retries=3, backoff=0.05) as client:
        start = time.perf_counter()
        outputs, version = call(client)
    assert service.calls == 3 and version == 7 and outputs["score"].tolist() == [[0.5]]
    assert time.perf_counter() - start >= 0.05 * 0.75 + 0.1 * 0.75  # two backoffs waited

    service = FakePredictionService(failures=10)
    with ServingClient(fake_server(service), retries=2, backoff=0.01) as client, \
            pytest.raises(ServingRequestError, match="unavailable after 3 attempts") as error:
        call(client)
    assert service.calls == 3 and error.value.code == Code.UNAVAILABLE and error.value.attempts == 3


@pytest.mark.parametrize("code", [Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.INTERNAL,
                                  Code.RESOURCE_EXHAUSTED])
def test_other_failures_are_not_retried(fake_server, code):
    service = FakePredictionService(failures=1, code=code)
    target = fake_server(service)
    with ServingClient(target, retries=3, backoff=0.01) as client, \
            pytest.raises(ServingRequestError) as error:
        call(client)
    assert service.calls == 1 and error.value.code == code
    assert str(error.value) == (f"model 'dns' signature 'selector_scores' at {target} failed: "
                                f"{code.name}: failure 1")


def test_deadline_exceeded_is_a_clear_error(fake_server):
    service = FakePredictionService(delay=1.0)
    with ServingClient(fake_server(service), timeout=0.1, retries=3) as client, \
            pytest.raises(ServingRequestError, match=r"no answer within the 0.1 s deadline "
                                                     r"\(DEADLINE_EXCEEDED\)") as error:
        call(client)
    assert error.value.code == Code.DEADLINE_EXCEEDED and service.calls == 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_client_waits_for_a_server_that_starts_late(exported):
    port = free_port()
    late = ModelServer({"dns": exported.models["dns"].parent}, port=port)
    starter = threading.Timer(0.5, late.start)
    starter.start()
    try:
        backend = RemoteBackend(f"127.0.0.1:{port}", retries=8)
        scores = backend.selector_scores(np.full((2, 3), 0.5, np.float32))
        assert scores.shape == (2,) and backend.version == 1
    finally:
        starter.join()
        late.stop(None)


def test_server_keeps_serving_after_bad_requests(stub, target, rng):
    videos, mask = random_videos(rng, [6, 4])
    lengths = mask.sum(1).astype(np.int32)
    bad = [
        (request("index", features=videos, lengths=np.array([6, 0], np.int32)),
         Code.INVALID_ARGUMENT, "lengths must be >= 1"),
        (request("index", features=videos, lengths=np.array([6, 9], np.int32)),
         Code.INVALID_ARGUMENT, "lengths must be <= the frame axis"),
        (request("index", features=videos.astype(np.float64), lengths=lengths),
         Code.INVALID_ARGUMENT, "Expected input features to be float32"),
        (request("index", features=videos[..., :100], lengths=lengths),
         Code.INVALID_ARGUMENT, "to have shape"),
        (request("index", features=videos), Code.INVALID_ARGUMENT, "Missing but required: {lengths}"),
        (request("fine_similarity", query=np.zeros((1, 4, 9, 64), np.float16),
                 query_length=np.array([4], np.int32), targets=np.zeros((1, 1, 4, 9, 64), np.uint8),
                 target_lengths=np.array([[4]], np.int32)),
         Code.INVALID_ARGUMENT, "Expected input query to be uint8"),
        (request("rank"), Code.FAILED_PRECONDITION, 'signature key "rank" not found'),
        (request("index", features=videos, lengths=lengths[:1]), Code.INVALID_ARGUMENT,
         "need one batch size (0th dimension): features has 2, lengths has 1"),
        (request("index", features=videos, lengths=np.array([6, 4, 4], np.int32)),
         Code.INVALID_ARGUMENT, "features has 2, lengths has 3"),
        (request("fine_similarity", query=np.zeros((1, 4, 9, 64), np.uint8),
                 query_length=np.array([4], np.int32), targets=np.zeros((2, 1, 4, 9, 64), np.uint8),
                 target_lengths=np.array([[4], [4]], np.int32)),
         Code.INVALID_ARGUMENT, "query has 1, query_length has 1, target_lengths has 2, targets has 2"),
        (broadcast_request(), Code.RESOURCE_EXHAUSTED, "declares 73728000 elements, more than the "
                                                       "server's limit of 33554432 per input"),
    ]
    for message, code, details in bad:
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(message, timeout=30)
        assert error.value.code() == code and details in error.value.details(), details
    assert predict(stub, "index", features=videos, lengths=lengths)["coarse"].shape == (2, 128)
    backend = RemoteBackend(target)
    with pytest.raises(ValueError, match="prefix"):
        backend.index(videos, np.array([[1, 0, 1, 1, 1, 1], [1] * 6], np.float32))
    with pytest.raises(ValueError, match=r"target 1 must be a stored fine representation "
                                         r"\[T >= 1, R, C\] \(packed codes uint8\), got float32"):
        backend.fine_similarity(np.zeros((4, 9, 64), np.uint8),
                                [np.zeros((4, 9, 64), np.uint8), np.ones((4, 9, 512), np.float32)])


def broadcast_request():
    """The hostile request of issue 13: a few dozen bytes declaring 16,000 frames of features."""
    message = request("index", lengths=np.array([16_000], np.int32))
    features = message.inputs["features"]
    features.CopyFrom(tf.make_tensor_proto(np.float32(1.0)))
    for size in (1, 16_000, 9, 512):
        features.tensor_shape.dim.add().size = size
    assert message.ByteSize() < 100
    return message


def test_remote_backend_over_tls_matches_plaintext(exported, target, rng, tmp_path):
    cert, key = self_signed(tmp_path, "server")
    videos, mask = random_videos(rng, [5, 3])
    expected = RemoteBackend(target).index(videos, mask)
    with ModelServer({"dns": exported.models["dns"].parent}, ssl_config=ssl_config(cert, key)) as server:
        backend = RemoteBackend(f"localhost:{server.port}", ssl_ca=str(cert), retries=0)
        try:
            got = backend.index(videos, mask)
        finally:
            backend.close()
    np.testing.assert_array_equal(got.coarse, expected.coarse)
    np.testing.assert_array_equal(got.selector, expected.selector)
    for got_fine, expected_fine in zip(got.fine, expected.fine, strict=True):
        np.testing.assert_array_equal(got_fine, expected_fine)


def test_requests_stay_within_the_servers_element_limit(target, rng):
    assert _requests([5, 3, 7, 2], 8, 10, 100) == [slice(0, 2), slice(2, 3), slice(3, 4)]
    assert _requests([5, 3, 7, 2], 2, 10, 10**9) == [slice(0, 2), slice(2, 4)]
    assert _requests([50, 3], 8, 10, 100) == [slice(0, 1), slice(1, 2)]  # alone, over the limit
    videos, mask = random_videos(rng, [6, 4, 9, 2])
    whole = RemoteBackend(target).index(videos, mask)
    limit = 2 * 9 * 9 * 512  # two 9-frame videos of [9, 512] regions
    cut = RemoteBackend(target, max_input_elements=limit).index(videos, mask)
    np.testing.assert_allclose(cut.coarse, whole.coarse, atol=1e-5)  # padding differs per request
    np.testing.assert_allclose(cut.selector, whole.selector, atol=1e-5)
    backend = RemoteBackend(target, max_input_elements=2 * 9 * 9 * 64)
    np.testing.assert_allclose(backend.fine_similarity(whole.fine[0], whole.fine),
                               RemoteBackend(target).fine_similarity(whole.fine[0], whole.fine),
                               atol=1e-6)


def test_remote_feature_extractor_and_teacher(target, networks, parity):
    extractor = RemoteFeatureExtractor(target, frames_per_request=1)
    assert extractor.frame_size == 224
    np.testing.assert_allclose(extractor.extract(parity["fe.frames"]), parity["fe.regions_pca512"],
                               atol=1e-4)
    with pytest.raises(ValueError, match=r"uint8 \[T >= 1, 224, 224, 3\]"):
        extractor.extract(parity["fe.frames_256x320"])
    teacher = RemoteTeacher(target)
    query, other = parity["teacher.query_features"], parity["teacher.target_features"]
    scores = teacher.similarity([query, other], [other, other])
    np.testing.assert_allclose(scores[0], parity["teacher.similarity"][0], atol=1e-5)
    teacher = networks["teacher"]
    np.testing.assert_allclose(scores[1], teacher.calculate_video_similarity(
        teacher.index_video(other), teacher.index_video(other))[0, 0], atol=1e-5)


def test_search_command(tmp_path, exported, target, local, capsys):
    """Videos -> features (server) -> a local index; queries by --video and by --features id."""
    paths = [make_video(tmp_path / f"{name}.mp4", seconds=6, fps=5, pattern=pattern)
             for name, pattern in (("bars", "smptebars"), ("fractal", "mandelbrot"),
                                   ("test", "testsrc2"))]
    extractor = RemoteFeatureExtractor(target)
    features = {path.stem: extractor.extract(load_video(path)) for path in paths}
    index_path = tmp_path / "videos.idx"
    with VideoIndex.create(str(index_path), coarse_dims=128, fine_kind="bits",
                           fine_shape_tail=(9, 512)) as index, \
            open_writer(tmp_path / "features.h5") as writer:
        for name, video in features.items():
            indexed = local.index(video[None], np.ones((1, len(video)), np.float32))
            index.add(name, indexed.coarse[0], indexed.fine[0], indexed.selector[0])
            writer.write(name, video)

    common = ["search", "--server", target, "--index", str(index_path), "--mode", "fine"]
    assert cli_main(common + ["--video", str(paths[1]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "dns" and result["version"] == 1
    (answer,) = result["queries"]
    assert answer["query"] == str(paths[1]) and answer["num_reranked"] == 3
    with VideoIndex.open(str(index_path), readonly=True) as index:
        expected = DnSRetriever(index, local, SearchConfig(mode="fine")).search(features["fractal"])
    assert [hit["video_id"] for hit in answer["hits"]] == expected.ids
    np.testing.assert_allclose([hit["score"] for hit in answer["hits"]], expected.scores, atol=1e-5)

    assert cli_main(common + ["--features", str(tmp_path / "features.h5"),
                              "--query", "bars", "test"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("query bars: 3 candidates, 3 re-ranked")
    with VideoIndex.open(str(index_path), readonly=True) as index:
        expected = DnSRetriever(index, local, SearchConfig(mode="fine")).search(features["bars"])
    assert [line.split()[1] for line in lines[2:5]] == expected.ids
    assert all(line.endswith("*") for line in lines[2:5])
    assert any(line.startswith("query test:") for line in lines)

    assert cli_main(common + ["--features", str(tmp_path / "features.h5"), "--query", "nope"]) == 1
    assert "nope" in capsys.readouterr().err
    unreachable = ["search", "--server", f"127.0.0.1:{free_port()}", "--index", str(index_path),
                   "--features", str(tmp_path / "features.h5"), "--query", "bars", "--retries", "0"]
    assert cli_main(unreachable) == 1
    assert "server unavailable after 1 attempts" in capsys.readouterr().err

    cert, key = self_signed(tmp_path, "server")
    with ModelServer({"dns": exported.models["dns"].parent}, ssl_config=ssl_config(cert, key),
                     xla_cpu_compilation_enabled=True) as server:
        secure = ["search", "--server", f"localhost:{server.port}", "--index", str(index_path),
                  "--mode", "fine", "--features", str(tmp_path / "features.h5"), "--query", "bars"]
        assert cli_main(secure + ["--ssl_ca", str(cert)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[1] for line in lines[2:5]] == expected.ids
        assert cli_main(secure + ["--ssl_ca", str(tmp_path / "missing.pem")]) == 1
        assert capsys.readouterr().err.startswith("dns-tf search: error: cannot read ssl_ca file")
