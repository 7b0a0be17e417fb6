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
from ._simulation.phases import free_phase as free_phase, nudged_phase as nudged_phase
from ._simulation.problem import Observer as Observer, PhaseProblem as PhaseProblem
from ._simulation.results import PhaseResult as PhaseResult, RESULTS as RESULTS
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
from ._simulation.adaptive import Adaptive as Adaptive
from ._simulation.euler import Euler as Euler
from ._simulation.solver import (
    AbstractPhaseSolver as AbstractPhaseSolver,
    AbstractStepper as AbstractStepper,
    Relaxation as Relaxation,
)
from ._dynamics import field as field
from ._observation.alignment import alignment as alignment
from ._errors import (
    CardError as CardError,
    ConvergenceError as ConvergenceError,
    CtgepError as CtgepError,
    DataError as DataError,
    RunDirError as RunDirError,
    TrainingError as TrainingError,
    UsageError as UsageError,
)
from ._dynamics.activations import get_activation as get_activation
from ._experiment.cards import Card as Card, load_card as load_card
from ._experiment.data import Dataset as Dataset, load_dataset as load_dataset
from ._experiment.build import (
    TrainingStep as TrainingStep,
    build_network as build_network,
    build_optimizer as build_optimizer,
    build_solver as build_solver,
    build_training_step as build_training_step,
    error_rate as error_rate,
    initial_network as initial_network,
)
from ._experiment.rundir import Run as Run, load_run as load_run
from ._experiment.loop import (
    Progress as Progress,
    evaluate as evaluate,
    load_card_data as load_card_data,
    resume as resume,
    train as train,
)

from . import gradients as gradients

__version__ = "0.1.0"
from . import stability as stability
