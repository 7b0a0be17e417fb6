"""Linear readouts of every layer's free fixed point: has a layer learned features?

A multinomial logistic regression (scikit-learn, on standardised features) is fitted to what
each layer passes on at the free fixed point (a hidden layer's rates, the output layer's
state) on training examples and scored on test examples, the input pixels included as layer 0.
Set beside the network's own error (the argmax of its output layer), it separates the two ways
a network can underfit:

* the hidden layers carry little more than the pixels do (the readout of the last hidden layer
  is no better than the readout of the input): the *features* are the limit;
* the last hidden layer's readout is far better than the network's own output: the *output
  layer* (its rule, rate or clipping) is the limit.

The readout is a probe, not part of the model: it is fitted with a loss EP does not see.
"""

import warnings

import numpy as np
import xarray as xr

__all__ = ["linear_readout", "plot_readout"]


def _fixed_points(net, x, *, batch_size: int, progress, **relax) -> list[np.ndarray]:
    """What each layer passes on at the free fixed point of `x`, relaxed in batches: the rates
    `ρ(s_l)` of the hidden layers (what the next layer sees), then `net.output` (what the
    network predicts from). `progress(n_done)` is called per batch."""
    import jax.numpy as jnp

    from .._dynamics.activations import get_activation
    from .._simulation.phases import free_phase

    rho = get_activation(net.activation) if isinstance(getattr(net, "activation", None), str) else (lambda s: s)
    parts = []
    for i in range(0, len(x), batch_size):
        state = free_phase(net, jnp.asarray(x[i:i + batch_size]), policy="flag", **relax).state
        parts.append([np.asarray(rho(s)) for s in state[:-1]] + [np.asarray(net.output(state))])
        if progress is not None:
            progress(min(i + batch_size, len(x)))
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def _pipeline(C: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))


def _fit(a_train, y_train, a_test, y_test, Cs, max_iter: int):
    """(train error, test error, converged, chosen C): with several `Cs`, the one with the
    lowest error on the last fifth of the training examples (fitted on the rest), refitted on all."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        C = Cs[0]  # also when the held-out split leaves the fit a single class (tiny data)
        k = len(a_train) - max(1, len(a_train) // 5)  # fit on [:k], choose on [k:]
        if len(Cs) > 1 and len(np.unique(y_train[:k])) > 1:
            scores = [_pipeline(c, max_iter).fit(a_train[:k], y_train[:k]).score(a_train[k:], y_train[k:]) for c in Cs]
            C = Cs[int(np.argmax(scores))]
            caught.clear()  # only the final fit's convergence is reported
        clf = _pipeline(C, max_iter).fit(a_train, y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return 1.0 - clf.score(a_train, y_train), 1.0 - clf.score(a_test, y_test), converged, C


def linear_readout(net, x_train, y_train, x_test, y_test, *, solver, t_max: float, tol: float = 1e-4,
                   stop_at_steady_state: bool = False, C=(0.01, 0.1, 1.0), max_iter: int = 500,
                   batch_size: int = 500, progress=None, log=None) -> xr.Dataset:
    """Fit a linear readout to each layer's free fixed point and score it (see the module doc).

    `x_*`: inputs `(n, n_0)`; `y_*`: integer labels `(n,)`; `solver`, `t_max`, `tol`,
    `stop_at_steady_state`: the relaxation, as for :func:`ctgep.free_phase` (a card's: its
    solver, prediction horizon and phase settings, as `ctgep evaluate` predicts). Each hidden
    layer is read out from its rates `ρ(s_l)`, the last from `net.output`. `C`: inverse L2 strength
    of the logistic regression, or several, of which each layer takes the best on a held-out
    fifth of the training examples (the readout error moves by points with it, so layers of
    different widths are compared fairly only with it chosen). Returns a dataset over `layer`
    (0 = input … L = output) with `width`, `readout_train_error`, `readout_test_error`, `C`
    (the one used) and `converged` (the final L-BFGS fit ended within `max_iter`), and the
    network's own `network_train_error` / `network_test_error`. `progress(n)`: called with the
    number of examples relaxed so far; `log(message)`: before each layer's fit (minutes for
    wide layers).
    """
    from .._errors import UsageError

    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    y_train, y_test = np.asarray(y_train).astype(np.int64), np.asarray(y_test).astype(np.int64)
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim != 2 or y.shape != (len(x),):
            raise UsageError(f"x_{name} must be (n, features) with one label each in y_{name}: "
                             f"got {x.shape} and {y.shape}")
        if not len(x):
            raise UsageError(f"no {name} examples")
    if len(np.unique(y_train)) < 2:
        raise UsageError("the training examples hold a single class: a readout needs at least two")
    Cs = tuple(float(c) for c in np.atleast_1d(C))
    if not (Cs and all(c > 0 for c in Cs) and max_iter >= 1 and batch_size >= 1):
        raise UsageError(f"C={C}, max_iter={max_iter} and batch_size={batch_size} must be positive")
    if len(Cs) > 1 and len(x_train) < 10:
        raise UsageError(f"choosing C among {len(Cs)} values needs at least 10 training examples, got {len(x_train)}")

    done = len(x_train)
    relax = dict(solver=solver, t_max=t_max, tol=tol, stop_at_steady_state=stop_at_steady_state,
                 batch_size=batch_size)
    tr = _fixed_points(net, x_train, progress=progress, **relax)
    te = _fixed_points(net, x_test, progress=None if progress is None else (lambda k: progress(done + k)), **relax)
    layers = [(x_train, x_test), *zip(tr, te)]
    rows = []
    for k, (a, b) in enumerate(layers):
        if log is not None:
            log(f"fitting the readout of {'the input' if k == 0 else f'layer {k}'} ({a.shape[1]} features)")
        rows.append(_fit(a, y_train, b, y_test, Cs, max_iter))
    ds = xr.Dataset(
        {
            "width": ("layer", [a.shape[1] for a, _ in layers]),
            "readout_train_error": ("layer", [r[0] for r in rows]),
            "readout_test_error": ("layer", [r[1] for r in rows]),
            "C": ("layer", [r[3] for r in rows]),
            "converged": ("layer", np.array([r[2] for r in rows], np.int8)),
            "network_train_error": ((), float(np.mean(tr[-1].argmax(1) != y_train))),
            "network_test_error": ((), float(np.mean(te[-1].argmax(1) != y_test))),
        },
        coords={"layer": np.arange(len(layers))},
        attrs={"title": "ctgep readout: linear readouts of each layer's free fixed point",
               "probe": "multinomial logistic regression on standardised features (scikit-learn, L-BFGS); "
                        "C chosen per layer on the last fifth of the training examples when C_grid has several",
               "C_grid": list(Cs), "max_iter": int(max_iter), "t_max": float(t_max), "tol": float(tol),
               "stop_at_steady_state": int(stop_at_steady_state),
               "n_train": len(x_train), "n_test": len(x_test),
               "network": type(net).__name__, "sizes": str(getattr(net, "sizes", ""))},
    )
    ds["converged"].attrs["flag_values"] = "1: the fit converged within max_iter, 0: it did not"
    return ds


def plot_readout(ds: xr.Dataset, path=None):
    """Readout train/test error per layer (bars) against the network's own test error (line); a
    `matplotlib.figure.Figure` built without pyplot (no display, no global backend), written to
    `path` as PNG when given."""
    from matplotlib.figure import Figure

    layer = ds["layer"].values
    names = ["input" if k == 0 else ("output" if k == layer[-1] else f"layer {k}") for k in layer]
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    w = 0.38
    ax.bar(layer - w / 2, 100 * ds["readout_train_error"].values, w, label="readout, train")
    ax.bar(layer + w / 2, 100 * ds["readout_test_error"].values, w, label="readout, test")
    ax.axhline(100 * float(ds["network_test_error"]), color="k", ls="--", lw=1,
               label="network's own output, test")
    ax.set_xticks(layer, [f"{n}\n({int(k)})" for n, k in zip(names, ds["width"].values)])
    ax.set_ylabel("error (%)")
    ax.set_title(ds.attrs.get("source", "linear readout of each layer's free fixed point"), fontsize=9)
    top = 100 * max(float(ds["readout_train_error"].max()), float(ds["readout_test_error"].max()),
                    float(ds["network_test_error"]))
    ax.set_ylim(0, 1.3 * top if top > 0 else 1)  # room for the legend above the bars
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
