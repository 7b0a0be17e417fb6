"""Which way one EP update moves the feedforward/feedback alignment, one-sided against centered.

The endpoint rule changes the feedback matrix `Wb_l` (layer l+1 → l) by `ΔWb_l = ds_l ρ(s⁰_{l+1})ᵀ`,
with `ds = (s^β − s⁰)/β` (one-sided) or `(s^{+β} − s^{−β})/2β` (centered). The cosine between
`ΔWb_l` and `Wf_{l+1}ᵀ` says which way that update moves the paper's `tr(Wf_{l+1}·Wb_l)`. For a
run's final (or, with `--at-init`, initial) network this script draws minibatches of training
images, relaxes them from zero and prints that cosine per pair, for both nudgings, and again with
the units of layer l that sit at the upper clip bound 1 left out of `ds_l`.

We wrote it to test one explanation of the 3-hidden-layer anti-alignment (a unit clipped at 1
can only move down under a one-sided nudge, which would bias `ds` negative). The measurement
rejects it: leaving those units out changes no cosine beyond its error bar, and at
initialisation no unit sits at 1 (see the README's MNIST section).

    python studies/mnist/update_drift.py RUN_DIR --data-dir DIR [--batches 20] [--at-init]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import ctgep
from ctgep import build_solver, get_activation, initial_network


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batches", type=int, default=20, help="minibatches of 20 training images")
    parser.add_argument("--beta-one-sided", type=float, default=1.0)
    parser.add_argument("--beta-centered", type=float, default=0.7)
    parser.add_argument("--at-init", action="store_true", help="use the run's initial network (its card and seed)")
    args = parser.parse_args()

    run = ctgep.load_run(args.run, "latest")
    card, net = run.card, (initial_network(run.card) if args.at_init else run.net)
    data = ctgep.load_dataset(card.data.dataset, data_dir=args.data_dir)
    solver = build_solver(card)
    p = card.phases
    n_out = card.model.sizes[-1]
    hi = net.state_bounds[1]
    rho = get_activation(card.model.activation)

    @jax.jit
    def pair_cosines(x, labels):
        y = jax.nn.one_hot(labels, n_out, dtype=x.dtype)
        out = {}
        for nudging, beta in (("one-sided", args.beta_one_sided), ("centered", args.beta_centered)):
            r = ctgep.ep_step(net, x, y, beta=beta, nudging=nudging, solver=solver, t_free=p.t_free,
                              t_nudged=p.t_nudged, tol=p.tol, stop_at_steady_state=False, policy="flag")
            s0 = r.free.state
            ds = [sum((n.state[l] - s0[l]) / b for n, b in zip(r.nudged, r.betas)) / len(r.betas)
                  for l in range(len(s0))]
            rates = [rho(s) for s in s0]
            for l in range(len(net.Wb)):
                wf_t = net.Wf[l + 1].T
                at_hi = s0[l] >= hi
                full = ds[l].T @ rates[l + 1]
                kept = jnp.where(at_hi, 0.0, ds[l]).T @ rates[l + 1]
                out[(nudging, l)] = (_cos(full, wf_t), _cos(kept, wf_t), jnp.mean(at_hi))
        return out

    rng = np.random.default_rng(0)
    rows = {}
    for _ in range(args.batches):
        idx = rng.choice(len(data.x_train), 20, replace=False)
        res = pair_cosines(jnp.asarray(data.x_train[idx]), jnp.asarray(data.y_train[idx]))
        for k, v in res.items():
            rows.setdefault(k, []).append([float(a) for a in v])
    which = "initial" if args.at_init else "final"
    print(f"{args.run} ({which} weights): {args.batches} minibatches of 20 training images, "
          f"free phase from zero ({p.t_free:g} / {p.t_nudged:g} time units)")
    print("| pair | nudging | β | cos(ΔWb, Wf ᵀ), all units | units of layer l at 1 left out | share of layer l at 1 |")
    print("|---|---|---|---|---|---|")
    for (nudging, l), v in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0] != "one-sided")):
        a = np.asarray(v)
        beta = args.beta_one_sided if nudging == "one-sided" else args.beta_centered
        print(f"| {l + 1}–{l + 2} | {nudging} | {beta:g} | {a[:, 0].mean():+.4f} ± {a[:, 0].std(ddof=1) / np.sqrt(len(a)):.4f} | "
              f"{a[:, 1].mean():+.4f} ± {a[:, 1].std(ddof=1) / np.sqrt(len(a)):.4f} | {a[:, 2].mean():.2f} |")


def _cos(a, b):
    return jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))


if __name__ == "__main__":
    main()
