"""How a phase is integrated: an adaptive diffrax solver, or the paper's clipped Euler scheme."""

import diffrax
import equinox as eqx


class AbstractPhaseSolver(eqx.Module):
    """A way to integrate `ds/dt = μ^β` until steady state or the horizon."""


class Adaptive(AbstractPhaseSolver, strict=True):
    """`diffrax.diffeqsolve` with an adaptive step (PID controller on the neuron states only).

    `dtmax` caps the step, which matters when differentiating through the solve near a fixed
    point (DESIGN §3). `max_steps` bounds the work; exceeding it flags the samples.
    """

    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    rtol: float = 1e-5
    atol: float = 1e-7
    dt0: float | None = None
    dtmax: float | None = None
    max_steps: int = 20_000


class Euler(AbstractPhaseSolver, strict=True):
    """The paper's forward Euler relaxation `s ← 0 ∨ (s + ε μ^β) ∧ 1` (Eq. 58–59) as a loop.

    With `clip=True` the state is projected onto the network's `state_bounds` (the hard
    sigmoid's [0, 1]) after each step; networks without bounds are not clipped.

    With `precondition=True` each unit's step is `ε / max(1, 1 + β ∂²C/∂s_i²)`: divided by its
    own leak rate under a positive nudge (1 + β on the outputs of the squared-error cost, 1
    elsewhere). Any positive per-unit step leaves the fixed point, and so what EP learns from,
    unchanged; with `dt=1` this is the nonlinear Jacobi iteration (each unit jumps to where its
    own `μ` is 0 given the others), which settles in about half the steps of `dt=0.5`, whereas
    plain Euler at `dt=1` makes the nudged outputs oscillate (factor `1 − (1 + β)ε = −1` at β = 1).

    With `alternate=True` each step updates the odd layers (1, 3, … from the input) and then
    the even ones from the odd layers' new state, instead of all layers from the old state
    (red–black ordering). The fixed points are the same; in a layered network a layer's μ
    depends only on its neighbours, so a step costs the same products (with a steady-state stop,
    half a step more for the test of every layer's μ), and information crosses two layers per
    step instead of one. With `precondition=True, dt=1` this is block
    Gauss–Seidel: each layer jumps to its own fixed point given its neighbours.
    """

    dt: float = 0.5
    clip: bool = True
    precondition: bool = False
    alternate: bool = False


SOLVERS = {
    "tsit5": lambda: Adaptive(diffrax.Tsit5()),
    "dopri5": lambda: Adaptive(diffrax.Dopri5()),
    "kvaerno5": lambda: Adaptive(diffrax.Kvaerno5()),
    "euler": lambda: Euler(),
}


def get_solver(solver) -> AbstractPhaseSolver:
    """Accept a solver object or one of the names in `SOLVERS`."""
    if isinstance(solver, AbstractPhaseSolver):
        return solver
    if isinstance(solver, str) and solver in SOLVERS:
        return SOLVERS[solver]()
    raise ValueError(
        f"solver={solver!r} is unknown; pass one of {sorted(SOLVERS)} or an "
        "Adaptive(...)/Euler(...) instance"
    )
