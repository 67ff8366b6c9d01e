"""``--enable_batching`` in the embedded server: concurrent requests of one signature merged into
one run as TF Serving's batching does (sizes, timeout, padding, queue limit), with every request
getting exactly its own rows back."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from saved_model_fixtures import adder_reference, write_adder
from serving.batching import BatchingParameters, RequestBatcher
from serving.export import BATCHING_PARAMETERS
from serving.server import ModelServer
from serving.status import ServingError


def parameters(**fields):
    message = BatchingParameters(pad_variable_length_inputs=fields.pop("pad", False),
                                 allowed_batch_sizes=fields.pop("allowed", []))
    for name, value in fields.items():
        getattr(message, name).value = value
    return message


class Recorder:
    """A signature that doubles ``x`` and records the batch sizes it ran."""

    def __init__(self, gate: threading.Event | None = None):
        self.sizes, self.gate = [], gate

    def __call__(self, arrays):
        if self.gate is not None:
            self.gate.wait(10)
        self.sizes.append(len(arrays["x"]))
        return {"double": arrays["x"] * 2, "rows": np.full(len(arrays["x"]), len(arrays["x"]))}


def run_concurrently(batcher, run, requests):
    with futures.ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda arrays: batcher.run("key", run, arrays), requests))


def test_concurrent_requests_are_merged_and_each_gets_its_rows():
    batcher = RequestBatcher(parameters(max_batch_size=64, batch_timeout_micros=200_000))
    run = Recorder()
    requests = [{"x": np.full((1 + n % 3, 2), n, np.float32)} for n in range(12)]
    outputs = run_concurrently(batcher, run, requests)
    for request, output in zip(requests, outputs):
        np.testing.assert_array_equal(output["double"], request["x"] * 2)
    assert sum(run.sizes) == sum(len(r["x"]) for r in requests) and len(run.sizes) < 12
    batcher.stop()


def test_a_full_batch_runs_at_once_and_oversized_requests_are_refused():
    batcher = RequestBatcher(parameters(max_batch_size=4, batch_timeout_micros=60_000_000))
    run = Recorder()
    # Without the size limit closing batches these would wait a minute for the timeout.
    outputs = run_concurrently(batcher, run, [{"x": np.ones((2, 1), np.float32)}] * 4)
    assert run.sizes == [4, 4] and all(o["rows"].tolist() == [4, 4] for o in outputs)
    with pytest.raises(ServingError, match="larger than maximum batch size 4") as error:
        batcher.run("key", run, {"x": np.ones((5, 1), np.float32)})
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ServingError, match="equal 0th-dimension"):
        batcher.run("key", run, {"x": np.ones((2, 1)), "y": np.ones((3, 1))})
    # A scalar input has no batch axis: such a request runs alone.
    assert batcher.run("key", lambda arrays: {"n": arrays["n"] + 1}, {"n": np.int32(4)})["n"] == 5
    batcher.stop()


def test_variable_length_inputs_are_padded_with_their_first_value():
    batcher = RequestBatcher(parameters(max_batch_size=8, batch_timeout_micros=300_000, pad=True))
    seen = []

    def run(arrays):
        seen.append(arrays["x"])
        return {"out": arrays["x"]}

    short, long = np.array([[7, 1]]), np.array([[1, 2, 3, 4]])
    outputs = run_concurrently(batcher, run, [{"x": short}, {"x": long}])
    assert len(seen) == 1
    rows = {tuple(row) for row in seen[0]}
    assert rows == {(7, 1, 7, 7), (1, 2, 3, 4)}
    assert {tuple(o["out"][0]) for o in outputs} == rows  # other axes come back as merged
    unpadded = RequestBatcher(parameters(max_batch_size=8, batch_timeout_micros=300_000))
    with pytest.raises(ServingError, match="pad_variable_length_inputs"):
        run_concurrently(unpadded, run, [{"x": short}, {"x": long}])
    batcher.stop()
    unpadded.stop()


def test_allowed_batch_sizes_pad_the_batch_with_its_first_row():
    batcher = RequestBatcher(parameters(max_batch_size=8, allowed=[4, 8]))
    run = Recorder()
    output = batcher.run("key", run, {"x": np.arange(3, dtype=np.float32)[:, None]})
    assert run.sizes == [4] and output["double"].ravel().tolist() == [0, 2, 4]
    batcher.stop()


def test_a_full_queue_refuses_with_unavailable():
    gate = threading.Event()
    batcher = RequestBatcher(parameters(max_batch_size=1, max_enqueued_batches=1,
                                        num_batch_threads=1))
    run = Recorder(gate)
    with futures.ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(batcher.run, "key", run, {"x": np.ones((1, 1))})
                   for _ in range(4)]
        time.sleep(0.3)  # one batch runs (held by the gate), one queues, the rest find it full
        gate.set()
        errors = [future.exception() for future in pending]
    unavailable = [e for e in errors if isinstance(e, ServingError)]
    assert unavailable and all(e.code == grpc.StatusCode.UNAVAILABLE for e in unavailable)
    assert "queue" in unavailable[0].message
    batcher.stop()


def test_the_server_merges_requests_and_answers_each_as_alone(tmp_path):
    write_adder(tmp_path / "adder", 1)
    (tmp_path / "batching.txt").write_text(BATCHING_PARAMETERS)
    with ModelServer({"adder": tmp_path / "adder"}, enable_batching=True,
                     batching_parameters_file=tmp_path / "batching.txt") as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        calls = []
        original = server._batcher._merge
        server._batcher._merge = lambda tasks: calls.append(len(tasks)) or original(tasks)

        def client(seed):
            rng = np.random.default_rng(seed)
            inputs = {name: rng.normal(size=(1 + seed % 3, 3)).astype(np.float32)
                      for name in ("x", "y")}
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "adder"
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            response = stub.Predict(request, timeout=60)
            np.testing.assert_allclose(tf.make_ndarray(response.outputs["sum"]),
                                       adder_reference(inputs["x"], inputs["y"], 1.0)["sum"],
                                       rtol=1e-6)

        with futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(client, range(48)))
    assert sum(calls) == 48 and len(calls) < 48  # some runs served several requests


def test_exported_batching_parameters_leave_threads_to_the_server():
    assert "num_batch_threads {" not in BATCHING_PARAMETERS
