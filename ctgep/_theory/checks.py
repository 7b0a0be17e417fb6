"""The suite behind `ctgep check`: the paper's §5 and Appendices A–B as measured numbers.

:func:`run_checks` builds small float64 networks (or takes one, e.g. from a model card or a
trained run), measures every claim and returns a :class:`CheckReport`: table rows (check,
quantity, measured, criterion, pass) and the curves behind the figure, as an `xarray.Dataset`.
:func:`write_report` saves the dataset (netCDF) and the 3-panel figure.

Must be called with float64 enabled (``jax.enable_x64(True)``); the CLI does so.

Over 400 lines because each section of the table (its computation, criterion and row) reads best
beside the others; the table, the problems and the clipped scheme's rows live in
checks_table.py, checks_problems.py and checks_clipped.py.
"""

import datetime
import math
import platform

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from .. import gradients as G
from .._dynamics.networks import AbstractDynamics
from .._learning.rules import ep_update
from .._errors import ConvergenceError
from . import checks_clipped as CC
from .checks_problems import (  # noqa: F401  (re-exported: tests and the CLI use them from here)
    _fd_directional, asymmetry, problem_data, random_problem, slow_problem, tied_linear_network,
)
from .checks_table import (  # noqa: F401
    VERDICT_CODES, CheckReport, Row, _at_least, _at_most, _row, _within, plot_report, write_report,
)

#: BPTT horizons as fractions of T_max = 25/|slowest eigenvalue of Jμ| (at least 32).
HORIZON_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1.0)
FEEDBACK_DEGREES = (0.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0)
BPTT_DT = 0.05


#: Verdicts: PASS / FAIL (judged), info (reported only), n/a (the claim's hypothesis does not hold
#: on this network, e.g. no stable sample), not converged (a phase the check needs did not settle).
def _relerr_state(a, b):
    u, v = ravel_pytree(a)[0], ravel_pytree(b)[0]
    return float(jnp.linalg.norm(u - v) / jnp.linalg.norm(v))


def _central(f, h):
    return jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * h), f(h), f(-h))


SECTIONS = ("rbp", "lemma2", "ep", "nu", "sweep", "prop5", "bptt", "thm6", "scheme")
SWEEP_NET = "internal (5, 6, 6, 3) net"
#: The EP estimates' tolerance: the nudged phase stops at EP_TOL·β, far below the O(β) and O(β²)
#: errors whose orders are fitted (and within what Tsit5 at rtol 1e-10 reaches).
EP_TOL = 1e-8
SYMMETRIC = 1e-12  # ‖Jμ − Jμᵀ‖/‖Jμ‖ below which Jμ counts as symmetric (float64 round-off)


def _not_converged(err: Exception) -> bool:
    text = str(err)
    return isinstance(err, ConvergenceError) or (
        isinstance(err, RuntimeError) and ("did not converge" in text or "did not reach a fixed point" in text))


def _first_line(err) -> str:
    return str(err).strip().splitlines()[0][:160]


class _Context:
    """What the sections share, computed once on first use (so a section whose phase does not
    settle only marks its own rows)."""

    def __init__(self, net, x, y, key):
        self.net, self.x, self.y, self.key = net, x, y, key
        self._cache = {}

    def get(self, name, fn):
        if name not in self._cache:
            self._cache[name] = fn()
        return self._cache[name]

    @property
    def s(self):
        return self.get("s", lambda: G.fixed_point(self.net, self.x))

    @property
    def grad(self):
        return self.get("grad", lambda: G.rbp(self.net, self.x, self.y, s_free=self.s))

    @property
    def nu(self):
        return self.get("nu", lambda: G.nu(self.net, self.x, self.y, s_free=self.s))

    @property
    def jac(self):
        return self.get("jac", lambda: np.asarray(G.jacobian(self.net, self.x, self.s)))

    @property
    def slowest(self):
        return float(np.max(np.linalg.eigvals(self.jac).real))


def run_checks(net: AbstractDynamics | None = None, x=None, y=None, *, seed: int = 0,
               full_fd_limit: int = 2000, log=None, solver=None, rule: str = "endpoint",
               only=None) -> CheckReport:
    """Measure every theorem/gradient claim; `net, x, y` default to a random (5, 6, 6, 3) net.

    Finite differences are taken for every parameter entry when the network has at most
    `full_fd_limit` of them, otherwise along 8 random directions. The feedback-angle sweep
    (ν versus −∇J as `Jμ` loses symmetry) runs on an internal (5, 6, 6, 3) tied hard-sigmoid
    network, and its rows say so. `solver` (and `rule`): the phase solver a card trains with;
    when it is a `ctgep.Euler`, the scheme's own fixed point, objective and ν are checked too
    (docs/theory.md#the-clipped-scheme). `only`: a subset of :data:`SECTIONS`. A section whose
    phases do not settle gives rows marked "not converged" instead of an exception.
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError("run_checks needs float64: wrap it in `with jax.enable_x64(True):`")
    only = SECTIONS if only is None else tuple(only)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown check section(s) {sorted(unknown)}; choose from {SECTIONS}")
    say = log or (lambda msg: None)
    key = jr.PRNGKey(seed)
    if net is None:
        net, x, y = random_problem(seed)
    elif x is None or y is None:
        x, y = problem_data((net.sizes[0], net.sizes[-1]), 3, key)
    net = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, net)
    ctx = _Context(net, x, y, key)
    rows: list[Row] = []
    data = {"horizon_values": ("horizon", np.full(len(HORIZON_FRACTIONS), np.nan)),
            "bptt_error": ("horizon", np.full(len(HORIZON_FRACTIONS), np.nan)),
            "slowest_eigenvalue": np.nan}

    def section(name, placeholders, fn):
        """Run one section; on a phase that does not settle, its rows become "not converged"."""
        if name not in only:
            return
        try:
            new_rows, new_data = fn()
        except Exception as err:  # noqa: BLE001 — only non-convergence is turned into rows
            if not _not_converged(err):
                raise
            say(f"  not converged: {_first_line(err)}")
            new_rows = [Row(c, q, float("nan"), _first_line(err)[:60], None, "not converged")
                        for c, q in placeholders]
            new_data = {}
        rows.extend(new_rows)
        data.update(new_data)

    section("rbp", [("RBP = finite differences", "‖rbp − fd‖/‖fd‖")],
            lambda: _rbp_rows(ctx, full_fd_limit, say))
    section("lemma2", [("Lemma 2 (θ)", "ds⁰/dθ·t vs central FD"), ("Lemma 2 (β=0)", "ds^β/dβ vs central FD")],
            lambda: _lemma2_rows(ctx, (0.0,), say))
    section("lemma2", [("Lemma 2 (β=0.5)", "ds^β/dβ vs central FD")], lambda: _lemma2_rows(ctx, (0.5,), say))
    section("ep", [(f"EP → ν ({r}, {n})", "order p") for r in ("endpoint", "integrated")
                   for n in ("one-sided", "centered")], lambda: _ep_rows(ctx, say))
    section("nu", [("ν vs −∇J", "relation expected from the symmetry of Jμ")], lambda: _nu_rows(ctx, say))
    section("sweep", [(f"ν = −∇J (tied, linear range) [{SWEEP_NET}]", "‖ν + ∇J‖/‖∇J‖")],
            lambda: _sweep_rows(ctx, say))
    section("prop5", [("Proposition 5", "d/dβ C(s^β) at β=0")], lambda: _prop5_rows(ctx, say))
    section("bptt", [("BPTT(T) → RBP", "decay rate / slowest Re eig(Jμ)"), ("Corollary 7", "")],
            lambda: _bptt_rows(ctx, say))
    section("thm6", [("Theorem 6 = autodiff BPTT", "adjoint ODE on stored path vs BPTT")],
            lambda: _thm6_rows(ctx, say))
    if solver is not None and solver.time_resolution is not None:  # a fixed-step scheme
        section("scheme", [("the card's scheme", "fixed point, objective and ν")],
                lambda: CC.scheme_rows(net, x, y, solver, rule=rule, key=jr.fold_in(key, 7),
                                       full_fd_limit=full_fd_limit, row=_row, say=say))

    data.setdefault("ep_error", (("rule", "nudging", "beta"), np.full((2, 2, CC.GRID), np.nan)))
    data.setdefault("ep_beta_values", ("beta", np.full(CC.GRID, np.nan)))
    data.setdefault("asymmetry", ("feedback_deg", np.full(len(FEEDBACK_DEGREES), np.nan)))
    data.setdefault("angle_nu_grad", ("feedback_deg", np.full(len(FEEDBACK_DEGREES), np.nan)))
    ds = xr.Dataset(
        {
            **data,
            "measured": ("row", np.array([r.measured for r in rows])),
            "passed": ("row", np.array([VERDICT_CODES[r.verdict] for r in rows], np.int8)),
            "quantity": ("row", np.array([r.quantity for r in rows], dtype=str)),
            "criterion": ("row", np.array([r.criterion for r in rows], dtype=str)),
        },
        coords={
            "row": np.arange(len(rows)),
            "check": ("row", np.array([r.check for r in rows], dtype=str)),
            "rule": ["endpoint", "integrated"],
            "nudging": ["one-sided", "centered"],
            "beta": np.arange(CC.GRID),
            "horizon": np.arange(len(HORIZON_FRACTIONS)),
            "feedback_deg": np.array(FEEDBACK_DEGREES),
        },
        attrs={
            "title": "ctgep check: the paper's theorems and reference gradients, measured",
            "seed": seed,
            "network": type(net).__name__,
            "sizes": str(getattr(net, "sizes", "")),
            "activation": str(getattr(net, "activation", "")),
            "solver": "" if solver is None else str(solver.describe()),
            "batch": int(x.shape[0]),
            "passed_codes": "1 PASS, 0 FAIL, -1 info, -2 n/a, -3 not converged",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or ''} jax {jax.__version__} "
                       f"{jax.default_backend()}".strip(),
            "all_passed": int(all(r.verdict not in ("FAIL", "not converged") for r in rows)),
        },
    )
    for name, (long_name, units) in _CHECK_ATTRS.items():
        if name in ds.variables:
            ds[name].attrs.update(long_name=long_name, **({} if units is None else {"units": units}))
    return CheckReport(rows, ds)


# long_name and units of every variable and coordinate of check.nc (units None: text or an index)
_CHECK_ATTRS = {
    "measured": ("the quantity each row measures", "1"),
    "passed": ("verdict of the row: 1 PASS, 0 FAIL, -1 info, -2 n/a, -3 not converged", "1"),
    "quantity": ("what the row measures", None),
    "criterion": ("the row's criterion", None),
    "row": ("row of the table", None),
    "check": ("the paper's claim the row checks", None),
    "rule": ("EP learning rule", None),
    "nudging": ("nudging of the EP estimate", None),
    "beta": ("index of the nudging strength in the EP-order grid", None),
    "ep_error": ("relative error of the EP update against the paper's nu", "1"),
    "ep_beta_values": ("nudging strength beta of the EP-order grid", "1"),
    "horizon": ("index of the BPTT horizon", None),
    "horizon_values": ("BPTT horizon T", "tau"),
    "bptt_error": ("relative error of BPTT(T) against RBP", "1"),
    "feedback_deg": ("angle between the feedback weights and the transposed feedforward ones", "degree"),
    "asymmetry": ("relative asymmetry of the Jacobian, |J - J^T| / |J|", "1"),
    "angle_nu_grad": ("angle between nu and -dJ/dtheta", "degree"),
    "scheme_beta": ("index of the nudging strength in the clipped scheme's grid", None),
    "scheme_beta_values": ("nudging strength beta of the clipped scheme's grid", "1"),
    "scheme_ep_error": ("relative error of the card scheme's EP update against its own nu", "1"),
    "slowest_eigenvalue": ("slowest (largest real part) eigenvalue of the Jacobian at the free fixed point", "1/tau"),
}


def _rbp_rows(ctx, full_fd_limit, say):
    say("free fixed point, RBP, finite differences")
    net, x, y, s, g = ctx.net, ctx.x, ctx.y, ctx.s, ctx.grad
    n_params = ravel_pytree(eqx.partition(net, eqx.is_inexact_array)[0])[0].size
    if n_params <= full_fd_limit:
        fd = G.finite_difference(net, x, y, s_free=s)
        return [_at_most("RBP = finite differences", "‖rbp − fd‖/‖fd‖ (all entries)", G.relative_error(g, fd), 1e-8)], {}
    dirs = np.asarray(jr.normal(jr.fold_in(ctx.key, 1), (8, n_params), jnp.float64))
    fdd = _fd_directional(net, x, y, s, dirs, 1e-5)
    exact = dirs @ np.asarray(ravel_pytree(g)[0])
    return [_at_most("RBP = finite differences", "‖⟨rbp,d⟩ − fd‖/‖fd‖ (8 directions)",
                     np.linalg.norm(exact - fdd) / np.linalg.norm(fdd), 1e-6)], {}


def _lemma2_rows(ctx, betas, say):
    say(f"Lemma 2 at β ∈ {betas}")
    net, x, y, s = ctx.net, ctx.x, ctx.y, ctx.s
    h, rows = 1e-5, []
    if 0.0 in betas:
        params, static = eqx.partition(net, eqx.is_inexact_array)
        tangent = jax.tree_util.tree_map(lambda a: jr.normal(jr.fold_in(ctx.key, 2), a.shape, a.dtype), params)
        shifted = lambda e: eqx.combine(jax.tree_util.tree_map(lambda p, t: p + e * t, params, tangent), static)
        fd_theta = _central(lambda e: G.fixed_point(shifted(e), x, s_init=s, relax=False), h)
        rows.append(_at_most("Lemma 2 (θ)", "ds⁰/dθ·t vs central FD",
                             _relerr_state(G.dfixed_point_dtheta(net, x, tangent, s=s), fd_theta), 1e-7))
    for beta in betas:
        sb = s if beta == 0.0 else G.fixed_point(net, x, y, beta=beta, s_init=s)
        fd_beta = _central(lambda e: G.fixed_point(net, x, y, beta=beta + e, s_init=sb, relax=False), h)
        rows.append(_at_most(f"Lemma 2 (β={beta:g})", "ds^β/dβ vs central FD",
                             _relerr_state(G.dfixed_point_dbeta(net, x, y, beta=beta, s=sb), fd_beta), 1e-7))
    return rows, {}


def _ep_rows(ctx, say):
    net, x, y, s, nu = ctx.net, ctx.x, ctx.y, ctx.s, ctx.nu
    pattern0 = CC.kink_pattern(net, s)
    where = ""
    if pattern0 is None:
        betas = CC.BETAS_SMOOTH
    else:  # piecewise-linear ρ: the orders hold while no unit crosses a kink
        betas = CC.linear_betas(pattern0, lambda b: CC.kink_pattern(net, G.fixed_point(net, x, y, beta=b, s_init=s)))
        where = ", β in s⁰'s linear region"
        if betas is None:
            return [_row(f"EP → ν ({r}, {n})", "order p in β", float("nan"), "n/a",
                         "no β keeps s^β in s⁰'s linear region")
                    for r in ("endpoint", "integrated") for n in ("one-sided", "centered")], {}
    say(f"EP estimate → ν, β ∈ [{betas[-1]:.3g}, {betas[0]:.3g}]")
    free = CC.as_free(x, s)
    ep_err, rows = np.zeros((2, 2, len(betas))), []
    for i, rule in enumerate(("endpoint", "integrated")):
        for j, nudging in enumerate(("one-sided", "centered")):
            for k, beta in enumerate(betas):
                u = ep_update(net, x, y, beta=beta, rule=rule, nudging=nudging, solver=G.TIGHT, tol=EP_TOL,
                              free=free, t_nudged=1000.0, policy="raise")
                ep_err[i, j, k] = G.relative_error(u, nu)
            want = 1.0 if nudging == "one-sided" else 2.0
            rows.append(_within(f"EP → ν ({rule}, {nudging})", "order p: ‖ep − ν‖/‖ν‖ ∝ β^p" + where,
                                CC.order(betas, ep_err[i, j]), want - 0.15, want + 0.15))
    return rows, {"ep_error": (("rule", "nudging", "beta"), ep_err), "ep_beta_values": ("beta", np.array(betas))}


def _nu_rows(ctx, say):
    """ν against −∇J, with the relation the dynamics predict: equal iff Jμ is symmetric."""
    say("ν versus −∇J")
    asym = float(np.max(asymmetry(ctx.jac)))
    minus_g = jax.tree_util.tree_map(jnp.negative, ctx.grad)
    diff = G.relative_error(ctx.nu, minus_g)
    if asym <= SYMMETRIC:
        return [_at_most("ν = −∇J (symmetric Jμ)", f"‖ν + ∇J‖/‖∇J‖, this net (asym(Jμ) = {asym:.1e})", diff, 1e-9)], {}
    return [_at_least("ν ≠ −∇J (asymmetric Jμ)", f"‖ν + ∇J‖/‖∇J‖, this net (asym(Jμ) = {asym:.2g}; "
                      f"angle {G.angle(ctx.nu, minus_g):.3g}°)", diff, 1e-6)], {}


def _sweep_rows(ctx, say):
    say(f"ν versus −∇J as the feedback rotates ({SWEEP_NET})")
    sweep_x, sweep_y = problem_data((5, 3), 3, jr.fold_in(ctx.key, 3))
    asym, angles, margin, rows = [], [], [], []
    for deg in FEEDBACK_DEGREES:
        tn = tied_linear_network((5, 6, 6, 3), jr.fold_in(ctx.key, 4), feedback=deg)
        ts = G.fixed_point(tn, sweep_x)
        flat_s = np.concatenate([np.asarray(a) for a in ts], axis=-1)
        margin.append(min(flat_s.min(), 1.0 - flat_s.max()))
        asym.append(float(np.mean(asymmetry(G.jacobian(tn, sweep_x, ts)))))
        t_nu = G.nu(tn, sweep_x, sweep_y, s_free=ts)
        t_g = jax.tree_util.tree_map(jnp.negative, G.rbp(tn, sweep_x, sweep_y, s_free=ts))
        angles.append(G.angle(t_nu, t_g))
        if deg == 0.0:
            rows.append(_at_most(f"ν = −∇J (tied, linear range) [{SWEEP_NET}]", "‖ν + ∇J‖/‖∇J‖",
                                 G.relative_error(t_nu, t_g), 1e-9))
    rows.append(_at_least(f"  (linear range) [{SWEEP_NET}]", "min distance of s⁰ to the kinks 0, 1", min(margin), 1e-3))
    rows.append(_at_most(f"  (symmetric Jμ) [{SWEEP_NET}]", "‖Jμ − Jμᵀ‖/‖Jμ‖ at 0°", asym[0], SYMMETRIC))
    rows.append(_at_least(f"ν ≠ −∇J (feedback 90°) [{SWEEP_NET}]", "angle(ν, −∇J) in degrees",
                          angles[FEEDBACK_DEGREES.index(90.0)], 1.0))
    return rows, {"asymmetry": ("feedback_deg", np.array(asym)), "angle_nu_grad": ("feedback_deg", np.array(angles))}


def _prop5_rows(ctx, say):
    say("Proposition 5")
    net, x, y, s = ctx.net, ctx.x, ctx.y, ctx.s
    jac = ctx.jac
    stable = np.linalg.eigvalsh((jac + np.swapaxes(jac, -1, -2)) / 2).max(axis=-1) < 0
    dcdb = np.asarray(G.dcost_dbeta(net, x, y, s_free=s))
    cost_at = lambda e: net.cost(G.fixed_point(net, x, y, beta=e, s_init=s, relax=False), y)
    fd = np.asarray(_central(cost_at, 1e-5))
    n = f"{int(stable.sum())}/{stable.size}"
    if stable.any():
        sign = _at_most("Proposition 5", f"max d/dβ C(s^β) at β=0 over the {n} stable samples", dcdb[stable].max(), 0.0)
    else:
        sign = _row("Proposition 5", "max d/dβ C(s^β) at β=0 over stable samples (sym(Jμ) < 0)",
                    float("nan"), "n/a", f"no sample has sym(Jμ) < 0 ({n})")
    return [sign, _at_most("Proposition 5", "d/dβ C formula vs central FD (rel.)",
                           np.linalg.norm(dcdb - fd) / np.linalg.norm(fd), 1e-7)], {}


def bptt_horizons(slowest: float, fastest: float):
    """Horizons `T_max · HORIZON_FRACTIONS` with `T_max = 25/|λ_slowest|` (at least 32: the error
    has decayed by e⁻²⁵ ≈ 1e-11), and the constant step (≥ BPTT_DT, `≤ 1/|λ_fastest|`) that
    reaches `T_max` in at most 640 steps when it can."""
    t_max = max(32.0, 25.0 / abs(slowest))
    dt = max(BPTT_DT, min(t_max / 640, 1.0 / max(abs(fastest), 1e-12)))
    return tuple(t_max * f for f in HORIZON_FRACTIONS), dt


def _bptt_rows(ctx, say):
    net, x, y, s, g = ctx.net, ctx.x, ctx.y, ctx.s, ctx.grad
    eig = np.linalg.eigvals(ctx.jac)
    slowest = float(np.max(eig.real))
    if not slowest < 0:
        return [_row("BPTT(T) → RBP", "slowest Re eig(Jμ)", slowest, "n/a", "s⁰ is not stable")], {"slowest_eigenvalue": slowest}
    horizons, dt = bptt_horizons(slowest, float(np.max(np.abs(eig))))
    say(f"BPTT(T) → RBP for T up to {horizons[-1]:.3g} (slowest eigenvalue {slowest:.3g}), Corollary 7")
    steps = int(math.ceil(horizons[-1] / dt)) + 8  # one compilation for every horizon
    err = np.array([G.relative_error(G.bptt(net, x, y, T=T, dt=dt, max_steps=steps), g) for T in horizons])
    fit = err > 1e-10  # above the round-off floor
    rows = []
    if fit.sum() >= 3:
        rate = np.polyfit(np.asarray(horizons)[fit], np.log(err[fit]), 1)[0]
        rows.append(_within("BPTT(T) → RBP", "decay rate / slowest Re eig(Jμ)", rate / slowest, 0.7, 1.3))
    else:
        rows.append(_row("BPTT(T) → RBP", "decay rate / slowest Re eig(Jμ)", float("nan"), "n/a",
                         "fewer than 3 horizons above round-off"))
    rows.append(_at_most("BPTT(T) → RBP", f"‖bptt(T={horizons[-1]:.3g}) − rbp‖/‖rbp‖", err[-1], 1e-8))
    cor_T = (0.5, 2.0, 8.0, 32.0)
    cor_steps = int(math.ceil(32.0 / BPTT_DT)) + 8
    cor7 = [G.relative_error(G.rbp_adjoint(net, x, y, T=T, s_free=s),
                             G.bptt(net, x, y, T=T, s_init=s, dt=BPTT_DT, max_steps=cor_steps)) for T in cor_T]
    rows.append(_at_most("Corollary 7 = BPTT from s⁰", "max over T ∈ {0.5, 2, 8, 32} (rel.)", max(cor7), 1e-9))
    rows.append(_at_most("Corollary 7 → RBP", f"‖cor7(T={horizons[-1]:.3g}) − rbp‖/‖rbp‖",
                         G.relative_error(G.rbp_adjoint(net, x, y, T=horizons[-1], s_free=s), g), 1e-8))
    return rows, {"bptt_error": ("horizon", err), "horizon_values": ("horizon", np.array(horizons)),
                  "slowest_eigenvalue": slowest}


def _thm6_rows(ctx, say):
    """Theorem 6 from zeros; for the hard sigmoid (whose kinks a path from zeros crosses, where
    both the stored path's reading and BPTT's steps are only first-order) from `s⁰ + δ`, a start
    whose whole path stays in one linear region of ρ."""
    net, x, y = ctx.net, ctx.x, ctx.y
    T6 = 8.0
    s_init, where = None, "from zeros"
    pattern0 = CC.kink_pattern(net, ctx.s)
    if pattern0 is not None:
        flat0 = np.concatenate([np.asarray(a) for a in ctx.s], axis=-1)
        dist = np.min(np.abs(flat0[..., None] - np.array([0.0, 1.0])), axis=-1)
        direction = np.asarray(jr.rademacher(jr.fold_in(ctx.key, 5), flat0.shape, jnp.float64))
        delta = 0.5 * float(dist.min())
        for _ in range(CC.HALVINGS):
            start = _unflatten(ctx.s, flat0 + delta * direction)
            traj = G.trajectory(net, x, T=T6, s_init=start)
            path = np.asarray(traj.s.values)
            if all(np.array_equal(CC.kink_pattern(net, (p,)), pattern0) for p in path):
                break
            delta /= 2
        else:
            return [_row("Theorem 6 = autodiff BPTT", "adjoint ODE on stored path vs BPTT", float("nan"), "n/a",
                         "no start near s⁰ keeps the path in one linear region")], {}
        s_init, where = start, f"from s⁰ + δ, |δ| = {delta:.2g}, one linear region"
    say(f"Theorem 6 ({where})")
    traj = G.trajectory(net, x, T=T6, s_init=s_init)
    thm6 = G.bptt_adjoint(net, x, y, traj)
    steps = int(math.ceil(T6 / BPTT_DT)) + 8
    ref = G.bptt(net, x, y, T=T6, s_init=s_init, dt=BPTT_DT, max_steps=steps)
    return [_at_most("Theorem 6 = autodiff BPTT", f"adjoint ODE on stored path vs BPTT (T={T6:g}, {where})",
                     G.relative_error(thm6, ref), 1e-7)], {}


def _unflatten(like, flat):
    out, i = [], 0
    for a in like:
        n = a.shape[-1]
        out.append(jnp.asarray(flat[..., i:i + n], a.dtype))
        i += n
    return tuple(out)
