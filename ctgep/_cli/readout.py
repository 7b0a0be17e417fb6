"""`ctgep readout`: linear readouts of every layer of a trained run — features or output layer?

Relaxes a run's checkpoint to its free fixed point on training and test examples, fits a
logistic regression to each layer's state (the pixels included) and prints a table beside the
network's own error; writes `readout.nc` and `readout.png`. Bad input ends with one line on
stderr and exit status 2 before anything is computed.
"""

import argparse
import pathlib
import sys
import time

_EPILOG = """\
examples:
  ctgep readout studies/fashion_mnist/784-512-512-10_homeostasis --data-dir FDIR --out readout/
  ctgep readout RUN_DIR --checkpoint best --n-train 20000 --n-test 10000 --out readout/

writes OUT/readout.nc (xarray: per layer width, readout train/test error, converged; the
network's own errors) and OUT/readout.png.
"""


def register(subparsers) -> None:
    """Add the `readout` subcommand to the `ctgep` parser."""
    p = subparsers.add_parser(
        "readout", help="linear readouts of every layer's free fixed point (table, netCDF, figure)",
        description="Fit a linear readout (logistic regression on standardised features) to each "
                    "layer's free fixed point of a run's checkpoint on training examples and score it "
                    "on test examples, the input pixels included: a last hidden layer no better than "
                    "the pixels says the features are the limit, one much better than the network's "
                    "own output says the output layer is.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `ctgep train`")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                   help="which checkpoint (default: latest)")
    p.add_argument("--n-train", type=int, default=10000, metavar="N",
                   help="training examples the readouts are fitted on (default 10000; the first N)")
    p.add_argument("--n-test", type=int, default=None, metavar="N",
                   help="test examples they are scored on (default: all)")
    p.add_argument("--C", type=float, nargs="+", default=[0.01, 0.1, 1.0], dest="C", metavar="C",
                   help="inverse L2 strength of the logistic regression; with several, each layer "
                        "takes the best on a held-out fifth of the training examples (default 0.01 0.1 1)")
    p.add_argument("--max-iter", type=int, default=500, metavar="N",
                   help="L-BFGS iterations per fit (default 500)")
    p.add_argument("--out", default="ctgep-readout", metavar="DIR",
                   help="folder for readout.nc and readout.png (default: ./ctgep-readout)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="where the dataset's files are")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _validate(args) -> pathlib.Path:
    from .._errors import UsageError

    if args.n_train < 2:
        raise UsageError(f"--n-train={args.n_train} must be at least 2")
    if args.n_test is not None and args.n_test < 1:
        raise UsageError(f"--n-test={args.n_test} must be at least 1")
    for c in args.C:
        if not c > 0:
            raise UsageError(f"--C={c} must be positive")
    if args.max_iter < 1:
        raise UsageError(f"--max-iter={args.max_iter} must be at least 1")
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a folder")
    if not out.exists() and not out.parent.is_dir():
        raise UsageError(f"--out {str(out)!r}: its parent folder {str(out.parent)!r} does not exist")
    return out


def run(args) -> int:
    start = time.perf_counter()
    out = _validate(args)
    import ctgep
    from .._errors import UsageError
    from .._experiment.loop import load_card_data
    from .._observation.readout import linear_readout, plot_readout

    r = ctgep.load_run(args.run_dir, args.checkpoint)
    data = load_card_data(r.card, data_dir=args.data_dir)
    if args.n_train > len(data.y_train):
        raise UsageError(f"--n-train={args.n_train} exceeds the {len(data.y_train)} training examples")
    n_test = len(data.y_test) if args.n_test is None else args.n_test
    if n_test > len(data.y_test):
        raise UsageError(f"--n-test={n_test} exceeds the {len(data.y_test)} test examples")
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.n_train + n_test, desc="free phases", unit="ex", file=sys.stderr)

    def progress(k):
        bar.update(k - bar.n)
        if k == bar.total:
            bar.close()

    def log(message):
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    x_train = data.x_train[: args.n_train].astype("float32")  # as `ctgep evaluate` predicts
    x_test = data.x_test[:n_test].astype("float32")
    ds = linear_readout(r.net, x_train, data.y_train[: args.n_train], x_test, data.y_test[:n_test],
                        solver=ctgep.build_solver(r.card), t_max=r.card.phases.prediction_horizon,
                        tol=r.card.phases.tol, stop_at_steady_state=r.card.phases.stop_at_steady_state,
                        C=args.C, max_iter=args.max_iter, batch_size=r.card.training.eval_batch_size,
                        progress=None if bar is None else progress, log=None if bar is None else log)
    epoch = r.checkpoint.get("epoch", "?")
    ds.attrs.update({"source": f"{args.run_dir} ({r.checkpoint.get('tag', args.checkpoint)}, epoch {epoch})",
                     "dataset": r.card.data.dataset})
    out.mkdir(exist_ok=True)
    nc, png = out / "readout.nc", out / "readout.png"
    ds.to_netcdf(nc)
    plot_readout(ds, png)
    print(f"ctgep readout — {ds.attrs['source']}: {args.n_train} training, {n_test} test examples")
    print(f"  {'layer':<8} {'width':>6} {'C':>6} {'readout train':>14} {'readout test':>13}")
    for k in ds["layer"].values:
        row = ds.sel(layer=k)
        name = "input" if k == 0 else str(int(k))
        flag = "" if int(row["converged"]) else "  (fit not converged)"
        print(f"  {name:<8} {int(row['width']):>6} {float(row['C']):>6g} {100 * float(row['readout_train_error']):>13.2f}% "
              f"{100 * float(row['readout_test_error']):>12.2f}%{flag}")
    print(f"  network's own output: train {100 * float(ds['network_train_error']):.2f}%, "
          f"test {100 * float(ds['network_test_error']):.2f}%")
    print(f"\nwrote {nc} and {png} in {time.perf_counter() - start:.0f} s")
    return 0
