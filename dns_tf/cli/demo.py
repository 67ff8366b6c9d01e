"""``dns-tf demo``: generate, train, serve, index and search a video collection, end to end."""

from __future__ import annotations

import os
import time

from dns_tf.demo import steps
from dns_tf.demo.steps import Demo, DemoConfig
from dns_tf.flags import add_arguments, from_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="generate, train, serve, index and search a video collection, end to end",
        description=steps.__doc__.split("\n\n")[0])
    add_arguments(parser, DemoConfig)
    parser.set_defaults(func=run)


def run(args) -> int:
    config = from_arguments(DemoConfig, args)
    started = time.perf_counter()
    results = Demo(config).run()
    print(f"\n{results['table']}\n")
    print(f"report: {os.path.join(config.output, 'report.md')} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0
