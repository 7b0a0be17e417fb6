"""Reference gradients: RBP equals finite differences, BPTT tends to RBP, shapes and errors."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ctgep
from ctgep import gradients as G

from theory_problems import BPTT_STEPS, SIZES, SMOOTH, neg, problem, settled_fixed_point

HYP = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.slow
@given(seed=st.integers(0, 2**16), activation=st.sampled_from(SMOOTH))
@HYP
def test_rbp_equals_finite_differences(x64, seed, activation):
    net, x, y = problem(seed, activation)
    s = settled_fixed_point(net, x)
    exact = G.rbp(net, x, y, s_free=s)
    fd = G.finite_difference(net, x, y, s_free=s)
    assert G.relative_error(exact, fd) <= 1e-6
    # Per array too, not only in total (a wrong small block would hide in the total).
    cmp = G.compare(exact, fd)
    assert float(cmp.relative_error.max()) <= 1e-5


@pytest.mark.slow
def test_gradients_share_the_structure_of_ep_update(x64):
    net, x, y = problem(0)
    params = eqx.partition(net, eqx.is_inexact_array)[0]
    ep = ctgep.ep_update(net, x, y, beta=0.1, solver=G.TIGHT, tol=1e-9)
    for g in (G.rbp(net, x, y), G.nu(net, x, y), G.bptt(net, x, y, T=2.0, max_steps=BPTT_STEPS)):
        assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(params)
        assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(ep)
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(params)):
            assert a.shape == b.shape


def test_fixed_point_is_a_root_to_machine_precision(x64):
    net, x, _ = problem(1)
    s = G.fixed_point(net, x)
    mu = net.vector_field(s, net.drive(x))
    assert max(float(jnp.max(jnp.abs(m))) for m in mu) < 1e-13


def test_rbp_on_the_energy_network_is_minus_nu(x64):
    # A gradient system: Jμ is a Hessian, symmetric, so ν = −∂J/∂θ exactly.
    net = ctgep.EnergyNetwork(SIZES, "sigmoid", key=jr.PRNGKey(3), dtype=jnp.float64)
    _, x, y = problem(3)
    s = G.fixed_point(net, x)
    J = G.jacobian(net, x, s)
    assert np.allclose(J, np.swapaxes(J, -1, -2), atol=1e-12)
    g = G.rbp(net, x, y, s_free=s)
    assert G.relative_error(G.nu(net, x, y, s_free=s), neg(g)) < 1e-10


@pytest.mark.slow
def test_bptt_converges_to_rbp_and_adaptive_matches_constant_step(x64):
    net, x, y = problem(5)
    g = G.rbp(net, x, y)
    steps = BPTT_STEPS  # one compilation for every horizon
    errs = [G.relative_error(G.bptt(net, x, y, T=T, max_steps=steps), g) for T in (5.0, 10.0, 20.0, 40.0)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-8
    capped = G.bptt(net, x, y, T=10.0, solver=ctgep.Adaptive(diffrax.Tsit5(), rtol=1e-10, atol=1e-12, dtmax=0.5))
    assert G.relative_error(capped, G.bptt(net, x, y, T=10.0, max_steps=steps)) < 1e-7


def test_compare_metrics_on_known_pytrees():
    a = {"w": jnp.array([1.0, 0.0]), "b": jnp.array([2.0])}
    b = {"w": jnp.array([0.0, 1.0]), "b": jnp.array([-2.0])}
    assert G.cosine_similarity(a, a) == pytest.approx(1.0)
    assert G.angle(a, b) == pytest.approx(np.degrees(np.arccos(-4 / 5)))
    assert G.relative_error(a, a) == 0.0
    assert G.sign_agreement(a, b) == 0.0  # the zero of the reference is skipped
    ds = G.compare(a, b)
    assert list(ds.group.values) == ["['b']", "['w']", "total"]
    assert ds.cosine.sel(group="['w']") == pytest.approx(0.0)
    with pytest.raises(ValueError, match="same structure"):
        G.compare(a, {"w": jnp.zeros(2)})


def test_bad_inputs_give_clear_errors(x64):
    net, x, y = problem(0)
    with pytest.raises(ValueError, match="T="):
        G.bptt(net, x, y, T=-1.0)
    with pytest.raises(ValueError, match="eps="):
        G.finite_difference(net, x, y, eps=0.0)
    with pytest.raises(ValueError, match="x must be"):
        G.rbp(net, x[0], y)
    with pytest.raises(ValueError, match="y must be"):
        G.nu(net, x, y[:1])
    with pytest.raises(ValueError, match="solver="):
        G.bptt(net, x, y, T=1.0, solver="rk4")
    with pytest.raises(TypeError, match="net must be"):
        G.rbp(object(), x, y)


def test_clipped_scheme_reference_on_hard_sigmoid(x64):
    # The clipped Euler scheme's fixed point is a complementarity point, not a root of μ; its
    # objective's gradient equals finite differences that re-solve it, and EP computed with the
    # scheme tends to its own ν (docs/theory.md#the-clipped-scheme).
    net, x, y = problem(0, "hard_sigmoid")
    s = G.clipped_fixed_point(net, x)
    comp = G.complementarity(net, x, s)
    assert comp["free_residual"].max() < 1e-12 and comp["violation"].max() == 0.0
    assert comp["n_active"].min() > 0 and comp["margin"].min() > 1e-3
    mu = net.vector_field(s, net.drive(x))
    assert max(float(jnp.max(jnp.abs(m))) for m in mu) > 1e-2  # saturated units: ‖μ‖∞ is not small
    g = G.clipped_rbp(net, x, y, s_free=s)
    assert G.relative_error(g, G.clipped_finite_difference(net, x, y, s_free=s)) < 1e-7
    nu = G.clipped_nu(net, x, y, s_free=s)
    assert G.relative_error(nu, G.nu(net, x, y)) > 0.1  # not the ODE's ν
    zeros = jnp.zeros((x.shape[0],), x.dtype)
    free = ctgep.PhaseResult(state=s, t_stop=zeros, steps=zeros.astype(jnp.int32), residual=zeros,
                             code=zeros.astype(jnp.int8))
    errs = [G.relative_error(ctgep.ep_update(net, x, y, beta=b, solver=ctgep.Euler(dt=0.5), tol=1e-10,
                                             free=free, t_nudged=20000.0), nu) for b in (0.008, 0.004)]
    assert 1.7 < errs[0] / errs[1] < 2.3 and errs[1] < 0.05  # order one in β, towards ν_clip


def test_clipped_reference_without_bounds_is_the_plain_one(x64):
    net, x, y = problem(1)
    s = G.fixed_point(net, x)
    assert G.relative_error(G.clipped_nu(net, x, y, s_free=s), G.nu(net, x, y, s_free=s)) < 1e-12
    assert G.relative_error(G.clipped_rbp(net, x, y, s_free=s), G.rbp(net, x, y, s_free=s)) < 1e-12
