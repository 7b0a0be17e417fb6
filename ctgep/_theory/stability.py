"""Fixed points, Jacobian spectra and the stability of the discretised relaxation (issue 22).

The paper's §5 calls θ a *good parameter* when (1) the dynamics converge to a fixed point from any
initial state and (2) ν is a descent direction. This module measures the local half of (1): the
fixed point `s*` of `μ^β = μ − β ∂C/∂s` (relaxation, then an optimistix Newton polish), the
spectrum of `Jμ = ∂μ^β/∂s` there, and the spectrum of the iteration matrix of the Euler scheme
that is actually run (:class:`ctgep.Euler`: plain, preconditioned = Jacobi, alternating = block
Gauss–Seidel, in :mod:`.iteration`), with the number of steps it predicts. :mod:`.stability_analysis` adds the global
half (basin sampling) and condition (2); both return `xarray.Dataset`s.

Time is in units of the membrane time constant τ: eigenvalues of `Jμ` are rates in 1/τ.

Small states (`n ≤ DENSE_MAX`) use the dense Jacobian per sample; larger ones the matrix-free
Arnoldi method of ARPACK (`scipy.sparse.linalg.eigs`) over a `LinearOperator` whose matvec is a
jitted `jax.jvp` of the per-sample field, for the `n_eig` leading eigenvalues only. For the
layered hard-sigmoid network `Jμ = W·diag(ρ′) − I` blockwise: every saturated unit (ρ′ = 0)
contributes an eigenvalue exactly −1, so the interesting part of the spectrum is that of the
active units.
"""


import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
import scipy.sparse.linalg as spla
import xarray as xr
from jax.flatten_util import ravel_pytree

from .._dynamics import field as F
from .._dynamics.networks import AbstractDynamics
from .._simulation.phases import PhaseResult, free_phase, nudged_phase
from .._simulation.euler import Euler
from .._simulation.solvers import get_solver

__all__ = ["DENSE_MAX", "FixedPoints", "fixed_points", "jacobian_spectrum"]

#: States up to this size get dense per-sample Jacobians (eigenvalues, condition number).
DENSE_MAX = 300
RATE = "1/τ"


def _attrs(long_name, units):
    return {"long_name": long_name, "units": units}


def _check(net, x, y, beta):
    if not isinstance(net, AbstractDynamics):
        raise TypeError(f"net must be an AbstractDynamics, got {type(net).__name__}")
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"x must be a (batch, features) array, got shape {getattr(x, 'shape', None)}")
    if y is not None and (getattr(y, "ndim", None) != 2 or y.shape[0] != x.shape[0]):
        raise ValueError(f"y must be a (batch, n_out) array with the batch of x, got shape {getattr(y, 'shape', None)}")
    if beta != 0.0 and y is None:
        raise ValueError("beta≠0 needs the targets y")


def _default_tol(x):
    return 1e-9 if x.dtype == jnp.float64 else 1e-5


# ------------------------------------------------------------------------------------------
# Per-sample fields on flat vectors


def _flat_field(net, xi, yi, beta, si):
    """`(f, s_flat)`: `f(v) = μ^β(θ, v_i, unravel(v))` flattened, for one unbatched sample."""
    drive = net.drive(xi[None])
    yb = None if yi is None else yi[None]
    flat, unravel = ravel_pytree(si)

    def f(v):
        s = jax.tree_util.tree_map(lambda a: a[None], unravel(v))
        mu = F.mu_beta(net, s, drive, yb, beta)
        return ravel_pytree(jax.tree_util.tree_map(lambda a: a[0], mu))[0]

    return f, flat


def _per_sample(fn, x, y, *trees):
    if y is None:
        return jax.vmap(lambda xi, *t: fn(xi, None, *t))(x, *trees)
    return jax.vmap(fn)(x, y, *trees)


def _flatten_batch(s):
    """A batched state `(batch, n_l)…` as one `(batch, n)` array (layers in order)."""
    return np.concatenate([np.asarray(a) for a in jax.tree_util.tree_leaves(s)], axis=-1)


def _residual(net, x, y, beta, s):
    """`‖μ^β(s)‖∞` per sample (the ODE's field, unclipped)."""
    return F.residual(F.mu_beta(net, s, net.drive(x), y, beta))


# ------------------------------------------------------------------------------------------
# Fixed points


class FixedPoints(eqx.Module, strict=True):
    """Fixed points of `μ^β`, per sample: `state` (batched), `residual = ‖μ^β‖∞` there (of the
    unclipped field after the Newton polish; of the projected field when a clipped Euler
    relaxation is not polished), `converged`: the relaxation settled and `residual < tol` (a
    Newton root reached from a state that never settled is no attractor), and the relaxation's
    own outcome
    (`relax_converged`, `relax_steps`, `relax_time` in τ)."""

    state: tuple
    residual: jax.Array
    converged: jax.Array
    relax_converged: jax.Array
    relax_steps: jax.Array
    relax_time: jax.Array
    tol: float = eqx.field(static=True)


@eqx.filter_jit
def _newton(net, x, y, beta, s, max_steps, linear_solver, tol):
    def one(xi, yi, si):
        f, _ = _flat_field(net, xi, yi, beta, si)
        flat, unravel = ravel_pytree(si)
        sol = optx.root_find(lambda v, _: f(v), optx.Newton(rtol=tol, atol=tol, linear_solver=linear_solver),
                             flat, max_steps=max_steps, throw=False)
        res = lambda v: jnp.max(jnp.abs(f(v)))
        r_new, r_old = res(sol.value), res(flat)
        better = jnp.isfinite(r_new) & (r_new <= r_old)
        return unravel(jnp.where(better, sol.value, flat))

    return _per_sample(one, x, y, s)


def _linear_solver(n, x):
    """Dense LU for small states; above, inexact Newton with matrix-free GMRES (the relaxation
    already put the state close, so a loose linear solve per step is enough)."""
    if n <= 1024:
        return lx.LU()
    tol = 1e-8 if x.dtype == jnp.float64 else 1e-4
    return lx.GMRES(rtol=tol, atol=tol, restart=40, max_steps=200)


def fixed_points(
    net: AbstractDynamics,
    x,
    y=None,
    *,
    beta: float = 0.0,
    s_init=None,
    solver=None,
    t_max: float = 200.0,
    tol: float | None = None,
    relax_tol: float | None = None,
    polish: bool = True,
    newton_steps: int = 8,
) -> FixedPoints:
    """Fixed points of `μ^β` for a batch, with a per-sample converged flag; never raises on a
    sample that does not settle (unlike :func:`ctgep.gradients.fixed_point`).

    The phase integrator (`solver`, default ``Euler(dt=0.5)``; any :func:`ctgep.free_phase`
    solver) relaxes from `s_init` (zeros; for β ≠ 0 the free fixed point) until `‖μ^β‖∞ <
    relax_tol` (default `max(tol, 1e-4)`) or `t_max` (in τ); then Newton (optimistix; LU, or
    matrix-free GMRES for states above 1024 units) polishes each sample, keeping the relaxed state
    where Newton does worse. `tol` (default 1e-9 in float64, 1e-5 in float32) decides
    `converged`. The polished state solves the *unclipped* ODE: with the hard sigmoid a
    saturated unit sits outside [0, 1] and the clipped scheme's fixed point is `clip(s*)`.
    """
    _check(net, x, y, beta)
    if isinstance(s_init, PhaseResult):
        s_init = s_init.state
    tol = _default_tol(x) if tol is None else float(tol)
    relax_tol = (max(tol, 1e-4) if polish else tol) if relax_tol is None else float(relax_tol)
    solver = Euler(dt=0.5) if solver is None else get_solver(solver)
    if beta == 0.0:
        r = free_phase(net, x, solver=solver, t_max=t_max, tol=relax_tol, s_init=s_init)
    else:
        if s_init is None:
            s_init = fixed_points(net, x, solver=solver, t_max=t_max, tol=tol, polish=polish).state
        r = nudged_phase(net, x, y, s_init, beta=beta, solver=solver, t_max=t_max, tol=relax_tol)
    s = r.state
    yy = None if beta == 0.0 else y
    bounds = solver.bounds(net)
    if polish and bounds is not None:
        # The clipped scheme settles at `clip(s*)`. A unit held at a bound has ρ′ undefined there
        # (the kink) and Newton may stall on it; one unclipped leak step `s + μ^β(s)` on those
        # units moves them to `s*` (exact for a leaky network whose ρ saturates at the bounds).
        mu = F.mu_beta(net, s, net.drive(x), yy, beta)
        s = jax.tree_util.tree_map(
            lambda a, m: jnp.where((a <= bounds[0]) | (a >= bounds[1]), a + m, a), s, mu)
    if polish:
        n = sum(a.shape[-1] for a in jax.tree_util.tree_leaves(s))
        s = _newton(net, x, yy, jnp.asarray(beta, x.dtype), s, int(newton_steps),
                    _linear_solver(n, x), 1e-13 if x.dtype == jnp.float64 else 1e-5)
        residual = _residual(net, x, yy, beta, s)
    else:
        residual = r.residual
    # Reached by the dynamics (the relaxation settled) and a root to `tol`: Newton from a state
    # that never settled can land on an unstable fixed point, which is no attractor.
    converged = r.converged & jnp.isfinite(residual) & (residual < tol)
    return FixedPoints(s, residual, converged, r.converged, r.steps, r.t_stop, tol)


# ------------------------------------------------------------------------------------------
# Jacobian spectrum


def _jacobians(net, x, y, beta, s):
    """Dense `(batch, n, n)` Jacobians `∂μ^β/∂s` over the flattened state."""

    def one(xi, yi, si):
        f, flat = _flat_field(net, xi, yi, beta, si)
        return jax.jacfwd(f)(flat)

    return _per_sample(one, x, y, s)


_jacobians_jit = eqx.filter_jit(_jacobians)


@eqx.filter_jit
def _frobenius(net, x, y, beta, s):
    """Per sample `‖Jμ‖_F` and `‖Jμ − Jμᵀ‖_F`, one dense Jacobian at a time (never all stored)."""

    def one(args):
        xi, yi, si = args
        f, flat = _flat_field(net, xi, yi, beta, si)
        j = jax.jacfwd(f)(flat)
        return jnp.linalg.norm(j), jnp.linalg.norm(j - j.T)

    yy = jnp.zeros((x.shape[0], 0), x.dtype) if y is None else y
    fn = (lambda a: one((a[0], None, a[2]))) if y is None else one
    return jax.lax.map(fn, (x, yy, s), batch_size=8)


def _matvecs(net, y_given):
    """Jitted per-sample `(Jv, Jᵀv)` for ARPACK: arguments (params, x_i, y_i, s_i, v, β)."""
    params, static = eqx.partition(net, eqx.is_inexact_array)

    @jax.jit
    def both(p, xi, yi, si, v, beta):
        n = eqx.combine(p, static)
        f, flat = _flat_field(n, xi, yi if y_given else None, beta, si)
        v = v.astype(flat.dtype)
        jv = jax.jvp(f, (flat,), (v,))[1]
        jtv = jax.vjp(f, flat)[1](v)[0]
        return jv, jtv

    @jax.jit
    def forward(p, xi, yi, si, v, beta):
        n = eqx.combine(p, static)
        f, flat = _flat_field(n, xi, yi if y_given else None, beta, si)
        return jax.jvp(f, (flat,), (v.astype(flat.dtype),))[1]

    return params, forward, both


def _arpack(op, k, which, symmetric, v0, tol):
    """Leading eigenvalues by ARPACK; `(values, converged)` (partial values when it stops early)."""
    n = op.shape[0]
    ncv = min(n, max(2 * k + 1, 24))
    try:
        if symmetric:
            vals = spla.eigsh(op, k=k, which=which, v0=v0, ncv=ncv, tol=tol, maxiter=50 * n,
                              return_eigenvectors=False)
        else:
            vals = spla.eigs(op, k=k, which=which, v0=v0, ncv=ncv, tol=tol, maxiter=50 * n,
                             return_eigenvectors=False)
        return np.asarray(vals), True
    except spla.ArpackNoConvergence as e:
        return np.asarray(e.eigenvalues), False


def _sort_real(vals, k):
    """The `k` eigenvalues of largest real part, descending, NaN-padded."""
    vals = np.asarray(vals, complex)
    vals = vals[np.argsort(-vals.real, kind="stable")][:k]
    return np.concatenate([vals, np.full(k - len(vals), np.nan + 0j)])


def _sort_abs(vals, k):
    vals = np.asarray(vals, complex)
    vals = vals[np.argsort(-np.abs(vals), kind="stable")][:k]
    return np.concatenate([vals, np.full(k - len(vals), np.nan + 0j)])


def _method(method, n):
    if method not in ("auto", "dense", "arnoldi"):
        raise ValueError(f"method={method!r} must be 'auto', 'dense' or 'arnoldi'")
    if method == "arnoldi" and n < 4:
        return "dense"
    return ("dense" if n <= DENSE_MAX else "arnoldi") if method == "auto" else method


def _unbatch(s, i):
    return jax.tree_util.tree_map(lambda a: a[i], s)


def _spectrum_setup(net, x, y, beta, s, n_eig, method):
    """Checked inputs of a spectrum: `(s, y or None, β as an array, n units, k eigenvalues, method)`."""
    _check(net, x, y, beta)
    if isinstance(s, (PhaseResult, FixedPoints)):
        s = s.state
    yy = None if beta == 0.0 else y
    n = sum(a.shape[-1] for a in jax.tree_util.tree_leaves(s))
    return s, yy, jnp.asarray(beta, x.dtype), n, max(1, min(int(n_eig), n)), _method(method, n)


def jacobian_spectrum(net, x, s, *, y=None, beta: float = 0.0, n_eig: int = 6, method: str = "auto",
                      seed: int = 0, arpack_tol: float = 1e-6, symmetric: bool = True, log=None) -> xr.Dataset:
    """The spectrum of `Jμ = ∂μ^β/∂s` at the (batched) fixed point `s`, per sample.

    Variables (dims `sample`, `eig`): the `n_eig` eigenvalues of largest real part
    (`eig_real`, `eig_imag`), the spectral abscissa `max Re λ` (< 0: linearly stable), the largest
    eigenvalue of the symmetric part `(Jμ + Jμᵀ)/2` (< 0: a contraction in the Euclidean norm),
    the asymmetry `‖Jμ − Jμᵀ‖_F / ‖Jμ‖_F` (exact, from one dense Jacobian at a time) and, for the
    dense method only, the 2-norm condition number (NaN otherwise). `method`: "dense", "arnoldi"
    (ARPACK: `eigs(which="LR")`, `eigsh(which="LA")`) or "auto" (dense up to `DENSE_MAX` units).
    `symmetric=False` skips the symmetric part's eigenvalue under "arnoldi" (`symmetric_max`
    NaN): half the ARPACK work.
    """
    s, yy, b, n, k, method = _spectrum_setup(net, x, y, beta, s, n_eig, method)
    batch = x.shape[0]
    eig = np.full((batch, k), np.nan + 0j)
    sym = np.full(batch, np.nan)
    cond = np.full(batch, np.nan)
    ok = np.ones(batch, bool)
    if method == "dense":
        jac = np.asarray(_jacobians_jit(net, x, yy, b, s), np.float64)
        vals = np.linalg.eigvals(jac)
        eig = np.stack([_sort_real(v, k) for v in vals])
        sym = np.linalg.eigvalsh((jac + np.swapaxes(jac, -1, -2)) / 2).max(axis=-1)
        cond = np.linalg.cond(jac)
        abscissa = vals.real.max(axis=-1)
    else:
        params, forward, both = _matvecs(net, yy is not None)
        v0 = np.random.default_rng(seed).standard_normal(n)
        km = min(k, n - 2)
        for i in range(batch):
            xi, si = x[i], _unbatch(s, i)
            yi = jnp.zeros((0,), x.dtype) if yy is None else yy[i]
            mv = lambda v: np.asarray(forward(params, xi, yi, si, jnp.asarray(v), b), np.float64)
            op = spla.LinearOperator((n, n), matvec=mv, dtype=np.float64)
            vals, c1 = _arpack(op, km, "LR", False, v0, arpack_tol)

            def smv(v):
                jv, jtv = both(params, xi, yi, si, jnp.asarray(v), b)
                return 0.5 * (np.asarray(jv, np.float64) + np.asarray(jtv, np.float64))

            sop = spla.LinearOperator((n, n), matvec=smv, dtype=np.float64)
            svals, c2 = _arpack(sop, 1, "LA", True, v0, arpack_tol) if symmetric else (np.array([np.nan]), True)
            eig[i] = _sort_real(vals, k)
            sym[i] = np.max(svals.real) if len(svals) else np.nan
            ok[i] = c1 and c2
            if log and (i + 1) % 100 == 0:
                log(f"Arnoldi: {i + 1}/{batch} samples")
        abscissa = np.nanmax(eig.real, axis=-1)
    fro, fro_skew = (np.asarray(a, np.float64) for a in _frobenius(net, x, yy, b, s))
    asym = np.where(fro > 0, fro_skew / np.where(fro > 0, fro, 1.0), 0.0)
    return xr.Dataset(
        {
            "eig_real": (("sample", "eig"), eig.real, _attrs("real part of eigenvalue of Jμ (largest real parts first)", RATE)),
            "eig_imag": (("sample", "eig"), eig.imag, _attrs("imaginary part of eigenvalue of Jμ", RATE)),
            "spectral_abscissa": ("sample", abscissa, _attrs("spectral abscissa max Re λ(Jμ)", RATE)),
            "symmetric_max": ("sample", sym, _attrs("largest eigenvalue of (Jμ + Jμᵀ)/2 (< 0: Euclidean contraction)", RATE)),
            "asymmetry": ("sample", asym, _attrs("‖Jμ − Jμᵀ‖_F / ‖Jμ‖_F", "1")),
            "condition_number": ("sample", cond, _attrs("2-norm condition number of Jμ (dense method only)", "1")),
            "eig_converged": ("sample", ok, _attrs("eigensolver converged (ARPACK; always true when dense)", "1")),
        },
        coords={"sample": np.arange(batch), "eig": np.arange(k)},
        attrs={"spectrum_method": method, "n_state": n, "beta": float(beta)},
    )
