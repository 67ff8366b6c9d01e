"""Training the ViSiL teacher on labelled triplets, for users who train their own teacher.

Users of the released teacher need none of this: ``dns-tf convert`` (or
:func:`dns_tf.convert.load_official`) turns the authors' ``visil.pth`` into a
:class:`~dns_tf.models.ViSiLTeacher`.

The loss is ViSiL's (Kordopatis-Zilos et al., ICCV 2019, Sec. 3.4): the triplet loss
``max(0, s(a, n) - s(a, p) + margin)`` averaged over the batch, plus ``r`` times the similarity
regularisation of the comparator outputs of both pairs, which keeps them inside hardtanh's
``[-1, 1]`` where gradients still flow.

Example:

    collection = make_synthetic_collection(SyntheticConfig(dims=64))
    result = train_teacher(collection.features, collection.training_triplets(),
                           TeacherTrainingConfig(dims=64))
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import keras
import tensorflow as tf
from keras import ops

from dns_tf.data.pipelines import triplet_dataset
from dns_tf.models import ViSiLTeacher
from dns_tf.models.losses import triplet_loss
from training.config import TeacherTrainingConfig
from training.distribute import make_strategy
from training.runner import TrainingResult, fit_network, in_scope
from training.scoring import validation_evaluator
from training.trainer import global_sum
from training.triplets import TripletModel, is_coarse

TEACHER_FILE = "teacher.keras"


class TripletTrainer(TripletModel):
    """Trains a fine-grained network on labelled ``anchor``/``positive``/``negative`` batches.

    Logs the loss, its triplet and regularisation parts, and ``triplet_accuracy``: the share of
    triplets whose positive already scores above the negative.

    Args:
        network: a :class:`~dns_tf.models.ViSiLTeacher` (or any fine-grained network).
        margin: the triplet loss margin (gamma).
        r_parameter: weight of the similarity regularisation.
    """

    def __init__(self, network, margin: float = 0.5, r_parameter: float = 0.5, **kwargs):
        kwargs.setdefault("name", "triplet_trainer")
        if is_coarse(network):
            raise TypeError("TripletTrainer trains fine-grained networks; coarse students learn "
                            "from a teacher with training.distill.Distiller")
        super().__init__(network, ("loss", "triplet_loss", "regularization_loss",
                                   "triplet_accuracy"), **kwargs)
        self.margin = margin
        self.r_parameter = r_parameter

    def compute_losses(self, batch, outputs):
        similarities, regularization = outputs
        positive, negative = similarities[:, 0], similarities[:, 1]
        triplet = triplet_loss(positive, negative, self.margin)
        regularization = self.r_parameter * regularization
        total_regularization = global_sum(regularization)
        return triplet, regularization, {
            "loss": triplet + total_regularization,
            "triplet_loss": triplet,
            "regularization_loss": total_regularization,
            "triplet_accuracy": ops.mean(ops.cast(positive > negative, "float32")),
        }


def read_triplets(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Reads labelled triplets: one ``anchor positive negative`` (video ids, whitespace-separated)
    per line; blank lines and lines starting with ``#`` are skipped."""
    path = os.fspath(path)
    triplets = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            ids = line.split()
            if len(ids) != 3:
                raise ValueError(f"{path}:{number}: expected 'anchor positive negative', got "
                                 f"{len(ids)} fields: {line.strip()!r:.120}")
            triplets.append(tuple(ids))
    if not triplets:
        raise ValueError(f"{path}: no triplets")
    return triplets


def train_teacher(features: Mapping, triplets: Sequence[tuple[str, str, str]],
                  config: TeacherTrainingConfig, output_dir: str | None = None, *,
                  teacher: ViSiLTeacher | None = None,
                  validation: tuple[object, Mapping] | None = None, callbacks=(),
                  strategy: tf.distribute.Strategy | None = None,
                  verbose="auto") -> TrainingResult:
    """Trains a ViSiL teacher with the triplet loss.

    Args:
        features: Mapping video id -> ``[T, R, D]`` region features (``D = config.dims``).
        triplets: labelled (anchor, positive, negative) video ids.
        config: the teacher and the training.
        output_dir: backups, checkpoints, logs and ``teacher.keras``; reruns resume.
        teacher: continue training this teacher (e.g. the converted ``visil.pth``) instead of a
            new one.
        validation, callbacks, strategy: as in :func:`training.distill.train_student`.
    """
    strategy = strategy if strategy is not None else make_strategy(config.strategy)
    if teacher is not None:
        teacher = in_scope(strategy, teacher)
    with strategy.scope():
        teacher = teacher if teacher is not None else ViSiLTeacher(dims=config.dims,
                                                                   attention=config.attention)
        trainer = TripletTrainer(teacher, config.margin, config.r_parameter)
        trainer.compile(optimizer=keras.optimizers.Adam(config.learning_rate))

    def dataset_for(first_epoch, epochs):
        return triplet_dataset(features, triplets, batch_size=config.batch_size,
                               seed=config.seed, epochs=epochs, first_epoch=first_epoch,
                               augment=config.augmentation, max_frames=config.max_frames)

    validate = validation_evaluator(teacher, validation, config.max_frames)

    return fit_network(trainer, dataset_for, epochs=config.epochs, strategy=strategy,
                       output_dir=output_dir, network_file=TEACHER_FILE, validate=validate,
                       validate_every=config.validate_every,
                       extra_callbacks=callbacks, verbose=verbose)
