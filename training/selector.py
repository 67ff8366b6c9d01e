"""Training the selector: which pairs does the coarse student get wrong enough to re-rank?

The training data are the teacher's pairs scored twice, by the fine student (``[-1, 1]``) and by
the coarse student (trained towards ``[0, 1]``): :func:`training.pairs.relabel_pairs` with
each. As in the authors' ``generate_selector_dataset``, a pair is labelled 1 when
``|fine / 2 + 0.5 - coarse| > threshold`` (the fine similarity mapped to the coarse student's
range) and the selector reads ``[query score, target score, coarse similarity]``, where a video's
score is its self-similarity summary (:meth:`dns_tf.models.SelectorNetwork.index_video`). A share
of the pairs (3 %, seeded) is held out; each epoch trains on a new class-balanced sample with
binary cross-entropy, and accuracy and F1 are measured on a class-balanced sample of the held-out
pairs after every epoch, as the reference does (:class:`HeldOutEvaluator`).

Example:

    fine = relabel_pairs(fine_student, features, teacher_pairs)
    coarse = relabel_pairs(coarse_student, features, teacher_pairs)
    train, held_out = split_pairs(selector_pairs(fine, coarse, threshold=0.2), 0.03)
    result = train_selector(features, train, held_out, SelectorTrainingConfig())
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from dns_tf.data.pairs import POOLS, TeacherPairs
from dns_tf.data.pipelines import selector_dataset
from dns_tf.models import SelectorNetwork
from training.config import SelectorTrainingConfig
from training.distribute import make_strategy
from training.runner import TrainingResult, fit_network, in_scope
from training.scoring import length_batches
from training.trainer import NetworkTrainer

SELECTOR_FILE = "selector.keras"


@dataclasses.dataclass(frozen=True)
class SelectorPairs:
    """Video pairs with the coarse student's similarity and the selector's target.

    Attributes:
        queries, targets: ``[N]`` video ids.
        coarse: float32 ``[N]``, the coarse student's similarity (an input of the selector).
        fine: float32 ``[N]``, the fine student's similarity in ``[-1, 1]``.
        labels: float32 ``[N]``, 1 where the two disagree by more than the threshold.
    """

    queries: tuple[str, ...]
    targets: tuple[str, ...]
    coarse: np.ndarray
    fine: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, rows: Sequence[int]) -> "SelectorPairs":
        rows = np.asarray(rows, dtype=np.int64)
        return SelectorPairs(tuple(self.queries[i] for i in rows),
                             tuple(self.targets[i] for i in rows),
                             self.coarse[rows], self.fine[rows], self.labels[rows])


def selector_pairs(fine: TeacherPairs, coarse: TeacherPairs,
                   threshold: float = 0.2) -> SelectorPairs:
    """Joins the fine and the coarse student's scores of the same pairs (matched by video ids).

    Raises:
        ValueError: the two share no pair, or every pair has the same label.
    """
    coarse_scores = {}
    for query, pools in coarse.pairs.items():
        for pool in POOLS:
            for target, similarity in pools[pool].items():
                coarse_scores[coarse.index[query], coarse.index[target]] = similarity
    queries, targets, coarse_values, fine_values = [], [], [], []
    for query, pools in fine.pairs.items():
        for pool in POOLS:
            for target, similarity in pools[pool].items():
                key = (fine.index[query], fine.index[target])
                if key in coarse_scores:
                    queries.append(key[0])
                    targets.append(key[1])
                    fine_values.append(similarity)
                    coarse_values.append(coarse_scores[key])
    if not queries:
        raise ValueError(f"{fine.source} and {coarse.source} share no (query, target) pair; "
                         "score the same pairs with both students (relabel_pairs)")
    fine_values = np.asarray(fine_values, np.float32)
    coarse_values = np.asarray(coarse_values, np.float32)
    labels = (np.abs(fine_values / 2 + 0.5 - coarse_values) > threshold).astype(np.float32)
    if labels.min() == labels.max():
        raise ValueError(f"all {len(labels)} pairs have label {int(labels[0])} at threshold "
                         f"{threshold}; the selector needs both kinds")
    return SelectorPairs(tuple(queries), tuple(targets), coarse_values, fine_values, labels)


def split_pairs(pairs: SelectorPairs, held_out_fraction: float = 0.03,
                seed: int = 42) -> tuple[SelectorPairs, SelectorPairs]:
    """A seeded random split into (training, held-out) pairs."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    held_out = max(1, int(round(held_out_fraction * len(pairs))))
    return pairs.subset(np.sort(order[held_out:])), pairs.subset(np.sort(order[:held_out]))


class SelectorTrainer(NetworkTrainer):
    """The selector as ``fit`` trains it: both videos' self-similarity scores are computed in the
    forward pass (so the attention and comparator learn too), then the MLP; binary cross-entropy
    against the labels.

    Inputs are the selector pipeline's batches (:func:`dns_tf.data.pipelines.selector_dataset`):
    ``query``, ``target`` ``[B, T, R, D]``, ``query_mask``, ``target_mask`` ``[B, T]``,
    ``similarity`` (coarse) and ``label`` ``[B]``. ``call`` returns probabilities ``[B]``.
    """

    def __init__(self, selector: SelectorNetwork, **kwargs):
        kwargs.setdefault("name", "selector_trainer")
        super().__init__(selector, ("loss", "accuracy"), **kwargs)

    def call(self, batch, training=False):
        scores = self.network.index_video(
            ops.concatenate([batch["query"], batch["target"]], axis=0),
            ops.concatenate([batch["query_mask"], batch["target_mask"]], axis=0))
        query_scores, target_scores = ops.split(scores, 2, axis=0)
        mlp_input = ops.concatenate(
            [query_scores, target_scores, ops.expand_dims(batch["similarity"], 1)], axis=1)
        return self.network.score(mlp_input, training=training)[:, 0]

    def compute_losses(self, batch, probabilities):
        labels = batch["label"]
        loss = ops.mean(keras.losses.binary_crossentropy(labels[:, None],
                                                         probabilities[:, None]))
        accuracy = ops.mean(ops.cast((probabilities > 0.5) == (labels > 0.5), "float32"))
        return loss, None, {"loss": loss, "accuracy": accuracy}


class SelectorScorer:
    """The selector's output for video pairs, computed the way an index does: each video's
    self-similarity score once, then the MLP (inference mode).

    Args:
        selector: the :class:`~dns_tf.models.SelectorNetwork`; its current weights are used at
            each call.
        features: Mapping video id -> ``[T, R, D]``.
    """

    def __init__(self, selector: SelectorNetwork, features: Mapping, batch_size: int = 32,
                 max_frames: int | None = None):
        self.selector = selector
        self.features = features
        self.batch_size = batch_size
        self.max_frames = max_frames
        self._index = tf.function(lambda videos, mask: selector.index_video(videos, mask),
                                  input_signature=[tf.TensorSpec([None] * 4, tf.float32),
                                                   tf.TensorSpec([None, None], tf.float32)])

    def video_scores(self, video_ids: Sequence[str]) -> dict[str, float]:
        """Each video's self-similarity score, as an index stores it."""
        scores = {}
        # One length per batch: the selector's comparator scores a padded video otherwise.
        for ids, videos, mask in length_batches(self.features, list(dict.fromkeys(video_ids)),
                                                self.batch_size, self.max_frames,
                                                same_length=True):
            scores.update(zip(ids, np.asarray(self._index(videos, mask))[:, 0].tolist()))
        return scores

    def probabilities(self, pairs: SelectorPairs) -> np.ndarray:
        """The selector's output ``[N]`` for each pair."""
        scores = self.video_scores(pairs.queries + pairs.targets)
        mlp_input = np.stack([[scores[q] for q in pairs.queries],
                              [scores[t] for t in pairs.targets], pairs.coarse],
                             axis=1).astype(np.float32)
        return np.asarray(self.selector.score(mlp_input, training=False))[:, 0]


def classification_metrics(labels, probabilities, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of ``probabilities > threshold`` against 0/1 labels."""
    labels = np.asarray(labels) > 0.5
    predicted = np.asarray(probabilities) > threshold
    true_positives = float(np.sum(predicted & labels))
    precision = true_positives / max(float(predicted.sum()), 1.0)
    recall = true_positives / max(float(labels.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float(np.mean(predicted == labels)), "precision": precision,
            "recall": recall, "f1": f1}


def routing_recall(labels, scores, fraction: float) -> float:
    """Share of the label-1 pairs among the ``fraction`` of pairs with the highest scores: what
    re-ranking that share of the pairs with the fine student would catch (random: ``fraction``)."""
    labels = np.asarray(labels) > 0.5
    chosen = np.argsort(-np.asarray(scores), kind="stable")[:int(round(fraction * len(labels)))]
    return float(labels[chosen].sum() / max(labels.sum(), 1))


class HeldOutEvaluator:
    """Accuracy, precision, recall and F1 of the selector on a class-balanced sample of held-out
    pairs, computed as often as asked.

    As in the reference, held-out pairs go through the training forward pass (query and target
    padded together in batches) in inference mode. The self-similarity score of a video shifts a
    little with padding (pooling windows at its end), so this is the protocol that matches what the
    MLP was trained on; :class:`SelectorScorer` scores videos as an index does.
    """

    def __init__(self, trainer: SelectorTrainer, features: Mapping, pairs: SelectorPairs,
                 batch_size: int = 64, seed: int = 42, max_frames: int | None = None):
        self.dataset = selector_dataset(features, pairs.queries, pairs.targets, pairs.coarse,
                                        pairs.labels, batch_size=batch_size, seed=seed,
                                        max_frames=max_frames)
        self._predict = tf.function(lambda batch: trainer(batch, training=False),
                                    input_signature=[self.dataset.element_spec])

    def __call__(self) -> dict[str, float]:
        labels, probabilities = [], []
        for batch in self.dataset:
            labels.append(batch["label"].numpy())
            probabilities.append(np.asarray(self._predict(batch)))
        return classification_metrics(np.concatenate(labels), np.concatenate(probabilities))


def train_selector(features: Mapping, train: SelectorPairs, held_out: SelectorPairs | None,
                   config: SelectorTrainingConfig, output_dir: str | None = None, *,
                   selector: SelectorNetwork | None = None, callbacks=(),
                   strategy: tf.distribute.Strategy | None = None,
                   verbose="auto") -> TrainingResult:
    """Trains the selector with ``Model.fit`` on class-balanced samples of ``train``.

    Args:
        features: Mapping video id -> ``[T, R, D]`` region features (the students' features).
        train: labelled pairs to learn from (:func:`selector_pairs`, :func:`split_pairs`).
        held_out: pairs to report accuracy and F1 on after every epoch (``val_accuracy``,
            ``val_f1``, ...); the best selector by F1 is kept as ``best.keras``. None skips this.
        config: the selector and the training.
        output_dir: backups, checkpoints, logs and ``selector.keras``; reruns resume.
        selector: continue training this selector instead of a new one.
        callbacks: more Keras callbacks for ``fit``.
        strategy: the strategy to train under; made from ``config.strategy`` when None (make
            it first thing in a program that loads networks, before any other TensorFlow work).
    """
    strategy = strategy if strategy is not None else make_strategy(config.strategy)
    if selector is not None:
        selector = in_scope(strategy, selector)
    with strategy.scope():
        selector = selector if selector is not None else SelectorNetwork(
            dims=config.dims, hidden_size=config.hidden_size, num_layers=config.num_layers,
            dropout=config.dropout, name="selector")
        trainer = SelectorTrainer(selector)
        trainer.compile(optimizer=keras.optimizers.Adam(
            config.learning_rate, weight_decay=config.weight_decay or None))

    def dataset_for(first_epoch, epochs):
        return selector_dataset(features, train.queries, train.targets, train.coarse,
                                train.labels, batch_size=config.batch_size, seed=config.seed,
                                epochs=epochs, first_epoch=first_epoch,
                                per_class=config.pairs_per_class, max_frames=config.max_frames)

    validate = None
    if held_out is not None:
        validate = HeldOutEvaluator(trainer, features, held_out, config.batch_size, config.seed,
                                    config.max_frames)

    return fit_network(trainer, dataset_for, epochs=config.epochs, strategy=strategy,
                       output_dir=output_dir, network_file=SELECTOR_FILE, validate=validate,
                       validate_every=1 if held_out is not None else 0, monitor="f1",
                       extra_callbacks=callbacks, verbose=verbose)
