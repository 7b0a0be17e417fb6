"""How fast can this machine do the relaxation's products at batch 20?

The hidden–hidden products of one vector-field evaluation of 784-512-512-10 are two
(20 × 512) · (512 × 512) matrix products. This times them (with the hard-sigmoid clip between
steps, in a jitted `fori_loop` of `--steps` iterations) laid out four ways:

  * ``transposed in the loop``: `ρ(s) @ W.T` with `W` a loop input, as ctgep did at first;
  * ``hoisted``: `ρ(s) @ Wᵀ` with `Wᵀ` formed once before the loop, as ctgep does now
    (`LayeredNetwork.drive` hands the phase the transposed weights);
  * ``feature-major``: `W @ ρ(s)ᵀ`, the state stored as (512, 20);
  * ``batched``: both products as one batched `einsum` over a stacked pair.

Pin it to one core (`taskset -c 0 python …`) to compare one core with two.

    python studies/benchmarks/matmul_batch20.py [--batch 20] [--steps 200]
"""

import argparse

import jax
import jax.numpy as jnp
import jax.random as jr
from _timing import best_time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    B, n, steps = args.batch, 512, args.steps
    k1, k2 = jr.split(jr.PRNGKey(0))
    W1, W2 = jr.normal(k1, (n, n)) * 0.05, jr.normal(k2, (n, n)) * 0.05
    a, b = jnp.full((B, n), 1e-3), jnp.full((B, n), 2e-3)

    def in_loop(a, b, W1, W2):
        def body(_, s):
            return jnp.clip(s[1] @ W1.T, 0, 1), jnp.clip(s[0] @ W2.T, 0, 1)
        return jax.lax.fori_loop(0, steps, body, (a, b))

    def hoisted(a, b, W1, W2):
        T1, T2 = W1.T, W2.T
        def body(_, s):
            return jnp.clip(s[1] @ T1, 0, 1), jnp.clip(s[0] @ T2, 0, 1)
        return jax.lax.fori_loop(0, steps, body, (a, b))

    def feature_major(a, b, W1, W2):
        def body(_, s):
            return jnp.clip(W1 @ s[1], 0, 1), jnp.clip(W2 @ s[0], 0, 1)
        return jax.lax.fori_loop(0, steps, body, (a.T, b.T))

    def batched(a, b, W1, W2):
        Ws = jnp.stack([W1.T, W2.T])
        def body(_, s):
            return jnp.clip(jnp.einsum("kbi,kij->kbj", s[::-1], Ws), 0, 1)
        return jax.lax.fori_loop(0, steps, body, jnp.stack([a, b]))

    flops = 2 * B * 2 * n * n * steps
    print(f"# batch {B}, two {B}×{n}·{n}×{n} products per step, {steps} steps; jax {jax.__version__}\n")
    print("| layout | GFLOP/s |")
    print("|---|---|")
    for name, fn in [("transposed in the loop", in_loop), ("hoisted", hoisted),
                     ("feature-major", feature_major), ("batched", batched), ("transposed in the loop", in_loop)]:
        t = best_time(jax.jit(fn), a, b, W1, W2)
        print(f"| {name} | {flops / t / 1e9:.1f} |", flush=True)


if __name__ == "__main__":
    main()
