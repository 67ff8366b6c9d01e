"""Running one training program on one device, all local GPUs, or several workers.

``--strategy`` picks a ``tf.distribute.Strategy``; models and optimizers are created in its
``scope()`` and ``Model.fit`` does the rest. Three things need care and live here:

* **Identical global batches.** The tf.data pipelines produce *global* batches, the same for the
  same seed in every process. :func:`distribute_batches` hands replica ``k`` of ``n`` rows
  ``[k B / n, (k + 1) B / n)`` of each one, so one worker with batch B and two workers with B / 2
  each see exactly the same examples per step (and train the same weights, up to the order of
  floating-point sums).
* **Losses summed over replicas.** Gradients are all-reduced by summation, so a per-replica loss
  that is a mean over its rows is weighted by its share of the global batch's rows, while a loss
  that is a sum over rows (the similarity regularisation) is kept whole (:func:`replica_share`).
* **Files.** Only the chief writes checkpoints, logs and the final model; other workers write to
  throwaway directories of their own (:func:`worker_path`), as TensorFlow's multi-worker guide
  recommends. Backups for resuming are the exception: every worker must restore the same state, so
  each keeps its own under the run's directory (:func:`backup_path`). Workers that restart
  together after a failure resume from the same epoch.

Multi-worker training reads the cluster from ``TF_CONFIG``; each worker runs the same command::

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}' \
        dns-tf train student ... --strategy multi_worker
"""

from __future__ import annotations

import json
import os
import tempfile

import tensorflow as tf

from training.config import STRATEGIES


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy called ``name`` (one of :data:`training.config.STRATEGIES`).

    ``default`` is TensorFlow's default strategy (one device, no replication); ``mirrored`` copies
    the model to every local GPU (or the CPU when there is none); ``multi_worker`` synchronises the
    workers listed in ``TF_CONFIG``. Create it before any other TensorFlow work in the process.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multi_worker needs TF_CONFIG describing the cluster, e.g. "
                             '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                             '"task": {"type": "worker", "index": 0}}')
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the outputs: always, except on multi-worker non-chiefs."""
    if not spans_workers(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and "chief" not in resolver.cluster_spec().as_dict())


def worker_path(strategy: tf.distribute.Strategy, path: str) -> str:
    """``path`` on the chief; a private temporary directory on other workers."""
    if is_chief(strategy):
        return path
    return tempfile.mkdtemp(prefix=f"dns-tf-worker-{_task_id(strategy)}-")


def backup_path(strategy: tf.distribute.Strategy, backup_dir: str) -> str:
    """Where this process backs up its training state: ``backup_dir`` itself with one worker,
    ``backup_dir/<task>`` for each of several workers (same files, no two writers)."""
    if spans_workers(strategy):
        return os.path.join(backup_dir, _task_id(strategy))
    return backup_dir


def spans_workers(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` synchronises several worker processes."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return False
    cluster = resolver.cluster_spec().as_dict()
    return sum(len(cluster.get(task, ())) for task in ("chief", "worker")) > 1


def _task_id(strategy) -> str:
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}{resolver.task_id}"


def replica_share(mean_loss, rows, summed_loss=None):
    """This replica's part of a loss whose gradients are summed over replicas.

    Args:
        mean_loss: a mean over this replica's ``rows`` rows; weighted by ``rows`` over the rows of
            the global batch, so the parts add up to the global mean even when the last batch of
            an epoch splits unevenly.
        rows: this replica's rows in the batch.
        summed_loss: a sum over this replica's rows, or None; kept as it is.
    """
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        rows = tf.cast(rows, mean_loss.dtype)
        mean_loss = mean_loss * rows / context.all_reduce(tf.distribute.ReduceOp.SUM, rows)
    return mean_loss if summed_loss is None else mean_loss + summed_loss


def distribute_batches(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """Splits each global batch (a dict of ``[B, ...]`` tensors) among the replicas.

    Returns ``dataset`` itself under a single replica, else a distributed dataset for ``fit``: each
    input pipeline (one per worker) yields, per global batch, the row slices of its local replicas
    in order. Rows are split as evenly as possible (``B`` need not divide by the replica count).
    """
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return dataset

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def local_slices(batch):
            size = tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0]

            def replica_rows(k):
                start = (first + k) * size // replicas
                end = (first + k + 1) * size // replicas
                return tf.nest.map_structure(lambda t: t[start:end], batch)

            return tf.data.Dataset.range(local).map(replica_rows)

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return dataset.flat_map(local_slices).with_options(options)

    return strategy.distribute_datasets_from_function(dataset_fn)


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line for logs: the strategy and its replicas."""
    name = type(strategy).__name__
    config = os.environ.get("TF_CONFIG")
    task = json.loads(config).get("task") if config and "MultiWorker" in name else None
    return (f"{name} with {strategy.num_replicas_in_sync} replica(s)"
            + (f", task {task}" if task else ""))
