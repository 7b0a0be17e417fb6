"""Small float64 problems shared by the gradient and theorem tests (same shapes: one compilation)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from hypothesis import reject

import ctgep
from ctgep import gradients as G

SIZES = (5, 6, 6, 3)
BATCH = 3
SMOOTH = ("sigmoid", "smooth_hard_sigmoid", "tanh")
#: One step budget for every BPTT call in the tests, so that they share one compilation.
BPTT_STEPS = 808


def problem(seed, activation="sigmoid", sizes=SIZES, batch=BATCH, bias=0.5):
    """A LayeredNetwork with random biases (scale `bias`), inputs in [0, 1) and one-hot targets."""
    k1, k2, k3 = jr.split(jr.PRNGKey(seed), 3)
    net = ctgep.LayeredNetwork(sizes, activation, key=k1, dtype=jnp.float64)
    biases = tuple(bias * jr.normal(k, b.shape, jnp.float64) for k, b in zip(jr.split(k2, len(net.b)), net.b))
    net = eqx.tree_at(lambda n: n.b, net, biases)
    x = jr.uniform(k3, (batch, sizes[0]), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(batch) % sizes[-1], sizes[-1], dtype=jnp.float64)
    return net, x, y


def settled_fixed_point(net, x, y=None, **kwargs):
    """`G.fixed_point`, rejecting a drawn network that has none (it oscillates): the theorems
    under test are statements about fixed points, so such a draw is outside their claim."""
    try:
        return G.fixed_point(net, x, y, **kwargs)
    except RuntimeError as e:
        if "did not reach a fixed point" not in str(e):
            raise
        reject()


def neg(tree):
    return jax.tree_util.tree_map(jnp.negative, tree)
