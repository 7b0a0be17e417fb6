"""The paper's clipped forward-Euler relaxation (Eq. 58–59) and its fixed-point-preserving
speed-ups: the preconditioned step (nonlinear Jacobi at `dt = 1`) and layers updated in turn
(block Gauss–Seidel). See docs/model.md for the scheme and its own fixed point."""

import jax
import jax.numpy as jnp

from .._dynamics import field as F
from .problem import PhaseProblem
from .solver import AbstractStepper

BACKTRACK_FLOOR = 1 / 16  # the smallest step factor `backtrack` halves down to


class Euler(AbstractStepper, strict=True):
    """The paper's forward Euler relaxation `s ← 0 ∨ (s + ε μ^β) ∧ 1` (Eq. 58–59).

    With `clip=True` the state is projected onto the network's `state_bounds` (the hard
    sigmoid's [0, 1]) after each step; networks without bounds are not clipped. The residual
    it reports (and stops on) is then the projected field `(clip(s + ε μ^β) − s)/ε`, zero for
    a unit held on its bound (`PhaseResult.residual_kind == "projected"`).

    With `precondition=True` each unit's step is `ε / max(1, 1 + β ∂²C/∂s_i²)`: divided by its
    own leak rate under a positive nudge (1 + β on the outputs of the squared-error cost, 1
    elsewhere). Any positive per-unit step leaves the fixed point, and so what EP learns from,
    unchanged; with `dt=1` this is the nonlinear Jacobi iteration (each unit jumps to where its
    own `μ` is 0 given the others), whereas plain Euler at `dt=1` makes the nudged outputs
    oscillate (factor `1 − (1 + β)ε = −1` at β = 1). How many steps it saves depends on the
    network (the nudged outputs' leak, the slowest mode): measure it on the card you use.

    With `alternate=True` each step updates the odd layers (1, 3, … from the input) and then
    the even ones from the odd layers' new state, instead of all layers from the old state
    (red–black ordering). The fixed points are the same; in a layered network a layer's μ
    depends only on its neighbours, so a step costs the same products (with a steady-state stop,
    half a step more for the test of every layer's μ), and information crosses two layers per
    step instead of one. With `precondition=True, dt=1` this is block Gauss–Seidel: each layer
    jumps to its own fixed point given its neighbours.

    With `backtrack=True` each sample's step is halved (down to `dt/16`) whenever the step it
    just took, `‖Δs‖∞` over the factor in force (the projected `‖μ‖∞` the step moved along), is
    not below that of two steps earlier taken with the same factor (one step is too short a
    window: a converging but non-normal iteration's steps can grow for one step); the next step
    uses the halved factor. Measuring the step taken, not `μ` at its start, costs no extra
    products. It guards an iteration whose matrix has an eigenvalue outside the unit circle
    although the ODE's fixed point is stable (e.g. a real eigenvalue below −1 of block
    Gauss–Seidel at dt = 1, which then flips between two states; `ctgep stability` measures that
    radius). A positive per-sample step leaves the fixed point, and so what EP learns from,
    unchanged; a sample whose steps keep shrinking keeps `dt`. The factor starts at 1 in every
    phase; times (`k · dt`) then count steps, not the shorter time a damped sample moved.
    """

    dt: float = 0.5
    clip: bool = True
    precondition: bool = False
    alternate: bool = False
    backtrack: bool = False

    @property
    def residual_kind(self) -> str:
        return "projected" if self.clip else "raw"

    @property
    def clips(self) -> bool:
        return self.clip

    @property
    def name(self) -> str:
        """The iteration this is: Euler, alternating Euler, Jacobi or block Gauss–Seidel."""
        if self.precondition:
            name = "block Gauss–Seidel" if self.alternate else "Jacobi"
        else:
            name = "alternating Euler" if self.alternate else "Euler"
        return name + " (backtracking)" if self.backtrack else name

    @property
    def adapts(self) -> bool:
        return self.backtrack

    def linear_sweep(self, problem, s):
        """The undamped step (factor 1): with `backtrack`, the iteration it safeguards."""
        steps = self._unit_steps(problem, s)
        h = tuple(jnp.broadcast_to(st, a.shape).astype(a.dtype) for st, a in zip(steps, s))
        bounds = self.bounds(problem.net)
        if bounds is None:
            free = tuple(jnp.ones(a.shape, bool) for a in s)
        else:
            free = tuple((a > bounds[0]) & (a < bounds[1]) for a in s)
        return h, free, self._groups(len(s))

    def prepare(self, problem: PhaseProblem, s0):
        """Each layer's step (:meth:`_unit_steps`); with `backtrack` also each sample's step
        factor (1) and its last two step sizes (∞), which :meth:`adapt` updates along the phase."""
        steps = self._unit_steps(problem, s0)
        if not self.backtrack:
            return steps
        batch, dtype = s0[0].shape[0], s0[0].dtype
        never = jnp.full((batch,), jnp.inf, dtype)
        return steps, jnp.ones((batch, 1), dtype), (never, never)

    def adapt(self, prepared, s, s_next):
        """Halve the step factor of every sample whose step `‖s_next − s‖∞ / factor` is not
        below that of two steps before."""
        if not self.backtrack:
            return prepared
        steps, factor, (last, before) = prepared
        size = F.residual(tuple(b - a for a, b in zip(s, s_next))) / factor[:, 0]
        stalled = size >= before
        factor = jnp.where(stalled[:, None], jnp.maximum(factor / 2, BACKTRACK_FLOOR), factor)
        # Compare only steps taken with one factor: a halving starts the history afresh (else the
        # step already under way when the growth showed would halve the factor a second time).
        never = jnp.full_like(last, jnp.inf)
        history = (jnp.where(stalled, never, size.astype(last.dtype)), jnp.where(stalled, never, last))
        return steps, factor, history

    def _steps(self, prepared):
        """The per-layer steps in force: the unit steps times each sample's factor."""
        if not self.backtrack:
            return prepared
        steps, factor, _ = prepared
        return tuple(h * factor for h in steps)

    def _unit_steps(self, problem: PhaseProblem, s0):
        """Each layer's step: `ε`, or `ε / max(1, 1 + β ∂²C/∂s_i²)` per unit when preconditioned.

        The cost's curvature is its Hessian-vector product with ones at the phase's initial
        state (exact for the squared error, whose Hessian is the identity on the outputs). Steps
        are only ever shortened: a unit the nudge makes less stiff (β < 0) keeps `ε`.
        """
        dt = self.dt
        if not self.precondition or problem.y is None:
            return tuple(jnp.asarray(dt, a.dtype) for a in s0)
        net, y = problem.net, problem.y
        cost = lambda u: jnp.sum(net.cost(u, y))
        ones = jax.tree_util.tree_map(jnp.ones_like, s0)
        curv = jax.jvp(jax.grad(cost), (s0,), (ones,))[1]
        out = []
        for c in curv:
            leak = 1.0 + problem.beta * jnp.mean(c, axis=0)  # the same for every sample
            out.append((dt / jnp.maximum(leak, 1.0)).astype(c.dtype))
        return tuple(out)

    def field(self, problem, prepared, params, s):
        """The clipped scheme's effective field `(clip(s + h μ, lo, hi) − s) / h` (Eq. 59)."""
        steps = self._steps(prepared)
        mu = problem.field(params, s)
        bounds = problem.net.state_bounds if self.clip else None
        if bounds is None:
            return mu
        lo, hi = bounds
        return jax.tree_util.tree_map(lambda a, m, h: (jnp.clip(a + h * m, lo, hi) - a) / h, s, mu, steps)

    def _groups(self, n_layers: int) -> tuple[tuple[int, ...], ...]:
        """All layers at once, or (alternating) indices 0, 2, … (layers 1, 3, …), then 1, 3, …"""
        if not self.alternate or n_layers < 2:
            return (tuple(range(n_layers)),)
        return tuple(range(0, n_layers, 2)), tuple(range(1, n_layers, 2))

    def move_layers(self, n_layers: int):
        return self._groups(n_layers)

    def step(self, problem, prepared, params, s, mu):
        """Each group of layers moves by `h · μ` in turn, μ re-evaluated on the state the
        previous group left (for the layered net a group's μ needs only the other group's
        rates, so an alternating step costs the products of one synchronous step)."""
        steps = self._steps(prepared)
        moves = []
        for i, group in enumerate(self._groups(len(s))):
            if i > 0:
                mu = self.field(problem, prepared, params, s)
            ds = tuple(h * m if l in group else jnp.zeros_like(m) for l, (h, m) in enumerate(zip(steps, mu)))
            moves.append((s, ds))
            s = tuple(a + d if l in group else a for l, (a, d) in enumerate(zip(s, ds)))
        return s, moves
