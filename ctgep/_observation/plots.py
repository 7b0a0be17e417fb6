"""Figures of a record (see :func:`ctgep.record`): error signals, state heatmaps, phase portraits.

Every function takes the dataset and returns a `matplotlib.figure.Figure` built without pyplot
(so no display or global backend is involved, and PNGs are rendered by Agg);
:func:`save_figures` writes the standard set as PNG files.
"""

import os

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .._observation.record import _phase, error_arrival_times


def _subplots(nrows=1, figsize=(6, 4), **kwargs):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, 1, **kwargs)


def plot_error_signal(ds: xr.Dataset, *, normalize: bool = False, fraction: float | None = 0.5, ax=None):
    """Per-layer error-signal magnitude over time in the nudged phase (mean over samples).

    `normalize` divides each layer's curve by its final value; `fraction` marks each layer's
    arrival time (None: no marks). The output layer is the darkest curve.
    """
    nudged = _phase(ds, "nudged")
    keep = np.isfinite(nudged.t.values)
    t = nudged.t.values[keep]
    mag = nudged.error_magnitude.isel(time=np.flatnonzero(keep)).mean("sample")
    fig, ax = (ax.figure, ax) if ax is not None else _subplots()
    layers = list(mag.layers.values)
    cmap = matplotlib.colormaps["viridis"]
    arrival = error_arrival_times(ds, fraction) if fraction else None
    for i, l in enumerate(layers):
        m = mag.sel(layers=l).values
        if normalize and m[-1] > 0:
            m = m / m[-1]
        color = cmap(1 - (i + 1) / (len(layers) + 0.5))
        label = f"layer {l}" + (" (output)" if l == layers[-1] else "")
        ax.plot(t, m, color=color, label=label)
        if arrival is not None and np.isfinite(arrival.sel(layers=l)):
            ta = float(arrival.sel(layers=l))
            ax.plot([ta], [np.interp(ta, t, m)], "o", color=color, ms=4)
    ax.set_xlabel("time in the nudged phase")
    ax.set_ylabel("‖(s^β(t) − s⁰)/β‖ (RMS, normalized)" if normalize else "‖(s^β(t) − s⁰)/β‖ (RMS over the layer)")
    title = "error signal per layer"
    if arrival is not None:
        title += f" (dots: {fraction:g} of final)"
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_state_heatmaps(ds: xr.Dataset, *, phase: str = "nudged", sample=None, variable: str = "state"):
    """Neuron states (or `variable="error"`) over time, one panel per recorded layer, for one sample."""
    if variable not in ("state", "error"):
        raise ValueError(f"variable={variable!r} must be 'state' or 'error'")
    sel = _phase(ds, phase)
    if sample is None:
        sample = int(ds.sample.values[0])
    if sample not in ds.sample.values:
        raise ValueError(f"sample={sample!r} was not recorded; recorded samples: {list(ds.sample.values)}")
    keep = np.flatnonzero(np.isfinite(sel.t.values))
    t = sel.t.values[keep]
    data = sel[variable].sel(sample=sample).isel(time=keep)
    layers = list(dict.fromkeys(ds.layer.values.tolist()))
    fig, axes = _subplots(len(layers), figsize=(7, 1.0 + 1.6 * len(layers)), squeeze=False, sharex=True)
    for ax, l in zip(axes[:, 0], layers):
        block = data.isel(neuron=np.flatnonzero(ds.layer.values == l))
        mesh = ax.pcolormesh(t, np.arange(block.sizes["neuron"]), block.values.T, shading="nearest",
                             cmap="viridis" if variable == "state" else "RdBu_r")
        if variable == "error":
            lim = float(np.nanmax(np.abs(block.values))) or 1.0
            mesh.set_clim(-lim, lim)
        ax.set_ylabel(f"layer {l}\nunit")
        fig.colorbar(mesh, ax=ax, pad=0.01)
    axes[-1, 0].set_xlabel(f"time in the {phase} phase")
    axes[0, 0].set_title(f"{variable} of sample {sample}, {phase} phase")
    fig.tight_layout()
    return fig


def plot_phase_portrait(ds: xr.Dataset, neurons=None, *, sample=None):
    """Trajectory of two neurons in their state plane: free phase, then nudged phase.

    `neurons`: two `neuron` coordinate values (global indices); default the first two recorded
    neurons of the last recorded layer (or the first two recorded at all).
    """
    if neurons is None:
        last = ds.layer.values == ds.layer.values.max()
        pool = ds.neuron.values[last] if last.sum() >= 2 else ds.neuron.values
        if len(pool) < 2:
            raise ValueError("a phase portrait needs at least two recorded neurons")
        neurons = pool[:2]
    neurons = [int(n) for n in neurons]
    if len(neurons) != 2:
        raise ValueError(f"neurons={neurons!r} must name exactly two neurons")
    for n in neurons:
        if n not in ds.neuron.values:
            raise ValueError(f"neurons: {n} was not recorded; recorded neurons: {list(ds.neuron.values)}")
    if sample is None:
        sample = int(ds.sample.values[0])
    if sample not in ds.sample.values:
        raise ValueError(f"sample={sample!r} was not recorded; recorded samples: {list(ds.sample.values)}")

    def name(n):
        c = ds.sel(neuron=n)
        return f"s[layer {int(c.layer)}, unit {int(c.unit)}]"

    fig, ax = _subplots(figsize=(5, 5))
    for phase, color in (("free", "tab:blue"), ("nudged", "tab:red")):
        s = ds.state.sel(phase=phase, sample=sample)
        a = s.sel(neuron=neurons[0]).values
        b = s.sel(neuron=neurons[1]).values
        ok = np.isfinite(a) & np.isfinite(b)
        ax.plot(a[ok], b[ok], ".-", color=color, ms=3, lw=1, label=f"{phase} phase")
        end = ds.final_state.sel(phase=phase, sample=sample)
        ax.plot(float(end.sel(neuron=neurons[0])), float(end.sel(neuron=neurons[1])), "*", color=color, ms=12)
    ax.set_xlabel(name(neurons[0]))
    ax.set_ylabel(name(neurons[1]))
    ax.set_title(f"phase portrait, sample {sample} (stars: fixed points)")
    ax.legend()
    fig.tight_layout()
    return fig


def save_figures(ds: xr.Dataset, out_dir, *, prefix: str = "", dpi: int = 120) -> dict[str, str]:
    """Write the error-signal, heatmap and phase-portrait figures as PNGs; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    figures = {
        "error_signal": lambda: plot_error_signal(ds),
        "state_heatmaps": lambda: plot_state_heatmaps(ds, phase="free"),
        "error_heatmaps": lambda: plot_state_heatmaps(ds, variable="error"),
    }
    if ds.sizes["neuron"] >= 2:
        figures["phase_portrait"] = lambda: plot_phase_portrait(ds)
    paths = {}
    for key, make in figures.items():
        fig = make()
        path = os.path.join(out_dir, f"{prefix}{key}.png")
        fig.savefig(path, dpi=dpi)
        paths[key] = path
    return paths
