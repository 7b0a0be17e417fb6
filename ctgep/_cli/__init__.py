"""The `ctgep` command line. Each subcommand lives in its own module and registers here."""

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctgep",
        description="Continuous-time generalized Equilibrium Propagation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Subcommands: each module exposes `register(subparsers)` that sets `func` on its parser.
    from . import train

    train.register(sub)
    from . import record

    record.register(sub)
    from . import check

    check.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("ctgep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
