"""Property-based checks (hypothesis) over random layered networks, in float64 (issue 19).

Networks: 1–4 hidden layers (sizes of length 3–6), widths 2–12, sigmoid / tanh / hard sigmoid,
weights scaled by 0.3–2. To keep compilation out of the per-example cost the layer sizes are
drawn from a few fixed shapes (weights, biases, scale, activation and inputs are free).

Budgets are hypothesis settings profiles: "ctgep-default" (a few examples per property, the whole
module within about a minute on two busy cores) and "ctgep-slow" (many more), chosen by
`HYPOTHESIS_PROFILE=ctgep-slow` or by running the `slow` tests (`-m slow`), which use it always.
"""

import math
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

import ctgep
from ctgep import gradients as G
from ctgep._dynamics import field as F
from ctgep._theory.checks import bptt_horizons

_COMMON = dict(deadline=None, derandomize=False, print_blob=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.filter_too_much])
settings.register_profile("ctgep-default", max_examples=2, **_COMMON)
settings.register_profile("ctgep-slow", max_examples=40, **_COMMON)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ctgep-default")
                               if os.environ.get("HYPOTHESIS_PROFILE", "").startswith("ctgep") else "ctgep-default")
SLOW = settings.get_profile("ctgep-slow")

#: Fixed layer shapes (depth 1–4 hidden layers, widths 2–12): one compilation per shape.
SHAPES = ((4, 12, 2), (6, 5, 7, 3), (3, 8, 4, 6, 2), (5, 3, 9, 2, 4, 3))
ACTIVATIONS = ("sigmoid", "tanh", "hard_sigmoid")
BATCH = 2


@st.composite
def networks(draw, activations=ACTIVATIONS):
    sizes = draw(st.sampled_from(SHAPES))
    activation = draw(st.sampled_from(activations))
    scale = draw(st.floats(0.3, 2.0))
    seed = draw(st.integers(0, 2**20))
    k1, k2, k3 = jr.split(jr.PRNGKey(seed), 3)
    net = ctgep.LayeredNetwork(sizes, activation, key=k1, dtype=jnp.float64)
    net = eqx.tree_at(lambda n: (n.Wf, n.Wb), net,
                      jax.tree_util.tree_map(lambda a: scale * a, (net.Wf, net.Wb)))
    biases = tuple(0.5 * jr.normal(k, b.shape, jnp.float64) for k, b in zip(jr.split(k2, len(net.b)), net.b))
    net = eqx.tree_at(lambda n: n.b, net, biases)
    x = jr.uniform(k3, (BATCH, sizes[0]), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(BATCH) % sizes[-1], sizes[-1], dtype=jnp.float64)
    return net, x, y


def _fixed_point(net, x):
    """The free fixed point, rejecting draws without one (they oscillate: outside the claims)."""
    try:
        return G.fixed_point(net, x)
    except ctgep.ConvergenceError:
        reject()


def _raw_residual(net, x, s):
    return np.asarray(F.residual(net.vector_field(s, net.drive(x))))


def _kink_distance(s):
    flat = np.concatenate([np.asarray(a) for a in s], axis=-1)
    return float(np.min(np.abs(flat[..., None] - np.array([0.0, 1.0]))))


def _stable(net, x, s):
    return float(np.max(np.linalg.eigvals(np.asarray(G.jacobian(net, x, s))).real))


# --------------------------------------------------------------------------- fixed points


def check_fixed_point_residual(problem):
    net, x, _ = problem
    s = _fixed_point(net, x)
    assert _raw_residual(net, x, s).max() < 1e-12
    if net.activation == "hard_sigmoid":  # and the clipped scheme's own fixed point
        try:
            sc = G.clipped_fixed_point(net, x)
        except ctgep.ConvergenceError:
            return
        comp = G.complementarity(net, x, sc)
        assert comp["free_residual"].max() < 1e-12 and comp["violation"].max() < 1e-12


@given(problem=networks())
@settings(PROFILE)
@pytest.mark.slow
def test_fixed_point_is_a_root(x64, problem):
    check_fixed_point_residual(problem)


# --------------------------------------------------------------------------- EP → ν (smooth ρ)


def check_ep_order(problem):
    net, x, y = problem
    s = _fixed_point(net, x)
    assume(_stable(net, x, s) < -1e-3)
    nu = G.nu(net, x, y, s_free=s)
    assume(float(jnp.linalg.norm(jax.flatten_util.ravel_pytree(nu)[0])) > 1e-8)
    zeros = jnp.zeros((BATCH,), x.dtype)
    free = ctgep.PhaseResult(state=s, t_stop=zeros, steps=zeros.astype(jnp.int32), residual=zeros,
                             code=zeros.astype(jnp.int8))
    betas = (0.02, 0.01, 0.005)
    errs = {}
    for nudging in ("one-sided", "centered"):
        try:
            errs[nudging] = [G.relative_error(ctgep.ep_update(net, x, y, beta=b, nudging=nudging, solver=G.TIGHT,
                                                              tol=1e-8, free=free, t_nudged=2000.0, policy="raise"), nu)
                             for b in betas]
        except RuntimeError as e:  # a nudged phase that does not settle is outside the claim
            assert "did not converge" in str(e)
            reject()
    p1 = np.polyfit(np.log(betas), np.log(errs["one-sided"]), 1)[0]
    p2 = np.polyfit(np.log(betas), np.log(np.maximum(errs["centered"], 1e-16)), 1)[0]
    assert 0.8 < p1 < 1.2, errs
    assert 1.7 < p2 < 2.3 or max(errs["centered"]) < 1e-9, errs


@given(problem=networks(("sigmoid", "tanh")))
@settings(PROFILE)
@pytest.mark.slow
def test_ep_tends_to_nu_at_orders_one_and_two(x64, problem):
    check_ep_order(problem)


# --------------------------------------------------------------------------- RBP = FD


def check_rbp_fd(problem):
    net, x, y = problem
    s = _fixed_point(net, x)
    assume(_stable(net, x, s) < -1e-3)
    if net.activation == "hard_sigmoid":
        assume(_kink_distance(s) > 1e-3)  # FD must not cross a kink
    g = G.rbp(net, x, y, s_free=s)
    fd = G.finite_difference(net, x, y, s_free=s)
    scale = float(np.linalg.norm(jax.flatten_util.ravel_pytree(fd)[0]))
    assume(scale > 1e-8)
    assert G.relative_error(g, fd) < 1e-6


@given(problem=networks())
@settings(PROFILE)
def test_rbp_equals_finite_differences(x64, problem):
    check_rbp_fd(problem)


# --------------------------------------------------------------------------- BPTT(T) → RBP


def check_bptt_rate(problem):
    net, x, y = problem
    s = _fixed_point(net, x)
    eig = np.linalg.eigvals(np.asarray(G.jacobian(net, x, s)))
    slowest = float(eig.real.max())
    assume(-5.0 < slowest < -0.02)
    g = G.rbp(net, x, y, s_free=s)
    assume(float(np.linalg.norm(jax.flatten_util.ravel_pytree(g)[0])) > 1e-8)
    (horizons, dt) = bptt_horizons(slowest, float(np.abs(eig).max()))
    t_max = 20.0 / abs(slowest)
    ts = (0.4 * t_max, 0.7 * t_max, t_max)
    steps = 700 * math.ceil((t_max / dt + 8) / 700)  # few distinct budgets: few compilations
    errs = np.array([G.relative_error(G.bptt(net, x, y, T=T, dt=dt, max_steps=steps), g) for T in ts])
    rate = np.polyfit(ts, np.log(errs), 1)[0]
    # Predicted: exponential decay at the slowest eigenvalue's rate (e^{-20} ≈ 2e-9 at T_max).
    assert 0.7 < rate / slowest < 1.4, (errs, rate, slowest)
    assert errs[-1] < 1e-6


@pytest.mark.slow
@given(problem=networks(("sigmoid", "tanh")))
@settings(PROFILE)
def test_bptt_converges_to_rbp_at_the_slowest_rate(x64, problem):
    check_bptt_rate(problem)


# --------------------------------------------------------------------------- flags


def check_flags(problem, solver, t_max, tol):
    net, x, _ = problem
    r = ctgep.free_phase(net, x, solver=solver, t_max=t_max, tol=tol)
    code, res = np.asarray(r.code), np.asarray(r.residual)
    # Every sample is flagged exactly when its own residual is not below tol …
    np.testing.assert_array_equal(code != 0, ~(res < tol))
    # … and the residual is the one of the returned state (raw, or the scheme's projected field).
    if r.residual_kind == "raw" or net.state_bounds is None:
        np.testing.assert_allclose(res, _raw_residual(net, x, r.state), rtol=1e-12, atol=1e-300)
    else:
        lo, hi = net.state_bounds
        mu = net.vector_field(r.state, net.drive(x))
        proj = F.residual(tuple((jnp.clip(a + solver.dt * m, lo, hi) - a) / solver.dt for a, m in zip(r.state, mu)))
        np.testing.assert_allclose(res, np.asarray(proj), rtol=1e-9, atol=1e-300)


@given(problem=networks(), solver=st.sampled_from([ctgep.Euler(dt=0.5), "tsit5"]),
       t_max=st.sampled_from([0.5, 3.0, 30.0]), tol=st.sampled_from([1e-2, 1e-6]))
@settings(PROFILE)
def test_every_unsettled_sample_is_flagged(x64, problem, solver, t_max, tol):
    check_flags(problem, solver, t_max, tol)


# --------------------------------------------------------------------------- the slow profile


@pytest.mark.slow
@given(problem=networks())
@settings(SLOW)
def test_slow_fixed_point_and_rbp(x64, problem):
    check_fixed_point_residual(problem)
    check_rbp_fd(problem)


@pytest.mark.slow
@given(problem=networks(("sigmoid", "tanh")))
@settings(SLOW)
def test_slow_ep_and_bptt(x64, problem):
    check_ep_order(problem)
    check_bptt_rate(problem)


@pytest.mark.slow
@given(problem=networks(), solver=st.sampled_from([ctgep.Euler(dt=0.5), ctgep.Euler(dt=1.0, precondition=True), "tsit5"]),
       t_max=st.sampled_from([0.5, 3.0, 30.0]), tol=st.sampled_from([1e-2, 1e-6, 1e-10]))
@settings(SLOW)
def test_slow_flags(x64, problem, solver, t_max, tol):
    check_flags(problem, solver, t_max, tol)
