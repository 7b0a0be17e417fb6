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

    dims    phase ("free", "nudged") · time · sample · neuron · layer · param
    coords  neuron → neuron_layer, unit;  (phase, time) → t;  sample → label, prediction;
            param → param_layer, param_rows, param_columns

Conventions (CF-style): every variable and coordinate has a `long_name`, every numeric one a
`units` (time in membrane time constants, ``"tau"``; dimensionless quantities ``"1"``). Layers
are numbered 1..L (input 0, output L) everywhere: the `layer` dimension, the neurons'
`neuron_layer`, and the parameter names, `Wf_l`, `Wb_l` and `b_l` feeding layer `l`. Lists are
attribute arrays (`model_sizes`); only the nested card stays a JSON string.
:func:`load_record` also reads files written before these conventions (a `layers` dimension,
0-based `Wf_0`, JSON attributes) and returns them in today's layout.
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
from .._simulation.results import RESULTS
from .record_io import _VARIABLE_ATTRS, _flat, _param_number, _version, public_param_name
from .monitors import (
    MonitorSpec,
    monitor,
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
    * `increments`: parameter names (`"Wf_1"`, `"Wb_1"`, `"b_2"`, …: `Wf_l`, `Wb_l` and `b_l`
      feed layer `l`) or `"all"` whose running
      synapse increment `∫(∂μ/∂θ)ᵀ ds / β` is recorded in full; norms of every parameter's
      increment are always recorded.

    Variables (NaN where a phase has no value: past its end, or nudged-only quantities in the
    free phase): `state(phase, time, sample, neuron)`; `error(…)` = `(s^β(t) − s⁰)/β`;
    `residual(phase, time, sample)` = `‖μ^β‖_∞` over all neurons; `error_magnitude(phase,
    time, sample, layer)` = RMS of the error over each layer's neurons; `synapse_norm(phase,
    time, param)` = Frobenius norm of the running increment; `increment_<param>(phase, time,
    <param>_post[, <param>_pre])`; per phase: `final_state`, `final_residual`, `converged`,
    `result` (the :class:`ctgep.RESULTS` code per sample), `t_stop`, `steps`. Coordinates:
    `neuron` (global index over the dynamic layers) with `neuron_layer` and `unit`; `time`
    (the grid times, or the record index for step sampling) and `t(phase, time)` (time since
    the phase began, NaN past the end); `sample` (batch index) with `label` and `prediction`;
    `layer` (1..L); `param` with `param_layer`, `param_rows`, `param_columns`. Every variable
    has `long_name` and `units` (time in τ). Attributes hold the settings as flat scalars and
    arrays (`model_sizes`, `solver_dt`, `sampling_kind` …; read them back as dicts with
    :func:`record_settings`), the card as a JSON string.
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
    names = [public_param_name(n) for n in param_names(params)]  # Wf_1 feeds layer 1
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
            ("phase", "time", "sample", "layer"),
            both("error_magnitude", (n_rows, len(widths)), dtype),
        ),
        "synapse_norm": (("phase", "time", "param"), both("synapse_norm", (len(names),), dtype)),
        "final_state": (("phase", "sample", "neuron"), np.stack([select(free_np), select(nudged_np)])),
        "final_residual": (
            ("phase", "sample"),
            np.stack([np.asarray(r.residual)[list(rows)] for r in (free, nudged)]),
        ),
        "converged": (("phase", "sample"), np.stack([np.asarray(r.converged)[list(rows)] for r in (free, nudged)])),
        "result": (("phase", "sample"), np.stack([np.asarray(r.code)[list(rows)] for r in (free, nudged)]).astype(np.int8)),
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
        "neuron_layer": ("neuron", layer_of),
        "unit": ("neuron", unit_of),
        "layer": np.arange(1, len(widths) + 1, dtype=np.int64),
        "param": np.array(names),
        "param_layer": ("param", np.array([_param_number(n) for n in names], dtype=np.int64)),
        "param_rows": ("param", np.array([a.shape[0] if a.ndim else 1 for a in leaves], dtype=np.int64)),
        "param_columns": ("param", np.array([a.shape[1] if a.ndim > 1 else 0 for a in leaves], dtype=np.int64)),
    }
    sampling_attr = {"kind": "steps", "every": every} if grid is None else {"kind": "grid", "points": int(len(grid))}
    model = _model_settings(net, names, params)
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
        "time_unit": "tau: the membrane time constant (ds/dt = -s + ... in units of 1/tau)",
        "parameter_numbering": "1-based: Wf_l, Wb_l and b_l feed layer l (input 0, output L)",
        **_flat("model", {k: v for k, v in model.items() if k != "parameters"}),
        **_flat("solver", solver.describe()),
        **_flat("sampling", sampling_attr),
        "card": json.dumps(card if card is not None else {}),
        "error_definition": "(s^beta(t) - s^0) / beta",
        "increment_definition": "integral of (dmu/dtheta)^T ds / beta so far, batch mean",
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    step_sampled = grid is None
    for name, (long_name, units) in _VARIABLE_ATTRS.items():
        if name in ds.variables:
            ds[name].attrs.update(long_name=long_name, **({"units": units} if units else {}))
    if step_sampled:
        ds["time"].attrs.update(long_name="record index (every n-th solver step; the time is t)", units="1")
    ds["result"].attrs.update(flag_values=np.array([int(r) for r in RESULTS], np.int8),
                              flag_meanings=" ".join(r.name for r in RESULTS))
    for i in inc:
        ds[f"increment_{names[i]}"].attrs.update(
            long_name=f"running synapse increment of {names[i]}, integral of (dmu/d{names[i]})^T ds / beta, batch mean",
            units="1")
    return ds
