"""How fast three Euler schemes reach the same fixed points of a trained MNIST network.

The paper's clipped Euler step (dt 0.5), the preconditioned step at dt 1 (the nonlinear Jacobi
iteration, `phases.precondition`) and the same with the layers updated in turn (block
Gauss–Seidel, `phases.alternate`) share their fixed points; they differ in how many steps they
take to get there. For the first `--examples` training images this prints, per scheme and number
of steps, the distance ‖s − s*‖∞ to the fixed point after the free phase (from zero) and after
the nudged phase (β from the card, from the exact free fixed point, a third as many steps as the
free phase), and the fraction of samples still unsettled (‖μ‖∞ ≥ 1e-4). Each step of every
scheme costs the same matrix products. The reference fixed points are 400 steps of each scheme;
their spread is printed too. Writes a figure of distance against steps.

    python studies/mnist/relaxation_orders.py studies/mnist/784-512-512-10_jacobi --data-dir DIR \
        [--examples 200] [--out studies/mnist/relaxation_orders.png]
"""

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import ctgep

STEPS = (5, 10, 15, 20, 30, 45, 60, 90)
SCHEMES = {
    "paper (dt 0.5)": ctgep.Euler(dt=0.5),
    "Jacobi (dt 1, preconditioned)": ctgep.Euler(dt=1.0, precondition=True),
    "Gauss–Seidel (+ alternate)": ctgep.Euler(dt=1.0, precondition=True, alternate=True),
}


def _distance(a, b) -> float:
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(a, b))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="trained run directory (its latest checkpoint is used)")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: ctgep's search order)")
    parser.add_argument("--examples", type=int, default=200, help="training images to relax")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).with_name("relaxation_orders.png")))
    args = parser.parse_args()

    run = ctgep.load_run(args.run, "latest")
    net, beta = run.net, float(run.card.learning.beta)
    data = ctgep.load_dataset("mnist", data_dir=args.data_dir)
    x = jnp.asarray(data.x_train[: args.examples])
    y = jax.nn.one_hot(jnp.asarray(data.y_train[: args.examples]), net.sizes[-1], dtype=x.dtype)

    def free(solver, n):
        return ctgep.free_phase(net, x, solver=solver, t_max=n * solver.dt, stop_at_steady_state=False)

    def nudged(solver, start, n):
        return ctgep.nudged_phase(net, x, y, start, beta=beta, solver=solver, t_max=n * solver.dt,
                                  stop_at_steady_state=False)

    refs = {name: free(s, 400) for name, s in SCHEMES.items()}
    ref_free = refs["Gauss–Seidel (+ alternate)"]
    ref_nudged = {name: nudged(s, ref_free, 400) for name, s in SCHEMES.items()}
    ref_n = ref_nudged["Gauss–Seidel (+ alternate)"]
    spread_free = max(_distance(r.state, ref_free.state) for r in refs.values())
    spread_nudged = max(_distance(r.state, ref_n.state) for r in ref_nudged.values())

    print(f"# {args.run} (latest checkpoint), first {args.examples} training images, β {beta}")
    print(f"# reference fixed points: the three schemes' 400-step states agree to "
          f"{spread_free:.1e} (free) and {spread_nudged:.1e} (nudged)\n")
    print("| scheme | free steps | free ‖s − s*‖∞ | free unsettled | nudged steps | nudged ‖s − s*‖∞ | nudged unsettled |")
    print("|---|---|---|---|---|---|---|")
    curves = {}
    for name, solver in SCHEMES.items():
        rows = []
        for n in STEPS:
            f = free(solver, n)
            m = max(n // 3, 1)
            g = nudged(solver, ref_free, m)
            rows.append((n, _distance(f.state, ref_free.state), _distance(g.state, ref_n.state)))
            print(f"| {name} | {n} | {rows[-1][1]:.2e} | {float(jnp.mean(f.residual >= 1e-4)):.2f} | {m} "
                  f"| {rows[-1][2]:.2e} | {float(jnp.mean(g.residual >= 1e-4)):.2f} |", flush=True)
        curves[name] = np.array(rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for name, c in curves.items():
        axes[0].semilogy(c[:, 0], np.maximum(c[:, 1], 1e-8), "o-", label=name)
        axes[1].semilogy(np.maximum(c[:, 0] // 3, 1), np.maximum(c[:, 2], 1e-8), "o-", label=name)
    axes[0].set(title="free phase, from zero", xlabel="steps (same products each)", ylabel="‖s − s*‖∞")
    axes[1].set(title=f"nudged phase (β {beta:g}), from s⁰", xlabel="steps")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"\nfigure: {args.out}")


if __name__ == "__main__":
    main()
