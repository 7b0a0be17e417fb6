"""Reference gradients of `J(θ)`, the paper's ν and the theorem quantities (docs/theory.md).

The public namespace of :mod:`ctgep._theory`: `rbp`, `nu`, `bptt`, `finite_difference`,
the fixed point and its derivatives (Lemma 2, Proposition 5), the adjoint ODEs of Theorem 6 and
Corollary 7, the clipped Euler scheme's own fixed point, ν and gradient (`clipped_*`,
`active_set`, `complementarity`; docs/theory.md#the-clipped-scheme), and the metrics that
compare two updates.
"""

from ._theory.adjoint import bptt_adjoint as bptt_adjoint
from ._theory.adjoint import rbp_adjoint as rbp_adjoint
from ._theory.adjoint import trajectory as trajectory
from ._theory.clipped import (
    active_set as active_set,
    clipped_finite_difference as clipped_finite_difference,
    clipped_fixed_point as clipped_fixed_point,
    clipped_loss as clipped_loss,
    clipped_nu as clipped_nu,
    clipped_rbp as clipped_rbp,
    complementarity as complementarity,
)
from ._theory.compare import angle as angle
from ._theory.compare import compare as compare
from ._theory.compare import cosine_similarity as cosine_similarity
from ._theory.compare import relative_error as relative_error
from ._theory.compare import sign_agreement as sign_agreement
from ._theory.gradients import (
    TIGHT as TIGHT,
    bptt as bptt,
    dcost_dbeta as dcost_dbeta,
    dfixed_point_dbeta as dfixed_point_dbeta,
    dfixed_point_dtheta as dfixed_point_dtheta,
    finite_difference as finite_difference,
    fixed_point as fixed_point,
    jacobian as jacobian,
    loss as loss,
    nu as nu,
    rbp as rbp,
)

__all__ = [
    "active_set", "angle", "clipped_finite_difference", "clipped_fixed_point", "clipped_loss",
    "clipped_nu", "clipped_rbp", "complementarity", "bptt", "bptt_adjoint", "compare", "cosine_similarity", "dcost_dbeta",
    "dfixed_point_dbeta", "dfixed_point_dtheta", "finite_difference", "fixed_point", "jacobian",
    "loss", "nu", "rbp", "rbp_adjoint", "relative_error", "sign_agreement", "trajectory",
]
