"""Test error of a run's checkpoint read with the card's relaxation and with a damped one.

When the block Gauss–Seidel iteration matrix has an eigenvalue below −1 (`ctgep stability`
reports its radius), the card's dt = 1 readout flips between two states instead of settling,
although the ODE's fixed point is stable. Halving the step maps those eigenvalues inside the
unit circle; so does halving it per sample only where its steps stop shrinking (`backtrack`,
the card's horizon). This prints, for the first `--examples` test images, the error and the
fraction of free phases that settled (‖μ‖∞ < 1e-4 at the end) under each relaxation.

    python studies/stability/cnn_readout.py studies/mnist/cnn_fast --checkpoint latest --data-dir DIR --examples 2000 [--relaxations card backtrack]
"""

import argparse
import time

import jax.numpy as jnp
import numpy as np

import ctgep

RELAXATIONS = {
    "card": (lambda p: ctgep.Euler(dt=p.dt, precondition=p.precondition, alternate=p.alternate),
             lambda p: p.prediction_horizon),
    "damped": (lambda p: ctgep.Euler(dt=p.dt / 2, precondition=p.precondition, alternate=p.alternate),
               lambda p: 200 * p.dt / 2),
    # The card's step, halved per sample whenever its steps stop shrinking (phases.backtrack).
    "backtrack": (lambda p: ctgep.Euler(dt=p.dt, precondition=p.precondition, alternate=p.alternate, backtrack=True),
                  lambda p: p.prediction_horizon),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--checkpoint", default="latest", choices=("latest", "best"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--relaxations", nargs="+", default=list(RELAXATIONS), choices=list(RELAXATIONS))
    args = parser.parse_args()
    run = ctgep.load_run(args.run, args.checkpoint)
    data = ctgep.load_dataset(run.card.data.dataset, data_dir=args.data_dir)
    x = jnp.asarray(data.x_test[:args.examples], jnp.float32)
    labels = np.asarray(data.y_test[:args.examples])
    p = run.card.phases
    for name in args.relaxations:
        make_solver, horizon = RELAXATIONS[name]
        solver, t_max = make_solver(p), horizon(p)
        start, wrong, settled = time.perf_counter(), [], []
        for i in range(0, len(x), 500):
            r = ctgep.free_phase(run.net, x[i:i + 500], solver=solver, t_max=t_max, tol=1e-4,
                                 stop_at_steady_state=False, policy="flag")
            wrong.append(np.asarray(r.state[-1]).argmax(1) != labels[i:i + 500])
            settled.append(np.asarray(r.converged))
        print(f"{args.checkpoint} {name} ({solver}, t_max {t_max:g}): test error "
              f"{np.concatenate(wrong).mean():.4f} on {len(x)} images, settled {np.concatenate(settled).mean():.3f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
