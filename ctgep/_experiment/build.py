"""Building blocks from a model card: the network, solver, optimiser and the compiled steps.

:func:`build_training_step` compiles a card's train step and evaluation step once into a
:class:`TrainingStep` that the caller holds and reuses (other seeds of the same configuration,
a resume in the same process, evaluations): no module-level cache. The train step runs the free
phase, the nudged phase(s) and the EP update (:func:`ctgep.ep_step`), feeds the negated update
to optax (per-layer learning rates through ``optax.multi_transform``) and accumulates the
epoch's statistics on the device, so that the host only synchronises when it reads them.
"""

import dataclasses
import json
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from .._dynamics.conv import ConvNetwork
from .._dynamics.networks import LayeredNetwork
from .._learning.rules import as_gradient, ep_step
from .._simulation.phases import free_phase
from .._simulation.results import RESULTS
from .._simulation.solvers import Euler, get_solver
from .augment import shift_images
from . import parallel
from .cards import EULER_OPTIONS, Card

__all__ = ["TrainingStep", "build_network", "build_optimizer", "build_solver", "build_training_step",
           "error_rate", "initial_network", "predict", "run_keys"]

# Why a phase did not settle: one count per phase and per RESULTS code other than `converged`
# (`free_horizon_reached`, `nudged_max_steps_reached` …), so that the metrics name each cause.
CAUSES = tuple(r for r in RESULTS if r != RESULTS.converged)
CAUSE_STATS = tuple(f"{phase}_{r.name}" for phase in ("free", "nudged") for r in CAUSES)
# The statistics one epoch accumulates on the device (sums over its minibatches).
STATS = ("batches", "examples", "errors", "cost", "free_steps", "free_time", "nudged_steps",
         "nudged_time", "free_nonconverged", "nudged_nonconverged", *CAUSE_STATS, "nonfinite")
# Per output unit: how many training examples of the epoch left it off its lower clip bound in
# the free phase. A unit at 0 for every example is "silent": its class is never predicted, and
# while its drive stays below −β neither nudge lifts it, so only its inputs' learning can revive
# it. Early in training this can pass; a unit silent epoch after epoch is lost.
ACTIVE = "active_outputs"


# ----------------------------------------------------------------------------------------------
# Network, solver, optimiser


def build_network(card: Card, key) -> LayeredNetwork | ConvNetwork:
    """The card's network, initialised from `key`: a :class:`LayeredNetwork`, or a
    :class:`ConvNetwork` when `model.kind = "conv"`."""
    m = card.model
    feedback = m.feedback if m.feedback in ("random", "transpose") else float(m.feedback)
    if m.kind == "conv":
        return ConvNetwork(m.image_shape(), m.channels, m.kernels, m.sizes[-1], m.activation, key=key,
                           pool=m.pool, pooling=m.pooling, pool_temperature=m.pool_temperature,
                           padding=m.padding, feedback=feedback, layout=m.layout)
    return LayeredNetwork(m.sizes, m.activation, key=key, feedback=feedback)


def run_keys(card: Card):
    """The run's initialisation, data-order and EP-step keys, all derived from its seed."""
    return jr.split(jr.key(card.training.seed), 3)


def initial_network(card: Card) -> LayeredNetwork | ConvNetwork:
    """The network a run of `card` starts from (same seed, same draw as `ctgep train`)."""
    return build_network(card, run_keys(card)[0])


def build_solver(card: Card):
    """The phase solver the card names (Euler with its step and options, or an adaptive one)."""
    p = card.phases
    if p.solver == "euler":
        return card_euler(card)
    return get_solver(p.solver)


def card_euler(card: Card, dt: float | None = None, **options) -> Euler:
    """The card's Euler iteration (its step `dt` unless given, and its `phases` options), with
    any option overridden by `options` (e.g. `backtrack=True`)."""
    p = card.phases
    kw = {key: bool(getattr(p, key)) for key in EULER_OPTIONS} | {k: bool(v) for k, v in options.items()}
    return Euler(dt=float(p.dt if dt is None else dt), **kw)


def _param_labels(params):
    n = len(params.Wf)
    return eqx.tree_at(
        lambda m: (m.Wf, m.Wb, m.b), params,
        (tuple(f"layer{i + 1}" for i in range(n)),
         tuple(f"layer{i + 1}" for i in range(len(params.Wb))),
         tuple(f"layer{i + 1}" for i in range(n))),
    )


def _weights_only(params):
    """Mask of the weights (Wf, Wb: matrices and conv kernels) among the parameters: weight decay
    spares the biases."""
    return jax.tree_util.tree_map(lambda a: a.ndim >= 2, params)


def build_optimizer(card: Card, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """Per-layer learning rates `α_l` (Wf_l, Wb_l and b_l of layer l share `α_l`).

    With `learning.schedule = "cosine"` each rate decays over `epochs × steps_per_epoch` steps
    to `final_fraction` of its value; `learning.weight_decay` adds `wd · W` to the descent
    direction of every weight matrix before the optimiser. A rate of 0 freezes its layer.
    """
    l = card.learning
    total = max(card.training.epochs * steps_per_epoch, 1)

    def one(lr):
        if lr == 0:  # a frozen layer: no update, no optimiser state
            return optax.set_to_zero()
        if l.schedule == "cosine":
            lr = optax.cosine_decay_schedule(lr, total, alpha=l.final_fraction)
        if l.optimizer == "sgd":
            opt = optax.sgd(lr)
        elif l.optimizer == "momentum":
            opt = optax.sgd(lr, momentum=l.momentum)
        else:
            opt = optax.adam(lr)
        if l.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(float(l.weight_decay), mask=_weights_only), opt)
        return opt

    transforms = {f"layer{i + 1}": one(float(lr)) for i, lr in enumerate(l.learning_rates)}
    return optax.multi_transform(transforms, _param_labels)


def trainable(net):
    """The trainable parameters of `net` (its inexact arrays), as the optimiser sees them."""
    return eqx.filter(net, eqx.is_inexact_array)


# ----------------------------------------------------------------------------------------------
# The compiled steps


def _step_config(card: Card, steps_per_epoch: int) -> str:
    """Everything the compiled steps depend on: equal strings, interchangeable steps."""
    t = card.training
    return json.dumps([dataclasses.asdict(card.model), dataclasses.asdict(card.phases),
                       dataclasses.asdict(card.learning), t.batch_size, t.devices, card.data.shift, steps_per_epoch,
                       t.epochs if card.learning.schedule != "constant" else None])


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingStep:
    """A card's compiled train and evaluation steps and its optimiser; build it once, reuse it.

    `train(net, opt_state, stats, x_all, y_all, perm, batch, step, key, beta, s_rows=None,
    augment=True, homeostatic=True) -> (net, opt_state, stats, free_rows)` trains on minibatch
    `batch` of the permutation `perm` of `(x_all, y_all)` (the step's key is
    `fold_in(key, step)`), adding its figures to `stats` (see :meth:`zero_stats`). `s_rows` are
    the warm-start states of the minibatch (`free_rows` their update, else None); `augment`
    switches `data.shift` off and `homeostatic` the homeostasis of a card with
    `learning.homeostasis_delay`, without a recompile. `evaluate(net, x)` predicts the classes
    of one batch (see :func:`predict`).
    With `mesh` (`training.devices` > 1) `train` splits the minibatch over its devices and takes
    `x_all`, `y_all` as host (NumPy) arrays; see :mod:`ctgep._experiment.parallel`.
    """

    card: Card
    steps_per_epoch: int
    optimizer: optax.GradientTransformation
    train: Callable
    evaluate: Callable
    config: str
    # The devices the minibatch is split over (training.devices); None: one device, no sharding.
    mesh: jax.sharding.Mesh | None = None

    def fits(self, card: Card, steps_per_epoch: int) -> bool:
        """Whether this step computes what `card`'s would (same model, phases, learning ...)."""
        return self.config == _step_config(card, steps_per_epoch)

    def init_optimizer(self, net):
        """The optimiser state of `net`'s trainable parameters."""
        return self.optimizer.init(trainable(net))

    def zero_stats(self) -> dict:
        """The statistics of an epoch before its first step (host arrays)."""
        return zero_stats(self.card.model.sizes[-1])

    def error_rate(self, net, x, labels) -> float:
        """Fraction of `x` misclassified at the free fixed point (see :func:`error_rate`)."""
        return error_rate(net, x, labels, self.card, self)


def zero_stats(n_out: int) -> dict:
    return {**{k: np.zeros((), np.float32) for k in STATS}, ACTIVE: np.zeros((n_out,), np.float32)}


def build_training_step(card: Card, steps_per_epoch: int = 1, *, solver=None) -> TrainingStep:
    """Compile `card`'s train step (optimiser scheduled over `steps_per_epoch`) and eval step.

    Python floats of the card stay static. The steps compile at their first call; keep the
    returned object to reuse the compiled code (e.g. pass it to :func:`ctgep.train` as `step`).
    `solver`: any :class:`ctgep.AbstractPhaseSolver` to relax with instead of the card's
    `phases.solver` (a solver of your own trains unchanged; the run's card still names the
    card's solver, so say which one you used).
    """
    optimizer = build_optimizer(card, steps_per_epoch)
    solver = build_solver(card) if solver is None else solver
    p, l = card.phases, card.learning
    common = dict(solver=solver, tol=float(p.tol), stop_at_steady_state=bool(p.stop_at_steady_state))
    n_out = card.model.sizes[-1]
    bs = card.training.batch_size
    shift = int(card.data.shift)

    def homeostasis(homeostatic, dtype):
        # A static λ, unless `learning.homeostasis_delay` switches it on later: then a traced one
        # (ep_step skips the penalty's gradient while it is 0), so the epochs share one compile.
        if not l.homeostasis_delay:
            return float(l.homeostasis)
        return jnp.where(homeostatic, l.homeostasis, 0.0).astype(dtype)

    def train_on(net, opt_state, accum, x, labels, step_key, beta, s_rows, augment, homeostatic):
        # One minibatch `x` (the global one when it is sharded over devices).
        if shift:  # `augment` (traced) turns the shift off in the last epochs without a recompile
            x = jnp.where(augment, shift_images(jr.fold_in(step_key, 1), x, shift), x)
        y = jax.nn.one_hot(labels, n_out, dtype=x.dtype)
        s_init = None if s_rows is None else _unflatten_state(s_rows, card.model.sizes)
        r = ep_step(net, x, y, beta=beta, rule=l.rule, nudging=l.nudging, key=step_key,
                    t_free=float(p.t_free), t_nudged=float(p.t_nudged), s_init=s_init,
                    eta=float(l.eta) if l.rule == "continual" else None, policy="flag",
                    homeostasis=homeostasis(homeostatic, x.dtype),
                    homeostasis_params=l.homeostasis_params, **common)
        free_rows = None if s_rows is None else jnp.concatenate(r.free.state, axis=-1)
        grads = as_gradient(r.update)
        updates, opt_state = optimizer.update(grads, opt_state, trainable(net))
        new = eqx.apply_updates(net, updates)
        # One sum per leaf is cheaper than an elementwise all(isfinite); NaN and ±inf propagate.
        finite = jnp.isfinite(sum(jnp.sum(a) for a in jax.tree_util.tree_leaves(trainable(new))))
        pred = jnp.argmax(net.output(r.free.state), axis=-1)
        f = jnp.float32
        stats = {
            "batches": f(1), "examples": f(bs),
            "errors": jnp.sum(pred != labels).astype(f),
            "cost": jnp.sum(net.cost(r.free.state, y)).astype(f),
            "free_steps": r.free.steps[0].astype(f), "free_time": r.free.t_stop[0].astype(f),
            "nudged_steps": sum(n.steps[0] for n in r.nudged).astype(f) / len(r.nudged),
            "nudged_time": sum(n.t_stop[0] for n in r.nudged).astype(f) / len(r.nudged),
            "free_nonconverged": jnp.sum(~r.free.converged).astype(f),
            "nudged_nonconverged": sum(jnp.sum(~n.converged) for n in r.nudged).astype(f) / len(r.nudged),
            "nonfinite": (~finite).astype(f),
            ACTIVE: _active_outputs(net, r.free.state).astype(f),
        }
        for cause in CAUSES:  # the nudged counts are averaged over the nudged phases, as above
            stats[f"free_{cause.name}"] = jnp.sum(r.free.code == int(cause)).astype(f)
            stats[f"nudged_{cause.name}"] = sum(jnp.sum(n.code == int(cause)) for n in r.nudged).astype(f) / len(r.nudged)
        accum = {k: accum[k] + stats[k] for k in accum}
        return new, opt_state, accum, free_rows

    def train_step(net, opt_state, accum, x_all, y_all, perm, batch, step, key, beta, s_rows=None,
                   augment=True, homeostatic=True):
        idx = jax.lax.dynamic_slice_in_dim(perm, batch * bs, bs)
        return train_on(net, opt_state, accum, x_all[idx], y_all[idx], jr.fold_in(key, step), beta,
                        s_rows, augment, homeostatic)

    # No argument is donated. Donating the parameters and optimiser state (updating them in
    # place) made the step 1.5x slower on both cores of the 2-core Xeon, 0.88 against 0.58 ms
    # per example (studies/benchmarks/training_speed.py), with seven times as many context
    # switches: apparently the host thread then waits for the previous step's buffers and the
    # relaxation's products lose a core. Hence also the host-side particle store (the loop's).
    mesh = parallel.data_mesh(card.training.devices, bs)
    train_step = jax.jit(train_step) if mesh is None else _sharded_train_step(train_on, mesh, bs)

    @eqx.filter_jit
    def eval_step(net, x):
        r = free_phase(net, x, t_max=float(p.prediction_horizon), policy="flag", **common)
        return jnp.argmax(net.output(r.state), axis=-1)

    return TrainingStep(card, int(steps_per_epoch), optimizer, train_step, eval_step,
                        _step_config(card, steps_per_epoch), mesh)


def _sharded_train_step(train_on, mesh, bs: int) -> Callable:
    """The train step with the minibatch split over `mesh` (see :mod:`.parallel`), called like
    the single-device one but with host (NumPy) training data: each process gathers only its
    devices' rows of the minibatch. Parameters, optimiser state and statistics come back
    replicated; the minibatch's new free states too, so that every process keeps the whole
    particle store (any example may fall to any process in the next epoch's order)."""
    rep = NamedSharding(mesh, PartitionSpec())
    rows_on = NamedSharding(mesh, PartitionSpec(parallel.AXIS))

    def sharded(net, opt_state, accum, x, labels, key_data, step, beta, s_rows, augment, homeostatic):
        x = jax.lax.with_sharding_constraint(x, rows_on)
        return train_on(net, opt_state, accum, x, labels, jr.fold_in(jr.wrap_key_data(key_data), step),
                        beta, s_rows, augment, homeostatic)

    sharded = jax.jit(sharded, out_shardings=rep)
    host = {}  # the last permutation, key, β and flags, put on the devices once

    def train_step(net, opt_state, accum, x_all, y_all, perm, batch, step, key, beta, s_rows=None,
                   augment=True, homeostatic=True):
        if host.get("perm") is not perm:
            host.update(perm=perm, order=np.asarray(perm))
        if host.get("key") is not key:
            host.update(key=key, key_data=parallel.replicate(np.asarray(jr.key_data(key)), mesh))
        flags = (float(beta), bool(augment), bool(homeostatic))
        if host.get("flags") != flags:
            host.update(flags=flags, flag_arrays=parallel.replicate(
                (np.float32(beta), np.bool_(augment), np.bool_(homeostatic)), mesh))
        rows = host["order"][int(batch) * bs:(int(batch) + 1) * bs]
        x, labels = parallel.shard_rows(x_all, rows, mesh), parallel.shard_rows(y_all, rows, mesh)
        s = None if s_rows is None else parallel.shard_rows(np.asarray(s_rows), None, mesh)
        net, opt_state, accum, step = parallel.replicate((net, opt_state, accum, np.int32(step)), mesh)
        beta, augment, homeostatic = host["flag_arrays"]
        return sharded(net, opt_state, accum, x, labels, host["key_data"], step, beta, s, augment,
                       homeostatic)

    return train_step


def _unflatten_state(rows, sizes):
    """Rows `(batch, Σ sizes[1:])` of the particle store as the state tuple `(batch, n_l)`."""
    return tuple(jnp.split(rows, np.cumsum(sizes[1:-1]).tolist(), axis=-1))


@eqx.filter_jit
def permutation(key, epoch, n: int):
    """The data order of `epoch`: a permutation of `n` drawn from `fold_in(key, epoch)`."""
    return jr.permutation(jr.fold_in(key, epoch), n).astype(jnp.int32)


def _active_outputs(net, state):
    """Per output unit, the number of samples whose free state is above the lower clip bound."""
    out = net.output(state)
    bounds = getattr(net, "state_bounds", None)
    if bounds is None:  # an unbounded activation: no unit is ever stuck on a bound
        return jnp.full(out.shape[-1], out.shape[0])
    return jnp.sum(out > bounds[0], axis=0)


def silent_outputs(stats) -> np.ndarray:
    """Indices of the output units that no training example of the epoch lifted off the bound."""
    return np.flatnonzero(np.asarray(stats[ACTIVE]) == 0)


def predict(net, x, card: Card, step: TrainingStep | None = None) -> np.ndarray:
    """The class `net` predicts for each row of `x`: the largest output at the free fixed point
    (relaxed for the card's prediction horizon), in fixed-size padded batches of
    `training.eval_batch_size` so that every batch reuses one compiled step.

    `step`: the card's :class:`TrainingStep`, to reuse its compiled evaluation (else one is built).
    """
    x = np.asarray(x, np.float32)
    n = len(x)
    if n == 0:
        return np.zeros((0,), np.int32)
    eval_step = (step if step is not None else build_training_step(card)).evaluate
    bs = min(card.training.eval_batch_size, n)
    n_batches = -(-n // bs)
    x = np.concatenate([x, np.zeros((n_batches * bs - n, x.shape[1]), np.float32)])
    pred = [np.asarray(eval_step(net, x[i * bs:(i + 1) * bs])) for i in range(n_batches)]
    return np.concatenate(pred)[:n].astype(np.int32)


def error_rate(net, x, labels, card: Card, step: TrainingStep | None = None) -> float:
    """Fraction of `x` misclassified at the free fixed point (see :func:`predict`); NaN for no data."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(predict(net, x, card, step) != labels))
