"""Training loop, run directories, checkpoints and resume.

One jitted train step runs the free phase, the nudged phase(s) and the EP update
(:func:`ctgep.ep_step`), feeds the negated update to optax (per-layer learning rates through
``optax.multi_transform``) and accumulates the epoch's statistics on the device, so the host
only synchronises when the progress bar refreshes, at checkpoints and at the end of an epoch.

A run directory holds::

    card.toml          the resolved card (overrides and data folder applied)
    metrics.csv        one row per epoch (errors, cost, relaxation stats, alignment)
    summary.json       final (or latest) figures and the best epoch
    training.png       errors and weight alignment against epochs
    checkpoints/       latest.json / best.json sidecars naming their parameter files

Checkpoints are crash-safe: the parameters and optimiser state go to a fresh
``<tag>-<step>.eqx`` file (``eqx.tree_serialise_leaves``; written to a temporary file then
``os.replace``d), then the JSON sidecar that names it (and holds its sha256, the epoch, the
batch within the epoch, the optimiser step, the PRNG key and the partial epoch statistics)
replaces the previous one in one ``os.replace``. A process killed at any instant leaves the
previous consistent checkpoint, and ``resume`` continues bit for bit: the data order of an
epoch and the key of a step are pure functions of the seed, the epoch and the step.

With ``phases.warm_start`` the trainer also keeps, in host memory, each training example's last
free state ("persistent particles", an ``(n_train, Σ sizes[1:])`` array): the trainer hands each
minibatch's rows to the train step as the free phase's start and writes the final free states
back (one step late, outside the jitted step). The ``latest``
checkpoint saves them to ``particles-<step>.npy`` (named and hashed in its sidecar, like the
parameters) so that resume stays exact; ``best`` does not carry them. Evaluation always
starts from the network's initial state.
"""

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import math
import os
import pathlib
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from .._observation.alignment import alignment
from .._experiment.augment import shift_images
from .._experiment.cards import Card, CardError, load_card
from .._experiment.data import Dataset, load_dataset
from .._dynamics.networks import LayeredNetwork
from .._simulation.phases import free_phase
from .._learning.rules import as_gradient, ep_step
from .._simulation.solvers import Euler, get_solver


class TrainingError(RuntimeError):
    """Training cannot start or continue (diverged, bad run directory, mismatched data)."""


CHECKPOINT_FORMAT = 1
_ACCUM = ("batches", "examples", "errors", "cost", "free_steps", "free_time", "nudged_steps",
          "nudged_time", "free_nonconverged", "nudged_nonconverged", "nonfinite")
# Per output unit: how many training examples of the epoch left it off its lower clip bound in
# the free phase. A unit at 0 for every example is "silent": its class is never predicted, and
# while its drive stays below −β neither nudge lifts it, so only its inputs' learning can revive
# it. Early in training this can pass; a unit silent epoch after epoch is lost.
_ACTIVE = "active_outputs"


# ----------------------------------------------------------------------------------------------
# Building blocks from a card


def build_network(card: Card, key) -> LayeredNetwork:
    """The card's network, initialised from `key`."""
    fb = card.model.feedback
    feedback = fb if fb in ("random", "transpose") else float(fb)
    return LayeredNetwork(card.model.sizes, card.model.activation, key=key, feedback=feedback)


def _keys(card: Card):
    """The run's initialisation, data-order and EP-step keys, all derived from its seed."""
    return jr.split(jr.key(card.training.seed), 3)


def initial_network(card: Card) -> LayeredNetwork:
    """The network a run of `card` starts from (same seed, same draw as `ctgep train`)."""
    return build_network(card, _keys(card)[0])


def build_solver(card: Card):
    p = card.phases
    if p.solver == "euler":
        return Euler(dt=float(p.dt), precondition=bool(p.precondition), alternate=bool(p.alternate))
    return get_solver(p.solver)


def _param_labels(params):
    n = len(params.Wf)
    return eqx.tree_at(
        lambda m: (m.Wf, m.Wb, m.b), params,
        (tuple(f"layer{i + 1}" for i in range(n)),
         tuple(f"layer{i + 1}" for i in range(len(params.Wb))),
         tuple(f"layer{i + 1}" for i in range(n))),
    )


def _weights_only(params):
    """Mask of the matrices (Wf, Wb) among the parameters: weight decay spares the biases."""
    return jax.tree_util.tree_map(lambda a: a.ndim == 2, params)


def build_optimizer(card: Card, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """Per-layer learning rates `α_l` (Wf_l, Wb_l and b_l of layer l share `α_l`).

    With `learning.schedule = "cosine"` each rate decays over `epochs × steps_per_epoch` steps
    to `final_fraction` of its value; `learning.weight_decay` adds `wd · W` to the descent
    direction of every weight matrix before the optimiser.
    """
    l = card.learning
    total = max(card.training.epochs * steps_per_epoch, 1)

    def one(lr):
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


def _params(net):
    return eqx.filter(net, eqx.is_inexact_array)


# ----------------------------------------------------------------------------------------------
# Jitted steps


_STEPS_CACHE: dict = {}


def _make_steps(card: Card, optimizer, cache_key=None):
    """The jitted train step and evaluation step for `card` (python floats stay static).

    With a `cache_key` the pair is memoised, so that runs of the same configuration (other
    seeds, a resume in the same process) reuse the compiled code.
    """
    if cache_key is not None:
        if cache_key not in _STEPS_CACHE:
            if len(_STEPS_CACHE) > 8:
                _STEPS_CACHE.clear()
            _STEPS_CACHE[cache_key] = _make_steps(card, optimizer)
        return _STEPS_CACHE[cache_key]
    solver = build_solver(card)
    p, l = card.phases, card.learning
    common = dict(solver=solver, tol=float(p.tol), stop_at_steady_state=bool(p.stop_at_steady_state))
    n_out = card.model.sizes[-1]
    bs = card.training.batch_size
    shift = int(card.data.shift)

    def train_step(net, opt_state, accum, x_all, y_all, perm, batch, step, key, beta, s_rows=None,
                   augment=True):
        idx = jax.lax.dynamic_slice_in_dim(perm, batch * bs, bs)
        x, labels = x_all[idx], y_all[idx]
        step_key = jr.fold_in(key, step)
        if shift:  # `augment` (traced) turns the shift off in the last epochs without a recompile
            x = jnp.where(augment, shift_images(jr.fold_in(step_key, 1), x, shift), x)
        y = jax.nn.one_hot(labels, n_out, dtype=x.dtype)
        s_init = None if s_rows is None else _unflatten_state(s_rows, card.model.sizes)
        r = ep_step(net, x, y, beta=beta, rule=l.rule, nudging=l.nudging, key=step_key,
                    t_free=float(p.t_free), t_nudged=float(p.t_nudged), s_init=s_init,
                    eta=float(l.eta) if l.rule == "continual" else None, policy="flag", **common)
        free_rows = None if s_rows is None else jnp.concatenate(r.free.state, axis=-1)
        grads = as_gradient(r.update)
        updates, opt_state = optimizer.update(grads, opt_state, _params(net))
        new = eqx.apply_updates(net, updates)
        # One sum per leaf is cheaper than an elementwise all(isfinite); NaN and ±inf propagate.
        finite = jnp.isfinite(sum(jnp.sum(a) for a in jax.tree_util.tree_leaves(_params(new))))
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
            _ACTIVE: _active_outputs(net, r.free.state).astype(f),
        }
        accum = {k: accum[k] + stats[k] for k in accum}
        return new, opt_state, accum, free_rows

    # No argument is donated. Donating the parameters and optimiser state (updating them in
    # place) made the step 1.5x slower on both cores of the 2-core Xeon, 0.88 against 0.58 ms
    # per example (studies/benchmarks/training_speed.py), with seven times as many context
    # switches: apparently the host thread then waits for the previous step's buffers and the
    # relaxation's products lose a core. Hence also the host-side particle store (`run`).
    train_step = jax.jit(train_step)

    @eqx.filter_jit
    def eval_step(net, x, labels, mask):
        r = free_phase(net, x, t_max=float(p.prediction_horizon), policy="flag", **common)
        pred = jnp.argmax(net.output(r.state), axis=-1)
        return jnp.sum((pred != labels) & mask)

    return train_step, eval_step


def _unflatten_state(rows, sizes):
    """Rows `(batch, Σ sizes[1:])` of the particle store as the state tuple `(batch, n_l)`."""
    return tuple(jnp.split(rows, np.cumsum(sizes[1:-1]).tolist(), axis=-1))


@eqx.filter_jit
def _permutation(key, epoch, n: int):
    return jr.permutation(jr.fold_in(key, epoch), n).astype(jnp.int32)


def _active_outputs(net, state):
    """Per output unit, the number of samples whose free state is above the lower clip bound."""
    out = net.output(state)
    bounds = getattr(net, "state_bounds", None)
    if bounds is None:  # an unbounded activation: no unit is ever stuck on a bound
        return jnp.full(out.shape[-1], out.shape[0])
    return jnp.sum(out > bounds[0], axis=0)


def _silent_outputs(accum) -> np.ndarray:
    """Indices of the output units that no training example of the epoch lifted off the bound."""
    return np.flatnonzero(np.asarray(accum[_ACTIVE]) == 0)


def _zero_accum(n_out: int):
    return {**{k: np.zeros((), np.float32) for k in _ACCUM}, _ACTIVE: np.zeros((n_out,), np.float32)}


def error_rate(net, x, labels, card: Card, eval_step=None) -> float:
    """Fraction of `x` misclassified at the free fixed point, in fixed-size padded batches."""
    if eval_step is None:
        eval_step = _make_steps(card, build_optimizer(card))[1]
    n = len(labels)
    if n == 0:
        return float("nan")
    bs = min(card.training.eval_batch_size, n)
    n_batches = -(-n // bs)
    pad = n_batches * bs - n
    x = np.concatenate([np.asarray(x, np.float32), np.zeros((pad, x.shape[1]), np.float32)])
    labels = np.concatenate([np.asarray(labels, np.int32), np.zeros((pad,), np.int32)])
    mask = np.arange(n_batches * bs) < n
    errors = [eval_step(net, x[i * bs:(i + 1) * bs], labels[i * bs:(i + 1) * bs],
                        mask[i * bs:(i + 1) * bs]) for i in range(n_batches)]
    return float(sum(int(e) for e in errors)) / n


# ----------------------------------------------------------------------------------------------
# Files


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _serialise(tree) -> bytes:
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, tree)
    return buf.getvalue()


def _save_checkpoint(folder: pathlib.Path, tag: str, net, opt_state, meta: dict, particles=None) -> None:
    blob = _serialise((net, opt_state))
    name = f"{tag}-{meta['step']:09d}.eqx"
    _atomic_write(folder / name, blob)
    meta = dict(meta, format=CHECKPOINT_FORMAT, params_file=name,
                sha256=hashlib.sha256(blob).hexdigest())
    if particles is not None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(particles), allow_pickle=False)
        blob = buf.getvalue()
        name = f"particles-{meta['step']:09d}.npy"
        _atomic_write(folder / name, blob)
        meta.update(particles_file=name, particles_sha256=hashlib.sha256(blob).hexdigest())
    _atomic_write(folder / f"{tag}.json", json.dumps(meta, indent=1).encode())
    _prune(folder)


def _prune(folder: pathlib.Path) -> None:
    """Remove parameter and particle files no sidecar names, and temporary files of killed writers."""
    keep = set()
    for tag in ("latest", "best"):
        try:
            meta = json.loads((folder / f"{tag}.json").read_text())
        except (OSError, ValueError):
            continue
        keep.update(meta.get(k) for k in ("params_file", "particles_file"))
    for p in folder.iterdir():
        if (p.suffix in (".eqx", ".npy") and p.name not in keep) or p.name.endswith(".tmp"):
            try:
                p.unlink()
            except OSError:
                pass


def _read_checked(folder: pathlib.Path, side: pathlib.Path, meta: dict, file_key: str, sha_key: str) -> bytes:
    """The bytes of the file a sidecar names under `file_key`, checked against its sha256."""
    try:
        blob = (folder / meta[file_key]).read_bytes()
    except (OSError, KeyError) as e:
        raise TrainingError(f"checkpoint {side} is missing or unreadable ({e.__class__.__name__})") from None
    if hashlib.sha256(blob).hexdigest() != meta.get(sha_key):
        raise TrainingError(f"checkpoint {folder / meta[file_key]} does not match its sidecar's sha256")
    return blob


def _load_checkpoint(folder: pathlib.Path, tag: str, like):
    side = folder / f"{tag}.json"
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"checkpoint {side} is missing or unreadable ({e.__class__.__name__})") from None
    blob = _read_checked(folder, side, meta, "params_file", "sha256")
    try:
        tree = eqx.tree_deserialise_leaves(io.BytesIO(blob), like)
    except Exception as e:  # shape/structure mismatch between the card and the file
        raise TrainingError(f"checkpoint {folder / meta['params_file']} does not fit the run's card ({e})") from None
    return tree, meta


def _load_particles(folder: pathlib.Path, meta: dict, shape, dtype):
    """The persistent free states a `latest` sidecar names, checked against its sha256 and shape."""
    side = folder / "latest.json"
    if "particles_file" not in meta:
        raise TrainingError(f"checkpoint {side} has no particles file, but the card sets phases.warm_start")
    if not (folder / meta["particles_file"]).is_file():
        raise TrainingError(f"the warm-start particles {folder / meta['particles_file']} named by {side} are "
                            "missing (committed runs leave them out); resume needs them")
    blob = _read_checked(folder, side, meta, "particles_file", "particles_sha256")
    a = np.load(io.BytesIO(blob), allow_pickle=False)
    if a.shape != tuple(shape) or a.dtype != dtype:
        raise TrainingError(f"checkpoint {folder / meta['particles_file']} holds {a.dtype}{list(a.shape)} "
                            f"particles, the run's card needs {np.dtype(dtype)}{list(shape)}")
    return a


def _flush(particles, pending):
    """Write a step's pending free states into the host-side particle store; returns None."""
    if pending is not None:
        particles[pending[0]] = np.asarray(pending[1])
    return None


def _write_metrics(path: pathlib.Path, rows: list[dict]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _atomic_write(path, buf.getvalue().encode())


def plot_metrics(rows: list[dict], path) -> None:
    """Training curves: error rates (top), alignment cosines (middle) and traces (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(6, 8), sharex=True)
    for key, label in (("train_error", "train"), ("val_error", "validation"), ("test_error", "test")):
        if rows and key in rows[0]:
            axes[0].plot(epochs, [100 * r[key] for r in rows], marker=".", label=label)
    axes[0].set_ylabel("error (%)")
    axes[0].legend()
    pairs = [k[4:] for k in (rows[0] if rows else {}) if k.startswith("cos_")]
    for pair in pairs:
        lab = "layers " + pair.replace("_", "–")
        axes[1].plot(epochs, [r["cos_" + pair] for r in rows], marker=".", label=lab)
        axes[2].plot(epochs, [r["trace_" + pair] for r in rows], marker=".", label=lab)
    axes[1].set_ylabel("cos(Wb_l, Wf_{l+1}ᵀ)")
    axes[2].set_ylabel("tr(Wf_{l+1} Wb_l)")
    if pairs:
        axes[1].legend()
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    _atomic_write(pathlib.Path(path), buf.getvalue())


# ----------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class Run:
    """A run directory read back: its card, a network from a checkpoint, metrics, summary."""

    path: pathlib.Path
    card: Card
    net: LayeredNetwork
    checkpoint: dict
    metrics: object  # xarray.Dataset indexed by epoch (empty when no epoch finished)
    summary: dict


def _check_data(card: Card, data: Dataset) -> None:
    n_in, n_out = card.model.sizes[0], card.model.sizes[-1]
    if data.n_features != n_in:
        raise TrainingError(f"model.sizes starts with {n_in} inputs but dataset {data.name!r} has "
                            f"{data.n_features} features per example")
    if n_out < data.n_classes:
        raise TrainingError(f"model.sizes ends with {n_out} outputs but dataset {data.name!r} has "
                            f"{data.n_classes} classes")
    if len(data.y_train) < card.training.batch_size:
        raise TrainingError(f"training.batch_size={card.training.batch_size} exceeds the "
                            f"{len(data.y_train)} training examples")


def _load_data(card: Card, data_dir=None) -> Dataset:
    d = card.data
    data = load_dataset(d.dataset, data_dir=data_dir or d.data_dir or None, validation=d.validation,
                        seed=card.training.seed, download=d.download, verify=d.verify)
    cut = lambda a, n: a if (a is None or not n) else a[:n]
    return dataclasses.replace(data, x_train=cut(data.x_train, d.max_train), y_train=cut(data.y_train, d.max_train),
                               x_test=cut(data.x_test, d.max_test), y_test=cut(data.y_test, d.max_test))


def _default_out(card: Card) -> pathlib.Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = pathlib.Path("runs") / f"{card.name}-{stamp}"
    out, i = base, 1
    while out.exists():
        out, i = base.with_name(f"{base.name}-{i}"), i + 1
    return out


def _fmt(x) -> str:
    return "nan" if x != x else f"{100 * x:.2f}%"


class _Trainer:
    def __init__(self, card: Card, data: Dataset, run_dir: pathlib.Path, progress: bool, log):
        self.card, self.data, self.dir = card, data, run_dir
        self.ckpt = run_dir / "checkpoints"
        self.progress, self.log = progress, log
        t = card.training
        self.init_key, self.perm_key, self.step_key = _keys(card)
        self.n_batches = len(data.y_train) // t.batch_size
        self.optimizer = build_optimizer(card, self.n_batches)
        key = json.dumps([dataclasses.asdict(card.model), dataclasses.asdict(card.phases),
                          dataclasses.asdict(card.learning), t.batch_size, card.data.shift, self.n_batches,
                          t.epochs if card.learning.schedule != "constant" else None])
        self.train_step, self.eval_step = _make_steps(card, self.optimizer, key)
        self.x = jnp.asarray(data.x_train, jnp.float32)
        self.y = jnp.asarray(data.y_train, jnp.int32)
        self.last_plot = -math.inf
        self.beta = np.float32(card.learning.beta)

    def fresh(self):
        # One compiled initialisation instead of dozens of eagerly dispatched operations.
        def init(key):
            net = build_network(self.card, key)
            return net, self.optimizer.init(_params(net))

        return eqx.filter_jit(init)(self.init_key)

    def fresh_particles(self, net):
        """The persistent free states of the training examples at the start (None: no warm start)."""
        if not self.card.phases.warm_start:
            return None
        return np.array(jnp.concatenate(net.init_state(self.x), axis=-1))  # a writable copy

    def load_particles(self, meta, net):
        """The persistent free states the `latest` checkpoint saved (None: no warm start)."""
        if not self.card.phases.warm_start:
            return None
        shape = (len(self.data.y_train), sum(self.card.model.sizes[1:]))
        return _load_particles(self.ckpt, meta, shape, net.b[0].dtype)

    def perm(self, epoch):
        return _permutation(self.perm_key, np.int32(epoch), len(self.data.y_train))

    def _meta(self, epoch, batch, step, accum, elapsed, history, best):
        return {"epoch": epoch, "batch": batch, "step": step, "seed": self.card.training.seed,
                "key": np.asarray(jr.key_data(self.step_key)).tolist(),
                "data_order": f"permutation of fold_in(key, epoch={epoch})",
                "accum": {k: np.asarray(v).tolist() for k, v in accum.items()}, "elapsed": elapsed,
                "history": history, "best": best}

    def _guard(self, accum, epoch, batch):
        if float(accum["nonfinite"]) > 0:
            raise TrainingError(
                f"the parameters became NaN/inf at epoch {epoch + 1} (within its first {batch} "
                f"batches); training stopped, the last good checkpoint is in {self.ckpt} — lower "
                "the learning rates or β, or shorten the Euler step")

    def run(self, net, opt_state, meta, particles=None):
        t = self.card.training
        epoch, batch, step = meta["epoch"], meta["batch"], meta["step"]
        history, best = list(meta["history"]), meta["best"]
        accum = {k: np.float32(meta["accum"].get(k, 0.0)) for k in _ACCUM}
        # A checkpoint written before the silent-output count has none: count its units as
        # active rather than report a unit silent for an epoch only partly seen.
        n_out = self.card.model.sizes[-1]
        accum[_ACTIVE] = np.asarray(meta["accum"].get(_ACTIVE, np.ones(n_out)), np.float32)
        elapsed = meta["elapsed"]
        from tqdm.auto import tqdm

        epochs_bar = tqdm(total=t.epochs, initial=epoch, desc="epochs", unit="epoch",
                          disable=not self.progress, dynamic_ncols=True)
        try:
            while epoch < t.epochs:
                perm = self.perm(epoch)
                order = np.asarray(perm) if particles is not None else None
                augment = np.bool_(not self.card.data.shift_epochs or epoch < self.card.data.shift_epochs)
                bar = tqdm(total=self.n_batches, initial=batch, desc=f"epoch {epoch + 1}",
                           unit="batch", leave=False, disable=not self.progress, dynamic_ncols=True)
                t0, done0 = time.perf_counter() - elapsed, batch
                pending = None
                while batch < self.n_batches:
                    rows = None
                    if particles is not None:
                        idx = order[batch * t.batch_size:(batch + 1) * t.batch_size]
                        rows = particles[idx]
                    net, opt_state, accum, free_rows = self.train_step(
                        net, opt_state, accum, self.x, self.y, perm, np.int32(batch),
                        np.int32(step), self.step_key, self.beta, rows, augment)
                    # The free states go back to the host-side store one step late, so that
                    # the next step is dispatched before this one is waited for. An epoch
                    # visits each example once, so no step reads a row still pending.
                    _flush(particles, pending)
                    pending = None if particles is None else (idx, free_rows)
                    batch, step = batch + 1, step + 1
                    if batch % t.progress_every == 0 or batch == self.n_batches:
                        self._guard(accum, epoch, batch)
                        self._postfix(bar, accum, batch - done0, time.perf_counter() - t0 - elapsed)
                        bar.update(batch - bar.n)
                    if t.checkpoint_every and batch % t.checkpoint_every == 0 and batch < self.n_batches:
                        self._guard(accum, epoch, batch)
                        pending = _flush(particles, pending)
                        _save_checkpoint(self.ckpt, "latest", net, opt_state, self._meta(
                            epoch, batch, step, accum, time.perf_counter() - t0, history, best), particles)
                bar.close()
                self._guard(accum, epoch, batch)
                pending = _flush(particles, pending)
                row = self._epoch_row(net, epoch, accum, time.perf_counter() - t0)
                silent = _silent_outputs(accum)
                history.append(row)
                score = row.get("val_error", row["test_error"])
                is_best = best is None or score < best["score"]
                if is_best:
                    best = {"epoch": epoch + 1, "score": score}
                epoch, batch, accum, elapsed = epoch + 1, 0, _zero_accum(n_out), 0.0
                meta = self._meta(epoch, batch, step, accum, 0.0, history, best)
                if is_best:
                    _save_checkpoint(self.ckpt, "best", net, opt_state, meta)
                _save_checkpoint(self.ckpt, "latest", net, opt_state, meta, particles)
                _write_metrics(self.dir / "metrics.csv", history)
                self._summary(history, best, "running" if epoch < t.epochs else "finished")
                if epoch == t.epochs or time.perf_counter() - self.last_plot > 30:
                    plot_metrics(history, self.dir / "training.png")
                    self.last_plot = time.perf_counter()
                epochs_bar.update(1)
                msg = (f"epoch {row['epoch']}/{t.epochs}: train error {_fmt(row['train_error'])}, "
                       f"test error {_fmt(row['test_error'])}"
                       + (f", validation error {_fmt(row['val_error'])}" if "val_error" in row else "")
                       + f", {row['wall_time']:.1f}s")
                write = tqdm.write if self.progress else self.log
                write(msg)
                if silent.size:
                    write(f"warning: output unit(s) {', '.join(map(str, silent))} sat at the lower clip "
                          f"bound for every training example of epoch {row['epoch']}: their classes were "
                          "never predicted, and while their drive stays below −β no nudge reaches "
                          "them; if this persists, lower the output layer's learning rate")
        finally:
            epochs_bar.close()
        if not history:
            self._summary(history, best, "finished")
        return net, history

    def _postfix(self, bar, accum, batches_done, seconds):
        a = {k: float(accum[k]) for k in _ACCUM}
        n = max(a["examples"], 1.0)
        bar.set_postfix(err=f"{100 * a['errors'] / n:.1f}%",
                        steps=f"{a['free_steps'] / max(a['batches'], 1):.0f}/{a['nudged_steps'] / max(a['batches'], 1):.0f}",
                        nonconv=f"{100 * a['free_nonconverged'] / n:.0f}%",
                        ex_s=f"{batches_done * self.card.training.batch_size / max(seconds, 1e-9):.0f}",
                        refresh=False)

    def _epoch_row(self, net, epoch, accum, wall):
        a = {k: float(accum[k]) for k in _ACCUM}
        n, nb = max(a["examples"], 1.0), max(a["batches"], 1.0)
        row = {"epoch": epoch + 1, "train_error": a["errors"] / n, "train_cost": a["cost"] / n}
        if self.data.x_val is not None:
            row["val_error"] = error_rate(net, self.data.x_val, self.data.y_val, self.card, self.eval_step)
        row["test_error"] = error_rate(net, self.data.x_test, self.data.y_test, self.card, self.eval_step)
        row.update(free_time=a["free_time"] / nb, free_steps=a["free_steps"] / nb,
                   nudged_time=a["nudged_time"] / nb, nudged_steps=a["nudged_steps"] / nb,
                   free_nonconverged=a["free_nonconverged"] / n,
                   nudged_nonconverged=a["nudged_nonconverged"] / n,
                   silent_outputs=len(_silent_outputs(accum)),
                   wall_time=wall, examples_per_s=n / max(wall, 1e-9))
        row.update(alignment(net))
        return row

    def _summary(self, history, best, status):
        s = {"name": self.card.name, "status": status, "epochs_done": len(history),
             "epochs": self.card.training.epochs, "dataset": self.data.name,
             "n_train": int(len(self.data.y_train)), "n_test": int(len(self.data.y_test)),
             "best": best, "final": history[-1] if history else None,
             "total_wall_time": sum(r["wall_time"] for r in history),
             "updated": datetime.datetime.now().isoformat(timespec="seconds")}
        _atomic_write(self.dir / "summary.json", json.dumps(s, indent=1).encode())


def _start(card: Card, out, data_dir, progress, log):
    out = _default_out(card) if out is None else pathlib.Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainingError(f"--out {out} already exists and is not empty; choose another folder "
                            "or continue it with `ctgep resume`")
    data = _load_data(card, data_dir)
    _check_data(card, data)
    if data_dir:
        card = dataclasses.replace(card, data=dataclasses.replace(card.data, data_dir=str(
            pathlib.Path(data_dir).expanduser().resolve())))
    trainer = _Trainer(card, data, out, progress, log)
    net, opt_state = trainer.fresh()
    particles = trainer.fresh_particles(net)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "card.toml", card.to_toml().encode())
    meta = trainer._meta(0, 0, 0, _zero_accum(card.model.sizes[-1]), 0.0, [], None)
    _save_checkpoint(trainer.ckpt, "latest", net, opt_state, meta, particles)
    log(f"run directory: {out}  ({data.name}: {len(data.y_train)} train, {len(data.y_test)} test"
        + (f", {len(data.y_val)} validation" if data.y_val is not None else "") + " examples)")
    return trainer, net, opt_state, meta, particles


def train(card=None, out=None, *, overrides=(), epochs=None, data_dir=None, progress=True,
          log=print) -> Run:
    """Train the card (a :class:`Card`, a path, or a built-in name; default "digits").

    Writes a run directory `out` (default ``runs/<name>-<timestamp>``, which must not exist or
    be empty) and returns it read back as a :class:`Run` (best checkpoint).
    """
    if not isinstance(card, Card):
        card = load_card(card)
    if overrides:
        card = card.with_overrides(overrides)
    if epochs is not None:
        card = _with_epochs(card, epochs)
    trainer, net, opt_state, meta, particles = _start(card, out, data_dir, progress, log)
    trainer.run(net, opt_state, meta, particles)
    return load_run(trainer.dir)


def _with_epochs(card: Card, epochs) -> Card:
    if int(epochs) < 0:
        raise CardError(f"--epochs={epochs!r} must be ≥ 0")
    return dataclasses.replace(card, training=dataclasses.replace(card.training, epochs=int(epochs)))


def _read_run_card(run_dir) -> Card:
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "card.toml").is_file() or not (run_dir / "checkpoints" / "latest.json").is_file():
        raise TrainingError(f"{run_dir} is not a ctgep run directory (no card.toml and "
                            "checkpoints/latest.json)")
    return load_card(run_dir / "card.toml")


def resume(run_dir, *, epochs=None, data_dir=None, progress=True, log=print) -> Run:
    """Continue a run from its latest checkpoint, exactly where it stopped.

    `epochs` raises (or lowers) the card's total number of epochs; the resolved card is
    updated only once the data has been found and the checkpoint read.
    """
    run_dir = pathlib.Path(run_dir)
    card = _read_run_card(run_dir)
    if epochs is not None:
        card = _with_epochs(card, epochs)
    data = _load_data(card, data_dir)
    _check_data(card, data)
    trainer = _Trainer(card, data, run_dir, progress, log)
    (net, opt_state), meta = _load_checkpoint(trainer.ckpt, "latest", eqx.filter_eval_shape(trainer.fresh))
    particles = trainer.load_particles(meta, net)
    _prune(trainer.ckpt)
    if epochs is not None:
        _atomic_write(run_dir / "card.toml", card.to_toml().encode())
    log(f"resuming {run_dir} at epoch {meta['epoch'] + 1}, batch {meta['batch']} "
        f"(optimiser step {meta['step']})")
    trainer.run(net, opt_state, meta, particles)
    return load_run(run_dir)


def load_run(run_dir, which: str = "best") -> Run:
    """Read a run directory: card, the network of checkpoint `which` ("best"/"latest"), metrics."""
    import xarray as xr

    run_dir = pathlib.Path(run_dir)
    if which not in ("best", "latest"):
        raise ValueError(f"which={which!r} must be 'best' or 'latest'")
    card = _read_run_card(run_dir)
    folder = run_dir / "checkpoints"
    tag = which if (folder / f"{which}.json").is_file() else "latest"

    def fresh():
        net = build_network(card, jr.key(0))
        return net, build_optimizer(card).init(_params(net))

    like = eqx.filter_eval_shape(fresh)
    (net, _), meta = _load_checkpoint(folder, tag, like)
    try:
        rows = json.loads((folder / "latest.json").read_text()).get("history") or []
    except (OSError, ValueError):
        rows = meta.get("history") or []
    if rows:
        metrics = xr.Dataset({k: ("epoch", np.array([r[k] for r in rows])) for k in rows[0] if k != "epoch"},
                             coords={"epoch": [r["epoch"] for r in rows]})
    else:
        metrics = xr.Dataset(coords={"epoch": np.zeros((0,), int)})
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    return Run(run_dir, card, net, dict(meta, tag=tag), metrics, summary)


def evaluate(run_dir, *, which: str = "best", data_dir=None, split: str = "test", t_free=None) -> dict:
    """Error rate of a run's checkpoint on the `split` ("test", "val" or "train") data.

    `t_free` replaces the card's prediction horizon (`phases.t_eval`, else `t_free`), e.g. to
    check that a longer relaxation does not change the prediction.
    """
    run = load_run(run_dir, which)
    card = run.card
    if t_free is not None:
        if not (isinstance(t_free, (int, float)) and math.isfinite(t_free) and t_free > 0):
            raise TrainingError(f"t_free={t_free!r} must be a positive number")
        card = dataclasses.replace(card, phases=dataclasses.replace(card.phases, t_eval=float(t_free)))
    data = _load_data(run.card, data_dir)
    _check_data(run.card, data)
    if split == "val" and data.x_val is None:
        raise TrainingError("the run's card has no validation split (data.validation = 0)")
    if split not in ("test", "val", "train"):
        raise ValueError(f"split={split!r} must be 'test', 'val' or 'train'")
    x, y = {"test": (data.x_test, data.y_test), "val": (data.x_val, data.y_val),
            "train": (data.x_train, data.y_train)}[split]
    err = error_rate(run.net, x, y, card)
    return {"run": str(run_dir), "checkpoint": run.checkpoint["tag"], "epoch": run.checkpoint["epoch"],
            "split": split, "n": int(len(y)), "t_free": card.phases.prediction_horizon, "error": err,
            "accuracy": 1.0 - err}
