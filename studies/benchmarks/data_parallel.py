"""Training throughput against the number of devices (data parallelism, `training.devices`).

Runs the library's train step (what `ctgep train --devices N` runs: the minibatch split over a
1-D `jax.sharding` mesh, the parameters replicated) on a card's training data for each device
count, with a fixed number of relaxation steps (`phases.stop_at_steady_state = false`) so that
every step costs the same, and prints examples per second. By default each device takes
`--batch-per-device` examples (weak scaling: the global minibatch grows with the devices);
`--global-batch B` fixes the minibatch instead (strong scaling).

On a CPU host, `--fake N` makes XLA show N CPU devices (`--xla_force_host_platform_device_count`,
set before JAX starts); they share the host's cores, so the throughput cannot grow with N there.
On a GPU host leave `--fake` out: the counts are real GPUs.

    python studies/benchmarks/data_parallel.py --fake 4 --devices 1 2 4
    python studies/benchmarks/data_parallel.py --devices 1 2 4 8 --card models/mnist_784-512-512-10.toml --data-dir DIR
"""

import argparse
import os
import platform
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4], help="device counts to time")
    ap.add_argument("--fake", type=int, default=0, metavar="N",
                    help="show N CPU devices (XLA's host platform device count); 0: the real devices")
    ap.add_argument("--card", default="digits", help="model card (default: the built-in digits)")
    ap.add_argument("--data-dir", default=None, help="where the card's dataset is (MNIST cards)")
    ap.add_argument("--batch-per-device", type=int, default=20, help="examples per device (default 20)")
    ap.add_argument("--global-batch", type=int, default=0, help="fixed global minibatch instead (strong scaling)")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per device count (default 40)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per count; the fastest is kept")
    args = ap.parse_args(argv)
    if args.fake:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.fake}").strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import numpy as np

    import ctgep
    from ctgep._experiment.build import permutation, run_keys

    base = ctgep.load_card(args.card, ["phases.stop_at_steady_state=false"])
    data = ctgep.load_card_data(base, args.data_dir)
    print(f"{platform.node()}: {jax.device_count()} {jax.devices()[0].platform} device(s) "
          f"({jax.devices()[0].device_kind}), {os.cpu_count()} CPU cores, JAX {jax.__version__}; card "
          f"{base.name}, {len(data.y_train)} training examples, fixed {base.phases.t_free:g} + "
          f"{base.phases.t_nudged:g} time constants")
    print(f"{'devices':>7} {'batch':>6} {'examples/s':>11} {'ms/step':>8} {'vs 1 device':>11}")
    first = None
    for n in args.devices:
        bs = args.global_batch or args.batch_per_device * n
        card = base.with_overrides([f"training.devices={n}", f"training.batch_size={bs}"])
        step = ctgep.build_training_step(card, max(len(data.y_train) // bs, 1))
        _, perm_key, step_key = run_keys(card)
        perm = permutation(perm_key, np.int32(0), len(data.y_train))
        as_array = np.asarray if step.mesh is not None else jax.numpy.asarray  # as the trainer does
        x, y = as_array(data.x_train, np.float32), as_array(data.y_train, np.int32)
        net = ctgep.initial_network(card)
        opt_state, stats = step.init_optimizer(net), step.zero_stats()
        beta, augment = np.float32(card.learning.beta), np.bool_(True)
        batches = len(data.y_train) // bs

        def run(k, net=net, opt_state=opt_state, stats=stats):
            for i in range(k):
                net, opt_state, stats, _ = step.train(net, opt_state, stats, x, y, perm, np.int32(i % batches),
                                                      np.int32(i), step_key, beta, None, augment)
            return jax.block_until_ready(net)

        run(2)  # compile and warm up
        best = min(_timed(run, args.steps) for _ in range(args.repeats))
        rate = args.steps * bs / best
        first = first or rate
        print(f"{n:>7} {bs:>6} {rate:>11.0f} {1e3 * best / args.steps:>8.2f} {rate / first:>10.2f}x")
        sys.stdout.flush()


def _timed(fn, k):
    t = time.perf_counter()
    fn(k)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
