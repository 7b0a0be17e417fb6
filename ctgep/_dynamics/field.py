"""The low-level field operations every layer above builds on (docs/model.md).

Simulation, learning rules, reference gradients, adjoints and recording all evaluate the same
few quantities of an :class:`AbstractDynamics`: its trainable/static partition, the nudged
field `μ^β = μ − β ∂C/∂s`, the per-sample residual `‖μ^β‖_∞`, and the synapse term
`(∂μ/∂θ)ᵀ · v` (a VJP; `ρ(pre) ⊗ v_post` for the layered network). They live here, once.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .networks import AbstractDynamics, State


def partition(net: AbstractDynamics):
    """`(params, static)`: the trainable inexact arrays and everything else."""
    return eqx.partition(net, eqx.is_inexact_array)


def cost_gradient(net: AbstractDynamics, state: State, y) -> State:
    """`∂C/∂s` per sample (the cost is summed over the batch, so rows do not mix)."""
    return jax.grad(lambda s: jnp.sum(net.cost(s, y)))(state)


def mu_beta(net: AbstractDynamics, state: State, drive, y, beta) -> State:
    """`μ^β(θ, v, s) = μ − β ∂C/∂s`; the plain `μ` when `y` is None (free phase)."""
    mu = net.vector_field(state, drive)
    if y is None:
        return mu
    dc = cost_gradient(net, state, y)
    return jax.tree_util.tree_map(lambda m, g: m - beta * g, mu, dc)


def residual(mu: State) -> Float[Array, " batch"]:
    """`‖μ‖_∞` per sample over every neuron of every layer."""
    return jnp.max(jnp.stack([jnp.max(jnp.abs(m), axis=-1) for m in mu]), axis=0)


def finite(state: State) -> Float[Array, " batch"]:
    """Per sample: is every unit of the state finite?"""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a), axis=-1) for a in state]), axis=0)


def finite_or_zero(tree):
    """`tree` with its NaN and ±inf entries replaced by 0: what a batched stop test, error norm
    or held-still derivative reads, so that one non-finite sample does not stall the others."""
    return jax.tree_util.tree_map(lambda a: jnp.where(jnp.isfinite(a), a, 0), tree)


def synapse_vjp(params, static, state: State, x, cotangent: State):
    """`(∂μ/∂θ)ᵀ · cotangent` at `state`, averaged over the batch (shaped like `params`).

    With the cotangent `ds` along a trajectory this is the local synapse increment
    `ρ(s_pre) ⊗ ds_post` of the layered network (docs/rules.md).
    """

    def mu_of(p):
        net = eqx.combine(p, static)
        return net.vector_field(state, net.drive(x))

    _, vjp = jax.vjp(mu_of, params)
    (g,) = vjp(cotangent)
    batch = x.shape[0]
    return jax.tree_util.tree_map(lambda a: a / batch, g)
