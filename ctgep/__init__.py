"""ctgep — continuous-time generalized Equilibrium Propagation.

Leaky-integrator networks with untied weights relax to a fixed point (free phase), are nudged
toward a target (nudged phase), and learn by the local rule `dW ∝ ∂μ/∂W · ds`.

The public names are loaded on first use (a module-level ``__getattr__``, PEP 562): ``import
ctgep`` does not import JAX, so that ``ctgep --help`` and card errors answer at once, while
``ctgep.X``, ``from ctgep import X`` and ``dir(ctgep)`` work as for eager imports.
"""

import importlib

__version__ = "0.1.0"

# public name -> the module (relative to this package) that defines it
_LAZY = {
    "ACTIVATIONS": "._dynamics.activations",
    "get_activation": "._dynamics.activations",
    "AbstractDynamics": "._dynamics.networks",
    "EnergyNetwork": "._dynamics.networks",
    "LayeredNetwork": "._dynamics.networks",
    "ConvNetwork": "._dynamics.conv",
    "free_phase": "._simulation.phases",
    "nudged_phase": "._simulation.phases",
    "Observer": "._simulation.problem",
    "PhaseProblem": "._simulation.problem",
    "PhaseResult": "._simulation.results",
    "RESULTS": "._simulation.results",
    "plot_error_signal": "._observation.plots",
    "plot_phase_portrait": "._observation.plots",
    "plot_state_heatmaps": "._observation.plots",
    "save_figures": "._observation.plots",
    "error_arrival_times": "._observation.record_io",
    "load_record": "._observation.record_io",
    "record": "._observation.record",
    "record_settings": "._observation.record_io",
    "EPStep": "._learning.rules",
    "as_gradient": "._learning.rules",
    "endpoint_update": "._learning.rules",
    "ep_step": "._learning.rules",
    "ep_update": "._learning.rules",
    "asymmetry_penalty": "._learning.homeostasis",
    "homeostasis_gradient": "._learning.homeostasis",
    "Adaptive": "._simulation.adaptive",
    "Euler": "._simulation.euler",
    "AbstractPhaseSolver": "._simulation.solver",
    "AbstractStepper": "._simulation.solver",
    "Relaxation": "._simulation.solver",
    "alignment": "._observation.alignment",
    "linear_readout": "._observation.readout",
    "plot_readout": "._observation.readout",
    "CardError": "._errors",
    "ConvergenceError": "._errors",
    "CtgepError": "._errors",
    "DataError": "._errors",
    "RunDirError": "._errors",
    "TrainingError": "._errors",
    "UsageError": "._errors",
    "Card": "._experiment.cards",
    "load_card": "._experiment.cards",
    "Dataset": "._experiment.data",
    "load_dataset": "._experiment.data",
    "TrainingStep": "._experiment.build",
    "build_network": "._experiment.build",
    "build_optimizer": "._experiment.build",
    "build_solver": "._experiment.build",
    "build_training_step": "._experiment.build",
    "error_rate": "._experiment.build",
    "predict": "._experiment.build",
    "initial_network": "._experiment.build",
    "Run": "._experiment.rundir",
    "load_run": "._experiment.rundir",
    "Progress": "._experiment.loop",
    "evaluate": "._experiment.loop",
    "load_card_data": "._experiment.loop",
    "resume": "._experiment.loop",
    "train": "._experiment.loop",
    "initialize_distributed": "._experiment.parallel",
}
# public submodules, imported on first use
_SUBMODULES = ("field", "gradients", "stability")
_SUBMODULE_PATHS = {"field": "._dynamics.field", "gradients": ".gradients", "stability": ".stability"}

__all__ = sorted([*_LAZY, *_SUBMODULES])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in _SUBMODULE_PATHS:
        value = importlib.import_module(_SUBMODULE_PATHS[name], __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
