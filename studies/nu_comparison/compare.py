"""Endpoint, integrated and continual EP updates side by side (issue 21, item 2).

In float64, on small layered networks (random inputs, one-hot targets, several seeds, sigmoid and
hard sigmoid) and on a trained MNIST checkpoint (a few hundred test images):

* **accuracy**: angle and norm ratio of the endpoint, integrated and continual updates
  (`ctgep.ep_step`, one-sided and centered) to the paper's ν (Theorem 1,
  `ctgep.gradients.nu`), to −∇J (RBP, `-ctgep.gradients.rbp`) and to BPTT at a long horizon
  (`-ctgep.gradients.bptt`), as functions of β, of the nudged-phase length (fixed steps), of the
  solver (Tsit5, Euler dt 0.5, block Gauss–Seidel) and, for continual, of η. The ODE solvers run
  unclipped (`clip=False`) so that they share the ODE's fixed point with ν; the
  `gauss_seidel_clipped` solver (hard sigmoid only: the scheme the MNIST runs train with) is
  compared with the clipped scheme's own ν and gradient (`clipped_nu`, `-clipped_rbp`;
  docs/theory.md#the-clipped-scheme), and has no BPTT reference.
* **orbit area**: the antisymmetric part of the integrated update between `ΔWb_l` and
  `ΔWf_{l+1}ᵀ` — their cosine, `‖ΔWb_l − ΔWf_{l+1}ᵀ‖ / (‖ΔWb_l‖ + ‖ΔWf_{l+1}ᵀ‖)`, and the same
  for the "excess" (integrated − endpoint from the same phases, the `(1/β)∫(ρ(s(t)) − ρ(s⁰)) ds`
  term that holds the area) — one-sided vs centered, from a settled and from unsettled free
  phases (short `t_free`).
* **training**: a short optax SGD loop on scikit-learn digits with endpoint one-sided, integrated
  one-sided and integrated centered, logging `ctgep.alignment(net)` (cosine of `Wb_l` with
  `Wf_{l+1}ᵀ`) and the errors.

Writes DIR/nu_comparison.nc, DIR/fig_*.png and DIR/RESULTS.md (tables regenerated; the text
between the `<!-- notes -->` markers of an existing RESULTS.md is kept).

    python studies/nu_comparison/compare.py                 # everything, one process (long: MNIST references)
    python studies/nu_comparison/compare.py --quick         # small sweeps (a few minutes on an idle machine)
    python studies/nu_comparison/compare.py --quick --out /tmp/nu --no-mnist --train-steps 0

On a busy machine run the parts in parallel and merge them (what the committed data came from,
see RESULTS.md): `--parts small --activations sigmoid --out A`, `--parts small --activations
hard_sigmoid --out B`, `--parts mnist … --out C`, `--parts train --out D`, then
`--combine A/nu_comparison.nc B/nu_comparison.nc:small C/nu_comparison.nc:mnist
D/nu_comparison.nc:train` (FILE:PREFIX keeps only the variables PREFIX*).
"""

import argparse
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import xarray as xr  # noqa: E402

import ctgep  # noqa: E402

HERE = Path(__file__).resolve().parent
RULES = ("endpoint", "integrated", "continual")
NUDGINGS = ("one-sided", "centered")
REFERENCES = ("nu", "neg_rbp", "neg_bptt")
ORBIT_KINDS = ("endpoint", "integrated", "excess")
T_SETTLED = 300.0  # "settled" free phase: run to tol 1e-11 within this horizon


# ---------------------------------------------------------------------------- helpers

def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def to64(net):
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, net)


def params(tree):
    return eqx.filter(tree, eqx.is_inexact_array)


def neg(tree):
    return jax.tree_util.tree_map(jnp.negative, params(tree))


def flat(tree):
    leaves = jax.tree_util.tree_leaves(params(tree))
    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in leaves])


def index(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i] if eqx.is_inexact_array(a) else a, tree)


def add(a, b):
    return jax.tree_util.tree_map(lambda u, v: u + v, a, b)


def scale(a, c):
    return jax.tree_util.tree_map(lambda u: u * c, a)


def angle_norm(u, ref):
    """Angle in degrees and norm ratio ‖u‖/‖ref‖ (NaN when either is missing or not finite)."""
    if ref is None or u is None:
        return np.nan, np.nan
    a, b = flat(u), flat(ref)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if not (np.isfinite(na) and np.isfinite(nb)) or na == 0 or nb == 0:
        return np.nan, (na / nb if nb > 0 else np.nan)
    c = np.clip(a @ b / (na * nb), -1.0, 1.0)
    return float(np.degrees(np.arccos(c))), float(na / nb)


def pair_stats(u):
    """Per adjacent pair l: cos(ΔWb_l, ΔWf_{l+1}ᵀ) and ‖ΔWb_l − ΔWf_{l+1}ᵀ‖/(‖ΔWb_l‖ + ‖ΔWf_{l+1}ᵀ‖)."""
    cos, anti = [], []
    for wb, wf in zip(u.Wb, u.Wf[1:]):
        a = np.ravel(np.asarray(wb, np.float64))
        b = np.ravel(np.asarray(wf, np.float64).T)
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        cos.append(float(a @ b / (na * nb)) if na * nb > 0 else np.nan)
        anti.append(float(np.linalg.norm(a - b) / (na + nb)) if na + nb > 0 else np.nan)
    return cos, anti


def solvers_for(kind):
    """The solvers compared. `kind`: "small" or "mnist" (looser Tsit5 tolerances)."""
    rtol, atol = (1e-8, 1e-10) if kind == "small" else (1e-6, 1e-8)
    return {
        "tsit5": ctgep.Adaptive(diffrax.Tsit5(), rtol=rtol, atol=atol),
        "euler": ctgep.Euler(dt=0.5, clip=False),
        "gauss_seidel": ctgep.Euler(dt=1.0, precondition=True, alternate=True, clip=False),
        "gauss_seidel_clipped": ctgep.Euler(dt=1.0, precondition=True, alternate=True, clip=True),
    }


SOLVER_DESCRIPTIONS = {
    "tsit5": "ctgep.Adaptive(diffrax.Tsit5()) (small nets rtol 1e-8 atol 1e-10; MNIST 1e-6, 1e-8)",
    "euler": "ctgep.Euler(dt=0.5, clip=False)",
    "gauss_seidel": "ctgep.Euler(dt=1.0, precondition=True, alternate=True, clip=False)",
    "gauss_seidel_clipped": "ctgep.Euler(dt=1.0, precondition=True, alternate=True, clip=True), "
                            "references: clipped_nu, -clipped_rbp, no BPTT",
}


@eqx.filter_jit
def _updates(net, x, y, free, betas, etas, *, rule, nudging, solver, t_nudged):
    """The `rule` update for every (β, η) pair (vmapped), from the given free phase, fixed steps."""
    def one(b, e):
        return ctgep.ep_step(net, x, y, beta=b, rule=rule, nudging=nudging, solver=solver, free=free,
                             t_nudged=t_nudged, eta=e if rule == "continual" else None,
                             stop_at_steady_state=False).update
    return jax.vmap(one)(betas, etas)


class Batches:
    """A network and its data split into equal chunks (updates and references are batch means)."""

    def __init__(self, net, x, y, chunk):
        self.net = net
        n = x.shape[0]
        chunk = min(chunk, n)
        k = n // chunk
        self.xs = [x[i * chunk:(i + 1) * chunk] for i in range(k)]
        self.ys = [y[i * chunk:(i + 1) * chunk] for i in range(k)]

    def mean(self, fn):
        out = None
        for x, y in zip(self.xs, self.ys):
            r = fn(x, y)
            out = r if out is None else add(out, r)
        return scale(out, 1.0 / len(self.xs))


def free_phases(net, xs, solver, t_free, settled):
    out = []
    for x in xs:
        if settled:
            r = ctgep.free_phase(net, x, solver=solver, t_max=t_free, tol=1e-11)
        else:
            r = ctgep.free_phase(net, x, solver=solver, t_max=t_free, stop_at_steady_state=False)
        out.append(r)
    return out


def updates(B, frees, betas, etas, **kw):
    """Batch-mean updates for the vmapped (β, η) grid, one chunk at a time."""
    betas = jnp.asarray(betas, jnp.float64)
    etas = jnp.asarray(etas, jnp.float64)
    out = None
    for x, y, f in zip(B.xs, B.ys, frees):
        u = _updates(B.net, x, y, f, betas, etas, **kw)
        out = u if out is None else add(out, u)
    return scale(out, 1.0 / len(B.xs))


def references(B, frees_ode, frees_clip, bptt_T, bptt_solver, bptt_dt):
    """{"ode": {nu, neg_rbp, neg_bptt}, "clipped": {...}} and checks."""
    g = ctgep.gradients
    net = B.net
    refs = {"ode": {}, "clipped": {}}
    it = list(zip(B.xs, B.ys, frees_ode))
    refs["ode"]["nu"] = scale_mean([params(g.nu(net, x, y, s_free=f.state)) for x, y, f in it])
    refs["ode"]["neg_rbp"] = scale_mean([neg(g.rbp(net, x, y, s_free=f.state)) for x, y, f in it])
    refs["ode"]["neg_bptt"] = scale_mean([
        neg(g.bptt(net, x, y, T=bptt_T, solver=bptt_solver, dt=bptt_dt)) for x, y, _ in it])
    if frees_clip is not None:
        itc = list(zip(B.xs, B.ys, frees_clip))
        refs["clipped"]["nu"] = scale_mean([params(g.clipped_nu(net, x, y, s_free=f.state)) for x, y, f in itc])
        refs["clipped"]["neg_rbp"] = scale_mean([neg(g.clipped_rbp(net, x, y, s_free=f.state))
                                                 for x, y, f in itc])
        refs["clipped"]["neg_bptt"] = None
    return refs


def scale_mean(trees):
    out = trees[0]
    for t in trees[1:]:
        out = add(out, t)
    return scale(out, 1.0 / len(trees))


def scheme(solver_name):
    return "clipped" if solver_name.endswith("_clipped") else "ode"


def compare_grid(u, i, refs):
    return [angle_norm(index(u, i), refs.get(r)) for r in REFERENCES]


# ---------------------------------------------------------------------------- accuracy sweeps

def accuracy(B, refs, solver_names, solvers, a):
    """β sweep (per solver), t_nudged sweep (fixed-step solvers), η sweep (continual, euler)."""
    betas = np.asarray(a.betas, float)
    res = {}
    nb, nr = len(betas), len(REFERENCES)
    beta_out = np.full((len(solver_names), len(RULES), len(NUDGINGS), nb, nr, 2), np.nan)
    frees = {}
    for si, name in enumerate(solver_names):
        solver = solvers[name]
        frees[name] = free_phases(B.net, B.xs, solver, T_SETTLED, settled=True)
        R = refs[scheme(name)]
        if not R:
            continue
        for ri, rule in enumerate(RULES):
            for ni, nud in enumerate(NUDGINGS):
                u = updates(B, frees[name], betas, a.eta_over_beta * betas, rule=rule, nudging=nud,
                            solver=solver, t_nudged=a.t_long)
                for bi, b in enumerate(betas):
                    if nud == "centered" and b >= 1:
                        continue  # ctgep refuses β ≥ 1 with centered nudging
                    beta_out[si, ri, ni, bi] = compare_grid(u, bi, R)
        log(f"  β sweep, {name} done")
    res["beta"] = beta_out
    tn_solvers = [s for s in a.tn_solvers if s in solver_names]
    tns = np.asarray(a.t_nudged, float)
    tn_out = np.full((len(tn_solvers), len(RULES), len(NUDGINGS), len(tns), nr, 2), np.nan)
    b = np.asarray([a.beta_fixed])
    for si, name in enumerate(tn_solvers):
        R = refs[scheme(name)]
        if not R:
            continue
        for ri, rule in enumerate(RULES):
            for ni, nud in enumerate(NUDGINGS):
                for ti, t in enumerate(tns):
                    u = updates(B, frees[name], b, a.eta_over_beta * b, rule=rule, nudging=nud,
                                solver=solvers[name], t_nudged=float(t))
                    tn_out[si, ri, ni, ti] = compare_grid(u, 0, R)
        log(f"  t_nudged sweep, {name} done")
    res["tn"], res["tn_solvers"] = tn_out, tn_solvers
    etas = np.asarray(a.etas, float)
    eta_out = np.full((len(NUDGINGS), len(etas), nr, 2), np.nan)
    name = a.eta_solver
    for ni, nud in enumerate(NUDGINGS):
        u = updates(B, frees[name], np.full(len(etas), a.beta_fixed), etas, rule="continual", nudging=nud,
                    solver=solvers[name], t_nudged=a.t_long)
        for ei in range(len(etas)):
            eta_out[ni, ei] = compare_grid(u, ei, refs[scheme(name)])
    res["eta"] = eta_out
    log("  η sweep done")
    return res, frees


def orbit(B, solver, t_frees, betas, t_nudged, settled_frees):
    """Pair statistics of the endpoint and integrated updates and of their difference."""
    betas = np.asarray(betas, float)
    n_pairs = len(B.net.Wb)
    out = np.full((len(t_frees), len(ORBIT_KINDS), len(NUDGINGS), len(betas), n_pairs, 2), np.nan)
    for ti, tf in enumerate(t_frees):
        frees = settled_frees if tf == "settled" else free_phases(B.net, B.xs, solver, float(tf), settled=False)
        for ni, nud in enumerate(NUDGINGS):
            ue = updates(B, frees, betas, betas, rule="endpoint", nudging=nud, solver=solver, t_nudged=t_nudged)
            ui = updates(B, frees, betas, betas, rule="integrated", nudging=nud, solver=solver, t_nudged=t_nudged)
            ux = jax.tree_util.tree_map(lambda p, q: p - q, ui, ue)
            for ki, u in enumerate((ue, ui, ux)):
                for bi, b in enumerate(betas):
                    if nud == "centered" and b >= 1:
                        continue
                    cos, anti = pair_stats(index(u, bi))
                    out[ti, ki, ni, bi, :, 0] = cos
                    out[ti, ki, ni, bi, :, 1] = anti
    return out


# ---------------------------------------------------------------------------- parts

def small_part(a):
    solvers = solvers_for("small")
    acts = a.activations
    S = len(a.seeds)
    names = a.solvers
    shape_beta = (len(acts), S, len(names), len(RULES), len(NUDGINGS), len(a.betas), len(REFERENCES), 2)
    beta_all = np.full(shape_beta, np.nan)
    tn_all = eta_all = orbit_all = None
    checks = np.full((len(acts), S, 4), np.nan)
    for ai, act in enumerate(acts):
        for k, seed in enumerate(a.seeds):
            log(f"small {act} seed {seed}")
            key = jax.random.PRNGKey(seed)
            kn, kx, ky = jax.random.split(key, 3)
            net = ctgep.LayeredNetwork(tuple(a.small_sizes), act, key=kn, dtype=jnp.float64)
            x = jax.random.uniform(kx, (a.small_batch, a.small_sizes[0]), jnp.float64)
            y = jax.nn.one_hot(jax.random.randint(ky, (a.small_batch,), 0, a.small_sizes[-1]),
                               a.small_sizes[-1], dtype=jnp.float64)
            B = Batches(net, x, y, a.small_batch)
            fo = free_phases(net, B.xs, solvers["euler"], T_SETTLED, settled=True)
            fc = (free_phases(net, B.xs, solvers["gauss_seidel_clipped"], T_SETTLED, settled=True)
                  if act == "hard_sigmoid" else None)
            refs = references(B, fo, fc, a.bptt_T, None, 0.05)
            R = refs["ode"]
            checks[ai, k] = [angle_norm(R["nu"], R["neg_rbp"])[0],
                             ctgep.gradients.relative_error(R["neg_bptt"], R["neg_rbp"]),
                             angle_norm(refs["clipped"].get("nu"), R["nu"])[0],
                             float(np.mean([float(f.converged.mean()) for f in fo]))]
            names_here = [n for n in names if not (n.endswith("_clipped") and act != "hard_sigmoid")]
            res, frees = accuracy(B, refs, names, solvers, a)
            for si, n in enumerate(names):
                if n not in names_here:
                    res["beta"][si] = np.nan
            beta_all[ai, k] = res["beta"]
            if tn_all is None:
                tn_all = np.full((len(acts), S) + res["tn"].shape, np.nan)
                eta_all = np.full((len(acts), S) + res["eta"].shape, np.nan)
            tn_all[ai, k] = res["tn"]
            if act != "hard_sigmoid":
                for si, n in enumerate(res["tn_solvers"]):
                    if n.endswith("_clipped"):
                        tn_all[ai, k, si] = np.nan
            eta_all[ai, k] = res["eta"]
            ob = orbit(B, solvers[a.orbit_solver], a.t_frees, a.orbit_betas, a.orbit_t_nudged,
                       frees[a.orbit_solver])
            if orbit_all is None:
                orbit_all = np.full((len(acts), S) + ob.shape, np.nan)
            orbit_all[ai, k] = ob
    n_pairs = len(a.small_sizes) - 2
    c = dict(activation=list(acts), seed=list(a.seeds), solver=list(names), rule=list(RULES),
             nudging=list(NUDGINGS), beta=np.asarray(a.betas, float), reference=list(REFERENCES))
    ds = xr.Dataset(coords=c)
    dims = ("activation", "seed", "solver", "rule", "nudging", "beta", "reference")
    ds["small_beta_angle"] = (dims, beta_all[..., 0])
    ds["small_beta_norm_ratio"] = (dims, beta_all[..., 1])
    ds = ds.assign_coords(tn_solver=res["tn_solvers"], t_nudged=np.asarray(a.t_nudged, float),
                          eta=np.asarray(a.etas, float), t_free=[str(t) for t in a.t_frees],
                          orbit_kind=list(ORBIT_KINDS), orbit_beta=np.asarray(a.orbit_betas, float),
                          pair=[f"{l + 1}-{l + 2}" for l in range(n_pairs)],
                          check=["angle_nu_negrbp_deg", "relerr_bptt_rbp", "angle_clippednu_nu_deg",
                                 "free_converged_fraction"])
    tdims = ("activation", "seed", "tn_solver", "rule", "nudging", "t_nudged", "reference")
    ds["small_tn_angle"] = (tdims, tn_all[..., 0])
    ds["small_tn_norm_ratio"] = (tdims, tn_all[..., 1])
    edims = ("activation", "seed", "nudging", "eta", "reference")
    ds["small_eta_angle"] = (edims, eta_all[..., 0])
    ds["small_eta_norm_ratio"] = (edims, eta_all[..., 1])
    odims = ("activation", "seed", "t_free", "orbit_kind", "nudging", "orbit_beta", "pair")
    ds["small_orbit_cos"] = (odims, orbit_all[..., 0])
    ds["small_orbit_antisym"] = (odims, orbit_all[..., 1])
    ds["small_checks"] = (("activation", "seed", "check"), checks)
    return ds


def mnist_part(a):
    solvers = solvers_for("mnist")
    run = ctgep.load_run(a.mnist_run, "latest")
    net = to64(run.net)
    d = ctgep.load_dataset("mnist", data_dir=a.data_dir)
    n = a.mnist_images
    x = jnp.asarray(d.x_test[:n], jnp.float64)
    y = jax.nn.one_hot(jnp.asarray(d.y_test[:n]), 10, dtype=jnp.float64)
    B = Batches(net, x, y, a.mnist_chunk)
    log(f"mnist: {len(B.xs)} chunks of {B.xs[0].shape[0]} images from {a.mnist_run}")
    fo = free_phases(net, B.xs, solvers["euler"], T_SETTLED, settled=True)
    fc = free_phases(net, B.xs, solvers["gauss_seidel_clipped"], T_SETTLED, settled=True)
    log("mnist free phases done; references")
    refs = references(B, fo, fc, a.mnist_bptt_T, diffrax.Euler(), 0.5)
    R = refs["ode"]
    checks = [angle_norm(R["nu"], R["neg_rbp"])[0], ctgep.gradients.relative_error(R["neg_bptt"], R["neg_rbp"]),
              angle_norm(refs["clipped"]["nu"], R["nu"])[0],
              float(np.mean([float(f.converged.mean()) for f in fo])),
              float(np.mean([float(f.converged.mean()) for f in fc])),
              angle_norm(refs["clipped"]["nu"], refs["clipped"]["neg_rbp"])[0]]
    log("mnist references done", checks)
    m = argparse.Namespace(**vars(a))
    m.betas, m.t_nudged, m.etas = a.mnist_betas, a.mnist_t_nudged, a.mnist_etas
    m.tn_solvers, m.eta_solver = ["gauss_seidel_clipped"], "gauss_seidel_clipped"
    m.t_long = a.mnist_t_long
    res, frees = accuracy(B, refs, a.mnist_solvers, solvers, m)
    ob = orbit(B, solvers["gauss_seidel_clipped"], a.mnist_t_frees, a.mnist_orbit_betas, a.mnist_orbit_t_nudged,
               frees["gauss_seidel_clipped"])
    ds = xr.Dataset(coords=dict(
        mnist_solver=list(a.mnist_solvers), mnist_beta=np.asarray(a.mnist_betas, float),
        mnist_t_nudged=np.asarray(a.mnist_t_nudged, float), mnist_eta=np.asarray(a.mnist_etas, float),
        mnist_t_free=[str(t) for t in a.mnist_t_frees], mnist_orbit_beta=np.asarray(a.mnist_orbit_betas, float),
        mnist_pair=[f"{l + 1}-{l + 2}" for l in range(len(net.Wb))],
        mnist_check=["angle_nu_negrbp_deg", "relerr_bptt_rbp", "angle_clippednu_nu_deg",
                     "free_converged_fraction_ode", "free_converged_fraction_clipped",
                     "angle_clippednu_negclippedrbp_deg"],
        rule=list(RULES), nudging=list(NUDGINGS), reference=list(REFERENCES), orbit_kind=list(ORBIT_KINDS)))
    bd = ("mnist_solver", "rule", "nudging", "mnist_beta", "reference")
    ds["mnist_beta_angle"] = (bd, res["beta"][..., 0])
    ds["mnist_beta_norm_ratio"] = (bd, res["beta"][..., 1])
    td = ("rule", "nudging", "mnist_t_nudged", "reference")
    ds["mnist_tn_angle"] = (td, res["tn"][0, ..., 0])
    ds["mnist_tn_norm_ratio"] = (td, res["tn"][0, ..., 1])
    ed = ("nudging", "mnist_eta", "reference")
    ds["mnist_eta_angle"] = (ed, res["eta"][..., 0])
    ds["mnist_eta_norm_ratio"] = (ed, res["eta"][..., 1])
    od = ("mnist_t_free", "orbit_kind", "nudging", "mnist_orbit_beta", "mnist_pair")
    ds["mnist_orbit_cos"] = (od, ob[..., 0])
    ds["mnist_orbit_antisym"] = (od, ob[..., 1])
    ds["mnist_checks"] = (("mnist_check",), np.asarray(checks))
    ds.attrs["mnist_run"] = str(a.mnist_run)
    ds.attrs["mnist_images"] = f"first {len(B.xs) * B.xs[0].shape[0]} MNIST test images"
    return ds


TRAIN_RUNS = (("endpoint", "one-sided"), ("integrated", "one-sided"), ("integrated", "centered"))


def train_part(a):
    d = ctgep.load_dataset("digits")
    xtr, ytr = jnp.asarray(d.x_train, jnp.float64), jnp.asarray(d.y_train)
    xte, yte = jnp.asarray(d.x_test, jnp.float64), jnp.asarray(d.y_test)
    solver = ctgep.Euler(dt=a.train_dt, precondition=a.train_dt == 1.0, alternate=a.train_dt == 1.0)
    log_steps = list(range(0, a.train_steps + 1, max(1, a.train_log_every)))
    if log_steps[-1] != a.train_steps:
        log_steps.append(a.train_steps)
    n_pairs = len(a.train_sizes) - 2
    cos = np.full((len(TRAIN_RUNS), len(log_steps), n_pairs), np.nan)
    err = np.full((len(TRAIN_RUNS), len(log_steps), 2), np.nan)
    conv = np.full((len(TRAIN_RUNS), len(log_steps)), np.nan)

    def evaluate(net, x, yi):
        f = ctgep.free_phase(net, x, solver=solver, t_max=a.train_t_free * 4, tol=1e-6)
        pred = jnp.argmax(f.state[-1], axis=1)
        return float(jnp.mean(pred != yi)), float(f.converged.mean())

    for r, (rule, nud) in enumerate(TRAIN_RUNS):
        net = ctgep.LayeredNetwork(tuple(a.train_sizes), "hard_sigmoid", key=jax.random.PRNGKey(a.train_seed),
                                   dtype=jnp.float64)
        p, static = eqx.partition(net, eqx.is_inexact_array)
        opt = optax.sgd(a.train_lr, momentum=0.9)
        state = opt.init(p)

        @eqx.filter_jit
        def step(p, state, x, y):
            net = eqx.combine(p, static)
            u = ctgep.ep_step(net, x, y, beta=a.train_beta, rule=rule, nudging=nud, solver=solver,
                              t_free=a.train_t_free, t_nudged=a.train_t_nudged, stop_at_steady_state=False).update
            g, state = opt.update(ctgep.as_gradient(params(u)), state, p)
            return optax.apply_updates(p, g), state

        rng = np.random.default_rng(a.train_seed)
        order = rng.permutation(xtr.shape[0])
        pos, li = 0, 0
        for s in range(a.train_steps + 1):
            if s == log_steps[li]:
                net = eqx.combine(p, static)
                al = ctgep.alignment(net)
                cos[r, li] = [al[f"cos_{l + 1}_{l + 2}"] for l in range(n_pairs)]
                e_tr, _ = evaluate(net, xtr[:500], ytr[:500])
                e_te, cv = evaluate(net, xte, yte)
                err[r, li] = [e_tr, e_te]
                conv[r, li] = cv
                li += 1
            if s == a.train_steps:
                break
            if pos + a.train_batch > len(order):
                order, pos = rng.permutation(xtr.shape[0]), 0
            idx = order[pos:pos + a.train_batch]
            pos += a.train_batch
            y1 = jax.nn.one_hot(ytr[idx], 10, dtype=jnp.float64)
            p, state = step(p, state, xtr[idx], y1)
        log(f"train {rule} {nud}: cos {cos[r, -1]}, train/test error {err[r, -1]}, free converged {conv[r, -1]}")
    ds = xr.Dataset(coords=dict(train_run=[f"{r} {n}" for r, n in TRAIN_RUNS], train_step=log_steps,
                                train_pair=[f"{l + 1}-{l + 2}" for l in range(n_pairs)],
                                split=["train500", "test"]))
    ds["train_alignment_cos"] = (("train_run", "train_step", "train_pair"), cos)
    ds["train_error"] = (("train_run", "train_step", "split"), err)
    ds["train_free_converged"] = (("train_run", "train_step"), conv)
    return ds


# ---------------------------------------------------------------------------- attributes, figures, report

ATTRS = {
    "small_beta_angle": ("angle between the EP update (t_nudged = t_long fixed steps, settled free phase) and the "
                         "reference, per β", "degree"),
    "small_beta_norm_ratio": ("‖EP update‖ / ‖reference‖, per β", "1"),
    "small_tn_angle": ("angle between the EP update at β = beta_fixed and the reference, per nudged-phase length "
                       "(fixed steps, stop_at_steady_state=False)", "degree"),
    "small_tn_norm_ratio": ("‖EP update‖ / ‖reference‖, per nudged-phase length", "1"),
    "small_eta_angle": ("angle between the continual update (β = beta_fixed, t_long) and the reference, per η",
                        "degree"),
    "small_eta_norm_ratio": ("‖continual update‖ / ‖reference‖, per η", "1"),
    "small_orbit_cos": ("cosine between ΔWb_l and ΔWf_{l+1}ᵀ of the update (orbit_kind: endpoint, integrated, "
                        "excess = integrated − endpoint)", "1"),
    "small_orbit_antisym": ("‖ΔWb_l − ΔWf_{l+1}ᵀ‖ / (‖ΔWb_l‖ + ‖ΔWf_{l+1}ᵀ‖) of the update (0: equal, 1: opposite)",
                            "1"),
    "small_checks": ("reference checks: angle(ν, −∇J) in degree, ‖BPTT − RBP‖/‖RBP‖, angle(clipped ν, ν) in "
                     "degree, fraction of samples whose free phase converged", "mixed (see check)"),
    "mnist_beta_angle": ("MNIST checkpoint: angle between the EP update (settled free phase, t_long) and the "
                         "reference, per β", "degree"),
    "mnist_beta_norm_ratio": ("MNIST checkpoint: ‖EP update‖ / ‖reference‖, per β", "1"),
    "mnist_tn_angle": ("MNIST checkpoint, Gauss–Seidel clipped: angle to the reference per nudged-phase length "
                       "(fixed steps)", "degree"),
    "mnist_tn_norm_ratio": ("MNIST checkpoint, Gauss–Seidel clipped: norm ratio per nudged-phase length", "1"),
    "mnist_eta_angle": ("MNIST checkpoint, Gauss–Seidel clipped: angle of the continual update to the reference, "
                        "per η", "degree"),
    "mnist_eta_norm_ratio": ("MNIST checkpoint: continual norm ratio per η", "1"),
    "mnist_orbit_cos": ("MNIST checkpoint, Gauss–Seidel clipped: cosine between ΔWb_l and ΔWf_{l+1}ᵀ", "1"),
    "mnist_orbit_antisym": ("MNIST checkpoint: ‖ΔWb_l − ΔWf_{l+1}ᵀ‖ / (‖ΔWb_l‖ + ‖ΔWf_{l+1}ᵀ‖)", "1"),
    "mnist_checks": ("MNIST reference checks (see mnist_check)", "mixed (see mnist_check)"),
    "train_alignment_cos": ("digits training: cosine between Wb_l and Wf_{l+1}ᵀ (ctgep.alignment)", "1"),
    "train_error": ("digits training: classification error of the free phase's output", "1"),
    "train_free_converged": ("digits training: fraction of test samples whose free phase reached tol 1e-6 "
                             "within 4·t_free", "1"),
}
COORD_ATTRS = {
    "beta": ("nudging strength β", "1"), "mnist_beta": ("nudging strength β", "1"),
    "orbit_beta": ("nudging strength β", "1"), "mnist_orbit_beta": ("nudging strength β", "1"),
    "t_nudged": ("nudged-phase length (fixed steps of the solver)", "τ"),
    "mnist_t_nudged": ("nudged-phase length (fixed steps)", "τ"),
    "eta": ("continual synaptic rate η", "1/τ"), "mnist_eta": ("continual synaptic rate η", "1/τ"),
    "t_free": ("free-phase length ('settled': to ‖μ‖∞ < 1e-11)", "τ"),
    "mnist_t_free": ("free-phase length ('settled': to ‖μ‖∞ < 1e-11)", "τ"),
    "train_step": ("SGD step", "1"), "seed": ("network / data seed", "1"),
}


def var_attrs(ds):
    """`long_name` and `units` on every variable and coordinate."""
    for v, (ln, u) in ATTRS.items():
        if v in ds:
            ds[v].attrs.update(long_name=ln, units=u)
    for c, (ln, u) in COORD_ATTRS.items():
        if c in ds.coords:
            ds[c].attrs.update(long_name=ln, units=u)
    for c in ds.coords:
        ds[c].attrs.setdefault("long_name", c.replace("_", " "))
        ds[c].attrs.setdefault("units", "1")
    return ds


def add_attrs(ds, a, argv):
    var_attrs(ds)
    ds.attrs.update(
        title="ctgep: endpoint, integrated and continual EP updates vs ν, −∇J (RBP) and BPTT",
        command="python studies/nu_comparison/compare.py " + " ".join(shlex.quote(s) for s in argv),
        created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        machine=machine(),
        references="nu: ctgep.gradients.nu (clipped_nu for *_clipped solvers); neg_rbp: -rbp (-clipped_rbp); "
                   "neg_bptt: -bptt at T=bptt_T (NaN for *_clipped)",
        solvers="; ".join(f"{k}: {v}" for k, v in SOLVER_DESCRIPTIONS.items()),
        small_sizes=str(a.small_sizes), small_batch=a.small_batch, t_long=a.t_long, beta_fixed=a.beta_fixed,
        eta_over_beta=a.eta_over_beta, bptt_T=a.bptt_T, orbit_solver=a.orbit_solver,
        orbit_t_nudged=a.orbit_t_nudged, mnist_t_long=a.mnist_t_long, mnist_bptt_T=a.mnist_bptt_T,
        mnist_orbit_t_nudged=a.mnist_orbit_t_nudged,
        train=f"digits {a.train_sizes} hard_sigmoid, β {a.train_beta}, SGD lr {a.train_lr} momentum 0.9, batch "
              f"{a.train_batch}, Euler dt {a.train_dt} (Gauss–Seidel when dt=1), t_free {a.train_t_free}, "
              f"t_nudged {a.train_t_nudged}, fixed steps, no warm start",
    )
    return ds


def machine():
    try:
        model = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][0]
    except Exception:
        model = platform.processor()
    return f"{platform.node()}: {os.cpu_count()}-core {model}, {platform.system()} {platform.release()}, " \
           f"jax {jax.__version__} on {jax.default_backend()}"


STYLE = {("endpoint", "one-sided"): ("C0", "-"), ("endpoint", "centered"): ("C0", "--"),
         ("integrated", "one-sided"): ("C1", "-"), ("integrated", "centered"): ("C1", "--"),
         ("continual", "one-sided"): ("C2", "-"), ("continual", "centered"): ("C2", "--")}


def largest_beta(betas, nudging):
    """The largest β of the grid that `nudging` allows (centered: β < 1)."""
    ok = [b for b in betas if nudging == "one-sided" or b < 1]
    return max(ok) if ok else betas[0]


def figures(ds, out):
    import matplotlib.pyplot as plt
    paths = []
    if "small_beta_angle" in ds:
        acts = list(ds.activation.values)
        fig, axes = plt.subplots(2, len(acts) + ("mnist_beta_angle" in ds), figsize=(5 * (len(acts) + 1), 8),
                                 squeeze=False)
        panels = [(f"{act}, Euler dt 0.5", ds.small_beta_angle.sel(activation=act, solver="euler").median("seed"))
                  for act in acts]
        if "mnist_beta_angle" in ds:
            panels.append(("MNIST ckpt, Gauss–Seidel clipped",
                           ds.mnist_beta_angle.sel(mnist_solver="gauss_seidel_clipped").rename(mnist_beta="beta")))
        for j, (title, v) in enumerate(panels):
            for i, ref in enumerate(["nu", "neg_rbp"]):
                ax = axes[i, j]
                for (r, n), (c, ls) in STYLE.items():
                    ax.plot(v.beta, v.sel(rule=r, nudging=n, reference=ref), color=c, ls=ls, marker="o", ms=3,
                            label=f"{r} {n}")
                ax.set_xscale("log")
                ax.set_yscale("log" if ref == "nu" else "linear")
                ax.set_xlabel("β")
                ax.set_ylabel(f"angle to {'ν' if ref == 'nu' else '−∇J (RBP)'} (deg)")
                ax.set_title(title)
                ax.grid(alpha=0.3)
        axes[0, 0].legend(fontsize=7)
        fig.suptitle("EP updates vs ν and −∇J as β varies (median over seeds; settled phases)")
        fig.tight_layout()
        p = out / "fig_beta.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

        tsol = list(ds.tn_solver.values)
        fig, axes = plt.subplots(len(acts), len(tsol) + ("mnist_tn_angle" in ds), figsize=(5 * (len(tsol) + 1),
                                 4 * len(acts)), squeeze=False)
        for i, act in enumerate(acts):
            for j, s in enumerate(tsol):
                ax = axes[i, j]
                v = ds.small_tn_angle.sel(activation=act, tn_solver=s, reference="nu").median("seed")
                for (r, n), (c, ls) in STYLE.items():
                    ax.plot(v.t_nudged, v.sel(rule=r, nudging=n), color=c, ls=ls, marker="o", ms=3, label=f"{r} {n}")
                ax.set_yscale("log")
                ax.set_xlabel("t_nudged (τ, fixed steps)")
                ax.set_ylabel("angle to ν (deg)")
                ax.set_title(f"{act}, {s}, β {ds.attrs['beta_fixed']}")
                ax.grid(alpha=0.3)
            if "mnist_tn_angle" in ds:
                ax = axes[i, -1]
                v = ds.mnist_tn_angle.sel(reference="nu")
                for (r, n), (c, ls) in STYLE.items():
                    ax.plot(v.mnist_t_nudged, v.sel(rule=r, nudging=n), color=c, ls=ls, marker="o", ms=3)
                ax.set_yscale("log")
                ax.set_xlabel("t_nudged (Gauss–Seidel sweeps)")
                ax.set_ylabel("angle to clipped ν (deg)")
                ax.set_title(f"MNIST ckpt, Gauss–Seidel clipped, β {ds.attrs['beta_fixed']}")
                ax.grid(alpha=0.3)
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        p = out / "fig_t_nudged.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        ax = axes[0]
        sol = list(ds.solver.values)
        w = 0.12
        k = 0
        for act in acts:
            for (r, n) in STYLE:
                v = ds.small_beta_angle.sel(beta=ds.attrs["beta_fixed"], method="nearest").sel(
                    activation=act, rule=r, nudging=n, reference="nu").median("seed")
                ax.bar(np.arange(len(sol)) + (k - 5.5) * w / 2, v, width=w / 2, color=STYLE[(r, n)][0],
                       hatch="//" if n == "centered" else None, alpha=0.5 if act == acts[0] else 1.0,
                       label=f"{r} {n}" if act == acts[-1] else None)
                k += 1
        ax.set_xticks(range(len(sol)), sol, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("angle to ν (deg)")
        ax.set_title(f"solver (β {ds.attrs['beta_fixed']}, settled; pale: {acts[0]})")
        ax.legend(fontsize=6)
        ax = axes[1]
        for act in acts:
            for n in NUDGINGS:
                v = ds.small_eta_angle.sel(activation=act, nudging=n, reference="nu").median("seed")
                ax.plot(v.eta, v, marker="o", ls="--" if n == "centered" else "-", label=f"{act} {n}")
        if "mnist_eta_angle" in ds:
            for n in NUDGINGS:
                v = ds.mnist_eta_angle.sel(nudging=n, reference="nu")
                ax.plot(v.mnist_eta, v, marker="s", color="k", ls="--" if n == "centered" else "-",
                        label=f"MNIST {n}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("η")
        ax.set_ylabel("angle of continual update to ν (deg)")
        ax.set_title(f"continual: η sweep at β {ds.attrs['beta_fixed']}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        p = out / "fig_solver_eta.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        tfs = list(ds.t_free.values)
        for j, kind in enumerate(["integrated", "excess"]):
            ax = axes[j]
            for act, mk in zip(acts, "os"):
                for n in NUDGINGS:
                    v = ds.small_orbit_cos.sel(activation=act, orbit_kind=kind, nudging=n).sel(
                        orbit_beta=largest_beta(ds.orbit_beta.values, n)).median("seed").mean("pair")
                    ax.plot(range(len(tfs)), v, marker=mk, ls="--" if n == "centered" else "-",
                            label=f"{act} {n}")
            if "mnist_orbit_cos" in ds:
                for n in NUDGINGS:
                    v = ds.mnist_orbit_cos.sel(orbit_kind=kind, nudging=n).sel(
                        mnist_orbit_beta=largest_beta(ds.mnist_orbit_beta.values, n)).mean("mnist_pair")
                    ax.plot(range(len(v)), v, color="k", marker="^", ls="--" if n == "centered" else "-",
                            label=f"MNIST {n} (t_free {', '.join(str(t) for t in ds.mnist_t_free.values)})")
            ax.set_xticks(range(len(tfs)), tfs)
            ax.set_xlabel("t_free (small nets)")
            ax.set_ylabel("cos(ΔWb_l, ΔWf_{l+1}ᵀ), mean over pairs")
            ax.set_title(f"{kind} update, largest β per nudging")
            ax.axhline(0, color="gray", lw=0.5)
            ax.legend(fontsize=6)
        ax = axes[2]
        if "train_alignment_cos" in ds:
            for r in ds.train_run.values:
                for pr, ls in zip(ds.train_pair.values, ["-", ":"]):
                    ax.plot(ds.train_step, ds.train_alignment_cos.sel(train_run=r, train_pair=pr), ls=ls,
                            label=f"{r} {pr}")
            ax.set_xlabel("SGD step (digits)")
            ax.set_ylabel("cos(Wb_l, Wf_{l+1}ᵀ)")
            ax.set_title("alignment during training")
            ax.legend(fontsize=6)
        fig.tight_layout()
        p = out / "fig_orbit.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def stacked(v, dims, name, fmt):
    """Collapse `dims` of `v` into one labelled dimension `name` (labels by `fmt`)."""
    v = v.transpose(*dims, ...)
    lead = [v[d].values for d in dims]
    import itertools
    labels = [fmt(*t) for t in itertools.product(*lead)]
    rest = [d for d in v.dims if d not in dims]
    arr = v.values.reshape((len(labels),) + tuple(v.sizes[d] for d in rest))
    return xr.DataArray(arr, dims=(name, *rest), coords={name: labels, **{d: v[d].values for d in rest}})


def rn(v):
    return stacked(v, ("rule", "nudging"), "rn", lambda r, n: f"{r} {n}")


def table(da, rows, cols, fmt="{:.3g}"):
    rv, cv = da[rows].values, da[cols].values
    lines = [f"| {rows} \\ {cols} | " + " | ".join(str(c) for c in cv) + " |",
             "|---|" + "---|" * len(cv)]
    for r in rv:
        vals = da.sel({rows: r}).values
        lines.append(f"| {r} | " + " | ".join(fmt.format(v) if np.isfinite(v) else "–" for v in vals) + " |")
    return "\n".join(lines)


def report(ds, out, figs, elapsed):
    path = out / "RESULTS.md"
    notes = "\n_(findings: written by hand, kept between the markers on regeneration)_\n"
    mnist_training = ("\nNo training runs compared yet: train the two rules with the same card "
                      "and settings (`ctgep train … --set learning.rule=…`) and write their errors here; "
                      "this block is kept when the report is regenerated.\n")
    if path.exists():
        old = path.read_text()
        m = re.search(r"<!-- notes -->(.*?)<!-- /notes -->", old, re.S)
        if m:
            notes = m.group(1)
        m = re.search(r"<!-- mnist-training -->(.*?)<!-- /mnist-training -->", old, re.S)
        if m:
            mnist_training = m.group(1)
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    L = ["# Endpoint, integrated and continual ν side by side (issue 21)", "",
         f"Generated by `{ds.attrs['command']}` on {date}, {ds.attrs['machine']}; compute {elapsed / 60:.1f} min "
         "(summed over the parts, some run in parallel). "
         "Data: [nu_comparison.nc](nu_comparison.nc) (every variable has `long_name` and `units`). "
         "Angles in degrees; medians over seeds. References: ν = `ctgep.gradients.nu` (the clipped scheme's "
         "`clipped_nu` for `gauss_seidel_clipped`), −∇J = `-rbp` (`-clipped_rbp`), BPTT = `-bptt` at "
         f"T = {ds.attrs['bptt_T']} (MNIST: Euler dt 0.5, T = {ds.attrs['mnist_bptt_T']}).", "",
         "Data from: " + "; ".join(f"`{v}`" for k, v in sorted(ds.attrs.items())
                                   if k.startswith("command_")) + ".", "",
         "<!-- notes -->" + notes + "<!-- /notes -->", ""]
    for f in figs:
        L += [f"![{f.stem}]({f.name})", ""]
    if "small_beta_angle" in ds:
        L += ["## Small networks", "", f"Sizes {ds.attrs['small_sizes']}, batch {ds.attrs['small_batch']} random "
              f"inputs in [0, 1) with random one-hot targets, seeds {list(ds.seed.values)}; free phase settled to "
              f"‖μ‖∞ < 1e-11; nudged phase {ds.attrs['t_long']} τ of fixed steps; continual η = "
              f"{ds.attrs['eta_over_beta']}·β in the β sweep.", "",
              "Reference checks (median over seeds):", "",
              table(ds.small_checks.median("seed"), "activation", "check"), ""]
        for act in ds.activation.values:
            for ref in ["nu", "neg_rbp"]:
                v = ds.small_beta_angle.sel(activation=act, solver="euler", reference=ref).median("seed")
                v = rn(v)
                L += [f"**{act}, Euler dt 0.5: angle to {ref} vs β**", "", table(v.transpose("rn", "beta"), "rn", "beta"),
                      ""]
            v = ds.small_beta_norm_ratio.sel(activation=act, solver="euler", reference="nu").median("seed")
            v = rn(v)
            L += [f"**{act}, Euler dt 0.5: norm ratio to ν vs β**", "", table(v.transpose("rn", "beta"), "rn", "beta"), ""]
            v = ds.small_beta_angle.sel(beta=ds.attrs["beta_fixed"], method="nearest").sel(
                activation=act, reference="nu").median("seed")
            v = rn(v)
            L += [f"**{act}: angle to ν by solver at β {ds.attrs['beta_fixed']}**", "",
                  table(v.transpose("rn", "solver"), "rn", "solver"), ""]
            for s in ds.tn_solver.values:
                v = ds.small_tn_angle.sel(activation=act, tn_solver=s, reference="nu").median("seed")
                v = rn(v)
                L += [f"**{act}, {s}: angle to ν vs t_nudged (β {ds.attrs['beta_fixed']})**", "",
                      table(v.transpose("rn", "t_nudged"), "rn", "t_nudged"), ""]
            v = ds.small_eta_angle.sel(activation=act, reference="nu").median("seed")
            L += [f"**{act}: continual, angle to ν vs η (β {ds.attrs['beta_fixed']}, {ds.attrs['t_long']} τ)**", "",
                  table(v, "nudging", "eta"), ""]
        L += ["### Orbit area", "", f"Solver {ds.attrs['orbit_solver']}, nudged phase {ds.attrs['orbit_t_nudged']} τ. "
              "cos = cos(ΔWb_l, ΔWf_{l+1}ᵀ); antisym = ‖ΔWb_l − ΔWf_{l+1}ᵀ‖/(‖ΔWb_l‖ + ‖ΔWf_{l+1}ᵀ‖); "
              "excess = integrated − endpoint. Median over seeds, mean over pairs.", ""]
        for act in ds.activation.values:
            for var in ["small_orbit_cos", "small_orbit_antisym"]:
                v = ds[var].sel(activation=act).median("seed").mean("pair")
                v = stacked(v, ("orbit_kind", "nudging", "orbit_beta"), "row", lambda k, n, b: f"{k} {n} β={b:g}")
                L += [f"**{act}: {var.split('_', 2)[2]} vs t_free**", "", table(v.transpose("row", "t_free"), "row", "t_free"),
                      ""]
    if "mnist_beta_angle" in ds:
        L += ["## MNIST checkpoint", "", f"`{ds.attrs['mnist_run']}` (latest), float64, {ds.attrs['mnist_images']}; "
              f"nudged phase {ds.attrs['mnist_t_long']} τ of fixed steps in the β and solver sweeps.", "",
              "Checks: " + ", ".join(f"{c} = {float(v):.3g}" for c, v in zip(ds.mnist_check.values,
                                                                             ds.mnist_checks.values)), ""]
        for s in ds.mnist_solver.values:
            for ref in REFERENCES:
                v = ds.mnist_beta_angle.sel(mnist_solver=s, reference=ref)
                v = rn(v)
                if not np.isfinite(v.values).any():
                    continue
                L += [f"**{s}: angle to {ref} vs β**", "", table(v.transpose("rn", "mnist_beta"), "rn", "mnist_beta"), ""]
        v = ds.mnist_beta_norm_ratio.sel(mnist_solver="gauss_seidel_clipped", reference="nu")
        v = rn(v)
        L += ["**gauss_seidel_clipped: norm ratio to clipped ν vs β**", "",
              table(v.transpose("rn", "mnist_beta"), "rn", "mnist_beta"), ""]
        v = ds.mnist_tn_angle.sel(reference="nu")
        v = rn(v)
        L += [f"**gauss_seidel_clipped: angle to clipped ν vs t_nudged (β {ds.attrs['beta_fixed']})**", "",
              table(v.transpose("rn", "mnist_t_nudged"), "rn", "mnist_t_nudged"), ""]
        L += [f"**continual: angle to clipped ν vs η (β {ds.attrs['beta_fixed']})**", "",
              table(ds.mnist_eta_angle.sel(reference="nu"), "nudging", "mnist_eta"), ""]
        for var in ["mnist_orbit_cos", "mnist_orbit_antisym"]:
            v = stacked(ds[var].mean("mnist_pair"), ("orbit_kind", "nudging", "mnist_orbit_beta"), "row",
                        lambda k, n, b: f"{k} {n} β={b:g}")
            L += [f"**{var} (Gauss–Seidel clipped, t_nudged {ds.attrs['mnist_orbit_t_nudged']}) vs t_free**", "",
                  table(v.transpose("row", "mnist_t_free"), "row", "mnist_t_free"), ""]
    if "train_alignment_cos" in ds:
        L += ["## Short training on digits", "", ds.attrs["train"] + ".", ""]
        rows = ["| run | step | " + " | ".join(f"cos {p}" for p in ds.train_pair.values) +
                " | train error (500) | test error | free converged |", "|---|---|" + "---|" * (len(ds.train_pair) + 3)]
        for r in ds.train_run.values:
            allsteps = ds.train_step.values.tolist()
            steps = set(allsteps[:: max(1, len(allsteps) // 5)] + [allsteps[-1]])
            c_ = ds.train_alignment_cos.sel(train_run=r).values
            f_ = ds.train_free_converged.sel(train_run=r).values
            for i in range(1, len(allsteps)):  # and the steps around any jump (run-away)
                if np.nanmax(np.abs(c_[i] - c_[i - 1])) > 0.05 or abs(f_[i] - f_[i - 1]) > 0.05:
                    steps.update(allsteps[max(0, i - 2):i + 2])
            steps = sorted(steps)
            for s in steps:
                c = ds.train_alignment_cos.sel(train_run=r, train_step=s).values
                e = ds.train_error.sel(train_run=r, train_step=s).values
                cv = float(ds.train_free_converged.sel(train_run=r, train_step=s))
                rows.append(f"| {r} | {s} | " + " | ".join(f"{x:+.3f}" for x in c) + f" | {e[0]:.3f} | {e[1]:.3f} | {cv:.2f} |")
        L += rows + [""]
    L += ["## Training on MNIST", "", "<!-- mnist-training -->" + mnist_training + "<!-- /mnist-training -->", ""]
    path.write_text("\n".join(L))
    return path


# ---------------------------------------------------------------------------- main

def floats(s):
    return [float(v) for v in s.split(",")]


def ints(s):
    return [int(v) for v in s.split(",")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--quick", action="store_true", help="small sweeps (a couple of minutes)")
    p.add_argument("--parts", default="small,mnist,train", help="comma list of small, mnist, train")
    p.add_argument("--no-mnist", action="store_true")
    p.add_argument("--combine", type=Path, nargs="+", default=None,
                   help="merge these nu_comparison.nc files (parts run separately) into --out and redo "
                        "the figures and RESULTS.md; FILE:PREFIX keeps only the variables named PREFIX*")
    p.add_argument("--data-dir", default=os.environ.get("CTGEP_DATA_DIR"))
    p.add_argument("--activations", default=None, help="comma list (default sigmoid,hard_sigmoid)")
    p.add_argument("--seeds", type=ints, default=None)
    p.add_argument("--small-sizes", type=ints, default=[8, 12, 10, 4])
    p.add_argument("--small-batch", type=int, default=16)
    p.add_argument("--solvers", default=None, help="comma list of tsit5,euler,gauss_seidel,gauss_seidel_clipped")
    p.add_argument("--tn-solvers", default="euler,gauss_seidel",
                   help="solvers of the t_nudged sweep (fixed-step ones, among --solvers)")
    p.add_argument("--betas", type=floats, default=None)
    p.add_argument("--beta-fixed", type=float, default=0.1)
    p.add_argument("--t-long", type=float, default=40.0)
    p.add_argument("--t-nudged", type=floats, default=None)
    p.add_argument("--etas", type=floats, default=None)
    p.add_argument("--eta-over-beta", type=float, default=1e-3)
    p.add_argument("--bptt-T", type=float, default=60.0)
    p.add_argument("--t-frees", default=None, help="comma list of free-phase lengths and/or 'settled'")
    p.add_argument("--orbit-betas", type=floats, default=None)
    p.add_argument("--orbit-t-nudged", type=float, default=10.0)
    p.add_argument("--mnist-run", type=Path, default=Path("studies/mnist/784-512-512-10_gauss_seidel"))
    p.add_argument("--mnist-images", type=int, default=None)
    p.add_argument("--mnist-chunk", type=int, default=50)
    p.add_argument("--mnist-solvers", default=None)
    p.add_argument("--mnist-betas", type=floats, default=None)
    p.add_argument("--mnist-t-nudged", type=floats, default=None)
    p.add_argument("--mnist-etas", type=floats, default=None)
    p.add_argument("--mnist-t-long", type=float, default=30.0)
    p.add_argument("--mnist-bptt-T", type=float, default=100.0)
    p.add_argument("--mnist-t-frees", default=None)
    p.add_argument("--mnist-orbit-betas", type=floats, default=None)
    p.add_argument("--mnist-orbit-t-nudged", type=float, default=5.0)
    p.add_argument("--train-steps", type=int, default=None)
    p.add_argument("--train-sizes", type=ints, default=[64, 128, 128, 10])
    p.add_argument("--train-lr", type=float, default=0.01)
    p.add_argument("--train-beta", type=float, default=0.5)
    p.add_argument("--train-batch", type=int, default=20)
    p.add_argument("--train-dt", type=float, default=1.0)
    p.add_argument("--train-t-free", type=float, default=15.0)
    p.add_argument("--train-t-nudged", type=float, default=5.0)
    p.add_argument("--train-log-every", type=int, default=None)
    p.add_argument("--train-seed", type=int, default=0)
    a = p.parse_args(argv)
    q = a.quick

    def d(v, quick, full):
        return v if v is not None else (quick if q else full)

    a.activations = d(a.activations, "hard_sigmoid", "sigmoid,hard_sigmoid").split(",")
    a.seeds = d(a.seeds, [0], [0, 1, 2])
    a.solvers = d(a.solvers, "euler,gauss_seidel", "tsit5,euler,gauss_seidel,gauss_seidel_clipped").split(",")
    a.tn_solvers = [s for s in a.tn_solvers.split(",") if s in a.solvers]
    a.eta_solver = "euler" if "euler" in a.solvers else a.solvers[0]
    a.orbit_solver = a.eta_solver
    a.betas = d(a.betas, [0.01, 0.1, 0.5], [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
    a.t_nudged = d(a.t_nudged, [2.0, 10.0], [1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 30.0])
    a.etas = d(a.etas, [1e-4, 1e-2], [1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1])
    a.t_frees = [t if t == "settled" else float(t) for t in d(a.t_frees, "2,settled", "1,2,5,10,settled").split(",")]
    a.orbit_betas = d(a.orbit_betas, [0.1, 0.5], [0.01, 0.1, 0.5, 1.0])
    a.mnist_images = d(a.mnist_images, 50, 200)
    a.mnist_solvers = d(a.mnist_solvers, "gauss_seidel_clipped",
                        "gauss_seidel_clipped,gauss_seidel,euler,tsit5").split(",")
    a.mnist_betas = d(a.mnist_betas, [0.1, 0.5], [0.01, 0.1, 0.5, 1.0])
    a.mnist_t_nudged = d(a.mnist_t_nudged, [2.0, 5.0], [1.0, 2.0, 3.0, 5.0, 10.0, 20.0])
    a.mnist_etas = d(a.mnist_etas, [1e-3], [1e-4, 1e-3, 1e-2])
    a.mnist_t_frees = [t if t == "settled" else float(t) for t in d(a.mnist_t_frees, "5,settled", "3,5,15,settled").split(",")]
    a.mnist_orbit_betas = d(a.mnist_orbit_betas, [0.1, 0.5], [0.1, 0.5, 1.0])
    a.train_steps = d(a.train_steps, 60, 1600)
    a.train_log_every = d(a.train_log_every, 20, 20)
    for b in (a.beta_fixed,):
        if b not in a.betas:
            a.betas = sorted(a.betas + [b])
    parts = set(a.parts.split(","))
    if a.no_mnist:
        parts.discard("mnist")
    if a.train_steps == 0:
        parts.discard("train")
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    command = "python studies/nu_comparison/compare.py " + " ".join(
        shlex.quote(s) for s in (sys.argv[1:] if argv is None else argv))
    if a.combine:
        parts_ds = []
        for f in a.combine:
            f, _, prefix = str(f).partition(":")
            d_ = xr.load_dataset(f)
            cmd = d_.attrs.get("command", f)
            if prefix:  # keep only the variables (and their coordinates) whose names start with prefix
                d_ = d_[[v for v in d_.data_vars if v.startswith(prefix)]]
            d_.attrs = {k: v for k, v in xr.load_dataset(f).attrs.items() if not k.startswith("command")}
            d_.attrs[f"command_{len(parts_ds) + 1}"] = cmd + (f" (variables {prefix}*)" if prefix else "")
            parts_ds.append(d_)
        attrs = {}
        for d_ in parts_ds:
            attrs.update(d_.attrs)
        ds = var_attrs(xr.merge(parts_ds, combine_attrs="drop_conflicts"))
        ds.attrs = attrs
        ds.attrs["command"] = command
        elapsed = sum(float(d_.attrs.get("elapsed_s", 0)) for d_ in parts_ds)
        nc = a.out / "nu_comparison.nc"
        ds.to_netcdf(nc)
        figs = figures(ds, a.out)
        r = report(ds, a.out, figs, elapsed)
        log(f"wrote {nc}, {r}")
        return ds
    dss = []
    if "small" in parts:
        dss.append(small_part(a))
    if "mnist" in parts:
        dss.append(mnist_part(a))
    if "train" in parts:
        dss.append(train_part(a))
    ds = add_attrs(xr.merge(dss, combine_attrs="drop_conflicts"), a, sys.argv[1:] if argv is None else argv)
    for part in sorted(parts):
        ds.attrs[f"command_{part}"] = command
    ds.attrs["elapsed_s"] = time.time() - t0
    nc = a.out / "nu_comparison.nc"
    ds.to_netcdf(nc)
    figs = figures(ds, a.out)
    r = report(ds, a.out, figs, time.time() - t0)
    log(f"wrote {nc}, {r}, " + ", ".join(str(f) for f in figs), f"in {(time.time() - t0) / 60:.1f} min")
    return ds


if __name__ == "__main__":
    main()
