"""Learning rules: turn a free and a nudged phase into an update of the parameters (docs/rules.md).

Every rule returns a pytree shaped like the network's trainable parameters (the network
module with its arrays replaced by updates), with the sign *to be added*: `θ ← θ + α Δθ`.
It approximates `−∂J/∂θ`, so it is fed to an optax optimiser negated (see :func:`as_gradient`).

* endpoint ν (Eq. 56): `(∂μ/∂θ)ᵀ(s⁰) · (s^β − s⁰)/β`, which for the layered network is
  `(s_l^β − s_l⁰)/β ⊗ ρ(s_{l−1}⁰)`;
* integrated ν (Eq. 2, 5): `(1/β) ∫ (∂μ/∂θ)ᵀ(s(t)) ds(t)` along the nudged trajectory,
  integrated in the same ODE solve as the neurons;
* continual: the weights move during the nudged phase; the update is `(θ_T − θ_0)/η`.

Nudging: "one-sided" (+β), "random" (±β with a random sign per call) or "centered"
(+β and −β, averaged, which cancels the O(β) bias).
"""

import math
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._dynamics.networks import AbstractDynamics, EnergyNetwork, LayeredNetwork
from .._dynamics import field as F
from .._simulation.phases import concrete_float, free_phase, nudged_phase, nudged_tolerance
from .._simulation.results import PhaseResult
from .homeostasis import homeostasis_gradient

Rule = Literal["endpoint", "integrated", "continual"]
Nudging = Literal["one-sided", "random", "centered"]
RULES = ("endpoint", "integrated", "continual")
NUDGINGS = ("one-sided", "random", "centered")


class EPStep(eqx.Module, strict=True):
    """Everything one EP step produced: the update, the free phase and the nudged phases."""

    update: Any
    free: PhaseResult
    nudged: tuple[PhaseResult, ...]
    betas: tuple[Any, ...]


def endpoint_update(net: AbstractDynamics, x, s_free, s_nudged, beta):
    """`(∂μ/∂θ)ᵀ(s⁰) · (s^β − s⁰)/β`, averaged over the batch."""
    params, static = F.partition(net)
    delta = jax.tree_util.tree_map(lambda a, b: (a - b) / beta, s_nudged, s_free)
    return F.synapse_vjp(params, static, s_free, x, delta)


def _mean(trees):
    return jax.tree_util.tree_map(lambda *a: sum(a) / len(a), *trees)


def as_gradient(update):
    """The update negated, i.e. a pseudo-gradient an optax optimiser can descend."""
    return jax.tree_util.tree_map(jnp.negative, update)


def ep_step(
    net: AbstractDynamics,
    x,
    y,
    *,
    beta: float,
    rule: Rule = "endpoint",
    nudging: Nudging = "one-sided",
    key=None,
    solver="tsit5",
    t_free: float = 100.0,
    t_nudged: float = 100.0,
    tol: float = 1e-4,
    eta: float | None = None,
    free: PhaseResult | None = None,
    s_init=None,
    stop_at_steady_state: bool = True,
    policy="flag",
    homeostasis: float = 0.0,
    homeostasis_params: str = "all",
) -> EPStep:
    """Free phase (unless `free` is given), nudged phase(s) and the update of `rule`.

    `tol` is the accuracy asked of the update: both phases run until `‖μ^β‖_∞ < tol · min(1, β)`
    (see :func:`ctgep.nudged_phase`), and a β too small for the dtype to resolve is refused.
    The phases' per-sample result codes are in the returned `free` and `nudged` results.

    `homeostasis` (λ ≥ 0, needs `key`): subtract `λ ∂P/∂θ` from the update, `P` the Jacobian
    asymmetry penalty `‖Jμ ε − Jμᵀ ε‖²` at the free state with one random probe `ε` per sample
    drawn from `fold_in(key, 2)` (:func:`ctgep.homeostasis_gradient`; Laborieux & Zenke 2024);
    `homeostasis_params="feedback"` applies it to the feedback weights `Wb` alone.
    """
    b = concrete_float(beta)
    if b is not None and not (b > 0 and math.isfinite(b)):
        raise ValueError(f"beta={beta!r} must be positive (its sign is set by `nudging`)")
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} must be one of {RULES}")
    if nudging not in NUDGINGS:
        raise ValueError(f"nudging={nudging!r} must be one of {NUDGINGS}")
    if nudging != "one-sided" and b is not None and b >= 1 and isinstance(net, (LayeredNetwork, EnergyNetwork)):
        # dC/ds_out = s_out − y, so at −β the output's leak −(1 − β)s vanishes or turns into growth.
        raise ValueError(f"nudging={nudging!r} also nudges with −β, and at beta={beta} ≥ 1 the output "
                         "units lose their leak and never settle; use beta < 1 or 'one-sided'")
    if nudging == "random" and key is None:
        raise ValueError("nudging='random' needs a PRNG `key`")
    lam = concrete_float(homeostasis)
    if lam is not None and not (lam >= 0 and math.isfinite(lam)):
        raise ValueError(f"homeostasis={homeostasis!r} must be ≥ 0")
    if (lam is None or lam > 0) and key is None:
        raise ValueError("homeostasis > 0 needs a PRNG `key` (for the probe vectors)")
    # s⁰ enters the update as (s^β − s⁰)/β too: resolve it as finely as the nudged phase.
    free_tol = nudged_tolerance(tol, beta)
    resolution = 10 * float(jnp.finfo(x.dtype).eps)
    if isinstance(free_tol, float) and free_tol < resolution:
        hint = "" if jnp.dtype(x.dtype) == jnp.float64 else ", or float64"
        raise ValueError(
            f"beta={beta!r} with tol={tol!r} needs phase residuals below {free_tol:.1e}, under what "
            f"{jnp.dtype(x.dtype).name} resolves ({resolution:.1e}): use a larger beta or tol{hint}")
    common = dict(solver=solver, tol=tol, stop_at_steady_state=stop_at_steady_state, policy=policy)
    if free is None:
        free = free_phase(net, x, t_max=t_free, s_init=s_init, **(common | dict(tol=free_tol)))
    if nudging == "one-sided":
        betas = (beta,)
    elif nudging == "centered":
        betas = (beta, -beta)
    else:
        betas = (jnp.where(jr.bernoulli(key), 1.0, -1.0).astype(x.dtype) * beta,)
    synapses = {"endpoint": "none", "integrated": "integrate", "continual": "continual"}[rule]
    nudged = tuple(
        nudged_phase(net, x, y, free, beta=bi, t_max=t_nudged, synapses=synapses, eta=eta, **common)
        for bi in betas
    )
    if rule == "endpoint":
        update = _mean([endpoint_update(net, x, free.state, n.state, bi) for n, bi in zip(nudged, betas)])
    elif rule == "integrated":
        update = _mean([
            jax.tree_util.tree_map(lambda a: a / bi, n.synapse_integral) for n, bi in zip(nudged, betas)
        ])
    else:
        params, _ = F.partition(net)
        update = _mean([
            jax.tree_util.tree_map(lambda a, b: (a - b) / eta, F.partition(n.params)[0], params)
            for n in nudged
        ])
    if lam is None or lam > 0:
        def penalty_gradient():
            return homeostasis_gradient(net, x, free.state, key=jr.fold_in(key, 2),
                                        params=homeostasis_params)
        if lam is None:  # traced λ (e.g. switched on after some epochs): no gradient while it is 0
            zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, update)
            h = jax.lax.cond(jnp.asarray(homeostasis) > 0, penalty_gradient, zeros)
        else:
            h = penalty_gradient()
        update = jax.tree_util.tree_map(lambda u, g: u - homeostasis * g, update, h)
    return EPStep(update=update, free=free, nudged=nudged, betas=betas)


def ep_update(net: AbstractDynamics, x, y, *, beta: float, rule: Rule = "endpoint", policy="warn", **kwargs):
    """The EP direction `≈ −∂J/∂θ`, shaped like the trainable parameters (sign: to be added).

    It returns the update alone, so phases that did not converge are warned about by default
    (`policy="warn"`; `"raise"` to stop, `"flag"` to silence): use :func:`ep_step` to get the
    per-sample result codes with the update.

    Keyword arguments are those of :func:`ep_step` (nudging, solver, horizons, tol, …).
    """
    return ep_step(net, x, y, beta=beta, rule=rule, policy=policy, **kwargs).update
