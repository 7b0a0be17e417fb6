"""`ctgep check`: the theorem and gradient checks, as a table, a netCDF dataset and a figure."""

import pathlib
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check",
        help="measure the paper's theorems and the reference gradients (table, netCDF, figure)",
        description=(
            "Run the numerical checks of the paper's §5 and Appendices A–B in float64 on a random "
            "small network (or a model card's / a trained run's network): RBP against finite "
            "differences, Lemma 2, EP → ν as β → 0, ν versus −∇J and Jacobian symmetry, "
            "Proposition 5, BPTT(T) → RBP, Corollary 7 and Theorem 6. Prints a table, writes "
            "OUT/check.nc and OUT/check.png, and exits with status 1 if any check fails."
        ),
    )
    p.add_argument("--out", default="ctgep-check", metavar="DIR",
                   help="folder for check.nc and check.png (default: ./ctgep-check)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random networks and inputs (default 0)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--card", metavar="CARD",
                     help="check the (freshly initialised) network of a model card: a path or a built-in name")
    src.add_argument("--checkpoint", metavar="RUN_DIR",
                     help="check the network of a trained run directory (see `ctgep train`)")
    p.add_argument("--which", choices=("best", "latest"), default="best",
                   help="with --checkpoint: which checkpoint to load (default: best)")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    p.set_defaults(func=run)


def _network(args):
    import jax.random as jr

    if args.card is not None:
        from .._experiment.build import build_network
        from .._experiment.cards import load_card

        card = load_card(args.card)
        return build_network(card, jr.PRNGKey(args.seed)), f"card {args.card!r}"
    if args.checkpoint is not None:
        from .._experiment.rundir import load_run

        run = load_run(args.checkpoint, args.which)
        return run.net, f"run {args.checkpoint!r} ({args.which})"
    return None, "random (5, 6, 6, 3) sigmoid network"


def run(args) -> int:
    import jax

    from .._theory import checks as _checks

    start = time.perf_counter()
    log = None if args.quiet else (lambda m: print(f"[{time.perf_counter() - start:5.1f} s] {m}", file=sys.stderr, flush=True))
    with jax.enable_x64(True):
        net, what = _network(args)
        if log:
            log(f"checking a {what}, float64, seed {args.seed}")
        report = _checks.run_checks(net, seed=args.seed, log=log)
        nc, png = _checks.write_report(report, pathlib.Path(args.out))
    print(report.table())
    n_fail = sum(r.passed is False for r in report.rows)
    verdict = "all checks passed" if n_fail == 0 else f"{n_fail} check(s) FAILED"
    print(f"\n{verdict} in {time.perf_counter() - start:.0f} s; wrote {nc} and {png}")
    return 0 if n_fail == 0 else 1
