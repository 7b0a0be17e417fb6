"""The committed MNIST checkpoints reproduce the test errors the README reports.

Needs the MNIST IDX files through $CTGEP_DATA_DIR (CI points it at the shared copy); skipped
otherwise, since the library never depends on a fixed data location.
"""

import json
import os
import pathlib

import pytest

import ctgep

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNS = sorted(p.parent.name for p in (ROOT / "studies" / "mnist").glob("*/summary.json"))
# Runs that later ones superseded (the README keeps their rows): their checks run with `-m slow`,
# which keeps the default suite within its time on 2 cores.
SUPERSEDED = {
    "784-512-512-10_endpoint", "784-512-512-10_endpoint_long", "784-512-512-10_endpoint_tuned",
    "784-512-512-10_endpoint_warm", "784-512-512-10_endpoint_warm_seed1",
    "784-512-512-10_endpoint_warm80_seed1", "784-512-512-512-10_endpoint",
    "784-512-512-512-10_endpoint_tuned", "784-512-512-512-10_jacobi",
}


def _mnist_dir():
    d = os.environ.get("CTGEP_DATA_DIR")
    if not d:
        return None
    d = pathlib.Path(d)
    for folder in (d, d / "mnist"):
        if (folder / "t10k-images-idx3-ubyte.gz").exists() or (folder / "t10k-images-idx3-ubyte").exists():
            return folder
    return None


@pytest.mark.skipif(_mnist_dir() is None, reason="MNIST not found through $CTGEP_DATA_DIR")
@pytest.mark.parametrize("run", [pytest.param(r, marks=pytest.mark.slow) if r in SUPERSEDED else r for r in RUNS])
def test_committed_mnist_checkpoint_reproduces_its_test_error(run):
    run_dir = ROOT / "studies" / "mnist" / run
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary["status"] != "finished":
        pytest.skip(f"{run} is still running (its latest checkpoint may be mid-epoch)")
    result = ctgep.evaluate(run_dir, which="latest", data_dir=_mnist_dir())
    assert result["epoch"] == summary["final"]["epoch"]
    assert result["n"] == 10000
    assert result["error"] == pytest.approx(summary["final"]["test_error"], abs=1e-12)


def test_the_reported_runs_are_committed():
    assert {"784-512-512-10_endpoint", "784-512-512-512-10_endpoint"} <= set(RUNS)
    assert SUPERSEDED <= set(RUNS)  # a renamed run must not silently drop out of the checks


@pytest.mark.skipif(_mnist_dir() is None, reason="MNIST not found through $CTGEP_DATA_DIR")
def test_the_training_speed_benchmark_runs_against_the_current_trainer():
    """The benchmark drives the trainer's internals; a smoke run keeps it in step with them."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(ROOT / "studies" / "benchmarks" / "training_speed.py"), "--data-dir",
         str(_mnist_dir()), "--settings", "fixed", "--examples", "100", "--epochs", "1"],
        capture_output=True, text=True, timeout=300, check=True).stdout
    row = [line for line in out.splitlines() if line.startswith("| fixed | 20 |")]
    assert len(row) == 1 and "80.0 (60.0 + 20.0)" in row[0]
