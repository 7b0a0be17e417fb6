"""ctgep.stability: fixed points, spectra (dense and ARPACK), the Euler iteration, basins, CLI."""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import xarray as xr

import ctgep
from ctgep import stability as S
from ctgep._cli import stability as cli


class Linear(ctgep.AbstractDynamics, strict=True):
    """`μ = A s + b`: one layer whose Jacobian is `A` everywhere (known spectrum)."""

    A: jax.Array
    b: jax.Array

    def init_state(self, x):
        return (jnp.zeros((x.shape[0], self.b.shape[0]), self.b.dtype),)

    def vector_field(self, state, drive):
        return (state[0] @ self.A.T + self.b,)

    def output(self, state):
        return state[0]


class SelfExcitatory(ctgep.AbstractDynamics, strict=True):
    """`μ = w·mean(tanh(s)) + 0.1·x − s` on one layer: bistable (two stable states ±s*) for w > 1."""

    w: float

    def init_state(self, x):
        return (jnp.zeros((x.shape[0], 3), x.dtype),)

    def vector_field(self, state, drive):
        s = state[0]
        return (self.w * jnp.mean(jnp.tanh(s), axis=-1, keepdims=True) + 0.1 * drive[:, :1] - s,)

    def output(self, state):
        return state[0]


def _linear(eigs, key, symmetric=False, b=None):
    n = len(eigs)
    q = jr.normal(key, (n, n), jnp.float64)
    q = jnp.linalg.qr(q)[0] if symmetric else q
    A = q @ jnp.diag(jnp.asarray(eigs, jnp.float64)) @ jnp.linalg.inv(q)
    b = jnp.ones(n, jnp.float64) if b is None else b
    return Linear(A, b), q


def _x(batch, n, seed=1):
    return jr.uniform(jr.PRNGKey(seed), (batch, n), jnp.float64)


@pytest.mark.parametrize("activation,solver", [("sigmoid", None), ("hard_sigmoid", ctgep.Euler(dt=0.5))])
def test_fixed_points_have_residual_below_tolerance(x64, activation, solver):
    net = ctgep.LayeredNetwork((6, 8, 8, 3), activation, key=jr.PRNGKey(3), dtype=jnp.float64)
    x = _x(7, 6)
    fp = S.fixed_points(net, x, solver=solver, tol=1e-10)
    assert np.all(fp.converged) and np.max(fp.residual) < 1e-10
    mu = net.vector_field(fp.state, net.drive(x))
    assert max(float(jnp.max(jnp.abs(m))) for m in mu) < 1e-10
    # The clipped relaxation ends at clip(s*); the polish recovers the unclipped s* itself.
    if activation == "hard_sigmoid":
        assert any(bool(jnp.any(a > 1) | jnp.any(a < 0)) for a in fp.state)


def test_fixed_points_flag_instead_of_raising(x64):
    net = SelfExcitatory(2.0)
    fp = S.fixed_points(net, _x(3, 2), solver=ctgep.Euler(dt=0.5), t_max=0.5, polish=False, tol=1e-12)
    assert not np.any(fp.converged) and not np.any(fp.relax_converged)


def test_jacobian_eigenvalues_match_jacfwd_and_arpack_matches_dense(x64):
    net = ctgep.LayeredNetwork((5, 9, 8, 4), "tanh", key=jr.PRNGKey(1), dtype=jnp.float64)
    x = _x(4, 5)
    fp = S.fixed_points(net, x)
    dense = S.jacobian_spectrum(net, x, fp, n_eig=5, method="dense")
    arnoldi = S.jacobian_spectrum(net, x, fp, n_eig=5, method="arnoldi", arpack_tol=1e-12)
    for i in range(x.shape[0]):
        si = jax.tree_util.tree_map(lambda a: a[i], fp.state)
        flat, unravel = jax.flatten_util.ravel_pytree(si)

        def f(v):
            s = jax.tree_util.tree_map(lambda a: a[None], unravel(v))
            return jax.flatten_util.ravel_pytree(net.vector_field(s, net.drive(x[i:i + 1])))[0]

        jac = np.asarray(jax.jacfwd(f)(flat))
        vals = np.linalg.eigvals(jac)
        np.testing.assert_allclose(dense.spectral_abscissa[i], vals.real.max(), atol=1e-12)
        np.testing.assert_allclose(np.sort(dense.eig_real[i]), np.sort(np.sort(vals.real)[::-1][:5]), atol=1e-10)
        np.testing.assert_allclose(dense.symmetric_max[i], np.linalg.eigvalsh((jac + jac.T) / 2).max(), atol=1e-12)
        np.testing.assert_allclose(dense.asymmetry[i], np.linalg.norm(jac - jac.T) / np.linalg.norm(jac), rtol=1e-10)
        np.testing.assert_allclose(dense.condition_number[i], np.linalg.cond(jac), rtol=1e-8)
    np.testing.assert_allclose(arnoldi.spectral_abscissa, dense.spectral_abscissa, atol=1e-8)
    np.testing.assert_allclose(arnoldi.symmetric_max, dense.symmetric_max, atol=1e-8)
    np.testing.assert_allclose(arnoldi.eig_real, dense.eig_real, atol=1e-7)
    # At the cut-off (the smallest real part kept) two conjugate pairs can share a real part;
    # ARPACK and LAPACK may then keep different ones, so |Im λ| is compared above the cut-off.
    cut = np.asarray(dense.eig_real).min(axis=1, keepdims=True)
    above = np.asarray(dense.eig_real) > cut + 1e-6
    np.testing.assert_allclose(np.abs(arnoldi.eig_imag.values)[above], np.abs(dense.eig_imag.values)[above], atol=1e-7)
    assert arnoldi.attrs["spectrum_method"] == "arnoldi" and np.all(arnoldi.eig_converged)
    assert np.all(np.isnan(arnoldi.condition_number))


def test_linear_system_with_known_spectrum(x64):
    eigs = np.concatenate([[-0.05, -0.2, -0.3], -np.linspace(0.5, 3.0, 37)])
    net, _ = _linear(eigs, jr.PRNGKey(4))
    x = _x(2, 1)
    fp = S.fixed_points(net, x, solver=ctgep.Adaptive(rtol=1e-10, atol=1e-12), t_max=2000.0)
    assert np.all(fp.converged)
    for method in ("dense", "arnoldi"):
        ds = S.jacobian_spectrum(net, x, fp, n_eig=4, method=method, arpack_tol=1e-12)
        np.testing.assert_allclose(ds.eig_real.values, np.tile([-0.05, -0.2, -0.3, -0.5], (2, 1)), atol=1e-8)
        np.testing.assert_allclose(ds.eig_imag.values, 0.0, atol=1e-8)
    # Euler at dt: the iteration matrix I + dt A has spectral radius max |1 + dt λ|.
    it = S.iteration_spectrum(net, x, fp, solver=ctgep.Euler(dt=0.5), method="arnoldi", arpack_tol=1e-12)
    np.testing.assert_allclose(it.spectral_radius, 1 - 0.5 * 0.05, rtol=1e-8)
    it = S.iteration_spectrum(net, x, fp, solver=ctgep.Euler(dt=1.0), method="dense")
    np.testing.assert_allclose(it.spectral_radius, 2.0, rtol=1e-8)  # |1 − 3| : unstable at dt = 1


def test_tied_energy_network_has_a_symmetric_jacobian_with_negative_definite_symmetric_part(x64):
    net = ctgep.EnergyNetwork((6, 10, 8, 3), "sigmoid", key=jr.PRNGKey(2), dtype=jnp.float64)
    x = _x(5, 6)
    fp = S.fixed_points(net, x)
    ds = S.jacobian_spectrum(net, x, fp, method="dense")
    assert np.all(fp.converged)
    assert float(ds.asymmetry.max()) < 1e-12
    assert float(ds.symmetric_max.max()) < 0
    np.testing.assert_allclose(ds.symmetric_max, ds.spectral_abscissa, atol=1e-12)  # symmetric: equal
    np.testing.assert_allclose(ds.eig_imag, 0.0, atol=1e-12)


def _mutual(w):
    """1-1-1 hard-sigmoid layers exciting each other: both off or both on for w > 1."""
    net = ctgep.LayeredNetwork((1, 1, 1), "hard_sigmoid", key=jr.PRNGKey(0), dtype=jnp.float64)
    W = jnp.full((1, 1), w, jnp.float64)
    return eqx.tree_at(lambda n: (n.Wf, n.Wb, n.b), net,
                       ((jnp.zeros((1, 1), jnp.float64), W), (W,), (jnp.full(1, -0.5 * w / 2), jnp.full(1, -0.5 * w / 2))))


@pytest.mark.parametrize("bistable", [True, False])
def test_basins_count_the_stable_fixed_points(x64, bistable):
    x = _x(4, 1)
    for net, solver in ((SelfExcitatory(2.0 if bistable else 0.5), ctgep.Euler(dt=0.5)),
                        (_mutual(2.0 if bistable else 0.5), ctgep.Euler(dt=0.5))):
        ds = S.basins(net, x, inits=16, key=jr.PRNGKey(7), solver=solver)
        assert np.all(ds.basin_converged)
        assert np.all(ds.n_fixed_points == (2 if bistable else 1))
        assert float(ds.fraction_multistable) == (1.0 if bistable else 0.0)
        assert float(ds.fraction_not_converged) == 0.0
        labels = ds.basin_label.values
        assert labels.min() == 0 and labels.max() == (1 if bistable else 0)
        if bistable:  # both are stable fixed points, far apart (the saddle between has no basin)
            lo, hi = (net.state_bounds or (-2.0, 2.0))
            starts = tuple(jnp.concatenate([jnp.full((1,) + a.shape[1:], lo), jnp.full((1,) + a.shape[1:], hi)])
                           for a in net.init_state(x[:1]))
            fp = S.fixed_points(net, x[:2], s_init=starts, solver=solver)
            spec = S.jacobian_spectrum(net, x[:2], fp, method="dense")
            assert np.all(fp.converged) and np.all(spec.spectral_abscissa < 0)
            assert float(jnp.max(jnp.abs(fp.state[0][0] - fp.state[0][1]))) > 1.0


def test_predicted_euler_steps_match_the_measured_ones_on_a_linear_system(x64):
    eigs = np.concatenate([[-0.1], -np.linspace(1.0, 1.9, 11)])
    net, q = _linear(eigs, jr.PRNGKey(5), symmetric=True)
    # b along the slow eigenvector (plus a little of the others): the residual decays at ρ(M).
    net = eqx.tree_at(lambda n: n.b, net, q[:, 0] + 1e-3 * q[:, 1:].sum(axis=1))
    x = _x(1, 1)
    for dt in (0.25, 0.5, 1.0):
        ds = S.convergence(net, x, solver=ctgep.Euler(dt=dt, clip=False), tol=1e-8, t_max=2000.0, method="dense")
        np.testing.assert_allclose(ds.spectral_radius, 1 - 0.1 * dt, rtol=1e-10)
        measured, predicted = float(ds.measured_steps[0]), float(ds.predicted_steps[0])
        assert abs(measured - predicted) <= 1, (dt, measured, predicted)
        assert float(ds.measured_time[0]) == measured * dt


def test_euler_at_dt1_oscillates_under_the_nudge_and_the_preconditioned_step_does_not(x64):
    """Outputs under the nudge leak at 1 + β: the Euler factor 1 − dt(1 + β) = −1 at β = 1, dt = 1."""
    net = ctgep.LayeredNetwork((6, 10, 4), "sigmoid", key=jr.PRNGKey(8), dtype=jnp.float64)
    x = _x(3, 6)
    y = jax.nn.one_hot(jnp.arange(3) % 4, 4, dtype=jnp.float64)
    free = S.fixed_points(net, x)
    fp = S.fixed_points(net, x, y, beta=1.0, s_init=free.state)
    plain = S.iteration_spectrum(net, x, fp, y=y, beta=1.0, solver=ctgep.Euler(dt=1.0, clip=False), method="dense")
    jacobi = S.iteration_spectrum(net, x, fp, y=y, beta=1.0, solver=ctgep.Euler(dt=1.0, clip=False, precondition=True),
                                  method="dense")
    # The outputs' mode 1 − dt(1 + β) = −1, moved only slightly by the hidden layer: a period-2
    # oscillation that barely decays (ρ(M) ≈ 0.998), against ρ(M) < 0.9 with the Jacobi step.
    assert np.all(plain.spectral_radius > 0.99)
    assert np.all(plain.iter_eig_real[:, 0] < -0.99)
    assert np.all(jacobi.spectral_radius < 0.9)
    np.testing.assert_array_equal(S.unit_steps(net, x, fp.state, y=y, beta=1.0,
                                               solver=ctgep.Euler(dt=1.0, precondition=True))[0],
                                  np.r_[np.ones(10), 0.5 * np.ones(4)])
    m = S.convergence(net, x, y=y, beta=1.0, s_init=free.state, fixed=fp, tol=1e-6, t_max=100.0,
                      solver=ctgep.Euler(dt=1.0, clip=False), method="dense")
    assert np.all(np.isinf(m.measured_steps)) and np.all(m.predicted_steps > 1000)
    m = S.convergence(net, x, y=y, beta=1.0, s_init=free.state, fixed=fp, tol=1e-6, t_max=100.0,
                      solver=ctgep.Euler(dt=1.0, clip=False, precondition=True), method="dense")
    assert np.all(m.measured_steps < 100) and np.all(m.predicted_steps < 100)


@pytest.mark.parametrize("solver", [ctgep.Euler(dt=0.5), ctgep.Euler(dt=1.0, alternate=True, precondition=True)])
def test_iteration_spectrum_arpack_matches_dense_with_the_clip(x64, solver):
    net = ctgep.LayeredNetwork((6, 8, 8, 3), "hard_sigmoid", key=jr.PRNGKey(3), dtype=jnp.float64)
    x = _x(4, 6)
    fp = S.fixed_points(net, x)
    d = S.iteration_spectrum(net, x, fp, solver=solver, method="dense")
    a = S.iteration_spectrum(net, x, fp, solver=solver, method="arnoldi", arpack_tol=1e-12)
    np.testing.assert_allclose(a.spectral_radius, d.spectral_radius, rtol=1e-7, atol=1e-10)
    assert np.all(d.active_units < 19)  # some units saturated: held by the clip


def test_predicted_steps_edge_cases():
    np.testing.assert_array_equal(S.predicted_steps([0.5, 1.0, 0.5, 0.0], [1.0, 1.0, 1e-9, 1.0], 1e-3),
                                  [10.0, np.inf, 0.0, 1.0])


@pytest.mark.slow
def test_analyse_dataset_round_trips_through_netcdf(x64, tmp_path):
    net = ctgep.LayeredNetwork((5, 7, 3), "hard_sigmoid", key=jr.PRNGKey(0), dtype=jnp.float64)
    x = _x(6, 5)
    y = jax.nn.one_hot(jnp.arange(6) % 3, 3, dtype=jnp.float64)
    ds = S.analyse(net, x, y, inits=3, descent_batch=3)
    assert {"sample", "eig", "init", "batch"} <= set(ds.dims)
    for name, v in ds.data_vars.items():
        assert v.attrs.get("long_name") and "units" in v.attrs, name
    assert np.all(ds.fp_converged) and np.all(ds.spectral_abscissa < 0)
    assert ds.descent_angle.attrs["units"] == "degrees" and ds.relax_time.attrs["units"] == "τ"
    S.save(ds, tmp_path / "s.nc")
    back = S.load(tmp_path / "s.nc")
    xr.testing.assert_identical(back, ds)
    S.plot(back, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 10_000


def _cli(argv):
    parser = argparse.ArgumentParser(prog="ctgep")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["stability", *argv])
    return args.func(args)


@pytest.mark.slow
def test_cli_on_the_digits_card(tmp_path, capsys):
    out = tmp_path / "stab"
    assert _cli(["digits", "--samples", "8", "--inits", "2", "--descent-batches", "1", "--eigs", "3",
                 "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "spectral abscissa" in text and "wrote" in text
    ds = S.load(out / "stability.nc")
    assert ds.sizes["sample"] == 8 and ds.sizes["init"] == 2 and ds.sizes["eig"] == 3
    assert ds.attrs["source"] == "digits" and ds.attrs["spectrum_method"] == "arnoldi"
    assert ds.spectral_abscissa.attrs["units"] == "1/τ"
    assert (out / "stability.png").is_file()


@pytest.mark.parametrize("argv,message", [
    (["digits", "--samples", "0"], "--samples=0 must be at least 1"),
    (["no-such-card"], "no-such-card"),
    (["digits", "--out", "FILE"], "is not a folder"),
    (["digits", "--samples", "100000"], "exceeds"),
])
def test_cli_rejects_bad_input_in_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "FILE").write_text("x")
    argv = [a if a != "FILE" else str(tmp_path / "FILE") for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o")]
    assert _cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctgep stability:") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()
