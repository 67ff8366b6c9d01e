"""The ``dns-tf`` command line: argument parsing, one module per command, the work in the library.

Each command ``NAME`` is the module ``dns_tf.cli.NAME`` (``-`` spelled ``_``) with
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed arguments,
returning an exit code or None). Only the chosen command's module is imported, so ``dns-tf --help``
and a light command do not load TensorFlow, and the library never imports a command.

Exit codes, for every command: 0 success, 1 a problem with an input (a file, an index, a video,
the server; the message on stderr names it), 2 a usage error (argparse), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Command name -> one-line help, in the order ``dns-tf --help`` lists them.
COMMANDS = {
    "demo": "generate, train, serve, index and search a video collection, end to end",
    "generate-videos": "generate a labelled collection of synthetic video files",
    "download": "fetch and check the authors' published checkpoints",
    "convert": "convert an official DnS/ViSiL checkpoint to a Keras file",
    "extract": "extract region features (ResNet50 L3-iMAC) from video files",
    "fit-whitening": "fit a PCA whitening on a feature file",
    "train": "train the teacher, label pairs, distil students, train the selector",
    "index": "create, fill and inspect a DnS video index (dns-tf search searches it)",
    "search": "search a video index (networks in process, or on a TF Serving server)",
    "evaluate": "evaluate query-database similarities on a benchmark",
    "calibrate": "fit the match threshold on labelled pairs and store it with an index",
    "export": "export the DnS networks as SavedModels for TF Serving",
    "serve": "serve SavedModels over TF Serving's gRPC API",
    "bench": "run a speed benchmark",
    "beam": "extract features and index a whole corpus as Apache Beam pipelines",
}


def error_message(error: Exception | str) -> str:
    """An error's message for one line: a KeyError's key without the quotes ``str`` adds."""
    return str(error.args[0] if isinstance(error, KeyError) and error.args else error)


def fail(command: str, error: Exception | str, code: int = 1) -> int:
    """Prints ``dns-tf COMMAND: error: MESSAGE`` on stderr; returns the exit code ``code``."""
    print(f"dns-tf {command}: error: {error_message(error)}", file=sys.stderr)
    return code


def command_module(name: str):
    """The module implementing command ``name``."""
    return importlib.import_module(f"dns_tf.cli.{name.replace('-', '_')}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``dns-tf`` parser; only ``command``'s own parser is complete (None: every command's)."""
    parser = argparse.ArgumentParser(
        prog="dns-tf",
        description="DnS (Distill-and-Select) video retrieval on TensorFlow/Keras.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_line in COMMANDS.items():
        if command is None or name == command:
            command_module(name).register(subparsers)
        else:
            subparsers.add_parser(name, help=help_line)
    return parser


def _chosen_command(argv: list[str]) -> str | None:
    """The command ``argv`` names: its first word not an option (``dns-tf [-h] COMMAND``)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = sys.argv[1:] if argv is None else [str(word) for word in argv]
    command = _chosen_command(argv)
    # A placeholder parser for every other command keeps ``dns-tf --help`` complete.
    parser = build_parser(command or "")
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # only a command that passes options on (``beam``: to Beam) takes them
        if not hasattr(args, "pipeline_args"):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.pipeline_args = unknown
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)

