"""`ctgep stability`: fixed points, spectra, basins and the descent check of a card's or a run's
network on test examples — a table, `stability.nc` and `stability.png`.

Bad input (missing card or run directory, a count out of range, an output path that is a file …)
ends with a one-line message on stderr and exit status 2, before anything is computed.
"""

import argparse
import math
import pathlib
import sys
import time

_EPILOG = """\
examples:
  ctgep stability digits --out stab/                        # the built-in card, fresh weights
  ctgep stability studies/mnist/784-512-512-10_endpoint_warm80 --checkpoint latest \\
        --samples 300 --inits 8 --out stab-mnist/

writes OUT/stability.nc (read it with ctgep.stability.load) and OUT/stability.png.
"""


def register(subparsers) -> None:
    """Add the `stability` subcommand to the `ctgep` parser."""
    p = subparsers.add_parser(
        "stability", help="fixed points, Jacobian spectra, basins and the descent check (table, netCDF, figure)",
        description="Analyse the convergence and stability of a network on test examples: fixed points "
                    "(relaxation + Newton), the spectrum of the Jacobian Jμ there (dense for small states, "
                    "ARPACK otherwise), the spectral radius of the card's Euler iteration with predicted and "
                    "measured steps, basins from random initial states (paper §5 condition 1) and the sign "
                    "of ∇J·ν (condition 2).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="CARD_OR_RUN_DIR",
                   help="a run directory written by `ctgep train` (trained weights), or a model card "
                        "(TOML path or built-in name such as 'digits'; fresh weights from --seed)")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="latest",
                   help="which checkpoint of a run directory (default: latest; 'best' was chosen on the test set)")
    p.add_argument("--samples", type=int, default=100, metavar="N",
                   help="number of test examples analysed (default 100)")
    p.add_argument("--inits", type=int, default=8, metavar="K",
                   help="initial states per example for the basin sampling, 0 to skip (default 8)")
    p.add_argument("--eigs", type=int, default=6, metavar="K",
                   help="leading eigenvalues kept per example (default 6)")
    p.add_argument("--descent-batches", type=int, default=5, metavar="N",
                   help="batches (of the card's batch size) for the descent check, 0 to skip (default 5)")
    p.add_argument("--descent-solver", choices=("gmres", "dense"), default="gmres",
                   help="linear solves of the descent check: matrix-free GMRES over jvp/vjp (default) "
                        "or a dense Jacobian and LU per sample (slow above a few hundred units)")
    p.add_argument("--tol", type=float, default=None,
                   help="steady-state tolerance on ‖μ‖∞ for the measured Euler steps (default: the card's)")
    p.add_argument("--out", default="ctgep-stability", metavar="DIR",
                   help="folder for stability.nc and stability.png (default: ./ctgep-stability)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="where MNIST-like files are")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of a card's fresh weights and of the random initial states (default 0)")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    p.set_defaults(func=run)


class _Bad(Exception):
    pass


def _validate(args) -> pathlib.Path:
    for name, lo in (("samples", 1), ("inits", 0), ("eigs", 1), ("descent_batches", 0)):
        v = getattr(args, name)
        if v < lo:
            raise _Bad(f"--{name.replace('_', '-')}={v} must be at least {lo}")
    if args.tol is not None and not (math.isfinite(args.tol) and args.tol > 0):
        raise _Bad(f"--tol={args.tol} must be a positive number")
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise _Bad(f"--out {str(out)!r} exists and is not a folder")
    if not out.exists() and not out.parent.is_dir():
        raise _Bad(f"--out {str(out)!r}: its parent folder {str(out.parent)!r} does not exist")
    if args.data_dir is not None and not pathlib.Path(args.data_dir).is_dir():
        raise _Bad(f"--data-dir {args.data_dir!r} is not a folder")
    return out


def _network(args):
    """(network, card, description) from a run directory or a card."""
    import jax.random as jr

    import ctgep

    src = pathlib.Path(args.source)
    if src.is_dir():
        if not (src / "card.toml").is_file():
            raise _Bad(f"{args.source!r} is a folder without card.toml: not a run directory")
        try:
            r = ctgep.load_run(src, args.checkpoint)
        except (ctgep.TrainingError, ctgep.CardError, OSError, ValueError) as e:
            raise _Bad(f"{args.source!r}: {e}")
        epoch = r.checkpoint.get("epoch", "?")
        return r.net, r.card, f"run {args.source!r} ({r.checkpoint.get('tag', args.checkpoint)}, epoch {epoch})"
    try:
        card = ctgep.load_card(args.source)
    except (ctgep.CardError, OSError) as e:
        raise _Bad(str(e))
    fb = card.model.feedback
    try:
        net = ctgep.LayeredNetwork(card.model.sizes, card.model.activation, key=jr.PRNGKey(args.seed),
                                   feedback=fb if fb in ("random", "transpose") else float(fb))
    except ValueError as e:
        raise _Bad(f"card {args.source!r}: {e}")
    return net, card, f"card {args.source!r} (fresh weights, seed {args.seed})"


def _solver(card):
    """The card's Euler iteration (dt 0.5 with the card's options for an adaptive-solver card),
    without backtracking: the measured steps are then those of the iteration whose radius is
    predicted, and a radius ≥ 1 says where backtracking would step in."""
    from .._experiment.build import card_euler

    return card_euler(card, dt=None if card.phases.solver == "euler" else 0.5, backtrack=False)


def _data(card, args):
    import ctgep

    d = card.data
    try:
        data = ctgep.load_dataset(d.dataset, data_dir=args.data_dir or d.data_dir or None,
                                  download=d.download, verify=d.verify)
    except (ctgep.DataError, OSError, ValueError) as e:
        raise _Bad(f"data {d.dataset!r}: {e}")
    if data.n_features != card.model.sizes[0]:
        raise _Bad(f"the network has {card.model.sizes[0]} inputs but {d.dataset!r} has {data.n_features} features")
    if args.samples > len(data.y_test):
        raise _Bad(f"--samples={args.samples} exceeds the {len(data.y_test)} test examples of {d.dataset!r}")
    return data.x_test[: args.samples], data.y_test[: args.samples]


def run(args) -> int:
    start = time.perf_counter()
    try:
        out = _validate(args)
        net, card, what = _network(args)
        x, labels = _data(card, args)
    except _Bad as e:
        print(f"ctgep stability: {e}", file=sys.stderr)
        return 2

    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from .. import stability as S

    log = None if args.quiet else (
        lambda m: print(f"[{time.perf_counter() - start:6.1f} s] {m}", file=sys.stderr, flush=True))
    solver = _solver(card)
    tol = float(args.tol if args.tol is not None else card.phases.tol)
    if log:
        log(f"analysing the {what}: {args.samples} test examples, {args.inits} initial states each, "
            f"iteration {solver.name}, dt={solver.dt:g}")
    x = jnp.asarray(x)
    y = jax.nn.one_hot(jnp.asarray(labels), card.model.sizes[-1], dtype=x.dtype)
    ds = S.analyse(net, x, y if args.descent_batches > 0 else None, solver=solver, inits=args.inits,
                   key=jr.PRNGKey(args.seed), n_eig=args.eigs, conv_tol=tol,
                   descent_batch=card.training.batch_size, descent_batches=args.descent_batches,
                   descent_solver=args.descent_solver, log=log)
    ds.attrs.update({"source": str(args.source), "checkpoint": args.checkpoint, "seed": int(args.seed),
                     "dataset": card.data.dataset, "split": "test"})
    out.mkdir(exist_ok=True)
    nc = S.save(ds, out / "stability.nc")
    png = S.plot(ds, out / "stability.png")
    width = max(len(q) for q, _ in S.summary(ds))
    print(f"ctgep stability — {what}")
    for q, v in S.summary(ds):
        print(f"  {q:<{width}}  {v}")
    print(f"\nwrote {nc} and {png} in {time.perf_counter() - start:.0f} s")
    return 0
