"""The ``keras.Model`` that trains a network: its own ``train_step``, run by ``fit``.

Each training program wraps the network it produces (teacher, student, selector) in a
:class:`NetworkTrainer` subclass that says how a batch becomes outputs (``call``) and outputs become
losses (:meth:`NetworkTrainer.compute_losses`). The ``train_step`` here runs the forward pass under
``tf.GradientTape`` and applies the optimizer, in the manner of keras.io's "Knowledge
Distillation" example, so ``fit`` compiles it with ``tf.function`` and runs it under any
``tf.distribute`` strategy.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from training.distribute import replica_share, spans_workers


class NetworkTrainer(keras.Model):
    """Trains ``network`` (available as ``trainer.network``) with a custom ``train_step``.

    Args:
        network: the built network being trained.
        loss_names: the values :meth:`compute_losses` logs, averaged per epoch by ``fit``.
    """

    def __init__(self, network, loss_names=("loss",), **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.trackers = {name: keras.metrics.Mean(name=name) for name in loss_names}
        self.built = network.built  # nothing of its own to build

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compile(self, optimizer, **kwargs):
        """Compiles with ``optimizer`` only (the losses are the trainer's own) and builds the
        optimizer's state now, in the current strategy's scope."""
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.trainable_variables)

    def compute_losses(self, batch, outputs) -> tuple:
        """``(mean_loss, summed_loss, logs)`` of one batch and ``call``'s outputs on it.

        ``mean_loss`` is a mean over the batch's rows and ``summed_loss`` a sum over them (or
        None); the gradient follows ``mean_loss + summed_loss`` of the *global* batch, whatever the
        number of replicas. ``logs`` maps each of the ``loss_names`` to its value, with sums
        already over the global batch (:func:`global_sum`).
        """
        raise NotImplementedError

    def train_step(self, batch):
        with tf.GradientTape() as tape:
            outputs = self(batch, training=True)
            mean_loss, summed_loss, logs = self.compute_losses(batch, outputs)
            rows = tf.shape(tf.nest.flatten(batch)[0])[0]
            loss = replica_share(mean_loss, rows, summed_loss)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._track(logs)

    def test_step(self, batch):
        return self._track(self.compute_losses(batch, self(batch, training=False))[2])

    def _track(self, logs):
        for name, value in logs.items():
            self.trackers[name].update_state(value)
        results = {name: tracker.result() for name, tracker in self.trackers.items()}
        if spans_workers(tf.distribute.get_strategy()):
            # Across workers Keras (3.15) averages step results with reduce(axis=0), which needs
            # a leading axis.
            results = {name: value[None] for name, value in results.items()}
        return results

    # The one private Keras API this project overrides (tests/training/test_keras_private_api.py
    # fails if Keras stops calling it). Keras (3.15) builds models under a strategy from a sample
    # batch that it first averages over replicas with strategy.reduce(axis=None), which fails on
    # dict batches (keras-team/keras#20329). A trainer is built from the start and compile()
    # builds the optimizer: nothing is left to build.
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        return


def global_sum(summed_loss):
    """A per-replica sum as its global value in the logs (``Mean`` metrics average over
    replicas)."""
    return summed_loss * tf.distribute.get_strategy().num_replicas_in_sync
