"""``dns-tf download``: the authors' published checkpoints, fetched and checked.

    dns-tf download --list
    dns-tf download --out checkpoints/                          # all of them
    dns-tf download dns_cg_student dns_fg_bin_student dns_selector_cg-fg_bin --out checkpoints/
    dns-tf download --out checkpoints/ --mirror file:///data/dns-checkpoints/

Each file is checked (the byte count the server announced, and that the restricted reader loads
it as the right network) before it takes its name. Exit 0, 1 when a download or a check fails
(no network included), 2 for an unknown name.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "download", help="fetch and check the authors' published checkpoints",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="checkpoints to fetch, as --list names them (default: all)")
    parser.add_argument("--out", help="directory to write them to (required unless --list)")
    parser.add_argument("--mirror", help="base URL holding the files under the authors' names, "
                                         "used instead of the authors' servers")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds a connection may stay silent (default: 60)")
    parser.add_argument("--list", action="store_true",
                        help="print the names, URLs and uses; fetch nothing")
    parser.set_defaults(func=run, parser=parser)


def run(args) -> int:
    from dns_tf.convert.download import CHECKPOINTS, DownloadError, download

    if args.list:
        for checkpoint in CHECKPOINTS.values():
            print(f"{checkpoint.name:26s} {checkpoint.url}  ({checkpoint.use})")
        return 0
    unknown = [name for name in args.names if name not in CHECKPOINTS]
    if unknown:
        args.parser.error(f"unknown checkpoint {', '.join(unknown)}; known: "
                          f"{', '.join(CHECKPOINTS)}")
    if not args.out:
        args.parser.error("the following arguments are required: --out")
    if args.timeout <= 0:
        args.parser.error(f"--timeout must be > 0, got {args.timeout}")
    try:
        download(args.names or list(CHECKPOINTS), args.out, mirror=args.mirror,
                 timeout=args.timeout, report=print)
    except (DownloadError, OSError) as error:
        print(f"dns-tf download: error: {error}", file=sys.stderr)
        return 1
    return 0
