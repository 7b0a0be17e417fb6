"""`ctgep train`, `ctgep resume` and `ctgep evaluate`.

Errors (bad card, missing data, diverging training …) propagate as :class:`ctgep.CtgepError`
to `ctgep._cli.main`, which prints them as one line (exit status 2: bad input, 1: training
failed), never as a traceback.
"""

import argparse
import json

_EPILOG_TRAIN = """\
examples:
  ctgep train                                  # built-in digits card: 12 s on an idle 2-core Xeon,
                                               # 1 min 48 s on a loaded 2-core EPYC (2026-12)
  ctgep train models/mnist_784-512-512-10.toml --data-dir ~/data/mnist --epochs 5
  ctgep train --set learning.beta=0.5 --set model.sizes=[64,128,128,10] \
        --set learning.learning_rates=[0.1,0.05,0.05] --out runs/deep

data: MNIST-like files are searched in --data-dir (which must exist), $CTGEP_DATA_DIR,
<root>/<name> for each root of $CTGEP_DATA_PATH (default /usr/share/datasets) and
~/.cache/ctgep/<name>, then downloaded into --data-dir or the cache if data.download = true.
"""


def _common_data(p):
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="existing folder holding the IDX files (or a <dataset>/ sub-folder with "
                        "them); default: the card's data.data_dir, then $CTGEP_DATA_DIR, "
                        "<root>/<dataset> for each root of $CTGEP_DATA_PATH (default "
                        "/usr/share/datasets), ~/.cache/ctgep/<dataset>")


def _common_parallel(p):
    p.add_argument("--devices", metavar="all|N", default=None,
                   help="split each minibatch over N devices, or all of them (overrides "
                        "training.devices; default: the card's, 1)")
    g = p.add_argument_group("several processes (hosts); default: $JAX_COORDINATOR_ADDRESS, "
                             "$JAX_NUM_PROCESSES, $JAX_PROCESS_ID or the cluster's (SLURM, Open MPI)")
    g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="address of process 0, which coordinates the run and alone writes RUN_DIR")
    g.add_argument("--num-processes", type=int, default=None, metavar="N", help="number of processes")
    g.add_argument("--process-id", type=int, default=None, metavar="I", help="this process's id, 0 … N-1")
    g.add_argument("--coordinator-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long the processes wait for each other before a one-line error "
                        "(default: $CTGEP_COORDINATOR_TIMEOUT, else 300)")


def _start_processes(args) -> None:
    """Join a multi-process run when asked to (before any other JAX work)."""
    from .._experiment.parallel import initialize_distributed

    initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                           args.coordinator_timeout)


def _common_progress(p):
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bars (one line per epoch is still printed)")


def register(subparsers) -> None:
    """Add the train, resume and evaluate subcommands to the `ctgep` parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "train", help="train a model card and write a run directory",
        description="Train a network with equilibrium propagation as a model card describes, "
                    "writing a run directory (resolved card, metrics.csv, checkpoints, "
                    "summary.json, training.png).",
        epilog=_EPILOG_TRAIN, formatter_class=fmt)
    p.add_argument("card", nargs="?", default=None, metavar="CARD",
                   help="model card: a TOML file or a built-in card name (default: digits)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a card value, e.g. --set learning.beta=0.5 or "
                        "--set learning.learning_rates=[0.1,0.05]; repeatable")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="number of epochs (overrides training.epochs)")
    p.add_argument("--init", metavar="RUN_DIR[:best]", default=None,
                   help="start from the weights of RUN_DIR's latest (or :best) checkpoint instead of "
                        "the card's initialisation, with a fresh optimiser and schedule (sets "
                        "training.init)")
    _common_data(p)
    p.add_argument("--out", metavar="RUN_DIR", default=None,
                   help="run directory to create (must not exist or be empty); "
                        "default: runs/<card name>-<date>-<time>")
    _common_progress(p)
    _common_parallel(p)
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "resume", help="continue a run from its latest checkpoint",
        description="Continue a run (for instance one killed mid-epoch) from its latest "
                    "checkpoint; the result is identical to an uninterrupted run.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory `ctgep train` wrote")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="total number of epochs to reach (default: the card's)")
    p.add_argument("--reset-particles", action="store_true",
                   help="restart the warm starts (phases.warm_start) from the initial state when the "
                        "checkpoint's particles file is absent, as in a committed run; the result is "
                        "then no longer identical to an uninterrupted run")
    _common_data(p)
    _common_progress(p)
    _common_parallel(p)
    p.set_defaults(func=_resume)

    p = subparsers.add_parser(
        "evaluate", help="error rate of a run's checkpoint",
        description="Evaluate a run's checkpoint (prediction at the free fixed point) and print "
                    "its error rate.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory `ctgep train` wrote")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                   help="which checkpoint to evaluate: latest (the final epoch, the default) or "
                        "best (the epoch with the lowest validation error, or, without a "
                        "validation split, the lowest *test* error: selected on the test set, so "
                        "its test error is optimistic; a warning says so)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="which data to evaluate on (default: test)")
    p.add_argument("--t-free", type=float, default=None, metavar="T",
                   help="free-phase horizon for the prediction (default: the card's phases.t_eval, else t_free)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _common_data(p)
    p.set_defaults(func=_evaluate)


def _train(args) -> int:
    # The card first (no JAX needed): a bad card or override is reported at once.
    from .._experiment.cards import load_card

    devices = [] if args.devices is None else [f"training.devices={args.devices}"]
    init = [] if args.init is None else [f"training.init={args.init}"]
    card = load_card(args.card, [*args.overrides, *devices, *init])
    _start_processes(args)
    from .._experiment.loop import train

    _report(train(card, args.out, epochs=args.epochs, data_dir=args.data_dir,
                  progress=not args.quiet))
    return 0


def _resume(args) -> int:
    _start_processes(args)
    from .._experiment.loop import resume

    _report(resume(args.run_dir, epochs=args.epochs, devices=args.devices,
                   reset_particles=args.reset_particles, data_dir=args.data_dir, progress=not args.quiet))
    return 0


def _report(run) -> None:
    from .._experiment.parallel import is_writer

    if not is_writer():  # process 0 of a multi-process run reports for all of them
        return
    best = run.summary.get("best") or {}
    final = run.summary.get("final") or {}
    if final:
        on = "validation" if best.get("selected_on") == "validation" else "test"
        print(f"done: {run.path}  final test error {100 * final['test_error']:.2f}%"
              + (f", best epoch on the {on} set {best['epoch']}" if best else "")
              + f", {run.summary.get('total_wall_time', 0):.1f}s training")


def _evaluate(args) -> int:
    from .._experiment.loop import evaluate

    r = evaluate(args.run_dir, which=args.checkpoint, data_dir=args.data_dir, split=args.split,
                 t_free=args.t_free)
    if args.json:
        print(json.dumps(r))
    else:
        which = r["checkpoint"] + (f" on the {r['selected_on']} set" if "selected_on" in r else "")
        print(f"{r['run']} [{which} checkpoint, after epoch {r['epoch']}]: "
              f"{r['split']} error {100 * r['error']:.2f}% ({r['n']} examples, t_free {r['t_free']:g}), "
              f"accuracy {100 * r['accuracy']:.2f}%")
        print("error per class: " + ", ".join(f"{c}: " + ("-" if e is None else f"{100 * e:.1f}%")
                                              for c, e in enumerate(r["class_error"])))
    return 0
