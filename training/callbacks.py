"""Callbacks shared by the training programs, and the layout of a run's output directory.

A run writes into one directory::

    <output>/backup/            BackupAndRestore: resume after a crash (removed when the run ends)
    <output>/checkpoint.keras   the network after the latest epoch (ModelCheckpoint)
    <output>/best.keras         the network at its best validation mAP (ValidationCallback)
    <output>/logs/              TensorBoard
    <output>/<network>.keras    the trained network (written by the program at the end)

Checkpoints hold the *network* (teacher, student, selector), not the Keras model that trains it, so
every ``.keras`` file here loads with :func:`dns_tf.models.load_model`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable

import keras

BACKUP, CHECKPOINT, BEST, LOGS = "backup", "checkpoint.keras", "best.keras", "logs"


def resumed_epoch(backup_dir: str | None) -> int:
    """The epoch a run backed up in ``backup_dir`` resumes from: 0 for a fresh run.

    ``BackupAndRestore`` restores weights, optimizer state and the epoch counter inside ``fit``,
    but the input pipeline is built before: it must start at the same epoch to draw the same pairs
    and augmentations as an uninterrupted run would.
    """
    if backup_dir is None:
        return 0
    metadata = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(metadata):
        return 0
    with open(metadata, encoding="utf-8") as f:
        try:
            return int(json.load(f)["epoch"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{metadata}: unreadable backup metadata ({error}); remove "
                             f"{os.path.dirname(metadata)} to start over") from None


class NetworkCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that saves ``trainer.network`` (the network being trained) instead of
    the training wrapper, so checkpoints are ordinary network files."""

    def set_model(self, model):
        super().set_model(model.network)


class ValidationCallback(keras.callbacks.Callback):
    """Evaluates retrieval every ``every`` epochs (and after the last), keeps the best network.

    Args:
        evaluate: called with no arguments, returns ``{metric: value}`` (see
            :func:`training.scoring.evaluate_model`); each is logged as ``val_<metric>``.
        every: epochs between evaluations.
        epochs: the run's last epoch count, so that the final epoch is always evaluated.
        monitor: the metric to maximise.
        best_path: where the best network is saved (``.keras``); None keeps nothing.
        verbose: print the metrics.
    """

    def __init__(self, evaluate: Callable[[], dict], every: int, epochs: int,
                 monitor: str = "mAP", best_path: str | None = None, verbose: bool = True):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be positive, got {every}")
        self.evaluate = evaluate
        self.every = every
        self.epochs = epochs
        self.monitor = monitor
        self.best_path = best_path
        self.verbose = verbose
        self.best = -math.inf
        self.history: list[tuple[int, dict]] = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every and epoch + 1 != self.epochs:
            return
        metrics = self.evaluate()
        if self.monitor not in metrics:
            raise KeyError(f"validation returned {sorted(metrics)}, no {self.monitor!r}")
        self.history.append((epoch + 1, metrics))
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in metrics.items()})
        improved = metrics[self.monitor] > self.best
        if improved:
            self.best = metrics[self.monitor]
            if self.best_path is not None:
                self.model.network.save(self.best_path)
        if self.verbose:
            values = " ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            print(f"\nvalidation after epoch {epoch + 1}: {values}"
                  + (" (best)" if improved else ""), flush=True)


def standard_callbacks(output_dir: str, backup_dir: str) -> list:
    """BackupAndRestore into ``backup_dir``; the latest-epoch checkpoint and TensorBoard logs
    under ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        # First, so that the weights are restored before any other callback sees the model.
        keras.callbacks.BackupAndRestore(backup_dir),
        NetworkCheckpoint(os.path.join(output_dir, CHECKPOINT), save_freq="epoch"),
        keras.callbacks.TensorBoard(os.path.join(output_dir, LOGS), write_graph=False),
    ]
