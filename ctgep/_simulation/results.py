"""How a phase ended, per sample: result codes, `PhaseResult` and the non-convergence policy.

In the spirit of `diffrax.RESULTS`, every sample of a phase gets one code saying why it
stopped. The minibatch is one ODE, so a shared cause (the solver's step budget, a failed
step) is only given to the samples that had not settled on their own: a sample whose residual
is below `tol` is `converged` whatever happened to the others.
"""

import enum
import warnings
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._dynamics.networks import State

Policy = Literal["raise", "warn", "flag"]
POLICIES = ("raise", "warn", "flag")


class RESULTS(enum.IntEnum):
    """Per-sample outcome of a phase (stored as `int8` in :attr:`PhaseResult.code`)."""

    converged = 0
    """The residual fell below `tol` (or the fixed-length phase ended below it)."""
    horizon_reached = 1
    """The phase ran to its horizon `t_max` with the residual still at or above `tol`."""
    max_steps_reached = 2
    """The adaptive solver used its `max_steps` before this sample settled."""
    nonfinite_state = 3
    """The state or the residual became NaN or infinite."""
    solver_failure = 4
    """The solver failed (for instance a step size that underflowed) before this sample settled."""

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    RESULTS.converged: "settled (residual below tol)",
    RESULTS.horizon_reached: "reached the horizon t_max before the residual fell below tol",
    RESULTS.max_steps_reached: "the solver used its max_steps before the residual fell below tol",
    RESULTS.nonfinite_state: "the state or its residual became NaN or infinite",
    RESULTS.solver_failure: "the solver failed before the residual fell below tol",
}

# Shared (whole-solve) outcomes a solver reports; the driver turns them into per-sample codes.
SOLVE_OK, SOLVE_MAX_STEPS, SOLVE_FAILED = 0, 2, 4


def sample_codes(residual, tol, state_finite, solve_status) -> Int[Array, " batch"]:
    """Per-sample codes from the final residuals, the state's finiteness and the shared status."""
    res_ok = jnp.isfinite(residual)
    settled = res_ok & (residual < tol)
    unsettled = jnp.where(solve_status == SOLVE_OK, int(RESULTS.horizon_reached), solve_status)
    code = jnp.where(settled, int(RESULTS.converged), unsettled)
    code = jnp.where(res_ok & state_finite, code, int(RESULTS.nonfinite_state))
    return code.astype(jnp.int8)


class PhaseResult(eqx.Module, strict=True):
    """Outcome of one phase, per sample.

    `code` holds one :class:`RESULTS` value per sample; `converged` is `code == 0`. `t_stop`
    and `steps` are where the solve ended; the batch is one ODE, so they are shared by its
    samples unless the phase ran with `batch="vmap"`. `residual` is `‖μ^β‖_∞` at the final
    state; `residual_kind` says which field: `"raw"` (the ODE's `μ^β`) or `"projected"` (the
    clipped Euler scheme's `(clip(s + ε μ^β) − s)/ε`, zero for a unit held on its bound, see
    docs/model.md). `synapse_integral` is `∫ (∂μ/∂θ)ᵀ ds` averaged over the batch (integrated
    rules), `params` the weights at the end of a continual phase.
    """

    state: State
    t_stop: Float[Array, " batch"]
    steps: Int[Array, " batch"]
    residual: Float[Array, " batch"]
    code: Int[Array, " batch"]
    synapse_integral: Any = None
    params: Any = None
    residual_kind: str = eqx.field(static=True, default="raw")

    @property
    def converged(self):
        """Per sample: did the phase settle (`code == RESULTS.converged`)?"""
        return self.code == int(RESULTS.converged)


def describe_codes(codes) -> str:
    """`'3 sample(s): reached the horizon …; 1 sample(s): …'` for the codes that are not 0."""
    codes = np.asarray(codes).ravel()
    parts = []
    for r in RESULTS:
        n = int(np.sum(codes == int(r)))
        if r != RESULTS.converged and n:
            parts.append(f"{n} sample(s) {r.message} ({r.name})")
    return "; ".join(parts)


def count_codes(codes) -> dict[str, int]:
    """`{name: count}` of every :class:`RESULTS` value among `codes`."""
    codes = np.asarray(codes).ravel()
    return {r.name: int(np.sum(codes == int(r))) for r in RESULTS}


def apply_policy(result: PhaseResult, policy: Policy, phase: str) -> PhaseResult:
    """Flag (return as is), warn, or raise when some samples did not converge.

    Inside `jit`, `"raise"` uses `eqx.error_if` with a message naming the phase; the counts per
    cause are known only on the host, so `"warn"` (a host callback) names each cause and count.
    """
    if policy == "flag":
        return result
    if policy == "raise":
        msgs = [f"ctgep: the {phase} phase did not converge: at least one sample {r.message} ({r.name})"
                for r in RESULTS]
        worst = jnp.max(result.code).astype(jnp.int32)
        return eqx.branched_error_if(result, worst > 0, worst, msgs)

    def _warn(codes):
        text = describe_codes(codes)
        if text:
            warnings.warn(f"the {phase} phase did not converge: {text}", RuntimeWarning, stacklevel=2)

    jax.debug.callback(_warn, result.code)
    return result
