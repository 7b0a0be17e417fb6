"""The solvers a phase can be run with, by name (for model cards and the CLI)."""

import diffrax

from .adaptive import Adaptive
from .euler import Euler
from .solver import AbstractPhaseSolver

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
        "AbstractPhaseSolver instance such as Adaptive(...) or Euler(...)"
    )
