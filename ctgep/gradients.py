"""Reference gradients of `J(θ)`, the paper's ν and the theorem quantities (docs/theory.md).

The public namespace of :mod:`ctgep._theory.gradients` and :mod:`ctgep._theory.adjoint`.
"""

from ._theory.gradients import *  # noqa: F401,F403
from ._theory.gradients import __all__ as __all__
from ._theory.gradients import TIGHT as TIGHT
