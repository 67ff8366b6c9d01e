"""``dns-tf fit-whitening``: the PCA whitening of a feature file's region vectors."""

from __future__ import annotations

import sys

from dns_tf.data.feature_files import open_features
from dns_tf.features.whitening import fit_whitening


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "fit-whitening", help="fit a PCA whitening on a feature file",
        description="Learns the PCA whitening ({'mean','V','d'}, the authors' layout) of the "
                    "region vectors of a feature file in one streaming pass, e.g. to use "
                    "`extract --backbone keras` features with 512-d networks.")
    parser.add_argument("features", help="a .h5/.hdf5 feature file or TFRecord shards")
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--max_vectors", type=int, default=1_000_000,
                        help="region vectors used (default: 1000000, as the authors)")
    parser.set_defaults(func=run)


def run(args) -> int:
    with open_features(args.features) as features:
        components = fit_whitening((features[video_id] for video_id in features.ids()),
                                   max_vectors=args.max_vectors, progress=True)
    components.save(args.out)
    print(f"{args.features} -> {args.out}: PCA of {components.input_dims}-d vectors",
          file=sys.stderr)
    return 0
