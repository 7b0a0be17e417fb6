"""Progress hooks of the training loop: :class:`Progress` (no-op base) and the console's."""

import numpy as np

from .build import STATS

__all__ = ["ConsoleProgress", "Progress"]


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
    """tqdm bars (unless `bars` is false) and one line per epoch through `log`."""

    def __init__(self, bars: bool = True, log=print):
        self.bars, self.log = bars, log
        self.epochs_bar = self.bar = None

    def start(self, trainer, epoch):
        from tqdm.auto import tqdm

        self.tqdm, self.trainer = tqdm, trainer
        self.epochs_bar = tqdm(total=trainer.card.training.epochs, initial=epoch, desc="epochs",
                               unit="epoch", disable=not self.bars, dynamic_ncols=True)

    def epoch_start(self, epoch, batch):
        self.bar = self.tqdm(total=self.trainer.n_batches, initial=batch, desc=f"epoch {epoch + 1}",
                             unit="batch", leave=False, disable=not self.bars, dynamic_ncols=True)

    def batches(self, stats, batch, batches_done, seconds):
        a = {k: float(stats[k]) for k in STATS}
        n = max(a["examples"], 1.0)
        self.bar.set_postfix(
            err=f"{100 * a['errors'] / n:.1f}%",
            steps=f"{a['free_steps'] / max(a['batches'], 1):.0f}/{a['nudged_steps'] / max(a['batches'], 1):.0f}",
            nonconv=f"{100 * a['free_nonconverged'] / n:.0f}%",
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
               + f", {row['wall_time']:.1f}s")
        write = self.tqdm.write if self.bars else self.log
        write(msg)
        if silent.size:
            write(f"warning: output unit(s) {', '.join(map(str, silent))} sat at the lower clip "
                  f"bound for every training example of epoch {row['epoch']}: their classes were "
                  "never predicted, and while their drive stays below −β no nudge reaches "
                  "them; if this persists, lower the output layer's learning rate")

    def close(self):
        if self.epochs_bar is not None:
            self.epochs_bar.close()


def _fmt(x) -> str:
    return "nan" if x != x else f"{100 * x:.2f}%"
