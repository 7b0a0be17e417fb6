"""The clipped Euler scheme's own fixed point, objective, ν and gradient (docs/theory.md#the-clipped-scheme).

The paper's scheme `s ← clip(s + ε μ^β, lo, hi)` (Eq. 59, `ctgep.Euler(clip=True)`) does not
relax to a root of `μ^β`: its fixed points are the *complementarity points* of `μ^β` on the box

    lo < s_i < hi  ⇒  μ^β_i = 0,      s_i = lo  ⇒  μ^β_i ≤ 0,      s_i = hi  ⇒  μ^β_i ≥ 0,

the same for every step `ε > 0` (and every per-unit step, so preconditioning and alternating
layers do not move them). With the active set `A` (units on a bound) held fixed, the free units
`F` solve `μ^β_F(s_F, s_A) = 0`, so with `J_FF = ∂μ_F/∂s_F` at the free fixed point

    ds_F/dβ = J_FF⁻¹ (∂C/∂s_F)ᵀ,   ds_A/dβ = 0
    ν_clip  = (∂μ_F/∂θ)ᵀ J_FF⁻¹ (∂C/∂s_F)ᵀ − ∂C/∂θ           (the limit of EP on this scheme)
    ∂J_clip/∂θ = ∂C/∂θ − (∂μ_F/∂θ)ᵀ J_FF⁻ᵀ (∂C/∂s_F)ᵀ        (J_clip(θ) = C(s*_clip(θ)))

valid while the active set does not change, i.e. when every bound unit pushes strictly outward
(`|μ_i| > 0` on `A`: strict complementarity; :func:`complementarity` measures the margin).

For a network without `state_bounds` the box is the whole space, `A` is empty and every
function here equals its counterpart in :mod:`ctgep._theory.gradients`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._dynamics import field as F
from .._dynamics.networks import AbstractDynamics
from .._simulation.euler import Euler
from .._simulation.solver import AbstractPhaseSolver
from .._simulation.phases import free_phase, nudged_phase
from .._simulation.results import PhaseResult
from .gradients import _beta, _check_inputs, _cost_grads, _per_sample, _require_converged, _sample_field

__all__ = [
    "active_set",
    "clipped_finite_difference",
    "clipped_fixed_point",
    "clipped_loss",
    "clipped_nu",
    "clipped_rbp",
    "complementarity",
]


def _bounds(net):
    b = net.state_bounds
    return (-jnp.inf, jnp.inf) if b is None else (float(b[0]), float(b[1]))


def _euler(solver, dt):
    if solver is None:
        return Euler(dt=dt, clip=True)
    if not (isinstance(solver, AbstractPhaseSolver) and solver.clips):
        raise ValueError(f"solver={solver!r} must clip the state, e.g. ctgep.Euler(clip=True) (the clipped scheme)")
    return solver


def active_set(net: AbstractDynamics, s):
    """Per layer, a `(batch, n_l)` boolean mask of the units on a bound of `net.state_bounds`."""
    lo, hi = _bounds(net)
    return tuple((a <= lo) | (a >= hi) for a in s)


# --------------------------------------------------------------------------- the fixed point


def _projected_newton_impl(net, x, y, beta, s, steps):
    """Per sample, projected Newton on the box: `A = {on a bound, μ pushing outward}`, a Newton
    step for the others, then the clip. Re-decides `A` each step (it does not assume it); keeps
    the input where the result's natural residual is worse."""
    lo, hi = _bounds(net)

    def one(xi, yi, si):
        f = _sample_field(net, xi, yi, beta)
        flat, unravel = ravel_pytree(si)
        g = lambda v: ravel_pytree(f(unravel(v)))[0]
        res = lambda v: jnp.max(jnp.abs(jnp.clip(v + g(v), lo, hi) - v))

        def body(v, _):
            mu, jac = g(v), jax.jacfwd(g)(v)
            act = ((v <= lo) & (mu <= 0)) | ((v >= hi) & (mu >= 0))
            free = ~act
            m = jnp.where(free[:, None] & free[None, :], jac, 0.0) + jnp.diag(act.astype(v.dtype))
            d = jnp.linalg.solve(m, -jnp.where(free, mu, 0.0))
            vn = jnp.clip(v + d, lo, hi)
            return jnp.where(jnp.all(jnp.isfinite(vn)) & (res(vn) <= res(v)), vn, v), None

        v, _ = jax.lax.scan(body, flat, None, length=steps)
        return unravel(v)

    return _per_sample(one, x, y, s)


_projected_newton = eqx.filter_jit(_projected_newton_impl)


def clipped_fixed_point(
    net: AbstractDynamics,
    x,
    y=None,
    *,
    beta: float = 0.0,
    s_init=None,
    solver: Euler | None = None,
    dt: float = 0.5,
    t_max: float = 5000.0,
    tol: float | None = None,
    newton_steps: int = 8,
    relax: bool = True,
):
    """The clipped Euler scheme's free (`β = 0`) or nudged fixed point, to machine precision.

    Runs the scheme itself (`solver`, default `ctgep.Euler(dt=dt, clip=True)`; any step,
    preconditioned or alternating, has the same fixed points) from `s_init` (zeros for the free
    phase, the clipped free fixed point for a nudged one) until its projected residual is below
    `tol` (1e-10 in float64), then polishes each sample by projected Newton (Newton on the units
    strictly inside the box, the units on a bound held there). Raises
    :class:`ctgep.ConvergenceError` when the scheme does not settle within `t_max`.
    `relax=False` only polishes `s_init`.
    """
    _check_inputs(net, x, y)
    if isinstance(s_init, PhaseResult):
        s_init = s_init.state
    if beta != 0.0 and y is None:
        raise ValueError("beta≠0 needs the targets y")
    solver = _euler(solver, dt)
    tol = (1e-10 if x.dtype == jnp.float64 else 1e-5) if tol is None else tol
    if relax:
        if beta == 0.0 or s_init is None:
            free = free_phase(net, x, solver=solver, t_max=t_max, tol=tol,
                              s_init=s_init if beta == 0.0 else None)
            _require_converged(free, "free (clipped Euler)", t_max)
            s_init = _projected_newton(net, x, None, _beta(0.0, x), free.state, int(newton_steps))
        if beta != 0.0:
            r = nudged_phase(net, x, y, s_init, beta=beta, solver=solver, t_max=t_max,
                             tol=tol / min(1.0, abs(float(beta))))  # it stops at tol·min(1, |β|)
            _require_converged(r, "nudged (clipped Euler)", t_max)
            s_init = r.state
    elif s_init is None:
        raise ValueError("relax=False needs an s_init to polish")
    yy = None if beta == 0.0 else y
    return _projected_newton(net, x, yy, _beta(beta, x), s_init, int(newton_steps))


def complementarity(net: AbstractDynamics, x, s, *, y=None, beta: float = 0.0) -> dict:
    """Per sample, how well `s` is a complementarity point of `μ^β` on the box, as numpy arrays:

    * `free_residual`: `max |μ_i|` over the units strictly inside the box (0 when none);
    * `violation`: the largest wrong-signed `μ_i` on a bound (`μ_i > 0` at `lo`, `< 0` at `hi`);
    * `margin`: the smallest `|μ_i|` on a bound — strict complementarity, the room the active
      set has before a perturbation changes it (`inf` when no unit is on a bound);
    * `n_active`, `n_free`: how many units are on a bound / inside.
    """
    _check_inputs(net, x, y)
    if isinstance(s, PhaseResult):
        s = s.state
    lo, hi = _bounds(net)
    mu = F.mu_beta(net, s, net.drive(x), None if beta == 0.0 else y, _beta(beta, x))
    v = np.concatenate([np.asarray(a) for a in s], axis=-1)
    m = np.concatenate([np.asarray(a) for a in mu], axis=-1)
    at_lo, at_hi = v <= lo, v >= hi
    act = at_lo | at_hi
    wrong = np.where(at_lo, np.maximum(m, 0.0), 0.0) + np.where(at_hi, np.maximum(-m, 0.0), 0.0)
    return {
        "free_residual": np.max(np.where(act, 0.0, np.abs(m)), axis=-1),
        "violation": np.max(wrong, axis=-1),
        "margin": np.min(np.where(act, np.abs(m), np.inf), axis=-1),
        "n_active": act.sum(axis=-1),
        "n_free": (~act).sum(axis=-1),
    }


# --------------------------------------------------------------------------- ν and the gradient


def _solve_free_block(net, x, y, beta, s, rhs, transpose):
    """Per sample, `w` with `w_F = J_FF⁻¹ rhs_F` (or `J_FF⁻ᵀ`) and `w_A = 0`, `A` the units on a bound."""
    lo, hi = _bounds(net)

    def one(xi, yi, si, ri):
        f = _sample_field(net, xi, yi, beta)
        flat, unravel = ravel_pytree(si)
        jac = jax.jacfwd(lambda v: ravel_pytree(f(unravel(v)))[0])(flat)
        jac = jac.T if transpose else jac
        free = ~((flat <= lo) | (flat >= hi))
        m = jnp.where(free[:, None] & free[None, :], jac, 0.0) + jnp.diag((~free).astype(flat.dtype))
        r = jnp.where(free, ravel_pytree(ri)[0], 0.0)
        return unravel(jnp.linalg.solve(m, r))

    return _per_sample(one, x, y, s, rhs)


@eqx.filter_jit
def _clipped_rbp_nu(net, x, y, s, which):
    params, static = F.partition(net)
    dc_ds, dj_dtheta = _cost_grads(net, s, y)
    w = _solve_free_block(net, x, None, jnp.asarray(0.0, x.dtype), s, dc_ds, transpose=(which == "rbp"))
    g = F.synapse_vjp(params, static, s, x, w)
    if which == "rbp":
        return jax.tree_util.tree_map(lambda a, b: b - a, g, dj_dtheta)
    return jax.tree_util.tree_map(lambda a, b: a - b, g, dj_dtheta)


def _free(net, x, s_free, kwargs):
    if s_free is None:
        return clipped_fixed_point(net, x, **kwargs)
    if isinstance(s_free, PhaseResult):
        s_free = s_free.state
    return clipped_fixed_point(net, x, s_init=s_free, relax=False)


def clipped_nu(net: AbstractDynamics, x, y, *, s_free=None, **fixed_point_kwargs):
    """ν of the clipped scheme: `(∂μ_F/∂θ)ᵀ J_FF⁻¹ (∂C/∂s_F)ᵀ − ∂C/∂θ` at its free fixed point.

    The limit as β → 0 of the EP update computed with `ctgep.Euler(clip=True)` (sign: to be
    added). `s_free`: the clipped free fixed point (polished here); other keywords go to
    :func:`clipped_fixed_point`.
    """
    _check_inputs(net, x, y)
    return _clipped_rbp_nu(net, x, y, _free(net, x, s_free, fixed_point_kwargs), "nu")


def clipped_rbp(net: AbstractDynamics, x, y, *, s_free=None, **fixed_point_kwargs):
    """`∂J_clip/∂θ = ∂C/∂θ − (∂μ_F/∂θ)ᵀ J_FF⁻ᵀ (∂C/∂s_F)ᵀ`, the gradient of the clipped scheme's
    objective `J_clip(θ) = mean C(s*_clip(θ))` (implicit differentiation with the active set fixed)."""
    _check_inputs(net, x, y)
    return _clipped_rbp_nu(net, x, y, _free(net, x, s_free, fixed_point_kwargs), "rbp")


def clipped_loss(net: AbstractDynamics, x, y, *, s_free=None, **fixed_point_kwargs):
    """`J_clip(θ) = mean_batch C(θ, v, s*_clip)` at the clipped scheme's free fixed point."""
    _check_inputs(net, x, y)
    return jnp.mean(net.cost(_free(net, x, s_free, fixed_point_kwargs), y))


def clipped_finite_difference(
    net: AbstractDynamics, x, y, *, eps: float = 1e-6, s_free=None, directions=None,
    chunk: int = 64, newton_steps: int = 8, **fixed_point_kwargs,
):
    """Central differences of `J_clip(θ)`, each side re-solving the clipped fixed point.

    Each perturbed fixed point is found by projected Newton from the nominal one, deciding its
    own active set (so a perturbation that changed it would show). Valid while `eps` is small
    against the complementarity margin. Every parameter entry (a pytree like :func:`clipped_rbp`),
    or, with `directions` (a `(k, n_params)` array), the `k` directional derivatives.
    """
    _check_inputs(net, x, y)
    if not eps > 0:
        raise ValueError(f"eps={eps!r} must be positive")
    s = _free(net, x, s_free, fixed_point_kwargs)
    params, _ = F.partition(net)
    flat, unravel = ravel_pytree(params)
    basis = jnp.eye(flat.size, dtype=flat.dtype) if directions is None else jnp.asarray(directions, flat.dtype)
    out = _clipped_fd(net, x, y, s, basis * eps, jnp.asarray(eps, x.dtype), int(chunk), int(newton_steps))
    return unravel(out) if directions is None else out


@eqx.filter_jit
def _clipped_fd(net, x, y, s, basis, eps, chunk, newton_steps):
    params, static = F.partition(net)
    flat, unravel = ravel_pytree(params)
    zero = jnp.asarray(0.0, x.dtype)

    def J(theta):
        n = eqx.combine(unravel(theta), static)
        return jnp.mean(n.cost(_projected_newton_impl(n, x, None, zero, s, newton_steps), y))

    return jax.lax.map(lambda e: (J(flat + e) - J(flat - e)) / (2 * eps), basis, batch_size=chunk)
