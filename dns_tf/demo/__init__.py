"""``dns-tf demo``: the whole DnS lifecycle on generated videos (:mod:`~dns_tf.demo.steps`) and
its evaluation and report (:mod:`~dns_tf.demo.report`)."""

import sys


def say(message: str) -> None:
    """One line of the demo's progress, on stderr."""
    print(f"[dns-tf demo] {message}", file=sys.stderr, flush=True)
