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
            "Proposition 5, BPTT(T) → RBP (horizons scaled from the slowest eigenvalue of Jμ), "
            "Corollary 7 and Theorem 6. With --card, also the scheme the card trains with: for "
            "the clipped Euler scheme its own fixed point (a complementarity point), the gradient "
            "of its objective against finite differences and EP with the card's solver against "
            "its own ν. Rows are PASS, FAIL, info, n/a (the claim's hypothesis does not hold on "
            "this network) or 'not converged' (a phase it needs did not settle). Prints a table, "
            "writes OUT/check.nc and OUT/check.png, and exits with status 1 if any check fails or "
            "did not converge."
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
    src.add_argument("--network", choices=("random", "energy", "slow"), default=None,
                     help="a built-in float64 (5, 6, 6, 3) network: 'random' (the default, untied "
                          "LayeredNetwork), 'energy' (EnergyNetwork: symmetric Jμ, so ν = −∇J) or "
                          "'slow' (tied tanh whose slowest mode decays at rate 0.05)")
    p.add_argument("--activation", default="sigmoid",
                   help="activation of the 'random' and 'energy' networks (default: sigmoid)")
    p.add_argument("--only", metavar="SECTIONS",
                   help="comma-separated subset of: rbp, lemma2, ep, nu, sweep, prop5, bptt, thm6, scheme")
    p.add_argument("--which", choices=("best", "latest"), default="latest",
                   help="with --checkpoint: which checkpoint to load (default: latest; 'best' was chosen on the test set)")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    p.set_defaults(func=run)


def _network(args):
    """`(net, x, y, solver, rule, description)`; None for what run_checks should draw itself."""
    import jax.random as jr

    from .._theory import checks as _checks

    if args.card is not None:
        from .._experiment.build import build_network, build_solver
        from .._experiment.cards import load_card

        card = load_card(args.card)
        return (build_network(card, jr.PRNGKey(args.seed)), None, None, build_solver(card),
                card.learning.rule, f"card {args.card!r} (its {card.phases.solver} scheme too)")
    if args.checkpoint is not None:
        from .._experiment.rundir import load_run

        run = load_run(args.checkpoint, args.which)
        return run.net, None, None, None, "endpoint", f"run {args.checkpoint!r} ({args.which})"
    if args.network == "energy":
        import jax.numpy as jnp

        from .._dynamics.networks import EnergyNetwork

        net = EnergyNetwork((5, 6, 6, 3), args.activation, key=jr.PRNGKey(args.seed), dtype=jnp.float64)
        return net, None, None, None, "endpoint", f"(5, 6, 6, 3) {args.activation} EnergyNetwork"
    if args.network == "slow":
        net, x, y = _checks.slow_problem(args.seed)
        return net, x, y, None, "endpoint", "slow (5, 6, 6, 3) tied tanh network"
    net, x, y = _checks.random_problem(args.seed, activation=args.activation)
    return net, x, y, None, "endpoint", f"random (5, 6, 6, 3) {args.activation} network"


def run(args) -> int:
    import jax

    from .._errors import UsageError
    from .._theory import checks as _checks

    only = None
    if args.only:
        only = tuple(s.strip() for s in args.only.split(",") if s.strip())
        unknown = sorted(set(only) - set(_checks.SECTIONS))
        if unknown:
            raise UsageError(f"--only: unknown section(s) {unknown}; choose from {', '.join(_checks.SECTIONS)}")
    from .record import _writable_folder

    _writable_folder(pathlib.Path(args.out))  # before minutes of work, not after
    start = time.perf_counter()
    log = None if args.quiet else (lambda m: print(f"[{time.perf_counter() - start:5.1f} s] {m}", file=sys.stderr, flush=True))
    with jax.enable_x64(True):
        net, x, y, solver, rule, what = _network(args)
        if log:
            log(f"checking a {what}, float64, seed {args.seed}")
        report = _checks.run_checks(net, x, y, seed=args.seed, log=log, solver=solver, rule=rule, only=only)
        nc, png = _checks.write_report(report, pathlib.Path(args.out))
    print(report.table())
    counts = report.counts()
    bad = counts["FAIL"] + counts["not converged"]
    parts = [f"{counts[k]} {k}" for k in ("PASS", "FAIL", "not converged", "n/a", "info") if counts[k]]
    verdict = "all checks passed" if bad == 0 else "some checks FAILED or did not converge"
    print(f"\n{verdict} ({', '.join(parts)}) in {time.perf_counter() - start:.0f} s; wrote {nc} and {png}")
    return 0 if bad == 0 else 1
