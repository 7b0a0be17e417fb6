"""The phase-solver interface, and the one loop that every fixed-step iteration shares.

A solver owns how a phase is integrated: :meth:`AbstractPhaseSolver.relax` takes a
:class:`PhaseProblem`, an initial state, the horizon, the steady-state test and an optional
:class:`Observer`, and returns a :class:`Relaxation`. Free and nudged phases, the integrated
and continual synapses, and recording all go through it, so a new solver works everywhere.

Two ways to write one:

* subclass :class:`AbstractStepper` and implement `step` (and, if the iteration is not the
  plain field, `field`): the fixed-step loop below handles the steady-state stop, the synapse
  integral, continual weights and the observer (this is how :class:`ctgep.Euler` is written);
* subclass :class:`AbstractPhaseSolver` and implement `relax` yourself (as
  :class:`ctgep.Adaptive` does by handing the whole phase to `diffrax.diffeqsolve`).
"""

import abc
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._dynamics import field as F
from .._dynamics.networks import State
from .problem import Observer, PhaseProblem
from .results import SOLVE_OK


class Relaxation(eqx.Module):
    """What a solver returns.

    `z`: the final solver state (`"s"`, and `"acc"` / `"theta"` with synapses); `t`, `steps`:
    the time and steps taken (shared by the batch); `status`: `SOLVE_OK`, `SOLVE_MAX_STEPS` or
    `SOLVE_FAILED` (shared); `residual`: per sample at the final state; with an observer,
    `record_ts` and `records` (NaN-padded where unused).
    """

    z: dict
    t: Array
    steps: Array
    status: Array
    residual: Array
    record_ts: Any = None
    records: Any = None


class AbstractPhaseSolver(eqx.Module):
    """A way to integrate one phase `ds/dt = μ^β` to steady state or to its horizon."""

    @abc.abstractmethod
    def relax(
        self,
        problem: PhaseProblem,
        s0: State,
        *,
        t_max: float,
        tol: float,
        stop: bool,
        observer: Observer | None = None,
    ) -> Relaxation:
        """Integrate from `s0` until every sample's residual is below `tol` (when `stop`) or
        `t_max`; integrate the synapses as `problem.synapses` says; record as `observer` says."""

    @property
    def residual_kind(self) -> str:
        """Which field the reported residual measures: `"raw"` `μ^β`, or `"projected"`."""
        return "raw"

    @property
    def time_resolution(self) -> float | None:
        """The finest spacing of record times this solver can honour (its step), or None."""
        return None

    @property
    def clips(self) -> bool:
        """Whether the solver projects the state onto the network's `state_bounds`."""
        return False

    def bounds(self, net) -> tuple[float, float] | None:
        """The box the solver holds the state in (`net.state_bounds` when it clips), or None."""
        return net.state_bounds if self.clips else None

    def describe(self) -> dict:
        """The solver's settings as plain JSON-able values (for netCDF attributes and metadata)."""
        out: dict[str, Any] = {"kind": type(self).__name__.lower()}
        for name, value in vars(self).items():
            out[name] = value if isinstance(value, (bool, int, float, str, type(None))) else type(value).__name__
        return out


class AbstractStepper(AbstractPhaseSolver):
    """A fixed-step iteration `s_{k+1} = step(s_k)` with step `dt` (time `k · dt`).

    Implement :meth:`step`; override :meth:`prepare` (per-phase constants such as per-unit
    steps) and :meth:`field` (the field the step and the stop test use, e.g. a projection)
    when needed. The shared loop runs exactly `⌈t_max/dt⌉` steps, or stops on the first state
    whose residual is below `tol` for every sample (`stop=True`).
    """

    dt: eqx.AbstractVar[float]

    def prepare(self, problem: PhaseProblem, s0: State) -> Any:
        """Per-phase constants handed to :meth:`field` and :meth:`step` (default: None)."""
        return None

    def field(self, problem: PhaseProblem, prepared, params, s: State) -> State:
        """The field stepped along and tested for steady state (default: `μ^β` itself)."""
        return problem.field(params, s)

    @property
    def adapts(self) -> bool:
        """Whether :meth:`adapt` changes `prepared` along the phase."""
        return False

    def adapt(self, prepared, s: State, s_next: State):
        """`prepared` for the next step, given the step just taken from `s` to `s_next`
        (default: unchanged). Runs after every :meth:`step` when :attr:`adapts`."""
        return prepared

    @abc.abstractmethod
    def step(self, problem: PhaseProblem, prepared, params, s: State, mu: State):
        """One step from `s`, where `mu = field(s)`. Returns `(s_next, moves)`, `moves` a list of
        `(state, ds)` whose synapse terms `(∂μ/∂θ)ᵀ(state) ds` sum to the step's increment."""

    def move_layers(self, n_layers: int) -> tuple[tuple[int, ...], ...] | None:
        """For each move of a step, the layers whose `ds` can be non-zero (None: all of them).

        The stored integrated rule then pulls back only those layers' μ for that move: exact,
        since the other layers' terms have `ds = 0`, and half the products for a stepper that
        moves half the layers at a time.
        """
        return None

    @property
    def time_resolution(self):
        return float(self.dt)

    def linear_sweep(self, problem: PhaseProblem, s: State):
        """The step linearised at a fixed point `s`, for stability analysis (docs/theory.md).

        Returns `(h, free, groups)`: per-unit steps `h` and the mask `free` of units the step
        moves (shaped like `s`), and the layer index groups updated in turn; one step maps an
        error `e` group by group to `free · (e + h Jμ e)` on the group's units. Steppers whose
        step is not of this form raise `NotImplementedError`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not describe its linearised step")

    def relax(self, problem, s0, *, t_max, tol, stop, observer=None):
        dt = float(self.dt)
        n_steps = max(int(math.ceil(t_max / dt - 1e-9)), 0)
        prepared0 = self.prepare(problem, s0)  # carried through the loop: `adapt` may change it
        synapses = problem.synapses
        rec = _Recorder(observer, n_steps, dt) if observer is not None else None

        # The integrated rule adds up `(∂μ/∂θ)ᵀ(u) ds` over the moves. Its parameters are fixed in
        # the phase, so the moves are stored and summed in one VJP at the end (see
        # `_trajectory_synapses`: one large product, and the input's drive pulled back once);
        # continual mode needs each step's increment at once, and a trajectory too long to store
        # falls back to adding per step.
        store = False
        if synapses == "integrate" and rec is None:  # a recorder reads the running integral
            n_moves = len(jax.eval_shape(lambda: self.step(problem, prepared0, problem.params, s0, s0))[1])
            store = _store_fits(s0, n_steps * n_moves)

        # μ is evaluated once per step inside the body, so the step, the projection and the
        # residual fuse with the products. With `stop`, a step whose state already has
        # ‖μ‖∞ < tol for every sample is not taken: the phase ends on the first settled state.
        def body(carry):
            k, s, res, done, acc, p, log, prepared = carry
            mu = self.field(problem, prepared, p, s)
            if stop:  # a non-finite sample (flagged at the end) does not hold the others
                res = F.residual(mu)
                done = jnp.max(F.finite_or_zero(res)) < tol
            if rec is not None:
                log = rec.maybe_write(log, k, s, mu, acc)
            s_new, moves = self.step(problem, prepared, p, s, mu)
            if stop:
                s_new = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), s, s_new)
            if self.adapts:  # from the step actually taken (none once the phase has settled)
                prepared = self.adapt(prepared, s, s_new)
            if synapses != "none":
                for i, (u, ds) in enumerate(moves):
                    if stop:
                        ds = tuple(jnp.where(done, 0.0, d) for d in ds)
                    if store:
                        slot = k * n_moves + i
                        acc = tuple(tuple(b.at[slot].set(a) for b, a in zip(buf, v)) for buf, v in zip(acc, (u, ds)))
                        continue
                    g = problem.synapse_rate(p, u, ds)
                    acc = jax.tree_util.tree_map(jnp.add, acc, g)
                    if synapses == "continual":
                        p = problem.move_weights(p, g)
            return k + (~done).astype(k.dtype), s_new, res, done, acc, p, log, prepared

        z0 = problem.initial(s0)
        res0 = jnp.full_like(F.residual(s0), jnp.inf)
        log0 = rec.init(problem, lambda p, s: self.field(problem, prepared0, p, s), z0) if rec is not None else None
        acc0 = z0.get("acc")
        if store:  # (states, increments) of every move, zero where no step was taken
            acc0 = tuple(tuple(jnp.zeros((n_steps * n_moves,) + a.shape, a.dtype) for a in s0) for _ in range(2))
        carry = (jnp.asarray(0), s0, res0, jnp.asarray(False), acc0, problem.weights(z0), log0, prepared0)
        if stop:
            carry = jax.lax.while_loop(lambda c: (c[0] < n_steps) & ~c[3], body, carry)
        else:
            # Not unrolled: unrolling by two helps on one core (+8 % at batch 20) but costs 14 %
            # on both cores of a 2-core Xeon, where XLA overlaps the products of one step.
            carry = jax.lax.fori_loop(0, n_steps, lambda _, c: body(c), carry)
        k, s, res, done, acc, p, log, prepared = carry
        field = lambda p, s: self.field(problem, prepared, p, s)  # with the steps in force at the end
        if store:
            acc = _trajectory_synapses(problem, *acc, n_moves=n_moves, groups=self.move_layers(len(s0)))
        if rec is None:
            # The residual at the final state: known already when the phase stopped on it.
            residual = jax.lax.cond(done, lambda: res, lambda: F.residual(field(p, s)))
            record_ts = records = None
        else:
            mu = field(p, s)
            residual = F.residual(mu)
            record_ts, records = rec.finish(log, k, s, mu, acc)
        z = {"s": s}
        if synapses != "none":
            z["acc"] = acc
        if synapses == "continual":
            z["theta"] = p
        return Relaxation(z, k * jnp.asarray(dt, residual.dtype), k, jnp.asarray(SOLVE_OK), residual,
                          record_ts, records)


_STORE_LIMIT_BYTES = 256 * 2**20


def _store_fits(s0, n_moves: int) -> bool:
    """Whether the states and increments of `n_moves` moves fit the storage budget."""
    size = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(s0))
    return 0 < 2 * n_moves * size <= _STORE_LIMIT_BYTES


def _trajectory_synapses(problem: PhaseProblem, states, increments, *, n_moves: int = 1, groups=None):
    """`Σ_k (∂μ/∂θ)ᵀ(u_k) ds_k` over stored moves (leading axis k), batch mean, as one VJP
    per kind of move.

    `vmap` over the moves with the weights and the input's drive shared, so the transpose sums
    over moves and batch in single products, and the drive (the input layer's `Wf₁ρ(x)`) is
    pulled back once from the summed cotangent instead of once per step. Move `i` of each step
    (slots `i, i + n_moves, …`) pulls back only the μ of its layers `groups[i]` (all layers
    when `groups` is None). Under `jit` the values the VJP does not need are dropped.
    """
    if groups is None:  # every move may touch every layer: all slots in one VJP
        groups, n_moves = (tuple(range(len(states))),), 1
    assert len(groups) == n_moves, (groups, n_moves)

    def along(params, us, layers):
        net = problem.network(params)
        drive = net.drive(problem.x)
        return jax.vmap(lambda u: tuple(net.vector_field(u, drive)[l] for l in layers))(us)

    total = None
    for i, layers in enumerate(groups):
        us = tuple(a[i::n_moves] for a in states)
        _, vjp = jax.vjp(lambda p: along(p, us, layers), problem.params)
        (g,) = vjp(tuple(increments[l][i::n_moves] for l in layers))
        total = g if total is None else jax.tree_util.tree_map(jnp.add, total, g)
    batch = problem.x.shape[0]
    return jax.tree_util.tree_map(lambda a: a / batch, total)


class _Recorder:
    """Preallocated record buffers for the fixed-step loop: memory grows with what is
    recorded, never with the number of steps times the state."""

    def __init__(self, observer: Observer, n_steps: int, dt: float):
        self.observer, self.dt = observer, dt
        if observer.every:
            self.size = 1 + n_steps // observer.every + 1
            self.due_steps = None
        else:
            self.size = len(observer.ts)
            self.due_steps = np.rint(np.asarray(observer.ts) / dt).astype(np.int32)

    def _due(self, k, j):
        if self.observer.every:
            return k % self.observer.every == 0
        due = jnp.asarray(self.due_steps)
        return (j < self.size) & (due[jnp.minimum(j, self.size - 1)] == k)

    def init(self, problem, field, z0):
        s0 = z0["s"]
        struct = jax.eval_shape(self.observer.fn, 0.0, s0, field(problem.weights(z0), s0), z0.get("acc"))
        bufs = jax.tree_util.tree_map(lambda a: jnp.full((self.size,) + a.shape, jnp.nan, a.dtype), struct)
        tbuf = jnp.full((self.size,), jnp.nan, jnp.result_type(float))
        return bufs, tbuf, jnp.asarray(0), jnp.asarray(-1)  # buffers, times, next slot, last step

    def _write(self, log, k, s, mu, acc):
        bufs, tbuf, j, _ = log
        t = k * self.dt
        rec = self.observer.fn(t, s, mu, acc)
        bufs = jax.tree_util.tree_map(lambda b, r: b.at[j].set(r), bufs, rec)
        return bufs, tbuf.at[j].set(t), j + 1, k

    def maybe_write(self, log, k, s, mu, acc):
        due = self._due(k, log[2]) & (log[3] != k)
        return jax.lax.cond(due, lambda: self._write(log, k, s, mu, acc), lambda: log)

    def finish(self, log, k, s, mu, acc):
        """Record the final state (always, with step sampling; when due, on a grid)."""
        fresh = log[3] != k
        due = fresh if self.observer.every else self._due(k, log[2]) & fresh
        bufs, tbuf, _, _ = jax.lax.cond(due, lambda: self._write(log, k, s, mu, acc), lambda: log)
        return tbuf, bufs
