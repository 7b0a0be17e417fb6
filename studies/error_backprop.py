"""How the output nudge travels back through the layers (paper §4.3), before and after training.

At the start of the nudged phase only the output layer feels the force `β (y − s_L)`; the hidden
layers sit at their free fixed point. The perturbation then propagates backwards through the
feedback weights, so the error signal `(s^β(t) − s⁰)/β` of layer l should arrive later the
farther l is from the output. This study trains a deep layered network with EP (a few epochs of
the public `ctgep.ep_step` + optax, the paper's clipped Euler scheme), records the nudged
phase's continuous-time trajectory (`ctgep.record`, Tsit5) of the untrained and the trained
network on the same test examples, and measures per layer the arrival time: the time the
layer's error magnitude (RMS over its neurons, mean over examples) reaches half its final value.

    python studies/error_backprop.py                       # digits, 64-64-64-64-10, ~1.5 min
    python studies/error_backprop.py --data-dir ~/data/mnist --sizes 784,256,256,256,10

Writes studies/error_backprop/{error_backprop.nc, error_backprop.png} and prints the table.
"""

import argparse
import datetime
import json
import pathlib
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import xarray as xr
from matplotlib.figure import Figure

import ctgep

HERE = pathlib.Path(__file__).resolve().parent / "error_backprop"


def load_data(data_dir):
    """Digits (scikit-learn, inputs /16) by default; MNIST IDX files when `data_dir` is given."""
    if data_dir is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int32)
        order = np.random.default_rng(0).permutation(len(y))
        n_test = len(y) // 5
        test, train = order[:n_test], order[n_test:]
        return "digits", x[train], y[train], x[test], y[test]
    ds = ctgep.load_dataset("mnist", data_dir=data_dir, download=False)
    return "mnist", ds.x_train, ds.y_train, ds.x_test, ds.y_test


def train(net, x, y, *, rates, beta, solver, t_free, t_nudged, epochs, batch, seed, budget_s):
    """EP with centered nudging and per-layer SGD rates (`rates[l-1]` for Wf_l, Wb_l, b_l)."""
    n_layers = len(net.Wf)
    labels = eqx.tree_at(
        lambda m: (m.Wf, m.Wb, m.b),
        eqx.filter(net, eqx.is_inexact_array),
        (tuple(f"l{i}" for i in range(n_layers)), tuple(f"l{i}" for i in range(len(net.Wb))),
         tuple(f"l{i}" for i in range(n_layers))),
    )
    opt = optax.multi_transform({f"l{i}": optax.sgd(r) for i, r in enumerate(rates)}, labels)
    state = opt.init(eqx.filter(net, eqx.is_inexact_array))
    n_out = net.sizes[-1]

    @eqx.filter_jit
    def step(net, state, xb, yb):
        r = ctgep.ep_step(net, xb, jax.nn.one_hot(yb, n_out), beta=beta, nudging="centered", solver=solver,
                          t_free=t_free, t_nudged=t_nudged, tol=1e-3)
        updates, state = opt.update(ctgep.as_gradient(r.update), state, eqx.filter(net, eqx.is_inexact_array))
        errors = jnp.sum(jnp.argmax(net.output(r.free.state), -1) != yb)
        return eqx.apply_updates(net, updates), state, errors

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    history = []
    for epoch in range(epochs):
        perm = rng.permutation(len(y))
        errors = 0
        n = 0
        for i in range(0, len(y) - batch + 1, batch):
            idx = perm[i : i + batch]
            net, state, e = step(net, state, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
            errors += int(e)
            n += batch
        history.append(errors / n)
        print(f"  epoch {epoch + 1}: train error {errors / n:.3f} ({time.perf_counter() - start:.0f}s)", flush=True)
        if time.perf_counter() - start > budget_s:
            break
    return net, history, time.perf_counter() - start


def test_error(net, x, y, solver, t_free):
    r = ctgep.free_phase(net, jnp.asarray(x), solver=solver, t_max=t_free, tol=1e-3)
    return float(np.mean(np.asarray(jnp.argmax(net.output(r.state), -1)) != y))


def figure(ds, arrival, path):
    fig = Figure(figsize=(11, 4))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    cmap = __import__("matplotlib").colormaps["viridis"]
    layers = list(ds.layer.values)
    for net_name, ax in (("untrained", ax1), ("trained", ax2)):
        d = ds.sel(network=net_name, phase="nudged")
        keep = np.isfinite(d.t.values)
        t = d.t.values[keep]
        mag = d.error_magnitude.isel(time=np.flatnonzero(keep)).mean("sample")
        for i, l in enumerate(layers):
            m = mag.sel(layer=l).values
            color = cmap(1 - (i + 1) / (len(layers) + 0.5))
            ax.plot(t, m / m[-1], color=color, label=f"layer {l} (distance {int(layers[-1] - l)})")
            a = float(arrival.sel(network=net_name, layer=l))
            ax.plot([a], [0.5], "o", color=color, ms=4)
        ax.axhline(0.5, color="0.7", lw=0.8, ls=":")
        ax.set_xlim(0, min(float(np.nanmax(t)), 4 * float(arrival.sel(network=net_name).max()) + 1))
        ax.set_xlabel("time in the nudged phase")
        ax.set_ylabel("error magnitude / final value")
        ax.set_title(f"{net_name} network")
        ax.legend(fontsize="x-small")
    for net_name, style in (("untrained", "o--"), ("trained", "s-")):
        a = arrival.sel(network=net_name)
        ax3.plot(a.distance.values, a.values, style, label=net_name)
    ax3.set_xlabel("distance from the output layer (layers)")
    ax3.set_ylabel("arrival time (half of final magnitude)")
    ax3.set_title("error arrival time vs depth")
    ax3.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="MNIST IDX files (default: scikit-learn digits)")
    p.add_argument("--sizes", default=None, help="layer widths (default 64,64,64,64,10; 784,… for MNIST)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--budget", type=float, default=60.0, help="stop training after this many seconds")
    p.add_argument("--rates", default=None, help="per-layer learning rates, input side first")
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--samples", type=int, default=64, help="test examples recorded")
    p.add_argument("--horizon", type=float, default=200.0, help="horizon of each recorded phase")
    p.add_argument("--neurons", type=int, default=4, help="neurons per layer stored in full (the "
                   "error magnitudes use all of them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args(argv)

    name, x_tr, y_tr, x_te, y_te = load_data(args.data_dir)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [x_tr.shape[1], 64, 64, 64, 10]
    n_layers = len(sizes) - 1
    # the error signal shrinks on its way back: larger rates far from the output
    rates = [float(r) for r in args.rates.split(",")] if args.rates else [0.4 / 2**i for i in range(n_layers)]
    if len(rates) != n_layers:
        raise SystemExit(f"--rates needs {n_layers} values, got {len(rates)}")
    euler = ctgep.Euler(dt=0.5)
    t_free, t_nudged = 30.0, 10.0
    net0 = ctgep.LayeredNetwork(sizes, "hard_sigmoid", key=jr.PRNGKey(args.seed))
    print(f"{name}: {len(y_tr)} train / {len(y_te)} test, network {'-'.join(map(str, sizes))}, rates {rates}")
    err0 = test_error(net0, x_te, y_te, euler, t_free)
    net1, history, train_s = train(net0, x_tr, y_tr, rates=rates, beta=args.beta, solver=euler, t_free=t_free,
                                   t_nudged=t_nudged, epochs=args.epochs, batch=20, seed=args.seed,
                                   budget_s=args.budget)
    err1 = test_error(net1, x_te, y_te, euler, t_free)
    print(f"test error: untrained {err0:.3f}, trained {err1:.3f} ({train_s:.0f}s of training)")

    # Continuous-time trajectories of the same test examples: every 0.05 time units up to t = 20,
    # every 0.5 after.
    x = jnp.asarray(x_te[: args.samples])
    y = jax.nn.one_hot(jnp.asarray(y_te[: args.samples]), sizes[-1])
    horizon = args.horizon
    grid = np.concatenate([np.arange(0.0, min(20.0, horizon), 0.05), np.arange(20.0, horizon + 1e-9, 0.5)])
    common = dict(beta=args.beta, solver="tsit5", t_free=horizon, t_nudged=horizon, tol=1e-5,
                  neurons=args.neurons, sampling=grid)
    records = []
    for label, net in (("untrained", net0), ("trained", net1)):
        ds = ctgep.record(net, x, y, **common)
        ds.attrs.pop("created")
        records.append(ds)
    ds = xr.concat(records, dim=xr.DataArray(["untrained", "trained"], dims="network", name="network"),
                   combine_attrs="drop_conflicts")
    ds.attrs.update(
        study="error back-propagation through the layers during the nudged phase (paper §4.3)",
        data=name,
        training=json.dumps({"rule": "endpoint", "nudging": "centered", "beta": args.beta, "rates": rates,
                             "solver": "euler dt=0.5", "t_free": t_free, "t_nudged": t_nudged,
                             "epochs": len(history), "train_error": history, "seconds": round(train_s, 1)}),
        test_error_untrained=err0,
        test_error_trained=err1,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    arrival = xr.concat([ctgep.error_arrival_times(r) for r in records], dim=ds.network)
    ds["arrival_time"] = arrival.drop_vars(["final_magnitude", "distance"])
    ds["final_error_magnitude"] = arrival.final_magnitude
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(out / "error_backprop.nc")
    figure(ds, arrival, out / "error_backprop.png")

    per_sample = xr.concat([ctgep.error_arrival_times(r, per_sample=True) for r in records], dim=ds.network)
    ds["arrival_time_per_sample"] = per_sample.drop_vars(["final_magnitude", "distance"])
    med_arrival = per_sample.median("sample")
    med_final = per_sample.final_magnitude.median("sample")
    rows = [
        "| layer | distance from output | arrival (mean ‖e‖) untrained | trained | median per-sample arrival "
        "untrained | trained | final ‖e‖ mean untrained | trained | final ‖e‖ median untrained | trained |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for l in ds.layer.values:
        a = arrival.sel(layer=l)
        cells = [a.sel(network=n) for n in ("untrained", "trained")]
        cells += [med_arrival.sel(layer=l, network=n) for n in ("untrained", "trained")]
        row = [f"{float(c):.3f}" for c in cells]
        row += [f"{float(a.final_magnitude.sel(network=n)):.3g}" for n in ("untrained", "trained")]
        row += [f"{float(med_final.sel(layer=l, network=n)):.3g}" for n in ("untrained", "trained")]
        rows.append(f"| {int(l)} | {int(a.distance)} | " + " | ".join(row) + " |")
    table = "\n".join(rows)
    print()
    print(table)
    for label in ("untrained", "trained"):
        d = ds.sel(network=label)
        print(f"{label}: phases end at t = {d.t_stop.values} (converged to ‖μ‖∞ < 1e-5: "
              f"{d.converged.mean('sample').values} of the samples, free/nudged)")
        a = arrival.sel(network=label).values
        monotone = bool(np.all(np.diff(a) < 0))
        print(f"{label}: arrival time grows with the distance from the output at every layer: {monotone}")
    print(f"\nwrote {out / 'error_backprop.nc'} and {out / 'error_backprop.png'}")
    print(f"machine: {platform.processor() or platform.machine()}, jax {jax.__version__} on {jax.default_backend()}")
    return ds, table


if __name__ == "__main__":
    main()
