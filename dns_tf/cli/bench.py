"""``dns-tf bench NAME [--json] [--quick]``: the speed benchmarks of :mod:`dns_tf.bench`."""

from __future__ import annotations

import argparse
import functools

from dns_tf.bench.registry import BENCHMARKS, add_common_arguments, benchmark, print_result


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="run a speed benchmark",
                                   description="Speed benchmarks; each prints what it measured.")
    names = parser.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    for name in BENCHMARKS:
        module = benchmark(name)
        sub = names.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0],
                               description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        add_common_arguments(sub, module)
        sub.set_defaults(func=functools.partial(_run, module))


def _run(module, args) -> int:
    print_result(module.measure(args), args.json)
    return 0
