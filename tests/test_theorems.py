"""The paper's §5 and Appendices A–B, checked numerically in float64 on random small networks."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import xarray as xr
from jax.flatten_util import ravel_pytree

import ctgep
from ctgep._theory import checks as _checks
from ctgep import gradients as G

from theory_problems import BPTT_STEPS, SIZES, SMOOTH, neg, problem, settled_fixed_point

HYP = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
H = 1e-5


def rel(a, b):
    u, v = ravel_pytree(a)[0], ravel_pytree(b)[0]
    return float(jnp.linalg.norm(u - v) / jnp.linalg.norm(v))


def central(f, h=H):
    return jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * h), f(h), f(-h))


@given(seed=st.integers(0, 2**16), activation=st.sampled_from(SMOOTH))
@HYP
def test_lemma2_fixed_point_derivative_in_theta(x64, seed, activation):
    net, x, _ = problem(seed, activation)
    s = settled_fixed_point(net, x)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    t = jax.tree_util.tree_map(lambda a: jr.normal(jr.PRNGKey(seed + 1), a.shape, a.dtype), params)
    moved = lambda h: eqx.combine(jax.tree_util.tree_map(lambda p, d: p + h * d, params, t), static)
    fd = central(lambda h: G.fixed_point(moved(h), x, s_init=s, relax=False))
    assert rel(G.dfixed_point_dtheta(net, x, t, s=s), fd) < 1e-6


@given(seed=st.integers(0, 2**16), beta=st.sampled_from([0.0, 0.3, 1.0]))
@HYP
def test_lemma2_fixed_point_derivative_in_beta(x64, seed, beta):
    net, x, y = problem(seed)
    s = settled_fixed_point(net, x, y, beta=beta)
    fd = central(lambda h: G.fixed_point(net, x, y, beta=beta + h, s_init=s, relax=False))
    assert rel(G.dfixed_point_dbeta(net, x, y, beta=beta, s=s), fd) < 1e-6


def _order(betas, errors):
    return np.polyfit(np.log(betas), np.log(errors), 1)[0]


@pytest.mark.parametrize("rule", ["endpoint", "integrated"])
def test_ep_estimate_tends_to_nu_at_order_one_and_two(x64, rule):
    net, x, y = problem(11)
    s = G.fixed_point(net, x)
    nu = G.nu(net, x, y, s_free=s)
    free = eqx.tree_at(lambda r: r.state, ctgep.free_phase(net, x, solver=G.TIGHT, tol=1e-9), s)
    betas = (0.08, 0.04, 0.02, 0.01)
    errs = {}
    for nudging in ("one-sided", "centered"):
        errs[nudging] = [
            G.relative_error(ctgep.ep_update(net, x, y, beta=b, rule=rule, nudging=nudging,
                                             solver=G.TIGHT, tol=1e-9, free=free), nu)
            for b in betas
        ]
    assert 0.85 < _order(betas, errs["one-sided"]) < 1.15
    assert 1.8 < _order(betas, errs["centered"]) < 2.2
    # Centered nudging is much closer at the same β.
    assert errs["centered"][-1] < 0.05 * errs["one-sided"][-1]


@pytest.mark.slow
def test_nu_is_minus_gradient_iff_jacobian_is_symmetric(x64):
    x, y = _checks.problem_data((SIZES[0], SIZES[-1]), 3, jr.PRNGKey(2))
    tied = _checks.tied_linear_network(SIZES, jr.PRNGKey(5), feedback=0.0)
    s = G.fixed_point(tied, x)
    flat = np.concatenate([np.asarray(a) for a in s], axis=-1)
    assert 0.0 < flat.min() and flat.max() < 1.0  # every unit in the hard sigmoid's linear range
    assert _checks.asymmetry(G.jacobian(tied, x, s)).max() < 1e-12
    assert G.relative_error(G.nu(tied, x, y, s_free=s), neg(G.rbp(tied, x, y, s_free=s))) < 1e-10

    untied = _checks.tied_linear_network(SIZES, jr.PRNGKey(5), feedback=60.0)
    s = G.fixed_point(untied, x)
    assert _checks.asymmetry(G.jacobian(untied, x, s)).min() > 0.1
    assert G.angle(G.nu(untied, x, y, s_free=s), neg(G.rbp(untied, x, y, s_free=s))) > 5.0


@given(seed=st.integers(0, 2**16), activation=st.sampled_from(SMOOTH))
@HYP
def test_proposition5_cost_decreases_with_beta_at_stable_fixed_points(x64, seed, activation):
    net, x, y = problem(seed, activation)
    s = settled_fixed_point(net, x)
    jac = np.asarray(G.jacobian(net, x, s))
    stable = np.linalg.eigvalsh((jac + np.swapaxes(jac, -1, -2)) / 2).max(axis=-1) < 0
    dcdb = np.asarray(G.dcost_dbeta(net, x, y, s_free=s))
    fd = np.asarray(central(lambda h: net.cost(G.fixed_point(net, x, y, beta=h, s_init=s, relax=False), y)))
    np.testing.assert_allclose(dcdb, fd, rtol=1e-6, atol=1e-12)
    assert np.all(dcdb[stable] <= 0.0)


def test_bptt_error_decays_at_the_slowest_eigenvalue(x64):
    net, x, y = problem(7)
    s = G.fixed_point(net, x)
    g = G.rbp(net, x, y, s_free=s)
    horizons = np.array([4.0, 8.0, 16.0, 24.0, 32.0])
    errs = np.array([G.relative_error(G.bptt(net, x, y, T=T, max_steps=BPTT_STEPS), g) for T in horizons])
    rate, _ = np.polyfit(horizons, np.log(errs), 1)
    slowest = np.linalg.eigvals(np.asarray(G.jacobian(net, x, s))).real.max()
    assert np.all(np.diff(errs) < 0)
    assert 0.7 < rate / slowest < 1.3
    assert errs[-1] < 1e-8


def test_bptt_from_the_fixed_point_is_the_corollary7_process(x64):
    net, x, y = problem(8)
    s = G.fixed_point(net, x)
    for T in (0.25, 1.0, 4.0, 16.0):
        cor7 = G.rbp_adjoint(net, x, y, T=T, s_free=s)
        assert rel(cor7, G.bptt(net, x, y, T=T, s_init=s, max_steps=BPTT_STEPS)) < 1e-8
    assert rel(G.rbp_adjoint(net, x, y, T=60.0, s_free=s), G.rbp(net, x, y, s_free=s)) < 1e-8


def test_theorem6_backward_along_the_stored_trajectory_matches_autodiff_bptt(x64, tmp_path):
    net, x, y = problem(9)
    traj = G.trajectory(net, x, T=6.0)
    assert traj.s.dims == ("time", "sample", "neuron")
    assert list(np.unique(traj.layer.values)) == [1, 2, 3]
    # The backward pass reads the trajectory from disk: nothing is recomputed forward.
    traj.to_netcdf(tmp_path / "traj.nc")
    stored = xr.load_dataset(tmp_path / "traj.nc")
    g = G.bptt_adjoint(net, x, y, stored)
    assert rel(g, G.bptt(net, x, y, T=6.0, max_steps=BPTT_STEPS)) < 1e-5
    # A coarser stored grid degrades gracefully, not catastrophically (cubic Hermite reading).
    coarse = stored.isel(time=slice(None, None, 4))
    assert rel(G.bptt_adjoint(net, x, y, coarse), g) < 1e-4


@pytest.mark.slow
def test_theorem6_adjoint_at_the_start_is_the_gradient_with_respect_to_the_initial_state(x64):
    # λ(T) = ∂L/∂s_0, against autodiff through a plain diffrax solve of the forward dynamics.
    net, x, y = problem(9)
    drive = net.drive(x)

    def L(s0):
        sol = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, s, a: net.vector_field(s, drive)),
                                  diffrax.Tsit5(), 0.0, 6.0, 0.01, s0,
                                  saveat=diffrax.SaveAt(t1=True), max_steps=700)
        return jnp.mean(net.cost(tuple(a[-1] for a in sol.ys), y))

    s0 = net.init_state(x)
    _, lam = G.bptt_adjoint(net, x, y, G.trajectory(net, x, T=6.0), return_adjoint=True)
    assert rel(lam, jax.grad(L)(s0)) < 1e-5


def test_theorem6_rejects_a_mismatched_trajectory(x64):
    net, x, y = problem(9)
    traj = G.trajectory(net, x, T=1.0, n_times=11)
    with pytest.raises(ValueError, match="samples"):
        G.bptt_adjoint(net, x[:2], y[:2], traj)
    with pytest.raises(ValueError, match="no variable"):
        G.bptt_adjoint(net, x, y, traj, state_var="v")


BETAS = (0.1, 0.05, 0.02, 0.01, 0.005)
HORIZONS = (2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0)


def _report(passed):
    rows = [_checks.Row("RBP = finite differences", "rel", 1e-11, "≤ 1e-06", True),
            _checks.Row("Theorem 6", "rel", 1.0 if not passed else 1e-9, "≤ 1e-05", passed)]
    ds = xr.Dataset(
        {"ep_error": (("rule", "nudging", "beta"), np.outer(np.ones(4), BETAS).reshape(2, 2, -1)),
         "ep_beta_values": ("beta", list(BETAS)),
         "bptt_error": ("horizon", np.exp(-np.array(HORIZONS))),
         "horizon_values": ("horizon", list(HORIZONS)),
         "asymmetry": ("feedback_deg", np.linspace(0, 0.6, len(_checks.FEEDBACK_DEGREES))),
         "angle_nu_grad": ("feedback_deg", np.linspace(0, 40, len(_checks.FEEDBACK_DEGREES))),
         "measured": ("row", [r.measured for r in rows]), "passed": ("row", np.array([int(r.passed) for r in rows], np.int8)),
         "quantity": ("row", [r.quantity for r in rows]), "criterion": ("row", [r.criterion for r in rows]),
         "slowest_eigenvalue": -1.0},
        coords={"row": [0, 1], "check": ("row", [r.check for r in rows]), "rule": ["endpoint", "integrated"],
                "nudging": ["one-sided", "centered"], "beta": list(range(len(BETAS))),
                "horizon": list(range(len(HORIZONS))), "feedback_deg": list(_checks.FEEDBACK_DEGREES)},
    )
    return _checks.CheckReport(rows, ds)


@pytest.mark.parametrize("passed", [True, False])
def test_check_cli_prints_the_table_writes_files_and_sets_the_exit_code(monkeypatch, tmp_path, capsys, passed):
    from ctgep._cli import main

    monkeypatch.setattr(_checks, "run_checks", lambda *a, **kw: _report(passed))
    code = main(["check", "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == (0 if passed else 1)
    assert "RBP = finite differences" in out and ("FAIL" in out) != passed
    ds = xr.load_dataset(tmp_path / "check.nc")
    assert list(ds.check.values) == ["RBP = finite differences", "Theorem 6"]
    assert list(ds.passed.values) == [1, int(passed)]
    assert (tmp_path / "check.png").stat().st_size > 10_000


def test_check_cli_rejects_an_unknown_card(tmp_path):
    from ctgep._cli import main

    assert main(["check", "--card", str(tmp_path / "nope.toml"), "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_ctgep_check_passes_end_to_end(tmp_path):
    from ctgep._cli import main

    assert main(["check", "--out", str(tmp_path), "--quiet"]) == 0
    ds = xr.load_dataset(tmp_path / "check.nc")
    assert int(ds.passed.min()) == 1 and ds.attrs["all_passed"] == 1  # 1 pass, 0 fail, -1 info


# --------------------------------------------------------------------------- issue 19: honest checks


def _verdicts(report):
    return {(r.check, r.verdict) for r in report.rows}


@pytest.mark.slow
def test_check_expects_nu_equal_minus_gradient_on_an_energy_network(x64):
    # Jμ is a Hessian: the expected relation is ν = −∇J (it used to FAIL as "ν ≠ −∇J").
    net = ctgep.EnergyNetwork(SIZES, "sigmoid", key=jr.PRNGKey(3), dtype=jnp.float64)
    _, x, y = problem(3)
    report = _checks.run_checks(net, x, y, only=("nu",))
    (row,) = report.rows
    assert row.check == "ν = −∇J (symmetric Jμ)" and row.verdict == "PASS" and row.measured < 1e-9
    untied = _checks.run_checks(*problem(3), only=("nu",)).rows[0]
    assert untied.check == "ν ≠ −∇J (asymmetric Jμ)" and untied.verdict == "PASS"


class _RepelledOutputs(ctgep.AbstractDynamics):
    """A settling network whose cost pushes the outputs *away* (C = −2‖y − s‖²): at β = 0.5 the
    nudged outputs have a net anti-leak and never settle."""

    net: ctgep.LayeredNetwork

    def init_state(self, x):
        return self.net.init_state(x)

    def drive(self, x):
        return self.net.drive(x)

    def vector_field(self, state, drive):
        return self.net.vector_field(state, drive)

    def output(self, state):
        return state[-1]

    def cost(self, state, y):
        return -2.0 * jnp.sum((y - state[-1]) ** 2, axis=-1)


def test_check_marks_rows_not_converged_instead_of_raising(x64):
    net, x, y = problem(0)
    report = _checks.run_checks(_RepelledOutputs(net), x, y, only=("lemma2",))
    verdicts = {r.check: r.verdict for r in report.rows}
    assert verdicts["Lemma 2 (β=0.5)"] == "not converged"
    assert verdicts["Lemma 2 (θ)"] == "PASS" and verdicts["Lemma 2 (β=0)"] == "PASS"
    assert not report.passed and "not converged" in report.table()
    assert int(report.data.passed.min()) == _checks.VERDICT_CODES["not converged"]


@pytest.mark.slow
def test_check_sweep_rows_say_they_use_an_internal_network(x64):
    net = ctgep.LayeredNetwork((4, 7, 2), "sigmoid", key=jr.PRNGKey(0), dtype=jnp.float64)
    report = _checks.run_checks(net, only=("sweep",))
    assert report.rows and all("[internal (5, 6, 6, 3) net]" in r.check for r in report.rows)


@pytest.mark.slow
def test_check_ep_rows_catch_a_sabotaged_update_on_hard_sigmoid(x64, monkeypatch):
    net, x, y = problem(0, "hard_sigmoid")
    honest = _checks.run_checks(net, x, y, only=("ep",))
    assert [r.verdict for r in honest.rows] == ["PASS"] * 4
    real = _checks.ep_update
    monkeypatch.setattr(_checks, "ep_update", lambda *a, **kw: jax.tree_util.tree_map(lambda u: 2 * u, real(*a, **kw)))
    sabotaged = _checks.run_checks(net, x, y, only=("ep",))
    assert [r.verdict for r in sabotaged.rows] == ["FAIL"] * 4


def test_check_proposition5_without_stable_samples_is_not_applicable(x64):
    net, x, y = problem(0)
    ctx = _checks._Context(net, x, y, jr.PRNGKey(0))
    n = sum(net.sizes[1:])
    ctx._cache["jac"] = np.broadcast_to(np.eye(n), (x.shape[0], n, n))  # sym(Jμ) > 0 everywhere
    rows, _ = _checks._prop5_rows(ctx, lambda m: None)
    assert rows[0].verdict == "n/a" and "0/3" in rows[0].criterion
    assert rows[1].verdict == "PASS"


@pytest.mark.slow
def test_check_bptt_horizons_scale_with_the_slowest_eigenvalue(x64):
    net, x, y = _checks.slow_problem()
    report = _checks.run_checks(net, x, y, only=("bptt",))
    assert report.data.slowest_eigenvalue > -0.06  # the fixed T = 32 would leave an error ~0.2
    assert [r.verdict for r in report.rows] == ["PASS"] * 4, report.table()
    assert float(report.data.horizon_values.max()) >= 25 / 0.06


@pytest.mark.slow
def test_check_criteria_are_tight_for_float64(x64):
    report = _checks.run_checks(*problem(9), only=("thm6", "rbp"))
    bounds = {r.check: float(r.criterion.split()[-1]) for r in report.rows}
    assert bounds["Theorem 6 = autodiff BPTT"] <= 1e-7 and bounds["RBP = finite differences"] <= 1e-8
    assert all(r.verdict == "PASS" for r in report.rows)


def test_check_nc_follows_the_cf_conventions(x64, tmp_path):
    """Every variable and coordinate of check.nc has a long_name, every numeric one a unit."""
    import xarray as xr

    net, x, y = problem(0)
    report = _checks.run_checks(net, x, y, only=("rbp",))
    nc, _ = _checks.write_report(report, tmp_path)
    ds = xr.open_dataset(nc)
    for name in ds.variables:
        assert "long_name" in ds[name].attrs, name
        if ds[name].dtype.kind == "f":
            assert "units" in ds[name].attrs, name


def test_check_refuses_an_unwritable_out_before_working(tmp_path, capsys):
    from ctgep._cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["check", "--out", str(blocker / "sub"), "--only", "rbp"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file, not a folder" in err and "\n" not in err
