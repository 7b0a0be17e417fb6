"""Feedforward/feedback alignment of the committed MNIST runs, from initialisation to the end.

The run directories' `metrics.csv` give the alignment after each epoch; the value before the
first update is recomputed here from the run's card and seed (the same draw as `ctgep train`).
For each adjacent pair of layers it prints the cosine between `Wb_l` and `Wf_{l+1}ᵀ` and the
paper's `tr(Wf_{l+1}·Wb_l)` at initialisation, after the first epoch and at the end.

    python studies/mnist/alignment.py [RUN_DIR ...]   (default: every run under studies/mnist/)
"""

import argparse
import pathlib

import ctgep
from ctgep._train import initial_network

HERE = pathlib.Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=pathlib.Path)
    args = parser.parse_args()
    runs = args.runs or sorted(p.parent for p in HERE.glob("*/metrics.csv"))
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


if __name__ == "__main__":
    main()
