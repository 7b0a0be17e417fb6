"""What the backtracking safeguard (`ctgep.Euler(backtrack=True)`, `phases.backtrack`) costs.

For the MLP 784-512-512-10 and the CNN of models/mnist_cnn_fast.toml (fresh weights, batch 20,
random MNIST-like inputs), times a free phase of block Gauss–Seidel at dt 1 with exactly
`--steps` steps (no steady-state stop, as in training) with and without backtracking, the two
alternated `--rounds` times in one process so that both see the same machine load, and prints
the fastest time of each and their ratio. Backtracking adds a per-sample ‖μ‖∞ and a few
elementwise operations per step; it never adds a vector-field evaluation.

    python studies/benchmarks/backtrack.py [--steps 25] [--rounds 5]
"""

import argparse
import pathlib
import platform

import jax
import jax.numpy as jnp
import jax.random as jr

import ctgep
from _timing import best_time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def networks():
    key = jr.PRNGKey(0)
    mlp = ctgep.LayeredNetwork((784, 512, 512, 10), key=key)
    cnn = ctgep.initial_network(ctgep.load_card(ROOT / "models" / "mnist_cnn_fast.toml"))
    return {"784-512-512-10": mlp, "cnn_fast": cnn}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    k1, k2 = jr.split(jr.PRNGKey(1))
    x = jr.uniform(k1, (args.batch, 784)) * jr.bernoulli(k2, 0.2, (args.batch, 784))
    print(f"{platform.processor() or platform.machine()}, JAX {jax.__version__}, {jax.devices()[0].platform}, "
          f"batch {args.batch}, {args.steps} steps\n")
    print("| network | Gauss–Seidel [ms] | with backtracking [ms] | ratio |")
    print("|---|---|---|---|")
    for name, net in networks().items():
        runs = {}
        for backtrack in (False, True):
            solver = ctgep.Euler(dt=1.0, precondition=True, alternate=True, backtrack=backtrack)
            phase = jax.jit(lambda n, x, solver=solver: ctgep.free_phase(
                n, x, solver=solver, t_max=float(args.steps), stop_at_steady_state=False).state)
            runs[backtrack] = (phase, [])
        for _ in range(args.rounds):  # alternate the two, one timing each per round
            for phase, times in runs.values():
                times.append(best_time(phase, net, x, repeats=3))
        plain, safe = (min(times) for _, times in runs.values())
        print(f"| {name} | {1e3 * plain:.2f} | {1e3 * safe:.2f} | {safe / plain:.3f} |")


if __name__ == "__main__":
    main()
