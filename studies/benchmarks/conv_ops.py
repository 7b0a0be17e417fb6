"""The CNN's convolutions: ConvNetwork's im2col / col2im products against
`lax.conv_general_dilated`, op by op, timed in one run.

For each convolution one step of `models/mnist_cnn*.toml` performs (batch 20, float32), it
times a jitted loop of 100 applications with `lax.conv_general_dilated` (the transposed ones as
XLA's dilated convolution by the flipped kernel, what ConvNetwork used up to 56e661b) and with
the library's `_convolve` / `_convolve_transpose`, checks that they agree, and times the
gradient by the kernel (the learning rule's VJP, once per example).

    python studies/benchmarks/conv_ops.py [--batch 20] [--repeats 5]
"""

import argparse
import datetime
import os
import platform

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax

from ctgep._dynamics.conv import _convolve, _convolve_transpose

from _timing import best_time

# name: (image shape without batch, HWIO kernel, stride, padding, transposed?)
OPS = {
    "input → map 1 (max pooling: stride 1)": ((28, 28, 1), (5, 5, 1, 32), 1, 0, False),
    "map 1 → map 2 (max: stride 1)": ((12, 12, 32), (5, 5, 32, 64), 1, 0, False),
    "map 2 → map 1 (max: transposed, stride 1)": ((8, 8, 64), (5, 5, 32, 64), 1, 0, True),
    "map 1 → map 2 (average: 6×6, stride 2)": ((12, 12, 32), (6, 6, 32, 64), 2, 0, False),
    "map 2 → map 1 (average: transposed, stride 2)": ((4, 4, 64), (6, 6, 32, 64), 2, 0, True),
}


def lax_op(img, kernel, stride, pad, transposed):
    """The same map by XLA's convolution (transposed: dilated input, flipped kernel)."""
    dims = ("NHWC", "HWIO", "NHWC")
    if not transposed:
        return lax.conv_general_dilated(img, kernel, (stride, stride), [(pad, pad)] * 2, dimension_numbers=dims)
    edge = kernel.shape[0] - 1 - pad
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
    return lax.conv_general_dilated(img, flipped, (1, 1), [(edge, edge)] * 2, lhs_dilation=(stride, stride),
                                    dimension_numbers=dims)


def library_op(img, kernel, stride, pad, transposed):
    if not transposed:
        return _convolve(img, kernel, stride, pad)
    side = stride * (img.shape[1] - 1) + kernel.shape[0] - 2 * pad  # the map it came from
    return _convolve_transpose(img, kernel, (side, side), stride, pad)


def timed(op, img, kernel, args, repeats):
    """(ms per application in a jitted loop of 100, ms per gradient by the kernel)."""
    loop = jax.jit(lambda a, k: lax.fori_loop(0, 100, lambda i, c: c + op(a, k + c * 0, *args).sum() * 1e-9, 0.0))
    grad = jax.jit(jax.grad(lambda k, a: (op(a, k, *args) ** 2).sum()))
    return best_time(loop, img, kernel, repeats=repeats) * 10, best_time(grad, kernel, img, repeats=repeats) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M}  {platform.node()}  {os.cpu_count()} CPUs  "
          f"jax {jax.__version__}  load {load:.1f}  batch {a.batch}")
    print("| convolution | lax, ms | library, ms | speed-up | lax grad, ms | library grad, ms | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (shape, kshape, stride, pad, transposed) in OPS.items():
        img = jr.uniform(jr.key(0), (a.batch,) + shape, jnp.float32)
        kernel = jr.normal(jr.key(1), kshape, jnp.float32) * 0.05
        args = (stride, pad, transposed)
        diff = float(np.abs(lax_op(img, kernel, *args) - library_op(img, kernel, *args)).max())
        (t_lax, g_lax), (t_lib, g_lib) = (timed(op, img, kernel, args, a.repeats) for op in (lax_op, library_op))
        print(f"| {name} | {t_lax:.3f} | {t_lib:.3f} | {t_lax / t_lib:.1f}× | {g_lax:.2f} | {g_lib:.2f} | "
              f"{g_lax / g_lib:.1f}× | {diff:.1e} |")


if __name__ == "__main__":
    main()
