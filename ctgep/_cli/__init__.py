"""The `ctgep` command line. Each subcommand lives in its own module and registers here.

Nothing here imports JAX: the subcommand modules import it inside the functions that compute,
so `ctgep --help` and a bad option or card are answered at once (tests/test_cli.py times it).
"""

import argparse
import sys
import warnings


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
    from . import stability

    stability.register(sub)
    from . import readout

    readout.register(sub)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # restored on exit, so callers keep their own
        return _run(args)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (a phase that did not settle, a checkpoint chosen on the test set …) reach the
    console as one line each, without the source location."""
    print(f"ctgep: warning: {_one_line(message)}", file=sys.stderr)


def _run(args) -> int:
    from .._errors import CtgepError

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
