"""ctgep — continuous-time generalized Equilibrium Propagation.

Leaky-integrator networks with untied weights relax to a fixed point (free phase), are nudged
toward a target (nudged phase), and learn by the local rule `dW ∝ ∂μ/∂W · ds`.
"""

from ._dynamics.activations import ACTIVATIONS as ACTIVATIONS
from ._dynamics.networks import (
    AbstractDynamics as AbstractDynamics,
    EnergyNetwork as EnergyNetwork,
    LayeredNetwork as LayeredNetwork,
)
from ._simulation.phases import (
    PhaseResult as PhaseResult,
    free_phase as free_phase,
    nudged_phase as nudged_phase,
)
from ._observation.plots import (
    plot_error_signal as plot_error_signal,
    plot_phase_portrait as plot_phase_portrait,
    plot_state_heatmaps as plot_state_heatmaps,
    save_figures as save_figures,
)
from ._observation.record import (
    error_arrival_times as error_arrival_times,
    load_record as load_record,
    record as record,
    record_settings as record_settings,
)
from ._learning.rules import (
    EPStep as EPStep,
    as_gradient as as_gradient,
    endpoint_update as endpoint_update,
    ep_step as ep_step,
    ep_update as ep_update,
)
from ._simulation.solvers import (
    AbstractPhaseSolver as AbstractPhaseSolver,
    Adaptive as Adaptive,
    Euler as Euler,
)
from ._observation.alignment import alignment as alignment
from ._experiment.cards import Card as Card, CardError as CardError, load_card as load_card
from ._experiment.data import DataError as DataError, Dataset as Dataset, load_dataset as load_dataset
from ._experiment.train import (
    Run as Run,
    TrainingError as TrainingError,
    evaluate as evaluate,
    load_run as load_run,
    resume as resume,
    train as train,
)

from . import gradients as gradients

__version__ = "0.1.0"
