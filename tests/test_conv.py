"""ctgep.ConvNetwork: shapes, the transposed-convolution feedback, the fixed point, untied
feedback, and the library's gradients, rules and solvers on a tiny network in float64."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax import lax

import ctgep
from ctgep import gradients as G
from ctgep._dynamics.conv import _convolve, _convolve_transpose, _pooled_kernel, conv_sizes

# 8×8 images, 3×3 kernels with padding 1, 2 then 3 maps, 2×2 average pooling: 8·8 → 4·4·2 → 2·2·3 → 3.
TINY = dict(input_shape=(8, 8, 1), channels=(2, 3), kernels=(3, 3), n_out=3, padding=1)
BATCH = 3


def tiny(seed=0, activation="sigmoid", bias=0.5, dtype=jnp.float64, **kw):
    """A tiny ConvNetwork with random biases, inputs in [0, 1) and one-hot targets."""
    k1, k2, k3 = jr.split(jr.PRNGKey(seed), 3)
    net = ctgep.ConvNetwork(**(TINY | kw), activation=activation, key=k1, dtype=dtype)
    biases = tuple(bias * jr.normal(k, b.shape, dtype) for k, b in zip(jr.split(k2, len(net.b)), net.b))
    net = eqx.tree_at(lambda n: n.b, net, biases)
    x = jr.uniform(k3, (BATCH, net.sizes[0]), dtype)
    y = jax.nn.one_hot(jnp.arange(BATCH) % net.sizes[-1], net.sizes[-1], dtype=dtype)
    return net, x, y


def test_shapes_of_the_papers_network():
    net = ctgep.ConvNetwork((28, 28, 1), (32, 64), (5, 5), 10, key=jr.PRNGKey(0))
    assert net.sizes == (784, 12 * 12 * 32, 4 * 4 * 64, 10)
    assert net.maps == ((28, 28, 1), (12, 12, 32), (4, 4, 64))
    assert [w.shape for w in net.Wf] == [(5, 5, 1, 32), (5, 5, 32, 64), (10, 1024)]
    assert [w.shape for w in net.Wb] == [(5, 5, 32, 64), (1024, 10)]
    assert [b.shape for b in net.b] == [(32,), (64,), (10,)]
    x = jnp.zeros((4, 784))
    s = net.init_state(x)
    assert [a.shape for a in s] == [(4, 4608), (4, 1024), (4, 10)]
    mu = net.vector_field(s, net.drive(x))
    assert [a.shape for a in mu] == [a.shape for a in s]
    assert net.output(s).shape == (4, 10)
    assert net.state_bounds == (0.0, 1.0)
    assert conv_sizes((28, 28, 1), (32, 64), (5, 5), 10) == list(net.sizes)


def test_sizes_that_do_not_tile_are_refused():
    with pytest.raises(ValueError, match="does not tile"):
        ctgep.ConvNetwork((6, 6, 1), (2, 3), (3, 3), 3, key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match="layout"):
        ctgep.ConvNetwork(**TINY, key=jr.PRNGKey(0), layout="NWHC")
    with pytest.raises(ValueError, match="feedback"):
        ctgep.ConvNetwork(**TINY, key=jr.PRNGKey(0), feedback="mirror")


@pytest.mark.parametrize("stride,pad,k,side", [(1, 0, 3, 7), (2, 0, 4, 10), (2, 1, 3, 9), (3, 2, 5, 12)])
def test_matrix_product_convolutions_are_xla_convolutions_and_adjoint(x64, stride, pad, k, side):
    """`_convolve` (im2col) is XLA's convolution, and `_convolve_transpose` (col2im) its exact
    adjoint in the image: <conv(x), y> = <x, convᵀ(y)>, also where a stride leaves rows over."""
    x = jr.normal(jr.PRNGKey(0), (2, side, side, 3), jnp.float64)
    kernel = jr.normal(jr.PRNGKey(1), (k, k, 3, 4), jnp.float64)
    ref = lax.conv_general_dilated(x, kernel, (stride, stride), [(pad, pad)] * 2,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = _convolve(x, kernel, stride, pad)
    np.testing.assert_allclose(out, ref, atol=1e-12)
    y = jr.normal(jr.PRNGKey(2), out.shape, jnp.float64)
    back = _convolve_transpose(y, kernel, (side, side), stride, pad)
    assert back.shape == x.shape
    np.testing.assert_allclose(jnp.vdot(out, y), jnp.vdot(x, back), rtol=1e-12)
    _, vjp = jax.vjp(lambda u: _convolve(u, kernel, stride, pad), x)
    np.testing.assert_allclose(back, vjp(y)[0], atol=1e-12)


def _pooled_reference(net, r, padding, pool, reduce):
    """Layer 1's rates `r` convolved by `K_2` at stride 1 in NHWC, each `pool×pool` block reduced
    by `reduce` (`"mean"` or `"max"`), as flat rows in the network's layout."""
    img = net._image(r, 1)
    nhwc = img if net.layout == "NHWC" else img.transpose(0, 2, 3, 1)
    c = lax.conv_general_dilated(nhwc, net.Wf[1], (1, 1), [(padding, padding)] * 2,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, h, w, ch = c.shape
    ref = getattr(c.reshape(n, h // pool, pool, w // pool, pool, ch), reduce)((2, 4))
    ref = ref if net.layout == "NHWC" else ref.transpose(0, 3, 1, 2)
    return ref.reshape(n, -1), (h // pool, w // pool, ch)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("pool,padding,side", [(2, 1, 8), (2, 0, 14), (1, 0, 6)])
def test_forward_is_conv_then_average_pool_and_feedback_its_transpose(x64, layout, pool, padding, side):
    net = ctgep.ConvNetwork((side, side, 2), (3, 4), (3, 3), 5, key=jr.PRNGKey(0), pool=pool,
                            padding=padding, layout=layout, dtype=jnp.float64)
    r = jr.uniform(jr.PRNGKey(1), (2, net.sizes[1]), jnp.float64)
    ref, _ = _pooled_reference(net, r, padding, pool, "mean")
    out = net._forward(r, 2, _pooled_kernel(net.Wf[1], pool))
    np.testing.assert_allclose(out, ref, atol=1e-13)
    # The feedback by G is exactly the adjoint of the forward map by G (pooling included).
    g = net.Wb[0]
    q = jr.normal(jr.PRNGKey(2), (2, net.sizes[2]), jnp.float64)
    _, vjp = jax.vjp(lambda u: net._forward(u, 2, _pooled_kernel(g, pool)), r)
    np.testing.assert_allclose(net._backward(q, 1, _pooled_kernel(g, pool)), vjp(q)[0], atol=1e-13)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("padding,side", [(1, 8), (0, 14)])
def test_max_pooling_is_a_smooth_max_whose_feedback_follows_the_forward_response(x64, layout, padding, side):
    net = ctgep.ConvNetwork((side, side, 2), (3, 4), (3, 3), 5, key=jr.PRNGKey(0), pool=2, pooling="max",
                            pool_temperature=0.1, padding=padding, layout=layout, dtype=jnp.float64)
    r = jr.uniform(jr.PRNGKey(1), (2, net.sizes[1]), jnp.float64)
    ref, (h, w, ch) = _pooled_reference(net, r, padding, 2, "max")
    mean, _ = _pooled_reference(net, r, padding, 2, "mean")
    out, weights = net._max_forward(r, 2, net.Wf[1])
    # The smooth max (log-mean-exp) lies between the block's mean and its maximum.
    assert bool(jnp.all(out <= ref + 1e-12)) and bool(jnp.all(out >= mean - 1e-12))
    assert float(jnp.max(ref - out)) > 1e-3
    assert weights.shape == (2, h, w, ch, 4)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-12)
    q = jr.normal(jr.PRNGKey(2), (2, net.sizes[2]), jnp.float64)
    # With G = K the feedback is the transposed Jacobian of the forward map.
    _, vjp = jax.vjp(lambda u: net._max_forward(u, 2, net.Wf[1])[0], r)
    np.testing.assert_allclose(net._max_backward(q, 1, net.Wf[1], weights), vjp(q)[0], atol=1e-12)
    # With its own kernel G it is the adjoint of "convolve by G, weigh by the forward's softmax".
    g = net.Wb[0]
    masked = lambda u: net._flat(jnp.sum(net._blocks(net._conv_full(u, 2, g)) * weights, axis=-1))
    back = net._max_backward(q, 1, g, weights)
    np.testing.assert_allclose(back, jax.vjp(masked, r)[1](q)[0], atol=1e-12)
    # … which is not the average-pooling feedback.
    assert not np.allclose(back, net._backward(q, 1, _pooled_kernel(g, 2)), atol=1e-3)
    # At a small temperature the drive is the hard maximum and the weights pick one position.
    cold = ctgep.ConvNetwork((side, side, 2), (3, 4), (3, 3), 5, key=jr.PRNGKey(0), pool=2, pooling="max",
                             pool_temperature=1e-4, padding=padding, layout=layout, dtype=jnp.float64)
    out, weights = cold._max_forward(r, 2, cold.Wf[1])
    np.testing.assert_allclose(out, ref, atol=2e-4)
    assert float(jnp.median(weights.max(-1))) > 0.99
    # At a large one it is the average pooling.
    warm = ctgep.ConvNetwork((side, side, 2), (3, 4), (3, 3), 5, key=jr.PRNGKey(0), pool=2, pooling="max",
                             pool_temperature=1e4, padding=padding, layout=layout, dtype=jnp.float64)
    np.testing.assert_allclose(warm._max_forward(r, 2, warm.Wf[1])[0], mean, atol=1e-4)


def test_feedback_is_untied(x64):
    net, x, _ = tiny(1)
    s = tuple(jr.uniform(k, a.shape, jnp.float64) for k, a in zip(jr.split(jr.PRNGKey(4), 3), net.init_state(x)))
    mu = net.vector_field(s, net.drive(x))
    # A new feedback kernel G_1 changes μ of layer 1 only, and leaves the forward kernel K_2 alone.
    other = eqx.tree_at(lambda n: n.Wb[0], net, 2.0 * net.Wb[0] + 0.1)
    mu2 = other.vector_field(s, other.drive(x))
    assert float(jnp.max(jnp.abs(mu2[0] - mu[0]))) > 1e-3
    np.testing.assert_array_equal(mu2[1], mu[1])
    np.testing.assert_array_equal(mu2[2], mu[2])
    np.testing.assert_array_equal(other.Wf[1], net.Wf[1])
    # And K_2 changes μ of layer 2 only: the feedback does not read the forward kernel.
    other = eqx.tree_at(lambda n: n.Wf[1], net, 2.0 * net.Wf[1] + 0.1)
    mu3 = other.vector_field(s, other.drive(x))
    np.testing.assert_array_equal(mu3[0], mu[0])
    assert float(jnp.max(jnp.abs(mu3[1] - mu[1]))) > 1e-3
    # The dense feedback likewise.
    other = eqx.tree_at(lambda n: n.Wb[1], net, 2.0 * net.Wb[1] + 0.1)
    mu4 = other.vector_field(s, other.drive(x))
    assert float(jnp.max(jnp.abs(mu4[1] - mu[1]))) > 1e-3
    np.testing.assert_array_equal(mu4[0], mu[0])
    np.testing.assert_array_equal(mu4[2], mu[2])
    assert not np.allclose(net.Wb[0], net.Wf[1])


@pytest.mark.parametrize("feedback", ["random", "transpose", 30.0])
def test_feedback_initialisation(feedback):
    net = ctgep.ConvNetwork(**TINY, key=jr.PRNGKey(0), feedback=feedback)
    refs = net.feedback_references()
    cos = [float(jnp.sum(b * r) / (jnp.linalg.norm(b) * jnp.linalg.norm(r))) for b, r in zip(net.Wb, refs)]
    if feedback == "transpose":
        np.testing.assert_allclose(cos, 1.0, rtol=1e-6)
    elif feedback == 30.0:
        np.testing.assert_allclose(cos, np.cos(np.radians(30.0)), rtol=1e-5)
    else:
        assert max(abs(c) for c in cos) < 0.9
    al = ctgep.alignment(net)
    assert set(al) == {"cos_1_2", "trace_1_2", "cos_2_3", "trace_2_3"}
    np.testing.assert_allclose([al["cos_1_2"], al["cos_2_3"]], cos, rtol=1e-5)


def test_the_transposed_feedback_makes_the_linear_jacobian_symmetric(x64):
    # With G = K (feedback="transpose") and ρ' = 1 (every unit inside the hard sigmoid's linear
    # range), Jμ is symmetric: the feedback really is the forward map's transpose.
    net = ctgep.ConvNetwork(**TINY, key=jr.PRNGKey(2), feedback="transpose", activation="hard_sigmoid",
                            dtype=jnp.float64)
    x = jr.uniform(jr.PRNGKey(3), (1, net.sizes[0]), jnp.float64)
    s = tuple(0.3 + 0.4 * jr.uniform(k, a.shape, jnp.float64)
              for k, a in zip(jr.split(jr.PRNGKey(5), 3), net.init_state(x)))
    J = np.asarray(G.jacobian(net, x, s))
    np.testing.assert_allclose(J, np.swapaxes(J, -1, -2), atol=1e-12)
    # Random feedback: not symmetric.
    untied = ctgep.ConvNetwork(**TINY, key=jr.PRNGKey(2), activation="hard_sigmoid", dtype=jnp.float64)
    J = np.asarray(G.jacobian(untied, x, s))
    assert np.abs(J - np.swapaxes(J, -1, -2)).max() > 1e-2


def test_the_transposed_feedback_makes_the_linear_jacobian_symmetric_with_max_pooling(x64):
    net = ctgep.ConvNetwork(**TINY, key=jr.PRNGKey(2), feedback="transpose", activation="hard_sigmoid",
                            pooling="max", pool_temperature=0.1, dtype=jnp.float64)
    x = jr.uniform(jr.PRNGKey(3), (1, net.sizes[0]), jnp.float64)
    s = tuple(0.3 + 0.4 * jr.uniform(k, a.shape, jnp.float64)
              for k, a in zip(jr.split(jr.PRNGKey(5), 3), net.init_state(x)))
    J = np.asarray(G.jacobian(net, x, s))
    np.testing.assert_allclose(J, np.swapaxes(J, -1, -2), atol=1e-12)
    # The forward response routes the coupling: it differs from average pooling's.
    avg = ctgep.ConvNetwork(**TINY, key=jr.PRNGKey(2), feedback="transpose", activation="hard_sigmoid",
                            dtype=jnp.float64)
    assert np.abs(J - np.asarray(G.jacobian(avg, x, s))).max() > 1e-2


def test_fixed_point_is_reached(x64):
    net, x, _ = tiny(3)
    r = ctgep.free_phase(net, x, solver=G.TIGHT, tol=1e-10, t_max=200.0)
    assert bool(jnp.all(r.converged))
    mu = net.vector_field(r.state, net.drive(x))
    assert max(float(jnp.max(jnp.abs(m))) for m in mu) < 1e-9
    s = G.fixed_point(net, x)
    assert max(float(jnp.max(jnp.abs(m))) for m in net.vector_field(s, net.drive(x))) < 1e-12
    for a, b in zip(s, r.state):
        np.testing.assert_allclose(a, b, atol=1e-8)


def test_rbp_equals_finite_differences(x64):
    net, x, y = tiny(4)
    s = G.fixed_point(net, x)
    exact, fd = G.rbp(net, x, y, s_free=s), G.finite_difference(net, x, y, s_free=s)
    assert G.relative_error(exact, fd) <= 1e-6
    assert float(G.compare(exact, fd).relative_error.max()) <= 1e-5
    params = eqx.filter(net, eqx.is_inexact_array)
    assert jax.tree_util.tree_structure(exact) == jax.tree_util.tree_structure(params)


@pytest.mark.slow
def test_near_hard_max_pooling_loses_the_fixed_point_and_the_smooth_one_keeps_it(x64):
    # Why τ > 0 is required: with switches that jump, most small untied networks have no fixed
    # point for the free phase to settle to; at the default τ all of them settle.
    def settled(tau):
        count = 0
        for seed in range(6):
            net, x, _ = tiny(seed, pooling="max", pool_temperature=tau)
            count += bool(jnp.all(ctgep.free_phase(net, x, solver=ctgep.Euler(dt=0.5), tol=1e-9, t_max=400.0).converged))
        return count

    assert settled(1e-9) <= 2
    assert settled(0.3) == 6


def test_rbp_equals_finite_differences_with_max_pooling(x64):
    net, x, y = tiny(4, pooling="max")
    assert bool(jnp.all(ctgep.free_phase(net, x, solver=G.TIGHT, tol=1e-10, t_max=200.0).converged))
    s = G.fixed_point(net, x)
    assert G.relative_error(G.rbp(net, x, y, s_free=s), G.finite_difference(net, x, y, s_free=s)) <= 1e-6


@pytest.mark.slow
def test_rbp_equals_finite_differences_without_pooling(x64):
    net, x, y = tiny(5, input_shape=(6, 6, 1), padding=0, pool=1, activation="tanh")
    s = G.fixed_point(net, x)
    assert G.relative_error(G.rbp(net, x, y, s_free=s), G.finite_difference(net, x, y, s_free=s)) <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("rule,pooling", [("endpoint", "average"), ("integrated", "average"), ("endpoint", "max")])
def test_ep_tends_to_nu_at_order_beta(x64, rule, pooling):
    net, x, y = tiny(6, activation="smooth_hard_sigmoid", pooling=pooling)
    s = G.fixed_point(net, x)
    nu = G.nu(net, x, y, s_free=s)
    free = eqx.tree_at(lambda r: r.state, ctgep.free_phase(net, x, solver=G.TIGHT, tol=1e-9), s)
    betas = (0.04, 0.02, 0.01)
    errs = [G.relative_error(ctgep.ep_update(net, x, y, beta=b, rule=rule, solver=G.TIGHT, tol=1e-9,
                                             free=free), nu) for b in betas]
    assert errs[-1] < 2 * betas[-1]
    ratios = [errs[i] / errs[i + 1] for i in range(len(errs) - 1)]
    assert all(1.6 < r < 2.4 for r in ratios), (errs, ratios)
    # Untied feedback: ν is not −∂J/∂θ (the Jacobian is not symmetric), only close to it.
    assert G.relative_error(nu, jax.tree_util.tree_map(jnp.negative, G.rbp(net, x, y, s_free=s))) > 1e-3


@pytest.mark.parametrize("solver", [ctgep.Euler(dt=0.5), ctgep.Euler(dt=1.0, precondition=True, alternate=True), G.TIGHT],
                         ids=["euler", "gauss-seidel", "tsit5"])
@pytest.mark.slow
def test_every_solver_reaches_the_same_fixed_point(x64, solver):
    # The hard sigmoid's kinks stall an adaptive solver's error control near 1e-10: Tsit5 gets
    # the smooth hard sigmoid (no state bounds), the Euler schemes the paper's clipped one.
    net, x, y = tiny(7, activation="smooth_hard_sigmoid" if solver is G.TIGHT else "hard_sigmoid")
    ref = ctgep.free_phase(net, x, solver=ctgep.Euler(dt=0.5), tol=1e-10, t_max=400.0)
    assert bool(jnp.all(ref.converged))
    r = ctgep.free_phase(net, x, solver=solver, tol=1e-10, t_max=400.0)
    assert bool(jnp.all(r.converged))
    for a, b in zip(r.state, ref.state):
        np.testing.assert_allclose(a, b, atol=1e-7)
    if net.state_bounds is not None:
        assert all(float(a.min()) >= 0.0 and float(a.max()) <= 1.0 for a in r.state)
    # A nudged phase and both rules through ep_step.
    for rule in ("endpoint", "integrated"):
        step = ctgep.ep_step(net, x, y, beta=0.5, rule=rule, solver=solver, tol=1e-8, t_free=400.0, t_nudged=400.0)
        assert bool(jnp.all(step.free.converged)) and bool(jnp.all(step.nudged[0].converged))
        params = eqx.filter(net, eqx.is_inexact_array)
        assert jax.tree_util.tree_structure(step.update) == jax.tree_util.tree_structure(params)
        assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(step.update))


# ----------------------------------------------------------------------------------------------
# Model cards


CNN_CARDS = ["mnist_cnn", "mnist_cnn_fast", "fashion-mnist_cnn"]


@pytest.mark.parametrize("name", CNN_CARDS)
def test_cnn_cards_build_the_papers_network(name):
    import pathlib

    card = ctgep.load_card(pathlib.Path(__file__).resolve().parents[1] / "models" / f"{name}.toml")
    assert card.model.kind == "conv" and card.model.channels == [32, 64] and card.model.kernels == [5, 5]
    net = ctgep.build_network(card, jr.PRNGKey(0))
    assert isinstance(net, ctgep.ConvNetwork) and list(net.sizes) == card.model.sizes
    assert [w.shape for w in net.Wf[:2]] == [(5, 5, 1, 32), (5, 5, 32, 64)]
    if name != "mnist_cnn":
        assert card.phases.alternate and card.phases.precondition and card.phases.dt == 1.0


def test_conv_card_keys_are_validated():
    conv = ["model.kind=conv", "model.sizes=[64,72,10]", "model.channels=[8]", "model.kernels=[3]"]
    card = ctgep.load_card("digits", conv)
    assert card.model.image_shape() == (8, 8, 1)
    assert isinstance(ctgep.build_network(card, jr.PRNGKey(0)), ctgep.ConvNetwork)
    assert isinstance(ctgep.build_network(ctgep.load_card("digits"), jr.PRNGKey(0)), ctgep.LayeredNetwork)
    with pytest.raises(ctgep.CardError, match=r"gives the flat widths \[64, 72, 10\]"):
        ctgep.load_card("digits", conv + ["model.sizes=[64,70,10]"])
    with pytest.raises(ctgep.CardError, match="does not tile"):
        ctgep.load_card("digits", conv + ["model.kernels=[4]"])
    with pytest.raises(ctgep.CardError, match="model.kind = 'conv'"):
        ctgep.load_card("digits", ["model.channels=[8]"])
    with pytest.raises(ctgep.CardError, match="model.kind"):
        ctgep.load_card("digits", ["model.kind=dense"])
    net = ctgep.build_network(ctgep.load_card("digits", conv + ["model.pooling=max"]), jr.PRNGKey(0))
    assert net.pooling == "max"
    with pytest.raises(ctgep.CardError, match="model.pooling='mean' must be 'average' or 'max'"):
        ctgep.load_card("digits", conv + ["model.pooling=mean"])
    with pytest.raises(ctgep.CardError, match="model.pooling='max' describes convolutional layers"):
        ctgep.load_card("digits", ["model.pooling=max"])
    with pytest.raises(ValueError, match="pooling"):
        ctgep.ConvNetwork(**TINY, key=jr.PRNGKey(0), pooling="min")
    with pytest.raises(ctgep.CardError, match="pool_temperature=0.0 must be > 0"):
        ctgep.load_card("digits", conv + ["model.pooling=max", "model.pool_temperature=0"])
    hard = ctgep.load_card("digits", conv + ["model.pooling=max", "model.pool_temperature=0.03"])
    assert ctgep.build_network(hard, jr.PRNGKey(0)).pool_temperature == 0.03
    with pytest.raises(ctgep.CardError, match="model.layout"):
        ctgep.load_card("digits", conv + ["model.layout=CHWN"])
    with pytest.raises(ctgep.CardError, match="model.image"):
        ctgep.load_card("digits", conv + ["model.image=[8,8,2]"])
