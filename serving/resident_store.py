"""Resident fine store: an index's fine representations held by the model server.

Re-ranking by shipping targets costs a query their whole fine representations (35 MB for 64
float16 targets of 60 frames; gigabytes at DnS's 5 % of a large database). A resident store is a
servable whose *variables* hold one index's (or one shard's) fine representations, so a query
sends its own representation and 8 bytes per candidate (the index's row key), and the server
gathers the targets in-graph and scores them with the fast path's graph (:mod:`serving.fine_graph`)::

    <base>/dns_store/<version>/     one generation of one index (each new export: a new version,
                                    which TF Serving's version policy swaps in)

Signature ``rerank`` (also ``serving_default``; batch-major, for ``--enable_batching``):
``query`` [B, T, R, C], ``query_length`` int32 [B], ``keys`` int64 [B, N] (row keys from
:meth:`~dns_tf.index.store.VideoIndex.keys`) -> ``similarity`` float32 [B, N], ``resident`` bool
[B, N] (False: the key is not in this generation, e.g. added since; its similarity is 0 and the
client ships that target instead), ``index_uid`` string [B] and ``fine_fingerprint`` string [B]
(which index, and which fine student's representations, the store holds: a client refuses a store
of another index or of other weights).

:class:`ResidentStore` is the client side, used by :class:`serving.client.RemoteBackend`.

Example:

    export_store("export/", index, fine_student)          # export/dns_store/<next version>
    # tensorflow_model_server --model_config_file=export/models.config ...
    backend = RemoteBackend("localhost:8500")             # finds dns_store for the index
    DnSRetriever(index, backend).search(query_features)   # re-ranks by key
"""

from __future__ import annotations

import os
import pathlib
from concurrent import futures

import numpy as np
import tensorflow as tf

from dns_tf.fine_representation import REGIONS, stored_kind
from dns_tf.models.fingerprint import fingerprint
from dns_tf.similarity_fast import comparator_weights
from serving.export import checked_lengths, write_models_config, write_version
from serving.fine_graph import QUERIES_IN_FLIGHT, FineGraph
from serving.model_config import available_versions

STORE_MODEL = "dns_store"
RERANK_SIGNATURE = "rerank"
# Videos read from the index at a time while exporting.
_READ_CHUNK = 1024


class ResidentStoreModule(tf.Module):
    """The ``dns_store`` servable: an index's fine representations and the fine comparator.

    Args:
        index: a :class:`~dns_tf.index.store.VideoIndex` (every video it holds now is kept).
        fine: the :class:`~dns_tf.models.FineGrainedStudent` the index was built with.
    """

    def __init__(self, index, fine):
        super().__init__(name=STORE_MODEL)
        if index.fine_kind != stored_kind(fine):
            raise ValueError(f"index at {index.path} stores '{index.fine_kind}' fine "
                             f"representations, the fine student produces '{stored_kind(fine)}'")
        ids = index.ids()
        if not ids:
            raise ValueError(f"index at {index.path} holds no videos: nothing to keep resident")
        keys = index.keys(ids)
        frames = [record.fine for start in range(0, len(ids), _READ_CHUNK)
                  for record in index.get_many(ids[start:start + _READ_CHUNK])]
        if frames[0].shape[1] != REGIONS:
            raise ValueError(f"index at {index.path} has {frames[0].shape[1]} regions per frame; "
                             f"served fine similarity takes {REGIONS}")
        lengths = np.array([len(video) for video in frames], np.int64)
        if lengths.sum() >= 2 ** 31:
            raise ValueError(f"index at {index.path} holds {lengths.sum()} frames, more than one "
                             f"store takes (2^31): export it in shards")
        order = np.argsort(keys)  # the graph looks keys up by binary search
        self.keys = tf.Variable(keys[order], trainable=False, name="keys")
        self.lengths = tf.Variable(lengths[order].astype(np.int32), trainable=False,
                                   name="lengths")
        starts = np.cumsum(lengths) - lengths
        self.starts = tf.Variable(starts[order].astype(np.int32), trainable=False, name="starts")
        self.frames = tf.Variable(np.concatenate(frames), trainable=False, name="frames")
        self.comparator = [tf.Variable(weight.numpy(), trainable=False)
                           for weight in comparator_weights(fine)]
        self.index_uid = index.uid
        self.fine_fingerprint = fingerprint(fine)
        self.fine_graph = FineGraph(fine.bits if index.fine_kind == "bits" else None,
                                    self.comparator)
        stored = frames[0]
        self.rerank = tf.function(self._rerank, input_signature=[
            tf.TensorSpec([None, None, REGIONS, stored.shape[-1]], tf.as_dtype(stored.dtype),
                          name="query"),
            tf.TensorSpec([None], tf.int32, name="query_length"),
            tf.TensorSpec([None, None], tf.int64, name="keys")])

    def serving_signatures(self) -> dict:
        return {"serving_default": self.rerank, RERANK_SIGNATURE: self.rerank}

    def _rerank(self, query, query_length, keys):
        query_length = checked_lengths(query_length, query, "query_length")
        last = tf.size(self.keys) - 1

        def one_query(inputs):
            query, query_length, wanted = inputs
            position = tf.minimum(tf.searchsorted(self.keys, wanted), last)
            resident = tf.gather(self.keys, position) == wanted
            lengths = tf.where(resident, tf.gather(self.lengths, position), 1)
            starts = tf.where(resident, tf.gather(self.starts, position), 0)
            # Exactly the candidates' frames, back to back (no padding to compare).
            rows = tf.ragged.range(starts, starts + lengths)
            frames = tf.gather(self.frames, rows.flat_values)
            scores = self.fine_graph.scores(query, query_length, frames,
                                            tf.cast(rows.row_starts(), tf.int32), lengths)
            return tf.where(resident, scores, 0.0), resident

        similarity, resident = tf.map_fn(
            one_query, (query, query_length, keys),
            fn_output_signature=(tf.TensorSpec([None], tf.float32),
                                 tf.TensorSpec([None], tf.bool)),
            parallel_iterations=QUERIES_IN_FLIGHT)
        batch = tf.shape(query)[:1]
        return {"similarity": similarity, "resident": resident,
                "index_uid": tf.fill(batch, self.index_uid),
                "fine_fingerprint": tf.fill(batch, self.fine_fingerprint)}


def export_store(base: str | os.PathLike, index, fine, *, name: str = STORE_MODEL,
                 version: int | None = None, serving_root: str | None = None) -> pathlib.Path:
    """Writes ``index``'s fine representations as ``<base>/<name>/<version>`` and lists the
    store in ``<base>/models.config``.

    Args:
        base: the export root (the ``dns`` model's, so one server serves both).
        index: the :class:`~dns_tf.index.store.VideoIndex` (or shard) to keep resident.
        fine: the fine student the index was built with.
        name: the model name; one per shard (``dns_store_0``, ...) when an index is sharded.
        version: default: one more than the newest of ``name`` (a new index generation).
        serving_root: where ``base`` is when the server reads it (as ``export_models``).

    Returns:
        The version directory written.
    """
    base = pathlib.Path(base)
    recorded = index.metadata.get("fingerprints", {}).get("fine")
    if recorded and recorded != fingerprint(fine):
        raise ValueError(f"index at {index.path} was built with fine student {recorded}, not "
                         f"{fingerprint(fine)}: export the store with the index's own student")
    if version is None:
        version = max(available_versions(base / name) if (base / name).is_dir() else [0]) + 1
    written = write_version(ResidentStoreModule(index, fine), base / name, version)
    write_models_config(base, serving_root)
    return written


class ResidentStore:
    """Client side of a served resident store, for one index.

    Args:
        model: a ``serving.client._RemoteModel`` pinned to the store's version.
        index_uid: the index the caller searches; a store of another index is refused.
        fine_fingerprint: the fine student the caller's backend runs.
        keys_per_request: candidates per ``rerank`` request.
        parallel_requests: requests in flight at once.
    """

    def __init__(self, model, index_uid: str, fine_fingerprint: str, keys_per_request: int,
                 parallel_requests: int):
        self.model = model
        self.index_uid = index_uid
        self.fine_fingerprint = fine_fingerprint
        self.keys_per_request = keys_per_request
        self.parallel_requests = parallel_requests

    def _check(self, outputs: dict) -> None:
        uid = outputs["index_uid"][0].decode()
        held = outputs["fine_fingerprint"][0].decode()
        where = (f"model {self.model.model_name!r} version {self.model.version} at "
                 f"{self.model.client.target}")
        if uid != self.index_uid:
            raise ValueError(f"{where} holds index {uid}, not the index searched "
                             f"({self.index_uid})")
        if held != self.fine_fingerprint:
            raise ValueError(f"{where} holds representations of fine student {held}; the "
                             f"backend's fine student is {self.fine_fingerprint}")

    def held_index(self, query: np.ndarray) -> str:
        """The uid of the index the store holds (one request with no real key); a store of this
        index made with another fine student is refused."""
        outputs = self.model.predict(RERANK_SIGNATURE, query=query[None],
                                     query_length=np.array([len(query)], np.int32),
                                     keys=np.full((1, 1), -1, np.int64))
        uid = outputs["index_uid"][0].decode()
        if uid == self.index_uid:
            self._check(outputs)
        return uid

    def scores(self, query: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``([N] similarities, [N] resident)`` of a stored query with the rows ``keys``."""
        similarity = np.zeros(len(keys), np.float32)
        resident = np.zeros(len(keys), bool)

        def score(start: int) -> None:
            chosen = keys[start:start + self.keys_per_request]
            outputs = self.model.predict(RERANK_SIGNATURE, query=query[None],
                                         query_length=np.array([len(query)], np.int32),
                                         keys=chosen[None])
            self._check(outputs)
            # A batching server may pad the key axis; the first len(chosen) are ours.
            similarity[start:start + len(chosen)] = outputs["similarity"][0, :len(chosen)]
            resident[start:start + len(chosen)] = outputs["resident"][0, :len(chosen)]

        starts = range(0, len(keys), self.keys_per_request)
        if len(starts) <= 1:
            list(map(score, starts))
        else:
            with futures.ThreadPoolExecutor(min(self.parallel_requests, len(starts))) as pool:
                list(pool.map(score, starts))  # list(): re-raises the first failure
        return similarity, resident
