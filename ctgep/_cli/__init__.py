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


def _one_line(message) -> str:
    return " ".join(str(message).split())


def main(argv=None) -> int:
    """Run the `ctgep` command; returns its exit status.

    Every error reaches the user here, as one line ``ctgep: error: <message>`` on stderr: a
    :class:`ctgep.CtgepError` exits with its `exit_code` (2: bad arguments, card, data or run
    directory; 1: the work failed, e.g. training diverged or a phase did not settle), an
    operating-system error (disk full, permission denied) with 1, an interrupt with 130.
    Usage errors argparse finds itself exit with 2 and its usage message.
    """
    from .._errors import CtgepError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CtgepError as e:
        print(f"ctgep: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        message = f"{e.strerror or e}: {e.filename}" if e.filename else e
        print(f"ctgep: error: {_one_line(message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ctgep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
