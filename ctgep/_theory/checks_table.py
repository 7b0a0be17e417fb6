"""The table `ctgep check` prints: rows with a verdict, the report, and its figure and files."""

import dataclasses
import pathlib

import numpy as np
import xarray as xr


VERDICT_CODES = {"PASS": 1, "FAIL": 0, "info": -1, "n/a": -2, "not converged": -3}


@dataclasses.dataclass
class Row:
    check: str
    quantity: str
    measured: float
    criterion: str
    passed: bool | None  # None: not judged; `status` says why ("info", "n/a", "not converged")
    status: str = "info"

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return self.status
        return "PASS" if self.passed else "FAIL"


@dataclasses.dataclass
class CheckReport:
    rows: list[Row]
    data: xr.Dataset

    @property
    def passed(self) -> bool:
        """No row failed and none was left unchecked because a phase did not settle."""
        return all(r.verdict not in ("FAIL", "not converged") for r in self.rows)

    def counts(self) -> dict[str, int]:
        return {v: sum(r.verdict == v for r in self.rows) for v in VERDICT_CODES}

    def table(self) -> str:
        """The rows as a fixed-width text table."""
        head = ("check", "quantity", "measured", "criterion", "pass")
        body = [(r.check, r.quantity, f"{r.measured:.3g}", r.criterion, r.verdict) for r in self.rows]
        widths = [max(len(str(c[i])) for c in [head] + body) for i in range(5)]
        fmt = lambda c: "  ".join(str(v).ljust(w) for v, w in zip(c, widths)).rstrip()
        rule = "  ".join("-" * w for w in widths)
        return "\n".join([fmt(head), rule] + [fmt(c) for c in body])


def _at_most(check, quantity, value, bound):
    value = float(value)
    return Row(check, quantity, value, f"≤ {bound:g}", bool(value <= bound))


def _at_least(check, quantity, value, bound):
    value = float(value)
    return Row(check, quantity, value, f"≥ {bound:g}", bool(value >= bound))


def _within(check, quantity, value, lo, hi):
    value = float(value)
    return Row(check, quantity, value, f"∈ [{lo:g}, {hi:g}]", bool(lo <= value <= hi))


def _row(check, quantity, value, kind, bound):
    """A row by kind: "≤"/"≥" a bound, "∈" a `(lo, hi)`, "info" (reported), "n/a" (`bound`: why)."""
    if kind == "≤":
        return _at_most(check, quantity, value, bound)
    if kind == "≥":
        return _at_least(check, quantity, value, bound)
    if kind == "∈":
        return _within(check, quantity, value, *bound)
    return Row(check, quantity, float(value), bound or "", None, kind)



def plot_report(data: xr.Dataset, path) -> None:
    """The 3-panel figure: EP error vs β, BPTT error vs T, angle(ν, −∇J) vs Jμ asymmetry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    betas = data.ep_beta_values.values
    styles = {"endpoint": "-", "integrated": "--"}
    for rule in data.rule.values:
        for nudging, marker in (("one-sided", "o"), ("centered", "s")):
            ax.loglog(betas, data.ep_error.sel(rule=rule, nudging=nudging), styles[rule], marker=marker,
                      label=f"{rule}, {nudging}")
    e1 = float(data.ep_error.sel(rule="endpoint", nudging="one-sided")[0])
    e2 = float(data.ep_error.sel(rule="endpoint", nudging="centered")[0])
    ax.loglog(betas, e1 * (betas / betas[0]), ":", color="gray", label="∝ β")
    ax.loglog(betas, e2 * (betas / betas[0]) ** 2, "-.", color="gray", label="∝ β²")
    ax.set(xlabel="β", ylabel="‖EP − ν‖ / ‖ν‖", title="EP estimate → ν as β → 0")
    ax.legend(fontsize=7)

    ax = axes[1]
    T = data.horizon_values.values
    ax.semilogy(T, data.bptt_error, "o-", label="BPTT(T) vs RBP")
    lam = float(data.slowest_eigenvalue)
    ax.semilogy(T, float(data.bptt_error[0]) * np.exp(lam * (T - T[0])), ":", color="gray",
                label=f"exp(λ_max T), λ_max = {lam:.3f}")
    ax.set(xlabel="horizon T", ylabel="‖BPTT(T) − RBP‖ / ‖RBP‖", title="BPTT(T) → RBP")
    ax.legend(fontsize=7)

    ax = axes[2]
    ax.plot(data.asymmetry, data.angle_nu_grad, "o-")
    for a, b, d in zip(data.asymmetry.values, data.angle_nu_grad.values, data.feedback_deg.values):
        ax.annotate(f"{d:g}°", (a, b), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlabel="‖Jμ − Jμᵀ‖ / ‖Jμ‖", ylabel="angle(ν, −∇J) [degrees]",
           title="ν vs −∇J as feedback leaves Wfᵀ")
    fig.suptitle(f"ctgep check — {data.attrs.get('network', '')} {data.attrs.get('sizes', '')} "
                 f"{data.attrs.get('activation', '')}, float64", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: CheckReport, out) -> tuple[pathlib.Path, pathlib.Path]:
    """Write `check.nc` (the dataset) and `check.png` (the figure) into the folder `out`."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    nc, png = out / "check.nc", out / "check.png"
    report.data.to_netcdf(nc)
    plot_report(report.data, png)
    return nc, png
