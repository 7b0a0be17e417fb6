"""The free and nudged phases: `ds/dt = μ − β ∂C/∂s` run to steady state.

Each phase is one ODE for the whole minibatch. A steady-state event ends it once every
sample's residual `‖μ^β‖_∞` is below `tol`; the horizon `t_max` bounds it. Alongside the
neurons the same solve can integrate the synapses (integrated ν: `∫ (∂μ/∂θ)ᵀ ds`, and the
continual mode where the weights themselves move), with error control on the neurons only.
"""

import math
import warnings
from typing import Any, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int

from .._dynamics.networks import AbstractDynamics, State
from .._simulation.solvers import Adaptive, Euler, get_solver

Policy = Literal["raise", "warn", "flag"]
_POLICIES = ("raise", "warn", "flag")
_SYNAPSES = ("none", "integrate", "continual")


class PhaseResult(eqx.Module, strict=True):
    """Outcome of one phase, per sample.

    `t_stop` and `steps` are where the solve ended; the batch is one ODE, so they are shared by
    its samples unless the phase ran with `batch="vmap"`. `residual` is `‖μ^β‖_∞` at the final
    state (for the clipped Euler scheme, of the projected field). `synapse_integral` is
    `∫ (∂μ/∂θ)ᵀ ds` averaged over the batch (integrated rules), `params` the weights at the
    end of a continual phase.
    """

    state: State
    t_stop: Float[Array, " batch"]
    steps: Int[Array, " batch"]
    residual: Float[Array, " batch"]
    converged: Bool[Array, " batch"]
    synapse_integral: Any = None
    params: Any = None


def _split(net):
    return eqx.partition(net, eqx.is_inexact_array)


def _mu_beta(net: AbstractDynamics, state, drive, y, beta):
    mu = net.vector_field(state, drive)
    if y is None:
        return mu
    dc = jax.grad(lambda s: jnp.sum(net.cost(s, y)))(state)
    return jax.tree_util.tree_map(lambda m, g: m - beta * g, mu, dc)


def _residual(mu) -> Float[Array, " batch"]:
    return jnp.max(jnp.stack([jnp.max(jnp.abs(m), axis=-1) for m in mu]), axis=0)


def _synapse_rate(params, static, state, x, cotangent):
    """`(∂μ/∂θ)ᵀ · cotangent`, averaged over the batch: `ρ(pre) ⊗ ds_post` for the layered net."""

    def mu_of(p):
        net = eqx.combine(p, static)
        return net.vector_field(state, net.drive(x))

    _, vjp = jax.vjp(mu_of, params)
    (g,) = vjp(cotangent)
    batch = x.shape[0]
    return jax.tree_util.tree_map(lambda a: a / batch, g)


def _diffrax_solve(field, settled, z0, solver: Adaptive, t_max, stop, saveat=None):
    """One adaptive phase solve: error control on the neurons `z["s"]` only, ended by the
    steady-state event `settled` (when `stop`) or the horizon. Returns the solution and whether
    it ended well (horizon or event; not max_steps or a solver failure)."""
    controller = diffrax.PIDController(
        rtol=solver.rtol,
        atol=solver.atol,
        dtmax=solver.dtmax,
        norm=lambda z: optx.rms_norm(z["s"]),
    )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver.solver,
        t0=0.0,
        t1=t_max,
        dt0=solver.dt0,
        y0=z0,
        saveat=diffrax.SaveAt(t1=True) if saveat is None else saveat,
        stepsize_controller=controller,
        event=diffrax.Event(settled) if stop else None,
        max_steps=solver.max_steps,
        throw=False,
    )
    ok = (sol.result == diffrax.RESULTS.successful) | (sol.result == diffrax.RESULTS.event_occurred)
    return sol, ok


def _relax_adaptive(net, x, y, s_init, beta, solver: Adaptive, t_max, tol, stop, synapses, eta):
    params, static = _split(net)
    drive = net.drive(x)

    def field(t, z, args):
        p = z.get("theta", params)
        current = eqx.combine(p, static)
        d = current.drive(x) if synapses == "continual" else drive
        mu = _mu_beta(current, z["s"], d, y, beta)
        out = {"s": mu}
        if synapses != "none":
            g = _synapse_rate(p, static, z["s"], x, mu)
            out["acc"] = g
            if synapses == "continual":
                out["theta"] = jax.tree_util.tree_map(lambda a: eta / beta * a, g)
        return out

    z0 = {"s": s_init}
    if synapses != "none":
        z0["acc"] = jax.tree_util.tree_map(jnp.zeros_like, params)
    if synapses == "continual":
        z0["theta"] = params

    def settled(t, z, args, **kwargs):
        p = z.get("theta", params)
        current = eqx.combine(p, static)
        d = current.drive(x) if synapses == "continual" else drive
        return jnp.max(_residual(_mu_beta(current, z["s"], d, y, beta))) < tol

    sol, ok = _diffrax_solve(field, settled, z0, solver, t_max, stop)
    z = jax.tree_util.tree_map(lambda a: a[-1], sol.ys)
    residual = _final_residual(net, x, y, beta, z, solver, synapses)
    return z, sol.ts[-1], sol.stats["num_steps"], ok, residual


def _project(s, mu, bounds, dt):
    """The clipped Euler scheme's effective `μ`: `(clip(s + dt μ, lo, hi) − s) / dt` (Eq. 59).

    `dt` is one step per layer (a tuple of scalars or `(n_l,)` arrays, see `_unit_steps`).
    """
    if bounds is None:
        return mu
    lo, hi = bounds
    return jax.tree_util.tree_map(lambda a, m, h: (jnp.clip(a + h * m, lo, hi) - a) / h, s, mu, dt)


def _unit_steps(net, s, y, beta, solver: Euler):
    """Each layer's Euler step: `ε`, or `ε / max(1, 1 + β ∂²C/∂s_i²)` per unit when preconditioned.

    The cost's curvature is its Hessian-vector product with ones at the phase's initial state
    (exact for the squared error, whose Hessian is the identity on the outputs). Steps are only
    ever shortened: a unit the nudge makes less stiff (β < 0, centered nudging) keeps `ε`.
    """
    dt = solver.dt
    if not solver.precondition or y is None:
        return tuple(jnp.asarray(dt, a.dtype) for a in s)
    cost = lambda u: jnp.sum(net.cost(u, y))
    ones = jax.tree_util.tree_map(jnp.ones_like, s)
    curv = jax.jvp(jax.grad(cost), (s,), (ones,))[1]
    out = []
    for c in curv:
        leak = 1.0 + beta * jnp.mean(c, axis=0)  # the same for every sample of the batch
        out.append((dt / jnp.maximum(leak, 1.0)).astype(c.dtype))
    return tuple(out)


def _layer_groups(n_layers: int, solver: Euler) -> tuple[tuple[int, ...], ...]:
    """The layers each Euler step updates in turn: all at once, or (alternating) the odd layers
    1, 3, … (counted from the input, so indices 0, 2, … of the state) and then the even ones."""
    if not solver.alternate or n_layers < 2:
        return (tuple(range(n_layers)),)
    return tuple(range(0, n_layers, 2)), tuple(range(1, n_layers, 2))


def _euler_sweep(field, s, mu, steps, groups, hold=None):
    """One Euler step from `s`, where `mu = field(s)` is the projected field.

    Each group of layers moves by `step · μ` in turn, μ re-evaluated on the state the previous
    group left (for the layered net a group's μ needs only the other group's rates, so an
    alternating step costs the products of one synchronous step). `hold` (a traced bool)
    freezes the state. Returns the new state and the increments `[(from_state, ds)]`, whose
    synapse terms the integrated rules add up.
    """
    moves = []
    for i, group in enumerate(groups):
        if i > 0:
            mu = field(s)
        ds = tuple(
            h * m if l in group else jnp.zeros_like(m) for l, (h, m) in enumerate(zip(steps, mu))
        )
        if hold is not None:
            ds = tuple(jnp.where(hold, 0.0, d) for d in ds)
        moves.append((s, ds))
        s = tuple(a + d if l in group else a for l, (a, d) in enumerate(zip(s, ds)))
    return s, moves


def _relax_euler(net, x, y, s_init, beta, solver: Euler, t_max, tol, stop, synapses, eta):
    params, static = _split(net)
    drive = net.drive(x)
    bounds = net.state_bounds if solver.clip else None
    dt = solver.dt
    n_steps = max(int(math.ceil(t_max / dt - 1e-9)), 0)
    steps = _unit_steps(net, s_init, y, beta, solver)
    groups = _layer_groups(len(s_init), solver)

    def projected(p, s):
        current = eqx.combine(p, static)
        d = current.drive(x) if synapses == "continual" else drive
        return _project(s, _mu_beta(current, s, d, y, beta), bounds, steps)

    # μ is evaluated once per step inside the body, so the Euler update, the clip and the
    # residual fuse with the products (carrying μ between steps cost one more kernel per layer).
    # With `stop`, a step whose state already has ‖μ‖∞ < tol for every sample is not taken:
    # the phase ends on the first settled state, as an explicit test before each step would.
    def body(carry):
        k, s, res, done, acc, p = carry
        field = lambda u: projected(p, u)
        mu = field(s)
        if stop:
            res = _residual(mu)
            done = jnp.max(res) < tol
        s_new, moves = _euler_sweep(field, s, mu, steps, groups, done if stop else None)
        if synapses != "none":
            for u, ds in moves:
                g = _synapse_rate(p, static, u, x, ds)
                acc = jax.tree_util.tree_map(jnp.add, acc, g)
                if synapses == "continual":
                    p = jax.tree_util.tree_map(lambda a, b: a + eta / beta * b, p, g)
        return k + (~done).astype(k.dtype), s_new, res, done, acc, p

    res0 = jnp.full_like(_residual(s_init), jnp.inf)
    acc0 = jax.tree_util.tree_map(jnp.zeros_like, params) if synapses != "none" else None
    carry = (jnp.asarray(0), s_init, res0, jnp.asarray(False), acc0, params)
    if stop:
        carry = jax.lax.while_loop(lambda c: (c[0] < n_steps) & ~c[3], body, carry)
    else:
        # Not unrolled: unrolling by two helps on one core (+8 % evaluations per second at
        # batch 20) but costs 14 % on both cores of the 2-core Xeon, where XLA overlaps the
        # products of one step.
        carry = jax.lax.fori_loop(0, n_steps, lambda _, c: body(c), carry)
    k, s, res, done, acc, p = carry
    # The residual at the final state: known already when the phase stopped on it.
    residual = jax.lax.cond(done, lambda: res, lambda: _residual(projected(p, s)))
    z = {"s": s}
    if synapses != "none":
        z["acc"] = acc
    if synapses == "continual":
        z["theta"] = p
    return z, k * dt, k, jnp.asarray(True), residual


def _final_residual(net, x, y, beta, z, solver, synapses):
    """`‖μ^β‖∞` per sample at a final ODE state `z` (projected for the clipped Euler scheme)."""
    params, static = _split(net)
    current = eqx.combine(z.get("theta", params), static)
    mu = _mu_beta(current, z["s"], current.drive(x), y, beta)
    if isinstance(solver, Euler) and solver.clip:
        mu = _project(z["s"], mu, current.state_bounds, _unit_steps(current, z["s"], y, beta, solver))
    return _residual(mu)


@eqx.filter_jit
def _relax(net, x, y, s_init, beta, solver, t_max, tol, stop, synapses, eta):
    run = _relax_euler if isinstance(solver, Euler) else _relax_adaptive
    z, t, steps, ok, residual = run(net, x, y, s_init, beta, solver, t_max, tol, stop, synapses, eta)
    batch = x.shape[0]
    converged = ok & (residual < tol)  # NaN/inf residuals compare False: flagged
    params = None
    if synapses == "continual":
        _, static = _split(net)
        params = eqx.combine(z["theta"], static)
    return PhaseResult(
        state=z["s"],
        t_stop=jnp.broadcast_to(jnp.asarray(t, residual.dtype), (batch,)),
        steps=jnp.broadcast_to(jnp.asarray(steps, jnp.int32), (batch,)),
        residual=residual,
        converged=converged,
        synapse_integral=z.get("acc"),
        params=params,
    )


def _apply_policy(result: PhaseResult, policy: Policy, phase: str) -> PhaseResult:
    if policy == "flag":
        return result
    bad = jnp.sum(~result.converged)
    msg = f"{phase} phase did not reach steady state for some samples (residual above tol, horizon or max_steps hit, or NaN)"
    if policy == "raise":
        return eqx.error_if(result, bad > 0, msg)

    def _warn(n):
        if int(n) > 0:
            warnings.warn(f"{msg}: {int(n)} sample(s)", RuntimeWarning, stacklevel=2)

    jax.debug.callback(_warn, bad)
    return result


def _check_common(net, x, solver, t_max, tol, policy, batch):
    if not isinstance(net, AbstractDynamics):
        raise TypeError(f"net must be an AbstractDynamics, got {type(net).__name__}")
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"x must be a (batch, features) array, got shape {getattr(x, 'shape', None)}")
    sizes = getattr(net, "sizes", None)
    if sizes is not None and x.shape[-1] != sizes[0]:
        raise ValueError(f"x has {x.shape[-1]} features but the network's input layer has {sizes[0]}")
    if policy not in _POLICIES:
        raise ValueError(f"policy={policy!r} must be one of {_POLICIES}")
    if batch not in ("joint", "vmap"):
        raise ValueError(f"batch={batch!r} must be 'joint' or 'vmap'")
    if not t_max > 0:
        raise ValueError(f"t_max={t_max!r} must be positive")
    if not tol > 0:
        raise ValueError(f"tol={tol!r} must be positive")
    return get_solver(solver)


def _check_state(net, x, state, name):
    expected = jax.eval_shape(net.init_state, x)
    got = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), state)
    if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(expected) or any(
        g.shape != e.shape for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected))
    ):
        shapes = [e.shape for e in jax.tree_util.tree_leaves(expected)]
        raise ValueError(f"{name} does not match the network's state shapes {shapes}")


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
    an `Adaptive(...)`/`Euler(...)` instance. The phase ends when every sample's `‖μ‖_∞ < tol`
    (unless `stop_at_steady_state=False`) or at `t_max`. Samples that did not settle are
    flagged, warned about or raised on, as `policy` says.
    """
    solver = _check_common(net, x, solver, t_max, tol, policy, batch)
    if s_init is None:
        s_init = net.init_state(x)
    else:
        _check_state(net, x, s_init, "s_init")
    r = _run(net, x, None, s_init, 0.0, solver, float(t_max), float(tol),
             bool(stop_at_steady_state), "none", None, batch)
    return _apply_policy(r, policy, "free")


def _concrete_float(value, name):
    try:
        return float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


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
    `beta` may be negative (centered nudging) but not zero.
    """
    solver = _check_common(net, x, solver, t_max, tol, policy, batch)
    if isinstance(s_free, PhaseResult):
        s_free = s_free.state
    _check_state(net, x, s_free, "s_free")
    expected = jax.eval_shape(lambda s: net.output(s), s_free).shape
    if getattr(y, "shape", None) != expected:
        raise ValueError(f"y has shape {getattr(y, 'shape', None)} but the network's output has shape {expected}")
    b = _concrete_float(beta, "beta")
    if b is not None and (b == 0.0 or not math.isfinite(b)):
        raise ValueError(f"beta={beta!r} must be a finite non-zero nudging strength")
    if synapses not in _SYNAPSES:
        raise ValueError(f"synapses={synapses!r} must be one of {_SYNAPSES}")
    if synapses == "continual":
        e = _concrete_float(eta, "eta")
        if eta is None or (e is not None and not e > 0):
            raise ValueError(f"eta={eta!r} must be a positive learning rate for continual mode")
    r = _run(net, x, y, s_free, jnp.asarray(beta, x.dtype), solver, float(t_max), float(tol),
             bool(stop_at_steady_state), synapses, eta, batch)
    return _apply_policy(r, policy, "nudged")
