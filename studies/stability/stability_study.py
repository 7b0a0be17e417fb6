"""Issue 22 study: the paper's "good parameters", measured with ctgep.stability.

    python studies/stability/stability_study.py map      # (a) weight scale × feedback angle
    python studies/stability/stability_study.py mnist    # (b) the 784-512-512-10 warm80 run
    python studies/stability/stability_study.py timing   # (b) 1 000 test images, timed
    python studies/stability/stability_study.py nudged   # (c) Euler at dt 1 under the nudge

Each part writes a netCDF dataset and a figure next to this file (float32, like training).
"""

import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import xarray as xr

import ctgep
from ctgep import stability as S

HERE = pathlib.Path(__file__).parent
RUN = HERE.parent / "mnist" / "784-512-512-10_endpoint_warm80"
DATA_DIR = "/work/shared/data/mnist"
SCALES = (0.5, 1.0, 2.0, 3.0, 4.0)
ANGLES = (0.0, 45.0, 90.0, 135.0, 180.0)
MAP_SIZES = (20, 30, 30, 5)


def _log(m, t0=time.perf_counter()):
    print(f"[{time.perf_counter() - t0:7.1f} s] {m}", flush=True)


def good_parameter_map(n_inputs=40, inits=8):
    """(a) weight scale × feedback angle on a small hard-sigmoid LayeredNetwork."""
    x = jr.uniform(jr.PRNGKey(1), (n_inputs, MAP_SIZES[0]))
    y = jax.nn.one_hot(jnp.arange(n_inputs) % MAP_SIZES[-1], MAP_SIZES[-1])
    names = ("fraction_converged", "fraction_fp_found", "mean_fixed_points", "fraction_multistable",
             "abscissa_median", "abscissa_max", "asymmetry_median", "radius_median", "descent_angle",
             "fraction_descent", "seconds")
    out = {k: np.full((len(SCALES), len(ANGLES)), np.nan) for k in names}
    for i, scale in enumerate(SCALES):
        for j, angle in enumerate(ANGLES):
            t = time.perf_counter()
            net = ctgep.LayeredNetwork(MAP_SIZES, "hard_sigmoid", key=jr.PRNGKey(0), feedback=angle)
            net = eqx.tree_at(lambda n: (n.Wf, n.Wb), net, jax.tree_util.tree_map(lambda a: scale * a, (net.Wf, net.Wb)))
            try:
                ds = S.analyse(net, x, y, inits=inits, key=jr.PRNGKey(2), t_max=200.0, descent_batch=20)
            except ValueError:  # no fixed point at all: no descent check
                ds = S.analyse(net, x, None, inits=inits, key=jr.PRNGKey(2), t_max=200.0)
            ok = ds.fp_converged.values
            out["fraction_converged"][i, j] = 1 - float(ds.fraction_not_converged)
            out["fraction_fp_found"][i, j] = ok.mean()
            out["mean_fixed_points"][i, j] = float(ds.n_fixed_points.mean())
            out["fraction_multistable"][i, j] = float(ds.fraction_multistable)
            if ok.any():
                out["abscissa_median"][i, j] = np.median(ds.spectral_abscissa.values[ok])
                out["abscissa_max"][i, j] = np.max(ds.spectral_abscissa.values[ok])
                out["asymmetry_median"][i, j] = np.median(ds.asymmetry.values[ok])
                out["radius_median"][i, j] = np.median(ds.spectral_radius.values[ok])
            if "descent_angle" in ds:
                out["descent_angle"][i, j] = float(ds.descent_angle.mean())
                out["fraction_descent"][i, j] = float((ds.descent_dot < 0).mean())
            out["seconds"][i, j] = time.perf_counter() - t
            _log(f"scale {scale:g}, angle {angle:g}°: converged {out['fraction_converged'][i, j]:.3f}, "
                 f"fixed points {out['mean_fixed_points'][i, j]:.2f}, abscissa max {out['abscissa_max'][i, j]:.3f}, "
                 f"descent angle {out['descent_angle'][i, j]:.1f}°")
    units = {"fraction_converged": ("runs (inputs × inits) reaching a fixed point", "1"),
             "fraction_fp_found": ("inputs whose default start (zeros) reaches a fixed point", "1"),
             "mean_fixed_points": ("distinct fixed points per input (mean)", "1"),
             "fraction_multistable": ("inputs with more than one fixed point", "1"),
             "abscissa_median": ("median spectral abscissa max Re λ(Jμ)", "1/τ"),
             "abscissa_max": ("largest spectral abscissa over inputs", "1/τ"),
             "asymmetry_median": ("median ‖Jμ − Jμᵀ‖_F/‖Jμ‖_F", "1"),
             "radius_median": ("median spectral radius of Euler dt 0.5 (clipped)", "1"),
             "descent_angle": ("mean angle(ν, −∇J) over batches of 20", "degrees"),
             "fraction_descent": ("batches with ∇J·ν < 0", "1"),
             "seconds": ("wall time of the cell", "s")}
    ds = xr.Dataset({k: (("scale", "feedback_angle"), v, {"long_name": units[k][0], "units": units[k][1]})
                     for k, v in out.items()},
                    coords={"scale": ("scale", np.array(SCALES), {"long_name": "weight scale (× Glorot)", "units": "1"}),
                            "feedback_angle": ("feedback_angle", np.array(ANGLES),
                                               {"long_name": "angle between Wb_l and Wf_{l+1}ᵀ", "units": "degrees"})},
                    attrs={"sizes": str(MAP_SIZES), "activation": "hard_sigmoid", "inputs": n_inputs, "inits": inits,
                           "solver": "Euler(dt=0.5, clip=True) + Newton", "cluster_tol": 1e-3})
    S.save(ds, HERE / "good_parameter_map.nc")
    _plot_map(ds)
    return ds


def _plot_map(ds):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("fraction_converged", "viridis", (0, 1)), ("mean_fixed_points", "magma", None),
              ("abscissa_max", "coolwarm", None), ("descent_angle", "coolwarm", (0, 180))]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for ax, (name, cmap, lim) in zip(axes, panels):
        v = ds[name].values
        kw = {"vmin": lim[0], "vmax": lim[1]} if lim else {}
        if name == "abscissa_max":
            m = np.nanmax(np.abs(v)) if np.isfinite(v).any() else 1
            kw = {"vmin": -m, "vmax": m}
        im = ax.imshow(v, origin="lower", cmap=cmap, aspect="auto", **kw)
        for (i, j), val in np.ndenumerate(v):
            ax.text(j, i, "–" if not np.isfinite(val) else f"{val:.2g}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(ds.sizes["feedback_angle"]), [f"{a:g}°" for a in ds.feedback_angle.values])
        ax.set_yticks(range(ds.sizes["scale"]), [f"{s:g}" for s in ds.scale.values])
        ax.set(xlabel="feedback angle (Wb vs Wfᵀ)", ylabel="weight scale", title=ds[name].attrs["long_name"])
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"good-parameter map — LayeredNetwork {ds.attrs['sizes']} hard sigmoid, {ds.attrs['inputs']} inputs × "
                 f"{ds.attrs['inits']} initial states", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "good_parameter_map.png", dpi=110)
    plt.close(fig)


def _mnist(n):
    run = ctgep.load_run(RUN, "latest")
    data = ctgep.load_dataset("mnist", data_dir=DATA_DIR)
    x = jnp.asarray(data.x_test[:n])
    return run, x, jax.nn.one_hot(jnp.asarray(data.y_test[:n]), 10, dtype=x.dtype)


def mnist(n=300, inits=8):
    """(b) the trained warm80 run on `n` test images."""
    run, x, y = _mnist(n)
    _log(f"{RUN.name} (latest, epoch {run.checkpoint.get('epoch')}): {n} test images, {inits} inits")
    ds = S.analyse(run.net, x, y, solver=ctgep.Euler(dt=0.5), inits=inits, key=jr.PRNGKey(0),
                   descent_batch=20, log=_log)
    ds.attrs.update(run=str(RUN.relative_to(HERE.parent.parent)), checkpoint="latest",
                    epoch=int(run.checkpoint.get("epoch", -1)))
    S.save(ds, HERE / "mnist_warm80.nc")
    S.plot(ds, HERE / "mnist_warm80.png")
    for q, v in S.summary(ds):
        print(f"  {q}: {v}")
    return ds


def timing(n=1000, inits=4, descent_batches=10):
    """(b) wall time of the analysis of 1 000 test images on this machine."""
    run, x, y = _mnist(n)
    t = time.perf_counter()
    ds = S.analyse(run.net, x, y, solver=ctgep.Euler(dt=0.5), inits=inits, key=jr.PRNGKey(0),
                   descent_batch=20, descent_batches=descent_batches, log=_log)
    _log(f"total {time.perf_counter() - t:.1f} s")
    ds.attrs.update(run=str(RUN.relative_to(HERE.parent.parent)), checkpoint="latest")
    S.save(ds, HERE / "mnist_warm80_1000.nc")
    for q, v in S.summary(ds):
        print(f"  {q}: {v}")


SOLVERS = {
    "euler_dt0.5": ctgep.Euler(dt=0.5),
    "euler_dt1": ctgep.Euler(dt=1.0),
    "euler_dt1_noclip": ctgep.Euler(dt=1.0, clip=False),
    "jacobi_dt1": ctgep.Euler(dt=1.0, precondition=True),
    "gauss_seidel_dt1": ctgep.Euler(dt=1.0, precondition=True, alternate=True),
}


def nudged(n=100, beta=1.0, tol=1e-4, t_max=60.0):
    """(c) the nudged phase's iteration matrices at β = 1: plain Euler at dt 1 against the
    preconditioned (Jacobi) and block Gauss–Seidel steps, predicted and measured."""
    run, x, y = _mnist(n)
    free = S.fixed_points(run.net, x)
    fp = S.fixed_points(run.net, x, y, beta=beta, s_init=free.state)
    _log(f"nudged fixed points: {float(fp.converged.mean()):.3f} converged")
    parts = []
    for name, solver in SOLVERS.items():
        t = time.perf_counter()
        ds = S.convergence(run.net, x, y=y, beta=beta, s_init=free.state, fixed=fp, solver=solver, tol=tol,
                           t_max=t_max, n_eig=6)
        f = S.convergence(run.net, x, fixed=free, solver=solver, tol=tol, t_max=t_max, n_eig=6)
        _log(f"{name}: nudged: {int((ds.measured_steps <= 1).sum())} samples settled in ≤ 1 step (outputs held by the clip), "
             f"radius ≥ 1 for {int((ds.spectral_radius >= 1).sum())}; "
             f"{name}: nudged radius median {np.median(ds.spectral_radius):.4f} (max {ds.spectral_radius.max().item():.4f}), "
             f"measured settled {np.isfinite(ds.measured_steps).mean():.2f}, median steps "
             f"{np.median(ds.measured_steps):.0f} vs predicted {np.median(ds.predicted_steps):.0f}, mean |measured − predicted| "
             f"{np.nanmean(np.where(np.isfinite(ds.measured_steps) & np.isfinite(ds.predicted_steps), np.abs(ds.measured_steps - ds.predicted_steps), np.nan)):.1f}; free radius median "
             f"{np.median(f.spectral_radius):.4f}, steps {np.median(f.measured_steps):.0f} vs {np.median(f.predicted_steps):.0f} "
             f"({time.perf_counter() - t:.0f} s)")
        keep = ["iter_eig_real", "iter_eig_imag", "spectral_radius", "active_units", "initial_residual",
                "predicted_steps", "measured_steps", "predicted_time", "measured_time"]
        both = xr.concat([f[keep], ds[keep]], dim=xr.DataArray(["free", "nudged"], dims="phase", name="phase"))
        parts.append(both.expand_dims(solver=[name]))
    out = xr.concat(parts, dim="solver", combine_attrs="drop")
    out.attrs.update(beta=beta, tol=tol, t_max=t_max, samples=n, run=str(RUN.relative_to(HERE.parent.parent)),
                     checkpoint="latest", clip=1)
    jac = S.jacobian_spectrum(run.net, x, fp, y=y, beta=beta, n_eig=6)
    out["nudged_eig_real"] = jac.eig_real
    out["nudged_eig_imag"] = jac.eig_imag
    out["nudged_eig_real"].attrs.update(long_name="real part of eigenvalue of Jμ^β at the nudged fixed point", units="1/τ")
    S.save(out, HERE / "nudged_iteration.nc")
    _plot_nudged(out)
    return out


def _plot_nudged(ds):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    th = np.linspace(0, 2 * np.pi, 400)
    ax = axes[0]
    ax.scatter(ds.nudged_eig_real.values.ravel(), ds.nudged_eig_imag.values.ravel(), s=5, alpha=0.4,
               label="6 leading λ(Jμ^β) per image")
    for dt, st in ((0.5, ":"), (1.0, "--")):
        ax.plot(-1 / dt + np.cos(th) / dt, np.sin(th) / dt, "k" + st, lw=1, label=f"Euler dt={dt:g}: |1 + dt λ| = 1")
    ax.axvline(-2.0, color="C3", lw=0.8, label="output leak −(1 + β) = −2")
    ax.set(xlabel="Re λ [1/τ]", ylabel="Im λ [1/τ]", title="Jμ^β at the nudged fixed point (β = 1)")
    ax.legend(fontsize=7)
    ax = axes[1]
    for k, name in enumerate(ds.solver.values):
        r = ds.spectral_radius.sel(solver=name)
        ax.scatter(np.full(r.sizes["sample"], k - 0.1), r.sel(phase="free"), s=6, color="C0", label="free" if k == 0 else None)
        ax.scatter(np.full(r.sizes["sample"], k + 0.1), r.sel(phase="nudged"), s=6, color="C1", label="nudged" if k == 0 else None)
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_xticks(range(ds.sizes["solver"]), ds.solver.values, rotation=15)
    ax.set(ylabel="spectral radius of the iteration matrix", title="local convergence factor per step")
    ax.legend(fontsize=7)
    ax = axes[2]
    for k, name in enumerate(ds.solver.values):
        d = ds.sel(solver=name, phase="nudged")
        m, p = d.measured_steps.values, d.predicted_steps.values
        fin = np.isfinite(m) & np.isfinite(p)
        ax.scatter(p[fin], m[fin], s=8, label=f"{name} ({(~np.isfinite(m)).sum()} did not settle)")
    lim = ds.attrs["t_max"] / 0.5
    ax.plot([0, lim], [0, lim], "k:", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="predicted steps ⌈log(tol/r0)/log ρ(M)⌉", ylabel="measured steps",
           title=f"nudged phase to ‖μ^β‖∞ < {ds.attrs['tol']:g}")
    ax.legend(fontsize=7)
    fig.suptitle(f"why Euler at dt 1 fails under the nudge — {ds.attrs['run']}, {ds.attrs['samples']} test images",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "nudged_iteration.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parts = sys.argv[1:] or ["map", "mnist", "nudged", "timing"]
    for p in parts:
        {"map": good_parameter_map, "mnist": mnist, "timing": timing, "nudged": nudged}[p]()
