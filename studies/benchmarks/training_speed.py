"""Training throughput of 784-512-512-10 on MNIST against the same matrix products alone.

Runs the library's own jitted training step (the code `ctgep train` runs) with the settings of
`models/mnist_784-512-512-10.toml` over a subset of MNIST, for these settings of the
relaxation, in one process:

  * ``fixed``  — the paper-faithful common peer setting: exactly 60 free and 20 nudged clipped
    Euler steps (dt 0.5), cold start from zero, endpoint rule, batch 20;
  * ``stop``   — the same, but each phase ends once every sample of the minibatch has
    ‖μ‖∞ < tol (at most 60 / 20 steps);
  * ``warm``   — ``stop`` plus warm starts: each example's free phase starts from its own free
    state of the previous epoch (`phases.warm_start`). The fixed point is unchanged; only the
    number of steps needed to reach it falls once the weights move slowly;
  * ``warm-fixed`` — warm starts with exactly 60 + 20 steps, the card's training setting;
  * ``jacobi`` — warm starts and the preconditioned Euler step at dt 1 (`phases.precondition`,
    the nonlinear Jacobi iteration: the same fixed point), exactly 30 free + 10 nudged steps;
  * ``gauss-seidel`` — ``jacobi`` with the layers updated in turn (`phases.alternate`: the odd
    layers, then the even ones from their new state; block Gauss–Seidel, the same fixed point),
    exactly 15 free + 5 nudged steps, each costing the products of one synchronous step.
  * ``gauss-seidel-shift`` — ``gauss-seidel`` with 20 free steps and each training image shifted
    by up to one pixel (`data.shift=1`), the setting of the shifted-images runs;
  * ``gs-endpoint``, ``gs-integrated``, ``gs-continual`` (and ``…-centered``: β 0.5, ±β) — the
    three learning rules at the ``gauss-seidel`` setting, one-sided or centered.

For each it reports the training time per example (timed over the last epoch) and the mean
number of vector-field evaluations per minibatch, then times *the same matrix products alone*
— the per-evaluation products for that many evaluations, the input drive and the outer
products of the update — in a jitted loop of the same shapes, and prints the ratio
(target ≥ 50 %). The network starts from a trained checkpoint (``--from``, default the
committed 784-512-512-10 run ``_endpoint_warm80``) so that the warm-start figure is the one of late training;
``--from ''`` starts from a Glorot initialisation instead.

With ``--batch-sizes 20 64 128`` each setting is also run at those minibatch sizes (same number
of steps per phase).

    python studies/benchmarks/training_speed.py --data-dir DIR [--examples 6000] [--epochs 2]
        [--settings fixed stop warm warm-fixed] [--batch-sizes 20]
"""

import argparse
import pathlib
import platform
import tempfile
import time

import jax
import jax.numpy as jnp

import ctgep
from _timing import best_time

ROOT = pathlib.Path(__file__).resolve().parents[2]
CARD = ROOT / "models" / "mnist_784-512-512-10.toml"
RUN = ROOT / "studies" / "mnist" / "784-512-512-10_endpoint_warm80"

SETTINGS = {
    "fixed": ["phases.stop_at_steady_state=false", "phases.warm_start=false"],
    "stop": ["phases.stop_at_steady_state=true", "phases.warm_start=false"],
    "warm": ["phases.stop_at_steady_state=true", "phases.warm_start=true"],
    "warm-fixed": ["phases.stop_at_steady_state=false", "phases.warm_start=true"],
    "jacobi": ["phases.stop_at_steady_state=false", "phases.warm_start=true", "phases.dt=1.0",
               "phases.precondition=true", "phases.t_free=30", "phases.t_nudged=10"],
    "gauss-seidel": ["phases.stop_at_steady_state=false", "phases.warm_start=true", "phases.dt=1.0",
                     "phases.precondition=true", "phases.alternate=true", "phases.t_free=15",
                     "phases.t_nudged=5"],
}
# The setting of the shifted-images runs (`_gauss_seidel_shift1`): 20 free steps, images shifted.
SETTINGS["gauss-seidel-shift"] = SETTINGS["gauss-seidel"] + ["phases.t_free=20", "data.shift=1"]
# The learning rules at the Gauss–Seidel setting (issue 21): endpoint, integrated and continual
# ν, one-sided (β 1) and centered (β 0.5, two nudged phases).
_RULES = {"endpoint": [], "integrated": ["learning.rule=integrated"],
          "continual": ["learning.rule=continual", "learning.eta=0.001"]}
for _rule, _extra in _RULES.items():
    SETTINGS[f"gs-{_rule}"] = SETTINGS["gauss-seidel"] + _extra
    SETTINGS[f"gs-{_rule}-centered"] = SETTINGS["gauss-seidel"] + _extra + [
        "learning.nudging=centered", "learning.beta=0.5"]


def products_alone(net, batch, evals_per_batch, repeats=5):
    """Seconds per minibatch of the matrix products a training step performs, and nothing else.

    Per evaluation of μ: `Wb₁ρ(s₂)`, `Wf₂ρ(s₁)`, `Wb₂ρ(s₃)`, `Wf₃ρ(s₂)`. Once per minibatch: the
    input drive `Wf₁ρ(x)` (the phases share it) and the endpoint update's outer products.
    """
    # The transposed weights are formed once, outside the loop, as the library's phases do
    # (transposing inside the loop costs about 20 %, see matmul_batch20.py).
    Wf, Wb = [jnp.asarray(w.T) for w in net.Wf], [jnp.asarray(w.T) for w in net.Wb]
    n_evals = int(round(evals_per_batch))

    @jax.jit
    def step(x, s1, s2, s3):
        def body(_, s):
            a, b, c = s
            return (b @ Wb[0], a @ Wf[1] + c @ Wb[1], b @ Wf[2])

        s1, s2, s3 = jax.lax.fori_loop(0, n_evals, body, (s1 + x @ Wf[0], s2, s3))
        upd = (s1.T @ x, s1.T @ s2, s2.T @ s1, s2.T @ s3, s3.T @ s2)  # one per weight matrix
        return s1, s2, s3, upd

    x = jnp.full((batch, Wf[0].shape[0]), 0.1)
    s = tuple(jnp.full((batch, w.shape[1]), 1e-3) for w in Wf)
    return best_time(lambda: step(x, *s), repeats=repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: ctgep's search order)")
    parser.add_argument("--examples", type=int, default=6000, help="training examples per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per setting; the last is timed")
    parser.add_argument("--from", dest="start", default=str(RUN), help="run directory to start from ('' = fresh)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[20], help="minibatch sizes to time")
    args = parser.parse_args()

    print(f"# ctgep training-speed benchmark — {time.strftime('%Y-%m-%d')} — "
          f"{platform.processor() or platform.machine()}, {jax.device_count()} {jax.default_backend()} "
          f"device(s), jax {jax.__version__}, float32")
    print(f"# {CARD.name} (Euler dt 0.5, ≤ 60 free + ≤ 20 nudged steps, tol 1e-4; jacobi, gauss-seidel: dt 1, see --help); "
          f"{args.examples} MNIST examples × {args.epochs} epochs per setting; "
          f"start: {args.start or 'Glorot initialisation'}\n")
    print("| setting | batch | ms / example | examples / s | evaluations / batch (free + nudged) "
          "| products alone, ms / example | ratio |")
    print("|---|---|---|---|---|---|---|")
    start_net = ctgep.load_run(args.start, "latest").net if args.start else None
    for name, batch in ((n, b) for n in args.settings for b in args.batch_sizes):
        card = ctgep.load_card(CARD).with_overrides(SETTINGS[name] + [f"training.batch_size={batch}",
            f"data.max_train={args.examples}", "data.max_test=1", f"training.epochs={args.epochs}",
            "training.checkpoint_every=0"])
        with tempfile.TemporaryDirectory() as tmp:
            # From a fresh copy of the start network for each setting (fresh optimiser state).
            start = None if start_net is None else jax.tree_util.tree_map(jnp.copy, start_net)
            run = ctgep.train(card, tmp, data_dir=args.data_dir, net=start, progress=False,
                              log=lambda *a: None)
        net, last = run.net, run.summary["final"]
        per_ex = 1.0 / last["examples_per_s"]
        evals = last["free_steps"] + last["nudged_steps"]
        alone = products_alone(net, card.training.batch_size, evals) / card.training.batch_size
        print(f"| {name} | {batch} | {per_ex * 1e3:.3f} | {last['examples_per_s']:,.0f} | {evals:.1f} "
              f"({last['free_steps']:.1f} + {last['nudged_steps']:.1f}) | {alone * 1e3:.3f} | {alone / per_ex:.0%} |",
              flush=True)


if __name__ == "__main__":
    main()
