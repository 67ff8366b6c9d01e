"""The ``dns-tf`` command line: argument parsing only, the work lives in the library.

Each subcommand is a module with ``register(subparsers)`` that adds its parser and sets
``func`` (called with the parsed arguments, returns an exit code or None).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# One line per subcommand module; each registers itself.
COMMAND_MODULES = (
    "dns_tf.convert.command",
    "dns_tf.convert.download_command",
    "dns_tf.evaluation.command",
    "dns_tf.evaluation.calibrate_command",
    "serving.command",
    "dns_tf.bench.command",
    "dns_tf.features.command",
    "dns_tf.data.collection_command",
    "serving.export_command",
    "serving.search_command",
    "dns_tf.demo",
    "training.command",
    "dns_tf.index.command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dns-tf",
        description="DnS (Distill-and-Select) video retrieval on TensorFlow/Keras.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
