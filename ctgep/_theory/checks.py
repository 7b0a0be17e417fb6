"""The suite behind `ctgep check`: the paper's §5 and Appendices A–B as measured numbers.

:func:`run_checks` builds small float64 networks (or takes one, e.g. from a model card or a
trained run), measures every claim and returns a :class:`CheckReport`: table rows (check,
quantity, measured, criterion, pass) and the curves behind the figure, as an `xarray.Dataset`.
:func:`write_report` saves the dataset (netCDF) and the 3-panel figure.

Must be called with float64 enabled (``jax.enable_x64(True)``); the CLI does so.
"""

import dataclasses
import datetime
import math
import pathlib
import platform

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from .. import gradients as G
from .._dynamics.networks import AbstractDynamics, LayeredNetwork
from .._simulation.phases import free_phase
from .._learning.rules import ep_update

BETAS = (0.1, 0.05, 0.02, 0.01, 0.005)
HORIZONS = (2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0)
FEEDBACK_DEGREES = (0.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0)
BPTT_DT = 0.05
NONSMOOTH = ("hard_sigmoid",)


@dataclasses.dataclass
class Row:
    check: str
    quantity: str
    measured: float
    criterion: str
    passed: bool | None  # None: informational (the criterion assumes a smooth ρ)


@dataclasses.dataclass
class CheckReport:
    rows: list[Row]
    data: xr.Dataset

    @property
    def passed(self) -> bool:
        return all(r.passed is not False for r in self.rows)

    def table(self) -> str:
        """The rows as a fixed-width text table."""
        head = ("check", "quantity", "measured", "criterion", "pass")
        verdict = {True: "PASS", False: "FAIL", None: "info"}
        body = [(r.check, r.quantity, f"{r.measured:.3g}", r.criterion, verdict[r.passed]) for r in self.rows]
        widths = [max(len(str(c[i])) for c in [head] + body) for i in range(5)]
        fmt = lambda c: "  ".join(str(v).ljust(w) for v, w in zip(c, widths)).rstrip()
        rule = "  ".join("-" * w for w in widths)
        return "\n".join([fmt(head), rule] + [fmt(c) for c in body])


def _at_most(check, quantity, value, bound):
    value = float(value)
    return Row(check, quantity, value, f"≤ {bound:g}", bool(value <= bound))


def _at_least(check, quantity, value, bound):
    value = float(value)
    return Row(check, quantity, value, f"≥ {bound:g}", bool(value >= bound))


def _within(check, quantity, value, lo, hi):
    value = float(value)
    return Row(check, quantity, value, f"∈ [{lo:g}, {hi:g}]", bool(lo <= value <= hi))


def _informational(row: Row) -> Row:
    """A row whose criterion needs a smooth ρ, measured on a non-smooth one: reported only."""
    return dataclasses.replace(row, criterion=row.criterion + " (smooth ρ)", passed=None)


def _relerr_state(a, b):
    u, v = ravel_pytree(a)[0], ravel_pytree(b)[0]
    return float(jnp.linalg.norm(u - v) / jnp.linalg.norm(v))


def _central(f, h):
    return jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * h), f(h), f(-h))


def random_problem(seed=0, sizes=(5, 6, 6, 3), batch=3, activation="sigmoid"):
    """A float64 LayeredNetwork with random biases, inputs in [0, 1) and one-hot targets."""
    k1, k2, k3 = jr.split(jr.PRNGKey(seed), 3)
    net = LayeredNetwork(sizes, activation, key=k1, dtype=jnp.float64)
    biases = tuple(0.5 * jr.normal(k, b.shape, jnp.float64) for k, b in zip(jr.split(k2, len(net.b)), net.b))
    net = eqx.tree_at(lambda n: n.b, net, biases)
    return net, *problem_data((sizes[0], sizes[-1]), batch, k3)


def problem_data(widths, batch, key):
    """Inputs in [0, 1) and one-hot targets for the input and output `widths`."""
    n_in, n_out = widths
    x = jr.uniform(key, (batch, n_in), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(batch) % n_out, n_out, dtype=jnp.float64)
    return x, y


def tied_linear_network(sizes, key, feedback=0.0, scale=0.3):
    """Hard-sigmoid net with `Wb_l` at `feedback` degrees from `Wf_{l+1}ᵀ` (0: tied), weights
    scaled by `scale` and biases centring every unit near ½ — inside the linear range, where
    `ρ' = 1` and tied weights make `Jμ = W − I` symmetric."""
    net = LayeredNetwork(sizes, "hard_sigmoid", key=key, feedback=feedback, dtype=jnp.float64)
    net = eqx.tree_at(lambda n: (n.Wf, n.Wb), net, jax.tree_util.tree_map(lambda a: scale * a, (net.Wf, net.Wb)))
    half = 0.5
    biases = []
    for l in range(len(net.b)):
        total = net.Wf[l] @ jnp.full(net.Wf[l].shape[1], half)
        if l < len(net.Wb):
            total = total + net.Wb[l] @ jnp.full(net.Wb[l].shape[1], half)
        biases.append(half - total)
    return eqx.tree_at(lambda n: n.b, net, tuple(biases))


def asymmetry(jac) -> np.ndarray:
    """`‖Jμ − Jμᵀ‖_F / ‖Jμ‖_F` per sample."""
    jac = np.asarray(jac)
    return np.linalg.norm(jac - np.swapaxes(jac, -1, -2), axis=(-2, -1)) / np.linalg.norm(jac, axis=(-2, -1))


def _flat_params(net):
    params, static = eqx.partition(net, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    return flat, lambda v: eqx.combine(unravel(v), static)


def _fd_directional(net, x, y, s, directions, h):
    """`(J(θ + h d) − J(θ − h d)) / 2h` for each direction (for nets too big for full FD)."""
    flat, build = _flat_params(net)
    J = lambda v: float(jnp.mean(build(v).cost(G.fixed_point(build(v), x, s_init=s, relax=False), y)))
    return np.array([(J(flat + h * d) - J(flat - h * d)) / (2 * h) for d in directions])


def run_checks(net: AbstractDynamics | None = None, x=None, y=None, *, seed: int = 0,
               full_fd_limit: int = 2000, log=None) -> CheckReport:
    """Measure every theorem/gradient claim; `net, x, y` default to a random (5, 6, 6, 3) net.

    Finite differences are taken for every parameter entry when the network has at most
    `full_fd_limit` of them, otherwise along 8 random directions. The feedback-angle sweep
    (ν versus −∇J as `Jμ` loses symmetry) always runs on small tied hard-sigmoid networks.
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError("run_checks needs float64: wrap it in `with jax.enable_x64(True):`")
    say = log or (lambda msg: None)
    key = jr.PRNGKey(seed)
    if net is None:
        net, x, y = random_problem(seed)
    elif x is None or y is None:
        x, y = problem_data((net.sizes[0], net.sizes[-1]), 3, key)
    net = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, net)
    rows: list[Row] = []
    data = {}
    # The hard sigmoid's kinks break the smooth asymptotics (orders in β, dense reading of the
    # path): those rows are then reported, not judged.
    smooth = getattr(net, "activation", None) not in NONSMOOTH
    judged = (lambda row: row) if smooth else _informational

    say("free fixed point, RBP, finite differences")
    s = G.fixed_point(net, x)
    g = G.rbp(net, x, y, s_free=s)
    n_params = ravel_pytree(eqx.partition(net, eqx.is_inexact_array)[0])[0].size
    if n_params <= full_fd_limit:
        fd = G.finite_difference(net, x, y, s_free=s)
        rows.append(_at_most("RBP = finite differences", "‖rbp − fd‖/‖fd‖ (all entries)", G.relative_error(g, fd), 1e-6))
    else:
        dirs = np.asarray(jr.normal(jr.fold_in(key, 1), (8, n_params), jnp.float64))
        fdd = _fd_directional(net, x, y, s, dirs, 1e-5)
        exact = dirs @ np.asarray(ravel_pytree(g)[0])
        rows.append(_at_most("RBP = finite differences", "‖⟨rbp,d⟩ − fd‖/‖fd‖ (8 directions)",
                             np.linalg.norm(exact - fdd) / np.linalg.norm(fdd), 1e-6))

    say("Lemma 2")
    params, static = eqx.partition(net, eqx.is_inexact_array)
    tangent = jax.tree_util.tree_map(lambda a: jr.normal(jr.fold_in(key, 2), a.shape, a.dtype), params)
    shifted = lambda h: eqx.combine(jax.tree_util.tree_map(lambda p, t: p + h * t, params, tangent), static)
    h = 1e-5
    fd_theta = _central(lambda e: G.fixed_point(shifted(e), x, s_init=s, relax=False), h)
    rows.append(_at_most("Lemma 2 (θ)", "ds⁰/dθ·t vs central FD", _relerr_state(G.dfixed_point_dtheta(net, x, tangent, s=s), fd_theta), 1e-6))
    for beta in (0.0, 0.5):
        sb = s if beta == 0.0 else G.fixed_point(net, x, y, beta=beta, s_init=s)
        fd_beta = _central(lambda e: G.fixed_point(net, x, y, beta=beta + e, s_init=sb, relax=False), h)
        rows.append(_at_most(f"Lemma 2 (β={beta:g})", "ds^β/dβ vs central FD",
                             _relerr_state(G.dfixed_point_dbeta(net, x, y, beta=beta, s=sb), fd_beta), 1e-6))

    say("EP estimate → ν")
    nu = G.nu(net, x, y, s_free=s)
    free = free_phase(net, x, solver=G.TIGHT, tol=1e-9)
    free = eqx.tree_at(lambda r: r.state, free, s)
    ep_err = np.zeros((2, 2, len(BETAS)))
    for i, rule in enumerate(("endpoint", "integrated")):
        for j, nudging in enumerate(("one-sided", "centered")):
            for k, beta in enumerate(BETAS):
                u = ep_update(net, x, y, beta=beta, rule=rule, nudging=nudging, solver=G.TIGHT, tol=1e-9,
                              free=free, t_nudged=1000.0)
                ep_err[i, j, k] = G.relative_error(u, nu)
            order = np.polyfit(np.log(BETAS), np.log(ep_err[i, j]), 1)[0]
            want = 1.0 if nudging == "one-sided" else 2.0
            rows.append(judged(_within(f"EP → ν ({rule}, {nudging})", "order p: ‖ep − ν‖/‖ν‖ ∝ β^p", order,
                                want - 0.15, want + 0.15)))
    data["ep_error"] = (("rule", "nudging", "beta"), ep_err)

    say("ν versus −∇J")
    rows.append(_at_least("ν ≠ −∇J (asymmetric Jμ)", "angle(ν, −∇J) in degrees, this net", G.angle(nu, jax.tree_util.tree_map(jnp.negative, g)), 1.0))
    sweep_x, sweep_y = problem_data((5, 3), 3, jr.fold_in(key, 3))
    asym, angles, margin = [], [], []
    for deg in FEEDBACK_DEGREES:
        tn = tied_linear_network((5, 6, 6, 3), jr.fold_in(key, 4), feedback=deg)
        ts = G.fixed_point(tn, sweep_x)
        flat_s = np.concatenate([np.asarray(a) for a in ts], axis=-1)
        margin.append(min(flat_s.min(), 1.0 - flat_s.max()))
        asym.append(float(np.mean(asymmetry(G.jacobian(tn, sweep_x, ts)))))
        t_nu = G.nu(tn, sweep_x, sweep_y, s_free=ts)
        t_g = jax.tree_util.tree_map(jnp.negative, G.rbp(tn, sweep_x, sweep_y, s_free=ts))
        angles.append(G.angle(t_nu, t_g))
        if deg == 0.0:
            rows.append(_at_most("ν = −∇J (tied, linear range)", "‖ν + ∇J‖/‖∇J‖", G.relative_error(t_nu, t_g), 1e-9))
    rows.append(_at_least("  (linear range)", "min distance of s⁰ to the kinks 0, 1", min(margin), 1e-3))
    rows.append(_at_most("  (symmetric Jμ)", "‖Jμ − Jμᵀ‖/‖Jμ‖ at 0°", asym[0], 1e-12))
    rows.append(_at_least("ν ≠ −∇J (feedback 90°)", "angle(ν, −∇J) in degrees", angles[FEEDBACK_DEGREES.index(90.0)], 1.0))
    data["asymmetry"] = ("feedback_deg", np.array(asym))
    data["angle_nu_grad"] = ("feedback_deg", np.array(angles))

    say("Proposition 5")
    jac = np.asarray(G.jacobian(net, x, s))
    sym_max = np.linalg.eigvalsh((jac + np.swapaxes(jac, -1, -2)) / 2).max(axis=-1)
    dcdb = np.asarray(G.dcost_dbeta(net, x, y, s_free=s))
    cost_at = lambda e: net.cost(G.fixed_point(net, x, y, beta=e, s_init=s, relax=False), y)
    fd_dcdb = np.asarray(_central(cost_at, h))
    stable = sym_max < 0
    rows.append(_at_least("Proposition 5", "samples with a stable s⁰ (sym(Jμ) < 0)", int(stable.sum()), 1))
    rows.append(_at_most("Proposition 5", "max d/dβ C(s^β) at β=0, stable samples",
                         dcdb[stable].max() if stable.any() else 0.0, 0.0))
    rows.append(_at_most("Proposition 5", "d/dβ C formula vs central FD (rel.)",
                         np.linalg.norm(dcdb - fd_dcdb) / np.linalg.norm(fd_dcdb), 1e-6))

    say("BPTT(T) → RBP, Corollary 7")
    steps = int(math.ceil(max(HORIZONS) / BPTT_DT)) + 8  # one compilation for every horizon
    bptt_err = np.array([G.relative_error(G.bptt(net, x, y, T=T, dt=BPTT_DT, max_steps=steps), g) for T in HORIZONS])
    slowest = float(np.max(np.linalg.eigvals(jac).real))
    rate = np.polyfit(HORIZONS, np.log(bptt_err), 1)[0]
    rows.append(_within("BPTT(T) → RBP", "decay rate / slowest Re eig(Jμ)", rate / slowest, 0.7, 1.3))
    rows.append(_at_most("BPTT(T) → RBP", f"‖bptt(T={max(HORIZONS):g}) − rbp‖/‖rbp‖", bptt_err[-1], 1e-8))
    data["bptt_error"] = ("horizon", bptt_err)
    cor7 = [G.relative_error(G.rbp_adjoint(net, x, y, T=T, s_free=s),
                             G.bptt(net, x, y, T=T, s_init=s, dt=BPTT_DT, max_steps=steps)) for T in (0.5, 2.0, 8.0, 32.0)]
    rows.append(_at_most("Corollary 7 = BPTT from s⁰", "max over T ∈ {0.5, 2, 8, 32} (rel.)", max(cor7), 1e-8))
    rows.append(_at_most("Corollary 7 → RBP", "‖cor7(T=64) − rbp‖/‖rbp‖",
                         G.relative_error(G.rbp_adjoint(net, x, y, T=64.0, s_free=s), g), 1e-8))

    say("Theorem 6")
    T6 = 8.0
    traj = G.trajectory(net, x, T=T6)
    thm6 = G.bptt_adjoint(net, x, y, traj)
    rows.append(judged(_at_most("Theorem 6 = autodiff BPTT", f"adjoint ODE on stored path vs BPTT (T={T6:g})",
                                G.relative_error(thm6, G.bptt(net, x, y, T=T6, dt=BPTT_DT, max_steps=steps)), 1e-5)))

    ds = xr.Dataset(
        {
            **data,
            "measured": ("row", np.array([r.measured for r in rows])),
            "passed": ("row", np.array([-1 if r.passed is None else int(r.passed) for r in rows], np.int8)),
            "quantity": ("row", np.array([r.quantity for r in rows], dtype=str)),
            "criterion": ("row", np.array([r.criterion for r in rows], dtype=str)),
            "slowest_eigenvalue": slowest,
        },
        coords={
            "row": np.arange(len(rows)),
            "check": ("row", np.array([r.check for r in rows], dtype=str)),
            "rule": ["endpoint", "integrated"],
            "nudging": ["one-sided", "centered"],
            "beta": np.array(BETAS),
            "horizon": np.array(HORIZONS),
            "feedback_deg": np.array(FEEDBACK_DEGREES),
        },
        attrs={
            "title": "ctgep check: the paper's theorems and reference gradients, measured",
            "seed": seed,
            "network": type(net).__name__,
            "sizes": str(getattr(net, "sizes", "")),
            "activation": str(getattr(net, "activation", "")),
            "batch": int(x.shape[0]),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or ''} jax {jax.__version__} "
                       f"{jax.default_backend()}".strip(),
            "all_passed": int(all(r.passed is not False for r in rows)),
        },
    )
    return CheckReport(rows, ds)


def plot_report(data: xr.Dataset, path) -> None:
    """The 3-panel figure: EP error vs β, BPTT error vs T, angle(ν, −∇J) vs Jμ asymmetry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    betas = data.beta.values
    styles = {"endpoint": "-", "integrated": "--"}
    for rule in data.rule.values:
        for nudging, marker in (("one-sided", "o"), ("centered", "s")):
            ax.loglog(betas, data.ep_error.sel(rule=rule, nudging=nudging), styles[rule], marker=marker,
                      label=f"{rule}, {nudging}")
    e1 = float(data.ep_error.sel(rule="endpoint", nudging="one-sided")[0])
    e2 = float(data.ep_error.sel(rule="endpoint", nudging="centered")[0])
    ax.loglog(betas, e1 * (betas / betas[0]), ":", color="gray", label="∝ β")
    ax.loglog(betas, e2 * (betas / betas[0]) ** 2, "-.", color="gray", label="∝ β²")
    ax.set(xlabel="β", ylabel="‖EP − ν‖ / ‖ν‖", title="EP estimate → ν as β → 0")
    ax.legend(fontsize=7)

    ax = axes[1]
    T = data.horizon.values
    ax.semilogy(T, data.bptt_error, "o-", label="BPTT(T) vs RBP")
    lam = float(data.slowest_eigenvalue)
    ax.semilogy(T, float(data.bptt_error[0]) * np.exp(lam * (T - T[0])), ":", color="gray",
                label=f"exp(λ_max T), λ_max = {lam:.3f}")
    ax.set(xlabel="horizon T", ylabel="‖BPTT(T) − RBP‖ / ‖RBP‖", title="BPTT(T) → RBP")
    ax.legend(fontsize=7)

    ax = axes[2]
    ax.plot(data.asymmetry, data.angle_nu_grad, "o-")
    for a, b, d in zip(data.asymmetry.values, data.angle_nu_grad.values, data.feedback_deg.values):
        ax.annotate(f"{d:g}°", (a, b), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlabel="‖Jμ − Jμᵀ‖ / ‖Jμ‖", ylabel="angle(ν, −∇J) [degrees]",
           title="ν vs −∇J as feedback leaves Wfᵀ")
    fig.suptitle(f"ctgep check — {data.attrs.get('network', '')} {data.attrs.get('sizes', '')} "
                 f"{data.attrs.get('activation', '')}, float64", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: CheckReport, out) -> tuple[pathlib.Path, pathlib.Path]:
    """Write `check.nc` (the dataset) and `check.png` (the figure) into the folder `out`."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    nc, png = out / "check.nc", out / "check.png"
    report.data.to_netcdf(nc)
    plot_report(report.data, png)
    return nc, png
