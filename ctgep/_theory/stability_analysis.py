"""Basins of attraction, the descent check and the whole stability analysis as one dataset.

The paper's §5 conditions for a *good parameter*: (1) from any initial state the dynamics converge
to a fixed point — sampled here from `K` random initial states per input (:func:`basins`) — and
(2) ν is a descent direction, `∇J · ν < 0` (:func:`descent`). :func:`analyse` runs these with the
local analysis of :mod:`ctgep._theory.stability` and returns one `xarray.Dataset`;
:func:`plot` draws it and :func:`save`/:func:`load` round-trip it through netCDF. The descent
check is matrix free (GMRES over `jax.jvp` / its transpose); :func:`probe` condenses the local
analysis to the few numbers that training records (`training.analyse_every`).

Over 400 lines because the basin sampling, the descent check, the training probe, the combined
analysis and its table and figure share one dataset's conventions (names, units, attributes).
"""

import datetime
import pathlib
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from .._dynamics import field as F
from .._dynamics.networks import AbstractDynamics
from .._simulation.euler import Euler
from .._simulation.solver import AbstractStepper
from .._simulation.solvers import get_solver
from . import gradients as G
from .iteration import convergence
from .stability import (
    RATE,
    _attrs,
    _check,
    _flat_field,
    _flatten_batch,
    _linear_solver,
    _newton,
    fixed_points,
    jacobian_spectrum,
)

__all__ = ["PROBE_COLUMNS", "analyse", "basins", "descent", "load", "plot", "probe", "save"]


def _random_states(net, x, inits, key, scale):
    """`inits` initial states per input: init 0 is the network's own start (`init_state`), the
    others uniform in the state bounds, or N(0, scale²) for an unbounded activation."""
    batch = x.shape[0]
    xr_ = jnp.repeat(x, inits, axis=0)
    zero = net.init_state(xr_)
    bounds = net.state_bounds
    leaves, treedef = jax.tree_util.tree_flatten(zero)
    keys = jr.split(key, len(leaves))
    out = []
    for k, a in zip(keys, leaves):
        if bounds is None:
            r = scale * jr.normal(k, a.shape, a.dtype)
        else:
            r = jr.uniform(k, a.shape, a.dtype, bounds[0], bounds[1])
        first = (jnp.arange(a.shape[0]) % inits == 0)[:, None]
        out.append(jnp.where(first, a, r))
    del batch
    return xr_, jax.tree_util.tree_unflatten(treedef, out)


def _cluster(states, ok, tol):
    """Greedy clustering of one input's `(K, n)` final states in the ∞-norm: labels (−1: run
    not converged) and the number of clusters."""
    labels = np.full(len(states), -1)
    reps = []
    for i, (s, good) in enumerate(zip(states, ok)):
        if not good:
            continue
        for c, r in enumerate(reps):
            if np.max(np.abs(s - r)) <= tol:
                labels[i] = c
                break
        else:
            labels[i] = len(reps)
            reps.append(s)
    return labels, len(reps)


def basins(net: AbstractDynamics, x, *, inits: int = 8, key=None, solver=None, t_max: float = 200.0,
           tol: float | None = None, cluster_tol: float = 1e-3, polish: bool = True,
           scale: float = 1.0) -> xr.Dataset:
    """From `inits` initial states per input (init 0: the network's own start, zeros; the others
    uniform in the state bounds, or Gaussian with std `scale` without bounds) relax and polish
    (:func:`~ctgep._theory.stability.fixed_points`), then cluster the converged final states per
    input: two runs share a fixed point when their states differ by at most `cluster_tol` in the
    ∞-norm. Reports the number of distinct fixed points per input, whether the input has more than
    one (paper condition 1 fails), the runs that did not converge, and how many runs reach the
    fixed point of the default start."""
    _check(net, x, None, 0.0)
    inits = int(inits)
    if inits < 1:
        raise ValueError(f"inits={inits!r} must be at least 1")
    if not cluster_tol > 0:
        raise ValueError(f"cluster_tol={cluster_tol!r} must be positive")
    key = jr.PRNGKey(0) if key is None else key
    xx, s0 = _random_states(net, x, inits, key, scale)
    fp = fixed_points(net, xx, s_init=s0, solver=solver, t_max=t_max, tol=tol, polish=polish)
    batch = x.shape[0]
    flat = _flatten_batch(fp.state).reshape(batch, inits, -1)
    ok = np.asarray(fp.converged).reshape(batch, inits)
    labels = np.full((batch, inits), -1)
    count = np.zeros(batch, int)
    for i in range(batch):
        labels[i], count[i] = _cluster(flat[i], ok[i], cluster_tol)
    same = np.array([np.mean(l[l >= 0] == l[0]) if l[0] >= 0 and (l >= 0).any() else np.nan for l in labels])
    dist = "uniform in the state bounds" if net.state_bounds is not None else f"normal, std {scale:g}"
    return xr.Dataset(
        {
            "basin_label": (("sample", "init"), labels, _attrs("fixed point reached (cluster index; −1: did not converge)", "1")),
            "basin_residual": (("sample", "init"), np.asarray(fp.residual, np.float64).reshape(batch, inits),
                               _attrs("‖μ‖∞ at the end of the run", RATE)),
            "basin_converged": (("sample", "init"), ok, _attrs("run reached a fixed point (residual < tol)", "1")),
            "n_fixed_points": ("sample", count, _attrs("distinct fixed points reached from the initial states", "1")),
            "multistable": ("sample", count > 1, _attrs("more than one fixed point reached (paper condition 1 fails)", "1")),
            "fraction_to_default": ("sample", same, _attrs("fraction of converged runs ending at the fixed point of the default start (init 0)", "1")),
            "fraction_multistable": ((), float(np.mean(count > 1)), _attrs("fraction of inputs with more than one fixed point", "1")),
            "fraction_not_converged": ((), float(np.mean(~ok)), _attrs("fraction of runs (inputs × inits) not converged", "1")),
            "fraction_inputs_not_converged": ((), float(np.mean(~ok.all(axis=1))), _attrs("fraction of inputs with a run that did not converge", "1")),
        },
        coords={"sample": np.arange(batch), "init": np.arange(inits)},
        attrs={"cluster_tol": float(cluster_tol), "inits": inits, "init_distribution": dist,
               "basin_tol": float(fp.tol), "basin_t_max": float(t_max)},
    )


def _dot(a, b):
    return float(ravel_pytree(a)[0] @ ravel_pytree(b)[0])


#: Relative accuracy of the matrix-free solves of the descent check (GMRES), per dtype.
_GMRES_RTOL = {"float64": 1e-12, "float32": 1e-6}
DESCENT_SOLVERS = ("gmres", "dense")


@eqx.filter_jit
def _matrix_free_rbp_nu(net, x, y, s, rtol, restart, max_steps):
    """`(∇J, ν, residual)` for one batch without forming a Jacobian: per sample, GMRES solves
    `Jμᵀ w = ∂C/∂s` (recurrent backprop) and `Jμ u = ∂C/∂s` (ν) over the field linearised once
    at `s` (`jax.linearize`; its transpose for `Jμᵀ`), vmapped over the batch. `residual`: per
    sample the larger relative residual `‖Jμ u − b‖∞/‖b‖∞` of the two solves."""
    params, static = F.partition(net)
    dc_ds = F.cost_gradient(net, s, y)
    dj_dtheta = jax.grad(lambda p: jnp.mean(eqx.combine(p, static).cost(s, y)))(params)
    zero = jnp.zeros((), x.dtype)
    solver = lx.GMRES(rtol=rtol, atol=rtol, restart=restart, max_steps=max_steps)

    def one(xi, si, ri):
        f, flat = _flat_field(net, xi, None, zero, si)
        rf, unravel = ravel_pytree(ri)
        scale = jnp.max(jnp.abs(rf))
        scale = jnp.where(scale > 0, scale, 1.0)
        b = rf / scale  # ‖b‖∞ = 1, so that rtol and atol mean the same
        op = lx.linearise(lx.JacobianLinearOperator(lambda v, _: f(v), flat))
        u = lx.linear_solve(op, b, solver, throw=False).value
        w = lx.linear_solve(op.T, b, solver, throw=False).value
        res = jnp.maximum(jnp.max(jnp.abs(op.mv(u) - b)), jnp.max(jnp.abs(op.T.mv(w) - b)))
        return unravel(u * scale), unravel(w * scale), res

    u, w, res = jax.vmap(one)(x, s, dc_ds)
    g_w = F.synapse_vjp(params, static, s, x, w)  # (1/B) Σ_i (∂μ/∂θ)ᵀ w_i
    g_u = F.synapse_vjp(params, static, s, x, u)
    grad = jax.tree_util.tree_map(lambda a, b: b - a, g_w, dj_dtheta)
    nu = jax.tree_util.tree_map(lambda a, b: a - b, g_u, dj_dtheta)
    return grad, nu, res


def _rbp_nu(net, x, y, s, solver, polish):
    """`(∇J, ν, worst relative residual of the linear solves; NaN for the dense solver)`."""
    if solver == "dense":
        return G.rbp(net, x, y, s_free=s), G.nu(net, x, y, s_free=s), np.nan
    n = sum(a.shape[-1] for a in jax.tree_util.tree_leaves(s))
    zero = jnp.zeros((), x.dtype)
    if polish:
        s = _newton(net, x, None, zero, s, 8, _linear_solver(n, x), 1e-13 if x.dtype == jnp.float64 else 1e-5)
    rtol = _GMRES_RTOL.get(jnp.dtype(x.dtype).name, 1e-6)
    g, v, res = _matrix_free_rbp_nu(net, x, y, s, rtol, min(60, n), 20 * n)
    return g, v, float(jnp.max(res))


def descent(net: AbstractDynamics, x, y, *, s=None, fp_ok=None, batch_size: int = 20,
            max_batches: int | None = None, solver: str = "gmres", polish: bool = True) -> xr.Dataset:
    """Paper condition 2 per batch of `batch_size` samples: `∇J · ν` (negative: ν descends J),
    the cosine and the angle between ν and `−∇J`, with `∇J` by recurrent backprop and ν
    (Theorem 1) at the free fixed points `s` (solved when None). Samples with `fp_ok` false (no
    fixed point) are left out; `batch_start` indexes the kept samples.

    `solver="gmres"` (default) is matrix-free: one GMRES solve with `Jμ` and one with `Jμᵀ` per
    sample over the linearised field (jvp and its transpose), vmapped over the batch, to a
    relative residual of 1e-12 (float64) or 1e-6 (float32), reported as `descent_residual`;
    with `polish` the states are first Newton-polished (LU up to 1024 units, GMRES above).
    `solver="dense"` uses :func:`ctgep.gradients.rbp` and :func:`ctgep.gradients.nu` (a dense
    Jacobian and its LU per sample: `O(n³)`, minutes per batch at n ≈ 1000).
    """
    _check(net, x, y, 0.0)
    if solver not in DESCENT_SOLVERS:
        raise ValueError(f"solver={solver!r} must be one of {DESCENT_SOLVERS}")
    if s is None:
        s = fixed_points(net, x).state
    elif hasattr(s, "state"):
        s = s.state
    keep = np.flatnonzero(np.asarray(fp_ok)) if fp_ok is not None else np.arange(x.shape[0])
    x, y = x[keep], y[keep]
    s = jax.tree_util.tree_map(lambda u: u[keep], s)
    batch = x.shape[0]
    if batch == 0:
        raise ValueError("descent: no sample has a converged fixed point")
    batch_size = max(1, min(int(batch_size), batch))
    starts = list(range(0, batch - batch_size + 1, batch_size)) or [0]
    if max_batches is not None:
        starts = starts[: int(max_batches)]
    dots, cos, gn, nn, res = [], [], [], [], []
    for a in starts:
        sl = slice(a, a + batch_size)
        sb = jax.tree_util.tree_map(lambda u: u[sl], s)
        g, v, r = _rbp_nu(net, x[sl], y[sl], sb, solver, polish)
        dots.append(_dot(g, v))
        res.append(r)
        gn.append(float(np.linalg.norm(ravel_pytree(g)[0])))
        nn.append(float(np.linalg.norm(ravel_pytree(v)[0])))
        cos.append(-dots[-1] / (gn[-1] * nn[-1]) if gn[-1] > 0 and nn[-1] > 0 else np.nan)
    cos = np.clip(np.array(cos), -1.0, 1.0)
    return xr.Dataset(
        {
            "descent_dot": ("batch", np.array(dots), _attrs("∇J · ν (negative: ν is a descent direction)", "1")),
            "descent_cosine": ("batch", cos, _attrs("cosine between ν and −∇J", "1")),
            "descent_angle": ("batch", np.degrees(np.arccos(cos)), _attrs("angle between ν and −∇J", "degrees")),
            "grad_norm": ("batch", np.array(gn), _attrs("‖∇J‖ (recurrent backprop)", "1")),
            "nu_norm": ("batch", np.array(nn), _attrs("‖ν‖", "1")),
            "descent_residual": ("batch", np.array(res, np.float64),
                                 _attrs("largest relative residual ‖Jμ u − b‖∞/‖b‖∞ of the batch's GMRES solves (NaN: dense LU)", "1")),
            "batch_start": ("batch", np.array(starts), _attrs("first sample of the batch (among those with a fixed point)", "1")),
        },
        coords={"batch": np.arange(len(starts))},
        attrs={"descent_batch_size": batch_size, "descent_solver": solver},
    )


#: The columns :func:`probe` returns (the metrics columns of `training.analyse_every`).
PROBE_COLUMNS = ("probe_abscissa", "probe_asymmetry", "probe_descent_angle", "probe_fixed_points", "probe_time")


def probe(net: AbstractDynamics, x, y, *, solver=None, t_max: float = 200.0, n_eig: int = 4) -> dict:
    """A few numbers on the stability of `net` on the probe batch `(x, y)`, for monitoring
    training (`training.analyse_every`): `probe_abscissa`, the **median** over the samples of the
    spectral abscissa max Re λ(Jμ) at the free fixed point (1/τ); `probe_asymmetry`, the
    **median** of `‖Jμ − Jμᵀ‖_F/‖Jμ‖_F`; `probe_descent_angle`, the angle (degrees) between ν
    and `−∇J` of the whole probe batch (`J` its mean cost; one batch of :func:`descent`, matrix
    free); `probe_fixed_points`, the fraction of samples with a fixed point (the others are left
    out of the three above); `probe_time`, the seconds it took. `solver`: the relaxation of
    :func:`~ctgep._theory.stability.fixed_points` (default ``Euler(dt=0.5)``).
    """
    _check(net, x, y, 0.0)
    t0 = time.perf_counter()
    fp = fixed_points(net, x, solver=solver, t_max=t_max)
    ok = np.flatnonzero(np.asarray(fp.converged))
    out = dict.fromkeys(PROBE_COLUMNS, float("nan"))
    out["probe_fixed_points"] = len(ok) / x.shape[0]
    if len(ok):
        xs, ys = x[ok], y[ok]
        s = jax.tree_util.tree_map(lambda a: a[ok], fp.state)
        spec = jacobian_spectrum(net, xs, s, n_eig=n_eig, symmetric=False)
        d = descent(net, xs, ys, s=s, batch_size=len(ok), max_batches=1, polish=False)
        out.update(probe_abscissa=float(np.nanmedian(spec.spectral_abscissa.values)),
                   probe_asymmetry=float(np.median(spec.asymmetry.values)),
                   probe_descent_angle=float(d.descent_angle.values[0]))
    out["probe_time"] = time.perf_counter() - t0
    return out


def analyse(net: AbstractDynamics, x, y=None, *, solver=None, inits: int = 8, key=None, n_eig: int = 6,
            method: str = "auto", tol: float | None = None, conv_tol: float = 1e-4, t_max: float = 200.0,
            cluster_tol: float = 1e-3, descent_batch: int = 20, descent_batches: int | None = None,
            descent_solver: str = "gmres", log=None) -> xr.Dataset:
    """The whole analysis of a network on inputs `x` (targets `y` for the descent check):

    fixed points from the default start (`fp_*`), the spectrum of `Jμ` there, the Euler
    iteration's spectral radius with predicted and measured steps (`solver`, a
    :class:`ctgep.Euler`, default ``Euler(dt=0.5)``), basins from `inits` initial states per
    input (skipped when 0), and the descent check (when `y` is given; `descent_solver` as for
    :func:`descent`, at the polished fixed points found first). Timings of each part are
    in the attributes (seconds of wall clock).
    """
    _check(net, x, y, 0.0)
    if descent_solver not in DESCENT_SOLVERS:
        raise ValueError(f"descent_solver={descent_solver!r} must be one of {DESCENT_SOLVERS}")
    solver = Euler(dt=0.5) if solver is None else get_solver(solver)
    if not isinstance(solver, AbstractStepper):
        raise ValueError(f"solver must be a fixed-step iteration such as ctgep.Euler (the iteration analysed), got {solver!r}")
    key = jr.PRNGKey(0) if key is None else key
    say = log or (lambda m: None)
    timings = {}

    def timed(name, f):
        t0 = time.perf_counter()
        say(f"{name} …")
        out = f()
        jax.block_until_ready(jax.tree_util.tree_leaves(out) if not isinstance(out, xr.Dataset) else 0)
        timings[name] = time.perf_counter() - t0
        say(f"{name}: {timings[name]:.1f} s")
        return out

    fp = timed("fixed_points", lambda: fixed_points(net, x, solver=solver, t_max=t_max, tol=tol))
    parts = [xr.Dataset(
        {
            "fp_residual": ("sample", np.asarray(fp.residual, np.float64), _attrs("‖μ‖∞ at the fixed point after the Newton polish", RATE)),
            "fp_converged": ("sample", np.asarray(fp.converged), _attrs("fixed point found (residual < tol)", "1")),
            "relax_steps": ("sample", np.asarray(fp.relax_steps), _attrs("relaxation steps before the Newton polish", "steps")),
            "relax_time": ("sample", np.asarray(fp.relax_time, np.float64), _attrs("relaxation time before the Newton polish", "τ")),
        },
        coords={"sample": np.arange(x.shape[0])}, attrs={"fp_tol": float(fp.tol)})]
    parts.append(timed("jacobian_spectrum", lambda: jacobian_spectrum(net, x, fp, n_eig=n_eig, method=method, log=log)))
    parts.append(timed("convergence", lambda: convergence(net, x, solver=solver, fixed=fp, tol=conv_tol, t_max=t_max,
                                                          n_eig=n_eig, method=method)))
    if inits > 0:
        parts.append(timed("basins", lambda: basins(net, x, inits=inits, key=key, solver=solver, t_max=t_max,
                                                    tol=tol, cluster_tol=cluster_tol)))
    if y is not None:
        parts.append(timed("descent", lambda: descent(net, x, y, s=fp.state, fp_ok=fp.converged, batch_size=descent_batch,
                                                      max_batches=descent_batches, solver=descent_solver,
                                                      polish=False)))
    ds = xr.merge(parts, combine_attrs="no_conflicts")
    ds = ds.assign_coords(sample=np.arange(x.shape[0]))
    ds.sample.attrs.update(_attrs("input index", "1"))
    ds.eig.attrs.update(_attrs("eigenvalue rank", "1"))
    if "init" in ds.coords:
        ds.init.attrs.update(_attrs("initial state index (0: the network's default start)", "1"))
    if "batch" in ds.coords:
        ds.batch.attrs.update(_attrs("descent-check batch index", "1"))
    ds.attrs.update({
        "title": "ctgep stability: fixed points, spectra, basins and the descent check",
        "network": type(net).__name__,
        "sizes": str(getattr(net, "sizes", "")),
        "activation": str(getattr(net, "activation", "")),
        "dtype": str(x.dtype),
        "time_unit": "τ (membrane time constant)",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} jax {jax.__version__} {jax.default_backend()}",
        **{f"seconds_{k}": float(v) for k, v in timings.items()},
        "seconds_total": float(sum(timings.values())),
    })
    return ds


def save(ds: xr.Dataset, path) -> pathlib.Path:
    """Write `ds` as netCDF (attributes kept; read it back with :func:`load`)."""
    path = pathlib.Path(path)
    ds.to_netcdf(path)
    return path


def load(path) -> xr.Dataset:
    """Read a stability dataset written by :func:`save` fully into memory."""
    with xr.open_dataset(path) as ds:
        return ds.load()


def summary(ds: xr.Dataset) -> list[tuple[str, str]]:
    """(quantity, value) rows for a printed table."""
    rows = []

    def q(name, fmt="{:.3g}"):
        if name in ds:
            v = ds[name].values
            v = v[np.isfinite(v)] if v.dtype.kind == "f" else v
            if v.size:
                med = np.median(v)
                rows.append((f"{ds[name].attrs.get('long_name', name)} [{ds[name].attrs.get('units', '')}]",
                             f"median {fmt.format(med)}, min {fmt.format(np.min(v))}, max {fmt.format(np.max(v))}"))

    rows.append(("samples", str(ds.sizes["sample"])))
    if "fp_converged" in ds:
        rows.append(("fixed point found (from the default start)", f"{100 * float(ds.fp_converged.mean()):.1f} %"))
    for name in ("fp_residual", "spectral_abscissa", "symmetric_max", "asymmetry", "condition_number",
                 "spectral_radius", "measured_steps", "predicted_steps"):
        q(name)
    if "spectral_abscissa" in ds:
        rows.append(("linearly stable (max Re λ < 0)", f"{100 * float((ds.spectral_abscissa < 0).mean()):.1f} %"))
    if "spectral_radius" in ds:
        rows.append((f"{ds.attrs.get('iteration', 'Euler')} radius < 1 (dt {ds.attrs.get('dt', '')})",
                     f"{100 * float((ds.spectral_radius < 1).mean()):.1f} %"))
    if "n_fixed_points" in ds:
        rows.append(("fixed points per input (from inits)", f"max {int(ds.n_fixed_points.max())}, "
                     f"mean {float(ds.n_fixed_points.mean()):.2f} (cluster tol {ds.attrs.get('cluster_tol')})"))
        rows.append(("inputs with > 1 fixed point (condition 1 fails)", f"{100 * float(ds.fraction_multistable):.1f} %"))
        rows.append(("runs not converged", f"{100 * float(ds.fraction_not_converged):.1f} %"))
    if "descent_dot" in ds:
        rows.append(("batches with ∇J·ν < 0 (condition 2 holds)", f"{100 * float((ds.descent_dot < 0).mean()):.1f} %"))
        q("descent_angle", "{:.1f}")
    if "seconds_total" in ds.attrs:
        rows.append(("wall time", f"{ds.attrs['seconds_total']:.1f} s"))
    return rows


def plot(ds: xr.Dataset, path) -> pathlib.Path:
    """Six panels: the eigenvalues of `Jμ` with the Euler stability region `|1 + dt λ| < 1`, those
    of the iteration matrix with the unit circle, asymmetry vs spectral abscissa, fixed points per
    input, measured vs predicted steps, and the descent angles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    dt = float(ds.attrs.get("dt", 0.5))
    th = np.linspace(0, 2 * np.pi, 400)

    ax = axes[0, 0]
    re, im = ds.eig_real.values.ravel(), ds.eig_imag.values.ravel()
    ax.scatter(re, im, s=4, alpha=0.3, label=f"λ(Jμ), {ds.sizes['eig']} leading per sample")
    ax.plot(-1 / dt + np.cos(th) / dt, np.sin(th) / dt, "k--", lw=1, label=f"plain Euler dt={dt:g}: |1 + dt λ| = 1")
    ax.axvline(0, color="gray", lw=0.8)
    ax.set(xlabel="Re λ [1/τ]", ylabel="Im λ [1/τ]", title="spectrum of Jμ at the fixed points")
    ax.legend(fontsize=7, loc="lower left")

    ax = axes[0, 1]
    if "iter_eig_real" in ds:
        ax.scatter(ds.iter_eig_real.values.ravel(), ds.iter_eig_imag.values.ravel(), s=4, alpha=0.3, color="C1")
        ax.plot(np.cos(th), np.sin(th), "k--", lw=1, label="|z| = 1")
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize=7)
    ax.set(xlabel="Re z", ylabel="Im z", title=f"iteration matrix: {ds.attrs.get('iteration', '')}, dt={dt:g}")

    ax = axes[0, 2]
    ax.scatter(ds.asymmetry, ds.spectral_abscissa, s=6, alpha=0.5)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set(xlabel="‖Jμ − Jμᵀ‖_F / ‖Jμ‖_F", ylabel="max Re λ(Jμ) [1/τ]", title="asymmetry vs spectral abscissa")

    ax = axes[1, 0]
    if "n_fixed_points" in ds:
        counts = ds.n_fixed_points.values
        edges = np.arange(0, max(counts.max(), 2) + 2) - 0.5
        ax.hist(counts, bins=edges, rwidth=0.8)
        ax.set(xlabel=f"distinct fixed points from {ds.sizes['init']} initial states", ylabel="inputs",
               title=f"basins: {100 * float(ds.fraction_multistable):.1f} % multistable, "
                     f"{100 * float(ds.fraction_not_converged):.1f} % runs not converged")
    else:
        ax.text(0.5, 0.5, "no basin sampling", ha="center", transform=ax.transAxes)

    ax = axes[1, 1]
    if "measured_steps" in ds:
        m, p = ds.measured_steps.values, ds.predicted_steps.values
        fin = np.isfinite(m) & np.isfinite(p)
        unsettled, diverging = int(np.sum(~np.isfinite(m))), int(np.sum(~np.isfinite(p)))
        if fin.any():
            hi = max(m[fin].max(), p[fin].max())
            bins = np.linspace(0, hi + 1, 30)
            ax.hist(m[np.isfinite(m)], bins=bins, alpha=0.6, label=f"measured ({unsettled} did not settle)")
            ax.hist(p[np.isfinite(p)], bins=bins, alpha=0.6, label=f"predicted ({diverging} radius ≥ 1)")
            ax.legend(fontsize=7)
        else:  # nothing to histogram: say why rather than leave the panel blank
            ax.text(0.5, 0.5, f"no sample both settled and has radius < 1\n"
                              f"{unsettled} of {m.size} did not settle, {diverging} with radius ≥ 1",
                    ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel=f"steps to ‖μ‖∞ < {ds.attrs.get('convergence_tol', '')} (× dt = {dt:g} τ)", ylabel="samples",
               title="convergence: measured vs ⌈log(tol/r0)/log ρ(M)⌉")

    ax = axes[1, 2]
    if "descent_angle" in ds:
        ax.hist(ds.descent_angle.values, bins=20)
        ax.axvline(90, color="k", ls="--", lw=1, label="90°: ∇J·ν = 0")
        ax.legend(fontsize=7)
        ax.set(xlabel="angle(ν, −∇J) [degrees]", ylabel="batches", title="descent check (condition 2)")
    else:
        ax.text(0.5, 0.5, "no targets: no descent check", ha="center", transform=ax.transAxes)
    fig.suptitle(f"ctgep stability — {ds.attrs.get('network', '')} {ds.attrs.get('sizes', '')} "
                 f"{ds.attrs.get('activation', '')}, {ds.sizes['sample']} inputs", fontsize=10)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
