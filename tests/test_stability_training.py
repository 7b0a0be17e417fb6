"""Stability through training (issue 22): the matrix-free descent check equals the dense one,
Jacobian homeostasis is the gradient of its penalty (and vanishes on a symmetric Jacobian), and
`training.analyse_every` adds finite probe columns to metrics.csv that survive a resume."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ctgep
from ctgep import stability as S
from ctgep._dynamics import field as F

PROBE = list(S.PROBE_COLUMNS)


# ---------------------------------------------------------------- the matrix-free descent check


@pytest.mark.parametrize("activation", ["tanh", pytest.param("hard_sigmoid", marks=pytest.mark.slow)])
def test_matrix_free_descent_equals_the_dense_one(x64, activation):
    net = ctgep.LayeredNetwork((5, 9, 8, 4), activation, key=jr.PRNGKey(1), dtype=jnp.float64)
    x = jr.uniform(jr.PRNGKey(2), (8, 5), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(8) % 4, 4, dtype=jnp.float64)
    fp = S.fixed_points(net, x)
    free = S.descent(net, x, y, s=fp.state, batch_size=4, solver="gmres", polish=False)
    dense = S.descent(net, x, y, s=fp.state, batch_size=4, solver="dense")
    assert free.attrs["descent_solver"] == "gmres"
    np.testing.assert_allclose(free.descent_dot, dense.descent_dot, rtol=1e-9)
    np.testing.assert_allclose(free.descent_angle, dense.descent_angle, rtol=0, atol=1e-7)
    np.testing.assert_allclose(free.grad_norm, dense.grad_norm, rtol=1e-9)
    assert (free.descent_residual < 1e-11).all() and np.isnan(dense.descent_residual).all()
    with pytest.raises(ValueError, match="solver"):
        S.descent(net, x, y, s=fp.state, solver="lu")


# ---------------------------------------------------------------- Jacobian homeostasis


def _tiny(x64_key=0):
    net = ctgep.LayeredNetwork((3, 4, 2), "tanh", key=jr.PRNGKey(x64_key), dtype=jnp.float64)
    x = jr.uniform(jr.PRNGKey(1), (3, 3), jnp.float64)
    s = tuple(jr.uniform(k, (3, n), jnp.float64) for k, n in zip(jr.split(jr.PRNGKey(2)), (4, 2)))
    return net, x, s


def test_homeostasis_gradient_is_the_gradient_of_the_penalty(x64):
    net, x, s = _tiny()
    key = jr.PRNGKey(5)
    g = ctgep.homeostasis_gradient(net, x, s, key=key)
    eps = jax.tree_util.tree_map(lambda a: a[0], ctgep._learning.homeostasis.probe_vectors(s, key))
    params, static = F.partition(net)
    flat, unravel = ravel_pytree(params)

    @jax.jit
    def penalty(theta):
        import equinox as eqx

        return ctgep.asymmetry_penalty(eqx.combine(unravel(theta), static), x, s, eps)

    h = 1e-6
    basis = jnp.eye(flat.size, dtype=flat.dtype) * h
    fd = jax.vmap(lambda e: (penalty(flat + e) - penalty(flat - e)) / (2 * h))(basis)
    gf = ravel_pytree(g)[0]
    assert float(jnp.linalg.norm(gf)) > 1e-3  # untied weights: a real penalty to descend
    np.testing.assert_allclose(gf, fd, rtol=1e-6, atol=1e-8)
    # Its expectation over the probes is ‖Jμ − Jμᵀ‖_F² (mean over the batch): Hutchinson.
    jac = ctgep.gradients.jacobian(net, x, s)
    exact = float(jnp.mean(jnp.sum((jac - jnp.swapaxes(jac, 1, 2)) ** 2, axis=(1, 2))))
    many = ctgep._learning.homeostasis.probe_vectors(s, jr.PRNGKey(9), 3000)
    est = float(jnp.mean(jax.vmap(lambda e: ctgep.asymmetry_penalty(net, x, s, e))(many)))
    assert est == pytest.approx(exact, rel=0.05)



def test_feedback_homeostasis_turns_only_the_feedback_toward_the_forward_weights(x64):
    """`params="feedback"` is the penalty's gradient with respect to `Wb` alone: a step along it
    lowers the asymmetry and raises the feedback's cosine with `Wfᵀ`, leaving `Wf`, `b` as they are."""
    import equinox as eqx

    net, x, s = _tiny()
    key = jr.PRNGKey(5)
    full = ctgep.homeostasis_gradient(net, x, s, key=key)
    fb = ctgep.homeostasis_gradient(net, x, s, key=key, params="feedback")
    for a, b in zip(jax.tree_util.tree_leaves(fb.Wb), jax.tree_util.tree_leaves(full.Wb)):
        np.testing.assert_array_equal(a, b)
    assert all(float(jnp.max(jnp.abs(a))) == 0 for a in jax.tree_util.tree_leaves((fb.Wf, fb.b)))
    assert float(jnp.linalg.norm(ravel_pytree(fb.Wb)[0])) > 1e-3
    eps = jax.tree_util.tree_map(lambda a: a[0], ctgep._learning.homeostasis.probe_vectors(s, key))
    moved = eqx.apply_updates(net, jax.tree_util.tree_map(lambda g: -0.05 * g, fb))
    assert ctgep.asymmetry_penalty(moved, x, s, eps) < ctgep.asymmetry_penalty(net, x, s, eps)
    assert ctgep.alignment(moved)["cos_1_2"] > ctgep.alignment(net)["cos_1_2"]
    np.testing.assert_array_equal(moved.Wf[0], net.Wf[0])
    with pytest.raises(ValueError, match="params="):
        ctgep.homeostasis_gradient(net, x, s, key=key, params="forward")
    energy = ctgep.EnergyNetwork((3, 4, 2), "tanh", key=jr.PRNGKey(0), dtype=jnp.float64)
    with pytest.raises(ValueError, match="feedback weights"):
        ctgep.homeostasis_gradient(energy, x, s, key=key, params="feedback")

@pytest.mark.slow
def test_homeostasis_vanishes_on_a_symmetric_jacobian(x64):
    # The tied-weight EnergyNetwork's Jμ is a Hessian, symmetric at every state (not only at s⁰).
    net = ctgep.EnergyNetwork((3, 5, 2), "sigmoid", key=jr.PRNGKey(0), dtype=jnp.float64)
    x = jr.uniform(jr.PRNGKey(1), (4, 3), jnp.float64)
    s = tuple(jr.uniform(k, (4, n), jnp.float64) for k, n in zip(jr.split(jr.PRNGKey(2)), (5, 2)))
    eps = ctgep._learning.homeostasis.probe_vectors(s, jr.PRNGKey(3))
    assert float(ctgep.asymmetry_penalty(net, x, s, jax.tree_util.tree_map(lambda a: a[0], eps))) < 1e-28
    g = ctgep.homeostasis_gradient(net, x, s, key=jr.PRNGKey(3), probes=2)
    assert float(jnp.max(jnp.abs(ravel_pytree(g)[0]))) < 1e-14


def test_ep_step_subtracts_the_homeostasis_gradient(x64):
    net = ctgep.LayeredNetwork((3, 4, 2), "sigmoid", key=jr.PRNGKey(0), dtype=jnp.float64)
    x = jr.uniform(jr.PRNGKey(1), (3, 3), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(3) % 2, 2, dtype=jnp.float64)
    key = jr.PRNGKey(7)
    kw = dict(beta=0.1, solver=ctgep.Euler(dt=0.5), t_free=60.0, t_nudged=60.0, tol=1e-6, key=key)
    plain = ctgep.ep_step(net, x, y, **kw)
    homeo = ctgep.ep_step(net, x, y, homeostasis=0.3, **kw)
    h = ctgep.homeostasis_gradient(net, x, plain.free.state, key=jr.fold_in(key, 2))
    np.testing.assert_allclose(ravel_pytree(homeo.update)[0],
                               ravel_pytree(plain.update)[0] - 0.3 * ravel_pytree(h)[0], rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="homeostasis"):
        ctgep.ep_step(net, x, y, homeostasis=-1.0, **kw)
    with pytest.raises(ValueError, match="key"):
        ctgep.ep_step(net, x, y, **(kw | dict(key=None, homeostasis=0.1)))


@pytest.mark.parametrize("override, message", [
    ("learning.homeostasis=-0.1", "learning.homeostasis"),
    ("learning.homeostasis_params=forward", "learning.homeostasis_params"),
    ("learning.homeostasis_params=feedback", "needs learning.homeostasis > 0"),
    ("training.analyse_every=-1", "training.analyse_every"),
    ("training.analyse_samples=0", "training.analyse_samples"),
])
def test_cards_reject_bad_stability_keys(override, message):
    with pytest.raises(ctgep.CardError, match=message):
        ctgep.load_card("digits", [override])


# ---------------------------------------------------------------- analyse_every


SMALL = ["model.sizes=[64, 16, 10]", "learning.learning_rates=[0.2, 0.05]", "phases.t_free=10",
         "phases.t_nudged=4", "training.analyse_every=3", "training.analyse_samples=12",
         "learning.schedule=constant"]


@pytest.fixture
def small_data():
    d = ctgep.load_dataset("digits")
    return dataclasses.replace(d, x_train=d.x_train[:200], y_train=d.y_train[:200],
                               x_test=d.x_test[:60], y_test=d.y_test[:60])


def test_analyse_every_adds_probe_columns_that_survive_resume(small_data, tmp_path):
    quiet = dict(progress=False, log=lambda *a: None, data=small_data)
    run = ctgep.train("digits", tmp_path / "r", overrides=SMALL, epochs=2, **quiet)
    m = run.metrics
    for c in PROBE:
        assert c in m
    # epoch 1 is analysed, epoch 2 is not (every 3)
    assert all(math.isfinite(float(m[c].values[0])) for c in PROBE)
    assert all(math.isnan(float(m[c].values[1])) for c in PROBE)
    assert float(m.probe_fixed_points[0]) == 1.0 and float(m.probe_abscissa[0]) < 0
    assert 0 < float(m.probe_asymmetry[0]) and 0 <= float(m.probe_descent_angle[0]) <= 180
    first = {c: float(m[c].values[0]) for c in PROBE if c != "probe_time"}
    resumed = ctgep.resume(tmp_path / "r", epochs=3, **quiet)
    m = resumed.metrics
    assert m.sizes["epoch"] == 3
    assert {c: float(m[c].values[0]) for c in first} == first  # the earlier rows are kept
    assert all(math.isfinite(float(m[c].values[2])) for c in PROBE)  # epoch 3 is analysed
    header = (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert set(PROBE) <= set(header)
    assert (tmp_path / "r" / "training.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_analyse_every_off_adds_no_columns(small_data, tmp_path):
    run = ctgep.train("digits", tmp_path / "r", overrides=SMALL[:-3] + ["training.analyse_every=0"], epochs=1,
                      progress=False, log=lambda *a: None, data=small_data)
    assert not set(PROBE) & set(run.metrics.data_vars)


@pytest.mark.slow
def test_analyse_every_on_the_digits_card_one_epoch(tmp_path):
    """The built-in digits card as it is (64-512-10: ARPACK spectra), one epoch."""
    run = ctgep.train("digits", tmp_path / "r", overrides=["training.analyse_every=1"], epochs=1,
                      progress=False, log=lambda *a: None)
    assert all(math.isfinite(float(run.metrics[c].values[0])) for c in PROBE)
    assert float(run.metrics.probe_abscissa[0]) < 0
