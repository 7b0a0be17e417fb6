"""Learning rules: endpoint ν (Eq. 56), integrated ν (Eq. 2, 5), continual mode, nudging variants."""

import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import ctgep

TIGHT = ctgep.Adaptive(diffrax.Tsit5(), rtol=1e-10, atol=1e-12)
PHASES = dict(solver=TIGHT, tol=1e-10, t_free=1000.0, t_nudged=1000.0)


def flat(tree):
    return np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def rel(a, b):
    return np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b))


def test_update_has_the_structure_of_the_trainable_parameters(small_problem):
    net, x, y = small_problem
    u = ctgep.ep_update(net, x, y, beta=0.1, **PHASES)
    params, _ = eqx.partition(net, eqx.is_inexact_array)
    assert jax.tree_util.tree_structure(u) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(params)):
        assert a.shape == b.shape and a.dtype == b.dtype


def test_endpoint_rule_is_the_papers_local_outer_product(small_problem):
    """ΔWf_l = (s_l^β − s_l⁰)/β ⊗ ρ(s_{l−1}⁰), ΔWb_l with ρ(s_{l+1}⁰), Δb_l = (s_l^β − s_l⁰)/β."""
    net, x, y = small_problem
    step = ctgep.ep_step(net, x, y, beta=0.2, **PHASES)
    rho = jax.nn.sigmoid
    s0, sb = step.free.state, step.nudged[0].state
    pre = [rho(x)] + [rho(s) for s in s0]
    n = x.shape[0]
    for l in range(3):
        delta = (sb[l] - s0[l]) / 0.2
        np.testing.assert_allclose(step.update.Wf[l], delta.T @ pre[l] / n, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(step.update.b[l], delta.mean(0), rtol=1e-10, atol=1e-14)
        if l < 2:
            np.testing.assert_allclose(step.update.Wb[l], delta.T @ pre[l + 2] / n, rtol=1e-10, atol=1e-14)


@pytest.mark.slow
def test_endpoint_and_integrated_differ_by_order_beta(small_problem):
    net, x, y = small_problem
    gaps = []
    for beta in [0.2, 0.1, 0.05]:
        e = ctgep.ep_update(net, x, y, beta=beta, **PHASES)
        i = ctgep.ep_update(net, x, y, beta=beta, rule="integrated", **PHASES)
        gaps.append(rel(i, e))
    ratios = np.array(gaps[:-1]) / np.array(gaps[1:])
    assert np.all((ratios > 1.8) & (ratios < 2.2)), gaps


def test_integrated_rule_is_a_quadrature_of_rho_pre_ds_post(small_problem):
    """The synapse ODE state equals ∫ ρ(pre(t)) ⊗ ds_post(t) over a densely saved trajectory."""
    net, x, y = small_problem
    beta, horizon = 0.3, 30.0
    free = ctgep.free_phase(net, x, solver=TIGHT, tol=1e-10)
    kw = dict(solver=TIGHT, tol=1e-10, t_max=horizon, stop_at_steady_state=False)
    nudged = ctgep.nudged_phase(net, x, y, free, beta=beta, synapses="integrate", **kw)
    integrated = jax.tree_util.tree_map(lambda a: a / beta, nudged.synapse_integral)

    drive = net.drive(x)

    def field(t, s, args):
        mu = net.vector_field(s, drive)
        dc = jax.grad(lambda s: jnp.sum(net.cost(s, y)))(s)
        return jax.tree_util.tree_map(lambda m, g: m - beta * g, mu, dc)

    ts = jnp.linspace(0.0, horizon, 6001)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, horizon, None, free.state,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
    )
    rho = jax.nn.sigmoid
    traj = sol.ys  # tuple of (time, batch, n)
    n = x.shape[0]
    ds = [s[1:] - s[:-1] for s in traj]
    mid = [rho(0.5 * (s[1:] + s[:-1])) for s in traj]  # midpoint rule for ρ(pre)
    pre_x = rho(x)
    for l in range(3):
        want_f = jnp.einsum("tbi,tbj->ij", ds[l], mid[l - 1]) if l else jnp.einsum("tbi,bj->ij", ds[0], pre_x)
        np.testing.assert_allclose(integrated.Wf[l], want_f / n / beta, rtol=2e-5, atol=1e-9)
        np.testing.assert_allclose(integrated.b[l], ds[l].sum((0, 1)) / n / beta, rtol=1e-6, atol=1e-10)
        if l < 2:
            want_b = jnp.einsum("tbi,tbj->ij", ds[l], mid[l + 1])
            np.testing.assert_allclose(integrated.Wb[l], want_b / n / beta, rtol=2e-5, atol=1e-9)


def test_integrated_rule_on_the_euler_path_sums_rho_pre_times_increments(small_problem):
    net, x, y = small_problem
    e = ctgep.ep_update(net, x, y, beta=0.05, rule="endpoint", solver=ctgep.Euler(0.2), tol=1e-10)
    i = ctgep.ep_update(net, x, y, beta=0.05, rule="integrated", solver=ctgep.Euler(0.2), tol=1e-10)
    assert 0 < rel(i, e) < 0.05


def test_continual_mode_moves_the_weights_and_agrees_for_small_eta(small_problem):
    net, x, y = small_problem
    step = ctgep.ep_step(net, x, y, beta=0.1, rule="continual", eta=1e-6, **PHASES)
    moved = step.nudged[0].params
    assert not np.allclose(flat(eqx.filter(moved, eqx.is_array)), flat(eqx.filter(net, eqx.is_array)))
    integrated = ctgep.ep_update(net, x, y, beta=0.1, rule="integrated", **PHASES)
    assert rel(step.update, integrated) < 1e-4


def test_centered_nudging_is_the_symmetric_difference(small_problem):
    net, x, y = small_problem
    step = ctgep.ep_step(net, x, y, beta=0.1, nudging="centered", **PHASES)
    assert len(step.nudged) == 2
    # (∂μ/∂θ)ᵀ at s⁰ applied to (s^{+β} − s^{−β}) / 2β: endpoint_update with that displacement.
    delta = jax.tree_util.tree_map(lambda a, b: (a - b) / 0.2, step.nudged[0].state, step.nudged[1].state)
    shifted = jax.tree_util.tree_map(jnp.add, step.free.state, delta)
    want = ctgep.endpoint_update(net, x, step.free.state, shifted, 1.0)
    np.testing.assert_allclose(flat(step.update), flat(want), rtol=1e-9, atol=1e-13)


def test_random_nudging_draws_the_sign_from_the_key(small_problem):
    net, x, y = small_problem
    signs = set()
    for k in range(8):
        step = ctgep.ep_step(net, x, y, beta=0.1, nudging="random", key=jr.PRNGKey(k), **PHASES)
        signs.add(float(np.sign(step.betas[0])))
        assert abs(float(step.betas[0])) == pytest.approx(0.1)
    assert signs == {1.0, -1.0}


def test_updates_drive_an_optax_optimiser_with_per_layer_rates():
    """A few EP steps with per-layer learning rates lower the cost on a fixed batch."""
    net = ctgep.LayeredNetwork((8, 16, 4), "sigmoid", key=jr.PRNGKey(0))
    x = jr.uniform(jr.PRNGKey(1), (16, 8))
    y = jax.nn.one_hot(jnp.arange(16) % 4, 4)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    labels = jax.tree_util.tree_map(lambda _: "hidden", params)
    labels = eqx.tree_at(lambda p: (p.Wf[1], p.b[1]), labels, ("output", "output"))
    opt = optax.multi_transform({"hidden": optax.sgd(0.5), "output": optax.sgd(0.2)}, labels)
    state = opt.init(params)

    def cost(net):
        r = ctgep.free_phase(net, x, solver="euler", tol=1e-5)
        return float(jnp.mean(net.cost(r.state, y)))

    before = cost(net)
    for _ in range(15):
        u = ctgep.ep_update(net, x, y, beta=0.5, solver="euler", tol=1e-5)
        updates, state = opt.update(ctgep.as_gradient(u), state, params)
        params = optax.apply_updates(params, updates)
        net = eqx.combine(params, static)
    assert cost(net) < 0.8 * before


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=0.0), "beta"),
        (dict(beta=-0.5), "beta"),
        (dict(beta=0.1, rule="backprop"), "rule"),
        (dict(beta=0.1, nudging="sideways"), "nudging"),
        (dict(beta=0.1, nudging="random"), "key"),
        (dict(beta=1.0, nudging="centered"), "leak"),
        (dict(beta=0.1, solver="rk4"), "solver"),
        (dict(beta=0.1, rule="continual"), "eta"),
        (dict(beta=0.1, policy="ignore"), "policy"),
    ],
)
def test_bad_arguments_name_the_argument(small_problem, kwargs, match):
    net, x, y = small_problem
    with pytest.raises(ValueError, match=match):
        ctgep.ep_update(net, x, y, **kwargs)


def test_bad_shapes_and_names_are_reported(small_problem):
    net, x, y = small_problem
    with pytest.raises(ValueError, match="activation"):
        ctgep.LayeredNetwork((3, 2), "relu6", key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match="sizes"):
        ctgep.LayeredNetwork((3,), key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match="feedback"):
        ctgep.LayeredNetwork((3, 4, 2), key=jr.PRNGKey(0), feedback="mirror")
    with pytest.raises(ValueError, match="x has 7 features"):
        ctgep.free_phase(net, x[:, :7])
    with pytest.raises(ValueError, match="y has shape"):
        ctgep.ep_update(net, x, y[:, :3], beta=0.1)
    with pytest.raises(ValueError, match="s_init"):
        ctgep.free_phase(net, x, s_init=(x,))
    with pytest.raises(ValueError, match="beta"):
        ctgep.nudged_phase(net, x, y, net.init_state(x), beta=0.0)
    with pytest.raises(ValueError, match="t_max"):
        ctgep.free_phase(net, x, t_max=-1.0)


# --------------------------------------------------------------------------- small β


@pytest.mark.slow
def test_a_weak_nudge_is_resolved_not_silently_zero(small_problem):
    """At β = 5e-5 the whole nudge is below tol = 1e-4. The stop test is relative to β, so the
    nudged phase runs and the update is resolved (it used to come back as exactly zero, flagged
    converged after 0 steps); a sample counts as converged only below tol·β."""
    net, x, y = small_problem
    long = dict(t_free=2000.0, t_nudged=2000.0)
    for beta in (5e-5, 1e-4, 1e-3):
        step = ctgep.ep_step(net, x, y, beta=beta, solver="tsit5", **long)
        nudged = step.nudged[0]
        assert int(nudged.steps[0]) > 0
        np.testing.assert_array_equal(np.asarray(nudged.converged), np.asarray(nudged.residual) < 1e-4 * beta)
        tight = ctgep.ep_update(net, x, y, beta=beta, solver=ctgep.gradients.TIGHT, tol=1e-9, **long)
        assert rel(step.update, tight) < 1e-2
        assert rel(tight, ctgep.gradients.nu(net, x, y)) < 2 * beta


def test_a_nudge_below_the_dtypes_resolution_is_refused():
    net = ctgep.LayeredNetwork((4, 6, 3), "sigmoid", key=jr.PRNGKey(0))
    x = jr.uniform(jr.PRNGKey(1), (2, 4))
    y = jax.nn.one_hot(jnp.arange(2), 3)
    with pytest.raises(ValueError, match="under what float32 resolves"):
        ctgep.ep_update(net, x, y, beta=5e-5, tol=1e-4)


def test_ep_update_does_not_drop_non_convergence_silently(small_problem):
    net, x, y = small_problem
    with pytest.warns(RuntimeWarning, match="phase did not converge"):
        u = ctgep.ep_update(net, x, y, beta=0.5, solver="euler", t_free=0.5, t_nudged=0.5)
        jax.block_until_ready(u)
        jax.effects_barrier()


def test_a_one_sided_integrated_card_is_warned_about():
    with pytest.warns(UserWarning, match="orbit area .*studies/nu_comparison/RESULTS.md"):
        ctgep.load_card("digits", overrides=["learning.rule=integrated", "learning.nudging=one-sided"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctgep.load_card("digits", overrides=["learning.rule=integrated", "learning.nudging=centered"])
