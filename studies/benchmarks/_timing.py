"""Timing helper shared by the benchmarks (run them as scripts: this folder is on sys.path)."""

import time

import jax


def best_time(fn, *args, repeats=5):
    """Fastest of `repeats` calls of `fn(*args)`, after one call that compiles and warms up."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times)
