"""Training throughput of the paper's MNIST CNN (models/mnist_cnn*.toml) against the same
convolutions alone, timed in one run.

For each setting (relaxation × feature-map layout × minibatch size) it runs the library's own
jitted training step (what `ctgep train` runs: free phase, nudged phase, endpoint update and
the optimiser) over `--examples` MNIST training examples after one compiling epoch, and reports
the milliseconds per example. It then times, in a jitted loop of the same shapes, *the
convolutions and products alone* that one training step performs: per vector-field evaluation
the stride-2 convolution into the second map, the transposed convolution back to the first and
the dense products both ways, for as many evaluations as the step's Euler steps make, plus
once per phase the input's convolution, and the update's transposed convolutions (one VJP of
μ). The ratio (alone / step) says how much of the step is the arithmetic itself.

Settings: ``paper`` (clipped Euler dt 0.5, exactly 60 free + 20 nudged steps: models/mnist_cnn.toml)
and ``gauss-seidel`` (block Gauss–Seidel, dt 1, the steps of models/mnist_cnn_fast.toml: 15 + 5
when the table in studies/benchmarks/RESULTS.md was measured, 25 + 8 since).

    python studies/benchmarks/cnn_speed.py --data-dir DIR [--examples 1000]
        [--settings gauss-seidel paper] [--layouts NHWC NCHW] [--batch-sizes 20 50]
        [--poolings average max]

With ``max`` pooling (``model.pooling = "max"``) the convolutions run at stride 1 (a smooth max
over each block, the feedback weighted by its softmax), without the average pooling's folding.
"""

import argparse
import datetime
import os
import pathlib
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import ctgep

from _timing import best_time

ROOT = pathlib.Path(__file__).resolve().parents[2]
CARDS = {"paper": ROOT / "models" / "mnist_cnn.toml", "gauss-seidel": ROOT / "models" / "mnist_cnn_fast.toml"}


def time_training(card, data, n_examples):
    """ms per example of the compiled train step, timed over `n_examples` after a compiling pass."""
    bs = card.training.batch_size
    n_batches = n_examples // bs
    step = ctgep.build_training_step(card, n_batches)
    net = ctgep.initial_network(card)
    opt_state = step.init_optimizer(net)
    x = jnp.asarray(data.x_train[: n_batches * bs])
    y = jnp.asarray(data.y_train[: n_batches * bs], jnp.int32)
    perm = jnp.arange(n_batches * bs, dtype=jnp.int32)
    key = jr.key(0)
    beta = np.float32(card.learning.beta)
    rows = None
    if card.phases.warm_start:
        rows = jnp.zeros((bs, sum(card.model.sizes[1:])), jnp.float32)

    def epoch(net, opt_state):
        stats = step.zero_stats()
        for b in range(n_batches):
            net, opt_state, stats, free = step.train(net, opt_state, stats, x, y, perm, np.int32(b),
                                                     np.int32(b), key, beta, rows)
        jax.block_until_ready(stats)
        return net, opt_state

    net, opt_state = epoch(net, opt_state)  # compiles, and moves the weights off their init
    t = time.perf_counter()
    epoch(net, opt_state)
    return 1e3 * (time.perf_counter() - t) / (n_batches * bs)


def evaluations(card):
    """Vector-field evaluations of one training step: Euler steps of both phases (an
    alternating step evaluates each half of the layers once: the products of one step)."""
    p = card.phases
    return round(p.t_free / p.dt) + round(p.t_nudged / p.dt)


def time_convolutions(card, n_evals):
    """ms per example of the same convolutions and products alone, for one training step."""
    bs = card.training.batch_size
    net = ctgep.initial_network(card)
    x = jr.uniform(jr.key(1), (bs, net.sizes[0]))
    s = tuple(jr.uniform(k, (bs, n)) for k, n in zip(jr.split(jr.key(2), 3), net.sizes[1:]))

    @eqx.filter_jit
    def alone(net, x, s):
        def phase(s):
            inputs, fwd, back, w_out_t, v_t = net.drive(x)  # input conv, once per phase

            def body(_, s):
                s1, s2, s3 = s
                if net.pooling == "max":  # stride-1 conv, smooth max, weighted transposed conv
                    a, weights = net._max_forward(s1, 2, fwd[1])
                    b = net._max_backward(s2, 1, back[0], weights)
                else:
                    a = net._forward(s1, 2, fwd[1])  # map 1 → map 2 (stride-2 conv)
                    b = net._backward(s2, 1, back[0])  # map 2 → map 1 (transposed conv)
                c = s2 @ w_out_t  # map 2 → output
                d = s3 @ v_t  # output → map 2
                return (0.5 * (s1 + b + inputs[0]), 0.5 * (s2 + a + d), 0.5 * (s3 + c))

            return jax.lax.fori_loop(0, n_evals // 2, body, s)

        s = phase(phase(s))  # free and nudged phases: n_evals evaluations in all

        # The update: one VJP of μ with respect to the parameters (the kernels' transposed convs).
        params, static = eqx.partition(net, eqx.is_inexact_array)
        _, vjp = jax.vjp(lambda p: eqx.combine(p, static).vector_field(s, eqx.combine(p, static).drive(x)), params)
        return vjp(s)[0]

    return 1e3 * best_time(alone, net, x, s, repeats=5) / bs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("CTGEP_DATA_DIR"))
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--settings", nargs="+", default=["gauss-seidel", "paper"], choices=list(CARDS))
    parser.add_argument("--layouts", nargs="+", default=["NHWC", "NCHW"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[20, 50])
    parser.add_argument("--poolings", nargs="+", default=["average"], choices=["average", "max"])
    args = parser.parse_args(argv)

    data = ctgep.load_dataset("mnist", data_dir=args.data_dir, download=False)
    print(f"# {datetime.datetime.now().isoformat(timespec='minutes')}  {platform.node()}  "
          f"{os.cpu_count()} CPUs  jax {jax.__version__}  load {os.getloadavg()[0]:.1f}")
    print("| setting | pooling | layout | batch | evaluations | step, ms/example | convolutions alone, ms/example | ratio | epoch (60 000), min |")
    print("|---|---|---|---|---|---|---|---|---|")
    for setting in args.settings:
        for pooling in args.poolings:
            for layout in args.layouts:
                for bs in args.batch_sizes:
                    card = ctgep.load_card(CARDS[setting], [f"model.layout={layout}", f"training.batch_size={bs}",
                                                            f"model.pooling={pooling}"])
                    n = evaluations(card)
                    step_ms = time_training(card, data, args.examples)
                    conv_ms = time_convolutions(card, n)
                    print(f"| {setting} | {pooling} | {layout} | {bs} | {n} | {step_ms:.2f} | {conv_ms:.2f} | "
                          f"{conv_ms / step_ms:.0%} | {step_ms * 60000 / 1e3 / 60:.1f} |", flush=True)


if __name__ == "__main__":
    main()
