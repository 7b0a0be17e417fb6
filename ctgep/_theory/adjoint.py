"""The adjoint ODEs of the paper's Appendix B, integrated explicitly with diffrax.

Theorem 6 (continuous-time BPTT). For `L(θ, s_0, T) = C(s_T)` and `λ(τ) = ∂L/∂s_{T−τ}`:

    dλ/dτ = Jμ(s_{T−τ})ᵀ λ,        d/dτ ∂L/∂θ = (∂μ/∂θ)(s_{T−τ})ᵀ λ,        τ: 0 → T,

started from `λ(0) = ∂C/∂s(s_T)` and `∂L/∂θ(0) = ∂C/∂θ`. The forward trajectory is *recorded*
(:func:`trajectory`, an `xarray.Dataset`) and read back with dense cubic Hermite interpolation
(nodes: the stored states; slopes: `μ` at the stored states, which is exactly `ds/dt` there),
evaluated through `diffrax.CubicInterpolation`, so the backward solve never re-runs the forward
dynamics.

Corollary 7 (continuous-time RBP): the same ODEs with the state frozen at the fixed point `s⁰`;
as `τ → ∞`, `∂L/∂θ → ∂J/∂θ` (when `Jμ` is stable).

Both use the batch-mean cost `J = mean_batch C`, like the rest of :mod:`ctgep.gradients`.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .._dynamics.networks import AbstractDynamics
from .._dynamics import field as F
from .._simulation.results import PhaseResult
from .gradients import _check_horizon, _cost_grads, _free


def _layer_sizes(net, x):
    return [int(a.shape[-1]) for a in jax.eval_shape(net.init_state, x)]


def trajectory(
    net: AbstractDynamics,
    x,
    *,
    T: float,
    s_init=None,
    n_times: int | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-12,
) -> xr.Dataset:
    """Record the free dynamics `ds/dt = μ` from `s_init` (zeros) over `[0, T]` into a Dataset.

    Variable `s` with dims `(time, sample, neuron)`; coordinates `time`, `sample`, `neuron` and
    `layer` (on `neuron`, 1 = first dynamic layer). The solve is adaptive (Tsit5, `rtol`,
    `atol`) and saved on a uniform grid of `n_times` points (default: 20 per unit time, ≥ 101).
    """
    if not isinstance(net, AbstractDynamics):
        raise TypeError(f"net must be an AbstractDynamics, got {type(net).__name__}")
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"x must be a (batch, features) array, got shape {getattr(x, 'shape', None)}")
    try:
        T = float(T)
    except (TypeError, ValueError):
        raise ValueError(f"T={T!r} must be a positive horizon") from None
    if not (T > 0 and math.isfinite(T)):
        raise ValueError(f"T={T!r} must be a positive horizon")
    n_times = max(101, int(math.ceil(20 * T)) + 1) if n_times is None else int(n_times)
    if n_times < 2:
        raise ValueError(f"n_times={n_times!r} must be at least 2")
    if isinstance(s_init, PhaseResult):
        s_init = s_init.state
    s0 = net.init_state(x) if s_init is None else s_init
    ts = jnp.linspace(0.0, T, n_times, dtype=x.dtype)
    ys = _forward(net, x, s0, ts, rtol, atol)
    sizes = _layer_sizes(net, x)
    flat = np.concatenate([np.asarray(a) for a in ys], axis=-1)
    layer = np.repeat(np.arange(1, len(sizes) + 1), sizes)
    return xr.Dataset(
        {"s": (("time", "sample", "neuron"), flat)},
        coords={
            "time": np.asarray(ts),
            "sample": np.arange(x.shape[0]),
            "neuron": np.arange(flat.shape[-1]),
            "layer": ("neuron", layer),
        },
        attrs={"description": "free-phase trajectory ds/dt = mu(theta, x, s)", "rtol": rtol,
               "atol": atol},
    )


@eqx.filter_jit
def _forward(net, x, s0, ts, rtol, atol):
    drive = net.drive(x)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, s, args: net.vector_field(s, drive)),
        diffrax.Tsit5(),
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=s0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(ts=ts),
        max_steps=1_000_000,
    )
    return sol.ys


def _hermite(ts, ys, slopes):
    """Coefficients `(d, c, b, a)` of the cubic Hermite spline through `ys` with `slopes`."""
    h = (ts[1:] - ts[:-1]).reshape((-1,) + (1,) * (ys.ndim - 1))
    y0, y1, m0, m1 = ys[:-1], ys[1:], slopes[:-1], slopes[1:]
    delta = (y1 - y0) / h
    return (m0 + m1 - 2 * delta) / h**2, (3 * delta - 2 * m0 - m1) / h, m0, y0


def _read_trajectory(net, x, traj, state_var):
    if not isinstance(traj, xr.Dataset):
        raise TypeError(f"trajectory must be an xarray.Dataset, got {type(traj).__name__}")
    if state_var not in traj:
        raise ValueError(f"trajectory has no variable {state_var!r} (has {list(traj.data_vars)})")
    da = traj[state_var]
    if set(da.dims) != {"time", "sample", "neuron"}:
        raise ValueError(
            f"trajectory[{state_var!r}] must have dims (time, sample, neuron), got {da.dims}; "
            "select one phase first"
        )
    da = da.transpose("time", "sample", "neuron")
    sizes = _layer_sizes(net, x)
    if da.sizes["sample"] != x.shape[0] or da.sizes["neuron"] != sum(sizes):
        raise ValueError(
            f"trajectory has {da.sizes['sample']} samples × {da.sizes['neuron']} neurons but the "
            f"network and x need {x.shape[0]} × {sum(sizes)}"
        )
    ts = jnp.asarray(traj["time"].values, x.dtype)
    if ts.size < 2 or not bool(jnp.all(jnp.diff(ts) > 0)):
        raise ValueError("trajectory time must be increasing with at least 2 points")
    flat = jnp.asarray(da.values, x.dtype)
    cuts = np.cumsum(sizes)[:-1]
    return ts, tuple(jnp.split(flat, cuts, axis=-1))


def bptt_adjoint(
    net: AbstractDynamics,
    x,
    y,
    trajectory: xr.Dataset,
    *,
    state_var: str = "s",
    rtol: float = 1e-10,
    atol: float = 1e-12,
    return_adjoint: bool = False,
):
    """Theorem 6: `∂L/∂θ` of `L = mean C(s_T)` by the backward adjoint ODE along a recorded path.

    `trajectory` is a Dataset with `state_var` over `(time, sample, neuron)` (as written by
    :func:`trajectory`) from `t_0` to `T`; the path is read by cubic Hermite interpolation with
    slopes `μ(s)` at the stored states. Returns the parameter-shaped `∂L/∂θ`; with
    `return_adjoint=True`, also `λ(T − t_0) = ∂L/∂s_{t_0}` (batched state).
    """
    ts, ys = _read_trajectory(net, x, trajectory, state_var)
    drive = net.drive(x)
    slopes = jax.vmap(lambda s: net.vector_field(s, drive))(ys)
    coeffs = tuple(zip(*[_hermite(ts, a, m) for a, m in zip(ys, slopes)]))
    path = diffrax.CubicInterpolation(ts, coeffs)
    s_T = tuple(a[-1] for a in ys)
    g, lam = _integrate(net, x, y, path, s_T, ts[-1] - ts[0], rtol, atol)
    return (g, lam) if return_adjoint else g


def rbp_adjoint(
    net: AbstractDynamics,
    x,
    y,
    *,
    T: float,
    s_free=None,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    return_adjoint: bool = False,
):
    """Corollary 7: the Theorem 6 ODEs with the state frozen at the free fixed point `s⁰`.

    Equals BPTT of horizon `T` started at `s⁰`, and tends to `∂J/∂θ` (:func:`rbp`) as `T → ∞`.
    """

    T = _check_horizon(T)
    s = _free(net, x, s_free)
    g, lam = _integrate(net, x, y, s, s, jnp.asarray(T, x.dtype), rtol, atol)
    return (g, lam) if return_adjoint else g


@eqx.filter_jit
def _integrate(net, x, y, path, s_T, horizon, rtol, atol):
    """Integrate `(λ, ∂L/∂θ)` backward over `τ ∈ [0, horizon]`; `path` is an interpolation of
    the forward state (evaluated at `t_end − τ`) or a frozen state."""

    params, static = F.partition(net)
    dc_ds, dj_dtheta = _cost_grads(net, s_T, y)
    batch = x.shape[0]
    lam0 = jax.tree_util.tree_map(lambda a: a / batch, dc_ds)
    frozen = not isinstance(path, diffrax.AbstractPath)

    def mu_of(p, s):
        n = eqx.combine(p, static)
        return n.vector_field(s, n.drive(x))

    def rhs(tau, z, args):
        lam, _ = z
        s = path if frozen else path.evaluate(path.t1 - tau)
        _, vjp = jax.vjp(mu_of, params, s)
        dp, ds = vjp(lam)
        return ds, dp

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(rhs),
        diffrax.Tsit5(),
        t0=jnp.zeros_like(horizon),
        t1=horizon,
        dt0=None,
        y0=(lam0, dj_dtheta),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=1_000_000,
    )
    lam, g = jax.tree_util.tree_map(lambda a: a[-1], sol.ys)
    return g, lam
