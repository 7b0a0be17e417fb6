"""What a phase solver integrates (`PhaseProblem`) and what it saves along the way (`Observer`)."""

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._dynamics import field as F
from .._dynamics.networks import AbstractDynamics, State


class PhaseProblem(eqx.Module):
    """`ds/dt = μ^β(θ, v, s)` for one minibatch, with the synapses alongside when asked.

    `synapses`: `"none"`, `"integrate"` (also `∫ (∂μ/∂θ)ᵀ ds`, docs/rules.md) or `"continual"`
    (the weights move too, `dθ/dt = (η/β)(∂μ/∂θ)ᵀ μ^β`). The input's drive is computed once
    per phase unless the weights move.
    """

    params: Any
    static: Any
    x: Any
    y: Any
    beta: Any
    drive: Any
    synapses: str = eqx.field(static=True)
    eta: Any

    def __init__(self, net: AbstractDynamics, x, y, beta, synapses="none", eta=None):
        self.params, self.static = F.partition(net)
        self.x, self.y, self.beta = x, y, beta
        self.drive = net.drive(x)
        self.synapses = synapses
        self.eta = eta

    def network(self, params) -> AbstractDynamics:
        return eqx.combine(params, self.static)

    @property
    def net(self) -> AbstractDynamics:
        return self.network(self.params)

    def field(self, params, s: State) -> State:
        """`μ^β` at `s` with the weights `params` (the phase's own unless they move)."""
        net = self.network(params)
        drive = net.drive(self.x) if self.synapses == "continual" else self.drive
        return F.mu_beta(net, s, drive, self.y, self.beta)

    def synapse_rate(self, params, s: State, ds: State):
        """`(∂μ/∂θ)ᵀ ds` at `s`, batch mean."""
        return F.synapse_vjp(params, self.static, s, self.x, ds)

    def initial(self, s0: State) -> dict:
        """The solver's state: the neurons, plus the synapse integral and weights when asked."""
        z = {"s": s0}
        if self.synapses != "none":
            z["acc"] = jax.tree_util.tree_map(jnp.zeros_like, self.params)
        if self.synapses == "continual":
            z["theta"] = self.params
        return z

    def weights(self, z: dict):
        return z.get("theta", self.params)

    def move_weights(self, params, g):
        """Continual mode's weight step for a synapse increment `g`: `θ + (η/β) g`."""
        return jax.tree_util.tree_map(lambda a, b: a + self.eta / self.beta * b, params, g)


class Observer(eqx.Module):
    """What a solver saves along a phase (like diffrax's `SubSaveAt(fn=…)`).

    `fn(t, s, mu, acc)` returns a pytree of arrays for one record, where `mu` is the field the
    solver steps with (projected for the clipped Euler scheme) and `acc` the running synapse
    integral (None without synapses). Records are taken at the times `ts`, or every `every`-th
    step (`every ≥ 1`; the initial and the final state are always recorded then).
    """

    fn: Callable = eqx.field(static=True)
    every: int = eqx.field(static=True, default=0)
    ts: tuple[float, ...] | None = eqx.field(static=True, default=None)
