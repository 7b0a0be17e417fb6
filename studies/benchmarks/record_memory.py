"""Peak memory of `ctgep.record` when recording every n-th step of a long phase vs every step.

Each configuration runs in a fresh subprocess (so peaks do not mix) and reports the process's
peak resident memory (`resource.getrusage(...).ru_maxrss`) and the recorded dataset's size.
The phases run the paper's Euler scheme for a fixed horizon without the steady-state stop, so
every configuration integrates exactly the same number of steps.

    python studies/benchmarks/record_memory.py                 # 64-128-128-10, batch 16, 4000 steps
    python studies/benchmarks/record_memory.py --t 4000 --strides 1,10,100,1000
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def child(args):
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import ctgep

    sizes = [int(s) for s in args.sizes.split(",")]
    net = ctgep.LayeredNetwork(sizes, key=jr.PRNGKey(0))
    x = jr.uniform(jr.PRNGKey(1), (args.batch, sizes[0]))
    y = jax.nn.one_hot(jnp.arange(args.batch) % sizes[-1], sizes[-1])
    start = time.perf_counter()
    ds = ctgep.record(net, x, y, beta=0.5, solver=ctgep.Euler(dt=0.5), t_free=args.t, t_nudged=args.t,
                      sampling=args.stride, stop_at_steady_state=False)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"stride": args.stride, "steps": int(ds.steps.max()), "time_points": ds.sizes["time"],
                      "dataset_mb": ds.nbytes / 2**20, "peak_rss_mb": peak_mb, "wall_s": wall}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64,128,128,10")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--t", type=float, default=2000.0, help="horizon of each phase (steps = t / 0.5)")
    p.add_argument("--strides", default="1,10,100,1000")
    p.add_argument("--stride", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stride is not None:
        return child(args)
    rows = []
    for stride in [int(s) for s in args.strides.split(",")]:
        cmd = [sys.executable, __file__, "--sizes", args.sizes, "--batch", str(args.batch), "--t", str(args.t),
               "--stride", str(stride)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    base = rows[0]
    print(f"network {args.sizes}, batch {args.batch}, Euler dt=0.5, {base['steps']} steps per phase, all neurons recorded")
    print("| every n-th step | time points | dataset MB | peak RSS MB | peak RSS vs every step | dataset vs every step | wall s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stride']} | {r['time_points']} | {r['dataset_mb']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] / base['peak_rss_mb']:.3f} | {r['dataset_mb'] / base['dataset_mb']:.4f} | {r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
