"""Distillation: a student learns to reproduce its teacher's video similarities (DnS, Sec. 3.3).

Each epoch, every anchor of the teacher-labelled pairs meets one random positive and one random
negative (:func:`dns_tf.data.pipelines.distillation_dataset`); the loss is the L1 distance between
the student's and the teacher's similarities of those two pairs, plus, for fine-grained students,
``r`` times the similarity regularisation of their comparator outputs. Coarse-grained students
output dot products of unit vectors and learn the teacher's similarities mapped to ``s / 2 + 0.5``
(the authors' ``VideoPairGenerator`` maps the targets, never the student's output).

:class:`Distiller` is the ``keras.Model`` that trains a student with its own ``train_step``
(:class:`training.trainer.NetworkTrainer`), in the manner of keras.io's "Knowledge Distillation"
example: ``fit`` runs it, so training moves from the CPU to several GPUs or workers with
``--strategy``, and Keras callbacks back it up, checkpoint it and log it.

Example:

    pairs = load_pairs("trainset_similarities_teacher.pk")
    with open_features("dns_100k.hdf5") as features:
        result = train_student(features, pairs, DistillationConfig(), output_dir="runs/fg_att")
    result.network                      # the trained FineGrainedStudent (runs/fg_att/student.keras)
"""

from __future__ import annotations

from typing import Mapping

import keras
import tensorflow as tf

from dns_tf.data.pairs import TeacherPairs
from dns_tf.data.pipelines import distillation_dataset
from dns_tf.models import CoarseGrainedStudent, FineGrainedStudent
from dns_tf.models.losses import distillation_loss
from training.config import DistillationConfig
from training.distribute import make_strategy
from training.runner import TrainingResult, fit_network, in_scope
from training.scoring import validation_evaluator
from training.trainer import global_sum
from training.triplets import TripletModel, is_coarse

STUDENT_FILE = "student.keras"


class Distiller(TripletModel):
    """Trains a student on batches of teacher-labelled triplets.

    A batch holds ``anchor``, ``positive``, ``negative`` ``[B, T, R, D]``, their ``*_mask``
    ``[B, T]`` and ``similarity`` ``[B, 2]``: the teacher's similarity of each anchor to its
    positive and to its negative (mapped to ``[0, 1]`` for coarse students by the pipeline).

    Args:
        student: a :class:`~dns_tf.models.FineGrainedStudent` or
            :class:`~dns_tf.models.CoarseGrainedStudent`.
        r_parameter: weight of the similarity regularisation (fine-grained students).

    Example:

    >>> distiller = Distiller(FineGrainedStudent(attention=True))
    >>> distiller.compile(optimizer=keras.optimizers.Adam(1e-4))
    >>> distiller.fit(distillation_dataset(features, pairs, batch_size=32), epochs=1)
    """

    def __init__(self, student, r_parameter: float = 1e-3, **kwargs):
        kwargs.setdefault("name", "distiller")
        loss_names = ("loss", "distillation_loss")
        if not is_coarse(student):  # coarse students have no comparator to regularise
            loss_names += ("regularization_loss",)
        super().__init__(student, loss_names, **kwargs)
        self.r_parameter = r_parameter

    def compute_losses(self, batch, outputs):
        similarities, regularization = outputs
        distillation = distillation_loss(similarities, batch["similarity"])
        if self.coarse:
            return distillation, None, {"loss": distillation, "distillation_loss": distillation}
        regularization = self.r_parameter * regularization
        total_regularization = global_sum(regularization)
        return distillation, regularization, {
            "loss": distillation + total_regularization,
            "distillation_loss": distillation,
            "regularization_loss": total_regularization,
        }


def build_student(config: DistillationConfig) -> keras.Model:
    """The untrained student that ``config`` describes."""
    if config.coarse:
        return CoarseGrainedStudent(
            dims=config.dims, attention=config.attention, transformer=config.transformer,
            transformer_heads=config.transformer_heads,
            transformer_feedforward_dims=config.transformer_feedforward_dims,
            transformer_layers=config.transformer_layers, netvlad=config.netvlad,
            netvlad_clusters=config.netvlad_clusters, netvlad_outdims=config.netvlad_outdims,
            name="coarse_grained_student")
    return FineGrainedStudent(dims=config.dims, attention=config.attention,
                              binarization=config.binarization, bits=config.binary_bits,
                              name="fine_grained_student")


def train_student(features: Mapping, pairs: TeacherPairs, config: DistillationConfig,
                  output_dir: str | None = None, *, student: keras.Model | None = None,
                  validation: tuple[object, Mapping] | None = None,
                  callbacks=(), strategy: tf.distribute.Strategy | None = None,
                  verbose="auto") -> TrainingResult:
    """Distils the teacher's ``pairs`` into a student.

    Args:
        features: Mapping video id -> ``[T, R, D]`` region features of the training videos.
        pairs: the teacher's labelled pairs (:func:`dns_tf.data.pairs.load_pairs`).
        config: the student and the training; ``config.strategy`` picks the devices.
        output_dir: backups, checkpoints, logs and ``student.keras`` (see
            :mod:`training.callbacks`); a rerun with the same directory resumes an interrupted run.
        student: train this student (e.g. the previous round's, loaded from ``.keras``) instead
            of building one from ``config``.
        validation: ``(benchmark, features)`` for the validation mAP every
            ``config.validate_every`` epochs (see :class:`training.scoring.BenchmarkEvaluator`).
        callbacks: more Keras callbacks for ``fit``.
        strategy: the strategy to train under; made from ``config.strategy`` when None (make
            it first thing in a program that loads networks, before any other TensorFlow work).

    Returns:
        The trained student, the training history and the validations.
    """
    strategy = strategy if strategy is not None else make_strategy(config.strategy)
    if student is not None:
        student = in_scope(strategy, student)
    with strategy.scope():
        student = student if student is not None else build_student(config)
        distiller = Distiller(student, config.r_parameter)
        distiller.compile(optimizer=keras.optimizers.Adam(
            config.resolved_learning_rate, weight_decay=config.weight_decay or None))

    def dataset_for(first_epoch, epochs):
        return distillation_dataset(
            features, pairs, batch_size=config.triplets_per_batch, seed=config.seed,
            epochs=epochs, first_epoch=first_epoch, augment=config.augmentation,
            max_frames=config.max_frames, coarse=config.coarse, fraction=config.trainset_fraction,
            frame_multiple=config.frame_multiple)

    validate = validation_evaluator(student, validation, config.max_frames)

    return fit_network(distiller, dataset_for, epochs=config.epochs, strategy=strategy,
                       output_dir=output_dir, network_file=STUDENT_FILE, validate=validate,
                       validate_every=config.validate_every,
                       extra_callbacks=callbacks, verbose=verbose)
