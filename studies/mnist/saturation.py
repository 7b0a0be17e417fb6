"""How saturated the hidden units of the committed MNIST runs are at the free fixed point.

Under the clipped Euler scheme (Eq. 59) a hidden state sits in [0, 1]. A unit clipped at 0 or 1
passes no error signal back and its incoming weights get no EP update for that example (its
`s^β − s⁰` is zero), so the fraction of activations inside (0, 1) bounds how much of a layer
learns from a given example. For each run's latest checkpoint and each hidden layer this prints,
over the first `--examples` training images (free phase from zero, the card's Euler horizon):
the fraction of activations at 0, inside (0, 1) and at 1, and the fraction of units that are
at 0 (or at 1) for every one of those examples.

    python studies/mnist/saturation.py --data-dir DIR [RUN_DIR ...] [--examples 2000]
"""

import argparse
import pathlib

import jax.numpy as jnp
import numpy as np

import ctgep

HERE = pathlib.Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=pathlib.Path)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--examples", type=int, default=2000)
    args = parser.parse_args()
    runs = args.runs or sorted(p.parents[1] for p in HERE.glob("*/checkpoints/latest.json"))
    data = ctgep.load_dataset("mnist", data_dir=args.data_dir)
    x = jnp.asarray(data.x_train[:args.examples], jnp.float32)
    print("| run | layer | at 0 | in (0, 1) | at 1 | units always 0 | units always 1 |")
    print("|---|---|---|---|---|---|---|")
    for run_dir in runs:
        run = ctgep.load_run(run_dir, "latest")
        p = run.card.phases
        free = ctgep.free_phase(run.net, x, solver=ctgep.Euler(dt=p.dt), t_max=p.prediction_horizon,
                                stop_at_steady_state=False, policy="flag")
        for layer, h in enumerate(free.state[:-1], start=1):
            h = np.asarray(h)
            low, high = h <= 0, h >= 1
            print(f"| {run_dir.name} | {layer} | {low.mean():.2f} | {(~low & ~high).mean():.2f} | "
                  f"{high.mean():.2f} | {low.all(0).mean():.2f} | {high.all(0).mean():.2f} |", flush=True)


if __name__ == "__main__":
    main()
