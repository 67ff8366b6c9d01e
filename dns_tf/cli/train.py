"""``dns-tf train teacher|pairs|student|selector``: the DnS training programs.

Every program reads region features either from a file (``--features``: the authors' HDF5 layout or
TFRecord shards, :mod:`dns_tf.data.feature_files`) or from the synthetic collection
(``--synthetic`` with ``--synthetic_*`` settings, :mod:`dns_tf.synthetic.features`). Training flags
come from the dataclasses of :mod:`training.config`; ``--output`` names the run's directory (or the
pairs file), and rerunning an interrupted command with the same ``--output`` resumes it.

The whole chain on the synthetic collection::

    dns-tf train teacher  --synthetic --synthetic_dims 64 --dims 64 --output runs/teacher
    dns-tf train pairs    --synthetic --synthetic_dims 64 --model runs/teacher/teacher.keras \\
                          --output runs/pairs.pk
    dns-tf train student  --synthetic --synthetic_dims 64 --dims 64 --pairs runs/pairs.pk \\
                          --output runs/fine
    dns-tf train student  --synthetic --synthetic_dims 64 --dims 64 --pairs runs/pairs.pk \\
                          --student_type coarse-grained --output runs/coarse
    dns-tf train pairs    ... --model runs/fine/student.keras --relabel runs/pairs.pk \
                          --output fine.pk
    dns-tf train pairs    ... --model runs/coarse/student.keras --relabel runs/pairs.pk \
                          --output coarse.pk
    dns-tf train selector --synthetic --synthetic_dims 64 --dims 64 --fine_pairs fine.pk \\
                          --coarse_pairs coarse.pk --output runs/selector
"""

from __future__ import annotations

import argparse
import contextlib
import json

from dns_tf.cli import fail
from dns_tf.flags import add_arguments, from_arguments
from dns_tf.synthetic.features import SyntheticConfig
from training.config import (DistillationConfig, PairsConfig, SelectorTrainingConfig,
                             TeacherTrainingConfig)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train the teacher, label pairs, distil students, train the selector",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    programs = parser.add_subparsers(dest="program", metavar="PROGRAM", required=True)

    teacher = _program(programs, "teacher", "train the ViSiL teacher on labelled triplets",
                       TeacherTrainingConfig, run_teacher)
    teacher.add_argument("--triplets", help="with --features: text file of labelled triplets, "
                                            "one 'anchor positive negative' line each (the "
                                            "synthetic collection brings its own)")
    teacher.add_argument("--init", help="start from this teacher (.keras, or the authors' "
                                        "visil.pth)")
    _validation_arguments(teacher)

    pairs = _program(programs, "pairs", "label pairs of a collection with the teacher (or a "
                                        "student) in the authors' pickle layout",
                     PairsConfig, run_pairs, output_help="the pairs pickle to write")
    pairs.add_argument("--model", help="the labelling network: .keras, or an authors' .pth")
    pairs.add_argument("--relabel", help="score the pairs of this pickle instead of finding "
                                         "candidates (iterative distillation, selector data)")
    pairs.add_argument("--merge", nargs="+", metavar="SHARD",
                       help="instead of labelling: merge these shard pickles into --output")

    student = _program(programs, "student", "distil a fine- or coarse-grained student from "
                                            "teacher-labelled pairs",
                       DistillationConfig, run_student)
    student.add_argument("--pairs", required=True, help="teacher-labelled pairs (ours or the "
                                                        "authors' trainset_similarities_*.pk)")
    student.add_argument("--init", help="start from this student (.keras or .pth), e.g. the "
                                        "previous round of iterative distillation")
    _validation_arguments(student)

    selector = _program(programs, "selector", "train the selector on pairs scored by the fine "
                                              "and the coarse student",
                        SelectorTrainingConfig, run_selector)
    selector.add_argument("--fine_pairs", required=True,
                          help="the pairs scored by the fine-grained student")
    selector.add_argument("--coarse_pairs", required=True,
                          help="the same pairs scored by the coarse-grained student")


def _program(programs, name: str, help_text: str, config_cls, run, output_help=None):
    parser = programs.add_parser(name, help=help_text, description=help_text + ".")
    inputs = parser.add_argument_group("input features (one of)")
    inputs.add_argument("--features", help="region features: .h5/.hdf5 (authors' layout) or "
                                           "TFRecord shards")
    inputs.add_argument("--synthetic", action="store_true",
                        help="the synthetic FIVR-like collection described by --synthetic_*")
    add_arguments(parser.add_argument_group("synthetic collection"), SyntheticConfig,
                  prefix="synthetic_")
    parser.add_argument("--output", required=True,
                        help=output_help or "the run's directory: backups (resume by rerunning), "
                                            "checkpoint, TensorBoard logs, the trained network")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="Keras progress: 0 silent, 1 progress bar, 2 one line per epoch")
    add_arguments(parser.add_argument_group(config_cls.__name__), config_cls)
    parser.set_defaults(func=lambda args: _run(run, config_cls, args))
    return parser


def _validation_arguments(parser) -> None:
    group = parser.add_argument_group(
        "validation (with --validate_every; --synthetic validates on its own queries)")
    group.add_argument("--validation_dataset", help="FIVR-5K, FIVR-200K, CC_WEB_VIDEO, EVVE or SVD")
    group.add_argument("--validation_annotations", help="that dataset's annotation file")
    group.add_argument("--validation_features", help="that dataset's region features")


def _run(run, config_cls, args) -> int:
    try:
        config = from_arguments(config_cls, args)
        if args.program != "pairs" or not args.merge:
            if bool(args.features) == bool(args.synthetic):
                raise ValueError("give exactly one of --features PATH and --synthetic")
        if args.program != "pairs":
            import keras

            # The seed also fixes the initial weights: every worker starts from the same network.
            keras.utils.set_random_seed(config.seed)
        with contextlib.ExitStack() as stack:
            return run(config, args, stack)
    except (OSError, ValueError, KeyError, TypeError) as error:
        return fail(f"train {args.program}", error, code=2)


def _collection(args):
    from dns_tf.synthetic.features import make_synthetic_collection

    return make_synthetic_collection(from_arguments(SyntheticConfig, args, prefix="synthetic_"))


def _features(args, stack: contextlib.ExitStack):
    """(features, synthetic collection or None)."""
    if args.synthetic:
        collection = _collection(args)
        return collection.features, collection
    from dns_tf.data.feature_files import open_features

    return stack.enter_context(open_features(args.features)), None


def _validation(args, collection, stack):
    """``(benchmark, features)`` to validate on, or None."""
    if collection is not None:
        return collection, collection.features
    if not args.validation_dataset:
        return None
    if not (args.validation_annotations and args.validation_features):
        raise ValueError("--validation_dataset needs --validation_annotations and "
                         "--validation_features")
    from dns_tf.data.feature_files import open_features
    from dns_tf.evaluation.datasets import load_dataset

    benchmark = load_dataset(args.validation_dataset, args.validation_annotations)
    return benchmark, stack.enter_context(open_features(args.validation_features))


def _report(name: str, result) -> None:
    final = {key: values[-1] for key, values in result.history.items() if values}
    print(json.dumps({"program": name, "saved": result.path, "final": final,
                      "validation": result.validation}), flush=True)


def run_teacher(config: TeacherTrainingConfig, args, stack) -> int:
    from dns_tf.convert import load_network
    from training.distribute import make_strategy
    from training.teacher import read_triplets, train_teacher

    strategy = make_strategy(config.strategy)  # before any other TensorFlow work
    features, collection = _features(args, stack)
    if collection is not None:
        triplets = collection.training_triplets(config.seed)
    elif args.triplets:
        triplets = read_triplets(args.triplets)
    else:
        raise ValueError("--features needs --triplets (labelled training triplets)")
    validation = _validation(args, collection, stack) if config.validate_every else None
    teacher = load_network(args.init, what="--init") if args.init else None
    result = train_teacher(features, triplets, config, args.output, teacher=teacher,
                           validation=validation, strategy=strategy, verbose=args.verbose)
    _report("teacher", result)
    return 0


def run_pairs(config: PairsConfig, args, stack) -> int:
    from dns_tf.convert import load_network
    from dns_tf.data.pairs import load_pairs, merge_pairs, save_pairs
    from training.pairs import label_pairs, relabel_pairs

    if args.merge:
        pairs = merge_pairs(args.merge)
    else:
        if not args.model:
            raise ValueError("--model is required to label pairs")
        features, collection = _features(args, stack)
        model = load_network(args.model, what="--model")
        if args.relabel:
            pairs = relabel_pairs(model, features, load_pairs(args.relabel), config)
        else:
            videos = collection.training_pool if collection is not None else None
            pairs = label_pairs(model, features, config, videos)
    saved = save_pairs(args.output, pairs.index, pairs.pairs)
    # Students train only on queries with both a positive and a negative.
    usable = sum(1 for pools in saved.pairs.values() if all(pools.values()))
    print(json.dumps({"program": "pairs", "saved": args.output, "queries": len(saved.pairs),
                      "queries_with_both_pools": usable, "pairs": saved.num_pairs}), flush=True)
    return 0


def run_student(config: DistillationConfig, args, stack) -> int:
    from dns_tf.convert import load_network
    from dns_tf.data.pairs import load_pairs
    from training.distill import train_student
    from training.distribute import make_strategy

    strategy = make_strategy(config.strategy)  # before any other TensorFlow work
    features, collection = _features(args, stack)
    pairs = load_pairs(args.pairs)
    validation = _validation(args, collection, stack) if config.validate_every else None
    student = load_network(args.init, what="--init") if args.init else None
    result = train_student(features, pairs, config, args.output, student=student,
                           validation=validation, strategy=strategy, verbose=args.verbose)
    _report("student", result)
    return 0


def run_selector(config: SelectorTrainingConfig, args, stack) -> int:
    from dns_tf.data.pairs import load_pairs
    from training.distribute import make_strategy
    from training.selector import selector_pairs, split_pairs, train_selector

    strategy = make_strategy(config.strategy)  # before any other TensorFlow work
    features, _ = _features(args, stack)
    pairs = selector_pairs(load_pairs(args.fine_pairs), load_pairs(args.coarse_pairs),
                           config.threshold)
    train, held_out = split_pairs(pairs, config.validation_fraction, config.seed)
    result = train_selector(features, train, held_out, config, args.output,
                            strategy=strategy, verbose=args.verbose)
    _report("selector", result)
    return 0
