"""Convergence and stability analysis: fixed points, spectra, the discretised iteration, basins
of attraction and the descent check of the paper's §5 ("good parameters").

The public namespace of :mod:`ctgep._theory.stability`, :mod:`ctgep._theory.iteration` and
:mod:`ctgep._theory.stability_analysis`.
Every function takes a batch and returns an `xarray.Dataset` (or, for :func:`fixed_points`, a
:class:`FixedPoints`); time is in units of the membrane time constant τ.
"""

from ._theory.iteration import (
    convergence as convergence,
    iteration_spectrum as iteration_spectrum,
    predicted_steps as predicted_steps,
    unit_steps as unit_steps,
)
from ._theory.stability import (
    DENSE_MAX as DENSE_MAX,
    FixedPoints as FixedPoints,
    fixed_points as fixed_points,
    jacobian_spectrum as jacobian_spectrum,
)
from ._theory.stability_analysis import (
    PROBE_COLUMNS as PROBE_COLUMNS,
    analyse as analyse,
    basins as basins,
    descent as descent,
    load as load,
    plot as plot,
    probe as probe,
    save as save,
    summary as summary,
)

__all__ = ["DENSE_MAX", "FixedPoints", "PROBE_COLUMNS", "analyse", "basins", "convergence", "descent", "fixed_points",
           "iteration_spectrum", "jacobian_spectrum", "load", "plot", "predicted_steps", "probe", "save",
           "summary", "unit_steps"]
