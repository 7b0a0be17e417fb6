"""Model cards: one declarative TOML file per experiment, validated into a :class:`Card`.

A card has a top-level ``name``/``description`` and five tables — ``[model]``, ``[phases]``,
``[learning]``, ``[training]``, ``[data]`` — whose keys are the fields of the dataclasses
below. Unknown keys are errors (a typo must not silently fall back to a default). Any value
can be overridden with ``section.key=value`` strings (the CLI's ``--set``), coerced to the
field's type. ``load_card("digits")`` finds the built-in cards shipped with the package.

Over 400 lines because the schema, parsing, overrides and validation of a card are one job, and
the validation of every key is its largest part.
"""

import dataclasses
import importlib.resources
import math
import pathlib
import tomllib
import typing
import warnings

from .._errors import CardError
from .._experiment.data import DATASETS, _ALIASES

# The names a card may use. Spelled out here rather than imported from the modules that define
# them (ctgep._dynamics.activations.ACTIVATIONS, ctgep._learning.rules.RULES / NUDGINGS,
# ctgep._simulation.solvers.SOLVERS) so that reading and validating a card does not import JAX:
# a bad card is reported at once. tests/test_cli.py checks that the lists agree.
ACTIVATIONS = ("hard_sigmoid", "sigmoid", "smooth_hard_sigmoid", "tanh")
SOLVERS = ("tsit5", "dopri5", "kvaerno5", "euler")
RULES = ("endpoint", "integrated", "continual")
NUDGINGS = ("one-sided", "random", "centered")
HOMEOSTASIS_PARAMS = ("all", "feedback")

__all__ = ["Card", "CardError", "builtin_cards", "card_from_dict", "load_card", "validate"]


@dataclasses.dataclass
class ModelSection:
    """Architecture: layer widths input → output, firing rate ρ, initial feedback weights."""

    sizes: list[int] = dataclasses.field(default_factory=lambda: [64, 256, 10])
    activation: str = "hard_sigmoid"
    feedback: str = "random"  # "random", "transpose", or an angle in degrees ("60")
    # "layered" (ctgep.LayeredNetwork, dense layers) or "conv" (ctgep.ConvNetwork: conv layers
    # with untied transposed-convolution feedback, then a dense output). For "conv", `sizes` are
    # the flat widths input, each feature map H·W·C, output (checked against the keys below).
    kind: str = "layered"
    channels: list[int] = dataclasses.field(default_factory=list)  # conv: feature maps per conv layer
    kernels: list[int] = dataclasses.field(default_factory=list)  # conv: kernel side per conv layer
    pool: int = 2  # conv: side of the pooling blocks after each convolution (1: none)
    pooling: str = "average"  # conv: "average", or "max" (smoothed, routed by the forward drive)
    pool_temperature: float = 0.3  # conv, max pooling: τ of the smooth max τ·log mean exp(y/τ)
    padding: int = 0  # conv: zero padding of each convolution (0: "valid")
    image: list[int] = dataclasses.field(default_factory=list)  # conv: input [H, W, C]; []: square, 1 channel
    layout: str = "NHWC"  # conv: "NHWC" or "NCHW", the feature maps' memory order (speed only)

    def image_shape(self) -> tuple[int, int, int]:
        """The input image `(H, W, C)` of a conv model: `image`, else a square single-channel one."""
        if self.image:
            return tuple(self.image)
        side = math.isqrt(self.sizes[0])
        return (side, side, 1)


@dataclasses.dataclass
class PhasesSection:
    """How the free and nudged phases are integrated (horizons in units of the time constant)."""

    solver: str = "euler"
    dt: float = 0.5  # Euler step ε (Eq. 58–59); ignored by the adaptive solvers
    # Euler only: scale each unit's step by 1 / max(1, 1 + β ∂²C/∂s²), its leak under the nudge.
    # The fixed point is unchanged; at dt = 1 both phases settle in about half the steps of
    # dt = 0.5 (enough for MNIST 784-512-512-10, not for 784-512-512-512-10: see the README).
    precondition: bool = False
    # Euler only: each step updates the odd layers, then the even ones from their new state
    # (red–black order; with precondition and dt = 1, block Gauss–Seidel). Same fixed point and
    # cost per step; settles in about half the steps of the all-at-once update.
    alternate: bool = False
    # Euler only: halve a sample's step (down to dt/16) whenever its last step ‖Δs‖∞ (per unit of
    # step) is not below that of two steps before, within each phase. Same fixed point; a
    # safeguard for an iteration that would flip or grow (an eigenvalue outside the unit circle,
    # `ctgep stability`) while the ODE settles.
    backtrack: bool = False
    t_free: float = 20.0
    t_nudged: float = 5.0
    tol: float = 1e-3
    stop_at_steady_state: bool = True
    # Training only: start each example's free phase from its own free state of the previous
    # epoch ("persistent particles", stored per example and checkpointed with `latest`) instead
    # of zeros; with stop_at_steady_state the free phase then ends after far fewer steps once
    # the weights move slowly. Evaluation always starts from zeros.
    warm_start: bool = False
    # Free-phase horizon of evaluation (prediction from zeros); 0: the same as t_free. Lets a
    # warm-started training use a short free phase while predictions still settle from zeros.
    t_eval: float = 0.0

    @property
    def prediction_horizon(self) -> float:
        """The free-phase horizon of every evaluation: `t_eval`, or `t_free` when it is 0."""
        return self.t_eval or self.t_free


@dataclasses.dataclass
class LearningSection:
    """EP learning rule, nudging, and the optimiser fed with the negated EP update."""

    beta: float = 1.0
    rule: str = "endpoint"
    nudging: str = "one-sided"
    eta: float = 0.0  # continual mode only: synaptic rate during the nudged phase
    optimizer: str = "sgd"  # "sgd", "momentum" or "adam"
    momentum: float = 0.9  # for "momentum"
    learning_rates: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.05])
    schedule: str = "constant"  # or "cosine": decay each rate to final_fraction of it by the end
    final_fraction: float = 0.0
    # L2 on the weights Wf, Wb (not b): the optimiser is fed −ΔW + weight_decay · W, so with sgd
    # each step also shrinks W by α_l · weight_decay · W.
    weight_decay: float = 0.0
    # Jacobian homeostasis (Laborieux & Zenke 2024): subtract λ ∂P/∂θ from the EP update, P the
    # asymmetry ‖Jμ ε − Jμᵀ ε‖² at the free state with a random probe ε per example (0: off).
    homeostasis: float = 0.0
    # Epochs at the start trained without homeostasis (λ applies from epoch delay + 1; 0: from
    # the start): a fast unaligned start, then alignment (the Fashion-MNIST CNN's question).
    homeostasis_delay: int = 0
    # What homeostasis moves: "all" trainable arrays (Laborieux & Zenke), or "feedback" (Wb) alone.
    homeostasis_params: str = "all"


@dataclasses.dataclass
class TrainingSection:
    """Minibatches, epochs, seed and checkpointing."""

    epochs: int = 10
    batch_size: int = 20
    seed: int = 0
    eval_batch_size: int = 500
    checkpoint_every: int = 0  # also checkpoint every N batches within an epoch (0: per epoch)
    progress_every: int = 10  # refresh the progress bar every N batches
    # Stability through training: every N epochs (and after the first; 0: never) measure on the
    # first `analyse_samples` test examples the spectral abscissa and asymmetry of Jμ at the
    # free fixed point and the angle between ν and −∇J (ctgep.stability.probe): metrics columns.
    analyse_every: int = 0
    analyse_samples: int = 64
    # Data parallelism: split each minibatch over this many devices ("all": every device of every
    # process), the parameters replicated; "1" (the default) is the single-device step.
    devices: str = "1"
    # Start from the weights of another run's checkpoint instead of the card's initialisation:
    # "RUN_DIR" (its latest checkpoint) or "RUN_DIR:best"; the optimiser and schedule start
    # afresh (fine-tuning, a warm restart, a change of card). Empty: the card's initialisation.
    init: str = ""


@dataclasses.dataclass
class DataSection:
    """Dataset and where its files are."""

    dataset: str = "digits"
    data_dir: str = ""  # empty: --data-dir, $CTGEP_DATA_DIR, the search path, the cache
    validation: float = 0.0  # fraction of the training set held out for model selection
    download: bool = True
    verify: bool = True
    max_train: int = 0  # use only the first N training examples (0: all), for smoke runs
    max_test: int = 0  # likewise for the test set
    # Augmentation (the paper uses none): translate each training image by a random whole number
    # of pixels, at most `shift` each way, afresh at every step. Evaluation sees plain images.
    shift: int = 0
    # Shift only in the first N epochs (0: in every epoch); the last ones then fit the plain images.
    shift_epochs: int = 0


def init_checkpoint(init: str) -> tuple[str, str]:
    """`training.init` as `(run_dir, "latest" | "best")`; `("", "latest")` when it is empty."""
    run_dir, sep, which = init.rpartition(":")
    if not sep or which not in ("latest", "best"):
        run_dir, which = init, "latest"
    if init and not run_dir.strip():
        raise CardError(f"training.init={init!r} must be a run directory, optionally with "
                        "':latest' or ':best'")
    return run_dir, which


SECTIONS = {
    "model": ModelSection,
    "phases": PhasesSection,
    "learning": LearningSection,
    "training": TrainingSection,
    "data": DataSection,
}
# The Euler step's options (phases.<key>), and what each does, for the one-line errors.
EULER_OPTIONS = {"precondition": "scales the Euler step", "alternate": "orders the Euler step's layer updates",
                 "backtrack": "damps the Euler step per sample"}
OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class Card:
    """A validated model card."""

    name: str = "digits"
    description: str = ""
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    phases: PhasesSection = dataclasses.field(default_factory=PhasesSection)
    learning: LearningSection = dataclasses.field(default_factory=LearningSection)
    training: TrainingSection = dataclasses.field(default_factory=TrainingSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The card as TOML that :func:`load_card` reads back to an equal card."""
        lines = [f"name = {_toml_value(self.name)}", f"description = {_toml_value(self.description)}"]
        for section in SECTIONS:
            lines += ["", f"[{section}]"]
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def with_overrides(self, overrides) -> "Card":
        """A copy with `section.key=value` strings applied (then validated)."""
        data = self.to_dict()
        for item in overrides or ():
            section, key, value = _parse_override(item)
            data[section][key] = value
        return card_from_dict(data)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(a) for a in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def _parse_override(item: str):
    if "=" not in item:
        raise CardError(f"--set {item!r} must look like section.key=value")
    path, raw = item.split("=", 1)
    path = path.strip()
    if "." not in path:
        raise CardError(f"--set {item!r}: key {path!r} must be section.key, e.g. learning.beta")
    section, key = path.split(".", 1)
    if section not in SECTIONS:
        raise CardError(f"--set {item!r}: unknown section {section!r}; sections are {list(SECTIONS)}")
    fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
    if key not in fields:
        raise CardError(f"--set {item!r}: unknown key {path!r}; {section} has {sorted(fields)}")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: a string
    return section, key, value


def _coerce(value, kind, where):
    origin = typing.get_origin(kind)
    if origin is list:
        (inner,) = typing.get_args(kind)
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise CardError(f"{where}={value!r} must be true or false")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise CardError(f"{where}={value!r} must be an integer")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CardError(f"{where}={value!r} must be a number")
        return float(value)
    if kind is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise CardError(f"{where}={value!r} must be a string")
        return value
    raise TypeError(kind)


def card_from_dict(data: dict) -> Card:
    """Build and validate a :class:`Card` from a (TOML-shaped) dict."""
    if not isinstance(data, dict):
        raise CardError("a card must be a TOML table")
    unknown = set(data) - {"name", "description", *SECTIONS}
    if unknown:
        raise CardError(f"unknown top-level key(s) {sorted(unknown)}; expected name, description "
                        f"and tables {list(SECTIONS)}")
    kwargs = {}
    for top in ("name", "description"):
        if top in data:
            kwargs[top] = _coerce(data[top], str, top)
    for section, cls in SECTIONS.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise CardError(f"[{section}] must be a table")
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = set(table) - fields
        if bad:
            raise CardError(f"unknown key(s) {sorted(f'{section}.{k}' for k in bad)}; "
                            f"[{section}] has {sorted(fields)}")
        kwargs[section] = cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in table.items()})
    card = Card(**kwargs)
    validate(card)
    return card


def _positive(value, where):
    if not (math.isfinite(value) and value > 0):
        raise CardError(f"{where}={value!r} must be positive")


def validate(card: Card) -> None:
    """Raise :class:`CardError` naming the first inconsistent key."""
    m, p, l, t, d = card.model, card.phases, card.learning, card.training, card.data
    if len(m.sizes) < 2 or any(n < 1 for n in m.sizes):
        raise CardError(f"model.sizes={m.sizes!r} needs an input and an output layer, widths ≥ 1")
    _validate_model_kind(m)
    if m.activation not in ACTIVATIONS:
        raise CardError(f"model.activation={m.activation!r} is unknown; choose one of {sorted(ACTIVATIONS)}")
    if m.feedback not in ("random", "transpose"):
        try:
            float(m.feedback)
        except ValueError:
            raise CardError(f"model.feedback={m.feedback!r} must be 'random', 'transpose' or an "
                            "angle in degrees") from None
    if p.solver not in SOLVERS:
        raise CardError(f"phases.solver={p.solver!r} is unknown; choose one of {sorted(SOLVERS)}")
    for key in ("dt", "t_free", "t_nudged", "tol"):
        _positive(getattr(p, key), f"phases.{key}")
    for key, what in EULER_OPTIONS.items():
        if getattr(p, key) and p.solver != "euler":
            raise CardError(f"phases.{key} {what}; phases.solver={p.solver!r} adapts its own step: "
                            f"use solver = 'euler' or {key} = false")
    _positive(l.beta, "learning.beta")
    if l.rule not in RULES:
        raise CardError(f"learning.rule={l.rule!r} must be one of {list(RULES)}")
    if l.rule != "endpoint" and l.nudging == "one-sided":
        warnings.warn(
            f"learning.rule={l.rule!r} with one-sided nudging: the nudged trajectory's orbit area "
            "pushes Wb toward −Wfᵀ and training can run away; centered nudging cancels it "
            "(studies/nu_comparison/RESULTS.md)", UserWarning, stacklevel=2)
    if l.nudging not in NUDGINGS:
        raise CardError(f"learning.nudging={l.nudging!r} must be one of {list(NUDGINGS)}")
    if l.nudging != "one-sided" and l.beta >= 1:
        raise CardError(f"learning.nudging={l.nudging!r} also nudges with −β, and at β={l.beta} ≥ 1 "
                        "the output units lose their leak (ds/dt = −(1−β)s + …) and never settle; "
                        "use β < 1 or nudging = 'one-sided'")
    if not (math.isfinite(p.t_eval) and p.t_eval >= 0):
        raise CardError(f"phases.t_eval={p.t_eval!r} must be ≥ 0 (0: the same as phases.t_free)")
    if not (math.isfinite(l.weight_decay) and l.weight_decay >= 0):
        raise CardError(f"learning.weight_decay={l.weight_decay!r} must be ≥ 0")
    if not (math.isfinite(l.homeostasis) and l.homeostasis >= 0):
        raise CardError(f"learning.homeostasis={l.homeostasis!r} must be ≥ 0 (0: off)")
    if l.homeostasis_delay < 0 or (l.homeostasis_delay and not l.homeostasis):
        raise CardError(f"learning.homeostasis_delay={l.homeostasis_delay!r} must be ≥ 0 (0: from the "
                        "start), and needs learning.homeostasis > 0")
    if l.homeostasis_params not in HOMEOSTASIS_PARAMS:
        raise CardError(f"learning.homeostasis_params={l.homeostasis_params!r} must be one of "
                        f"{list(HOMEOSTASIS_PARAMS)}")
    if l.homeostasis_params != "all" and not l.homeostasis:
        raise CardError(f"learning.homeostasis_params={l.homeostasis_params!r} needs learning.homeostasis > 0")
    if l.rule == "continual":
        _positive(l.eta, "learning.eta")
    if l.optimizer not in OPTIMIZERS:
        raise CardError(f"learning.optimizer={l.optimizer!r} must be one of {list(OPTIMIZERS)}")
    if l.schedule not in SCHEDULES:
        raise CardError(f"learning.schedule={l.schedule!r} must be one of {list(SCHEDULES)}")
    if not 0 <= l.final_fraction <= 1:
        raise CardError(f"learning.final_fraction={l.final_fraction!r} must be in [0, 1]")
    if not 0 <= l.momentum < 1:
        raise CardError(f"learning.momentum={l.momentum!r} must be in [0, 1)")
    n_layers = len(m.sizes) - 1
    if len(l.learning_rates) != n_layers:
        raise CardError(f"learning.learning_rates has {len(l.learning_rates)} value(s) but "
                        f"model.sizes={m.sizes} has {n_layers} layers of parameters (one rate each)")
    for i, lr in enumerate(l.learning_rates):
        if not (math.isfinite(lr) and lr >= 0):
            raise CardError(f"learning.learning_rates[{i}]={lr!r} must be ≥ 0 (0 freezes the layer)")
    if not any(l.learning_rates):
        raise CardError(f"learning.learning_rates={l.learning_rates!r}: every layer frozen, nothing would learn")
    if t.epochs < 0:
        raise CardError(f"training.epochs={t.epochs!r} must be ≥ 0")
    for key in ("batch_size", "eval_batch_size", "progress_every"):
        if getattr(t, key) < 1:
            raise CardError(f"training.{key}={getattr(t, key)!r} must be ≥ 1")
    if t.checkpoint_every < 0:
        raise CardError(f"training.checkpoint_every={t.checkpoint_every!r} must be ≥ 0")
    if t.analyse_every < 0:
        raise CardError(f"training.analyse_every={t.analyse_every!r} must be ≥ 0 (0: off)")
    if t.analyse_samples < 1:
        raise CardError(f"training.analyse_samples={t.analyse_samples!r} must be ≥ 1")
    _validate_devices(t)
    init_checkpoint(t.init)
    ds = _ALIASES.get(d.dataset.lower(), d.dataset.lower())
    if ds not in DATASETS:
        raise CardError(f"data.dataset={d.dataset!r} is unknown; choose one of {list(DATASETS)}")
    if d.max_train < 0 or d.max_test < 0:
        raise CardError("data.max_train and data.max_test must be ≥ 0 (0: all examples)")
    if not 0 <= d.validation < 1:
        raise CardError(f"data.validation={d.validation!r} must be a fraction in [0, 1)")
    side = {"digits": 8}.get(ds, 28)
    if not 0 <= d.shift < side // 2:
        raise CardError(f"data.shift={d.shift!r} must be a whole number of pixels in [0, {side // 2}) "
                        f"for the {side}×{side} images of {ds!r} (0: no augmentation)")
    if d.shift_epochs < 0 or (d.shift_epochs and not d.shift):
        raise CardError(f"data.shift_epochs={d.shift_epochs!r} must be ≥ 0 (0: every epoch), and needs "
                        "data.shift > 0")


def _validate_devices(t: TrainingSection) -> None:
    """`training.devices`: "all" or a whole number ≥ 1 that divides the batch size (the count
    behind "all" is checked when the step is built, where the devices are known)."""
    if t.devices == "all":
        return
    if not t.devices.isdigit() or int(t.devices) < 1:
        raise CardError(f"training.devices={t.devices!r} must be 'all' or a whole number ≥ 1")
    if t.batch_size % int(t.devices):
        raise CardError(f"training.batch_size={t.batch_size} is not a multiple of training.devices="
                        f"{t.devices}; every device takes an equal share of the minibatch")


MODEL_KINDS = ("layered", "conv")
CONV_KEYS = ("channels", "kernels", "image")


def _validate_model_kind(m: ModelSection) -> None:
    """The conv keys: only with kind = "conv", consistent with each other and with `sizes`."""
    if m.kind not in MODEL_KINDS:
        raise CardError(f"model.kind={m.kind!r} must be one of {list(MODEL_KINDS)}")
    if m.kind == "layered":
        for key in CONV_KEYS:
            if getattr(m, key):
                raise CardError(f"model.{key} describes convolutional layers; set model.kind = 'conv' "
                                f"or leave model.{key} empty")
        if m.pooling != "average":
            raise CardError(f"model.pooling={m.pooling!r} describes convolutional layers; set "
                            "model.kind = 'conv' or leave it at 'average'")
        return
    from .._dynamics.convshape import conv_sizes  # plain Python, no JAX

    if m.layout not in ("NHWC", "NCHW"):
        raise CardError(f"model.layout={m.layout!r} must be 'NHWC' or 'NCHW'")
    if m.pooling not in ("average", "max"):
        raise CardError(f"model.pooling={m.pooling!r} must be 'average' or 'max'")
    if not m.pool_temperature > 0:
        raise CardError(f"model.pool_temperature={m.pool_temperature!r} must be > 0 (hard max pooling "
                        "makes the feedback jump and the dynamics lose their fixed point)")
    if m.image and (len(m.image) != 3 or min(m.image) < 1 or math.prod(m.image) != m.sizes[0]):
        raise CardError(f"model.image={m.image!r} must be [H, W, C] with H·W·C = model.sizes[0] = {m.sizes[0]}")
    h, w, c = m.image_shape()
    if h * w * c != m.sizes[0]:
        raise CardError(f"model.sizes[0]={m.sizes[0]} is not a square single-channel image: give "
                        "model.image = [H, W, C]")
    try:
        expected = conv_sizes((h, w, c), m.channels, m.kernels, m.sizes[-1], m.pool, m.padding)
    except ValueError as e:
        raise CardError(f"model.channels / kernels / pool / padding: {e}") from None
    if list(m.sizes) != expected:
        raise CardError(f"model.sizes={m.sizes} does not match the convolutional layers: a {h}×{w}×{c} "
                        f"input with channels {m.channels}, kernels {m.kernels}, pool {m.pool} and "
                        f"padding {m.padding} gives the flat widths {expected}")


def builtin_cards() -> list[str]:
    """Names of the cards shipped inside the package."""
    folder = importlib.resources.files("ctgep") / "cards"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_card(source=None, overrides=()) -> Card:
    """Read a card from a path, or a built-in card by name (default: "digits").

    `overrides`: `section.key=value` strings applied on top (see :meth:`Card.with_overrides`).
    """
    source = "digits" if source is None else source
    path = pathlib.Path(source)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CardError(f"card {str(path)!r} cannot be read: {e}") from None
        origin = str(path)
    elif str(source) in builtin_cards():
        text = (importlib.resources.files("ctgep") / "cards" / f"{source}.toml").read_text("utf-8")
        origin = f"built-in card {source!r}"
    else:
        raise CardError(f"card {str(source)!r} not found: no such file and no built-in card of "
                        f"that name (built-in: {builtin_cards()})")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CardError(f"card {origin} is not valid TOML: {e}") from None
    try:
        card = card_from_dict(data)
    except CardError as e:
        raise CardError(f"card {origin}: {e}") from None
    if overrides:
        card = card.with_overrides(overrides)
    return card
