"""``dns-tf convert``: an official checkpoint in, a Keras file out (no torch needed to load it)."""

import os
import sys

import numpy as np


def register(subparsers):
    parser = subparsers.add_parser(
        "convert", help="convert an official DnS/ViSiL checkpoint to a Keras file",
        description="Reads an authors' checkpoint (.pth, safely, without torch) and writes a "
                    "Keras 3 model file (.keras). PCA and ITQ files become .npz in the official "
                    "layout.")
    parser.add_argument("checkpoint", help="fg_*_student.pth, cg_student.pth, selector.pth, "
                                           "visil.pth, a PCA or an ITQ file")
    parser.add_argument("output", help="output path (.keras for networks, .npz for PCA/ITQ)")
    parser.set_defaults(func=run)


def run(args):
    from dns_tf.convert.official import CheckpointMismatchError, load_official
    from dns_tf.convert.torch_pickle import CheckpointFormatError

    try:
        converted = load_official(args.checkpoint)
    except (CheckpointFormatError, CheckpointMismatchError, OSError) as error:
        print(f"dns-tf convert: error: {error}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if isinstance(converted, np.ndarray):
        np.savez(_with_suffix(args.output, ".npz"), proj=converted)
        description = f"ITQ projection {converted.shape}"
    elif isinstance(converted, dict):
        np.savez(_with_suffix(args.output, ".npz"), **converted)
        description = f"PCA whitening, {converted['V'].shape[1]} components"
    else:
        converted.save(_with_suffix(args.output, ".keras"))
        description = (f"{type(converted).__name__} "
                       f"({converted.count_params():,} parameters)")
    print(f"{args.checkpoint} -> {args.output}: {description}")
    return 0


def _with_suffix(path, suffix):
    if not path.endswith(suffix):
        raise SystemExit(f"dns-tf convert: output for this checkpoint must end with {suffix}: "
                         f"{path}")
    return path
