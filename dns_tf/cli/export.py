"""``dns-tf export``: the DnS networks as versioned SavedModels for TF Serving.

    dns-tf export --coarse cg_student.pth --fine fg_bin_student.pth --selector selector.pth \\
        [--teacher visil.pth] [--features resnet50.pth --pca pca_resnet50_vcdb_1M.pth] \\
        [--index videos.idx] --out export/ [--version N] [--serving_root /models]
    dns-tf export --index videos.idx --out export/ [--store_name dns_store]   # a new generation

Networks are ``.keras`` files (``dns-tf convert``, training) or the authors' ``.pth`` checkpoints.
Writes ``<out>/dns/<N>/`` (students + selector), ``<out>/dns_features/<N>/`` (with ``--features``),
``<out>/dns_teacher/<N>/`` (with ``--teacher``), ``<out>/models.config`` and
``<out>/batching_parameters.txt``; the signatures are listed in ``serving/export.py`` and the
README. With ``--index``, the index's fine representations are written as a resident store,
``<out>/<store_name>/<next version>/`` (``serving/resident_store.py``): queries then send row keys
instead of targets. ``--index`` alone exports only the store, with the fine student the index
keeps (``dns-tf index create`` copies it in); re-run it for each new generation of the index.
Serve with ``dns-tf serve --model_config_file <out>/models.config`` or
``tensorflow_model_server`` (the Docker image expects ``--serving_root /models``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from dns_tf.flags import add_arguments, field, from_arguments


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What ``dns-tf export`` writes, and from which networks."""

    coarse: str | None = field(None, "coarse-grained student: .keras or official .pth (required)")
    fine: str | None = field(None, "fine-grained student: .keras or official .pth (required)")
    selector: str | None = field(None, "selector trained for these students: .keras or .pth "
                                       "(required)")
    out: str | None = field(None, "export root: <out>/<model>/<version>/ (required)")
    teacher: str | None = field(None, "ViSiL teacher (.keras or .pth) to serve as dns_teacher")
    features: str | None = field(None, "torchvision resnet50 state_dict (.pth or .npz) to serve "
                                       "the feature extractor as dns_features")
    pca: str | None = field(None, "PCA whitening of the extractor ({'mean','V','d'}, .pth or .npz)")
    dims: int | None = field(None, "PCA components kept (default: the students' input size)")
    frame_size: int = field(224, "side of the square uint8 frames dns_features takes")
    version: int | None = field(None, "version of the exported models (default: newest under "
                                      "--out plus one)")
    serving_root: str | None = field(None, "path of --out as the server sees it, written into "
                                           "models.config (default: --out's absolute path; the "
                                           "Docker image: /models)")


    index: str | None = field(None, "video index whose fine representations to serve resident "
                                    "(alone: only the store, with the index's fine student)")
    store_name: str = field("dns_store", "model name of the resident store (one per shard)")


NETWORKS = ("coarse", "fine", "selector")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export the DnS networks as SavedModels for TF Serving",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, ExportConfig)
    parser.set_defaults(func=run, parser=parser)


def run(args) -> int:
    config = from_arguments(ExportConfig, args)
    networks = [name for name in NETWORKS if getattr(config, name) is not None]
    required = ([] if config.index and not networks else list(NETWORKS)) + ["out"]
    missing = [f"--{name}" for name in required if getattr(config, name) is None]
    if missing:
        args.parser.error(f"the following arguments are required: {', '.join(missing)}")
    if config.pca and not config.features:
        args.parser.error("--pca belongs to the feature extractor: give --features as well")

    from dns_tf.convert import load_network
    from dns_tf.index.store import VideoIndex, VideoIndexError
    from dns_tf.models import (CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork,
                               ViSiLTeacher)
    from serving.export import export_models
    from serving.resident_store import export_store

    if config.index and not networks:
        try:
            with VideoIndex.open(config.index, readonly=True) as index:
                fine = _index_fine_student(index)
                path = export_store(config.out, index, fine, name=config.store_name,
                                    serving_root=config.serving_root)
        except (OSError, ValueError, VideoIndexError) as error:
            print(f"dns-tf export: error: {error}", file=sys.stderr)
            return 1
        print(f"{config.store_name}: version {path.name} -> {path}")
        return 0
    try:
        coarse = load_network(config.coarse, CoarseGrainedStudent, "--coarse")
        fine = load_network(config.fine, FineGrainedStudent, "--fine")
        selector = load_network(config.selector, SelectorNetwork, "--selector")
        teacher = (load_network(config.teacher, ViSiLTeacher, "--teacher")
                   if config.teacher else None)
        extractor = None
        if config.features:
            from dns_tf.features.extractor import FeatureExtractor
            extractor = FeatureExtractor.from_official(
                config.features, config.pca, config.dims or (fine.dims if config.pca else None))
        result = export_models(config.out, coarse, fine, selector, teacher=teacher,
                               extractor=extractor, version=config.version,
                               frame_size=config.frame_size, serving_root=config.serving_root)
        store = None
        if config.index:
            with VideoIndex.open(config.index, readonly=True) as index:
                store = export_store(config.out, index, fine, name=config.store_name,
                                     serving_root=config.serving_root)
    except (OSError, ValueError, VideoIndexError) as error:
        print(f"dns-tf export: error: {error}", file=sys.stderr)
        return 1
    for name, path in result.models.items():
        print(f"{name}: version {result.version} -> {path}")
    if store is not None:
        print(f"{config.store_name}: version {store.name} -> {store}")
    print(f"models.config: {result.models_config}")
    print(f"batching parameters: {result.batching_parameters}")
    return 0


def _index_fine_student(index):
    """The fine student an index keeps with it (``dns-tf index create``)."""
    from dns_tf.indexing import open_backend

    return open_backend(index).fine_student
