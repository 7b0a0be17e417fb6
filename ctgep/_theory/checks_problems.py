"""The small float64 problems `ctgep check` runs on: random, tied linear-range, slow."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import gradients as G
from .._dynamics.networks import LayeredNetwork


def random_problem(seed=0, sizes=(5, 6, 6, 3), batch=3, activation="sigmoid"):
    """A float64 LayeredNetwork with random biases, inputs in [0, 1) and one-hot targets."""
    k1, k2, k3 = jr.split(jr.PRNGKey(seed), 3)
    net = LayeredNetwork(sizes, activation, key=k1, dtype=jnp.float64)
    biases = tuple(0.5 * jr.normal(k, b.shape, jnp.float64) for k, b in zip(jr.split(k2, len(net.b)), net.b))
    net = eqx.tree_at(lambda n: n.b, net, biases)
    return net, *problem_data((sizes[0], sizes[-1]), batch, k3)


def problem_data(widths, batch, key):
    """Inputs in [0, 1) and one-hot targets for the input and output `widths`."""
    n_in, n_out = widths
    x = jr.uniform(key, (batch, n_in), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(batch) % n_out, n_out, dtype=jnp.float64)
    return x, y


def tied_linear_network(sizes, key, feedback=0.0, scale=0.3):
    """Hard-sigmoid net with `Wb_l` at `feedback` degrees from `Wf_{l+1}ᵀ` (0: tied), weights
    scaled by `scale` and biases centring every unit near ½ — inside the linear range, where
    `ρ' = 1` and tied weights make `Jμ = W − I` symmetric."""
    net = LayeredNetwork(sizes, "hard_sigmoid", key=key, feedback=feedback, dtype=jnp.float64)
    net = eqx.tree_at(lambda n: (n.Wf, n.Wb), net, jax.tree_util.tree_map(lambda a: scale * a, (net.Wf, net.Wb)))
    half = 0.5
    biases = []
    for l in range(len(net.b)):
        total = net.Wf[l] @ jnp.full(net.Wf[l].shape[1], half)
        if l < len(net.Wb):
            total = total + net.Wb[l] @ jnp.full(net.Wb[l].shape[1], half)
        biases.append(half - total)
    return eqx.tree_at(lambda n: n.b, net, tuple(biases))


def asymmetry(jac) -> np.ndarray:
    """`‖Jμ − Jμᵀ‖_F / ‖Jμ‖_F` per sample."""
    jac = np.asarray(jac)
    return np.linalg.norm(jac - np.swapaxes(jac, -1, -2), axis=(-2, -1)) / np.linalg.norm(jac, axis=(-2, -1))


def _flat_params(net):
    params, static = eqx.partition(net, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    return flat, lambda v: eqx.combine(unravel(v), static)


def _fd_directional(net, x, y, s, directions, h):
    """`(J(θ + h d) − J(θ − h d)) / 2h` for each direction (for nets too big for full FD)."""
    flat, build = _flat_params(net)
    J = lambda v: float(jnp.mean(build(v).cost(G.fixed_point(build(v), x, s_init=s, relax=False), y)))
    return np.array([(J(flat + h * d) - J(flat - h * d)) / (2 * h) for d in directions])


def slow_problem(seed=0, rate=0.05, batch=3):
    """A float64 tied tanh (5, 6, 6, 3) network whose slowest mode decays at about `rate`
    (slowest Re eig(Jμ) ≈ −rate): valid, but BPTT needs horizons of order 25/rate."""
    k1, k3 = jr.split(jr.PRNGKey(seed))
    net = LayeredNetwork((5, 6, 6, 3), "tanh", key=k1, feedback="transpose", dtype=jnp.float64)
    x = 0.05 * jr.uniform(k3, (batch, 5), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(batch) % 3, 3, dtype=jnp.float64)
    s = net.init_state(x)  # first at s = 0 (ρ'(0) = 1), then at the fixed point
    for _ in range(3):  # scale the recurrent weights until the top eigenvalue of Jμ is −rate
        top = float(np.max(np.linalg.eigvals(np.asarray(G.jacobian(net, x, s))).real))
        c = (1.0 - rate) / (1.0 + top)
        net = eqx.tree_at(lambda n: (n.Wf, n.Wb), net,
                          ((net.Wf[0],) + tuple(c * w for w in net.Wf[1:]), tuple(c * w for w in net.Wb)))
        s = G.fixed_point(net, x, t_max=5000.0)
    return net, x, y
