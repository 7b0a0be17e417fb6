"""Feedforward/feedback alignment of the committed MNIST runs, from initialisation to the end.

The run directories' `metrics.csv` give the alignment after each epoch; the value before the
first update is recomputed here from the run's card and seed (the same draw as `ctgep train`).
For each adjacent pair of layers it prints the cosine between `Wb_l` and `Wf_{l+1}ᵀ` and the
paper's `tr(Wf_{l+1}·Wb_l)` at initialisation, after the first epoch and at the end.

With `--decompose` it prints instead where the alignment comes from. Writing the final weights
as initial draw plus learnt change, `Wb = Wb⁰ + ΔWb` and `Wf = Wf⁰ + ΔWf`, the final inner
product is the sum of four terms; the table gives the cosines of the three that learning adds:
`ΔWf` against the initial feedback `Wb⁰` (feedback alignment, as in Lillicrap et al. 2016),
`ΔWb` against the initial forward `Wf⁰`, and `ΔWb` against `ΔWf`.

    python studies/mnist/alignment.py [--decompose] [RUN_DIR ...]   (default: every run under studies/mnist/ that keeps its checkpoints)
"""

import argparse
import pathlib

import numpy as np

import ctgep
from ctgep import initial_network

HERE = pathlib.Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=pathlib.Path)
    parser.add_argument("--decompose", action="store_true", help="cosines of the learnt changes (see above)")
    args = parser.parse_args()
    runs = args.runs or sorted(p.parents[1] for p in HERE.glob("*/checkpoints/latest.json"))
    if args.decompose:
        return decompose(runs)
    print("| run | pair | cos at init | cos after epoch 1 | cos at end | change | tr at init | tr at end |")
    print("|---|---|---|---|---|---|---|---|")
    for run_dir in runs:
        run = ctgep.load_run(run_dir, "latest")
        start = ctgep.alignment(initial_network(run.card))
        end = ctgep.alignment(run.net)
        m = run.metrics
        for key in sorted(k for k in start if k.startswith("cos_")):
            pair = key[4:]
            first = float(m[key][0]) if key in m else float("nan")
            print(f"| {run_dir.name} ({int(m.epoch[-1])} ep.) | {pair.replace('_', '–')} | {start[key]:+.4f} | "
                  f"{first:+.4f} | {end[key]:+.4f} | {end[key] - start[key]:+.4f} | "
                  f"{start['trace_' + pair]:+.2f} | {end['trace_' + pair]:+.2f} |")


def _cos(a, b) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def decompose(runs):
    print("| run | pair | cos at end | cos(ΔWb, Wf⁰ᵀ) | cos(Wb⁰, ΔWfᵀ) | cos(ΔWb, ΔWfᵀ) | ‖ΔWb‖/‖Wb⁰‖ | ‖ΔWf‖/‖Wf⁰‖ |")
    print("|---|---|---|---|---|---|---|---|")
    for run_dir in runs:
        run = ctgep.load_run(run_dir, "latest")
        start, end = initial_network(run.card), run.net
        for l in range(len(end.Wb)):
            b0, f0 = np.asarray(start.Wb[l]), np.asarray(start.Wf[l + 1]).T
            b, f = np.asarray(end.Wb[l]), np.asarray(end.Wf[l + 1]).T
            db, df = b - b0, f - f0
            print(f"| {run_dir.name} | {l + 1}–{l + 2} | {_cos(b, f):+.4f} | {_cos(db, f0):+.4f} | "
                  f"{_cos(b0, df):+.4f} | {_cos(db, df):+.4f} | "
                  f"{np.linalg.norm(db) / np.linalg.norm(b0):.2f} | {np.linalg.norm(df) / np.linalg.norm(f0):.2f} |")


if __name__ == "__main__":
    main()
