"""The free and nudged phases: `ds/dt = μ − β ∂C/∂s` run to steady state (docs/model.md).

Each phase is one ODE for the whole minibatch, integrated by the solver's own `relax`
(:mod:`ctgep._simulation.solver`). A steady-state test ends it once every sample's residual
`‖μ^β‖_∞` is below `tol`; the horizon `t_max` bounds it. Alongside the neurons the same solve
can integrate the synapses (integrated ν: `∫ (∂μ/∂θ)ᵀ ds`, and the continual mode where the
weights themselves move). :func:`run_phase` is the one driver: the public phases, the learning
rules and the recorder (through an :class:`Observer`) all call it.
"""

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._dynamics import field as F
from .._dynamics.networks import AbstractDynamics, State
from .problem import Observer, PhaseProblem
from .results import POLICIES, PhaseResult, Policy, apply_policy, sample_codes
from .solver import AbstractPhaseSolver, Relaxation
from .solvers import get_solver

SYNAPSES = ("none", "integrate", "continual")


def run_phase(
    net: AbstractDynamics, x, y, s_init: State, beta, solver: AbstractPhaseSolver, t_max: float,
    tol: float, stop: bool, synapses: str = "none", eta=None, observer: Observer | None = None,
) -> tuple[PhaseResult, Relaxation]:
    """Integrate one phase with `solver` and turn its outcome into per-sample result codes.

    Traceable (call it under `jit`); returns the :class:`PhaseResult` and the solver's raw
    :class:`Relaxation` (whose `records` hold what `observer` saved).
    """
    problem = PhaseProblem(net, x, y, beta, synapses, eta)
    out = solver.relax(problem, s_init, t_max=t_max, tol=tol, stop=stop, observer=observer)
    batch = x.shape[0]
    s = out.z["s"]
    code = sample_codes(out.residual, tol, F.finite(s), out.status)
    params = None
    if synapses == "continual":
        params = eqx.combine(out.z["theta"], problem.static)
    result = PhaseResult(
        state=s,
        t_stop=jnp.broadcast_to(jnp.asarray(out.t, out.residual.dtype), (batch,)),
        steps=jnp.broadcast_to(jnp.asarray(out.steps, jnp.int32), (batch,)),
        residual=out.residual,
        code=code,
        synapse_integral=out.z.get("acc"),
        params=params,
        residual_kind=solver.residual_kind,
    )
    return result, out


@eqx.filter_jit
def _relax(net, x, y, s_init, beta, solver, t_max, tol, stop, synapses, eta):
    return run_phase(net, x, y, s_init, beta, solver, t_max, tol, stop, synapses, eta)[0]


def check_common(net, x, solver, t_max, tol, policy, batch):
    """Validate the arguments every phase takes; return the solver object."""
    if not isinstance(net, AbstractDynamics):
        raise TypeError(f"net must be an AbstractDynamics, got {type(net).__name__}")
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"x must be a (batch, features) array, got shape {getattr(x, 'shape', None)}")
    sizes = getattr(net, "sizes", None)
    if sizes is not None and x.shape[-1] != sizes[0]:
        raise ValueError(f"x has {x.shape[-1]} features but the network's input layer has {sizes[0]}")
    check_finite(x, "x")
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r} must be one of {POLICIES}")
    if batch not in ("joint", "vmap"):
        raise ValueError(f"batch={batch!r} must be 'joint' or 'vmap'")
    if not t_max > 0:
        raise ValueError(f"t_max={t_max!r} must be positive")
    concrete_tol = concrete_float(tol)
    if concrete_tol is not None and not concrete_tol > 0:
        raise ValueError(f"tol={tol!r} must be positive")
    return get_solver(solver)


def check_finite(a, name):
    """Refuse a concrete array with NaN/inf rows, naming them (traced arrays pass: flags do)."""
    if a is None:
        return
    try:
        arr = np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        rows = np.flatnonzero(~np.all(np.isfinite(arr.reshape(arr.shape[0], -1)), axis=1))
        shown = ", ".join(map(str, rows[:10])) + (", …" if rows.size > 10 else "")
        raise ValueError(f"{name} has non-finite values in {rows.size} sample(s): rows {shown}")


def check_state(net, x, state, name):
    """Refuse a state whose structure or shapes differ from `net.init_state(x)`."""
    expected = jax.eval_shape(net.init_state, x)
    got = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), state)
    if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(expected) or any(
        g.shape != e.shape for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected))
    ):
        shapes = [e.shape for e in jax.tree_util.tree_leaves(expected)]
        raise ValueError(f"{name} does not match the network's state shapes {shapes}")


def check_targets(net, y, state):
    expected = jax.eval_shape(lambda s: net.output(s), state).shape
    if getattr(y, "shape", None) != expected:
        raise ValueError(f"y has shape {getattr(y, 'shape', None)} but the network's output has shape {expected}")
    check_finite(y, "y")


def nudged_tolerance(tol, beta):
    """The nudged phase's stop test, relative to the nudge: `tol · min(1, |β|)`.

    The EP update reads `(s^β − s⁰)/β`, so a state error `δ` becomes `δ/β`: resolving the
    nudged fixed point to `tol · |β|` keeps the update's error at the level of `tol`. A plain
    `tol` would end a weakly nudged phase before its first step (its whole nudge is below tol).
    """
    b = concrete_float(beta)
    if b is not None and concrete_float(tol) is not None:
        return float(tol) * min(1.0, abs(b))
    return tol * jnp.minimum(1.0, jnp.abs(beta))


def _as_tol(tol):
    t = concrete_float(tol)
    return t if t is not None else tol


def concrete_float(value):
    """`float(value)`, or None for a traced value."""
    try:
        return float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def _run(net, x, y, s_init, beta, solver, t_max, tol, stop, synapses, eta, batch):
    if batch == "joint":
        return _relax(net, x, y, s_init, beta, solver, t_max, tol, stop, synapses, eta)

    def one(xi, yi, si):
        add = lambda a: None if a is None else a[None]
        r = _relax(net, add(xi), None if yi is None else add(yi), jax.tree_util.tree_map(add, si),
                   beta, solver, t_max, tol, stop, synapses, eta)
        return jax.tree_util.tree_map(lambda a: a[0] if a.ndim and a.shape[0] == 1 else a, r)

    r = eqx.filter_vmap(one, in_axes=(0, None if y is None else 0, 0))(x, y, s_init)
    # A vmapped phase yields per-sample synapse integrals: average them like the joint batch does.
    mean = lambda t: None if t is None else jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), t)
    params = None
    if r.params is not None:
        params = jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0) if eqx.is_array(a) else a, r.params)
    return eqx.tree_at(lambda p: (p.synapse_integral, p.params), r, (mean(r.synapse_integral), params),
                       is_leaf=lambda a: a is None)


def free_phase(
    net: AbstractDynamics,
    x: Float[Array, "batch n_in"],
    *,
    solver="tsit5",
    t_max: float = 100.0,
    tol: float = 1e-4,
    s_init: State | None = None,
    stop_at_steady_state: bool = True,
    batch: Literal["joint", "vmap"] = "joint",
    policy: Policy = "flag",
) -> PhaseResult:
    """Relax `ds/dt = μ(θ, x, s)` from `s_init` (zeros by default) to the free fixed point `s⁰`.

    `solver`: "tsit5" (default), "dopri5", "kvaerno5" (stiff), "euler" (the paper's scheme), or
    any :class:`AbstractPhaseSolver` (`Adaptive(...)`, `Euler(...)`, your own). The phase ends
    when every sample's `‖μ‖_∞ < tol` (unless `stop_at_steady_state=False`) or at `t_max`.
    Each sample gets a :class:`RESULTS` code; those that did not settle are flagged, warned
    about or raised on, as `policy` says.
    """
    solver = check_common(net, x, solver, t_max, tol, policy, batch)
    if s_init is None:
        s_init = net.init_state(x)
    else:
        check_state(net, x, s_init, "s_init")
    r = _run(net, x, None, s_init, jnp.asarray(0.0, x.dtype), solver, float(t_max), _as_tol(tol),
             bool(stop_at_steady_state), "none", None, batch)
    return apply_policy(r, policy, "free")


def nudged_phase(
    net: AbstractDynamics,
    x: Float[Array, "batch n_in"],
    y: Float[Array, "batch n_out"],
    s_free: State | PhaseResult,
    *,
    beta: float,
    solver="tsit5",
    t_max: float = 100.0,
    tol: float = 1e-4,
    synapses: Literal["none", "integrate", "continual"] = "none",
    eta: float | None = None,
    stop_at_steady_state: bool = True,
    batch: Literal["joint", "vmap"] = "joint",
    policy: Policy = "flag",
) -> PhaseResult:
    """Relax `ds/dt = μ − β ∂C/∂s` from the free fixed point to the nudged one `s^β`.

    `synapses="integrate"` also integrates `∫ (∂μ/∂θ)ᵀ ds` along the trajectory (integrated ν);
    `"continual"` additionally moves the weights during the phase, `dθ/dt = (η/β)(∂μ/∂θ)ᵀ μ^β`.
    `beta` may be negative (centered nudging) but not zero. The phase stops (and a sample counts
    as converged) once `‖μ^β‖_∞ < tol · min(1, |β|)`: relative to the nudge, so that the EP
    update `(s^β − s⁰)/β` is resolved to about `tol` however small β is.
    """
    solver = check_common(net, x, solver, t_max, tol, policy, batch)
    if isinstance(s_free, PhaseResult):
        s_free = s_free.state
    check_state(net, x, s_free, "s_free")
    check_targets(net, y, s_free)
    b = concrete_float(beta)
    if b is not None and (b == 0.0 or not math.isfinite(b)):
        raise ValueError(f"beta={beta!r} must be a finite non-zero nudging strength")
    if synapses not in SYNAPSES:
        raise ValueError(f"synapses={synapses!r} must be one of {SYNAPSES}")
    if synapses == "continual":
        e = concrete_float(eta)
        if eta is None or (e is not None and not e > 0):
            raise ValueError(f"eta={eta!r} must be a positive learning rate for continual mode")
    r = _run(net, x, y, s_free, jnp.asarray(beta, x.dtype), solver, float(t_max), nudged_tolerance(tol, beta),
             bool(stop_at_steady_state), synapses, eta, batch)
    return apply_policy(r, policy, "nudged")
