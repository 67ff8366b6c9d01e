"""``dns-tf bench NAME [--json] [--quick]``: the speed benchmarks.

Each benchmark is a module ``dns_tf.bench.<NAME>`` with

* ``measure(args) -> dict``: runs it and returns what it measured (the command prints it);
* optionally ``add_arguments(parser)``: its own flags (``--n`` ...), next to the common ``--json``
  (print one JSON object) and ``--quick`` (a small run for smoke tests).

Adding a benchmark is a module plus one line in ``BENCHMARKS``. Modules are imported when the CLI
is built, so keep heavy imports (TensorFlow, ScaNN) inside ``run``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import json
from typing import Any

BENCHMARKS = (
    "coarse",
    "search",
    "extract",
    "similarity",
    "serve",
    "train",
    "keras_similarity",
    "all",
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="run a speed benchmark",
                                   description="Speed benchmarks; each prints what it measured.")
    names = parser.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    for name in BENCHMARKS:
        module = importlib.import_module(f"dns_tf.bench.{name}")
        sub = names.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0],
                               description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--json", action="store_true", help="print the result as one JSON object")
        sub.add_argument("--quick", action="store_true", help="a small, fast run")
        if hasattr(module, "add_arguments"):
            module.add_arguments(sub)
        sub.set_defaults(func=functools.partial(_run, module))


def _run(module, args) -> int:
    print_result(module.measure(args), args.json)
    return 0


def machine_load(load_before: tuple[float, ...]) -> dict[str, Any]:
    """CPU count and load averages around a measurement, so a reader can judge contention."""
    return {"cpu_count": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def default_arguments(name: str, quick: bool) -> argparse.Namespace:
    """The arguments ``dns-tf bench NAME [--quick]`` would run benchmark ``name`` with."""
    module = importlib.import_module(f"dns_tf.bench.{name}")
    parser = argparse.ArgumentParser(prog=f"dns-tf bench {name}")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    return parser.parse_args(["--quick"] if quick else [])


def print_result(result: dict[str, Any], as_json: bool) -> None:
    """Prints a benchmark's result: one JSON object, or one ``name: value`` line per entry."""
    if as_json:
        print(json.dumps(result, sort_keys=False), flush=True)
        return
    for name, value in result.items():
        print(f"{name}: {value}", flush=True)
