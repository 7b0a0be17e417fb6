"""How well the EP update points along the true gradient at initialisation, on one MNIST batch.

For the card's 784-512-512-10 network (Glorot init, seed 0) with random and with transposed
feedback, in float64: the free fixed point by clipped Euler (t = 300), the true gradient by
recurrent backprop (`ctgep.gradients.rbp`), the paper's ν (`ctgep.gradients.nu`), and the
endpoint EP update at 60 + 20 Euler steps for β = 1, 0.5, 0.1. Prints per-layer cosines.

    python studies/mnist/ep_vs_gradient.py --data-dir DIR
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import ctgep

jax.config.update("jax_enable_x64", True)


def cos(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    d = ctgep.load_dataset("mnist", data_dir=args.data_dir)
    x = jnp.asarray(d.x_train[:20], jnp.float64)
    y = jax.nn.one_hot(d.y_train[:20], 10, dtype=jnp.float64)
    for fb in ["random", "transpose"]:
        net = ctgep.LayeredNetwork((784, 512, 512, 10), feedback=fb, key=jax.random.PRNGKey(0), dtype=jnp.float64)
        free = ctgep.free_phase(net, x, solver=ctgep.Euler(dt=0.5), t_max=300, tol=1e-9, policy="flag")
        print(f"{fb} feedback: free phase converged {float(free.converged.mean()):.2f}, "
              f"max residual {float(free.residual.max()):.2g}")
        g = ctgep.gradients.rbp(net, x, y, s_free=free.state)
        nu = ctgep.gradients.nu(net, x, y, s_free=free.state)
        print("  cos(ν, −∂J/∂Wf) per layer:", [round(cos(a, -b), 3) for a, b in zip(nu.Wf, g.Wf)])
        for beta in [1.0, 0.5, 0.1]:
            u = ctgep.ep_update(net, x, y, beta=beta, solver=ctgep.Euler(dt=0.5), t_free=30, t_nudged=10,
                                stop_at_steady_state=False)
            print(f"  β {beta}: cos(EP, −∂J/∂Wf)", [round(cos(-a, b), 3) for a, b in zip(g.Wf, u.Wf)],
                  "cos(EP, ν)", [round(cos(a, b), 3) for a, b in zip(nu.Wf, u.Wf)])


if __name__ == "__main__":
    main()
