"""`ctgep record`: record a network's free and nudged phases to netCDF and draw the figures.

Bad input (unknown layer, neuron out of range, missing run directory …) ends with a one-line
message on stderr and exit status 2, never with a traceback.
"""

import argparse
import json
import math
import os
import pathlib
import tempfile

_EPILOG = """\
examples:
  ctgep record --out rec/                                  # untrained 64-32-32-10 net on digits
  ctgep record runs/digits-20250101-120000 --out rec/      # a trained run (best checkpoint)
  ctgep record digits --sizes 64,64,64,64,10 --every 5 --layers=-1,1 --neurons 16 --out rec/
  ctgep record --checkpoint runs/x --grid 400 --increments Wf_2,b_2 --out rec/

writes OUT/record.nc (load it with ctgep.load_record) and OUT/{error_signal,state_heatmaps,
error_heatmaps,phase_portrait}.png, and prints the error signal's arrival time per layer.
"""


def _ints(text, name):
    from .._errors import UsageError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--{name}={text!r} must be comma-separated integers") from None


def register(subparsers) -> None:
    """Add the `record` subcommand to the `ctgep` parser."""
    p = subparsers.add_parser(
        "record", help="record the free and nudged phases' trajectories (netCDF + figures)",
        description="Run the free and nudged phases of a network on a few examples, record the "
                    "neuron states, residuals, error signals and running synapse increments over "
                    "time into a netCDF file, and draw the error-signal, heatmap and phase-portrait "
                    "figures.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", default=None, metavar="RUN_DIR_OR_CARD",
                   help="a run directory written by `ctgep train` (trained weights), or a model card "
                        "(TOML path or built-in name; untrained weights from --seed); default: a "
                        "network built from --sizes")
    p.add_argument("--checkpoint", metavar="RUN_DIR", default=None,
                   help="same as giving RUN_DIR as the positional argument")
    p.add_argument("--which", choices=("latest", "best"), default="latest",
                   help="which checkpoint of a run directory: latest (the final epoch, the default) "
                        "or best (lowest validation error, else lowest test error)")
    p.add_argument("--sizes", default=None, metavar="N0,N1,...",
                   help="layer widths input → output when no run/card is given (default 64,32,32,10), "
                        "or replacing the card's")
    p.add_argument("--activation", default=None, help="firing rate ρ (default: the card's, else hard_sigmoid)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of untrained weights (default 0)")
    p.add_argument("--data", default=None, metavar="NAME",
                   help="digits, mnist or fashion-mnist (default: the card's, else digits)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="where MNIST-like files are")
    p.add_argument("--samples", type=int, default=8, metavar="N",
                   help="number of test examples in the batch (default 8; all are recorded)")
    p.add_argument("--beta", type=float, default=None, help="nudging strength (default: the card's, else 0.5)")
    p.add_argument("--solver", default=None, choices=("tsit5", "dopri5", "kvaerno5", "euler"),
                   help="phase solver (default tsit5: a continuous-time trajectory)")
    p.add_argument("--dt", type=float, default=None, help="Euler step (default: the card's, else 0.5)")
    p.add_argument("--precondition", action="store_true",
                   help="Euler: divide each unit's step by its nudged leak 1 + β (default: the card's)")
    p.add_argument("--alternate", action="store_true",
                   help="Euler: update the odd layers, then the even ones, in each step (default: the card's)")
    p.add_argument("--backtrack", action="store_true",
                   help="Euler: halve a sample's step whenever its steps stop shrinking (default: the card's)")
    p.add_argument("--t-free", type=float, default=50.0, help="free-phase horizon (default 50)")
    p.add_argument("--t-nudged", type=float, default=50.0, help="nudged-phase horizon (default 50)")
    p.add_argument("--tol", type=float, default=1e-4, help="steady-state tolerance on ‖μ‖∞ (default 1e-4)")
    p.add_argument("--layers", default=None, metavar="L1,L2",
                   help="dynamic layers whose neurons are recorded, 1..L or -1 = output (default all); "
                        "write a list starting with -1 as --layers=-1,1")
    p.add_argument("--neurons", type=int, default=None, metavar="K",
                   help="record the first K neurons of each chosen layer (default all)")
    s = p.add_mutually_exclusive_group()
    s.add_argument("--every", type=int, default=None, metavar="N", help="record every N-th solver step")
    s.add_argument("--steps", action="store_true", help="record every solver step")
    s.add_argument("--grid", type=int, default=None, metavar="N",
                   help="record at N evenly spaced times (default 201)")
    p.add_argument("--increments", default=None, metavar="P1,P2|all",
                   help="parameters whose running synapse increment is recorded in full, e.g. Wf_2,b_2 "
                        "(Wf_l, Wb_l and b_l feed layer l; norms of all are always recorded)")
    p.add_argument("--no-figures", action="store_true", help="write the netCDF file only")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.set_defaults(func=_record)


def _network(args):
    """(net, card-or-None, description) from a run directory, a card, or the options."""
    import jax.random as jr

    from .._dynamics.networks import LayeredNetwork
    from .._errors import UsageError
    from .._experiment.build import build_network
    from .._experiment.cards import load_card
    from .._experiment.rundir import load_run

    source = args.checkpoint or args.source
    if args.checkpoint and args.source:
        raise UsageError("give the run directory either as RUN_DIR or as --checkpoint, not both")
    if source is None:
        sizes = _ints(args.sizes, "sizes") if args.sizes else [64, 32, 32, 10]
        net = LayeredNetwork(sizes, args.activation or "hard_sigmoid", key=jr.PRNGKey(args.seed))
        return net, None, f"untrained {'-'.join(map(str, sizes))} network (seed {args.seed})"
    path = pathlib.Path(source)
    if path.is_dir() and (path / "card.toml").is_file():
        if args.sizes or args.activation:
            raise UsageError("--sizes/--activation cannot change a trained run's network")
        run = load_run(path, args.which)
        return run.net, run.card, f"run {path} ({run.checkpoint.get('tag')} checkpoint, epoch {run.checkpoint.get('epoch')})"
    if args.checkpoint:
        raise UsageError(f"--checkpoint={source!r} is not a run directory (no card.toml)")
    overrides = []
    if args.sizes:
        sizes = _ints(args.sizes, "sizes")
        overrides.append(f"model.sizes=[{','.join(map(str, sizes))}]")
        rates = list(load_card(source).learning.learning_rates)  # one per layer: keep the card valid
        rates = (rates + rates[-1:] * len(sizes))[: max(len(sizes) - 1, 1)]
        overrides.append(f"learning.learning_rates=[{','.join(map(str, rates))}]")
    if args.activation:
        overrides.append(f"model.activation={json.dumps(args.activation)}")
    card = load_card(source, overrides)
    net = build_network(card, jr.PRNGKey(args.seed))
    return net, card, f"untrained network of card {card.name!r} (seed {args.seed})"


def _inputs(args, card, net):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from .._errors import UsageError
    from .._experiment.data import load_dataset

    name = args.data or (card.data.dataset if card is not None else "digits")
    data_dir = args.data_dir or (card.data.data_dir or None if card is not None else None)
    data = load_dataset(name, data_dir=data_dir, download=False)
    if data.n_features != net.sizes[0]:
        raise UsageError(f"--data={name!r} has {data.n_features} features but the network's input layer has {net.sizes[0]}")
    if net.sizes[-1] != data.n_classes:
        raise UsageError(f"--data={name!r} has {data.n_classes} classes but the network's output layer has {net.sizes[-1]}")
    n = min(args.samples, len(data.y_test))
    x = jnp.asarray(data.x_test[:n])
    y = jax.nn.one_hot(jnp.asarray(np.asarray(data.y_test[:n])), data.n_classes)
    return x, y, name


def _positive(value, name, integer=False):
    from .._errors import UsageError

    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"--{name}={value!r} must be a positive {'integer' if integer else 'number'}")


def _writable_folder(out: pathlib.Path) -> None:
    """Refuse, before any work, an --out that exists as a file or cannot be created or written."""
    from .._errors import UsageError

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a folder")
    parent = out
    while not parent.exists():  # the nearest existing ancestor must be a writable folder
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {str(out)!r}: {str(parent)!r} is a file, not a folder")
    probe_dir = out if out.exists() else parent
    try:
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=".ctgep-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--out {str(out)!r} cannot be written ({e.strerror or e})") from None


def _validate(args) -> None:
    """Every option checked before anything is computed (and --out before minutes of work)."""
    from .._errors import UsageError

    if args.samples < 1:
        raise UsageError(f"--samples={args.samples} must be ≥ 1")
    for name in ("dt", "t_free", "t_nudged", "tol"):
        _positive(getattr(args, name), name.replace("_", "-"))
    for name in ("neurons", "every"):
        _positive(getattr(args, name), name, integer=True)
    if args.beta is not None and not (math.isfinite(args.beta) and args.beta != 0):
        raise UsageError(f"--beta={args.beta!r} must be a finite non-zero nudging strength")
    if args.grid is not None and args.grid < 2:
        raise UsageError(f"--grid={args.grid} needs at least 2 points")
    if args.dt is not None and (args.solver or "tsit5") != "euler":
        raise UsageError(f"--dt is the Euler step; add --solver euler")
    if args.layers:
        _ints(args.layers, "layers")
    if args.data_dir is not None and not pathlib.Path(args.data_dir).expanduser().is_dir():
        raise UsageError(f"--data-dir {args.data_dir!r} is not a folder")
    _writable_folder(pathlib.Path(args.out))


def _record(args) -> int:
    """Run `ctgep record`; ctgep's errors go to `ctgep._cli.main`.

    The options `record` itself refuses (a layer out of range, an unknown parameter …) come as
    ValueError, a missing file as FileNotFoundError: both are bad input, a UsageError here.
    """
    from .._errors import CtgepError, UsageError

    _validate(args)
    try:
        return _run(args)
    except CtgepError:
        raise
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        raise UsageError(str(e)) from e


def _run(args) -> int:
    from .._observation.plots import save_figures
    from .._observation.record import record
    from .._observation.record_io import error_arrival_times
    from .._experiment.cards import EULER_OPTIONS
    from .._simulation.solvers import Euler, get_solver

    net, card, what = _network(args)
    x, y, data_name = _inputs(args, card, net)
    phases = card.phases if card is not None else None
    solver_name = args.solver or "tsit5"
    if solver_name == "euler":
        dt = args.dt if args.dt is not None else (phases.dt if phases is not None else 0.5)
        solver = Euler(dt=float(dt), **{key: bool(getattr(args, key) or (phases is not None and getattr(phases, key)))
                                        for key in EULER_OPTIONS})
    else:
        for flag, effect in EULER_OPTIONS.items():
            if getattr(args, flag):
                raise ValueError(f"--{flag} {effect}; add --solver euler")
        solver = get_solver(solver_name)
    beta = args.beta if args.beta is not None else (card.learning.beta if card is not None else 0.5)
    if args.every is not None:
        sampling = args.every
    elif args.steps:
        sampling = "steps"
    elif args.grid is not None:
        import numpy as np

        sampling = np.linspace(0.0, max(args.t_free, args.t_nudged), args.grid)
        step = solver.time_resolution
        if step is not None:  # a fixed-step solver records on its own steps
            sampling = np.unique(np.rint(sampling / step)) * step
    else:
        sampling = "grid"
    increments = None
    if args.increments:
        increments = "all" if args.increments == "all" else [s.strip() for s in args.increments.split(",") if s.strip()]
    ds = record(
        net, x, y, beta=beta, solver=solver, t_free=args.t_free, t_nudged=args.t_nudged, tol=args.tol,
        layers=_ints(args.layers, "layers") if args.layers else None, neurons=args.neurons,
        sampling=sampling, increments=increments, card=card.to_dict() if card is not None else None,
    )
    ds.attrs["source"] = what
    ds.attrs["data"] = data_name
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "record.nc"
    ds.to_netcdf(path)
    print(f"recorded {what} on {ds.sizes['sample']} {data_name} examples → {path}")
    print(f"  free phase: t_stop={float(ds.t_stop[0]):.3g} ({int(ds.steps[0])} steps); "
          f"nudged phase: t_stop={float(ds.t_stop[1]):.3g} ({int(ds.steps[1])} steps); "
          f"{ds.sizes['time']} time points × {ds.sizes['neuron']} neurons")
    arrival = error_arrival_times(ds)
    print("  layer  distance from output  error arrival time (half of final)  final |error| (RMS)")
    for l in ds.layer.values:
        a = arrival.sel(layer=l)
        print(f"  {int(l):5d}  {int(a.distance):20d}  {float(a):35.3f}  {float(a.final_magnitude):.4g}")
    if not args.no_figures:
        for key, p in save_figures(ds, out).items():
            print(f"  figure {key}: {p}")
    return 0
