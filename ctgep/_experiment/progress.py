"""Progress hooks of the training loop: :class:`Progress` (no-op base) and the console's."""

import sys

import numpy as np

from .build import CAUSES, STATS

__all__ = ["ConsoleProgress", "NONCONVERGED_WARNING", "Progress"]

#: An epoch in which more than this fraction of the free or of the nudged phases did not settle
#: logs a warning line naming the causes (the metrics count them per RESULTS code).
NONCONVERGED_WARNING = 0.05


class Progress:
    """Hooks the epoch loop calls; this base class does nothing. Subclass to observe training."""

    def start(self, trainer, epoch: int) -> None:
        """Before the first epoch of this call (`epoch` epochs are already done); `trainer`
        is the :class:`~ctgep._experiment.loop.Trainer` (its `card`, `n_batches` …)."""

    def epoch_start(self, epoch: int, batch: int) -> None:
        """Before the first step of `epoch` (0-based), resumed at minibatch `batch`."""

    def batches(self, stats: dict, batch: int, batches_done: int, seconds: float) -> None:
        """Every `training.progress_every` steps: the epoch's statistics so far (host arrays)."""

    def epoch_end(self, row: dict, silent: np.ndarray) -> None:
        """After an epoch: its metrics row and its silent output units."""

    def close(self) -> None:
        """At the end, also after an error."""


class ConsoleProgress(Progress):
    """tqdm bars and one line per epoch through `log`.

    The bars go to `stream` (default ``sys.stderr``) and only when `bars` is true and the stream
    is a terminal: in a log file or a pipe a bar would write a line per refresh, so there only
    the epoch lines are printed. An epoch in which more than `warn_nonconverged` of the free or
    nudged phases did not settle adds a warning line with the fractions per cause.
    """

    def __init__(self, bars: bool = True, log=print, *, stream=None,
                 warn_nonconverged: float = NONCONVERGED_WARNING):
        self.log, self.warn_nonconverged = log, float(warn_nonconverged)
        stream = sys.stderr if stream is None else stream
        isatty = getattr(stream, "isatty", None)
        self.bars = bool(bars) and bool(isatty is not None and isatty())
        self.stream = stream
        self.epochs_bar = self.bar = None

    def start(self, trainer, epoch):
        from tqdm.auto import tqdm

        self.tqdm, self.trainer = tqdm, trainer
        self.epochs_bar = tqdm(total=trainer.card.training.epochs, initial=epoch, desc="epochs",
                               unit="epoch", disable=not self.bars, dynamic_ncols=True, file=self.stream)

    def epoch_start(self, epoch, batch):
        self.bar = self.tqdm(total=self.trainer.n_batches, initial=batch, desc=f"epoch {epoch + 1}",
                             unit="batch", leave=False, disable=not self.bars, dynamic_ncols=True,
                             file=self.stream)

    def batches(self, stats, batch, batches_done, seconds):
        a = {k: float(stats[k]) for k in STATS}
        n = max(a["examples"], 1.0)
        self.bar.set_postfix(
            err=f"{100 * a['errors'] / n:.1f}%",
            steps=f"{a['free_steps'] / max(a['batches'], 1):.0f}/{a['nudged_steps'] / max(a['batches'], 1):.0f}",
            unsettled=f"{100 * a['free_nonconverged'] / n:.0f}%/{100 * a['nudged_nonconverged'] / n:.0f}%",
            ex_s=f"{batches_done * self.trainer.card.training.batch_size / max(seconds, 1e-9):.0f}",
            refresh=False)
        self.bar.update(batch - self.bar.n)

    def epoch_end(self, row, silent):
        self.bar.close()
        self.epochs_bar.update(1)
        epochs = self.trainer.card.training.epochs
        msg = (f"epoch {row['epoch']}/{epochs}: train error {_fmt(row['train_error'])}, "
               f"test error {_fmt(row['test_error'])}"
               + (f", validation error {_fmt(row['val_error'])}" if "val_error" in row else "")
               + f", not settled {_fmt(row['free_nonconverged'])} free / "
                 f"{_fmt(row['nudged_nonconverged'])} nudged"
               + f", {row['wall_time']:.1f}s")
        write = self.tqdm.write if self.bars else self.log
        write(msg)
        warning = nonconverged_warning(row, self.warn_nonconverged, self.trainer.card)
        if warning:
            if getattr(self, "_advised", False):  # the advice once; the fractions every epoch
                warning = warning[: warning.rindex(" (")]
            self._advised = True
            write(warning)
        if silent.size:
            write(f"warning: output unit(s) {', '.join(map(str, silent))} sat at the lower clip "
                  f"bound for every training example of epoch {row['epoch']}: their classes were "
                  "never predicted, and while their drive stays below −β no nudge reaches "
                  "them; if this persists, lower the output layer's learning rate")

    def close(self):
        if self.epochs_bar is not None:
            self.epochs_bar.close()


def nonconverged_warning(row: dict, threshold: float, card=None) -> str:
    """A warning line when more than `threshold` of an epoch's free or nudged phases did not
    settle, with the fraction of each cause (`RESULTS` code); "" otherwise."""
    parts = []
    for phase in ("free", "nudged"):
        frac = row.get(f"{phase}_nonconverged", 0.0)
        if not frac > threshold:  # NaN-safe
            continue
        causes = [f"{c.name} {_fmt(row[f'{phase}_{c.name}'])}" for c in CAUSES
                  if row.get(f"{phase}_{c.name}", 0.0) > 0]
        horizon = ""
        if card is not None:
            key = "t_free" if phase == "free" else "t_nudged"
            horizon = f" within {key}={getattr(card.phases, key):g}"
        parts.append(f"{_fmt(frac)} of the {phase} phases did not settle{horizon}"
                     + (f" ({', '.join(causes)})" if causes else ""))
    if not parts:
        return ""
    tol = f"tolerance {card.phases.tol:g}; " if card is not None else ""
    fixes = "lengthen the phases, loosen phases.tol or lower β"
    if card is not None and card.phases.solver == "euler" and not card.phases.backtrack:
        fixes += ("; if `ctgep stability` finds the Euler iteration's radius ≥ 1 (it flips while "
                  "the ODE settles), set phases.backtrack = true")
    return (f"warning: epoch {row['epoch']}: " + "; ".join(parts) + f" ({tol}the EP update then "
            f"uses unsettled states: {fixes})")


def _fmt(x) -> str:
    return "nan" if x != x else f"{100 * x:.2f}%"
