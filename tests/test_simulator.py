"""One simulator: solvers own their step, recording observes the same integrator, and every
sample says why its phase ended (RESULTS codes)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import ctgep


class Heun(ctgep.AbstractStepper):
    """A user's own solver: the explicit trapezoid rule, written against the public interface only."""

    dt: float = 0.25
    clip: bool = False  # project onto the network's state bounds after each step

    def step(self, problem, prepared, params, s, mu):
        pred = tuple(a + self.dt * m for a, m in zip(s, mu))
        mu2 = problem.field(params, pred)
        half = lambda v: tuple(0.5 * self.dt * m for m in v)
        s_next = tuple(a + b + c for a, b, c in zip(s, half(mu), half(mu2)))
        bounds = problem.net.state_bounds if self.clip else None
        if bounds is not None:
            s_next = tuple(jnp.clip(a, *bounds) for a in s_next)
        return s_next, [(s, half(mu)), (pred, half(mu2))]


@pytest.fixture
def small(x64):
    net = ctgep.LayeredNetwork((5, 7, 6, 3), "sigmoid", key=jr.PRNGKey(0), dtype=jnp.float64)
    x = jr.uniform(jr.PRNGKey(1), (4, 5), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(4) % 3, 3, dtype=jnp.float64)
    return net, x, y


def test_a_user_solver_runs_the_free_phase_to_the_same_fixed_point(small):
    net, x, _ = small
    mine = ctgep.free_phase(net, x, solver=Heun(), t_max=200.0, tol=1e-10)
    ref = ctgep.free_phase(net, x, solver=ctgep.Adaptive(rtol=1e-10, atol=1e-12), t_max=200.0, tol=1e-10)
    assert bool(mine.converged.all()) and mine.residual_kind == "raw"
    for a, b in zip(mine.state, ref.state):
        np.testing.assert_allclose(a, b, atol=1e-8)


def test_a_user_solver_drives_the_learning_rules(small):
    """ep_step's integrated rule through the user's solver agrees with the endpoint rule to O(β)."""
    net, x, y = small
    kw = dict(beta=1e-3, solver=Heun(), t_free=200.0, t_nudged=200.0, tol=1e-10)
    integrated = ctgep.ep_update(net, x, y, rule="integrated", **kw)
    endpoint = ctgep.ep_update(net, x, y, rule="endpoint", **kw)
    assert float(ctgep.gradients.relative_error(integrated, endpoint)) < 5e-3


def test_a_user_solver_is_recorded_and_the_record_ends_at_the_phase_result(small):
    net, x, y = small
    solver = Heun()
    ds = ctgep.record(net, x, y, beta=0.1, solver=solver, t_free=20.0, t_nudged=10.0, sampling=4)
    step = ctgep.ep_step(net, x, y, beta=0.1, solver=solver, t_free=20.0, t_nudged=10.0, rule="integrated")
    for phase, r in (("free", step.free), ("nudged", step.nudged[0])):
        flat = np.concatenate([np.asarray(a) for a in r.state], axis=-1)
        np.testing.assert_array_equal(ds.final_state.sel(phase=phase).values, flat)
        np.testing.assert_array_equal(ds.final_residual.sel(phase=phase).values, np.asarray(r.residual))
    assert ctgep.record_settings(ds)["solver"]["kind"] == "heun"


@pytest.mark.parametrize("solver", [ctgep.Euler(dt=0.5), ctgep.Euler(dt=1.0, precondition=True, alternate=True),
                                    pytest.param(ctgep.Adaptive(), marks=pytest.mark.slow)])
def test_recorded_final_states_are_the_phase_results(small, solver):
    net, x, y = small
    ds = ctgep.record(net, x, y, beta=0.5, solver=solver, t_free=30.0, t_nudged=15.0)
    step = ctgep.ep_step(net, x, y, beta=0.5, solver=solver, t_free=30.0, t_nudged=15.0)
    for phase, r in (("free", step.free), ("nudged", step.nudged[0])):
        flat = np.concatenate([np.asarray(a) for a in r.state], axis=-1)
        np.testing.assert_array_equal(ds.final_state.sel(phase=phase).values, flat)


# --------------------------------------------------------------------------- result codes


def test_a_sample_that_settled_is_converged_even_when_the_batch_ran_out_of_steps(small):
    """The batch is one ODE: its step budget is shared, the verdict is per sample."""
    net, x, _ = small
    settled = ctgep.free_phase(net, x, solver=ctgep.Adaptive(rtol=1e-10, atol=1e-12), tol=1e-12, t_max=400.0)
    s_init = tuple(a.at[1:].set(0.0) for a in settled.state)  # sample 0 at its fixed point, others at zero
    r = ctgep.free_phase(net, x, solver=ctgep.Adaptive(max_steps=3), s_init=s_init, tol=1e-6)
    codes = np.asarray(r.code)
    assert codes[0] == ctgep.RESULTS.converged
    assert np.all(codes[1:] == ctgep.RESULTS.max_steps_reached)


def test_a_short_horizon_is_named(small):
    net, x, _ = small
    r = ctgep.free_phase(net, x, solver="euler", t_max=1.0)
    assert np.all(np.asarray(r.code) == ctgep.RESULTS.horizon_reached)
    with pytest.warns(RuntimeWarning, match=r"4 sample\(s\) reached the horizon t_max"):
        jax.block_until_ready(ctgep.free_phase(net, x, solver="euler", t_max=1.0, policy="warn").state)
        jax.effects_barrier()


@pytest.mark.parametrize("solver", ["euler", "tsit5"])
@pytest.mark.parametrize("where", ["s_init", "x"])
def test_a_nonfinite_sample_is_flagged_alone_inside_jit(small, solver, where):
    """Inside `jit` (no boundary check) a NaN sample is flagged alone, also when the adaptive
    solver integrates the whole batch as one ODE; the others settle to the clean batch's fixed
    point (to the phase's accuracy: the adaptive steps see one sample fewer)."""
    net, x, _ = small
    s_init = net.init_state(x)
    if where == "s_init":
        s_init = tuple(a.at[2].set(jnp.nan) for a in s_init)
    bad_x = x.at[2, 0].set(jnp.nan) if where == "x" else x
    run = eqx.filter_jit(lambda n, xx, s: ctgep.free_phase(n, xx, solver=solver, t_max=60.0, s_init=s))
    r = run(net, bad_x, s_init)
    codes = np.asarray(r.code)
    assert codes[2] == ctgep.RESULTS.nonfinite_state
    assert np.all(codes[[0, 1, 3]] == ctgep.RESULTS.converged)
    clean = run(net, x, net.init_state(x))
    for a, b in zip(r.state, clean.state):
        np.testing.assert_allclose(np.asarray(a)[[0, 1, 3]], np.asarray(b)[[0, 1, 3]], atol=1e-3)


def test_nonfinite_inputs_are_refused_with_their_rows(small):
    net, x, y = small
    with pytest.raises(ValueError, match=r"x has non-finite values in 1 sample\(s\): rows 2"):
        ctgep.free_phase(net, x.at[2, 0].set(jnp.inf))
    free = ctgep.free_phase(net, x)
    with pytest.raises(ValueError, match=r"y has non-finite values in 2 sample\(s\): rows 0, 3"):
        ctgep.nudged_phase(net, x, y.at[0, 0].set(jnp.nan).at[3, 1].set(jnp.nan), free, beta=0.5)


def test_raise_leads_with_ctgeps_own_line(small):
    net, x, _ = small
    with pytest.raises(Exception, match=r"ctgep: the free phase did not converge: .*horizon_reached"):
        jax.block_until_ready(ctgep.free_phase(net, x, solver="euler", t_max=1.0, policy="raise").state)


def test_the_clipped_scheme_names_its_residual(small):
    net, x, _ = small
    hard = ctgep.LayeredNetwork((5, 7, 6, 3), "hard_sigmoid", key=jr.PRNGKey(0), dtype=jnp.float64)
    assert ctgep.free_phase(hard, x, solver="euler").residual_kind == "projected"
    assert ctgep.free_phase(hard, x, solver=ctgep.Euler(clip=False)).residual_kind == "raw"
    assert ctgep.free_phase(net, x, solver="tsit5").residual_kind == "raw"


def test_every_solver_describes_itself():
    assert ctgep.Euler(dt=1.0, precondition=True).describe() == {
        "kind": "euler", "dt": 1.0, "clip": True, "precondition": True, "alternate": False, "backtrack": False}
    assert ctgep.Adaptive(diffrax.Dopri5()).describe()["solver"] == "Dopri5"


@pytest.mark.parametrize("solver", [ctgep.Euler(dt=0.5), ctgep.Euler(dt=1.0, precondition=True, alternate=True),
                                    ctgep.Euler(dt=1.0, backtrack=True)])
def test_the_stored_integrated_path_equals_the_per_step_vjps(small, solver, monkeypatch):
    """The fast path (moves stored, one VJP at the end) is the same sum as one VJP per move."""
    from ctgep._simulation import solver as solver_module
    from ctgep._simulation.phases import run_phase

    net, x, y = small
    free = ctgep.free_phase(net, x, solver=solver, t_max=40.0)
    run = lambda: run_phase(net, x, y, free.state, jnp.asarray(0.3), solver, 12.0, 1e-6, True, "integrate")[0]
    fast = run()
    monkeypatch.setattr(solver_module, "_STORE_LIMIT_BYTES", 0)
    slow = run()
    for a, b in zip(jax.tree_util.tree_leaves(fast.synapse_integral), jax.tree_util.tree_leaves(slow.synapse_integral)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert int(fast.steps[0]) == int(slow.steps[0]) > 0


@pytest.mark.slow
def test_a_user_solver_trains_unchanged(tmp_path):
    """The training step relaxes with the user's solver (its step, 0.25, is not the card's 0.5)."""
    card = ctgep.load_card("digits", overrides=["training.epochs=3", "data.max_train=1000", "data.max_test=200"])
    step = ctgep.build_training_step(card, 1000 // card.training.batch_size, solver=Heun(dt=0.25, clip=True))
    run = ctgep.train(card, tmp_path / "run", data=ctgep.load_card_data(card), step=step, progress=False,
                      log=lambda *a: None)
    final = run.summary["final"]
    assert final["free_time"] / final["free_steps"] == pytest.approx(0.25)
    # chance is 0.9; the card's own clipped Euler reaches 0.44 here (unclipped dynamics do not
    # learn on this card's rates in 3 epochs, whichever the solver)
    assert final["test_error"] < 0.7
