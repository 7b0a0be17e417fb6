"""Record the free and nudged phases' trajectories into an `xarray.Dataset`.

`record` is an observer of the one phase integrator (`run_phase`, the code behind
:func:`ctgep.free_phase` and :func:`ctgep.nudged_phase`, `synapses="integrate"` for the nudged
phase): its monitors (:mod:`.monitors`) ride along as an :class:`ctgep.Observer`, so the recorded
final states are the phase results by construction. It stores, at the sampling times, only what
the monitors ask for: the chosen samples × neurons, per-sample residuals, per-layer summaries and
per-parameter synapse-increment norms (plus full increments of the parameters named in
`increments`). A fixed-step solver writes into preallocated buffers, an adaptive one hands a
`SubSaveAt(fn=...)` to diffrax, so memory grows with what is recorded, never with the steps.

Dataset layout (see :func:`record` for the variables)::

    dims    phase ("free", "nudged") · time · sample · neuron · layers · param
    coords  neuron → layer, unit;  (phase, time) → t;  sample → label, prediction
"""

import datetime
import json
import math
import platform
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .._dynamics import field as F
from .._dynamics.networks import AbstractDynamics
from .._simulation.phases import (
    check_common,
    check_state,
    check_targets,
    concrete_float,
    nudged_tolerance,
    run_phase,
)
from .._simulation.problem import Observer
from .monitors import (
    MonitorSpec,
    monitor,
    param_layer,
    param_names,
    resolve_layers,
    resolve_sampling,
    resolve_samples,
    resolve_units,
)

PHASES = ("free", "nudged")


# ----------------------------------------------------------------------------- runner


@eqx.filter_jit
def _record_phase(net, x, y, s_init, beta, solver, t_max, tol, stop, nudged, spec, widths):
    """One phase run by the simulator itself, with the monitors as its observer."""
    extract = monitor(spec, nudged, beta, s_init, widths)
    observer = Observer(lambda t, s, mu, acc: extract(s, mu, acc), every=spec.every, ts=spec.grid)
    synapses = "integrate" if nudged else "none"
    result, out = run_phase(net, x, y, s_init, beta, solver, t_max, tol, stop, synapses, None, observer)
    return result, out.record_ts, out.records


# ----------------------------------------------------------------------------- record


def _model_settings(net, names, params) -> dict:
    out: dict[str, Any] = {"class": type(net).__name__}
    for field in ("sizes", "activation"):
        if hasattr(net, field):
            v = getattr(net, field)
            out[field] = list(v) if isinstance(v, tuple) else v
    out["parameters"] = {n: list(a.shape) for n, a in zip(names, jax.tree_util.tree_leaves(params))}
    return out


def record(
    net: AbstractDynamics,
    x,
    y,
    *,
    beta: float,
    solver="tsit5",
    t_free: float = 100.0,
    t_nudged: float = 100.0,
    tol: float = 1e-4,
    layers=None,
    neurons=None,
    samples=None,
    sampling="grid",
    increments=None,
    stop_at_steady_state: bool = True,
    s_init=None,
    card: dict | None = None,
) -> xr.Dataset:
    """Run the free and nudged phases and return their trajectories as an `xarray.Dataset`.

    The phases are those of `ep_step(net, x, y, beta=beta, solver=solver, t_free=t_free,
    t_nudged=t_nudged, tol=tol, rule="integrated")`: both stop at `‖μ^β‖_∞ < tol · min(1, β)`.

    Monitors:

    * `layers`: dynamic layers to record the neurons of, numbered 1..L (input = 0 is clamped,
      −1 = output); default all.
    * `neurons`: None (all), a count k (the first k units of each chosen layer), a list of unit
      indices used in every chosen layer, or a dict `{layer: count-or-indices}`.
    * `samples`: None (all), a count k (the first k) or a list of batch indices.
    * `sampling`: `"grid"` (201 times on `[0, max(t_free, t_nudged)]`, the default; fewer
      for an Euler step too coarse for them), an array of
      times (a fixed grid, shared by both phases; the Euler scheme snaps it to its steps),
      `"steps"` (every solver step) or an int n (every n-th accepted step). Step sampling
      always records the initial and the final state.
    * `increments`: parameter names (`"Wf_0"`, `"Wb_1"`, `"b_2"`, …) or `"all"` whose running
      synapse increment `∫(∂μ/∂θ)ᵀ ds / β` is recorded in full; norms of every parameter's
      increment are always recorded.

    Variables (NaN where a phase has no value: past its end, or nudged-only quantities in the
    free phase): `state(phase, time, sample, neuron)`; `error(…)` = `(s^β(t) − s⁰)/β`;
    `residual(phase, time, sample)` = `‖μ^β‖_∞` over all neurons; `error_magnitude(phase,
    time, sample, layers)` = RMS of the error over each layer's neurons; `synapse_norm(phase,
    time, param)` = Frobenius norm of the running increment; `increment_<param>(phase, time,
    <param>_post[, <param>_pre])`; per phase: `final_state`, `final_residual`, `converged`,
    `t_stop`, `steps`. Coordinates: `neuron` (global index over the dynamic layers) with
    `layer` and `unit`; `time` (the grid times, or the record index for step sampling) and
    `t(phase, time)` (time since the phase began, NaN past the end); `sample` (batch index)
    with `label` and `prediction`; `layers`; `param` with `param_layer`. Attributes hold the
    settings, those netCDF cannot store natively as JSON strings (`model`, `solver`,
    `sampling`, `card`).
    """
    solver = check_common(net, x, solver, t_free, tol, "flag", "joint")
    check_common(net, x, solver, t_nudged, tol, "flag", "joint")
    b = concrete_float(beta)
    if b is None:
        raise ValueError(f"beta={beta!r} must be a concrete number")
    if b == 0.0 or not math.isfinite(b):
        raise ValueError(f"beta={beta!r} must be a finite non-zero nudging strength")
    if s_init is None:
        s_init = net.init_state(x)
    else:
        check_state(net, x, s_init, "s_init")
    check_targets(net, y, s_init)

    widths = tuple(int(a.shape[-1]) for a in jax.tree_util.tree_leaves(jax.eval_shape(net.init_state, x)))
    batch = int(x.shape[0])
    chosen_layers = resolve_layers(layers, widths)
    units = resolve_units(neurons, chosen_layers, widths, layers)
    rows = resolve_samples(samples, batch)
    horizon = max(float(t_free), float(t_nudged))
    step = solver.time_resolution
    every, grid = resolve_sampling(sampling, horizon, step)
    if grid is not None and step is not None and grid.size > 1 and np.min(np.diff(grid)) < step * (1 - 1e-9):
        raise ValueError(f"sampling: grid spacing {np.min(np.diff(grid)):g} is finer than the solver's step dt={step}")

    params, _ = F.partition(net)
    names = param_names(params)
    leaves = jax.tree_util.tree_leaves(params)
    if increments is None:
        inc = ()
    elif isinstance(increments, str) and increments == "all":
        inc = tuple(range(len(names)))
    else:
        if isinstance(increments, str):
            increments = [increments]
        inc = []
        for n in increments:
            if n not in names:
                raise ValueError(f"increments: unknown parameter {n!r}; the network has {names}")
            inc.append(names.index(n))
        inc = tuple(sorted(set(inc)))

    def spec_for(t_max):
        g = None if grid is None else tuple(float(t) for t in grid if t <= t_max * (1 + 1e-12))
        if g is not None and not g:
            g = (0.0,)
        return MonitorSpec(rows, units, inc, every, g)

    stop = bool(stop_at_steady_state)
    free, ts_f, rec_f = _record_phase(
        net, x, None, s_init, jnp.asarray(0.0, x.dtype), solver, float(t_free), nudged_tolerance(tol, b), stop, False,
        spec_for(float(t_free)), widths,
    )
    nudged, ts_n, rec_n = _record_phase(
        net, x, y, free.state, jnp.asarray(b, x.dtype), solver, float(t_nudged), nudged_tolerance(tol, b), stop, True,
        spec_for(float(t_nudged)), widths,
    )

    # ---- assemble on the host: trim unused buffer slots, pad the phases to a common length
    def valid(ts):
        ts = np.asarray(ts, dtype=float)
        return np.where(np.isfinite(ts), ts, np.nan)

    ts_f, ts_n = valid(ts_f), valid(ts_n)
    rec_f = jax.tree_util.tree_map(np.asarray, rec_f)
    rec_n = jax.tree_util.tree_map(np.asarray, rec_n)
    if grid is None:
        lengths = [int(np.sum(np.isfinite(ts))) for ts in (ts_f, ts_n)]  # records are contiguous
        n_time = max(lengths)
        time_coord = np.arange(n_time)
    else:
        n_time = len(grid)
        time_coord = grid

    def timeline(ts, rec):
        """Place a phase's records on the common time axis; NaN elsewhere."""
        out_t = np.full(n_time, np.nan)
        m = min(len(ts), n_time)
        out_t[:m] = ts[:m]
        fill = np.isfinite(out_t)

        def put(a):
            shape = (n_time,) + a.shape[1:]
            o = np.full(shape, np.nan, dtype=np.result_type(a.dtype, np.float32))
            o[:m][fill[:m]] = a[:m][fill[:m]]
            return o

        return out_t, {k: put(v) for k, v in rec.items()}

    t_f, r_f = timeline(ts_f, rec_f)
    t_n, r_n = timeline(ts_n, rec_n)

    def both(key, tail_shape, dtype):
        free_part = r_f.get(key)
        if free_part is None:
            free_part = np.full((n_time,) + tail_shape, np.nan, dtype)
        return np.stack([free_part, r_n[key]])

    n_rows = len(rows)
    n_neur = sum(len(u) for _, u in units)
    layer_of = np.concatenate([np.full(len(u), l) for l, u in units]).astype(np.int64)
    unit_of = np.concatenate([np.asarray(u) for _, u in units]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(widths)])
    neuron_id = offsets[layer_of - 1] + unit_of
    dtype = r_n["state"].dtype
    free_np = [np.asarray(a) for a in jax.tree_util.tree_leaves(free.state)]
    nudged_np = [np.asarray(a) for a in jax.tree_util.tree_leaves(nudged.state)]

    def select(state_list):
        return np.concatenate([state_list[l - 1][list(rows)][:, list(u)] for l, u in units], axis=-1)

    data_vars = {
        "state": (("phase", "time", "sample", "neuron"), both("state", (n_rows, n_neur), dtype)),
        "error": (("phase", "time", "sample", "neuron"), both("error", (n_rows, n_neur), dtype)),
        "residual": (("phase", "time", "sample"), both("residual", (n_rows,), dtype)),
        "error_magnitude": (
            ("phase", "time", "sample", "layers"),
            both("error_magnitude", (n_rows, len(widths)), dtype),
        ),
        "synapse_norm": (("phase", "time", "param"), both("synapse_norm", (len(names),), dtype)),
        "final_state": (("phase", "sample", "neuron"), np.stack([select(free_np), select(nudged_np)])),
        "final_residual": (
            ("phase", "sample"),
            np.stack([np.asarray(r.residual)[list(rows)] for r in (free, nudged)]),
        ),
        "converged": (("phase", "sample"), np.stack([np.asarray(r.converged)[list(rows)] for r in (free, nudged)])),
        "t_stop": (("phase",), np.array([float(free.t_stop[0]), float(nudged.t_stop[0])])),
        "steps": (("phase",), np.array([int(free.steps[0]), int(nudged.steps[0])], dtype=np.int64)),
    }
    for i in inc:
        name = names[i]
        shape = leaves[i].shape
        dims = [f"{name}_post", f"{name}_pre"] if len(shape) == 2 else [f"{name}_d{d}" for d in range(len(shape))]
        if len(shape) == 1:
            dims = [f"{name}_post"]
        data_vars[f"increment_{name}"] = (("phase", "time", *dims), both(f"inc{i}", tuple(shape), dtype))

    y_np = np.asarray(y)
    out_np = np.asarray(net.output(free.state))
    coords = {
        "phase": np.array(PHASES),
        "time": time_coord,
        "t": (("phase", "time"), np.stack([t_f, t_n])),
        "sample": np.asarray(rows, dtype=np.int64),
        "label": ("sample", np.argmax(y_np[list(rows)], axis=-1).astype(np.int64)),
        "prediction": ("sample", np.argmax(out_np[list(rows)], axis=-1).astype(np.int64)),
        "neuron": neuron_id.astype(np.int64),
        "layer": ("neuron", layer_of),
        "unit": ("neuron", unit_of),
        "layers": np.arange(1, len(widths) + 1, dtype=np.int64),
        "param": np.array(names),
        "param_layer": ("param", np.array([param_layer(n) for n in names], dtype=np.int64)),
    }
    sampling_attr = {"kind": "steps", "every": every} if grid is None else {"kind": "grid", "points": int(len(grid))}
    attrs = {
        "title": "ctgep free and nudged phase trajectories",
        "ctgep_version": _version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.system()} / jax {jax.__version__} on {jax.default_backend()}",
        "beta": b,
        "tol": float(tol),
        "t_free": float(t_free),
        "t_nudged": float(t_nudged),
        "stop_at_steady_state": int(stop),
        "batch_size": batch,
        "model": json.dumps(_model_settings(net, names, params)),
        "solver": json.dumps(solver.describe()),
        "sampling": json.dumps(sampling_attr),
        "card": json.dumps(card if card is not None else {}),
        "error_definition": "(s^beta(t) - s^0) / beta",
        "increment_definition": "integral of (dmu/dtheta)^T ds / beta so far, batch mean",
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds["state"].attrs["long_name"] = "neuron state s(t)"
    ds["error"].attrs["long_name"] = "error signal (s^beta(t) - s^0)/beta"
    ds["residual"].attrs["long_name"] = "residual max|mu^beta| over all neurons"
    ds["error_magnitude"].attrs["long_name"] = "RMS over the layer's neurons of the error signal"
    ds["synapse_norm"].attrs["long_name"] = "Frobenius norm of the running synapse increment"
    ds["t"].attrs["long_name"] = "time since the phase began (NaN past its end)"
    return ds

def _phase(ds, phase):
    if phase not in ds.phase.values:
        raise ValueError(f"phase={phase!r} must be one of {list(ds.phase.values)}")
    return ds.sel(phase=phase)


def error_arrival_times(ds: xr.Dataset, fraction: float = 0.5, per_sample: bool = False) -> xr.DataArray:
    """Per layer, the time the nudged phase's error magnitude first reaches `fraction` of its final value.

    The magnitude is `error_magnitude` (RMS over the layer's neurons of `(s^β(t) − s⁰)/β`),
    averaged over the recorded samples unless `per_sample`; the crossing is interpolated
    linearly between records. NaN where the final magnitude is zero. Coordinates:
    `final_magnitude` (the magnitude where the phase ended) and `distance` (layers from the output).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must be in (0, 1]")
    nudged = _phase(ds, "nudged")
    keep = np.isfinite(nudged.t.values)
    t = nudged.t.values[keep]
    mag = nudged.error_magnitude.isel(time=np.flatnonzero(keep))
    if not per_sample:
        mag = mag.mean("sample")

    def crossing(m):
        final = m[-1]
        if not np.isfinite(final) or final <= 0:
            return np.nan
        target = fraction * final
        k = int(np.argmax(m >= target))
        if k == 0:
            return float(t[0])
        m0, m1 = m[k - 1], m[k]
        return float(t[k - 1] + (target - m0) / (m1 - m0) * (t[k] - t[k - 1]))

    out = xr.apply_ufunc(crossing, mag, input_core_dims=[["time"]], vectorize=True)
    out = out.assign_coords(
        final_magnitude=mag.isel(time=-1).drop_vars(["time", "t"], errors="ignore"),
        distance=("layers", int(ds.layers.max()) - ds.layers.values),
    )
    out.name = "arrival_time"
    out.attrs["long_name"] = f"time for the error magnitude to reach {fraction:g} of its final value"
    return out


def _version() -> str:
    from .. import __version__

    return __version__


def load_record(path) -> xr.Dataset:
    """Load a dataset written by `record(...).to_netcdf(path)`, fully into memory, with its coordinates."""
    return xr.load_dataset(path)


def record_settings(ds: xr.Dataset) -> dict:
    """The JSON attributes of a record (`model`, `solver`, `sampling`, `card`) decoded."""
    return {k: json.loads(ds.attrs[k]) for k in ("model", "solver", "sampling", "card") if k in ds.attrs}
