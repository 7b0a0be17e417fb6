"""Run directories: what a training run writes besides its checkpoints, and reading one back.

A run directory holds::

    card.toml          the resolved card (overrides and data folder applied)
    metrics.csv        one row per epoch (errors, cost, relaxation stats, alignment)
    summary.json       final (or latest) figures and the best epoch
    training.png       errors and weight alignment against epochs
    checkpoints/       latest.json / best.json sidecars naming their parameter files
"""

import csv
import dataclasses
import datetime
import io
import json
import pathlib

import equinox as eqx
import jax.random as jr
import numpy as np

from .._dynamics.networks import LayeredNetwork
from .._errors import RunDirError, UsageError
from . import checkpoints
from .build import CAUSES, build_network, build_optimizer, trainable
from .cards import Card, load_card

__all__ = ["Run", "load_run", "plot_metrics"]


@dataclasses.dataclass
class Run:
    """A training run: its card, a network from a checkpoint, metrics, summary."""

    path: pathlib.Path
    card: Card
    net: LayeredNetwork
    checkpoint: dict
    metrics: object  # xarray.Dataset indexed by epoch (empty when no epoch finished)
    summary: dict


def default_out(card: Card) -> pathlib.Path:
    """``runs/<name>-<date>-<time>`` (with a counter if that exists)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = pathlib.Path("runs") / f"{card.name}-{stamp}"
    out, i = base, 1
    while out.exists():
        out, i = base.with_name(f"{base.name}-{i}"), i + 1
    return out


def write_card(run_dir: pathlib.Path, card: Card) -> None:
    checkpoints.atomic_write(run_dir / "card.toml", card.to_toml().encode())


def _columns(rows: list[dict]) -> list[str]:
    """Every key of the rows, in order of first appearance (a run resumed by a newer ctgep
    has more columns in its later rows; the earlier ones leave them empty)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def write_metrics(path: pathlib.Path, rows: list[dict]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(rows), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    checkpoints.atomic_write(path, buf.getvalue().encode())


def write_summary(run_dir: pathlib.Path, card: Card, data, history, best, status) -> dict:
    """Write summary.json; returns the summary as read back."""
    s = {"name": card.name, "status": status, "epochs_done": len(history),
         "epochs": card.training.epochs, "dataset": data.name,
         "n_train": int(len(data.y_train)), "n_test": int(len(data.y_test)),
         "best": best, "final": history[-1] if history else None,
         "nonconverged": nonconverged_summary(history),
         "total_wall_time": sum(r["wall_time"] for r in history),
         "updated": datetime.datetime.now().isoformat(timespec="seconds")}
    text = json.dumps(s, indent=1)
    checkpoints.atomic_write(run_dir / "summary.json", text.encode())
    return json.loads(text)


def nonconverged_summary(history) -> dict | None:
    """The fractions of training phases that did not settle: in the final epoch (overall and
    per cause, the metrics' `free_horizon_reached` … columns), and the worst epoch's."""
    if not history:
        return None
    final = history[-1]
    out = {}
    for phase in ("free", "nudged"):
        key = f"{phase}_nonconverged"
        values = [r.get(key, 0.0) for r in history]
        worst = int(np.argmax(values))
        out[phase] = {"final": final.get(key), "max": values[worst], "max_epoch": history[worst]["epoch"],
                      "final_causes": {k[len(phase) + 1:]: v for k, v in final.items()
                                       if k.startswith(phase + "_") and k != key
                                       and k[len(phase) + 1:] in {c.name for c in CAUSES}}}
    return out



def read_summary(run_dir) -> dict:
    """summary.json of a run directory ({} when missing or unreadable)."""
    try:
        return json.loads((pathlib.Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def metrics_dataset(rows: list[dict]):
    """The epoch rows as an `xarray.Dataset` indexed by epoch."""
    import xarray as xr

    if rows:
        return xr.Dataset({k: ("epoch", np.array([r.get(k, np.nan) for r in rows]))
                           for k in _columns(rows) if k != "epoch"},
                          coords={"epoch": [r["epoch"] for r in rows]})
    return xr.Dataset(coords={"epoch": np.zeros((0,), int)})


def plot_metrics(rows: list[dict], path, title: str = "") -> None:
    """Training curves: error rates on a log axis (top), alignment cosines (middle) and traces
    (bottom), titled with the run's name; whole epochs on the x axis, also for one epoch. With the
    probe columns of `training.analyse_every`, a fourth panel: the spectral abscissa and asymmetry
    of Jμ and the descent angle at the analysed epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, PercentFormatter

    epochs = [r["epoch"] for r in rows]
    probed = any("probe_abscissa" in r for r in rows)
    fig, axes = plt.subplots(4 if probed else 3, 1, figsize=(6, 10.5 if probed else 8), sharex=True)
    errors = []
    for key, label in (("train_error", "training (online)"), ("val_error", "validation"), ("test_error", "test")):
        if rows and key in rows[0]:
            values = [100 * r.get(key, np.nan) for r in rows]
            errors += [v for v in values if v > 0]
            axes[0].plot(epochs, values, marker=".", label=label)
    axes[0].set_yscale("log", nonpositive="mask")  # the 0–5 % region is where training ends
    axes[0].yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[0].yaxis.set_major_formatter(PercentFormatter(decimals=None))
    axes[0].yaxis.set_minor_formatter(NullFormatter())
    if errors:  # at least a factor 3, so that two labelled ticks show
        axes[0].set_ylim(min(min(errors) / 1.5, max(errors) / 3), min(100.0, max(errors) * 1.5))
    axes[0].set_ylabel("error rate")
    if rows:
        axes[0].legend()
    pairs = list(dict.fromkeys(k[4:] for r in rows for k in r if k.startswith("cos_")))
    for pair in pairs:
        lo, hi = pair.split("_")
        lab = f"$l = {lo}$"
        axes[1].plot(epochs, [r.get("cos_" + pair, np.nan) for r in rows], marker=".", label=lab)
        axes[2].plot(epochs, [r.get("trace_" + pair, np.nan) for r in rows], marker=".", label=lab)
    axes[1].set_ylabel(r"$\cos(W^b_l, W^{f\,\top}_{l+1})$")
    axes[1].set_ylim(-1.05, 1.05)
    axes[2].set_ylabel(r"$\mathrm{tr}(W^f_{l+1} W^b_l)$")
    if pairs:
        axes[1].legend(fontsize="small")
    if probed:
        _plot_probe(axes[3], rows)
    axes[-1].set_xlabel("epoch")
    last = max(epochs) if epochs else 1
    if last <= 10:
        axes[-1].set_xticks(range(1, last + 1))
    else:
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlim(0.5, last + 0.5)  # one epoch: a point in the middle, not a degenerate axis
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    checkpoints.atomic_write(pathlib.Path(path), buf.getvalue())


def _plot_probe(ax, rows) -> None:
    """The stability probe at the analysed epochs: max Re λ(Jμ) and the asymmetry on the left
    axis, the angle between ν and −∇J on the right."""
    def series(key):
        pts = [(r["epoch"], r.get(key, np.nan)) for r in rows]
        pts = [(e, v) for e, v in pts if v is not None and np.isfinite(float(v))]
        return [e for e, _ in pts], [float(v) for _, v in pts]

    lines = []
    for key, label, color in (("probe_abscissa", r"max Re $\lambda(J_\mu)$ [1/τ]", "C0"),
                              ("probe_asymmetry", r"$\|J_\mu - J_\mu^\top\|_F / \|J_\mu\|_F$", "C1")):
        lines += ax.plot(*series(key), marker="o", color=color, label=label)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_ylabel("probe batch (median)")
    right = ax.twinx()
    lines += right.plot(*series("probe_descent_angle"), marker="s", color="C2", label=r"angle($\nu$, $-\nabla J$)")
    right.set_ylabel("degrees")
    right.set_ylim(0, max(90.0, *(series("probe_descent_angle")[1] or [0.0])) * 1.05)
    ax.legend(handles=lines, fontsize="small", loc="best")


def unstarted(run_dir) -> bool:
    """Whether `run_dir` holds only what a `ctgep train` killed before its first checkpoint
    leaves: `card.toml` (or its temporary file) and a `checkpoints/` folder without a sidecar,
    holding at most temporary and parameter files. Such a run is started afresh from its card
    by `ctgep resume`, and `ctgep train --out` may reuse the folder."""
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        return False
    for p in run_dir.iterdir():
        if p.name == "checkpoints" and p.is_dir():
            if any(q.suffix == ".json" or q.suffix not in (".tmp", ".eqx", ".npy") or not q.is_file()
                   for q in p.iterdir()):
                return False
        elif not (p.name == "card.toml" or (p.name.startswith(".card.toml.") and p.name.endswith(".tmp"))):
            return False
    return True


def clear_unstarted(run_dir) -> None:
    """Remove what an unstarted run left (see :func:`unstarted`), keeping the folder."""
    run_dir = pathlib.Path(run_dir)
    folder = run_dir / "checkpoints"
    if folder.is_dir():
        for q in folder.iterdir():
            q.unlink()
        folder.rmdir()
    for p in run_dir.iterdir():
        p.unlink()


def read_run_card(run_dir) -> Card:
    """The resolved card of a run directory (RunDirError if `run_dir` is none).

    A run killed before its first checkpoint (see :func:`unstarted`) has a card and no
    checkpoint: its card is returned too, and the caller decides.
    """
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "card.toml").is_file() or not (
            (run_dir / "checkpoints" / "latest.json").is_file() or unstarted(run_dir)):
        raise RunDirError(f"{run_dir} is not a ctgep run directory (no card.toml and "
                          "checkpoints/latest.json)")
    return load_card(run_dir / "card.toml")


def checkpoint_shape(card: Card):
    """The structure and shapes of a checkpoint of `card`: `(net, opt_state)`, nothing computed."""

    def fresh():
        net = build_network(card, jr.key(0))
        return net, build_optimizer(card).init(trainable(net))

    return eqx.filter_eval_shape(fresh)


def load_run(run_dir, which: str = "latest") -> Run:
    """Read a run directory: card, the network of checkpoint `which`, metrics.

    `which`: "latest" (the final or last saved network, the default) or "best" (the epoch with
    the lowest validation error, else the lowest test error: chosen on the test set; its
    sidecar's ``best.selected_on`` says which).
    """
    run_dir = pathlib.Path(run_dir)
    if which not in ("best", "latest"):
        raise UsageError(f"which={which!r} must be 'best' or 'latest'")
    card = read_run_card(run_dir)
    if unstarted(run_dir):
        raise RunDirError(f"{run_dir} has no checkpoint yet (its training was stopped before the "
                          f"first one): run `ctgep resume {run_dir}` to start it from its card")
    folder = run_dir / "checkpoints"
    tag = which if (folder / f"{which}.json").is_file() else "latest"
    (net, _), meta = checkpoints.load(folder, tag, checkpoint_shape(card))
    try:
        rows = json.loads((folder / "latest.json").read_text()).get("history") or []
    except (OSError, ValueError):
        rows = meta.get("history") or []
    return Run(run_dir, card, net, dict(meta, tag=tag), metrics_dataset(rows), read_summary(run_dir))
