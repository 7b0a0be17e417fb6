import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import ctgep


@pytest.fixture
def x64():
    """Float64 for numerical checks, scoped to one test (training stays float32)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def small_problem(x64):
    """A 3-layer smooth network in float64 and a batch of inputs and one-hot targets."""
    net = ctgep.LayeredNetwork((8, 12, 10, 4), "sigmoid", key=jr.PRNGKey(0), dtype=jnp.float64)
    x = jr.uniform(jr.PRNGKey(1), (5, 8), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(5) % 4, 4, dtype=jnp.float64)
    return net, x, y
