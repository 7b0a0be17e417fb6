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
from .build import build_network, build_optimizer, trainable
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


def write_metrics(path: pathlib.Path, rows: list[dict]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    checkpoints.atomic_write(path, buf.getvalue().encode())


def write_summary(run_dir: pathlib.Path, card: Card, data, history, best, status) -> dict:
    """Write summary.json; returns the summary as read back."""
    s = {"name": card.name, "status": status, "epochs_done": len(history),
         "epochs": card.training.epochs, "dataset": data.name,
         "n_train": int(len(data.y_train)), "n_test": int(len(data.y_test)),
         "best": best, "final": history[-1] if history else None,
         "total_wall_time": sum(r["wall_time"] for r in history),
         "updated": datetime.datetime.now().isoformat(timespec="seconds")}
    text = json.dumps(s, indent=1)
    checkpoints.atomic_write(run_dir / "summary.json", text.encode())
    return json.loads(text)


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
        return xr.Dataset({k: ("epoch", np.array([r[k] for r in rows])) for k in rows[0] if k != "epoch"},
                          coords={"epoch": [r["epoch"] for r in rows]})
    return xr.Dataset(coords={"epoch": np.zeros((0,), int)})


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
    checkpoints.atomic_write(pathlib.Path(path), buf.getvalue())


def read_run_card(run_dir) -> Card:
    """The resolved card of a run directory (RunDirError if `run_dir` is none)."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "card.toml").is_file() or not (run_dir / "checkpoints" / "latest.json").is_file():
        raise RunDirError(f"{run_dir} is not a ctgep run directory (no card.toml and "
                          "checkpoints/latest.json)")
    return load_card(run_dir / "card.toml")


def checkpoint_shape(card: Card):
    """The structure and shapes of a checkpoint of `card`: `(net, opt_state)`, nothing computed."""

    def fresh():
        net = build_network(card, jr.key(0))
        return net, build_optimizer(card).init(trainable(net))

    return eqx.filter_eval_shape(fresh)


def load_run(run_dir, which: str = "best") -> Run:
    """Read a run directory: card, the network of checkpoint `which` ("best"/"latest"), metrics."""
    run_dir = pathlib.Path(run_dir)
    if which not in ("best", "latest"):
        raise UsageError(f"which={which!r} must be 'best' or 'latest'")
    card = read_run_card(run_dir)
    folder = run_dir / "checkpoints"
    tag = which if (folder / f"{which}.json").is_file() else "latest"
    (net, _), meta = checkpoints.load(folder, tag, checkpoint_shape(card))
    try:
        rows = json.loads((folder / "latest.json").read_text()).get("history") or []
    except (OSError, ValueError):
        rows = meta.get("history") or []
    return Run(run_dir, card, net, dict(meta, tag=tag), metrics_dataset(rows), read_summary(run_dir))
