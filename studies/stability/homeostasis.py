"""Jacobian homeostasis on the digits card: the same run (seed 0) with and without the term.

    python studies/stability/homeostasis.py [λ ...]      # default: 0 0.001 0.01

Trains the built-in digits card (64-512-10, 30 epochs) with `learning.homeostasis = λ` and
`training.analyse_every = 5` (probe batch: the first 64 test images), then prints a Markdown
table of the probe columns and the test error at the analysed epochs. Each run's card,
metrics.csv and training.png are kept in studies/stability/homeostasis/lambda_<λ>/ (the
checkpoints are deleted).
"""

import csv
import pathlib
import shutil
import sys
import time

import ctgep

HERE = pathlib.Path(__file__).resolve().parent / "homeostasis"


def run(lam: float, analyse_every: int = 5) -> pathlib.Path:
    out = HERE / f"lambda_{lam:g}"
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    ctgep.train("digits", out, overrides=[f"learning.homeostasis={lam}", f"training.analyse_every={analyse_every}"],
                progress=False, log=lambda *a: None)
    shutil.rmtree(out / "checkpoints")
    print(f"λ = {lam:g}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return out


def table(dirs) -> str:
    lines = ["| λ | epoch | test error | asymmetry ‖Jμ − Jμᵀ‖_F/‖Jμ‖_F (median) | max Re λ(Jμ) (median) [1/τ] "
             "| angle(ν, −∇J) [°] | cos(Wb₁, Wf₂ᵀ) |",
             "|---|---|---|---|---|---|---|"]
    for lam, d in dirs:
        rows = list(csv.DictReader((d / "metrics.csv").open()))
        for r in rows:
            if r["probe_asymmetry"] in ("", "nan"):
                continue
            lines.append(f"| {lam:g} | {r['epoch']} | {100 * float(r['test_error']):.2f} % | "
                         f"{float(r['probe_asymmetry']):.3f} | {float(r['probe_abscissa']):.3f} | "
                         f"{float(r['probe_descent_angle']):.1f} | {float(r['cos_1_2']):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    lams = [float(a) for a in sys.argv[1:]] or [0.0, 0.001, 0.01]
    HERE.mkdir(exist_ok=True)
    dirs = [(lam, run(lam)) for lam in lams]
    print(table(dirs))
