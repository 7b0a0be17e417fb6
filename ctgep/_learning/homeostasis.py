"""Jacobian homeostasis (Laborieux & Zenke, ICLR 2024): keep `Jμ` near symmetric while training.

ν equals `−∂J/∂θ` exactly when `Jμ = ∂μ/∂s` is symmetric at the free fixed point (Theorem 1,
docs/theory.md). With untied weights it is not, so EP's direction drifts from the gradient. The
homeostatic term adds to the EP update the negative gradient of a penalty on the asymmetry of
`Jμ`, estimated with random probe vectors `ε ~ N(0, I)` (one `jax.jvp` and one `jax.vjp` each):

    P(θ) = (1/B) Σ_i ‖Jμ_i ε_i − Jμ_iᵀ ε_i‖²,          E_ε[P] = (1/B) Σ_i ‖Jμ_i − Jμ_iᵀ‖_F²

(Hutchinson's estimator of the squared Frobenius norm of the skew part). The state `s` is held
fixed (no derivative through the fixed point): the term moves θ so that the Jacobian *at the
current fixed point* becomes more symmetric. `Jμ` is block-diagonal across the batch, so the
batched jvp/vjp give every sample's products at once.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._dynamics import field as F
from .._dynamics.networks import AbstractDynamics

__all__ = ["asymmetry_penalty", "homeostasis_gradient", "probe_vectors"]

# What the penalty's gradient moves: every trainable array, or the feedback weights `Wb` alone.
HOMEOSTASIS_PARAMS = ("all", "feedback")


def _penalty(params, static, s, x, eps):
    def f(state):
        net = eqx.combine(params, static)
        return net.vector_field(state, net.drive(x))

    s = jax.lax.stop_gradient(s)
    _, jv = jax.jvp(f, (s,), (eps,))
    (jtv,) = jax.vjp(f, s)[1](eps)
    skew = jax.tree_util.tree_map(jnp.subtract, jv, jtv)
    return sum(jnp.sum(a**2) for a in jax.tree_util.tree_leaves(skew)) / x.shape[0]


def probe_vectors(s, key, probes: int = 1):
    """`probes` standard normal vectors shaped like the batched state `s` (a leading probe axis)."""
    leaves, treedef = jax.tree_util.tree_flatten(s)
    keys = jr.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jr.normal(k, (probes, *a.shape), a.dtype) for k, a in zip(keys, leaves)])


def asymmetry_penalty(net: AbstractDynamics, x, s, eps):
    """`(1/B) Σ_i ‖Jμ_i ε_i − Jμ_iᵀ ε_i‖²` at the (batched) state `s`, for one probe `ε` shaped
    like `s`; its expectation over `ε ~ N(0, I)` is the mean `‖Jμ − Jμᵀ‖_F²`."""
    params, static = F.partition(net)
    return _penalty(params, static, s, x, eps)


def homeostasis_gradient(net: AbstractDynamics, x, s, *, key, probes: int = 1, params: str = "all"):
    """`∂P/∂θ` of :func:`asymmetry_penalty`, averaged over `probes` random probes per sample,
    with `s` held fixed; shaped like the trainable parameters (like :func:`ctgep.ep_update`).
    Subtract `λ` times it from an EP update (which is to be added) to make `Jμ` more symmetric.

    `params="feedback"` keeps only its feedback part `∂P/∂Wb` (zero elsewhere): the feedback
    weights turn toward the transposed forward ones, which the penalty then does not pull
    toward the feedback (so an unaligned start keeps what its forward weights learned)."""
    if int(probes) < 1:
        raise ValueError(f"probes={probes!r} must be at least 1")
    if params not in HOMEOSTASIS_PARAMS:
        raise ValueError(f"params={params!r} must be one of {HOMEOSTASIS_PARAMS}")
    if params == "feedback" and not hasattr(net, "Wb"):
        raise ValueError(f"params='feedback' needs untied feedback weights `Wb`, which a "
                         f"{type(net).__name__} has not")
    trainable, static = F.partition(net)
    eps = probe_vectors(s, key, int(probes))
    grads = jax.vmap(lambda e: jax.grad(_penalty)(trainable, static, s, x, e))(eps)
    grads = jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), grads)
    if params == "feedback":
        feedback = eqx.filter(grads.Wb, eqx.is_array)
        grads = eqx.tree_at(lambda g: g.Wb, jax.tree_util.tree_map(jnp.zeros_like, grads), feedback)
    return grads
