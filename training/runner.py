"""Running ``Model.fit`` for a training program: resume, distribution, callbacks, final save.

Every program (teacher, students, selector) trains a ``keras.Model`` wrapper whose ``network``
attribute is the network it produces; :func:`fit_network` does the rest the same way for all:

1. finds the epoch an interrupted run in ``output_dir`` stopped at (:func:`resumed_epoch`) and asks
   for the input pipeline from there, so a resumed run sees the batches an uninterrupted one would;
2. splits global batches among the strategy's replicas (:func:`distribute_batches`);
3. fits with BackupAndRestore, a per-epoch checkpoint, TensorBoard and, optionally, validation;
4. saves the network as ``<output_dir>/<network_file>`` (chief only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable

import keras
import tensorflow as tf

from training.callbacks import (BACKUP, BEST, ValidationCallback, resumed_epoch,
                                standard_callbacks)
from training.distribute import backup_path, distribute_batches, is_chief, worker_path


@dataclasses.dataclass
class TrainingResult:
    """What a training program returns.

    Attributes:
        network: the trained network (teacher, student or selector).
        history: ``fit``'s per-epoch logs ``{name: [value per epoch]}`` of this run.
        validation: ``[(epoch, metrics)]`` of each validation, in order.
        path: where the network was saved, if it was.
    """

    network: keras.Model
    history: dict[str, list[float]]
    validation: list[tuple[int, dict]] = dataclasses.field(default_factory=list)
    path: str | None = None


def in_scope(strategy: tf.distribute.Strategy, network: keras.Model) -> keras.Model:
    """``network`` with variables that ``strategy`` owns: itself if they already are (it was
    built in ``strategy.scope()``), else a copy built there with the same weights."""
    if all(strategy.extended.variable_created_in_scope(w.value) for w in network.weights):
        return network
    with strategy.scope():
        copy = type(network).from_config(network.get_config())
    copy.set_weights(network.get_weights())
    return copy


def fit_network(trainer: keras.Model, dataset_for: Callable[[int, int], tf.data.Dataset], *,
                epochs: int, strategy: tf.distribute.Strategy, output_dir: str | None,
                network_file: str, validate: Callable[[], dict] | None = None,
                validate_every: int = 0, monitor: str = "mAP", extra_callbacks=(),
                verbose="auto") -> TrainingResult:
    """Trains ``trainer`` (compiled, created in ``strategy.scope()``) for ``epochs`` epochs.

    Args:
        dataset_for: ``(first_epoch, epochs) -> dataset`` of global batches covering those epochs.
        output_dir: where the run's files go (see :mod:`training.callbacks`); None writes nothing
            and cannot resume.
        network_file: file name of the trained network in ``output_dir``.
        validate: returns validation metrics; run every ``validate_every`` epochs, the network
            with the best ``monitor`` metric is kept as ``best.keras``.
    """
    write_dir = backup_dir = None
    callbacks = []
    if output_dir is not None:
        write_dir = worker_path(strategy, output_dir)
        backup_dir = backup_path(strategy, os.path.join(output_dir, BACKUP))
        callbacks = standard_callbacks(write_dir, backup_dir)
    callbacks += list(extra_callbacks)
    first_epoch = resumed_epoch(backup_dir)
    # A run that crashed after its last epoch still needs fit() to restore the weights.
    remaining = max(epochs - first_epoch, 1)
    dataset = dataset_for(min(first_epoch, epochs - 1), remaining)
    steps_per_epoch = int(dataset.cardinality()) // remaining
    validation = None
    if validate is not None and validate_every:
        validation = ValidationCallback(
            validate, validate_every, epochs, monitor=monitor,
            best_path=None if write_dir is None else os.path.join(write_dir, BEST),
            verbose=verbose != 0)
        callbacks.append(validation)
    history = trainer.fit(distribute_batches(strategy, dataset), epochs=epochs,
                          steps_per_epoch=steps_per_epoch, callbacks=callbacks, shuffle=False,
                          verbose=verbose)
    path = None
    if output_dir is not None and is_chief(strategy):
        path = os.path.join(output_dir, network_file)
        trainer.network.save(path)
        with contextlib.suppress(OSError):  # the workers' backup folders are gone: tidy up
            os.rmdir(os.path.join(output_dir, BACKUP))
    return TrainingResult(trainer.network, history.history,
                          validation.history if validation else [], path)
