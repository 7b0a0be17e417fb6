"""The training loop: :func:`train`, :func:`resume` and :func:`evaluate`.

One compiled train step (:class:`~ctgep._experiment.build.TrainingStep`) per minibatch; the
host synchronises only when the progress hooks refresh, at checkpoints and at the end of an
epoch. ``resume`` continues bit for bit: the data order of an epoch and the key of a step are
pure functions of the seed, the epoch and the step, and the checkpoints
(:mod:`~ctgep._experiment.checkpoints`) hold the partial epoch's statistics.

With ``phases.warm_start`` the trainer also keeps, in host memory, each training example's last
free state ("persistent particles", an ``(n_train, Σ sizes[1:])`` array): the trainer hands each
minibatch's rows to the train step as the free phase's start and writes the final free states
back (one step late, outside the jitted step). The ``latest`` checkpoint saves them so that
resume stays exact. Evaluation always starts from the network's initial state.

Over 400 lines because the epoch loop, resume and evaluate share the run's state; building,
checkpoints, the run directory and progress are in their own modules.
"""

import dataclasses
import json
import math
import pathlib
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._errors import CardError, RunDirError, TrainingError, UsageError
from .._observation.alignment import alignment
from .analysis import probe_row
from . import checkpoints, parallel, rundir
from .build import (ACTIVE, CAUSE_STATS, STATS, TrainingStep, build_network, build_training_step, error_rate,
                    permutation, predict, run_keys, silent_outputs, zero_stats)
from .cards import Card, init_checkpoint, load_card
from .data import Dataset, load_dataset
from .progress import ConsoleProgress, Progress
from .rundir import Run, load_run

__all__ = ["Progress", "Trainer", "evaluate", "load_card_data", "resume", "train"]


# ----------------------------------------------------------------------------------------------
# Data


def load_card_data(card: Card, data_dir=None) -> Dataset:
    """The dataset `card` trains on: `data.dataset` from `data_dir` (else the card's
    `data.data_dir`, else the search order of :func:`ctgep.load_dataset`), cut to
    `data.max_train` / `data.max_test` examples."""
    d = card.data
    data = load_dataset(d.dataset, data_dir=data_dir or d.data_dir or None, validation=d.validation,
                        seed=card.training.seed, download=d.download, verify=d.verify)
    return _cut(card, data)


def _cut(card: Card, data: Dataset) -> Dataset:
    d = card.data
    cut = lambda a, n: a if (a is None or not n) else a[:n]
    return dataclasses.replace(data, x_train=cut(data.x_train, d.max_train), y_train=cut(data.y_train, d.max_train),
                               x_test=cut(data.x_test, d.max_test), y_test=cut(data.y_test, d.max_test))


def _data_for(card: Card, data, data_dir) -> Dataset:
    """An injected dataset (cut like a loaded one) or the card's, checked against the card."""
    if data is not None:
        if data_dir:
            raise UsageError("give either data (a Dataset) or data_dir, not both")
        if not isinstance(data, Dataset):
            raise UsageError(f"data={type(data).__name__} must be a ctgep.Dataset")
        data = _cut(card, data)
    else:
        data = load_card_data(card, data_dir)
    _check_data(card, data)
    return data


def _check_data(card: Card, data: Dataset) -> None:
    n_in, n_out = card.model.sizes[0], card.model.sizes[-1]
    if data.n_features != n_in:
        raise CardError(f"model.sizes starts with {n_in} inputs but dataset {data.name!r} has "
                        f"{data.n_features} features per example")
    if n_out < data.n_classes:
        raise CardError(f"model.sizes ends with {n_out} outputs but dataset {data.name!r} has "
                        f"{data.n_classes} classes")
    if len(data.y_train) < card.training.batch_size:
        raise CardError(f"training.batch_size={card.training.batch_size} exceeds the "
                        f"{len(data.y_train)} training examples")


def _flush(particles, pending):
    """Write a step's pending free states into the host-side particle store; returns None."""
    if pending is not None:
        particles[pending[0]] = np.asarray(pending[1])
    return None


# ----------------------------------------------------------------------------------------------
# The loop


class Trainer:
    """Trains `card` on `data` into the run directory `run_dir` (epoch loop and checkpoints).

    `step`: the card's :class:`TrainingStep` for this data (built when None). `progress`: the
    :class:`Progress` hooks. After :meth:`run`, :meth:`result` is the run's :class:`Run`.
    """

    def __init__(self, card: Card, data: Dataset, run_dir, *, step: TrainingStep | None = None,
                 progress: Progress | None = None):
        self.card, self.data, self.dir = card, data, pathlib.Path(run_dir)
        self.ckpt = self.dir / "checkpoints"
        self.progress = Progress() if progress is None else progress
        t = card.training
        self.init_key, self.perm_key, self.step_key = run_keys(card)
        self.n_batches = len(data.y_train) // t.batch_size
        if step is None:
            step = build_training_step(card, self.n_batches)
        elif not step.fits(card, self.n_batches):
            raise UsageError("step was built for another card or number of minibatches per epoch; "
                             "build it with ctgep.build_training_step(card, len(y_train) // batch_size)")
        self.step = step
        # On the device for the single-device step; on the host for a sharded one, whose
        # processes each put only their rows of a minibatch on their devices.
        as_array = jnp.asarray if step.mesh is None else np.asarray
        self.x = as_array(data.x_train, jnp.float32)
        self.y = as_array(data.y_train, jnp.int32)
        self.writer = parallel.is_writer()  # only process 0 of a multi-process run writes files
        self.last_plot = -math.inf
        self.beta = np.float32(card.learning.beta)
        self.best = self.latest = None  # (net, sidecar) of the checkpoints written by this object
        self.summary = {}

    # -- state

    def fresh(self):
        """The card's initial network and its optimiser state."""
        # One compiled initialisation instead of dozens of eagerly dispatched operations.
        def init(key):
            net = build_network(self.card, key)
            return net, self.step.init_optimizer(net)

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
        return checkpoints.load_particles(self.ckpt, meta, shape, net.b[0].dtype)

    def perm(self, epoch):
        return permutation(self.perm_key, np.int32(epoch), len(self.data.y_train))

    def meta(self, epoch, batch, step, stats, elapsed, history, best):
        """The sidecar fields of a checkpoint at this point of the run."""
        return {"epoch": epoch, "batch": batch, "step": step, "seed": self.card.training.seed,
                "key": np.asarray(jr.key_data(self.step_key)).tolist(),
                "data_order": f"permutation of fold_in(key, epoch={epoch})",
                "accum": {k: np.asarray(v).tolist() for k, v in stats.items()}, "elapsed": elapsed,
                "history": history, "best": best}

    def save(self, tag, net, opt_state, meta, particles=None):
        net, opt_state = parallel.local((net, opt_state))  # a sharded run's checkpoints are the same
        if self.writer:
            meta = checkpoints.save(self.ckpt, tag, net, opt_state, meta, particles)
        else:
            meta = json.loads(json.dumps(meta))
        setattr(self, tag, (net, meta))

    def result(self) -> Run:
        """The run as :func:`load_run` reads it back (the `latest` checkpoint), from memory."""
        net, meta = self.latest
        rows = meta.get("history") or []
        summary = self.summary or rundir.read_summary(self.dir)  # none written: resumed after the end
        return Run(self.dir, self.card, net, dict(meta, tag="latest"), rundir.metrics_dataset(rows), summary)

    # -- the loop

    def _guard(self, stats, epoch, batch):
        if float(stats["nonfinite"]) > 0:
            raise TrainingError(
                f"the parameters became NaN/inf at epoch {epoch + 1} (within its first {batch} "
                f"batches); training stopped, the last good checkpoint is in {self.ckpt} — lower "
                "the learning rates or β, or shorten the Euler step")

    def run(self, net, opt_state, meta, particles=None):
        """Train from a checkpoint's state (`meta`: its sidecar) to the card's last epoch.

        Returns `(net, history)`: the final network and the epoch rows.
        """
        t = self.card.training
        epoch, batch, step = meta["epoch"], meta["batch"], meta["step"]
        history, best = list(meta["history"]), meta["best"]
        stats = {k: np.float32(meta["accum"].get(k, 0.0)) for k in STATS}
        # A checkpoint written before the silent-output count has none: count its units as
        # active rather than report a unit silent for an epoch only partly seen.
        n_out = self.card.model.sizes[-1]
        stats[ACTIVE] = np.asarray(meta["accum"].get(ACTIVE, np.ones(n_out)), np.float32)
        elapsed = meta["elapsed"]
        train_step = self.step.train
        hooks = self.progress
        hooks.start(self, epoch)
        try:
            while epoch < t.epochs:
                perm = self.perm(epoch)
                order = np.asarray(perm) if particles is not None else None
                augment = np.bool_(not self.card.data.shift_epochs or epoch < self.card.data.shift_epochs)
                homeostatic = np.bool_(epoch >= self.card.learning.homeostasis_delay)
                hooks.epoch_start(epoch, batch)
                t0, done0 = time.perf_counter() - elapsed, batch
                pending = None
                while batch < self.n_batches:
                    rows = None
                    if particles is not None:
                        idx = order[batch * t.batch_size:(batch + 1) * t.batch_size]
                        rows = particles[idx]
                    net, opt_state, stats, free_rows = train_step(
                        net, opt_state, stats, self.x, self.y, perm, np.int32(batch),
                        np.int32(step), self.step_key, self.beta, rows, augment, homeostatic)
                    # The free states go back to the host-side store one step late, so that
                    # the next step is dispatched before this one is waited for. An epoch
                    # visits each example once, so no step reads a row still pending.
                    _flush(particles, pending)
                    pending = None if particles is None else (idx, free_rows)
                    batch, step = batch + 1, step + 1
                    if batch % t.progress_every == 0 or batch == self.n_batches:
                        self._guard(stats, epoch, batch)
                        hooks.batches(stats, batch, batch - done0, time.perf_counter() - t0 - elapsed)
                    if t.checkpoint_every and batch % t.checkpoint_every == 0 and batch < self.n_batches:
                        self._guard(stats, epoch, batch)
                        pending = _flush(particles, pending)
                        self.save("latest", net, opt_state, self.meta(
                            epoch, batch, step, stats, time.perf_counter() - t0, history, best), particles)
                self._guard(stats, epoch, batch)
                pending = _flush(particles, pending)
                row = self._epoch_row(net, epoch, stats, time.perf_counter() - t0)
                silent = silent_outputs(stats)
                history.append(row)
                # Selected on the validation split when there is one, else (the paper's
                # practice, an optimistic test error) on the test set: the sidecar says which.
                on = "validation" if "val_error" in row else "test"
                score = row.get("val_error", row["test_error"])
                is_best = best is None or score < best["score"]
                if is_best:
                    best = {"epoch": epoch + 1, "score": score, "selected_on": on}
                epoch, batch, stats, elapsed = epoch + 1, 0, zero_stats(n_out), 0.0
                meta = self.meta(epoch, batch, step, stats, 0.0, history, best)
                if is_best:
                    self.save("best", net, opt_state, meta)
                self.save("latest", net, opt_state, meta, particles)
                if self.writer:
                    rundir.write_metrics(self.dir / "metrics.csv", history)
                    self.summary = rundir.write_summary(self.dir, self.card, self.data, history, best,
                                                        "running" if epoch < t.epochs else "finished")
                if self.writer and (epoch == t.epochs or time.perf_counter() - self.last_plot > 30):
                    rundir.plot_metrics(history, self.dir / "training.png",
                                        title=f"{self.card.name}: {self.dir.resolve().name}")
                    self.last_plot = time.perf_counter()
                hooks.epoch_end(row, silent)
        finally:
            hooks.close()
        if not history and self.writer:
            self.summary = rundir.write_summary(self.dir, self.card, self.data, history, best, "finished")
        return net, history

    def _epoch_row(self, net, epoch, stats, wall):
        net = parallel.local(net)  # evaluated on one device of this process
        a = {k: float(stats[k]) for k in STATS}
        n, nb = max(a["examples"], 1.0), max(a["batches"], 1.0)
        row = {"epoch": epoch + 1, "train_error": a["errors"] / n, "train_cost": a["cost"] / n}
        if self.data.x_val is not None:
            row["val_error"] = error_rate(net, self.data.x_val, self.data.y_val, self.card, self.step)
        row["test_error"] = error_rate(net, self.data.x_test, self.data.y_test, self.card, self.step)
        row.update(free_time=a["free_time"] / nb, free_steps=a["free_steps"] / nb,
                   nudged_time=a["nudged_time"] / nb, nudged_steps=a["nudged_steps"] / nb,
                   free_nonconverged=a["free_nonconverged"] / n,
                   nudged_nonconverged=a["nudged_nonconverged"] / n,
                   **{k: a[k] / n for k in CAUSE_STATS},
                   silent_outputs=len(silent_outputs(stats)),
                   wall_time=wall, examples_per_s=n / max(wall, 1e-9))
        row.update(alignment(net))
        row.update(probe_row(self.card, self.data, net, epoch + 1))  # training.analyse_every
        return row


# ----------------------------------------------------------------------------------------------
# Entry points


def _with_epochs(card: Card, epochs) -> Card:
    if int(epochs) < 0:
        raise CardError(f"--epochs={epochs!r} must be ≥ 0")
    return dataclasses.replace(card, training=dataclasses.replace(card.training, epochs=int(epochs)))


def _hooks(progress, log) -> Progress:
    if not parallel.is_writer():  # process 0 of a multi-process run speaks for all of them
        return Progress()
    return progress if isinstance(progress, Progress) else ConsoleProgress(bool(progress), log)


def _writer_log(log):
    return log if parallel.is_writer() else (lambda *args, **kwargs: None)


def _with_devices(card: Card, devices) -> Card:
    """`card` with `training.devices` replaced (validated like the card's own value)."""
    return card.with_overrides([f"training.devices={devices}"])


def train(card=None, out=None, *, overrides=(), epochs=None, data=None, data_dir=None, net=None,
          step=None, progress=True, log=print) -> Run:
    """Train the card (a :class:`Card`, a path, or a built-in name; default "digits").

    Writes a run directory `out` (default ``runs/<name>-<timestamp>``, which must not exist or
    be empty) and returns the run as :func:`load_run` reads it back (its `latest` checkpoint:
    the final network).

    `data`: a :class:`Dataset` to train on instead of loading the card's (`data.max_train` /
    `data.max_test` still apply; pass the same dataset to :func:`resume`). `data_dir`: where the
    card's dataset is (recorded in the run's card). `net`: start from this network (a fresh
    optimiser state) instead of the card's initialisation. `step`: the card's
    :class:`TrainingStep` from :func:`build_training_step` to reuse its compiled code.
    `progress`: show progress bars (bool), or :class:`Progress` hooks; `log`: where the
    one-line messages go. In a multi-process run (:func:`ctgep.initialize_distributed`) every
    process calls this with the same arguments; only process 0 writes `out` and logs.
    """
    if not isinstance(card, Card):
        card = load_card(card)
    if overrides:
        card = card.with_overrides(overrides)
    if epochs is not None:
        card = _with_epochs(card, epochs)
    out = rundir.default_out(card) if out is None else pathlib.Path(out)
    restart = False
    writer, log = parallel.is_writer(), _writer_log(log)
    if writer and out.exists() and (not out.is_dir() or any(out.iterdir())):
        restart = rundir.unstarted(out)  # a run killed before its first checkpoint: start again
        if not restart:
            raise RunDirError(f"--out {out} already exists and is not empty; choose another folder "
                              "or continue it with `ctgep resume`")
    data = _data_for(card, data, data_dir)
    if restart:
        log(f"{out} holds a run stopped before its first checkpoint: starting it again")
        rundir.clear_unstarted(out)
    if data_dir:
        card = dataclasses.replace(card, data=dataclasses.replace(card.data, data_dir=str(
            pathlib.Path(data_dir).expanduser().resolve())))
    trainer = Trainer(card, data, out, step=step, progress=_hooks(progress, log))
    if net is None and card.training.init:
        net = _initial_weights(card, trainer, log)
    if net is None:
        net, opt_state = trainer.fresh()
    else:
        opt_state = trainer.step.init_optimizer(net)
    particles = trainer.fresh_particles(net)
    if writer:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        rundir.write_card(out, card)
    meta = trainer.meta(0, 0, 0, zero_stats(card.model.sizes[-1]), 0.0, [], None)
    trainer.save("latest", net, opt_state, meta, particles)
    log(f"run directory: {out}  ({data.name}: {len(data.y_train)} train, {len(data.y_test)} test"
        + (f", {len(data.y_val)} validation" if data.y_val is not None else "") + " examples)")
    trainer.run(net, opt_state, trainer.latest[1], particles)
    return trainer.result()


def _initial_weights(card: Card, trainer: "Trainer", log):
    """The network of `training.init`'s checkpoint, checked against the card's architecture
    and cast to the card's dtype (the card's static settings, e.g. its activation, rule)."""
    run_dir, which = init_checkpoint(card.training.init)
    try:
        source = load_run(run_dir, which)
    except RunDirError as e:
        raise RunDirError(f"training.init={card.training.init!r}: {e}") from None
    fresh, _ = trainer.fresh()
    arrays = lambda n: jax.tree_util.tree_flatten(eqx.filter(n, eqx.is_inexact_array))
    (src, _), (new, treedef) = arrays(source.net), arrays(fresh)
    if type(source.net) is not type(fresh) or [a.shape for a in src] != [a.shape for a in new]:
        raise CardError(f"training.init={card.training.init!r}: its {type(source.net).__name__} "
                        f"(model.sizes={list(source.card.model.sizes)}) does not fit this card's "
                        f"model (model.sizes={list(card.model.sizes)})")
    params = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a, b.dtype) for a, b in zip(src, new)])
    at = source.checkpoint
    where = f"after epoch {at['epoch']}" + (f", batch {at['batch']}" if at.get("batch") else "")
    log(f"starting from the {at['tag']} checkpoint of {run_dir} ({where}); the optimiser and its "
        "schedule start afresh")
    return eqx.combine(params, eqx.filter(fresh, eqx.is_inexact_array, inverse=True))


def resume(run_dir, *, epochs=None, devices=None, reset_particles=False, data=None, data_dir=None, step=None,
           progress=True, log=print) -> Run:
    """Continue a run from its latest checkpoint, exactly where it stopped.

    `epochs` raises (or lowers) the card's total number of epochs; the resolved card is
    updated only once the data has been found and the checkpoint read. `devices` replaces
    `training.devices` for this continuation (checkpoints do not depend on it; the card is not
    rewritten). `reset_particles` restarts the warm starts (`phases.warm_start`) from the
    initial state when the checkpoint's particles file is absent, as a committed run leaves it
    out (1.3 GB for the CNN): the continuation is then no longer identical to an uninterrupted
    run, and a warning says so; a present file is used as always. `data`, `step`, `progress`,
    `log`: as for :func:`train`; a multi-process run resumes with the same number of processes,
    every one reading the run directory.
    """
    log = _writer_log(log)
    run_dir = pathlib.Path(run_dir)
    card = rundir.read_run_card(run_dir)
    if epochs is not None:
        card = _with_epochs(card, epochs)
    if devices is not None:
        card = _with_devices(card, devices)
    if rundir.unstarted(run_dir):
        # Killed before its first checkpoint: nothing was trained, so start from the card.
        log(f"{run_dir} has no checkpoint yet (stopped before the first one): starting it from its card")
        if parallel.is_writer():
            rundir.clear_unstarted(run_dir)
        return train(card, run_dir, data=data, data_dir=data_dir, step=step, progress=progress, log=log)
    data = _data_for(card, data, data_dir)
    trainer = Trainer(card, data, run_dir, step=step, progress=_hooks(progress, log))
    (net, opt_state), meta, particles = _latest_or_best(trainer, log, reset_particles)
    if trainer.writer:
        checkpoints.prune(trainer.ckpt)
    if epochs is not None and trainer.writer:
        rundir.write_card(run_dir, _with_epochs(rundir.read_run_card(run_dir), epochs))
    log(f"resuming {run_dir} at epoch {meta['epoch'] + 1}, batch {meta['batch']} "
        f"(optimiser step {meta['step']})")
    trainer.latest = (net, meta)
    trainer.run(net, opt_state, meta, particles)
    return trainer.result()


def _latest_or_best(trainer: Trainer, log, reset_particles=False):
    """`((net, opt_state), sidecar, particles)` of the `latest` checkpoint, or, when its sidecar
    is unreadable (a truncated `latest.json`), of the `best` one: an epoch boundary of the same
    run, from which the epochs after it are trained again, identically. With `reset_particles`,
    warm starts whose particles file is absent (or that resume from `best`, which has none)
    begin again from the initial state."""
    like = eqx.filter_eval_shape(trainer.fresh)
    warm = trainer.card.phases.warm_start
    try:
        (net, opt_state), meta = checkpoints.load(trainer.ckpt, "latest", like)
    except RunDirError as e:
        if not (trainer.ckpt / "best.json").is_file() or "sidecar" not in str(e):
            raise
        if warm and not reset_particles:
            raise RunDirError(f"{e}; the best checkpoint cannot replace it, as it does not hold the "
                              "warm-start particles (--reset-particles restarts them)") from None
        try:
            (net, opt_state), meta = checkpoints.load(trainer.ckpt, "best", like)
        except RunDirError as e2:
            raise RunDirError(f"{e}, and the best checkpoint cannot replace it: {e2}") from None
        log(f"warning: {e}; resuming from the best checkpoint (end of epoch {meta['epoch']}) instead")
        return (net, opt_state), meta, _reset_particles(trainer, meta, net, log) if warm else None
    if warm and reset_particles and not checkpoints.has_particles(trainer.ckpt, meta):
        return (net, opt_state), meta, _reset_particles(trainer, meta, net, log)
    return (net, opt_state), meta, trainer.load_particles(meta, net)


def _reset_particles(trainer: Trainer, meta: dict, net, log):
    """Fresh warm-start particles for a run that continues without its own (None once finished)."""
    if meta["epoch"] >= trainer.card.training.epochs:
        return None
    log(f"warning: the warm starts of {trainer.dir} restart from the initial state at epoch "
        f"{meta['epoch'] + 1}, batch {meta['batch']} (--reset-particles, no particles file): the "
        "continuation is not identical to an uninterrupted run")
    return trainer.fresh_particles(net)


def evaluate(run_dir, *, which: str = "latest", data=None, data_dir=None, split: str = "test",
             t_free=None) -> dict:
    """Error rate of a run's checkpoint on the `split` ("test", "val" or "train") data.

    `which`: "latest" (the final epoch) or "best" (the epoch with the lowest validation error,
    or, when the card has no validation split, the lowest *test* error). A `best` chosen on the
    test set and evaluated on it gives an optimistic error: a `UserWarning` says so, and the
    result's `selected_on` names the split it was chosen on. `t_free` replaces the card's
    prediction horizon (`phases.t_eval`, else `t_free`), e.g. to check that a longer relaxation
    does not change the prediction. `data`: a :class:`Dataset` instead of the card's (as for
    :func:`train`). Besides `error`, the result has `class_error` (the error on each class's
    examples, None for a class without any) and `predicted` (how many examples were predicted
    as each class); a class with examples that is never predicted, an output unit that never
    wins (e.g. a dead clipped output), is warned about.
    """
    if split not in ("test", "val", "train"):
        raise UsageError(f"split={split!r} must be 'test', 'val' or 'train'")
    if t_free is not None and not (isinstance(t_free, (int, float)) and math.isfinite(t_free) and t_free > 0):
        raise UsageError(f"t_free={t_free!r} must be a positive number")
    run = load_run(run_dir, which)
    card = run.card
    if t_free is not None:
        card = dataclasses.replace(card, phases=dataclasses.replace(card.phases, t_eval=float(t_free)))
    data = _data_for(run.card, data, data_dir)
    if split == "val" and data.x_val is None:
        raise UsageError("the run's card has no validation split (data.validation = 0)")
    x, y = {"test": (data.x_test, data.y_test), "val": (data.x_val, data.y_val),
            "train": (data.x_train, data.y_train)}[split]
    y = np.asarray(y, np.int64)
    pred = predict(run.net, x, card)
    err = float(np.mean(pred != y)) if len(y) else float("nan")
    # Per class: the error on its examples (None for a class without any) and how many examples
    # were predicted as it; a class never predicted is a dead output unit.
    n_classes = card.model.sizes[-1]
    examples = np.bincount(y, minlength=n_classes)
    wrong = np.bincount(y, weights=pred != y, minlength=n_classes)
    result = {"run": str(run_dir), "checkpoint": run.checkpoint["tag"], "epoch": run.checkpoint["epoch"],
              "split": split, "n": int(len(y)), "t_free": card.phases.prediction_horizon, "error": err,
              "accuracy": 1.0 - err,
              "class_error": [float(w / k) if k else None for w, k in zip(wrong, examples)],
              "predicted": [int(c) for c in np.bincount(pred, minlength=n_classes)]}
    never = [c for c in range(n_classes) if examples[c] and not result["predicted"][c]]
    if never:
        warnings.warn(f"{run_dir}: class{'es' if len(never) > 1 else ''} {', '.join(map(str, never))} "
                      f"never predicted on the {split} set (an output unit that never wins, e.g. a "
                      "clipped output stuck at its lower bound)", UserWarning, stacklevel=2)
    if run.checkpoint["tag"] == "best":
        # Sidecars written before `selected_on` existed chose on the validation split only when
        # the card had one.
        chosen = (run.checkpoint.get("best") or {}).get("selected_on") or (
            "validation" if run.card.data.validation else "test")
        result["selected_on"] = chosen
        if chosen == "test" and split == "test":
            warnings.warn(f"the 'best' checkpoint of {run_dir} (epoch {run.checkpoint['epoch']}) was chosen "
                          "on the test set, so its test error is optimistic; report the 'latest' "
                          "checkpoint, or train with data.validation > 0", UserWarning, stacklevel=2)
    return result
