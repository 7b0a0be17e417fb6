"""Vector fields μ(θ, v, s) and costs C(θ, v, s) (paper §3–4 and Appendix A).

The simulator, the learning rules and the gradient checks only talk to
:class:`AbstractDynamics`, so a user can bring their own dynamics. Two concrete ones ship:
:class:`LayeredNetwork` (the paper's leaky integrators with untied weights) and
:class:`EnergyNetwork` (the tied-weight, energy-based network of the original EP).

Conventions: a state is a tuple of arrays, one per dynamic layer, each shaped
``(batch, n_l)``; the whole minibatch is one ODE state. Parameters are the module's inexact
arrays; everything else is static.
"""

import abc
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._dynamics.activations import STATE_BOUNDS, get_activation

State = tuple[Float[Array, "batch _"], ...]


class AbstractDynamics(eqx.Module):
    """Interface every network implements: `μ`, `C`, the initial state and the readout.

    `drive(x)` returns whatever depends on the clamped input only (for instance `Wf₁ρ(x)`), so
    that the relaxation does not recompute it at every step; `vector_field(state, drive)` is
    `μ(θ, v, s)` for the batch. The cost defaults to the paper's ½‖y − s_out‖².
    """

    @abc.abstractmethod
    def init_state(self, x: Float[Array, "batch n_in"]) -> State:
        """The state a free phase starts from (the paper starts from zero)."""

    @abc.abstractmethod
    def vector_field(self, state: State, drive: Any) -> State:
        """`μ(θ, v, s)`, evaluated on the whole batch."""

    @abc.abstractmethod
    def output(self, state: State) -> Float[Array, "batch n_out"]:
        """The units read out as the prediction and compared with the target."""

    def drive(self, x: Float[Array, "batch n_in"]) -> Any:
        """The part of `μ` that is constant during a phase (the input's drive, and whatever else
        is worth computing once per phase), passed to :meth:`vector_field`. Default: `x`."""
        return x

    def cost(self, state: State, y: Float[Array, "batch n_out"]) -> Float[Array, " batch"]:
        """`C = ½‖y − output‖²` per sample."""
        return 0.5 * jnp.sum((y - self.output(state)) ** 2, axis=-1)

    @property
    def state_bounds(self) -> tuple[float, float] | None:
        """Bounds the paper's Euler scheme clips the state to (Eq. 59), or None."""
        return None


class AbstractRateNetwork(AbstractDynamics):
    """A network of units firing at `ρ(s)` for a named activation, read out at its last layer;
    the paper's Euler scheme clips the state to the bounds of `ρ` (Eq. 59)."""

    activation: eqx.AbstractVar[str]

    def output(self, state):
        return state[-1]

    @property
    def state_bounds(self):
        return STATE_BOUNDS.get(self.activation)


def _glorot(key, shape, dtype):
    fan_out, fan_in = shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jr.uniform(key, shape, dtype, -limit, limit)


def _at_angle(key, reference, degrees, dtype):
    """A matrix with the norm of `reference` at `degrees` (Frobenius angle) from it."""
    u = reference / jnp.linalg.norm(reference)
    q = jr.normal(key, reference.shape, dtype)
    q = q - jnp.sum(q * u) * u
    v = q / jnp.linalg.norm(q)
    a = math.radians(degrees)
    return jnp.linalg.norm(reference) * (math.cos(a) * u + math.sin(a) * v)


def _check_sizes(sizes) -> tuple[int, ...]:
    try:
        sizes = tuple(int(n) for n in sizes)
    except (TypeError, ValueError):
        raise ValueError(f"sizes={sizes!r} must be a sequence of layer widths") from None
    if len(sizes) < 2 or any(n < 1 for n in sizes):
        raise ValueError(
            f"sizes={sizes!r} needs an input and an output layer, all widths ≥ 1"
        )
    return sizes


class LayeredNetwork(AbstractRateNetwork, strict=True):
    """Leaky-integrator layers with untied feedforward and feedback weights (Eq. 6–8).

    Layers are numbered input → output: `s₀ = x` is clamped, `s₁ … s_L` evolve by

        μ_l = Wf_l ρ(s_{l−1}) + Wb_l ρ(s_{l+1}) + b_l − s_l      (no Wb term at the output).

    `Wf[l-1]` has shape `(n_l, n_{l−1})` and `Wb[l-1]` shape `(n_l, n_{l+1})`; nothing ties
    `Wb_l` to `Wf_{l+1}ᵀ`.
    """

    Wf: tuple[Float[Array, "n_out n_in"], ...]
    Wb: tuple[Float[Array, "n_l n_next"], ...]
    b: tuple[Float[Array, " n_l"], ...]
    sizes: tuple[int, ...] = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        sizes,
        activation: str = "hard_sigmoid",
        *,
        key: PRNGKeyArray,
        feedback: str | float = "random",
        dtype=None,
    ):
        """Glorot-initialised weights and zero biases.

        `feedback`: "random" (independent Glorot draws, the default), "transpose"
        (`Wb_l = Wf_{l+1}ᵀ` at initialisation only) or a number of degrees between `Wb_l`
        and `Wf_{l+1}ᵀ`.
        """
        sizes = _check_sizes(sizes)
        get_activation(activation)
        if not (feedback in ("random", "transpose") or isinstance(feedback, (int, float))):
            raise ValueError(
                f"feedback={feedback!r} must be 'random', 'transpose' or an angle in degrees"
            )
        dtype = jnp.float32 if dtype is None else dtype
        n_layers = len(sizes) - 1
        kf, kb = jr.split(key)
        Wf = tuple(
            _glorot(k, (sizes[l + 1], sizes[l]), dtype)
            for l, k in enumerate(jr.split(kf, n_layers))
        )
        Wb = []
        for l, k in enumerate(jr.split(kb, max(n_layers - 1, 1))[: n_layers - 1]):
            reference = Wf[l + 1].T
            if feedback == "random":
                Wb.append(_glorot(k, reference.shape, dtype))
            elif feedback == "transpose":
                Wb.append(reference)
            else:
                Wb.append(_at_angle(k, reference, float(feedback), dtype))
        self.Wf = Wf
        self.Wb = tuple(Wb)
        self.b = tuple(jnp.zeros((n,), dtype) for n in sizes[1:])
        self.sizes = sizes
        self.activation = activation

    def init_state(self, x):
        batch = x.shape[0]
        return tuple(jnp.zeros((batch, n), self.b[0].dtype) for n in self.sizes[1:])

    def drive(self, x):
        """`(Wf₁ρ(x) + b₁, b₂, …)`, and the recurrent weights transposed once per phase.

        The relaxation multiplies `ρ(s) @ Wᵀ` at every step. Handing the loop `Wᵀ` as a
        row-major array makes that a plain (batch × n)·(n × m) product; transposing inside the
        loop costs XLA's CPU backend about a third of its matmul speed at batch 20
        (`studies/benchmarks/matmul_batch20.py`).
        """
        rho = get_activation(self.activation)
        inputs = (rho(x) @ self.Wf[0].T + self.b[0],) + self.b[1:]
        return inputs, tuple(w.T for w in self.Wf[1:]), tuple(w.T for w in self.Wb)

    def vector_field(self, state, drive):
        inputs, wf_t, wb_t = drive
        rho = get_activation(self.activation)
        rates = [rho(s) for s in state]
        n = len(state)
        mu = []
        for l in range(n):
            total = inputs[l]
            if l > 0:
                total = total + rates[l - 1] @ wf_t[l - 1]
            if l < n - 1:
                total = total + rates[l + 1] @ wb_t[l]
            mu.append(total - state[l])
        return tuple(mu)



class EnergyNetwork(AbstractRateNetwork, strict=True):
    """The tied-weight network of the original EP (Scellier & Bengio 2017): `μ = −∂E/∂s`.

        E(s) = ½ Σ_l ‖s_l‖² − Σ_l ρ(s_l)ᵀ W_l ρ(s_{l−1}) − Σ_l b_lᵀ ρ(s_l),   s₀ = x.

    A gradient system (its Jacobian is a Hessian, hence symmetric), shipped to show that the
    simulator, rules and checks work for any :class:`AbstractDynamics`.
    """

    W: tuple[Float[Array, "n_out n_in"], ...]
    b: tuple[Float[Array, " n_l"], ...]
    sizes: tuple[int, ...] = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(self, sizes, activation: str = "sigmoid", *, key: PRNGKeyArray, dtype=None):
        sizes = _check_sizes(sizes)
        get_activation(activation)
        dtype = jnp.float32 if dtype is None else dtype
        keys = jr.split(key, len(sizes) - 1)
        self.W = tuple(
            _glorot(k, (sizes[l + 1], sizes[l]), dtype) for l, k in enumerate(keys)
        )
        self.b = tuple(jnp.zeros((n,), dtype) for n in sizes[1:])
        self.sizes = sizes
        self.activation = activation

    def energy(self, state, x) -> Float[Array, " batch"]:
        """`E(s)` per sample."""
        rho = get_activation(self.activation)
        rates = [rho(x)] + [rho(s) for s in state]
        e = sum(0.5 * jnp.sum(s**2, axis=-1) for s in state)
        for l, (W, b) in enumerate(zip(self.W, self.b)):
            e = e - jnp.sum((rates[l] @ W.T) * rates[l + 1], axis=-1)
            e = e - rates[l + 1] @ b
        return e

    def init_state(self, x):
        return tuple(jnp.zeros((x.shape[0], n), self.b[0].dtype) for n in self.sizes[1:])

    def vector_field(self, state, drive):
        grad = jax.grad(lambda s: jnp.sum(self.energy(s, drive)))(state)
        return jax.tree_util.tree_map(jnp.negative, grad)

