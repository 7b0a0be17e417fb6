"""Firing-rate nonlinearities ρ, looked up by name so that networks stay hashable."""

from collections.abc import Callable

import jax
import jax.numpy as jnp


def hard_sigmoid(s):
    """The paper's ρ(s) = 0 ∨ s ∧ 1 (Appendix C)."""
    return jnp.clip(s, 0.0, 1.0)


def sigmoid(s):
    """Logistic sigmoid, a smooth rate in (0, 1)."""
    return jax.nn.sigmoid(s)


def smooth_hard_sigmoid(s):
    """A C∞ version of the hard sigmoid: softplus(8s)/8 − softplus(8(s−1))/8.

    Equal to the hard sigmoid up to ~0.09 near the kinks and with ρ' ∈ (0, 1), so derivative
    checks (which need smoothness) run on dynamics close to the paper's.
    """
    k = 8.0
    return (jax.nn.softplus(k * s) - jax.nn.softplus(k * (s - 1.0))) / k


def tanh(s):
    """Hyperbolic tangent, a smooth rate in (−1, 1)."""
    return jnp.tanh(s)


ACTIVATIONS: dict[str, Callable] = {
    "hard_sigmoid": hard_sigmoid,
    "sigmoid": sigmoid,
    "smooth_hard_sigmoid": smooth_hard_sigmoid,
    "tanh": tanh,
}

#: Range of ρ for activations whose state the paper's Euler scheme may clip (Eq. 59).
STATE_BOUNDS: dict[str, tuple[float, float]] = {"hard_sigmoid": (0.0, 1.0)}


def get_activation(name: str) -> Callable:
    """The activation called `name`; a clear error for an unknown name."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation={name!r} is unknown; choose one of {sorted(ACTIVATIONS)}"
        ) from None
