"""The free and nudged phases reach true fixed points, and nudging moves them as Lemma 2 says."""

import re

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ctgep

TIGHT = ctgep.Adaptive(diffrax.Tsit5(), rtol=1e-10, atol=1e-12)


def residual_inf(net, x, state):
    mu = net.vector_field(state, net.drive(x))
    return np.max(np.concatenate([np.abs(np.asarray(m)) for m in mu], axis=-1), axis=-1)


@pytest.mark.parametrize("solver", ["tsit5", "kvaerno5", "euler"])
def test_free_phase_ends_at_a_fixed_point_for_every_sample(small_problem, solver):
    net, x, _ = small_problem
    r = ctgep.free_phase(net, x, solver=solver, tol=1e-5)
    assert r.converged.shape == (x.shape[0],)
    assert bool(r.converged.all())
    # Independently of the solver's own bookkeeping, ‖μ‖∞ at the returned state is small.
    assert residual_inf(net, x, r.state).max() < 1e-5
    assert np.allclose(r.residual, residual_inf(net, x, r.state))
    assert float(r.t_stop[0]) < 100.0  # ended by the steady-state event, not the horizon


def test_adaptive_and_euler_reach_the_same_fixed_point(small_problem):
    net, x, _ = small_problem
    a = ctgep.free_phase(net, x, solver=TIGHT, tol=1e-10)
    e = ctgep.free_phase(net, x, solver=ctgep.Euler(dt=0.5), tol=1e-10)
    assert bool(a.converged.all()) and bool(e.converged.all())
    for sa, se in zip(a.state, e.state):
        np.testing.assert_allclose(sa, se, atol=1e-9)


def test_joint_and_vmapped_batches_agree(small_problem):
    net, x, _ = small_problem
    j = ctgep.free_phase(net, x, solver=TIGHT, tol=1e-9)
    v = ctgep.free_phase(net, x, solver=TIGHT, tol=1e-9, batch="vmap")
    for sj, sv in zip(j.state, v.state):
        np.testing.assert_allclose(sj, sv, atol=1e-8)
    # Joint: one stop time for the batch. Vmapped: each sample stops on its own.
    assert len(set(np.asarray(j.t_stop).tolist())) == 1
    assert len(set(np.asarray(v.t_stop).tolist())) > 1


def test_hard_sigmoid_euler_respects_the_paper_clipping():
    net = ctgep.LayeredNetwork((8, 16, 4), key=jr.PRNGKey(3))
    x = jr.uniform(jr.PRNGKey(4), (6, 8))
    r = ctgep.free_phase(net, x, solver="euler", tol=1e-4)
    for s in r.state:
        assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0
    assert bool(r.converged.all())


def _hard_sigmoid_problem():
    net = ctgep.LayeredNetwork((64, 40, 40, 10), key=jr.PRNGKey(0), dtype=jnp.float64)
    x = jr.uniform(jr.PRNGKey(1), (8, 64), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(8) % 10, 10, dtype=jnp.float64)
    return net, x, y


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_preconditioned_euler_reaches_the_same_nudged_fixed_point_in_fewer_steps(x64, beta):
    """Dividing the outputs' step by their nudged leak 1 + β keeps the fixed point; at dt = 1
    (the nonlinear Jacobi iteration) it settles in fewer steps than the paper's dt = 0.5, while
    plain Euler at dt = 1 makes the outputs oscillate (factor 1 − (1 + β) = −1 at β = 1)."""
    net, x, y = _hard_sigmoid_problem()
    free = ctgep.free_phase(net, x, solver=ctgep.Euler(dt=0.5), t_max=500.0, tol=1e-12)
    assert bool(free.converged.all())

    def nudge(solver, t_max, tol=1e-10):
        return ctgep.nudged_phase(net, x, y, free, beta=beta, solver=solver, t_max=t_max, tol=tol)

    ref = nudge(ctgep.Euler(dt=0.5), 2000.0, tol=1e-13)
    paper = nudge(ctgep.Euler(dt=0.5), 500.0)
    jacobi = nudge(ctgep.Euler(dt=1.0, precondition=True), 500.0)
    plain = nudge(ctgep.Euler(dt=1.0), 300.0)
    assert bool(ref.converged.all()) and bool(paper.converged.all()) and bool(jacobi.converged.all())
    for a, b in zip(jacobi.state, ref.state):
        np.testing.assert_allclose(a, b, atol=1e-9)
    assert int(jacobi.steps[0]) < 0.9 * int(paper.steps[0])
    if beta == 1.0:
        assert not bool(plain.converged.any())
    # The residual is the projected μ of the step actually taken: it agrees with the plain one
    # at a settled state, where both vanish.
    assert float(jacobi.residual.max()) < 1e-10


def test_backtracking_settles_an_iteration_that_flips_at_the_same_fixed_point(x64):
    """Plain Euler at dt = 1 flips the nudged outputs forever (factor −1 at β = 1); halving a
    sample's step whenever its steps stop shrinking settles every sample, at the fixed point of
    the ODE (a positive step does not move it)."""
    net, x, y = _hard_sigmoid_problem()
    free = ctgep.free_phase(net, x, solver=ctgep.Euler(dt=0.5), t_max=500.0, tol=1e-12)
    ref = ctgep.nudged_phase(net, x, y, free, beta=1.0, solver=ctgep.Euler(dt=0.5), t_max=2000.0, tol=1e-13)
    flips = ctgep.nudged_phase(net, x, y, free, beta=1.0, solver=ctgep.Euler(dt=1.0), t_max=300.0, tol=1e-10)
    damped = ctgep.nudged_phase(net, x, y, free, beta=1.0, solver=ctgep.Euler(dt=1.0, backtrack=True),
                                t_max=600.0, tol=1e-10)
    assert not bool(flips.converged.any())
    assert bool(damped.converged.all())
    for a, b in zip(damped.state, ref.state):
        np.testing.assert_allclose(a, b, atol=1e-8)


def test_backtracking_leaves_a_converging_iteration_alone(x64):
    """Block Gauss–Seidel on this draw converges (its steps shrink, at times after growing for
    one step, never over two): the backtracking step takes the same steps, to rounding."""
    net, x, y = _hard_sigmoid_problem()
    gs = dict(dt=1.0, precondition=True, alternate=True)
    plain = ctgep.free_phase(net, x, solver=ctgep.Euler(**gs), t_max=100.0, tol=1e-10)
    safe = ctgep.free_phase(net, x, solver=ctgep.Euler(**gs, backtrack=True), t_max=100.0, tol=1e-10)
    assert bool(plain.converged.all())
    np.testing.assert_array_equal(plain.steps, safe.steps)
    for a, b in zip(plain.state, safe.state):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


def test_preconditioning_leaves_the_free_phase_and_negative_nudges_alone(x64):
    """Without a nudge (free phase) or with β < 0 (centered nudging's second phase) no unit is
    stiffer than its leak, so the preconditioned scheme takes exactly the plain steps."""
    net, x, y = _hard_sigmoid_problem()
    plain, pre = ctgep.Euler(dt=1.0), ctgep.Euler(dt=1.0, precondition=True)
    a = ctgep.free_phase(net, x, solver=plain, t_max=40.0, stop_at_steady_state=False)
    b = ctgep.free_phase(net, x, solver=pre, t_max=40.0, stop_at_steady_state=False)
    for u, v in zip(a.state, b.state):
        np.testing.assert_array_equal(u, v)
    c = ctgep.nudged_phase(net, x, y, a, beta=-0.5, solver=plain, t_max=20.0, stop_at_steady_state=False)
    d = ctgep.nudged_phase(net, x, y, a, beta=-0.5, solver=pre, t_max=20.0, stop_at_steady_state=False)
    for u, v in zip(c.state, d.state):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("sizes, seed", [((64, 40, 40, 10), 0), ((64, 40, 40, 40, 10), 2)])
def test_alternating_layers_reach_the_same_fixed_points_in_half_the_steps(x64, sizes, seed):
    """Updating the odd layers, then the even ones from their new state (red–black order, block
    Gauss–Seidel at dt = 1 with the preconditioned step) keeps both phases' fixed points and
    settles in about half the steps of the all-at-once Jacobi update. (A random untied network
    need not settle under either; these draws do.)"""
    net = ctgep.LayeredNetwork(sizes, key=jr.PRNGKey(seed), dtype=jnp.float64)
    x = jr.uniform(jr.PRNGKey(1), (8, sizes[0]), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(8) % 10, 10, dtype=jnp.float64)
    jacobi = ctgep.Euler(dt=1.0, precondition=True)
    alternate = ctgep.Euler(dt=1.0, precondition=True, alternate=True)
    phases = {}
    for name, solver in (("jacobi", jacobi), ("alternate", alternate)):
        free = ctgep.free_phase(net, x, solver=solver, t_max=500.0, tol=1e-11)
        nudged = ctgep.nudged_phase(net, x, y, free, beta=1.0, solver=solver, t_max=500.0, tol=1e-11)
        assert bool(free.converged.all()) and bool(nudged.converged.all())
        phases[name] = free, nudged
    for a, b in zip(phases["jacobi"], phases["alternate"]):
        for u, v in zip(a.state, b.state):
            np.testing.assert_allclose(u, v, atol=1e-9)
        assert int(b.steps[0]) <= 0.6 * int(a.steps[0])


def test_an_alternating_step_costs_the_products_of_one_synchronous_step():
    """A layer's μ needs only its neighbours' rates, so each half-step multiplies only by the
    weights into the layers it moves: the compiled phase keeps one product per weight matrix."""
    net = ctgep.LayeredNetwork((64, 40, 40, 10), key=jr.PRNGKey(0))
    x = jr.uniform(jr.PRNGKey(1), (8, 64))

    def dots(solver):
        relax = lambda n, u: ctgep.free_phase(n, u, solver=solver, t_max=20.0, stop_at_steady_state=False).state
        hlo = jax.jit(relax).lower(net, x).compile().as_text()
        return len(re.findall(r"= \S+ dot\(", hlo))  # each compiled once, the loop's run per step

    synchronous = dots(ctgep.Euler(dt=1.0))
    assert synchronous == 5  # the drive Wf₁ρ(x), then per step Wb₁ρ(s₂), Wf₂ρ(s₁), Wb₂ρ(s₃), Wf₃ρ(s₂)
    assert dots(ctgep.Euler(dt=1.0, alternate=True)) == synchronous


def _fixed_point_sensitivity(net, x, y, s0):
    """`Jμ⁻¹ ∂C/∂sᵀ` per sample, by a lineax solve with the materialised Jacobian."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        si = tuple(s[i : i + 1] for s in s0)
        flat, unravel = ravel_pytree(si)
        mu = lambda f: ravel_pytree(net.vector_field(unravel(f), net.drive(xi)))[0]
        jac = jax.jacfwd(mu)(flat)
        dc = ravel_pytree(jax.grad(lambda s: jnp.sum(net.cost(s, y[i : i + 1])))(si))[0]
        out.append(lx.linear_solve(lx.MatrixLinearOperator(jac), dc).value)
    return np.stack(out)


def _flat_batch(state):
    return np.concatenate([np.asarray(s) for s in state], axis=-1)


@pytest.mark.slow
def test_nudged_displacement_converges_to_the_linear_response(small_problem):
    """(s^β − s⁰)/β → Jμ⁻¹ ∂C/∂sᵀ: O(β) one-sided, O(β²) centered."""
    net, x, y = small_problem
    free = ctgep.free_phase(net, x, solver=TIGHT, tol=1e-11)
    target = _fixed_point_sensitivity(net, x, y, free.state)
    s0 = _flat_batch(free.state)

    def nudge(beta):
        r = ctgep.nudged_phase(net, x, y, free, beta=beta, solver=TIGHT, tol=1e-9, t_max=1000.0)  # stops at tol·β
        assert bool(r.converged.all())
        return _flat_batch(r.state)

    one_sided, centered = [], []
    betas = [0.08, 0.04, 0.02]
    for beta in betas:
        plus, minus = nudge(beta), nudge(-beta)
        one_sided.append(np.linalg.norm((plus - s0) / beta - target))
        centered.append(np.linalg.norm((plus - minus) / (2 * beta) - target))
    one_sided_rate = np.log2(one_sided[0] / one_sided[-1]) / 2
    centered_rate = np.log2(centered[0] / centered[-1]) / 2
    assert 0.85 < one_sided_rate < 1.15, one_sided
    assert 1.8 < centered_rate < 2.2, centered


def _chaotic(x64):
    """Weights scaled ×8: the tanh dynamics oscillate instead of settling. Returns (net, x)."""
    net = ctgep.LayeredNetwork((6, 20, 20, 4), "tanh", key=jr.PRNGKey(0), dtype=jnp.float64)
    net = eqx.tree_at(lambda n: (n.Wf, n.Wb), net, replace_fn=lambda ws: tuple(8 * w for w in ws))
    return net, jr.uniform(jr.PRNGKey(1), (4, 6), jnp.float64)


def test_non_convergence_is_flagged(x64):
    net, x = _chaotic(x64)
    for solver in ["tsit5", "euler"]:
        r = ctgep.free_phase(net, x, solver=solver, t_max=50.0, policy="flag")
        assert not bool(r.converged.all())
        assert np.all(np.asarray(r.converged) == (np.asarray(r.residual) < 1e-4))


def test_non_convergence_warns(x64):
    net, x = _chaotic(x64)
    with pytest.warns(RuntimeWarning, match=r"free phase did not converge: 4 sample\(s\) reached the horizon"):
        r = ctgep.free_phase(net, x, solver="euler", t_max=50.0, policy="warn")
        jax.block_until_ready(r.state)
        jax.effects_barrier()


def test_non_convergence_raises(x64):
    net, x = _chaotic(x64)
    with pytest.raises(Exception, match=r"ctgep: the free phase did not converge: .*horizon_reached"):
        r = ctgep.free_phase(net, x, solver="euler", t_max=50.0, policy="raise")
        jax.block_until_ready(r.state)


def test_divergence_to_nan_is_flagged_not_silent(x64):
    net, x = _chaotic(x64)
    net = eqx.tree_at(lambda n: n.b, net, replace_fn=lambda bs: tuple(b + jnp.nan for b in bs))
    r = ctgep.free_phase(net, x, solver="euler", t_max=5.0)
    assert not bool(r.converged.any())
    assert np.all(np.asarray(r.code) == ctgep.RESULTS.nonfinite_state)


def test_energy_network_runs_through_the_same_simulator(x64):
    net = ctgep.EnergyNetwork((6, 9, 3), key=jr.PRNGKey(2), dtype=jnp.float64)
    x = jr.uniform(jr.PRNGKey(1), (4, 6), jnp.float64)
    r = ctgep.free_phase(net, x, tol=1e-6)
    assert bool(r.converged.all())
    # μ = −∂E/∂s: the energy does not increase along the relaxation.
    e0 = net.energy(net.init_state(x), x)
    assert np.all(np.asarray(net.energy(r.state, x)) <= np.asarray(e0) + 1e-12)
