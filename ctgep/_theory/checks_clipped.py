"""`ctgep check` for piecewise-linear ρ and for the scheme a card trains with.

* :func:`linear_betas`: a β grid on which the nudged fixed points stay in the free fixed point's
  linear region (hard sigmoid: no unit crosses a kink; clipped scheme: the active set does not
  change), so that the EP estimate's orders in β (1 one-sided, 2 centered) are theorems there;
* :func:`scheme_rows`: the clipped Euler scheme's own fixed point (a complementarity point), the
  gradient of its objective against finite differences that re-solve it, and EP computed with the
  card's own solver against the scheme's ν (docs/theory.md#the-clipped-scheme).
"""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import gradients as G
from .._learning import rules as _rules
from .._simulation.euler import Euler
from .._simulation.results import PhaseResult

#: Where the search for a β grid starts; the grid is `β_max · 2^(−j/2)`, j = 0 … 4.
BETA_START = 0.1
GRID = 5
HALVINGS = 10
#: Tolerance and horizon of the card's Euler solver when it computes the EP estimates here.
SCHEME_TOL, SCHEME_T = 1e-10, 20000.0


def _flat(s):
    return np.concatenate([np.asarray(a) for a in s], axis=-1)


def kink_pattern(net, s):
    """Which linear piece of ρ each unit is on (hard sigmoid: below 0, inside, above 1), or None
    for a smooth ρ."""
    if getattr(net, "activation", None) != "hard_sigmoid":
        return None
    return np.digitize(_flat(s), [0.0, 1.0], right=True) + 3 * (np.isin(_flat(s), [0.0, 1.0]))


def active_pattern(net, s):
    """The clipped scheme's active set (units on a bound) as one boolean array."""
    return np.concatenate([np.asarray(a) for a in G.active_set(net, s)], axis=-1)


def linear_betas(pattern0, nudged_pattern, centered=True, start=BETA_START):
    """The largest `β_max = start · 2^(−k)` whose nudged fixed points (±β if `centered`) all have
    the free pattern, and the grid `β_max · 2^(−j/2)`, j < GRID; `None` when none is found.
    `nudged_pattern(β)` returns the pattern at `s^β`."""
    beta = start
    for _ in range(HALVINGS):
        signs = (1.0, -1.0) if centered else (1.0,)
        if all(np.array_equal(nudged_pattern(sg * beta), pattern0) for sg in signs):
            return tuple(beta * 2.0 ** (-j / 2) for j in range(GRID))
        beta /= 2
    return None


def as_free(x, s):
    """A converged free :class:`PhaseResult` holding the reference state `s` (for `ep_update`)."""
    zeros = jnp.zeros((x.shape[0],), x.dtype)
    return PhaseResult(state=s, t_stop=zeros, steps=zeros.astype(jnp.int32), residual=zeros,
                       code=zeros.astype(jnp.int8))


def order(betas, errors):
    return float(np.polyfit(np.log(betas), np.log(np.maximum(errors, 1e-300)), 1)[0])


def scheme_rows(net, x, y, solver, *, rule="endpoint", key, full_fd_limit=2000, row, say):
    """Rows checking the scheme `solver` (a card's Euler) against its own reference theory.

    `row(check, quantity, value, kind, bound)` builds a table row (see checks.py). Returns
    `(rows, data)`.
    """
    clip = solver.bounds(net) is not None
    name = "clipped Euler" if clip else type(solver).__name__
    rows, data = [], {}
    say(f"the card's scheme ({name}): its fixed point, objective and ν")
    ref = Euler(dt=solver.time_resolution or 0.5, clip=True) if clip else None
    if clip:
        s = G.clipped_fixed_point(net, x, solver=ref)
        comp = G.complementarity(net, x, s)
        rows.append(row(f"{name}: fixed point", "complementarity: max |μ_F|, sign violation on A",
                        max(comp["free_residual"].max(), comp["violation"].max()), "≤", 1e-12))
        margin = float(comp["margin"].min())
        rows.append(row(f"{name}: fixed point", f"min |μ_A| on a bound ({int(comp['n_active'].sum())} units)",
                        margin, "info", None))
        nu, grad = G.clipped_nu(net, x, y, s_free=s), G.clipped_rbp(net, x, y, s_free=s)
        fd_fn = lambda **kw: G.clipped_finite_difference(net, x, y, s_free=s, eps=1e-6, **kw)
        pattern = lambda b: active_pattern(net, G.clipped_fixed_point(net, x, y, beta=b, s_init=s, solver=ref))
        pattern0 = active_pattern(net, s)
        objective = "J_clip"
    else:
        s = G.fixed_point(net, x)
        nu, grad = G.nu(net, x, y, s_free=s), G.rbp(net, x, y, s_free=s)
        fd_fn = None
        pattern0 = kink_pattern(net, s)
        pattern = lambda b: kink_pattern(net, G.fixed_point(net, x, y, beta=b, s_init=s))
        objective = "J"
    if fd_fn is not None:
        flat_g = np.asarray(ravel_pytree(grad)[0])
        if flat_g.size <= full_fd_limit:
            err = G.relative_error(grad, fd_fn())
            rows.append(row(f"{name}: RBP = finite differences", f"∇{objective} vs central FD re-solving s* (all entries)",
                            err, "≤", 1e-7))
        else:
            dirs = np.asarray(jr.normal(key, (8, flat_g.size), jnp.float64))
            fdd = np.asarray(fd_fn(directions=dirs))
            rows.append(row(f"{name}: RBP = finite differences", f"⟨∇{objective}, d⟩ vs central FD (8 directions)",
                            np.linalg.norm(dirs @ flat_g - fdd) / np.linalg.norm(fdd), "≤", 1e-6))
        rows.append(row(f"{name}: ν_clip vs the ODE's ν", "‖ν_clip − ν‖/‖ν‖ (what clipping changes)",
                        G.relative_error(nu, G.nu(net, x, y)), "info", None))
    betas = BETAS_SMOOTH if pattern0 is None else linear_betas(pattern0, pattern)
    errors = np.full((2, GRID), np.nan)
    if betas is None:
        for nudging in ("one-sided", "centered"):
            rows.append(row(f"EP ({rule}, {nudging}, {name}) → its ν", "order p in β",
                            float("nan"), "n/a", f"no β ≥ {BETA_START * 2 ** -HALVINGS:.1e} keeps the "
                            "nudged fixed point in the free one's linear region"))
        return rows, data
    say(f"EP with the card's {name} → its ν, β ∈ [{betas[-1]:.3g}, {betas[0]:.3g}]")
    free = as_free(x, s)
    for i, nudging in enumerate(("one-sided", "centered")):
        for j, beta in enumerate(betas):
            u = _rules.ep_update(net, x, y, beta=beta, rule=rule, nudging=nudging, solver=solver,
                                 tol=SCHEME_TOL, free=free, t_nudged=SCHEME_T, policy="raise")
            errors[i, j] = G.relative_error(u, nu)
        want = 1.0 if nudging == "one-sided" else 2.0
        rows.append(row(f"EP ({rule}, {nudging}, {name}) → its ν", "order p: ‖ep − ν‖/‖ν‖ ∝ β^p",
                        order(betas, errors[i]), "∈", (want - 0.15, want + 0.15)))
    data["scheme_ep_error"] = (("nudging", "scheme_beta"), errors)
    data["scheme_beta_values"] = ("scheme_beta", np.array(betas))
    return rows, data


BETAS_SMOOTH = (0.1, 0.05, 0.02, 0.01, 0.005)
