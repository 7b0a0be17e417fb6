"""Reference gradients of `J(θ) = mean_batch C(θ, v, s⁰_θ)` and the paper's ν (docs/theory.md).

Every function returns a pytree shaped like the network's trainable parameters — the same
structure as :func:`ctgep.ep_update`, i.e. ``eqx.partition(net, eqx.is_inexact_array)[0]``:

* :func:`rbp` — `∂J/∂θ = −(∂μ/∂θ)ᵀ Jμ⁻ᵀ (∂C/∂s)ᵀ` at the free fixed point (recurrent
  backprop / implicit differentiation, a lineax solve with `Jμᵀ`);
* :func:`nu` — the paper's vector field `ν = +(∂μ/∂θ)ᵀ Jμ⁻¹ (∂C/∂s)ᵀ` (Theorem 1; a solve with
  `Jμ` itself), the limit of the EP estimate, with the sign *to be added* like `ep_update`;
* :func:`bptt` — `∂/∂θ C(s_T)` by backpropagating through a diffrax solve of horizon `T`;
* :func:`finite_difference` — central differences of `J(θ)`, every parameter entry.

Also: the fixed point itself solved to machine precision (:func:`fixed_point`), its derivatives
(Lemma 2: :func:`dfixed_point_dtheta`, :func:`dfixed_point_dbeta`), `d/dβ C(s^β)` at β = 0
(Proposition 5: :func:`dcost_dbeta`), the per-sample Jacobian (:func:`jacobian`) and the
adjoint ODEs of Appendix B (:func:`trajectory`, :func:`bptt_adjoint`, :func:`rbp_adjoint`).

Jacobians are per sample (`Jμ` is block-diagonal across the batch), so the linear solves are
`vmap`ped over samples and cost `O(batch · n³)`. Use float64 (``jax.enable_x64``) for checks.

Over 400 lines because the references share their fixed-point and per-sample Jacobian machinery;
the clipped scheme's and the adjoint ODEs' are in clipped.py and adjoint.py.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jax.flatten_util import ravel_pytree

from .._dynamics import field as F
from .._errors import ConvergenceError
from .._dynamics.networks import AbstractDynamics
from .._simulation.adaptive import Adaptive
from .._simulation.phases import free_phase, nudged_phase
from .._simulation.results import PhaseResult

__all__ = [
    "bptt",
    "dcost_dbeta",
    "dfixed_point_dbeta",
    "dfixed_point_dtheta",
    "finite_difference",
    "fixed_point",
    "jacobian",
    "loss",
    "nu",
    "rbp",
]

#: Phase solver tight enough that the residual is not stalled by the step controller (float64).
TIGHT = Adaptive(diffrax.Tsit5(), rtol=1e-10, atol=1e-12)
_TIGHT32 = Adaptive(diffrax.Tsit5(), rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- helpers



def _check_horizon(T) -> float:
    """`T` as a float, or a one-line error: horizons are finite and non-negative."""
    try:
        T = float(T)
    except (TypeError, ValueError):
        raise ValueError(f"T={T!r} must be a non-negative horizon") from None
    if not (T >= 0 and math.isfinite(T)):
        raise ValueError(f"T={T!r} must be a non-negative horizon")
    return T

def _add1(tree):
    return jax.tree_util.tree_map(lambda a: a[None], tree)


def _drop1(tree):
    return jax.tree_util.tree_map(lambda a: a[0], tree)


def _sample_field(net, xi, yi, beta):
    """`s ↦ μ^β(θ, v_i, s)` for one sample, on an unbatched state (tuple of `(n_l,)`)."""
    drive = net.drive(xi[None])
    yb = None if yi is None else yi[None]

    def f(s, args=None):
        return _drop1(F.mu_beta(net, _add1(s), drive, yb, beta))

    return f


def _per_sample(fn, x, y, *trees):
    """`vmap` `fn(x_i, y_i, *tree_i)` over the batch; `y` may be None."""
    if y is None:
        return jax.vmap(lambda xi, *t: fn(xi, None, *t))(x, *trees)
    return jax.vmap(fn)(x, y, *trees)


def _solve_jacobian(net, x, y, beta, s, rhs, transpose):
    """Per sample, `(∂μ^β/∂s)⁻¹ rhs` (or with the transpose), by a lineax LU solve."""

    def one(xi, yi, si, ri):
        op = lx.JacobianLinearOperator(_sample_field(net, xi, yi, beta), si)
        op = op.T if transpose else op
        return lx.linear_solve(op, ri, solver=lx.LU()).value

    return _per_sample(one, x, y, s, rhs)


def _cost_grads(net, s, y):
    """Per-sample `∂C_i/∂s` (batched state) and the direct `∂J/∂θ` (zero for the default cost)."""
    params, static = F.partition(net)
    dc_ds = F.cost_gradient(net, s, y)
    dj_dtheta = jax.grad(lambda p: jnp.mean(eqx.combine(p, static).cost(s, y)))(params)
    return dc_ds, dj_dtheta


def _beta(beta, x):
    return jnp.asarray(beta, x.dtype)


def _check_inputs(net, x, y=None):
    if not isinstance(net, AbstractDynamics):
        raise TypeError(f"net must be an AbstractDynamics, got {type(net).__name__}")
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"x must be a (batch, features) array, got shape {getattr(x, 'shape', None)}")
    if y is not None and (getattr(y, "ndim", None) != 2 or y.shape[0] != x.shape[0]):
        raise ValueError(
            f"y must be a (batch, n_out) array with the batch of x {x.shape}, got shape "
            f"{getattr(y, 'shape', None)}"
        )


def _default_tol(x):
    return 1e-9 if x.dtype == jnp.float64 else 1e-5


def _tight(x):
    return TIGHT if x.dtype == jnp.float64 else _TIGHT32


# --------------------------------------------------------------------------- fixed points


def _newton_impl(net, x, y, beta, s, max_steps):
    """Polish `s` into a root of `μ^β` per sample (optimistix Newton); keep `s` where worse."""
    tol = 1e-13 if x.dtype == jnp.float64 else 1e-6

    def one(xi, yi, si):
        f = _sample_field(net, xi, yi, beta)
        sol = optx.root_find(
            lambda z, _: f(z), optx.Newton(rtol=tol, atol=tol), si, max_steps=max_steps, throw=False
        )
        res = lambda z: jnp.max(jnp.abs(ravel_pytree(f(z))[0]))
        better = res(sol.value) <= res(si)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), sol.value, si)

    return _per_sample(one, x, y, s)


_newton = eqx.filter_jit(_newton_impl)


def fixed_point(
    net: AbstractDynamics,
    x,
    y=None,
    *,
    beta: float = 0.0,
    s_init=None,
    relax: bool = True,
    t_max: float = 1000.0,
    tol: float | None = None,
    newton_steps: int = 32,
):
    """The free (`β = 0`) or nudged fixed point, solved to machine precision.

    With `relax=True` the network first relaxes from `s_init` (zeros for the free phase, the
    free fixed point for a nudged one) with a tight Tsit5 solve until `‖μ^β‖_∞ < tol`; then a
    Newton iteration (optimistix) polishes each sample. `relax=False` skips the ODE and polishes
    `s_init` directly — only for a guess already in the fixed point's basin (e.g. the fixed
    point of slightly different parameters). Raises :class:`ctgep.ConvergenceError` (a
    `RuntimeError`) if the relaxation does not settle.
    """
    _check_inputs(net, x, y)
    if isinstance(s_init, PhaseResult):
        s_init = s_init.state
    if beta != 0.0 and y is None:
        raise ValueError("beta≠0 needs the targets y")
    tol = _default_tol(x) if tol is None else tol
    if relax:
        free = None
        if beta == 0.0 or s_init is None:
            free = free_phase(net, x, solver=_tight(x), t_max=t_max, tol=tol,
                              s_init=s_init if beta == 0.0 else None)
            _require_converged(free, "free", t_max)
            s_init = free.state
        if beta != 0.0:
            # nudged_phase stops at tol·min(1, |β|); the Newton polish below only needs `tol`.
            r = nudged_phase(net, x, y, s_init, beta=beta, solver=_tight(x), t_max=t_max,
                             tol=tol / min(1.0, abs(float(beta))))
            _require_converged(r, "nudged", t_max)
            s_init = r.state
    elif s_init is None:
        raise ValueError("relax=False needs an s_init to polish")
    yy = None if beta == 0.0 else y
    return _newton(net, x, yy, _beta(beta, x), s_init, int(newton_steps))


def _require_converged(result, phase, t_max):
    """Raise :class:`ctgep.ConvergenceError` (a RuntimeError) unless every sample settled."""
    if not bool(jnp.all(result.converged)):
        worst = float(jnp.max(result.residual))
        raise ConvergenceError(
            f"the {phase} phase did not reach a fixed point (max residual {worst:.3g} at "
            f"t_max={t_max}); the network may oscillate or t_max is too short"
        )


def _free(net, x, s_free, **kw):
    if s_free is None:
        return fixed_point(net, x, **kw)
    if isinstance(s_free, PhaseResult):
        s_free = s_free.state
    return fixed_point(net, x, s_init=s_free, relax=False)


# --------------------------------------------------------------------------- gradients


def loss(net: AbstractDynamics, x, y, *, s_free=None, **fixed_point_kwargs):
    """`J(θ) = mean_batch C(θ, v, s⁰)` at the free fixed point."""
    _check_inputs(net, x, y)
    s = _free(net, x, s_free, **fixed_point_kwargs)
    return jnp.mean(net.cost(s, y))


@eqx.filter_jit
def _rbp_nu(net, x, y, s, which):
    params, static = F.partition(net)
    dc_ds, dj_dtheta = _cost_grads(net, s, y)
    adjoint = _solve_jacobian(net, x, None, 0.0, s, dc_ds, transpose=(which == "rbp"))
    g = F.synapse_vjp(params, static, s, x, adjoint)  # (1/B) Σ_i (∂μ/∂θ)ᵀ w_i
    if which == "rbp":
        return jax.tree_util.tree_map(lambda a, b: b - a, g, dj_dtheta)
    return jax.tree_util.tree_map(lambda a, b: a - b, g, dj_dtheta)


def rbp(net: AbstractDynamics, x, y, *, s_free=None, **fixed_point_kwargs):
    """`∂J/∂θ` by implicit differentiation of the free fixed point (recurrent backprop).

    `∂J/∂θ = ∂C/∂θ − (∂μ/∂θ)ᵀ Jμ⁻ᵀ (∂C/∂s)ᵀ` with `Jμ = ∂μ/∂s` at `s⁰` (paper Eq. 32).
    `s_free`: a free fixed point (state or PhaseResult) to start from; it is Newton-polished.
    Other keywords go to :func:`fixed_point`.
    """
    _check_inputs(net, x, y)
    s = _free(net, x, s_free, **fixed_point_kwargs)
    return _rbp_nu(net, x, y, s, "rbp")


def nu(net: AbstractDynamics, x, y, *, s_free=None, **fixed_point_kwargs):
    """The paper's ν (Theorem 1, Eq. 33): `−∂C/∂θ + (∂μ/∂θ)ᵀ Jμ⁻¹ (∂C/∂s)ᵀ`.

    The EP estimate `(∂μ/∂θ)ᵀ (s^β − s⁰)/β` tends to ν as β → 0; sign *to be added*, so
    `ν = −∂J/∂θ` exactly when `Jμ` is symmetric.
    """
    _check_inputs(net, x, y)
    s = _free(net, x, s_free, **fixed_point_kwargs)
    return _rbp_nu(net, x, y, s, "nu")


def finite_difference(
    net: AbstractDynamics, x, y, *, eps: float = 1e-5, s_free=None, chunk: int = 256,
    **fixed_point_kwargs,
):
    """Central differences `(J(θ + ε e_k) − J(θ − ε e_k)) / 2ε` for every parameter entry.

    Each `J` solves its fixed point by Newton from the nominal `s⁰` (the perturbed fixed point
    is `O(ε)` away), so the result is independent of the linear algebra of :func:`rbp` up to
    round-off. For small networks, in float64; `chunk` bounds how many run at once.
    """
    _check_inputs(net, x, y)
    if not eps > 0:
        raise ValueError(f"eps={eps!r} must be positive")
    s = _free(net, x, s_free, **fixed_point_kwargs)
    return _fd(net, x, y, s, jnp.asarray(eps, x.dtype), int(chunk))


@eqx.filter_jit
def _fd(net, x, y, s, eps, chunk):
    params, static = F.partition(net)
    flat, unravel = ravel_pytree(params)

    def J(theta):
        n = eqx.combine(unravel(theta), static)
        sp = _newton_impl(n, x, None, jnp.asarray(0.0, x.dtype), s, 32)
        return jnp.mean(n.cost(sp, y))

    basis = jnp.eye(flat.size, dtype=flat.dtype) * eps

    def central(e):
        return (J(flat + e) - J(flat - e)) / (2 * eps)

    return unravel(jax.lax.map(central, basis, batch_size=chunk))


def bptt(
    net: AbstractDynamics,
    x,
    y,
    *,
    T: float,
    s_init=None,
    solver=None,
    dt: float = 0.05,
    max_steps: int | None = None,
):
    """`∂/∂θ C(s_T)` (batch mean) by backpropagation through the diffrax solve from `s_init`.

    `s_init` (zeros by default) is held fixed. `solver`: a diffrax solver stepped with the
    constant step `dt` (default Tsit5), or a :class:`ctgep.Adaptive` whose PID controller is
    capped at `dtmax` (default `10·dt`: near a fixed point an uncapped controller takes steps
    outside the stability region and the derivative explodes, docs/theory.md#bptt-through-an-adaptive-solver). Backprop uses
    `RecursiveCheckpointAdjoint`. `T` may be 0 (the direct cost term only).
    """
    _check_inputs(net, x, y)
    T = _check_horizon(T)
    if not dt > 0:
        raise ValueError(f"dt={dt!r} must be positive")
    if isinstance(s_init, PhaseResult):
        s_init = s_init.state
    s0 = net.init_state(x) if s_init is None else s_init
    solver = diffrax.Tsit5() if solver is None else solver
    if isinstance(solver, Adaptive):
        dtmax = solver.dtmax if solver.dtmax is not None else 10 * dt
        controller = diffrax.PIDController(rtol=solver.rtol, atol=solver.atol, dtmax=dtmax)
        method, steps = solver.solver, solver.max_steps
    elif isinstance(solver, diffrax.AbstractSolver):
        controller, method = diffrax.ConstantStepSize(), solver
        steps = int(math.ceil(T / dt)) + 8
    else:
        raise ValueError(f"solver={solver!r} must be a diffrax solver or a ctgep.Adaptive")
    steps = steps if max_steps is None else int(max_steps)
    return _bptt(net, x, y, s0, jnp.asarray(T, x.dtype), method, controller,
                 jnp.asarray(dt, x.dtype), steps)


@eqx.filter_jit
def _bptt(net, x, y, s0, T, method, controller, dt, max_steps):
    params, static = F.partition(net)

    def J(p):
        n = eqx.combine(p, static)
        drive = n.drive(x)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, s, args: n.vector_field(s, drive)),
            method,
            t0=jnp.zeros_like(T),
            t1=T,
            dt0=jnp.minimum(dt, T) if isinstance(controller, diffrax.ConstantStepSize) else None,
            y0=s0,
            stepsize_controller=controller,
            saveat=diffrax.SaveAt(t1=True),
            adjoint=diffrax.RecursiveCheckpointAdjoint(),
            max_steps=max_steps,
        )
        return jnp.mean(n.cost(_drop1(sol.ys), y))

    return jax.grad(J)(params)


# --------------------------------------------------------------------------- Lemma 2, Prop. 5


def dfixed_point_dtheta(net: AbstractDynamics, x, tangent, *, y=None, beta: float = 0.0, s=None):
    """Lemma 2, Eq. 28 along a direction: `(ds^β/dθ)·t = −(∂μ^β/∂s)⁻¹ (∂μ/∂θ)·t` (batched state).

    `tangent` is shaped like the trainable parameters; `s` is the fixed point (solved if None).
    """
    _check_inputs(net, x, y)
    s = fixed_point(net, x, y, beta=beta) if s is None else s
    return _dfp_dtheta(net, x, None if beta == 0.0 else y, _beta(beta, x), s, tangent)


@eqx.filter_jit
def _dfp_dtheta(net, x, y, beta, s, tangent):
    params, static = F.partition(net)

    def mu_of(p):
        n = eqx.combine(p, static)
        return n.vector_field(s, n.drive(x))

    _, dmu = jax.jvp(mu_of, (params,), (tangent,))
    w = _solve_jacobian(net, x, y, beta, s, dmu, transpose=False)
    return jax.tree_util.tree_map(jnp.negative, w)


def dfixed_point_dbeta(net: AbstractDynamics, x, y, *, beta: float = 0.0, s=None):
    """Lemma 2, Eq. 29: `ds^β/dβ = (∂μ^β/∂s)⁻¹ (∂C/∂s)ᵀ` at the fixed point `s^β` (batched)."""
    _check_inputs(net, x, y)
    s = fixed_point(net, x, y, beta=beta) if s is None else s
    return _dfp_dbeta(net, x, y, _beta(beta, x), s)


@eqx.filter_jit
def _dfp_dbeta(net, x, y, beta, s):
    dc_ds, _ = _cost_grads(net, s, y)
    return _solve_jacobian(net, x, y, beta, s, dc_ds, transpose=False)


def dcost_dbeta(net: AbstractDynamics, x, y, *, s_free=None):
    """Proposition 5: `d/dβ C(θ, v, s^β)` at β = 0, per sample, `= ∂C/∂s · Jμ⁻¹ (∂C/∂s)ᵀ`.

    Non-positive at a stable fixed point (one where the symmetric part of `Jμ` is negative).
    """
    _check_inputs(net, x, y)
    s = _free(net, x, s_free)
    ds = _dfp_dbeta(net, x, y, _beta(0.0, x), s)
    dc_ds, _ = _cost_grads(net, s, y)
    return sum(jnp.sum(a * b, axis=-1) for a, b in zip(jax.tree_util.tree_leaves(dc_ds),
                                                        jax.tree_util.tree_leaves(ds)))


def jacobian(net: AbstractDynamics, x, s, *, y=None, beta: float = 0.0):
    """`∂μ^β/∂s` per sample as a `(batch, n, n)` matrix over the flattened state (layers in order)."""
    _check_inputs(net, x, y)
    return _jac(net, x, None if beta == 0.0 else y, _beta(beta, x), s)


@eqx.filter_jit
def _jac(net, x, y, beta, s):
    def one(xi, yi, si):
        return lx.JacobianLinearOperator(_sample_field(net, xi, yi, beta), si).as_matrix()

    return _per_sample(one, x, y, s)
