"""Relaxation throughput of the paper's 784-512-512-10 network against the machine's roofline.

Measures, in one run and on the same inputs:
  * the roofline: the matrix products of one vector-field evaluation alone, in a jitted loop;
  * vector-field evaluations per second of the Euler path and of the adaptive (Tsit5) path;
  * steps and evaluations each solver needs to bring the residual ‖μ‖∞ below 1e-4 (the stiff
    Kvaerno5 is left out: its Newton solves use a dense Jacobian of the whole batch state, far
    too costly at this size — it is meant for small networks);
  * a Tsit5 free phase with the minibatch as one ODE state against `vmap` over samples;
  * the cost per example of one full training step (free phase, nudged phase, endpoint update,
    optax SGD) with 60 free and 20 nudged Euler steps, the common peer setting.

    python studies/benchmarks/relaxation.py [--batches 20 128] [--repeats 5]
"""

import argparse
import platform
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

import ctgep
from _timing import best_time

SIZES = (784, 512, 512, 10)


def inputs(batch, key):
    k1, k2 = jr.split(key)
    x = jr.uniform(k1, (batch, SIZES[0])) * jr.bernoulli(k2, 0.2, (batch, SIZES[0]))  # MNIST-like sparsity
    y = jax.nn.one_hot(jnp.arange(batch) % 10, 10)
    return x, y


def roofline(net, batch, n_evals, repeats):
    """The products of one μ evaluation (input drive excluded: it is computed once per phase)."""
    Wf, Wb = net.Wf, net.Wb

    @jax.jit
    def loop(s1, s2, s3):
        def body(_, s):
            s1, s2, s3 = s
            return (s2 @ Wb[0].T, s1 @ Wf[1].T + s3 @ Wb[1].T, s2 @ Wf[2].T)

        return jax.lax.fori_loop(0, n_evals, body, (s1, s2, s3))

    s = tuple(jnp.full((batch, n), 1e-3) for n in SIZES[1:])
    t = best_time(lambda: loop(*s), repeats=repeats)
    flops = 2 * batch * (2 * 512 * 512 + 2 * 512 * 10) * n_evals
    return n_evals / t, flops / t


def euler_rate(net, x, n_evals, repeats):
    solver = ctgep.Euler(dt=0.5)
    run = lambda: ctgep.free_phase(net, x, solver=solver, t_max=0.5 * n_evals, stop_at_steady_state=False).state
    return n_evals / best_time(run, repeats=repeats)


def adaptive_rate(net, x, repeats, t_max=20.0):
    run = lambda: ctgep.free_phase(net, x, solver="tsit5", t_max=t_max, stop_at_steady_state=False)
    r = run()
    steps = int(r.steps[0])
    evals = 6 * steps + 1  # Tsit5 is FSAL: 6 new stages per step, plus the first
    return evals / best_time(lambda: run().state, repeats=repeats), steps, evals


def steps_to_tolerance(net, x, tol=1e-4):
    rows = []
    for name, solver, per_step in [
        ("euler dt=0.5", ctgep.Euler(dt=0.5), 1),
        ("euler dt=0.2", ctgep.Euler(dt=0.2), 1),
        ("tsit5", ctgep.Adaptive(diffrax.Tsit5()), 7),  # 6 stages + the steady-state check
    ]:
        r = ctgep.free_phase(net, x, solver=solver, tol=tol, t_max=200.0)
        steps = int(r.steps[0])
        evals = steps * per_step + 1
        rows.append((name, steps, evals, float(r.t_stop[0]), bool(r.converged.all())))
    return rows


def joint_vs_vmap(net, x, repeats, t_max=20.0):
    """Seconds for one Tsit5 free phase with the batch as one ODE state and vmapped per sample."""
    run = lambda batch: (lambda: ctgep.free_phase(net, x, t_max=t_max, batch=batch).state)
    return best_time(run("joint"), repeats=repeats), best_time(run("vmap"), repeats=repeats)


def training_step_cost(net, x, y, repeats, n_free=60, n_nudged=20, dt=0.5, beta=0.5):
    params, static = eqx.partition(net, eqx.is_inexact_array)
    opt = optax.sgd(0.05)
    opt_state = opt.init(params)
    solver = ctgep.Euler(dt=dt)

    @eqx.filter_jit
    def train_step(params, opt_state, x, y):
        net = eqx.combine(params, static)
        step = ctgep.ep_step(net, x, y, beta=beta, solver=solver, t_free=n_free * dt,
                             t_nudged=n_nudged * dt, stop_at_steady_state=False)
        updates, opt_state = opt.update(ctgep.as_gradient(step.update), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    t = best_time(lambda: train_step(params, opt_state, x, y), repeats=repeats)
    return t / x.shape[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[20, 128])
    parser.add_argument("--evals", type=int, default=200, help="vector-field evaluations per timing")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(f"# ctgep relaxation benchmark — {time.strftime('%Y-%m-%d')} — {platform.processor() or platform.machine()}, "
          f"{jax.device_count()} {jax.default_backend()} device(s), jax {jax.__version__}, float32")
    net = ctgep.LayeredNetwork(SIZES, key=jr.PRNGKey(0))
    print("\n| batch | roofline evals/s | roofline GFLOP/s | Euler evals/s | Euler / roofline | Tsit5 evals/s | Tsit5 / roofline |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batches:
        x, _ = inputs(batch, jr.PRNGKey(1))
        roof, flops = roofline(net, batch, args.evals, args.repeats)
        euler = euler_rate(net, x, args.evals, args.repeats)
        tsit, _, _ = adaptive_rate(net, x, args.repeats)
        print(f"| {batch} | {roof:,.0f} | {flops / 1e9:.1f} | {euler:,.0f} | {euler / roof:.0%} | {tsit:,.0f} | {tsit / roof:.0%} |")

    x, y = inputs(20, jr.PRNGKey(1))
    print("\nSteps and vector-field evaluations to reach ‖μ‖∞ < 1e-4 (free phase, batch 20, random init):\n")
    print("| solver | steps | evaluations | stop time | all converged |")
    print("|---|---|---|---|---|")
    for name, steps, evals, t, ok in steps_to_tolerance(net, x):
        print(f"| {name} | {steps} | {evals} | {t:.1f} | {ok} |")

    joint, vmapped = joint_vs_vmap(net, x, args.repeats)
    print(f"\nTsit5 free phase to steady state, batch 20: batch as one ODE state {joint * 1e3:.1f} ms, "
          f"vmapped per sample {vmapped * 1e3:.1f} ms ({vmapped / joint:.1f}x slower)")

    cost = training_step_cost(net, x, y, args.repeats)
    print(f"\nFull training step (60 free + 20 nudged Euler steps, dt 0.5, endpoint rule, batch 20): "
          f"{cost * 1e3:.3f} ms per example")


if __name__ == "__main__":
    main()
