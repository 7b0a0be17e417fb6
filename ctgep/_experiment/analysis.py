"""Stability through training (`training.analyse_every`): the probe columns of an epoch's metrics.

Every `analyse_every` epochs, and after the first, :func:`ctgep.stability.probe` measures on a
fixed probe batch — the first `training.analyse_samples` examples of the test set (all of them
when there are fewer), with their labels — the median spectral abscissa and asymmetry of `Jμ` at
the free fixed point and the angle between ν and `−∇J` (paper §5, condition 2). Other epochs get
NaN in those columns, so that every row of `metrics.csv` has them.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from .build import build_solver
from .cards import Card

__all__ = ["analysed", "probe_row"]


def analysed(card: Card, epoch: int) -> bool:
    """Whether the epoch `epoch` (1-based) is analysed: the first, then every `analyse_every`."""
    n = card.training.analyse_every
    return bool(n) and (epoch == 1 or epoch % n == 0)


def probe_row(card: Card, data, net, epoch: int) -> dict:
    """The probe columns of epoch `epoch` (1-based): {} when `analyse_every = 0`, NaN when the
    epoch is not analysed, else :func:`ctgep.stability.probe` on the probe batch."""
    from .._theory.stability_analysis import PROBE_COLUMNS, probe

    if not card.training.analyse_every:
        return {}
    if not analysed(card, epoch):
        return dict.fromkeys(PROBE_COLUMNS, math.nan)
    n = min(card.training.analyse_samples, len(data.y_test))
    x = jnp.asarray(data.x_test[:n], jnp.float32)
    y = jax.nn.one_hot(jnp.asarray(np.asarray(data.y_test[:n])), card.model.sizes[-1], dtype=x.dtype)
    return probe(net, x, y, solver=build_solver(card))
