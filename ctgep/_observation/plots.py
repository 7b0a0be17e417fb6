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

from .record_io import _phase, error_arrival_times


def _subplots(nrows=1, figsize=(6, 4), **kwargs):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, 1, **kwargs)


def plot_error_signal(ds: xr.Dataset, *, normalize: bool = False, log: bool = True,
                      fraction: float | None = 0.5, ax=None):
    """Per-layer error-signal magnitude over time in the nudged phase (mean over samples).

    The magnitudes of the layers differ by orders of magnitude (a trained hidden layer's error
    is ~1e-3 beside the output's ~1), so the y axis is logarithmic (`log`); `normalize` divides
    each layer's curve by its final value instead (or as well). `fraction` marks each layer's
    arrival time (None: no marks). The output layer is the darkest curve.
    """
    nudged = _phase(ds, "nudged")
    keep = np.isfinite(nudged.t.values)
    t = nudged.t.values[keep]
    mag = nudged.error_magnitude.isel(time=np.flatnonzero(keep)).mean("sample")
    fig, ax = (ax.figure, ax) if ax is not None else _subplots()
    layers = list(mag.layer.values)
    cmap = matplotlib.colormaps["viridis"]
    arrival = error_arrival_times(ds, fraction) if fraction else None
    for i, l in enumerate(layers):
        m = mag.sel(layer=l).values
        if normalize and m[-1] > 0:
            m = m / m[-1]
        color = cmap(1 - (i + 1) / (len(layers) + 0.5))
        label = f"layer {l}" + (" (output)" if l == layers[-1] else "")
        ax.plot(t, m, color=color, label=label)
        if arrival is not None and np.isfinite(arrival.sel(layer=l)):
            ta = float(arrival.sel(layer=l))
            ax.plot([ta], [np.interp(ta, t, m)], "o", color=color, ms=4)
    if log:
        ax.set_yscale("log", nonpositive="mask")  # the error is 0 at t = 0
    ax.set_xlabel(r"time in the nudged phase $t$ ($\tau$)")
    ax.set_ylabel(r"$\|(s^\beta(t) - s^0)/\beta\|_{\mathrm{RMS}}$" + (" / final value" if normalize else ""))
    title = "error signal per layer"
    if arrival is not None:
        title += f" (dots: {fraction:g} of final)"
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_state_heatmaps(ds: xr.Dataset, *, phase: str = "nudged", sample=None, variable: str = "state",
                        max_neurons: int = 64):
    """Neuron states (or `variable="error"`) over time, one panel per recorded layer, for one sample.

    A layer with more than `max_neurons` recorded units shows `max_neurons` of them, evenly
    spaced (the y axis gives their unit indices); each panel has a labelled colour bar.
    """
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
    layers = list(dict.fromkeys(ds.neuron_layer.values.tolist()))
    fig, axes = _subplots(len(layers), figsize=(7, 1.0 + 1.6 * len(layers)), squeeze=False, sharex=True)
    label = r"state $s_i(t)$" if variable == "state" else r"error $(s^\beta_i(t) - s^0_i)/\beta$"
    for ax, l in zip(axes[:, 0], layers):
        idx = np.flatnonzero(ds.neuron_layer.values == l)
        shown = ""
        if len(idx) > max_neurons:  # e.g. a 512-unit layer: every k-th unit
            idx = idx[np.unique(np.linspace(0, len(idx) - 1, max_neurons).round().astype(int))]
            shown = f" ({len(idx)} of {int(np.sum(ds.neuron_layer.values == l))})"
        block = data.isel(neuron=idx)
        units = ds.unit.values[idx]
        mesh = ax.pcolormesh(t, np.arange(len(idx)), block.values.T, shading="nearest",
                             cmap="viridis" if variable == "state" else "RdBu_r")
        if variable == "error":
            lim = float(np.nanmax(np.abs(block.values))) if np.isfinite(block.values).any() else 0.0
            mesh.set_clim(-(lim or 1.0), lim or 1.0)
        ticks = np.unique(np.linspace(0, len(idx) - 1, min(len(idx), 5)).round().astype(int))
        ax.set_yticks(ticks, [str(int(units[i])) for i in ticks])
        ax.set_ylabel(f"layer {l}\nunit{shown}")
        fig.colorbar(mesh, ax=ax, pad=0.01, label=label)
    axes[-1, 0].set_xlabel(rf"time in the {phase} phase $t$ ($\tau$)")
    axes[0, 0].set_title(f"{variable} of sample {sample}, {phase} phase")
    fig.tight_layout()
    return fig


def plot_phase_portrait(ds: xr.Dataset, neurons=None, *, sample=None):
    """Trajectory of two neurons in their state plane: free phase, then nudged phase.

    `neurons`: two `neuron` coordinate values (global indices); default the first two recorded
    neurons of the last recorded layer (or the first two recorded at all).
    """
    if neurons is None:
        last = ds.neuron_layer.values == ds.neuron_layer.values.max()
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
        return rf"$s_{{{int(c.unit)}}}$ of layer {int(c.neuron_layer)}"

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
