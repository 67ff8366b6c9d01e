"""Every benchmark in turn, with its defaults; one JSON and one Markdown report.

A benchmark that fails is reported with its error and the others still run. ``--quick`` runs each
one's small version (minutes in all); without it the full runs take about half an hour, most of it
building ScaNN over a million vectors.
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from typing import Any

from dns_tf.bench.registry import BENCHMARKS, benchmark, default_arguments


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="bench_report",
                        help="folder for bench.json and bench.md (default: bench_report)")
    parser.add_argument("--only", nargs="+", choices=[b for b in BENCHMARKS if b != "all"],
                        help="run only these benchmarks")


def measure(args) -> dict[str, Any]:
    names = args.only or [name for name in BENCHMARKS if name != "all"]
    report: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                                         f"{platform.platform()}",
                              "quick": args.quick, "benchmarks": {}}
    for name in names:
        started = time.perf_counter()
        try:
            result = benchmark(name).measure(default_arguments(name, args.quick))
        except Exception as error:  # one failure must not lose the other results
            result = {"error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc(limit=5)}
        result["wall_s"] = round(time.perf_counter() - started, 2)
        report["benchmarks"][name] = result
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.json"), "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2)
    with open(os.path.join(args.out, "bench.md"), "w", encoding="utf-8") as file:
        file.write(markdown(report))
    return {"report": os.path.join(args.out, "bench.md"),
            "benchmarks": {name: "error" if "error" in result else "ok"
                           for name, result in report["benchmarks"].items()}}


def _flatten(result: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in result.items():
        if key == "traceback":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, name + ".")
        else:
            rows.append((name, value))
    return rows


def markdown(report: dict) -> str:
    lines = ["# dns-tf benchmarks", "", f"Machine: {report['machine']}"
             + ("; quick runs" if report["quick"] else ""), ""]
    for name, result in report["benchmarks"].items():
        lines += [f"## {name}", "", "| measure | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in _flatten(result)]
        lines.append("")
    return "\n".join(lines)
