"""The stability of the discretised relaxation that is actually run (docs/theory.md).

Linearised at a fixed point, one step of a fixed-step solver (:class:`ctgep.Euler`: plain,
preconditioned = Jacobi, alternating = block Gauss–Seidel; any :class:`ctgep.AbstractStepper`
that implements `linear_sweep`) maps an error `e` to `M e`. The spectral radius of `M` says
whether the iteration converges there and how fast: the steps it predicts are checked against
the steps the solver measures.
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg as spla
import xarray as xr

from .._dynamics import field as F
from .._simulation.phases import PhaseResult, free_phase, nudged_phase
from .._simulation.problem import PhaseProblem
from .._simulation.solver import AbstractStepper
from .stability import (
    RATE,
    FixedPoints,
    _arpack,
    _attrs,
    _check,
    _flatten_batch,
    _jacobians_jit,
    _matvecs,
    _spectrum_setup,
    _sort_abs,
    _unbatch,
    fixed_points,
)


# ------------------------------------------------------------------------------------------
# The discretised iteration


def _stepper(solver) -> AbstractStepper:
    if not isinstance(solver, AbstractStepper):
        raise ValueError(f"solver must be a fixed-step iteration such as ctgep.Euler, got {solver!r}")
    return solver


def unit_steps(net, x, s, *, y=None, beta: float = 0.0, solver: AbstractStepper):
    """Each unit's step `(batch, n)` as the solver takes it at `s` (for :class:`ctgep.Euler`:
    `dt`, or with `precondition` `dt / max(1, 1 + β c_i)`, `c = (∂²C/∂s²)·1`)."""
    return _iteration_parts(net, x, s, y, beta, solver)[0]


def _iteration_parts(net, x, s, y, beta, solver):
    """Steps `h`, free-unit mask `(batch, n)` and group membership `(groups, n)` of the sweep."""
    yy = None if y is None or beta == 0.0 else y
    problem = PhaseProblem(net, x, yy, jnp.asarray(beta, x.dtype))
    try:
        h, free, groups = _stepper(solver).linear_sweep(problem, s)
    except NotImplementedError as e:
        raise ValueError(str(e)) from None
    sizes = [a.shape[-1] for a in jax.tree_util.tree_leaves(s)]
    flat = lambda tree: np.concatenate([np.asarray(a) for a in jax.tree_util.tree_leaves(tree)], axis=-1)
    layer = np.concatenate([np.full(m, l) for l, m in enumerate(sizes)])
    member = np.stack([np.isin(layer, g) for g in groups])
    return flat(h).astype(np.float64), flat(free), member


def _iterate(v, jmv, h, active, groups):
    """One linearised clipped-Euler sweep: each group `u ← mask (u + h Jμ u)` on its rows."""
    u = v
    for g in groups:
        u = np.where(g, active * (u + h * jmv(u)), u)
    return u


def iteration_spectrum(net, x, s, *, solver: AbstractStepper, y=None, beta: float = 0.0, n_eig: int = 6,
                       method: str = "auto", seed: int = 0, arpack_tol: float = 1e-6) -> xr.Dataset:
    """Spectrum of the Euler scheme's iteration matrix at the fixed point `s`, per sample.

    Linearised at `s*`, one step of ``Euler(dt, clip, precondition, alternate)`` maps an error `e`
    to `M e`: plain or preconditioned, `M = P (I + H Jμ)` with `H` the per-unit steps
    (:func:`unit_steps`; at `dt = 1` with precondition: the Jacobi splitting of `−Jμ`); with
    `alternate`, the product of the two groups' sweeps (block Gauss–Seidel at `dt = 1`). With
    `clip` on a bounded network `P` keeps only the units strictly inside the bounds — a saturated
    unit is held by the clip, its row of `M` is zero. The spectral radius `< 1` is local
    convergence; the error then shrinks by that factor per step.
    """
    _stepper(solver)
    s, yy, b, n, k, method = _spectrum_setup(net, x, y, beta, s, n_eig, method)
    h, active, groups = _iteration_parts(net, x, s, yy, beta, solver)
    batch = x.shape[0]
    eig = np.full((batch, k), np.nan + 0j)
    ok = np.ones(batch, bool)
    if method == "dense":
        jac = np.asarray(_jacobians_jit(net, x, yy, b, s), np.float64)
        for i in range(batch):
            eye = np.eye(n)
            m = eye
            for g in groups:
                step = np.where(g[:, None], active[i][:, None] * (eye + h[i][:, None] * jac[i]), eye)
                m = step @ m
            eig[i] = _sort_abs(np.linalg.eigvals(m), k)
    else:
        params, forward, _ = _matvecs(net, yy is not None)
        v0 = np.random.default_rng(seed).standard_normal(n)
        for i in range(batch):
            xi, si = x[i], _unbatch(s, i)
            yi = jnp.zeros((0,), x.dtype) if yy is None else yy[i]
            jmv = lambda v: np.asarray(forward(params, xi, yi, si, jnp.asarray(v), b), np.float64)
            op = spla.LinearOperator((n, n), dtype=np.float64,
                                     matvec=lambda v: _iterate(v, jmv, h[i], active[i], groups))
            vals, ok[i] = _arpack(op, min(k, n - 2), "LM", False, v0 * active[i] + 1e-3 * v0, arpack_tol)
            eig[i] = _sort_abs(vals, k)
    radius = np.nanmax(np.abs(eig), axis=-1)
    name = getattr(solver, "name", type(solver).__name__)
    return xr.Dataset(
        {
            "iter_eig_real": (("sample", "eig"), eig.real, _attrs("real part of eigenvalue of the iteration matrix (largest modulus first)", "1")),
            "iter_eig_imag": (("sample", "eig"), eig.imag, _attrs("imaginary part of eigenvalue of the iteration matrix", "1")),
            "spectral_radius": ("sample", radius, _attrs(f"spectral radius of the {name} iteration matrix", "1")),
            "active_units": ("sample", active.sum(axis=-1), _attrs("units strictly inside the state bounds (not held by the clip)", "1")),
            "iter_eig_converged": ("sample", ok, _attrs("eigensolver converged (ARPACK; always true when dense)", "1")),
        },
        coords={"sample": np.arange(batch), "eig": np.arange(k)},
        attrs={"iteration": name, "iteration_method": method,
               **{k: (int(v) if isinstance(v, bool) else v) for k, v in solver.describe().items()
                  if k != "kind" and isinstance(v, (bool, int, float, str))}},
    )


def predicted_steps(radius, initial_residual, tol):
    """Steps for a residual to fall from `initial_residual` below `tol` at the rate `radius` per
    step: `log(tol / r0) / log(radius)`, rounded up; 0 when already below, inf when radius ≥ 1."""
    radius = np.asarray(radius, np.float64)
    r0 = np.asarray(initial_residual, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.ceil(np.log(tol / r0) / np.log(radius))
    k = np.where(radius >= 1.0, np.inf, k)
    k = np.where(radius <= 0.0, 1.0, k)
    return np.where(r0 < tol, 0.0, k)


def _projected_residual(net, x, y, beta, s, h, bounds):
    mu = _flatten_batch(F.mu_beta(net, s, net.drive(x), y, beta))
    if bounds is not None:
        flat = _flatten_batch(s)
        mu = (np.clip(flat + h * mu, *bounds) - flat) / h
    return np.max(np.abs(mu), axis=-1)


def convergence(net, x, *, solver: AbstractStepper, y=None, beta: float = 0.0, s_init=None, fixed=None,
                tol: float = 1e-4, t_max: float = 200.0, n_eig: int = 6, method: str = "auto",
                seed: int = 0) -> xr.Dataset:
    """Measured against predicted steps of the Euler relaxation, per sample.

    Runs the free phase (β = 0; from `s_init`, default zeros) or the nudged phase (from `s_init`,
    default the free fixed point; clipped to the state bounds for the clipped scheme, as the
    scheme itself holds it) with ``stop_at_steady_state=True`` and one loop per sample
    (`batch="vmap"`), and predicts its steps from the initial residual `r0 = ‖μ^β‖∞` (projected
    for the clipped scheme) and the iteration matrix's spectral radius at the fixed point `fixed`
    (solved if None): `log(tol / r0) / log(radius)` (:func:`predicted_steps`). The prediction is
    asymptotic: exact for a linear system dominated by its slowest mode, an estimate where the
    transient changes the active set. Returns the :func:`iteration_spectrum` variables too.
    """
    _check(net, x, y, beta)
    _stepper(solver)
    yy = None if beta == 0.0 else y
    if beta == 0.0:
        start = net.init_state(x) if s_init is None else s_init
    else:
        start = fixed_points(net, x).state if s_init is None else s_init
    if isinstance(start, (PhaseResult, FixedPoints)):
        start = start.state
    bounds = solver.bounds(net)
    if bounds is not None:  # the clipped scheme only ever holds states inside the bounds
        start = jax.tree_util.tree_map(lambda a: jnp.clip(a, *bounds), start)
    if fixed is None:
        fixed = fixed_points(net, x, y, beta=beta, s_init=start if beta != 0.0 else None)
    s_star = fixed.state if isinstance(fixed, (PhaseResult, FixedPoints)) else fixed
    if beta == 0.0:
        r = free_phase(net, x, solver=solver, t_max=t_max, tol=tol, s_init=start, batch="vmap")
    else:
        r = nudged_phase(net, x, y, start, beta=beta, solver=solver, t_max=t_max, tol=tol, batch="vmap")
    it = iteration_spectrum(net, x, s_star, solver=solver, y=y, beta=beta, n_eig=n_eig, method=method, seed=seed)
    h = np.asarray(unit_steps(net, x, start, y=yy, beta=beta, solver=solver), np.float64)
    r0 = _projected_residual(net, x, yy, beta, start, h, bounds)
    pred = predicted_steps(it.spectral_radius.values, r0, tol)
    measured = np.where(np.asarray(r.converged), np.asarray(r.steps, np.float64), np.inf)
    return it.assign(
        initial_residual=("sample", r0, _attrs("‖μ^β‖∞ at the initial state (projected when clipped)", RATE)),
        predicted_steps=("sample", pred, _attrs("predicted steps: ⌈log(tol/r0)/log(spectral radius)⌉ (inf: no convergence)", "steps")),
        measured_steps=("sample", measured, _attrs("measured steps to ‖μ^β‖∞ < tol (inf: not within t_max)", "steps")),
        predicted_time=("sample", pred * solver.time_resolution, _attrs("predicted relaxation time", "τ")),
        measured_time=("sample", measured * solver.time_resolution, _attrs("measured relaxation time", "τ")),
    ).assign_attrs(convergence_tol=float(tol), t_max=float(t_max), phase="free" if beta == 0.0 else "nudged")
