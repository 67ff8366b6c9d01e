"""The speed benchmarks and what they share.

Each benchmark is a module ``dns_tf.bench.<NAME>`` with

* ``measure(args) -> dict``: runs it and returns what it measured (``dns-tf bench`` prints it);
* optionally ``add_arguments(parser)``: its own flags (``--n`` ...), next to the common ``--json``
  (print one JSON object) and ``--quick`` (a small run for smoke tests).

Adding a benchmark is a module plus one line in ``BENCHMARKS``. Modules are imported when the CLI
is built, so keep heavy imports (TensorFlow, ScaNN) inside ``measure``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from types import ModuleType
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


def benchmark(name: str) -> ModuleType:
    """The module of benchmark ``name``."""
    if name not in BENCHMARKS:
        raise ValueError(f"no benchmark {name!r}; the benchmarks are {BENCHMARKS}")
    return importlib.import_module(f"dns_tf.bench.{name}")


def add_common_arguments(parser: argparse.ArgumentParser, module: ModuleType) -> None:
    """``--json``, ``--quick`` and the benchmark's own flags."""
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)


def machine_load(load_before: tuple[float, ...]) -> dict[str, Any]:
    """CPU count and load averages around a measurement, so a reader can judge contention."""
    return {"cpu_count": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def default_arguments(name: str, quick: bool) -> argparse.Namespace:
    """The arguments ``dns-tf bench NAME [--quick]`` would run benchmark ``name`` with."""
    parser = argparse.ArgumentParser(prog=f"dns-tf bench {name}")
    add_common_arguments(parser, benchmark(name))
    return parser.parse_args(["--quick"] if quick else [])


def print_result(result: dict[str, Any], as_json: bool) -> None:
    """Prints a benchmark's result: one JSON object, or one ``name: value`` line per entry."""
    if as_json:
        print(json.dumps(result, sort_keys=False), flush=True)
        return
    for name, value in result.items():
        print(f"{name}: {value}", flush=True)
