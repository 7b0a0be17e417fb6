"""The committed MNIST checkpoints reproduce the test errors the README reports.

Every run directory under studies/mnist/ keeps its metrics, summary, resolved card and figure;
only the runs of the README's headline table (and runs still in progress) keep their
checkpoints; two are evaluated by default, all of them with -m slow.

Needs the MNIST IDX files through $CTGEP_DATA_DIR (CI points it at the shared copy); skipped
otherwise, since the library never depends on a fixed data location.
"""

import json
import os
import pathlib

import pytest

import ctgep

ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST_RUNS = ROOT / "studies" / "mnist"
RUNS = sorted(p.parent.name for p in MNIST_RUNS.glob("*/summary.json"))
# Only the runs of the README's headline table keep their checkpoints; the superseded ones keep
# their metrics, summary, card and figure (studies/mnist/RESULTS.md), their weights in git history.
CHECKPOINTED = sorted(p.parents[1].name for p in MNIST_RUNS.glob("*/checkpoints/latest.json"))
HEADLINE = {
    "784-512-512-10_gauss_seidel_shift1_seed1", "784-512-512-10_gauss_seidel_shift1",
    "784-512-512-10_endpoint_warm80", "784-512-512-10_gauss_seidel",
    "784-512-512-512-10_gauss_seidel_shift1", "784-512-512-10_integrated_centered_homeostasis", "cnn_fast",
    "cnn_homeostasis_shift1",
}
RUN_FILES = ("metrics.csv", "summary.json", "card.toml", "training.png")
# Long runs that continue over sessions (`ctgep resume --reset-particles`) keep their checkpoints too.
IN_PROGRESS = {run for run in RUNS
               if json.loads((MNIST_RUNS / run / "summary.json").read_text())["status"] != "finished"}


def _mnist_dir():
    d = os.environ.get("CTGEP_DATA_DIR")
    if not d:
        return None
    d = pathlib.Path(d)
    for folder in (d, d / "mnist"):
        if (folder / "t10k-images-idx3-ubyte.gz").exists() or (folder / "t10k-images-idx3-ubyte").exists():
            return folder
    return None


# Two checkpoints by default (about 20 s); every headline checkpoint with -m slow.
DEFAULT_EVALUATED = {"784-512-512-10_gauss_seidel", "784-512-512-10_integrated_centered_homeostasis"}


assert DEFAULT_EVALUATED <= HEADLINE


@pytest.mark.skipif(_mnist_dir() is None, reason="MNIST not found through $CTGEP_DATA_DIR")
@pytest.mark.parametrize("run", [r if r in DEFAULT_EVALUATED else pytest.param(r, marks=pytest.mark.slow)
                                 for r in CHECKPOINTED])
def test_committed_mnist_checkpoint_reproduces_its_test_error(run):
    run_dir = ROOT / "studies" / "mnist" / run
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary["status"] != "finished":
        pytest.skip(f"{run} is still running (its latest checkpoint may be mid-epoch)")
    result = ctgep.evaluate(run_dir, which="latest", data_dir=_mnist_dir())
    assert result["epoch"] == summary["final"]["epoch"]
    assert result["n"] == 10000
    assert result["error"] == pytest.approx(summary["final"]["test_error"], abs=1e-12)


def test_exactly_the_headline_runs_keep_their_checkpoints():
    # A renamed or deleted headline run must not silently drop out of the checks above.
    assert set(CHECKPOINTED) - IN_PROGRESS == HEADLINE
    for run in CHECKPOINTED:
        assert (MNIST_RUNS / run / "checkpoints" / "best.json").exists(), run


def test_a_run_in_progress_can_be_resumed_and_is_reported_as_such():
    results = (MNIST_RUNS / "RESULTS.md").read_text(encoding="utf-8")
    for run in IN_PROGRESS:
        assert (MNIST_RUNS / run / "checkpoints" / "latest.json").exists(), run
        assert f"`{run}` (in progress" in results, run


def test_every_run_directory_keeps_its_record():
    assert len(RUNS) >= 20  # the superseded runs stay, without their checkpoints
    dirs = sorted(p.name for p in MNIST_RUNS.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert dirs == RUNS, "a run directory without summary.json"
    for run in RUNS:
        missing = [f for f in RUN_FILES if not (MNIST_RUNS / run / f).is_file()]
        assert not missing, f"{run} lacks {missing}"


@pytest.mark.skipif(_mnist_dir() is None, reason="MNIST not found through $CTGEP_DATA_DIR")
@pytest.mark.slow
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
