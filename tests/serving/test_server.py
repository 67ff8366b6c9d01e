"""The embedded TF Serving server, driven only through the stock ``tensorflow_serving.apis`` stubs."""

from __future__ import annotations

import argparse
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import numpy as np
from google.protobuf import text_format
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from saved_model_fixtures import ASSERT_LIMIT, adder_reference, write_adder, write_pixel_sum
from serving.batching import read_batching_parameters
from dns_tf.cli.serve import register
from serving.model_config import (available_versions, read_model_server_config,
                                  resolve_servable_models, write_model_server_config)
from serving.client import ServingClient, ServingRequestError
from serving.config import ServeConfig
from serving.server import ModelServer
from serving.tls import read_ssl_config
from tls_fixtures import self_signed, ssl_config

REPO = pathlib.Path(__file__).resolve().parents[2]
MAX_REQUEST_BYTES = 1 << 20
MAX_INPUT_ELEMENTS = 1 << 20  # 4 MiB of float32: more than MAX_REQUEST_BYTES
MODELS_CONFIG = """
model_config_list {
  config { name: 'adder' base_path: '%(root)s/adder' model_platform: 'tensorflow' }
  config {
    name: 'adder_all' base_path: '%(root)s/adder' model_platform: 'tensorflow'
    model_version_policy { all {} }
    version_labels { key: 'stable' value: 1 }
    version_labels { key: 'canary' value: 2 }
  }
  config {
    name: 'adder_v1' base_path: '%(root)s/adder'
    model_version_policy { specific { versions: 1 } }
  }
  config { name: 'pixels' base_path: '%(root)s/pixels' model_platform: 'tensorflow' }
}
"""
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("models")
    write_adder(root / "adder", 1)
    write_adder(root / "adder", 2)
    write_pixel_sum(root / "pixels", 1)
    (root / "adder" / "3").mkdir()  # an export still being written: no saved_model.pb yet
    (root / "adder" / "tmp").mkdir()
    (root / "models.config").write_text(MODELS_CONFIG % {"root": root})
    return root


@pytest.fixture(scope="module")
def server(model_root):
    with ModelServer(model_root / "models.config", max_request_bytes=MAX_REQUEST_BYTES,
                     max_input_elements=MAX_INPUT_ELEMENTS) as server:
        yield server


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def prediction(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_service(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(model: str = "adder", signature: str = "", version: int | None = None,
                    label: str = "", output_filter=(), **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(output_filter=list(output_filter))
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto)
                                      else tf.make_tensor_proto(value))
    return request


def adder_inputs(seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=(batch, 3)).astype(np.float32) for name in ("x", "y")}


def outputs_of(response) -> dict[str, np.ndarray]:
    return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}


def test_predict_matches_the_saved_model_run_in_process(model_root, prediction):
    inputs = adder_inputs(seed=1, batch=4)
    in_process = tf.saved_model.load(str(model_root / "adder" / "2")).signatures["add"]
    expected = {name: value.numpy() for name, value in in_process(**inputs).items()}

    for signature in ("add", "", "serving_default"):
        response = prediction.Predict(predict_request(signature=signature, **inputs), timeout=30)
        got = outputs_of(response)
        assert sorted(got) == ["norm", "sum"]
        for name in expected:
            assert got[name].dtype == np.float32 and got[name].shape == expected[name].shape
            np.testing.assert_array_equal(got[name], expected[name])
        assert response.model_spec.name == "adder"
        assert response.model_spec.version.value == 2  # the newest version; 3 is incomplete
        assert response.model_spec.signature_name == (signature or "serving_default")
    np.testing.assert_allclose(got["sum"], adder_reference(inputs["x"], inputs["y"], 2.0)["sum"])


@pytest.mark.parametrize("model, version, label, served", [
    ("adder", None, "", 2),
    ("adder_all", None, "", 2),
    ("adder_all", 1, "", 1),
    ("adder_all", 2, "", 2),
    ("adder_all", None, "stable", 1),
    ("adder_all", None, "canary", 2),
    ("adder_v1", None, "", 1),
])
def test_version_policy_and_labels_choose_the_version(prediction, model, version, label, served):
    inputs = adder_inputs(seed=2)
    response = prediction.Predict(
        predict_request(model=model, version=version, label=label, **inputs), timeout=30)
    assert response.model_spec.version.value == served
    np.testing.assert_allclose(outputs_of(response)["sum"],
                               adder_reference(inputs["x"], inputs["y"], float(served))["sum"], rtol=1e-6)


def test_integer_inputs_and_outputs(prediction):
    pixels = np.array([[0, 255, 7, 1], [200, 100, 50, 3]], dtype=np.uint8)
    response = prediction.Predict(predict_request(model="pixels", pixels=pixels,
                                                  scale=np.int32(3)), timeout=30)
    got = outputs_of(response)
    assert got["total"].dtype == np.int32
    np.testing.assert_array_equal(got["total"], pixels.astype(np.int32).sum(axis=1) * 3)
    np.testing.assert_allclose(got["mean"], pixels.mean(axis=1))


def test_output_filter_returns_only_the_requested_outputs(prediction):
    inputs = adder_inputs(seed=3)
    response = prediction.Predict(predict_request(output_filter=["norm"], **inputs), timeout=30)
    assert list(response.outputs) == ["norm"]
    np.testing.assert_allclose(outputs_of(response)["norm"],
                               adder_reference(inputs["x"], inputs["y"], 2.0)["norm"], rtol=1e-5)


def test_get_model_metadata_reports_the_saved_signature_defs(model_root, prediction):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "adder_all"
    request.model_spec.version.value = 1
    response = prediction.GetModelMetadata(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == ("adder_all", 1)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_defs)
    assert {"serving_default", "add", "checked", "spin"} <= set(signature_defs.signature_def)

    add = signature_defs.signature_def["add"]
    assert add.method_name == "tensorflow/serving/predict"
    in_process = tf.saved_model.load(str(model_root / "adder" / "1")).signatures["add"]
    for name, spec in in_process.structured_input_signature[1].items():
        assert add.inputs[name].dtype == spec.dtype.as_datatype_enum
        assert tf.TensorShape(add.inputs[name].tensor_shape) == spec.shape
    assert set(add.outputs) == set(in_process.structured_outputs)


def test_get_model_status_reports_every_served_version_available(model_service):
    def versions(model, version=None):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        response = model_service.GetModelStatus(request, timeout=30)
        for status in response.model_version_status:
            assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
            assert status.status.error_code == 0
        return [status.version for status in response.model_version_status]

    assert versions("adder") == [2]
    assert versions("adder_all") == [1, 2]
    assert versions("adder_all", 1) == [1]
    assert versions("pixels") == [1]
    for model, version, message in [("nope", None, "Could not find any versions of model nope"),
                                    ("adder", 1, "Could not find version 1 of model adder")]:
        with pytest.raises(grpc.RpcError) as raised:
            versions(model, version)
        assert raised.value.code() == Code.NOT_FOUND
        assert message in raised.value.details()


def _float_tensor(shape, fill=0.0, dtype=np.float32):
    return np.full(shape, fill, dtype=dtype)


def _corrupt_content():
    tensor = tf.make_tensor_proto(_float_tensor((2, 3)))
    tensor.tensor_content = tensor.tensor_content[:-4]
    return tensor


def _claimed_shape(*shape):
    """A few bytes on the wire: one value, broadcast to ``shape`` when decoded."""
    tensor = tf.make_tensor_proto(np.float32(1.0))
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    return tensor


GOOD = {"x": _float_tensor((2, 3)), "y": _float_tensor((2, 3))}
BAD_PREDICTS = {
    "unknown model": (dict(model="nope", **GOOD), Code.NOT_FOUND,
                      "Servable not found for request: Latest(nope)"),
    "unknown version": (dict(version=7, **GOOD), Code.NOT_FOUND,
                        "Servable not found for request: Specific(adder, 7)"),
    "unknown label": (dict(model="adder_all", label="beta", **GOOD), Code.INVALID_ARGUMENT,
                      "Unrecognized servable version label: beta"),
    "unknown signature": (dict(signature="nope", **GOOD), Code.FAILED_PRECONDITION,
                          'Serving signature key "nope" not found.'),
    "missing input": (dict(x=GOOD["x"]), Code.INVALID_ARGUMENT, "Missing but required: {y}"),
    "extra input": (dict(z=GOOD["x"], **GOOD), Code.INVALID_ARGUMENT, "Sent extra: {z}"),
    "wrong dtype": (dict(x=_float_tensor((2, 3), dtype=np.float64), y=GOOD["y"]), Code.INVALID_ARGUMENT,
                    "Expected input x to be float32 but got float64"),
    "wrong shape": (dict(x=_float_tensor((2, 4)), y=GOOD["y"]), Code.INVALID_ARGUMENT,
                    "Expected input x to have shape (None, 3) but got [2, 4]"),
    "wrong rank": (dict(x=_float_tensor((3,)), y=GOOD["y"]), Code.INVALID_ARGUMENT,
                   "Expected input x to have shape"),
    "NaN input": (dict(x=_float_tensor((2, 3), np.nan), y=GOOD["y"]), Code.INVALID_ARGUMENT,
                  "input x contains NaN or Inf"),
    "Inf input": (dict(x=GOOD["x"], y=_float_tensor((2, 3), -np.inf)), Code.INVALID_ARGUMENT,
                  "input y contains NaN or Inf"),
    "corrupt tensor content": (dict(x=_corrupt_content(), y=GOOD["y"]), Code.INVALID_ARGUMENT,
                               "tensor parsing error: x"),
    "unknown output": (dict(output_filter=["nope"], **GOOD), Code.INVALID_ARGUMENT,
                       "output tensor alias not found in signature: nope"),
    "duplicate output": (dict(output_filter=["sum", "sum"], **GOOD), Code.INVALID_ARGUMENT,
                         "duplicate output tensor alias: sum"),
    "input declaring many elements": (
        dict(x=_claimed_shape(MAX_INPUT_ELEMENTS // 3 + 1, 3), y=GOOD["y"]),
        Code.RESOURCE_EXHAUSTED, f"more than the server's limit of {MAX_INPUT_ELEMENTS} per input"),
    "input declaring over 2**63 elements": (
        dict(x=_claimed_shape(1 << 62, 3), y=GOOD["y"]), Code.RESOURCE_EXHAUSTED,
        f"declares {3 << 62} elements"),
    "input decoding huge": (dict(x=_claimed_shape(MAX_REQUEST_BYTES // 12 + 1, 3), y=GOOD["y"]),
                            Code.RESOURCE_EXHAUSTED,
                            f"more than the server's limit of {MAX_REQUEST_BYTES} bytes"),
    "batch sizes differ": (dict(x=_float_tensor((2, 3)), y=_float_tensor((1, 3))), Code.INVALID_ARGUMENT,
                           "one batch size (0th dimension): x has 2, y has 1"),
    "request too large": (dict(x=_float_tensor((MAX_REQUEST_BYTES // 12 + 1, 3)),
                               y=_float_tensor((1, 3))), Code.RESOURCE_EXHAUSTED,
                          "Received message larger than max"),
    "model fails while running": (dict(signature="checked", x=_float_tensor((2, 3), ASSERT_LIMIT)),
                                  Code.INVALID_ARGUMENT, f"x must stay below {ASSERT_LIMIT}"),
}


@pytest.mark.parametrize("case", list(BAD_PREDICTS))
def test_a_bad_predict_gets_its_status_and_the_server_keeps_serving(prediction, case):
    arguments, code, message = BAD_PREDICTS[case]
    with pytest.raises(grpc.RpcError) as raised:
        prediction.Predict(predict_request(**arguments), timeout=30)
    assert raised.value.code() == code, raised.value.details()
    assert message in raised.value.details()

    inputs = adder_inputs(seed=4)
    response = prediction.Predict(predict_request(**inputs), timeout=30)
    np.testing.assert_allclose(outputs_of(response)["sum"],
                               adder_reference(inputs["x"], inputs["y"], 2.0)["sum"], rtol=1e-6)


def test_other_bad_requests_get_their_status(prediction):
    def status_of(call, request):
        with pytest.raises(grpc.RpcError) as raised:
            call(request, timeout=30)
        return raised.value.code(), raised.value.details()

    assert status_of(prediction.Predict, predict_pb2.PredictRequest()) == (
        Code.INVALID_ARGUMENT, "Missing ModelSpec")
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["graph"])
    metadata.model_spec.name = "adder"
    assert status_of(prediction.GetModelMetadata, metadata) == (
        Code.INVALID_ARGUMENT, "Metadata field graph is not supported")
    del metadata.metadata_field[:]
    assert status_of(prediction.GetModelMetadata, metadata)[0] == Code.INVALID_ARGUMENT
    metadata.metadata_field.append("signature_def")
    metadata.model_spec.name = "nope"
    assert status_of(prediction.GetModelMetadata, metadata)[0] == Code.NOT_FOUND
    assert status_of(prediction.Classify, classification_pb2.ClassificationRequest())[0] == \
        Code.UNIMPLEMENTED


def test_concurrent_requests_from_eight_threads_are_all_answered_correctly(prediction):
    def client(thread: int) -> int:
        for step in range(4):
            inputs = adder_inputs(seed=100 * thread + step, batch=1 + thread)
            response = prediction.Predict(predict_request(**inputs), timeout=60)
            np.testing.assert_allclose(outputs_of(response)["sum"],
                                       adder_reference(inputs["x"], inputs["y"], 2.0)["sum"], rtol=1e-6)
        return thread

    with futures.ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(client, range(8))) == list(range(8))


def test_stop_lets_an_in_flight_request_finish_then_refuses_new_ones(model_root):
    iterations = 300_000  # about a second of looping: still running when stop is called
    server = ModelServer({"adder": model_root / "adder"}, max_workers=2)
    port = server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        in_flight = stub.Predict.future(predict_request(signature="spin", iterations=np.int32(iterations)),
                                        timeout=60)
        time.sleep(0.3)
        assert not in_flight.done()
        server.stop(grace=30)
        assert tf.make_ndarray(in_flight.result().outputs["count"]) == iterations
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(predict_request(**adder_inputs()), timeout=5)
        assert raised.value.code() == Code.UNAVAILABLE


def test_a_port_in_use_is_refused_not_shared(server, model_root):
    with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        ModelServer({"adder": model_root / "adder"}, port=server.port).start()


def test_model_config_layout_policies_and_errors(model_root, tmp_path):
    assert available_versions(model_root / "adder") == [1, 2]
    config = read_model_server_config(model_root / "models.config")
    served = {model.name: model.versions for model in resolve_servable_models(config)}
    assert served == {"adder": (2,), "adder_all": (1, 2), "adder_v1": (1,), "pixels": (1,)}

    written = write_model_server_config(tmp_path / "models.config", {"a": model_root / "adder"})
    assert [m.versions for m in resolve_servable_models(read_model_server_config(written))] == [(2,)]

    def refused(text: str, error: type, message: str):
        path = tmp_path / "bad.config"
        path.write_text(text)
        with pytest.raises(error, match=re.escape(message)):
            resolve_servable_models(read_model_server_config(path))

    adder = f"base_path: '{model_root}/adder'"
    refused("model_config_list { config { name: 'a' basepath: '/x' } }", ValueError, str(tmp_path / "bad.config"))
    refused(f"model_config_list {{ config {{ name: 'a' {adder} model_version_policy "
            f"{{ specific {{ versions: 5 }} }} }} }}", FileNotFoundError, "versions [5]")
    refused(f"model_config_list {{ config {{ name: 'a' {adder} }} config {{ name: 'a' {adder} }} }}",
            ValueError, "configured twice")
    refused(f"model_config_list {{ config {{ name: 'a' {adder} version_labels {{ key: 'x' value: 1 }} }} }}",
            ValueError, "label 'x' points at version 1")
    refused(f"model_config_list {{ config {{ name: 'a' base_path: '{tmp_path}' }} }}",
            FileNotFoundError, "no version found")
    refused(f"model_config_list {{ config {{ name: 'a' {adder} model_platform: 'tflite' }} }}",
            ValueError, "model_platform 'tflite'")
    refused("", ValueError, "lists no models")
    with pytest.raises(RuntimeError, match="cannot load model 'broken' version 1"):
        (tmp_path / "broken" / "1").mkdir(parents=True)
        (tmp_path / "broken" / "1" / "saved_model.pb").write_bytes(b"not a proto")
        ModelServer({"broken": tmp_path / "broken"}).start()


def test_batching_parameters_file_is_parsed_and_checked(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 1000 }\n"
                    "allowed_batch_sizes: 8\nallowed_batch_sizes: 32\nenable_large_batch_splitting { value: true }")
    parameters = read_batching_parameters(path)
    assert parameters.max_batch_size.value == 32
    assert list(parameters.allowed_batch_sizes) == [8, 32]
    path.write_text("max_batch_size: {{ value 32")
    with pytest.raises(ValueError, match="BatchingParameters"):
        read_batching_parameters(path)


@pytest.mark.parametrize("flags, message", [
    (["--model_base_path", "{tmp}/nope"], "nope is not a directory"),
    (["--model_config_file", "{tmp}/missing.config"], "cannot read model config file"),
    (["--model_config_file", "{tmp}/x", "--model_base_path", "{tmp}"], "not both"),
    ([], "give --model_config_file or --model_base_path"),
    (["--model_base_path", "{tmp}", "--ssl_config_file", "{tmp}/ssl.config"], "cannot read SSL config file"),
])
def test_dns_tf_serve_refuses_a_bad_setup_with_a_clear_message(tmp_path, capsys, flags, message):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--port", "0"] + [flag.format(tmp=tmp_path) for flag in flags])
    assert args.func(args) == 1
    assert message in capsys.readouterr().err


def test_dns_tf_serve_answers_then_exits_within_the_grace_on_sigterm(model_root, tmp_path):
    """Binds 127.0.0.1 by default; a request still running at SIGTERM does not hold the exit."""
    grace, tolerance = 1.0, 5.0
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 8 }")
    process = subprocess.Popen(
        [sys.executable, "-m", "dns_tf.cli", "serve", "--model_config_file",
         str(model_root / "models.config"), "--port", "0", "--shutdown_grace_seconds", str(grace),
         "--enable_batching", "--batching_parameters_file", str(batching)],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    try:
        port = None
        # Loading TensorFlow and the models takes minutes on a loaded 2-core machine.
        deadline = time.monotonic() + 300
        while port is None and time.monotonic() < deadline and process.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            log.append(line)
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            port = int(match.group(1)) if match else None
        assert port, "server did not start:\n" + "".join(log)

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            inputs = adder_inputs(seed=5)
            response = stub.Predict(predict_request(model="adder_v1", **inputs), timeout=30)
            np.testing.assert_allclose(outputs_of(response)["sum"],
                                       adder_reference(inputs["x"], inputs["y"], 1.0)["sum"], rtol=1e-6)
            # Minutes of looping: still running when the grace ends.
            in_flight = stub.Predict.future(predict_request(
                model="adder_v1", signature="spin", iterations=np.int32(2_000_000_000)), timeout=600)
            time.sleep(0.5)
            assert not in_flight.done()
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
            took = time.monotonic() - signalled
            assert took < grace + tolerance, f"exited {took:.1f} s after SIGTERM, grace {grace} s"
            with pytest.raises(grpc.RpcError) as raised:
                in_flight.result()
            assert raised.value.code() in (Code.CANCELLED, Code.UNAVAILABLE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    while not lines.empty():
        log.append(lines.get())
    assert any("max_batch_size" in line for line in log), "".join(log)
    assert any("abandoning 1 request(s)" in line for line in log), "".join(log)


def test_the_default_address_is_loopback_only():
    assert ServeConfig().host == "127.0.0.1"
    assert ModelServer({})._address.startswith("127.0.0.1:")


@pytest.mark.parametrize("flags, message", [
    (["--port", "70000"], "--port must be in 0-65535, got 70000"),
    (["--port", "-1"], "--port must be in 0-65535, got -1"),
    (["--max_input_elements", "0"], "--max_input_elements must be positive"),
    (["--shutdown_grace_seconds", "-1"], "--shutdown_grace_seconds must be >= 0"),
])
def test_dns_tf_serve_refuses_out_of_range_flags_as_usage_errors(tmp_path, capsys, flags, message):
    parser = argparse.ArgumentParser(prog="dns-tf")
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model_base_path", str(tmp_path)] + flags)
    with pytest.raises(SystemExit) as exited:
        args.func(args)
    assert exited.value.code == 2
    assert f"dns-tf serve: error: {message}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="port must be in 0-65535"):
        ModelServer({}, port=70000)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    return {name: self_signed(directory, name) for name in ("server", "client", "stranger")}


def _adder_sum(client: ServingClient, seed: int = 6) -> None:
    inputs = adder_inputs(seed=seed)
    outputs, version = client.predict("adder", "", inputs)
    assert version == 2
    np.testing.assert_allclose(outputs["sum"], adder_reference(inputs["x"], inputs["y"], 2.0)["sum"],
                               rtol=1e-6)


def test_tls_serves_clients_that_trust_its_certificate_only(model_root, certificates, tmp_path):
    server_cert, server_key = certificates["server"]
    config_file = tmp_path / "ssl.config"
    config_file.write_text(text_format.MessageToString(ssl_config(server_cert, server_key)))
    with ModelServer({"adder": model_root / "adder"}, ssl_config=config_file) as server:
        target = f"127.0.0.1:{server.port}"
        with ServingClient(target, ssl_ca=str(server_cert), retries=0) as client:
            _adder_sum(client)
        for options in ({}, {"ssl_ca": str(certificates["stranger"][0])}):  # plaintext; wrong CA
            with ServingClient(target, retries=0, timeout=10, **options) as client, \
                    pytest.raises(ServingRequestError) as raised:
                _adder_sum(client)
            assert raised.value.code == Code.UNAVAILABLE


def test_tls_with_client_verify_needs_a_client_certificate_from_custom_ca(model_root, certificates):
    server_cert, server_key = certificates["server"]
    client_cert, client_key = certificates["client"]
    config = ssl_config(server_cert, server_key, client_ca=client_cert)
    with ModelServer({"adder": model_root / "adder"}, ssl_config=config) as server:
        target = f"127.0.0.1:{server.port}"
        with ServingClient(target, ssl_ca=str(server_cert), ssl_cert=str(client_cert),
                           ssl_key=str(client_key), retries=0) as client:
            _adder_sum(client)
        stranger_cert, stranger_key = certificates["stranger"]
        for options in ({}, {"ssl_cert": str(stranger_cert), "ssl_key": str(stranger_key)}):
            with ServingClient(target, ssl_ca=str(server_cert), retries=0, timeout=10,
                               **options) as client, pytest.raises(ServingRequestError) as raised:
                _adder_sum(client)
            assert raised.value.code == Code.UNAVAILABLE


def test_bad_tls_settings_are_refused_with_the_file_and_field(certificates, tmp_path):
    server_cert, server_key = certificates["server"]
    path = tmp_path / "ssl.config"

    def refused(text: str, message: str):
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(message)):
            read_ssl_config(path)

    refused(f"server_cert: {server_cert.read_text()!r}", f"{path}: SSLConfig needs server_key")
    refused(f"server_key: {str(server_key)!r} server_cert: {server_cert.read_text()!r}",
            "server_key must hold PEM contents")
    refused(text_format.MessageToString(ssl_config(server_cert, server_key)) + "client_verify: true",
            "client_verify needs custom_ca")
    refused("server_pem: 'x'", "not a valid tensorflow.serving.SSLConfig")
    with pytest.raises(FileNotFoundError, match="cannot read SSL config file"):
        read_ssl_config(tmp_path / "missing.config")
    with pytest.raises(ValueError, match="ssl_cert and ssl_key go together"):
        ServingClient("127.0.0.1:1", ssl_cert=str(server_cert))
    with pytest.raises(ValueError, match="ssl_ca file .* is not PEM"):
        ServingClient("127.0.0.1:1", ssl_ca=str(path))
