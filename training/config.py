"""What each training program is told: frozen dataclasses with the papers' defaults.

``dns-tf train <program>`` derives its flags from these fields (:mod:`dns_tf.flags`), so a flag,
its default and its help text exist only here. Defaults follow the authors' ``train_student.py``
and ``train_selector.py`` (DnS) and the ViSiL paper (teacher).
"""

from __future__ import annotations

import dataclasses

from dns_tf.flags import field

#: ``--strategy`` values: one process on the default device, all local GPUs, or several workers
#: (``TF_CONFIG``), see :mod:`training.distribute`.
STRATEGIES = ("default", "mirrored", "multi_worker")
STUDENT_TYPES = ("fine-grained", "coarse-grained")
#: Frames per output row of the comparator (its two 2x2 poolings: ``VideoComparator.MIN_FRAMES``;
#: a plain number here so that building the CLI's flags does not load Keras).
COMPARATOR_STRIDE = 4


@dataclasses.dataclass(frozen=True)
class TeacherTrainingConfig:
    """Training ViSiL on labelled (anchor, positive, negative) triplets."""

    dims: int = field(3840, "region feature dimensions of the teacher's input")
    attention: bool = field(True, "the L2-constrained region attention of ViSiL")
    margin: float = field(0.5, "triplet loss margin (ViSiL's gamma)")
    r_parameter: float = field(0.5, "weight of the similarity regularisation loss (ViSiL's r)")
    learning_rate: float = field(1e-5, "Adam learning rate")
    batch_size: int = field(16, "triplets per batch")
    epochs: int = field(100, "passes over the triplets")
    augmentation: bool = field(False, "temporal augmentations of positives and negatives")
    max_frames: int = field(300, "frames kept per video")
    seed: int = field(0, "seeds the triplet order and the augmentations")
    strategy: str = field("default", "tf.distribute strategy", choices=STRATEGIES)
    validate_every: int = field(0, "validation mAP every this many epochs, best model kept "
                                   "(0: never; needs validation data)")

    def __post_init__(self):
        _check_positive(self, "dims", "batch_size", "epochs", "max_frames")
        _check_choice(self, "strategy", STRATEGIES)
        if self.validate_every < 0:
            raise ValueError(f"validate_every must be >= 0, got {self.validate_every}")


@dataclasses.dataclass(frozen=True)
class PairsConfig:
    """Labelling pairs of an unlabelled collection with a teacher (or a student)."""

    candidates: int = field(100, "nearest neighbours per query by the global descriptor (mean of "
                                 "region vectors, L2-normalised) that the model scores")
    random_negatives: int = field(20, "random videos per query scored as well, so that the pools "
                                      "also hold easy negatives")
    positive_threshold: float = field(0.0, "pairs the model scores at least this high go to the "
                                           "positives pool, the others to the negatives")
    batch_size: int = field(32, "target videos scored together")
    max_frames: int = field(300, "frames kept per video")
    shard: int = field(0, "which shard of the queries to label (0-based)")
    num_shards: int = field(1, "split the queries into this many shards (label each with "
                               "--shard, then merge)")
    seed: int = field(0, "seeds the random negatives")

    def __post_init__(self):
        _check_positive(self, "batch_size", "max_frames", "num_shards")
        if self.candidates < 0 or self.random_negatives < 0:
            raise ValueError("candidates and random_negatives must be >= 0, got "
                             f"{self.candidates}, {self.random_negatives}")
        if self.candidates + self.random_negatives == 0:
            raise ValueError("candidates + random_negatives must be positive")
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"shard must be in [0, num_shards={self.num_shards}), "
                             f"got {self.shard}")


@dataclasses.dataclass(frozen=True)
class DistillationConfig:
    """Distilling a teacher's similarities into a fine- or coarse-grained student."""

    student_type: str = field("fine-grained", "which student", choices=STUDENT_TYPES)
    dims: int = field(512, "region feature dimensions")
    attention: bool = field(True, "region attention (fine: S^f_A; coarse: before the "
                                  "transformer)")
    binarization: bool = field(False, "fine-grained only: binary codes (S^f_B)")
    binary_bits: int = field(512, "fine-grained only: bits of the binary codes")
    transformer: bool = field(True, "coarse-grained only: transformer encoder over frames")
    transformer_heads: int = field(8, "coarse-grained only: attention heads")
    transformer_feedforward_dims: int = field(2048, "coarse-grained only: feed-forward width")
    transformer_layers: int = field(1, "coarse-grained only: encoder layers")
    netvlad: bool = field(True, "coarse-grained only: NetVLAD pooling over frames")
    netvlad_clusters: int = field(64, "coarse-grained only: NetVLAD clusters")
    netvlad_outdims: int = field(1024, "coarse-grained only: size of the video vector")
    batch_size: int = field(64, "teacher-labelled pairs per batch (two per anchor: its positive "
                                "and its negative)")
    epochs: int = field(300, "epochs; each draws one positive and one negative per anchor")
    learning_rate: float | None = field(None, "Adam learning rate; None: 1e-4 fine-grained, "
                                              "1e-5 coarse-grained")
    weight_decay: float = field(0.0, "decoupled weight decay of Adam")
    r_parameter: float = field(1e-3, "fine-grained only: weight of the similarity "
                                     "regularisation loss")
    augmentation: bool = field(True, "temporal augmentations of positives and negatives")
    align_frames: bool = field(
        True, "fine-grained only: cut training videos to a multiple of 4 frames, so that the "
              "comparator's two 2x2 poolings see in training what they see at search time, "
              "where each video is compared alone and a last, partial window is dropped (False: "
              "the authors' padded batches, which keep it)")
    trainset_fraction: float = field(1.0, "share of the training videos used")
    max_frames: int = field(300, "frames kept per video")
    seed: int = field(0, "seeds the subset, each epoch's pairs and the augmentations")
    strategy: str = field("default", "tf.distribute strategy", choices=STRATEGIES)
    validate_every: int = field(0, "validation mAP every this many epochs, best model kept "
                                   "(0: never; needs validation data)")

    def __post_init__(self):
        _check_choice(self, "student_type", STUDENT_TYPES)
        _check_choice(self, "strategy", STRATEGIES)
        _check_positive(self, "dims", "binary_bits", "epochs", "max_frames", "batch_size")
        if self.batch_size % 2:
            raise ValueError(f"batch_size counts pairs, two per anchor: it must be even, got "
                             f"{self.batch_size}")
        if not 0 < self.trainset_fraction <= 1:
            raise ValueError(f"trainset_fraction must be in (0, 1], got {self.trainset_fraction}")
        if self.validate_every < 0:
            raise ValueError(f"validate_every must be >= 0, got {self.validate_every}")

    @property
    def coarse(self) -> bool:
        return self.student_type == "coarse-grained"

    @property
    def frame_multiple(self) -> int:
        """Frames a training video is cut to a multiple of (see ``align_frames``)."""
        return COMPARATOR_STRIDE if self.align_frames and not self.coarse else 1

    @property
    def triplets_per_batch(self) -> int:
        return self.batch_size // 2

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-5 if self.coarse else 1e-4


@dataclasses.dataclass(frozen=True)
class SelectorTrainingConfig:
    """Training the selector to spot pairs where the coarse and fine students disagree."""

    dims: int = field(512, "region feature dimensions")
    hidden_size: int = field(100, "width of the selector's MLP")
    num_layers: int = field(1, "hidden blocks of the MLP after the first")
    dropout: float = field(0.5, "dropout of the MLP while training")
    threshold: float = field(0.2, "label 1 where |fine / 2 + 0.5 - coarse| exceeds this")
    batch_size: int = field(64, "pairs per batch")
    epochs: int = field(100, "epochs; each draws a new class-balanced sample")
    pairs_per_class: int = field(5000, "pairs of each label drawn per epoch (at most the "
                                       "smaller class)")
    learning_rate: float = field(1e-4, "Adam learning rate")
    weight_decay: float = field(0.0, "decoupled weight decay of Adam")
    validation_fraction: float = field(0.03, "share of the pairs held out to report accuracy "
                                             "and F1")
    max_frames: int = field(300, "frames kept per video")
    seed: int = field(42, "seeds the held-out split and each epoch's sample")
    strategy: str = field("default", "tf.distribute strategy", choices=STRATEGIES)

    def __post_init__(self):
        _check_choice(self, "strategy", STRATEGIES)
        _check_positive(self, "dims", "hidden_size", "batch_size", "epochs", "pairs_per_class",
                        "max_frames")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got "
                             f"{self.validation_fraction}")
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")


def _check_positive(config, *names: str) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be positive, got "
                             f"{getattr(config, name)}")


def _check_choice(config, name: str, choices) -> None:
    if getattr(config, name) not in choices:
        raise ValueError(f"{type(config).__name__}.{name} must be one of {', '.join(choices)}, "
                         f"got {getattr(config, name)!r}")
