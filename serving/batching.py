"""``--enable_batching``: concurrent requests of one signature merged into one run, as TF Serving.

:class:`RequestBatcher` is the embedded server's batch scheduler, with the semantics of TF
Serving's ``BatchingSession`` under a ``BatchingParameters`` file:

* requests to the same model version and signature join an open batch until it holds
  ``max_batch_size`` rows (the leading axis; a request that does not fit closes the batch and
  opens the next) or its first request has waited ``batch_timeout_micros``;
* closed batches wait in a queue of at most ``max_enqueued_batches`` (beyond it requests fail with
  UNAVAILABLE) and run on ``num_batch_threads`` threads (default: this machine's CPU count);
* with ``pad_variable_length_inputs`` every other axis is padded to the batch's largest with each
  tensor's first value (otherwise shapes must agree); ``allowed_batch_sizes`` pads the batch up to
  the next allowed size with copies of its first row;
* outputs are split along the leading axis; other axes stay as the merged run produced them.

Every input of a request must share its leading size; a request larger than ``max_batch_size``
is refused (INVALID_ARGUMENT). Unlike TF Serving, which refuses them, requests with a scalar input
(no batch axis to merge along) run alone, unbatched. The ``tensorflow-serving-api`` package does not ship the
``BatchingParameters`` message (see :mod:`serving.declared_protos`); fields added by newer TF
Serving releases are accepted and ignored.
"""

from __future__ import annotations

import bisect
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable, Mapping

import grpc
import numpy as np
from google.protobuf.message import Message

from serving.declared_protos import declare_message
from serving.model_config import read_text_proto
from serving.status import ServingError

# BasicBatchScheduler's defaults, for fields a parameters file leaves out.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10

# As in tensorflow_serving/servables/tensorflow/session_bundle_config.proto.
BatchingParameters = declare_message("BatchingParameters", (
    ("max_batch_size", 1, ".google.protobuf.Int64Value", False),
    ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", False),
    ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", False),
    ("num_batch_threads", 4, ".google.protobuf.Int64Value", False),
    ("thread_pool_name", 5, ".google.protobuf.StringValue", False),
    ("allowed_batch_sizes", 6, "int64", True),
    ("pad_variable_length_inputs", 7, "bool", False),
))


def read_batching_parameters(path: str | os.PathLike) -> Message:
    """Parses a ``BatchingParameters`` text proto, e.g. ``max_batch_size { value: 32 }``."""
    return read_text_proto(path, BatchingParameters(), "batching parameters file",
                           allow_unknown_field=True)


Arrays = Mapping[str, np.ndarray]


class _Task:
    """One request waiting for its slice of a batch's outputs."""

    def __init__(self, arrays: Arrays, size: int):
        self.arrays = arrays
        self.size = size
        self.done = threading.Event()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None

    def finish(self, outputs=None, error=None) -> None:
        self.outputs, self.error = outputs, error
        self.done.set()


class _Batch:
    def __init__(self, run: Callable[[Arrays], Arrays], deadline: float):
        self.run = run
        self.deadline = deadline
        self.tasks: list[_Task] = []
        self.size = 0


def _pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` padded at the end of every axis but the first to ``shape``, with its first value
    (TF Serving's ``pad_variable_length_inputs``)."""
    if array.shape[1:] == shape:
        return array
    value = array.flat[0] if array.size else 0
    widths = [(0, 0)] + [(0, want - have) for have, want in zip(array.shape[1:], shape)]
    return np.pad(array, widths, constant_values=value)


class RequestBatcher:
    """Merges concurrent requests per key (model, version, signature); see the module docstring.

    Args:
        parameters: a ``BatchingParameters`` message.
    """

    def __init__(self, parameters: Message):
        def value(field, default):
            return getattr(parameters, field).value if parameters.HasField(field) else default

        self.max_batch_size = value("max_batch_size", DEFAULT_MAX_BATCH_SIZE)
        self.timeout = value("batch_timeout_micros", 0) / 1e6
        self.max_enqueued = value("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES)
        self.threads = value("num_batch_threads", 0) or os.cpu_count() or 1
        self.allowed_sizes = sorted(parameters.allowed_batch_sizes)
        self.pad = parameters.pad_variable_length_inputs
        if min(self.max_batch_size, self.max_enqueued, self.threads) < 1 or self.timeout < 0:
            raise ValueError(f"batching parameters must be positive: {parameters}")
        if self.allowed_sizes and self.allowed_sizes[-1] != self.max_batch_size:
            raise ValueError(f"the largest allowed_batch_sizes ({self.allowed_sizes[-1]}) must "
                             f"equal max_batch_size ({self.max_batch_size})")
        self._open: dict[Hashable, _Batch] = {}
        self._condition = threading.Condition()
        self._queue: queue.Queue[_Batch | None] = queue.Queue()
        self._stopped = False
        self._workers = [threading.Thread(target=self._work, daemon=True,
                                          name=f"dns-tf-batch-{number}")
                         for number in range(self.threads)]
        self._closer = threading.Thread(target=self._close_expired, daemon=True,
                                        name="dns-tf-batch-timer")
        for thread in (*self._workers, self._closer):
            thread.start()

    def run(self, key: Hashable, run: Callable[[Arrays], Arrays], arrays: Arrays) -> dict:
        """Runs ``arrays`` (one request) as part of a batch of ``key``; returns its outputs.

        ``run`` computes a merged batch (every request of ``key`` passes an equivalent one).
        """
        if any(np.ndim(array) == 0 for array in arrays.values()):
            return run(arrays)  # nothing to merge along
        sizes = {len(array) for array in arrays.values()}
        if len(sizes) != 1:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "Batching session Run() input tensors must have equal "
                               "0th-dimension size")
        size = sizes.pop()
        if size > self.max_batch_size:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Task size {size} is larger than maximum batch size "
                               f"{self.max_batch_size}")
        task = _Task(arrays, size)
        with self._condition:
            if self._stopped:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the batcher is stopped")
            batch = self._open.get(key)
            if batch is not None and batch.size + size > self.max_batch_size:
                self._close(key)
                batch = None
            if batch is None:
                batch = self._open[key] = _Batch(run, time.monotonic() + self.timeout)
                self._condition.notify()
            batch.tasks.append(task)
            batch.size += size
            if batch.size == self.max_batch_size or self.timeout == 0:
                self._close(key)
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def stop(self) -> None:
        """Runs the open batches, then ends the threads (after the queued batches)."""
        with self._condition:
            self._stopped = True
            for key in list(self._open):
                self._close(key)
            self._condition.notify()
        for _ in self._workers:
            self._queue.put(None)

    def _close(self, key: Hashable) -> None:
        """Moves the open batch of ``key`` to the queue (caller holds the condition)."""
        batch = self._open.pop(key)
        if self._queue.qsize() >= self.max_enqueued:
            error = ServingError(grpc.StatusCode.UNAVAILABLE, "The batch scheduling queue to "
                                 "which this task was submitted is full")
            for task in batch.tasks:
                task.finish(error=error)
            return
        self._queue.put(batch)

    def _close_expired(self) -> None:
        with self._condition:
            while not self._stopped:
                now = time.monotonic()
                for key, batch in list(self._open.items()):
                    if batch.deadline <= now:
                        self._close(key)
                deadlines = [batch.deadline for batch in self._open.values()]
                self._condition.wait(min(deadlines) - now if deadlines else None)

    def _work(self) -> None:
        while (batch := self._queue.get()) is not None:
            try:
                outputs = batch.run(self._merge(batch.tasks))
                start = 0
                for task in batch.tasks:
                    task.finish({name: value[start:start + task.size]
                                 for name, value in outputs.items()})
                    start += task.size
            except BaseException as error:  # the batch's requests fail together, as in TF Serving
                for task in batch.tasks:
                    if not task.done.is_set():
                        task.finish(error=error)

    def _merge(self, tasks: list[_Task]) -> dict[str, np.ndarray]:
        merged = {}
        for name in tasks[0].arrays:
            arrays = [task.arrays[name] for task in tasks]
            shapes = {array.shape[1:] for array in arrays}
            if len(shapes) > 1:
                if not self.pad:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"input {name}: requests of shapes {sorted(shapes)} cannot "
                                       f"be batched without pad_variable_length_inputs")
                shape = tuple(np.max([list(shape) for shape in shapes], axis=0))
                arrays = [_pad_to(array, shape) for array in arrays]
            merged[name] = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        total = sum(task.size for task in tasks)
        if self.allowed_sizes and total not in self.allowed_sizes:
            wanted = self.allowed_sizes[bisect.bisect_left(self.allowed_sizes, total)]
            merged = {name: np.concatenate([array, np.repeat(array[:1], wanted - total, 0)])
                      for name, array in merged.items()}
        return merged
