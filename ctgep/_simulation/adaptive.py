"""Adaptive phases: the whole phase is one `diffrax.diffeqsolve`, ended by a steady-state event."""

import diffrax
import jax
import jax.numpy as jnp
import optimistix as optx

from .._dynamics import field as F
from .results import SOLVE_FAILED, SOLVE_MAX_STEPS, SOLVE_OK
from .solver import AbstractPhaseSolver, Relaxation


class Adaptive(AbstractPhaseSolver, strict=True):
    """`diffrax.diffeqsolve` with an adaptive step (PID controller on the neuron states only).

    `dtmax` caps the step, which matters when differentiating through the solve near a fixed
    point (docs/theory.md#bptt-through-an-adaptive-solver). `max_steps` bounds the work; the
    samples that had not settled when it ran out get `RESULTS.max_steps_reached`.
    """

    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    rtol: float = 1e-5
    atol: float = 1e-7
    dt0: float | None = None
    dtmax: float | None = None
    max_steps: int = 20_000

    def describe(self) -> dict:
        return {"kind": "adaptive", "solver": type(self.solver).__name__, "rtol": self.rtol,
                "atol": self.atol, "dt0": self.dt0, "dtmax": self.dtmax, "max_steps": self.max_steps}

    def controller(self, norm=None) -> diffrax.PIDController:
        return diffrax.PIDController(rtol=self.rtol, atol=self.atol, dtmax=self.dtmax, norm=norm)

    def relax(self, problem, s0, *, t_max, tol, stop, observer=None):
        synapses = problem.synapses

        # The batch is one ODE, so one sample's NaN would stall the step controller (and the
        # steady-state event) for all. With an explicit solver non-finite entries are held still
        # and left out of the error norm and the event; their rows keep a non-finite residual
        # and are flagged `nonfinite_state` per sample, as on the fixed-step path. Implicit
        # solvers hand the norm to their root finder, where a NaN must still mean "diverged".
        explicit = not isinstance(self.solver, diffrax.AbstractImplicitSolver)
        mask = F.finite_or_zero if explicit else (lambda a: a)

        def field(t, z, args):
            p = problem.weights(z)
            mu = mask(problem.field(p, z["s"]))
            out = {"s": mu}
            if synapses != "none":
                g = problem.synapse_rate(p, z["s"], mu)
                out["acc"] = g
                if synapses == "continual":
                    out["theta"] = jax.tree_util.tree_map(lambda a: problem.eta / problem.beta * a, g)
            return out

        def settled(t, z, args, **kwargs):
            return jnp.max(mask(F.residual(problem.field(problem.weights(z), z["s"])))) < tol

        final = diffrax.SubSaveAt(t1=True)
        if observer is None:
            saveat = diffrax.SaveAt(subs=[final])
        else:
            def save(t, z, args):
                mu = problem.field(problem.weights(z), z["s"])
                return observer.fn(t, z["s"], mu, z.get("acc"))

            if observer.every:
                sub = diffrax.SubSaveAt(t0=True, steps=observer.every, t1=True, fn=save)
            else:
                sub = diffrax.SubSaveAt(ts=jnp.asarray(observer.ts), fn=save)
            saveat = diffrax.SaveAt(subs=[final, sub])
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            self.solver,
            t0=0.0,
            t1=t_max,
            dt0=self.dt0,
            y0=problem.initial(s0),
            saveat=saveat,
            stepsize_controller=self.controller(norm=lambda z: optx.rms_norm(mask(z["s"]))),
            event=diffrax.Event(settled) if stop else None,
            max_steps=self.max_steps,
            throw=False,
        )
        ok = (sol.result == diffrax.RESULTS.successful) | (sol.result == diffrax.RESULTS.event_occurred)
        status = jnp.where(ok, SOLVE_OK,
                           jnp.where(sol.result == diffrax.RESULTS.max_steps_reached, SOLVE_MAX_STEPS, SOLVE_FAILED))
        z = jax.tree_util.tree_map(lambda a: a[-1], sol.ys[0])
        residual = F.residual(problem.field(problem.weights(z), z["s"]))
        record_ts = records = None
        if observer is not None:
            record_ts, records = sol.ts[1], sol.ys[1]
        return Relaxation(z, sol.ts[0][-1], sol.stats["num_steps"], status, residual, record_ts, records)

